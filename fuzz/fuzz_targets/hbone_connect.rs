#![no_main]
//! See `outrider_testbed::fuzzing::hbone_connect`.
libfuzzer_sys::fuzz_target!(|data: &[u8]| outrider_testbed::fuzzing::hbone_connect(data));
