//! Kite: a small KVM virtual machine monitor.
#![deny(clippy::undocumented_unsafe_blocks)]

pub mod arch;
pub mod bench;
pub mod bus;
pub mod cli;
pub mod config;
pub mod devices;
pub mod exit;
pub mod memory;
pub mod terminal;
pub mod vcpu;
pub mod vmm;
