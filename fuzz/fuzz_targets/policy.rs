#![no_main]
//! See `outrider::fuzzing::policy`.
libfuzzer_sys::fuzz_target!(|data: &[u8]| outrider::fuzzing::policy(data));
