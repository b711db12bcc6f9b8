#![no_main]
//! See `outrider_testbed::fuzzing::workload_file`.
libfuzzer_sys::fuzz_target!(|data: &[u8]| outrider_testbed::fuzzing::workload_file(data));
