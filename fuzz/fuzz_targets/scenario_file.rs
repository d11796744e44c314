//! cargo fuzz run scenario_file: see RELIABILITY.md.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| otpgate_fuzz::scenario_file(data));
