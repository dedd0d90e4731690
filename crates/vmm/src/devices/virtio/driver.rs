//! The host side of kite-virtio-driver, for what plays a guest driver in process (the unit tests,
//! the micro-benchmarks, the fuzz harness): guest RAM as the driver's memory, and a transport's
//! register file as its registers. Only built with the `guest-driver` feature.

use kite_virtio_driver::{Memory, Registers};
use vm_memory::{ByteValued, Bytes, GuestAddress};

use super::mmio::MmioTransport;
use crate::bus::BusDevice;
use crate::memory::GuestMem;

/// Guest RAM as the driver reaches it. The driver only touches the rings and tables it placed,
/// so an address outside RAM is a bug of the caller's: it panics.
pub struct GuestRam<'a>(pub &'a GuestMem);

impl GuestRam<'_> {
    fn get<T: ByteValued>(&self, addr: u64) -> T {
        self.0
            .read_obj(GuestAddress(addr))
            .expect("driver memory in guest RAM")
    }

    fn put<T: ByteValued>(&mut self, addr: u64, value: T) {
        self.0
            .write_obj(value, GuestAddress(addr))
            .expect("driver memory in guest RAM")
    }
}

impl Memory for GuestRam<'_> {
    fn read_u16(&self, addr: u64) -> u16 {
        self.get(addr)
    }

    fn read_u32(&self, addr: u64) -> u32 {
        self.get(addr)
    }

    fn write_u16(&mut self, addr: u64, value: u16) {
        self.put(addr, value)
    }

    fn write_u32(&mut self, addr: u64, value: u32) {
        self.put(addr, value)
    }

    fn write_u64(&mut self, addr: u64, value: u64) {
        self.put(addr, value)
    }
}

/// The register file as a vCPU reaches it: 4-byte accesses through the bus device.
impl Registers for MmioTransport {
    fn read(&mut self, offset: u64) -> u32 {
        let mut data = [0u8; 4];
        BusDevice::read(self, offset, &mut data);
        u32::from_le_bytes(data)
    }

    fn write(&mut self, offset: u64, value: u32) {
        BusDevice::write(self, offset, &value.to_le_bytes());
    }
}
