//! Counts of the vCPU exits Kite handled, by kind, for the metrics line (`PUT /metrics`).

use std::sync::atomic::{AtomicU64, Ordering};

#[derive(Debug, Default)]
pub struct ExitCounts {
    pub io_in: AtomicU64,
    pub io_out: AtomicU64,
    pub mmio_read: AtomicU64,
    pub mmio_write: AtomicU64,
    /// Kicks and signals (KVM_RUN interrupted).
    pub interrupted: AtomicU64,
    pub internal_error: AtomicU64,
    pub other: AtomicU64,
}

impl ExitCounts {
    pub fn add(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// `(name, count)` for each kind.
    pub fn snapshot(&self) -> Vec<(&'static str, u64)> {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        vec![
            ("io_in", get(&self.io_in)),
            ("io_out", get(&self.io_out)),
            ("mmio_read", get(&self.mmio_read)),
            ("mmio_write", get(&self.mmio_write)),
            ("interrupted", get(&self.interrupted)),
            ("internal_error", get(&self.internal_error)),
            ("other", get(&self.other)),
        ]
    }
}
