//! cargo fuzz run smpp_codec: see RELIABILITY.md.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| otpgate_fuzz::smpp_codec(data));
