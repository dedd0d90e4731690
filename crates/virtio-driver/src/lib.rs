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
pub mod vsock;

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

/// Memory that is a byte image starting at address 0 (an image to copy into guest RAM, or a
/// test's memory). An access past its end panics.
pub struct Image<'a>(pub &'a mut [u8]);

impl Image<'_> {
    fn get<const N: usize>(&self, addr: u64) -> [u8; N] {
        let at = usize::try_from(addr).expect("address in the image");
        let bytes = self.0.get(at..at + N).expect("address in the image");
        bytes.try_into().expect("N bytes")
    }

    fn put(&mut self, addr: u64, value: &[u8]) {
        let at = usize::try_from(addr).expect("address in the image");
        let bytes = self.0.get_mut(at..at + value.len());
        bytes.expect("address in the image").copy_from_slice(value);
    }
}

impl Memory for Image<'_> {
    fn read_u16(&self, addr: u64) -> u16 {
        u16::from_le_bytes(self.get(addr))
    }

    fn read_u32(&self, addr: u64) -> u32 {
        u32::from_le_bytes(self.get(addr))
    }

    fn write_u16(&mut self, addr: u64, value: u16) {
        self.put(addr, &value.to_le_bytes())
    }

    fn write_u32(&mut self, addr: u64, value: u32) {
        self.put(addr, &value.to_le_bytes())
    }

    fn write_u64(&mut self, addr: u64, value: u64) {
        self.put(addr, &value.to_le_bytes())
    }
}

/// A device's virtio-mmio register window: 32-bit accesses at offsets into it.
pub trait Registers {
    fn read(&mut self, offset: u64) -> u32;
    fn write(&mut self, offset: u64, value: u32);
}
