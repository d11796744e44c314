//! cargo fuzz run smtp_session: see RELIABILITY.md.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| otpgate_fuzz::smtp_session(data));
