//! The driver's side of virtio (virtio 1.2): the virtio-mmio register dance ([`mmio`]) and split
//! virtqueues ([`Queue`], [`Chains`]), written once for everyone who plays a guest driver: the test
//! guest (guest-images/testguest, in a VM, on raw pointers and volatile MMIO), the devices' unit
//! tests and micro-benchmarks (crates/vmm) and the fuzz harness (fuzz/harness), which reach the
//! device's register file and a `GuestMemoryMmap` in process.
//!
//! Where guest memory and the registers are is the user's: [`Memory`] reads and writes the
//! driver-owned memory at guest-physical addresses, [`Registers`] does 32-bit register accesses.
//! `no_std`, no allocator, no dependencies.
#![no_std]

pub mod mmio;
mod queue;

pub use queue::{
    AVAIL_F_NO_INTERRUPT, Buf, Chains, DESC_F_INDIRECT, DESC_F_NEXT, DESC_F_WRITE, Desc, Full,
    Layout, MAX_QUEUE, Queue, USED_F_NO_NOTIFY, need_event, write_chain,
};

/// Driver-owned guest memory (rings, descriptor tables), at guest-physical addresses. Each access
/// is one access of its width, so that a device running beside the driver never sees half of an
/// index. The addresses are the driver's own choice, so an implementation may panic on one that
/// is not in memory.
pub trait Memory {
    fn read_u16(&self, addr: u64) -> u16;
    fn read_u32(&self, addr: u64) -> u32;
    fn write_u16(&mut self, addr: u64, value: u16);
    fn write_u32(&mut self, addr: u64, value: u32);
    fn write_u64(&mut self, addr: u64, value: u64);
}

/// A device's virtio-mmio register window: 32-bit accesses at offsets into it.
pub trait Registers {
    fn read(&mut self, offset: u64) -> u32;
    fn write(&mut self, offset: u64, value: u32);
}
