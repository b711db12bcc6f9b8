#![no_main]
//! See `outrider::fuzzing::protocol_detection`.
libfuzzer_sys::fuzz_target!(|data: &[u8]| outrider::fuzzing::protocol_detection(data));
