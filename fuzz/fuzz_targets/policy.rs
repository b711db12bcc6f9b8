#![no_main]
//! See `outrider_testbed::fuzzing::policy`.
libfuzzer_sys::fuzz_target!(|data: &[u8]| outrider_testbed::fuzzing::policy(data));
