//! libFuzzer entry for the `virtio_vsock` target (see `kite_fuzz_harness`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| kite_fuzz_harness::run("virtio_vsock", data));
