//! The delivery log and the SMS and email channels.
pub mod callbacks;
pub mod email;
pub mod log;
pub mod outbound;
pub mod sms;
