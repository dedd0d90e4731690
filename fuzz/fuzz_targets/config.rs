//! libFuzzer entry for the `config` target (see `kite::fuzz`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| kite::fuzz::run("config", data));
