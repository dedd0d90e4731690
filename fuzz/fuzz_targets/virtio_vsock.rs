//! libFuzzer entry for the `virtio_vsock` target (see `kite::fuzz`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| kite::fuzz::run("virtio_vsock", data));
