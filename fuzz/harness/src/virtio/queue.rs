//! Fuzz target `virtio_queue`: descriptor chains and queue handling ([`Active`], `chain.rs`) as
//! every device uses them, on rings and descriptor tables the input writes into guest memory
//! byte for byte, with queue registers as the input sets them. A probe device takes the chains
//! (all of [`Active`]'s ways: draining with each completion kind, popping and giving back, the
//! EVENT_IDX re-arm), and checks what `chain.rs` promises about each one.
//!
//! Input: the queues' maximum sizes and registers, the accepted features, a memory image
//! written at address 0, the driver's operations, then the script the probe decides by.

use std::sync::{Arc, Mutex};

use kite_virtio_driver::mmio::F_EVENT_IDX;
use kite_virtio_driver::{self as driver, Buf, DESC_F_NEXT, Desc, Layout, Queue, mmio};
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend};

use super::{Driver, MEM_SIZE, TRANSPORT_FEATURES};
use crate::Seed;
use crate::input::{Input, Writer};
use kite_vmm::harness::Chain;
use kite_vmm::harness::{Active, Completion, LogLimiter, VirtioDevice};
use kite_vmm::memory::GuestMem;

const MAX_QUEUES: u8 = 3;
/// Largest buffer the probe reads or writes at once.
const MAX_IO: u64 = 4 << 10;

const OPS: u8 = 4;
const OP_NOTIFY: u8 = 0;
const OP_POKE: u8 = 1;
const OP_RESTART: u8 = 2;
const OP_CONFIG: u8 = 3;

/// Bytes the probe decides by, read front to back (zero when they run out).
struct ScriptBytes {
    data: Vec<u8>,
    at: usize,
}

impl ScriptBytes {
    fn u8(&mut self) -> u8 {
        let b = self.data.get(self.at).copied().unwrap_or(0);
        self.at += 1;
        b
    }

    fn u32(&mut self) -> u32 {
        u32::from_le_bytes([self.u8(), self.u8(), self.u8(), self.u8()])
    }
}

/// A device that does with its queues whatever the script says.
struct Probe {
    max_sizes: Vec<u16>,
    active: Option<Active>,
    script: ScriptBytes,
    log: LogLimiter,
    buf: Vec<u8>,
}

/// Check what `chain.rs` promises about `chain`, using it every way a device does.
fn exercise(mem: &GuestMem, chain: &Chain, script: &mut ScriptBytes, buf: &mut Vec<u8>) {
    if let Some(addr) = chain.status_addr(mem) {
        assert!(mem.check_range(addr, 1), "status byte outside memory");
    }
    let Ok((readable, writable)) = chain.split(mem) else {
        return;
    };
    let (rlen, wlen) = (readable.len(), writable.len());
    // Every buffer was checked to lie in guest memory: reading and writing them works.
    buf.resize(rlen.min(MAX_IO) as usize, 0);
    readable
        .read_exact(mem, buf)
        .expect("readable buffers read back");
    buf.resize(wlen.min(MAX_IO) as usize, 0x5a);
    let n = writable
        .write(mem, buf)
        .expect("writable buffers take data");
    assert_eq!(n, buf.len());

    let at = u64::from(script.u32()) % (rlen + 2);
    match readable.split_at(at) {
        Some((head, tail)) => {
            assert_eq!(head.len(), at);
            assert_eq!(tail.len(), rlen - at);
            assert!(head.iter().chain(tail.iter()).all(|b| b.len > 0));
        }
        None => assert!(at > rlen),
    }
    let min = u64::from(script.u8());
    assert_eq!(
        chain.writable_only(mem, min).is_ok(),
        rlen == 0 && wlen >= min
    );
    assert_eq!(
        chain.readable_only(mem, min).is_ok(),
        wlen == 0 && rlen >= min
    );
}

impl VirtioDevice for Probe {
    fn device_type(&self) -> u32 {
        // Not a device any driver knows; the transport does not care.
        0xff
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &self.max_sizes
    }

    fn features(&self) -> u64 {
        0
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        kite_vmm::harness::read_config_bytes(&[1, 2, 3, 4, 5, 6, 7, 8], offset, data);
    }

    fn activate(&mut self, active: Active) {
        self.active = Some(active);
    }

    fn reset(&mut self) {
        self.active = None;
    }

    fn process_queue(&mut self, index: usize) -> bool {
        let Some(active) = self.active.as_mut() else {
            return false;
        };
        let (script, buf, log) = (&mut self.script, &mut self.buf, &mut self.log);
        match script.u8() % 2 {
            0 => active.drain_queue(index, "probe", log, |mem, chain| {
                exercise(mem, chain, script, buf);
                match script.u8() % 4 {
                    0 | 1 => Completion::Used(script.u32()),
                    2 => Completion::Fatal("the script says so".into()),
                    _ => Completion::Later,
                }
            }),
            _ => {
                // By hand, as net and vsock do.
                for _ in 0..64 {
                    let Some(chain) = active.pop_chain(index, "probe", log) else {
                        break;
                    };
                    exercise(&active.mem, &chain, script, buf);
                    match script.u8() % 4 {
                        0 => active.add_used(index, chain.head(), script.u32(), "probe", log),
                        1 => active.unpop_chain(index),
                        2 => {
                            active.unpop_chain(index);
                            active.notify_on_next_post(index);
                            break;
                        }
                        _ => {
                            active.add_used(index, chain.head(), 0, "probe", log);
                            active.notify_used(index);
                        }
                    }
                }
                active.notify_used(index);
                false
            }
        }
    }
}

/// One queue as the input sets it up: its maximum size, then its registers.
#[derive(Clone, Copy, Debug)]
pub struct QueueSpec {
    pub max_log2: u8,
    pub size: u16,
    pub desc: u32,
    pub driver: u32,
    pub device: u32,
    pub ready: bool,
}

fn start(driver: &mut Driver, features: u64, specs: &[QueueSpec]) {
    if !driver.negotiate(features) {
        return;
    }
    for (i, q) in specs.iter().enumerate() {
        let rings = Layout {
            size: q.size,
            desc: q.desc.into(),
            avail: q.driver.into(),
            used: q.device.into(),
        };
        let size = u32::from(q.size);
        mmio::queue_registers(&mut driver.transport, i as u32, size, &rings, q.ready);
    }
    driver.driver_ok();
}

pub fn run(data: &[u8]) {
    let mut input = Input::new(data);
    let n = input.u8() % MAX_QUEUES + 1;
    let specs: Vec<QueueSpec> = (0..n)
        .map(|_| QueueSpec {
            max_log2: input.u8(),
            size: input.u16(),
            desc: input.u32(),
            driver: input.u32(),
            device: input.u32(),
            ready: input.bool(),
        })
        .collect();
    let features = input.u64();
    let image = input.long_bytes();
    let mut ops = Input::new(input.long_bytes());
    let probe = Probe {
        // Real devices' queues hold at most 256 entries.
        max_sizes: specs.iter().map(|q| 1 << (q.max_log2 % 9)).collect(),
        active: None,
        script: ScriptBytes {
            data: input.rest().to_vec(),
            at: 0,
        },
        log: LogLimiter::new(),
        buf: Vec::new(),
    };
    let device = Arc::new(Mutex::new(probe));
    let Some(mut driver) = Driver::new(device) else {
        return;
    };
    driver
        .mem
        .write_slice(image, GuestAddress(0))
        .expect("the image fits in guest memory");
    start(&mut driver, features, &specs);
    for _ in 0..super::MAX_OPS {
        if ops.is_empty() {
            break;
        }
        match ops.u8() % OPS {
            OP_NOTIFY => {
                let q = usize::from(ops.u8()) % specs.len();
                for _ in 0..4 {
                    if !super::lock(&driver.device).process_queue(q) {
                        break;
                    }
                }
            }
            OP_POKE => {
                let addr = u64::from(ops.u32()) % MEM_SIZE;
                let data = ops.short_bytes();
                let n = data.len().min((MEM_SIZE - addr) as usize);
                let _ = driver.mem.write_slice(&data[..n], GuestAddress(addr));
            }
            OP_RESTART => start(&mut driver, features, &specs),
            _ => {
                let offset = u64::from(ops.u8());
                let mut data = [0u8; 8];
                let len = usize::from(ops.u8() % 9);
                kite_vmm::bus::BusDevice::read(
                    &mut driver.transport,
                    0x100 + offset,
                    &mut data[..len],
                );
            }
        }
    }
}

/// A memory image with split rings for one queue of up to 64 entries (descriptor table at 0,
/// driver area at 0x400, device area at 0x600), built up chain by chain; small, as fuzz inputs
/// should be.
pub struct Image {
    /// The bytes: the rings, then the buffers as [`Image::buf`] adds them (so that every
    /// descriptor and table the driver writes lies in them).
    mem: Vec<u8>,
    queue: Queue,
    next_buf: u32,
}

pub const DESC: u32 = 0;
pub const DRIVER: u32 = 0x400;
pub const DEVICE: u32 = 0x600;
const BUFS: u32 = 0x900;

impl Image {
    pub fn new(size: u16) -> Self {
        assert!(size <= 64);
        let layout = Layout {
            size,
            desc: DESC.into(),
            avail: DRIVER.into(),
            used: DEVICE.into(),
        };
        Self {
            mem: vec![0u8; BUFS as usize],
            queue: Queue::new(layout, false),
            next_buf: BUFS,
        }
    }

    /// A buffer of `len` bytes.
    pub fn buf(&mut self, len: u32) -> u32 {
        let at = self.next_buf;
        self.next_buf += len.next_multiple_of(16).max(16);
        self.mem.resize((at + len) as usize, 0);
        at
    }

    /// Write descriptors `(addr, len, flags, next)` from the next free slot and make the first
    /// available.
    pub fn raw(&mut self, table: &[(u32, u32, u16, u16)]) -> u16 {
        let table: Vec<_> = table
            .iter()
            .map(|&(addr, len, flags, next)| Desc::new(addr.into(), len, flags, next))
            .collect();
        self.queue
            .push_raw(&mut driver::Image(&mut self.mem), &table)
    }

    /// A well-formed chain of `(len, device-writable)` buffers.
    pub fn chain(&mut self, bufs: &[(u32, bool)]) -> u16 {
        let bufs: Vec<_> = bufs
            .iter()
            .map(|&(len, write)| self.buffer(len, write))
            .collect();
        self.queue.push(&mut driver::Image(&mut self.mem), &bufs)
    }

    /// A well-formed chain of `(len, device-writable)` buffers in an indirect table.
    pub fn indirect(&mut self, bufs: &[(u32, bool)]) -> u16 {
        let table = self.buf(16 * bufs.len() as u32);
        let bufs: Vec<_> = bufs
            .iter()
            .map(|&(len, write)| self.buffer(len, write))
            .collect();
        let mem = &mut driver::Image(&mut self.mem);
        self.queue.push_indirect(mem, table.into(), &bufs)
    }

    fn buffer(&mut self, len: u32, write: bool) -> Buf {
        let addr = u64::from(self.buf(len));
        if write {
            Buf::w(addr, len)
        } else {
            Buf::r(addr, len)
        }
    }

    pub fn bytes(&self) -> &[u8] {
        &self.mem
    }
}

/// The whole input: one queue of `size` entries on `image`'s rings.
pub fn input(size: u16, features: u64, image: &Image, ops: &[u8], script: &[u8]) -> Vec<u8> {
    let mut w = Writer::new();
    w.u8(0)
        .u8(8)
        .u16(size)
        .u32(DESC)
        .u32(DRIVER)
        .u32(DEVICE)
        .u8(1)
        .u64(features)
        .long_bytes(image.bytes())
        .long_bytes(ops)
        .bytes(script);
    w.finish()
}

pub fn seeds() -> Vec<Seed> {
    let no_event_idx = TRANSPORT_FEATURES & !F_EVENT_IDX;
    let notify = [OP_NOTIFY, 0];
    let mut seeds = Vec::new();

    let mut image = Image::new(16);
    image.chain(&[(16, false), (512, true), (1, true)]);
    image.chain(&[(64, true)]);
    image.chain(&[(12, false), (100, false)]);
    seeds.push(Seed {
        name: "three-chains",
        data: input(
            16,
            no_event_idx,
            &image,
            &notify,
            &[0, 0, 0, 0, 0, 0, 9, 0, 4, 0, 0, 0],
        ),
    });
    seeds.push(Seed {
        name: "three-chains-by-hand-event-idx",
        data: input(
            16,
            TRANSPORT_FEATURES,
            &image,
            &[OP_NOTIFY, 0, OP_NOTIFY, 0],
            &[1, 0, 0, 0, 0, 0, 1, 3],
        ),
    });

    // An indirect table holding a two-buffer chain.
    let mut image = Image::new(8);
    image.indirect(&[(16, false), (256, true)]);
    seeds.push(Seed {
        name: "indirect",
        data: input(8, TRANSPORT_FEATURES, &image, &notify, &[]),
    });

    // A chain that loops back on itself, and one running off the table.
    let mut image = Image::new(4);
    let buf = image.buf(8);
    let next = DESC_F_NEXT;
    image.raw(&[(buf, 8, next, 1), (buf, 8, next, 0)]);
    seeds.push(Seed {
        name: "loop",
        data: input(4, no_event_idx, &image, &notify, &[]),
    });
    let mut image = Image::new(4);
    image.raw(&[(buf, 8, next, 9)]);
    seeds.push(Seed {
        name: "next-out-of-table",
        data: input(
            4,
            no_event_idx,
            &image,
            &[OP_NOTIFY, 0, OP_RESTART, OP_NOTIFY, 0, OP_CONFIG, 0, 4],
            &[],
        ),
    });
    seeds
}
