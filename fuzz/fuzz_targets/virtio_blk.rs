//! libFuzzer entry for the `virtio_blk` target (see `kite::fuzz`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| kite::fuzz::run("virtio_blk", data));
