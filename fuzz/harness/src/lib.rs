//! Fuzz targets: each drives code the VMM runs on input a guest or a user controls, from a byte
//! string, and panics when that code breaks a promise (or panics by itself).
//!
//! The targets are plain functions, so they run everywhere: `fuzz/` wraps each in a libFuzzer
//! binary (`cargo +nightly fuzz run <name>`), and `tests/fuzz_corpus.rs` runs every file of the
//! seed corpus (`fuzz/corpus/<name>/`, written from [`Target::seeds`]) through its target as an
//! ordinary test on stable. Not part of the interface the VMM uses.

pub mod api;
pub mod config;
pub mod input;
pub mod loader;
pub mod snapshot;

pub mod virtio;

/// One named seed input.
#[derive(Clone, Debug)]
pub struct Seed {
    pub name: &'static str,
    pub data: Vec<u8>,
}

/// A fuzz target.
pub struct Target {
    /// Also the name of its libFuzzer binary and of its corpus directory.
    pub name: &'static str,
    pub run: fn(&[u8]),
    /// A small corpus of well-formed inputs, made by the target's own helpers.
    pub seeds: fn() -> Vec<Seed>,
}

/// Every target.
pub const TARGETS: &[Target] = &[
    Target {
        name: "virtio_queue",
        run: virtio::queue::run,
        seeds: virtio::queue::seeds,
    },
    Target {
        name: "virtio_blk",
        run: virtio::blk::run,
        seeds: virtio::blk::seeds,
    },
    Target {
        name: "virtio_net",
        run: virtio::net::run,
        seeds: virtio::net::seeds,
    },
    Target {
        name: "virtio_vsock",
        run: virtio::vsock::run,
        seeds: virtio::vsock::seeds,
    },
    Target {
        name: "virtio_mmio",
        run: virtio::mmio::run,
        seeds: virtio::mmio::seeds,
    },
    Target {
        name: "loader",
        run: loader::run,
        seeds: loader::seeds,
    },
    Target {
        name: "config",
        run: config::run,
        seeds: config::seeds,
    },
    Target {
        name: "api",
        run: api::run,
        seeds: api::seeds,
    },
    Target {
        name: "snapshot",
        run: snapshot::run,
        seeds: snapshot::seeds,
    },
];

/// The target called `name`.
pub fn target(name: &str) -> Option<&'static Target> {
    TARGETS.iter().find(|t| t.name == name)
}

/// Run target `name` on `data` (what each libFuzzer binary in `fuzz/` does).
pub fn run(name: &str, data: &[u8]) {
    let target = target(name).unwrap_or_else(|| panic!("no fuzz target called {name}"));
    (target.run)(data);
}
