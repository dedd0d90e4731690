//! Kite: a small KVM virtual machine monitor.
#![deny(clippy::undocumented_unsafe_blocks)]

pub mod arch;
pub mod bus;
pub mod devices;
pub mod exit;
pub mod memory;
