//! otpgate: a one-time-password service with a simulated Japanese SMS and
//! email delivery network behind it and a troubleshooting desk in front.
//!
//! See ARCHITECTURE.md for the map of the modules below.

pub mod carrier;
pub mod clock;
pub mod delivery;
pub mod shutdown;
pub mod smsc;
pub mod smtp;
pub mod store;
