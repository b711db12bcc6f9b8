#![no_main]
//! See `outrider_testbed::fuzzing::http1_smuggling`.
libfuzzer_sys::fuzz_target!(|data: &[u8]| outrider_testbed::fuzzing::http1_smuggling(data));
