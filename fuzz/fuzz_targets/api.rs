//! libFuzzer entry for the `api` target (see `kite::fuzz`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| kite::fuzz::run("api", data));
