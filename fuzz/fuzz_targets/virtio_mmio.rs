//! libFuzzer entry for the `virtio_mmio` target (see `kite::fuzz`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| kite::fuzz::run("virtio_mmio", data));
