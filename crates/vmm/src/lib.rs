//! kite-vmm: the VMM library of Kite, a small KVM virtual machine monitor. The `kite` binary
//! (the repository's root crate) parses the command line and calls [`vmm::Vmm`]; `kite bench`
//! (crates/bench) and the fuzz harness (fuzz/harness) are built on this crate's public API.
#![deny(clippy::undocumented_unsafe_blocks)]

pub mod api;
pub mod arch;
pub mod bus;
pub mod config;
pub mod devices;
pub mod exit;
/// The named surface the fuzz harness and the micro-benchmarks drive below the VMM (the virtio
/// devices without their transport's KVM side); the `kite` binary does not use it.
#[doc(hidden)]
pub mod harness {
    pub use crate::devices::virtio::harness::*;
}
pub mod logging;
mod machine;
pub mod memory;
pub mod seccomp;
pub mod signals;
pub mod snapshot;
pub mod teardown;
pub mod terminal;
pub mod vcpu;
pub mod vmm;

/// `text` with every control character (a newline in a name the user gave, say) written as
/// its escape, so that a message stays on one line.
pub fn one_line(text: &str) -> String {
    if !text.chars().any(char::is_control) {
        return text.to_string();
    }
    text.chars()
        .map(|c| {
            if c.is_control() {
                c.escape_default().to_string()
            } else {
                c.to_string()
            }
        })
        .collect()
}

/// An error and its sources on one line, each source once (a message that already contains its
/// source's text is not repeated).
pub fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(e) = source {
        let s = e.to_string();
        if !text.contains(&s) {
            text.push_str(": ");
            text.push_str(&s);
        }
        source = e.source();
    }
    one_line(&text)
}
