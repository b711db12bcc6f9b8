#![no_main]
//! See `outrider::fuzzing::workload_file`.
libfuzzer_sys::fuzz_target!(|data: &[u8]| outrider::fuzzing::workload_file(data));
