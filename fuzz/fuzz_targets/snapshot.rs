//! libFuzzer entry for the `snapshot` target (see `kite_fuzz_harness`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| kite_fuzz_harness::run("snapshot", data));
