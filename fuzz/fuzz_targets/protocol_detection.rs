#![no_main]
//! See `outrider_testbed::fuzzing::protocol_detection`.
libfuzzer_sys::fuzz_target!(|data: &[u8]| outrider_testbed::fuzzing::protocol_detection(data));
