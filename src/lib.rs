//! otpgate: a one-time-password service with a simulated Japanese SMS and
//! email delivery network behind it and a troubleshooting desk in front.
//!
//! See ARCHITECTURE.md for the map of the modules below.

pub mod admission;
pub mod app;
pub mod carrier;
pub mod changes;
pub mod cli;
pub mod clock;
pub mod config;
pub mod delivery;
pub mod demo;
pub mod desk;
pub mod diagnose;
pub mod fixtures;
pub mod http;
pub mod member;
pub mod otp;
pub mod recent;
pub mod scenario;
pub mod service;
pub mod shutdown;
pub mod sim;
pub mod smsc;
pub mod smtp;
pub mod store;
pub mod tls;
pub mod watch;

/// Stripes per family of striped locks (the OTP service's, the delivery
/// log's, the SMS network's). The OTP service and the SMS network hold a
/// stripe across a durable write, so unrelated keys that share one wait
/// for each other's sync; and retention, which only tries a stripe, passes
/// over a record whose stripe is busy. With 64 stripes and a hundred
/// submits in progress most were: under overload retention read 15 to 20
/// keys for each record it removed (BENCHMARKS.md, twelfth round).
pub(crate) const LOCK_STRIPES: usize = 1024;
