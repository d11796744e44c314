//! cargo fuzz run carrier_file: see RELIABILITY.md.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| otpgate_fuzz::carrier_file(data));
