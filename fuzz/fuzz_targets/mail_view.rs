//! cargo fuzz run mail_view: see RELIABILITY.md.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| otpgate_fuzz::mail_view(data));
