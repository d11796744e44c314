//! otpgate: a one-time-password service with a simulated Japanese SMS and
//! email delivery network behind it and a troubleshooting desk in front.
//!
//! See ARCHITECTURE.md for the map of the modules below.

pub mod admission;
pub mod app;
pub mod carrier;
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
pub mod scenario;
pub mod service;
pub mod shutdown;
pub mod sim;
pub mod smsc;
pub mod smtp;
pub mod store;
