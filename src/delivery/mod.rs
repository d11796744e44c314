//! The delivery log and the SMS and email channels.
