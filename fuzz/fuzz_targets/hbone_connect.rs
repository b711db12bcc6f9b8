#![no_main]
//! See `outrider::fuzzing::hbone_connect`.
libfuzzer_sys::fuzz_target!(|data: &[u8]| outrider::fuzzing::hbone_connect(data));
