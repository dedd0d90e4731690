//! Fuzz target `virtio_mmio`: the virtio-mmio register file of a device (virtio-rng, virtio-net
//! on a stand-in, or virtio-blk), driven by a sequence of reads and writes of any size at any
//! offset, with queue notifications in between and a memory image holding whatever rings the
//! registers point at. The status register must keep to the spec's order whatever is written.
//!
//! Input: the device, the memory image (written at address 0), then the operations.

use std::os::unix::net::UnixDatagram;
use std::sync::{Arc, Mutex};

use virtio_bindings::virtio_config::{
    VIRTIO_CONFIG_S_ACKNOWLEDGE, VIRTIO_CONFIG_S_DRIVER, VIRTIO_CONFIG_S_DRIVER_OK,
    VIRTIO_CONFIG_S_FEATURES_OK,
};
use vm_memory::{Bytes, GuestAddress};

use super::queue::{DESC, DEVICE, DRIVER, Image};
use super::{Driver, lock};
use crate::Seed;
use crate::input::{Input, Writer};
use kite_virtio_driver::mmio::{
    DEVICE_FEATURES_SEL, DRIVER_FEATURES, DRIVER_FEATURES_SEL, QUEUE_DESC, QUEUE_DEVICE,
    QUEUE_DRIVER, QUEUE_NOTIFY, QUEUE_NUM, QUEUE_READY, QUEUE_SEL, STATUS,
};
use kite_vmm::bus::BusDevice;
use kite_vmm::harness::Net;
use kite_vmm::harness::Rng;
use kite_vmm::harness::SharedDevice;

pub const OP_READ: u8 = 0;
pub const OP_WRITE: u8 = 1;
pub const OP_NOTIFY: u8 = 2;
/// A 32-bit write to register `4 * n` (of the first 256 bytes, where the registers are).
pub const OP_WRITE_REG: u8 = 3;
const OPS: u8 = 4;

const WINDOW: u16 = 0x1000;

pub const RNG: u8 = 0;
pub const NET: u8 = 1;
pub const BLK: u8 = 2;

fn device(kind: u8) -> SharedDevice {
    match kind % 3 {
        RNG => Arc::new(Mutex::new(Rng::new())),
        NET => {
            let (dev, _host) = UnixDatagram::pair().expect("socket pair");
            dev.set_nonblocking(true).expect("non-blocking");
            let net = Net::new(
                Box::new(super::net::socket_backend(dev)),
                [2, 0, 0, 0, 0, 2],
            );
            Arc::new(Mutex::new(net.expect("net device")))
        }
        _ => super::blk::device(),
    }
}

/// The status register keeps to the order of virtio 1.2, 3.1.1.
fn check_status(driver: &mut Driver) {
    let status = driver.read(STATUS);
    let implies = [
        (VIRTIO_CONFIG_S_DRIVER, VIRTIO_CONFIG_S_ACKNOWLEDGE),
        (VIRTIO_CONFIG_S_FEATURES_OK, VIRTIO_CONFIG_S_DRIVER),
        (VIRTIO_CONFIG_S_DRIVER_OK, VIRTIO_CONFIG_S_FEATURES_OK),
    ];
    for (bit, needs) in implies {
        assert!(
            status & bit == 0 || status & needs != 0,
            "status {status:#x}: {bit:#x} without {needs:#x}"
        );
    }
}

pub fn run(data: &[u8]) {
    let mut input = Input::new(data);
    let Some(mut driver) = Driver::new(device(input.u8())) else {
        return;
    };
    let image = input.long_bytes();
    driver
        .mem
        .write_slice(image, GuestAddress(0))
        .expect("the image fits in guest memory");
    let queues = lock(&driver.device).queue_max_sizes().len();
    let mut buf = [0u8; 8];
    for _ in 0..super::MAX_OPS {
        if input.is_empty() {
            break;
        }
        match input.u8() % OPS {
            OP_READ => {
                let offset = u64::from(input.u16() % WINDOW);
                let len = usize::from(input.u8() % 9);
                driver.transport.read(offset, &mut buf[..len]);
                if offset == 0 && len == 4 {
                    assert_eq!(&buf[..4], b"virt");
                }
            }
            OP_WRITE => {
                let offset = u64::from(input.u16() % WINDOW);
                let len = usize::from(input.u8() % 9);
                let value = input.u64().to_le_bytes();
                driver.transport.write(offset, &value[..len]);
            }
            OP_NOTIFY => {
                let q = usize::from(input.u8()) % queues;
                for _ in 0..4 {
                    if !lock(&driver.device).process_queue(q) {
                        break;
                    }
                }
            }
            _ => {
                let offset = u64::from(input.u8() % 64) * 4;
                let value = input.u32();
                driver.write(offset, value);
            }
        }
        check_status(&mut driver);
    }
}

/// Builds register sequences: the input's operations, byte for byte (so the driver's steps are
/// spelled out here as the input writes them, not taken from kite-virtio-driver).
pub struct Regs(Writer);

impl Regs {
    pub fn new(device: u8, image: &[u8]) -> Self {
        let mut w = Writer::new();
        w.u8(device).long_bytes(image);
        Self(w)
    }

    pub fn write(&mut self, offset: u64, value: u32) -> &mut Self {
        self.0.u8(OP_WRITE_REG).u8((offset / 4) as u8).u32(value);
        self
    }

    pub fn read(&mut self, offset: u16, len: u8) -> &mut Self {
        self.0.u8(OP_READ).u16(offset).u8(len);
        self
    }

    pub fn notify(&mut self, q: u8) -> &mut Self {
        self.0.u8(OP_NOTIFY).u8(q);
        self
    }

    /// The driver's whole start-up: status bits in order, `features`, queue `q` with `size`
    /// entries on the image's rings, DRIVER_OK.
    pub fn start(&mut self, features: u64, queues: &[u32], size: u32) -> &mut Self {
        self.write(STATUS, 0)
            .write(STATUS, VIRTIO_CONFIG_S_ACKNOWLEDGE)
            .write(STATUS, VIRTIO_CONFIG_S_ACKNOWLEDGE | VIRTIO_CONFIG_S_DRIVER)
            .write(DEVICE_FEATURES_SEL, 1)
            .read(0x10, 4)
            .write(DRIVER_FEATURES_SEL, 0)
            .write(DRIVER_FEATURES, features as u32)
            .write(DRIVER_FEATURES_SEL, 1)
            .write(DRIVER_FEATURES, (features >> 32) as u32);
        let s = VIRTIO_CONFIG_S_ACKNOWLEDGE | VIRTIO_CONFIG_S_DRIVER;
        self.write(STATUS, s | VIRTIO_CONFIG_S_FEATURES_OK);
        for &q in queues {
            self.write(QUEUE_SEL, q)
                .read(0x34, 4)
                .write(QUEUE_NUM, size)
                .write(QUEUE_DESC, DESC)
                .write(QUEUE_DRIVER, DRIVER)
                .write(QUEUE_DEVICE, DEVICE)
                .write(QUEUE_READY, 1);
        }
        let s = s | VIRTIO_CONFIG_S_FEATURES_OK;
        self.write(STATUS, s | VIRTIO_CONFIG_S_DRIVER_OK)
    }

    pub fn finish(&mut self) -> Vec<u8> {
        self.0.finish()
    }
}

pub fn seeds() -> Vec<Seed> {
    use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
    let version_1 = 1u64 << VIRTIO_F_VERSION_1;
    let mut image = Image::new(16);
    image.chain(&[(64, true)]);
    image.chain(&[(16, false), (32, true)]);
    let mut seeds = Vec::new();

    let mut r = Regs::new(RNG, image.bytes());
    r.read(0, 4)
        .read(4, 4)
        .read(8, 4)
        .start(version_1, &[0], 16)
        .write(QUEUE_NOTIFY, 0)
        .notify(0)
        .read(0x60, 4)
        .write(0x64, 1)
        .read(0xfc, 4)
        .write(STATUS, 0);
    seeds.push(Seed {
        name: "rng-start-notify-reset",
        data: r.finish(),
    });

    let mut r = Regs::new(NET, image.bytes());
    r.read(0x100, 4)
        .read(0x104, 2)
        .read(0x105, 1)
        .start(version_1 | (1 << 5), &[0, 1], 16)
        .notify(1)
        .notify(0)
        .write(QUEUE_NUM, 8);
    seeds.push(Seed {
        name: "net-config-and-start",
        data: r.finish(),
    });

    let mut r = Regs::new(BLK, image.bytes());
    r.read(0x100, 8)
        .read(0x13c, 4)
        .start(0, &[0], 16)
        .start(version_1, &[0], 3)
        .write(STATUS, 0x80)
        .read(0x70, 4);
    seeds.push(Seed {
        name: "blk-refused-then-bad-size",
        data: r.finish(),
    });
    seeds
}
