//! The embedded SMTP server.
