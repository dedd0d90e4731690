//! The virtio fuzz targets (see [`crate`]): a guest driver played from the fuzz input, in
//! process and without KVM, on kite-virtio-driver as the unit tests' `testutil.rs` and the test
//! guest are. The driver sets the device up through the virtio-mmio register file, as a guest
//! does, posts descriptor chains in a fresh guest memory, and calls the device where the event
//! loop would (`process_queue` for a queue notification, `process_backend` when its host side is
//! ready). What is the harness's own: the checks below, and the operations that break the rules
//! on purpose (raw descriptors, pokes, a made-up available index).
//!
//! The driver also checks what the device gives back, where the driver itself played by the
//! rules: every used entry names a chain that was in flight, once, and says no more was written
//! than the chain could hold. A driver that wrote raw descriptors, poked guest memory or lied
//! about its available index gives up those checks (the device only has to survive it).

pub mod blk;
pub mod mmio;
pub mod net;
pub mod queue;
pub mod vsock;

use std::collections::HashMap;

use kite_virtio_driver::mmio as reg;
use kite_virtio_driver::mmio::{F_EVENT_IDX, F_INDIRECT_DESC, F_VERSION_1};
use kite_virtio_driver::{Buf, Desc, Layout, Queue, Registers};
use vm_memory::{Bytes, GuestAddress};
use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};

use crate::input::{Input, Writer};
use kite_vmm::harness::MmioTransport;
use kite_vmm::harness::{GuestRam, Interrupt, SharedDevice, lock};
use kite_vmm::memory::GuestMem;

/// Guest RAM of every run: fresh (zeroed) each time, so a run depends on its input alone.
pub const MEM_SIZE: u64 = 1 << 20;
/// Each queue's rings: descriptor table, then the driver area, then the device area, in
/// `QUEUE_AREA` bytes from `QUEUE_AREA * index` (room for 256 entries).
const QUEUE_AREA: u64 = 0x4000;
/// Buffers the driver posts go from here to the end of RAM, then around again.
const BUF_START: u64 = 0x1_0000;
/// Operations in one input: enough for any state a device has, few enough to keep runs short.
pub const MAX_OPS: usize = 256;
/// Segments in one chain the driver builds.
const MAX_SEGMENTS: u8 = 8;

/// Operations every device target's input is made of (a target adds its own after these).
pub const OP_CHAIN: u8 = 0;
pub const OP_RAW_CHAIN: u8 = 1;
pub const OP_NOTIFY: u8 = 2;
pub const OP_POKE: u8 = 3;
pub const OP_AVAIL_IDX: u8 = 4;
pub const OP_USED_EVENT: u8 = 5;
pub const OP_RESET: u8 = 6;
pub const OP_BACKEND: u8 = 7;
/// The first operation code a target defines.
pub const OP_DEVICE: u8 = 8;

/// How the driver sets the device up: the features it accepts (of those offered; VERSION_1
/// always) and each queue's size, or `None` for a queue it leaves unused.
#[derive(Clone, Debug)]
pub struct Setup {
    pub features: u64,
    pub queues: Vec<Option<u16>>,
}

impl Setup {
    /// Every offered feature but EVENT_IDX (or with it), every queue with `size` entries.
    pub fn all(queues: usize, size: u16, event_idx: bool) -> Self {
        let features = if event_idx { u64::MAX } else { !F_EVENT_IDX };
        Self {
            features,
            queues: vec![Some(size); queues],
        }
    }

    /// Read as [`Self::write`] writes it: the feature mask, then a byte per queue (log2 of its
    /// size, up to 256; bit 7 leaves the queue unused).
    pub fn read(input: &mut Input, queues: usize) -> Self {
        let features = input.u64();
        let queues = (0..queues)
            .map(|_| {
                let b = input.u8();
                (b & 0x80 == 0).then(|| 1u16 << (b & 0x0f).min(8))
            })
            .collect();
        Self { features, queues }
    }

    pub fn write(&self, w: &mut Writer) {
        w.u64(self.features);
        for q in &self.queues {
            w.u8(q.map_or(0x80, |size| size.trailing_zeros() as u8));
        }
    }
}

/// A chain the driver posted and the device has not given back.
struct InFlight {
    descs: usize,
    writable: u64,
    /// The device-writable buffers, in order.
    bufs: Vec<(u64, u16)>,
}

/// A chain the device gave back, with what it wrote into it.
#[derive(Clone, Debug)]
pub struct UsedChain {
    pub queue: usize,
    pub len: u32,
    /// The first `len` bytes of its device-writable buffers.
    pub data: Vec<u8>,
}

/// The driver's side of one queue: its rings, and the chains in flight for the checks.
#[derive(Default)]
struct DriverQueue {
    ring: Queue,
    in_flight: HashMap<u16, InFlight>,
    in_flight_descs: usize,
}

/// One descriptor of a chain the driver builds: its length, whether the device writes it, and
/// for a device-readable one what it holds (the start of it).
#[derive(Clone, Debug)]
pub struct Seg {
    pub len: u16,
    pub write: bool,
    pub data: Vec<u8>,
}

impl Seg {
    pub fn r(data: &[u8]) -> Self {
        Self {
            len: u16::try_from(data.len()).expect("segment fits in 64 KiB"),
            write: false,
            data: data.to_vec(),
        }
    }

    pub fn w(len: u16) -> Self {
        Self {
            len,
            write: true,
            data: Vec::new(),
        }
    }
}

/// Queue `q` of `queues`, if the driver set it up.
fn set_up(queues: &mut [DriverQueue], q: usize) -> Option<&mut DriverQueue> {
    queues.get_mut(q).filter(|q| q.ring.size() > 0)
}

/// A guest driver for one device.
pub struct Driver {
    pub mem: GuestMem,
    pub transport: MmioTransport,
    pub device: SharedDevice,
    setup: Setup,
    queues: Vec<DriverQueue>,
    next_buf: u64,
    /// The driver broke the rules (raw descriptors, pokes, a made-up index): skip the checks.
    tainted: bool,
    /// The device accepted the features and the queues.
    pub started: bool,
    restarted: bool,
    /// Chains the device gave back (while the driver kept to the rules), for the target to look
    /// at; only kept when `record_used` is set.
    pub used: Vec<UsedChain>,
    pub record_used: bool,
}

impl Driver {
    /// Put `device` behind a fresh transport in fresh guest RAM; `None` if the transport refuses
    /// the device (a queue size that is not a power of two).
    pub fn new(device: SharedDevice) -> Option<Self> {
        let mem = kite_vmm::memory::create(MEM_SIZE).expect("guest memory");
        let irq = EventFd::new(EFD_NONBLOCK).expect("eventfd");
        let n = lock(&device).queue_max_sizes().len();
        let events = (0..n)
            .map(|_| EventFd::new(EFD_NONBLOCK).expect("eventfd"))
            .collect();
        let transport =
            MmioTransport::new(device.clone(), mem.clone(), Interrupt::new(irq), events).ok()?;
        Some(Self {
            mem,
            transport,
            device,
            setup: Setup {
                features: 0,
                queues: Vec::new(),
            },
            queues: Vec::new(),
            next_buf: BUF_START,
            tainted: false,
            started: false,
            restarted: false,
            used: Vec::new(),
            record_used: false,
        })
    }

    pub fn read(&mut self, offset: u64) -> u32 {
        self.transport.read(offset)
    }

    pub fn write(&mut self, offset: u64, value: u32) {
        self.transport.write(offset, value)
    }

    /// Reset the device and negotiate `features` (of those offered); whether it took them.
    pub fn negotiate(&mut self, features: u64) -> bool {
        reg::negotiate(&mut self.transport, |offered| {
            (offered & features) | F_VERSION_1
        })
        .is_some()
    }

    /// Set DRIVER_OK; whether the device started (and is not asking for a reset).
    pub fn driver_ok(&mut self) -> bool {
        reg::started(reg::driver_ok(&mut self.transport))
    }

    /// The whole start-up with `setup`, each queue's rings in its own area (zeroed). Whether the
    /// device started.
    pub fn start(&mut self, setup: &Setup) -> bool {
        self.setup = setup.clone();
        self.queues.clear();
        self.tainted = false;
        self.next_buf = BUF_START;
        self.started = false;
        if !self.negotiate(setup.features) {
            return false;
        }
        let max_sizes = lock(&self.device).queue_max_sizes().to_vec();
        for (i, &max) in max_sizes.iter().enumerate() {
            let base = QUEUE_AREA * i as u64;
            let size = setup.queues.get(i).copied().flatten().map(|s| s.min(max));
            let layout = Layout {
                size: size.unwrap_or(0),
                desc: base,
                avail: base + 0x1000,
                used: base + 0x2000,
            };
            if self.restarted {
                self.mem
                    .write_slice(&[0u8; QUEUE_AREA as usize], GuestAddress(base))
                    .expect("queue area in guest memory");
            }
            if let Some(size) = size {
                reg::queue_registers(&mut self.transport, i as u32, size.into(), &layout, true);
            }
            self.queues.push(DriverQueue {
                ring: Queue::new(layout, false),
                ..DriverQueue::default()
            });
        }
        self.started = self.driver_ok();
        // Guest RAM starts zeroed: only a restart has rings to clear.
        self.restarted = true;
        self.started
    }

    fn queue_index(&self, input: &mut Input) -> usize {
        usize::from(input.u8()) % self.queues.len().max(1)
    }

    /// Guest memory for `len` bytes, 16-byte aligned.
    pub fn alloc(&mut self, len: u64) -> u64 {
        let len = len.next_multiple_of(16).max(16);
        if self.next_buf + len > MEM_SIZE {
            self.next_buf = BUF_START;
            // Memory of chains still in flight gets reused: a driver bug the device must
            // survive.
            if self.queues.iter().any(|q| !q.in_flight.is_empty()) {
                self.tainted = true;
            }
        }
        let addr = self.next_buf;
        self.next_buf += len;
        addr
    }

    /// Write `table` at queue `q`'s next table slots and make the first available. Returns its
    /// index.
    fn push_raw(&mut self, q: usize, table: &[Desc]) -> Option<u16> {
        let queue = set_up(&mut self.queues, q)?;
        Some(queue.ring.push_raw(&mut GuestRam(&self.mem), table))
    }

    /// Post a well-formed chain of `segs` on queue `q` (behind one indirect descriptor if
    /// `indirect`); returns its head.
    pub fn post(&mut self, q: usize, segs: &[Seg], indirect: bool) -> Option<u16> {
        let size = set_up(&mut self.queues, q)?.ring.size();
        if segs.is_empty() {
            return None;
        }
        let mut table = Vec::with_capacity(segs.len());
        let mut writable = 0u64;
        let mut bufs = Vec::new();
        for seg in segs {
            let addr = self.alloc(u64::from(seg.len));
            if !seg.write {
                // What the data leaves of the buffer holds whatever was there: zeroes, or an
                // earlier buffer's bytes once the allocation went round.
                let n = seg.data.len().min(usize::from(seg.len));
                self.mem
                    .write_slice(&seg.data[..n], GuestAddress(addr))
                    .expect("buffer in guest memory");
                table.push(Buf::r(addr, u32::from(seg.len)));
            } else {
                writable += u64::from(seg.len);
                bufs.push((addr, seg.len));
                table.push(Buf::w(addr, u32::from(seg.len)));
            }
        }
        let descs = if indirect { 1 } else { table.len() };
        let queue = set_up(&mut self.queues, q)?;
        if queue.in_flight_descs + descs > usize::from(size) {
            // Slots still in flight get overwritten: a driver bug the device must survive.
            self.tainted = true;
        }
        let indirect_at = indirect.then(|| self.alloc(16 * table.len() as u64));
        let queue = set_up(&mut self.queues, q)?;
        let mem = &mut GuestRam(&self.mem);
        let head = match indirect_at {
            Some(at) => queue.ring.push_indirect(mem, at, &table),
            None => queue.ring.push(mem, &table),
        };
        queue.in_flight_descs += descs;
        if queue
            .in_flight
            .insert(
                head,
                InFlight {
                    descs,
                    writable,
                    bufs,
                },
            )
            .is_some()
        {
            self.tainted = true;
        }
        Some(head)
    }

    /// The device was notified (or woke by itself): check every queue's used ring.
    pub fn check_used(&mut self) {
        for q in 0..self.queues.len() {
            self.check_used_queue(q);
        }
    }

    fn check_used_queue(&mut self, q: usize) {
        let record = self.record_used;
        let Some(queue) = set_up(&mut self.queues, q) else {
            return;
        };
        let mem = GuestRam(&self.mem);
        if self.tainted {
            queue.ring.skip_used(&mem);
            return;
        }
        let new = queue
            .ring
            .used_idx(&mem)
            .wrapping_sub(queue.ring.last_used());
        assert!(
            usize::from(new) <= queue.in_flight.len(),
            "queue {q}: {new} chains used, {} in flight",
            queue.in_flight.len()
        );
        while let Some((id, len)) = queue.ring.pop_used(&mem) {
            assert!(id < u32::from(queue.ring.size()), "queue {q}: used id {id}");
            let chain = queue
                .in_flight
                .remove(&(id as u16))
                .unwrap_or_else(|| panic!("queue {q}: chain {id} used but not in flight"));
            assert!(
                u64::from(len) <= chain.writable,
                "queue {q}: chain {id} used with {len} bytes written, {} writable",
                chain.writable
            );
            queue.in_flight_descs -= chain.descs;
            if record {
                let mut data = Vec::with_capacity(len as usize);
                for &(addr, n) in &chain.bufs {
                    let take = usize::from(n).min(len as usize - data.len());
                    let start = data.len();
                    data.resize(start + take, 0);
                    self.mem
                        .read_slice(&mut data[start..], GuestAddress(addr))
                        .expect("buffer in guest memory");
                }
                self.used.push(UsedChain {
                    queue: q,
                    len,
                    data,
                });
            }
        }
    }

    /// The event loop would call the device for queue `q`'s notification (and again while it
    /// says it stopped with work left).
    pub fn notify(&mut self, q: usize) {
        for _ in 0..4 {
            if !lock(&self.device).process_queue(q) {
                break;
            }
        }
        self.check_used();
    }

    /// The event loop would call the device while its backend descriptor is readable (and it
    /// stays readable while the device has work left).
    pub fn backend(&mut self) {
        let Some(fd) = lock(&self.device).backend_fd() else {
            return;
        };
        for _ in 0..8 {
            let mut poll = libc::pollfd {
                fd,
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: `poll` is one valid pollfd that outlives the call, which only writes its
            // `revents`; a timeout of 0 never waits.
            if unsafe { libc::poll(&mut poll, 1, 0) } != 1 {
                break;
            }
            lock(&self.device).process_backend();
            self.check_used();
        }
    }

    /// Read a chain of segments from the input (as [`write_chain`] writes it) and post it.
    fn chain_op(&mut self, input: &mut Input) {
        let q = self.queue_index(input);
        let flags = input.u8();
        let n = input.u8() % MAX_SEGMENTS + 1;
        let segs: Vec<Seg> = (0..n)
            .map(|_| {
                let write = input.bool();
                let len = input.u16();
                let data = if write {
                    Vec::new()
                } else {
                    input.bytes(usize::from(len)).to_vec()
                };
                Seg { len, write, data }
            })
            .collect();
        self.post(q, &segs, flags & 1 != 0);
        if flags & 2 != 0 {
            self.notify(q);
        }
    }

    /// Run the operations common to every device target; returns the operation back if it is
    /// the target's own.
    pub fn op(&mut self, op: u8, input: &mut Input) -> Option<u8> {
        match op {
            OP_CHAIN => self.chain_op(input),
            OP_RAW_CHAIN => {
                let q = self.queue_index(input);
                let n = input.u8() % MAX_SEGMENTS + 1;
                let table: Vec<_> = (0..n)
                    .map(|_| {
                        let addr = u64::from(input.u32());
                        Desc::new(addr, input.u32(), input.u16(), input.u16())
                    })
                    .collect();
                self.tainted = true;
                self.push_raw(q, &table);
            }
            OP_NOTIFY => {
                let q = self.queue_index(input);
                self.notify(q);
            }
            OP_POKE => {
                let addr = u64::from(input.u32()) % MEM_SIZE;
                let data = input.short_bytes();
                let n = data.len().min((MEM_SIZE - addr) as usize);
                self.tainted = true;
                let _ = self.mem.write_slice(&data[..n], GuestAddress(addr));
            }
            OP_AVAIL_IDX => {
                let q = self.queue_index(input);
                let idx = input.u16();
                if let Some(queue) = set_up(&mut self.queues, q) {
                    queue.ring.set_avail_idx(&mut GuestRam(&self.mem), idx);
                    self.tainted = true;
                }
            }
            OP_USED_EVENT => {
                let q = self.queue_index(input);
                let idx = input.u16();
                if let Some(queue) = set_up(&mut self.queues, q) {
                    queue.ring.set_used_event(&mut GuestRam(&self.mem), idx);
                }
            }
            OP_RESET => {
                let setup = self.setup.clone();
                self.start(&setup);
            }
            OP_BACKEND => self.backend(),
            op => return Some(op),
        }
        None
    }

    /// Run a device target's input: the set-up, then operations until the input runs out;
    /// `device_op` runs the target's own operations (numbered from 0).
    pub fn run(
        &mut self,
        input: &mut Input,
        device_ops: u8,
        mut device_op: impl FnMut(&mut Self, u8, &mut Input),
    ) {
        let queues = lock(&self.device).queue_max_sizes().len();
        let setup = Setup::read(input, queues);
        self.start(&setup);
        for _ in 0..MAX_OPS {
            if input.is_empty() {
                break;
            }
            let op = input.u8() % (OP_DEVICE + device_ops);
            if let Some(op) = self.op(op, input) {
                device_op(self, op - OP_DEVICE, input);
            }
        }
    }
}

/// Builds a device target's input as [`Driver::run`] reads it.
pub struct Script(Writer);

impl Script {
    pub fn new(setup: &Setup) -> Self {
        let mut w = Writer::new();
        setup.write(&mut w);
        Self(w)
    }

    /// [`OP_CHAIN`]: post `segs` on queue `q` (`indirect`ly), and notify it if `notify`.
    pub fn chain(&mut self, q: u8, segs: &[Seg], indirect: bool, notify: bool) -> &mut Self {
        let flags = u8::from(indirect) | (u8::from(notify) << 1);
        let n = u8::try_from(segs.len() - 1).expect("at most 8 segments");
        assert!(n < MAX_SEGMENTS);
        self.0.u8(OP_CHAIN).u8(q).u8(flags).u8(n);
        for seg in segs {
            self.0.u8(u8::from(seg.write)).u16(seg.len);
            if !seg.write {
                let mut data = seg.data.clone();
                data.resize(usize::from(seg.len), 0);
                self.0.bytes(&data);
            }
        }
        self
    }

    /// [`OP_RAW_CHAIN`]: descriptors `(addr, len, flags, next)` as they are.
    pub fn raw_chain(&mut self, q: u8, table: &[(u32, u32, u16, u16)]) -> &mut Self {
        let n = u8::try_from(table.len() - 1).expect("at most 8 descriptors");
        assert!(n < MAX_SEGMENTS);
        self.0.u8(OP_RAW_CHAIN).u8(q).u8(n);
        for &(addr, len, flags, next) in table {
            self.0.u32(addr).u32(len).u16(flags).u16(next);
        }
        self
    }

    pub fn notify(&mut self, q: u8) -> &mut Self {
        self.0.u8(OP_NOTIFY).u8(q);
        self
    }

    pub fn poke(&mut self, addr: u32, data: &[u8]) -> &mut Self {
        self.0.u8(OP_POKE).u32(addr).short_bytes(data);
        self
    }

    pub fn avail_idx(&mut self, q: u8, idx: u16) -> &mut Self {
        self.0.u8(OP_AVAIL_IDX).u8(q).u16(idx);
        self
    }

    pub fn used_event(&mut self, q: u8, idx: u16) -> &mut Self {
        self.0.u8(OP_USED_EVENT).u8(q).u16(idx);
        self
    }

    pub fn reset(&mut self) -> &mut Self {
        self.0.u8(OP_RESET);
        self
    }

    pub fn backend(&mut self) -> &mut Self {
        self.0.u8(OP_BACKEND);
        self
    }

    /// A target's own operation `op` (numbered from 0); its fields follow through
    /// [`Self::fields`].
    pub fn device_op(&mut self, op: u8) -> &mut Self {
        self.0.u8(OP_DEVICE + op);
        self
    }

    pub fn fields(&mut self) -> &mut Writer {
        &mut self.0
    }

    pub fn finish(&mut self) -> Vec<u8> {
        self.0.finish()
    }
}

/// The transport's own feature bits, for targets that build a setup by hand.
pub const TRANSPORT_FEATURES: u64 = F_VERSION_1 | F_INDIRECT_DESC | F_EVENT_IDX;

#[cfg(test)]
mod tests {
    use virtio_bindings::virtio_blk::{VIRTIO_BLK_S_OK, VIRTIO_BLK_T_IN};

    use super::*;

    /// The driver's plumbing works end to end, so the targets reach the devices' request
    /// handling: a virtio-blk read, with and without EVENT_IDX, comes back complete and checked.
    #[test]
    fn driver_gets_a_block_read_back() {
        for event_idx in [false, true] {
            let mut driver = Driver::new(blk::device()).unwrap();
            assert!(driver.start(&Setup::all(1, 16, event_idx)));
            driver.record_used = true;
            let read = [
                Seg::r(&blk::header(VIRTIO_BLK_T_IN, 2)),
                Seg::w(512),
                Seg::w(1),
            ];
            driver.post(0, &read, event_idx).unwrap();
            driver.notify(0);
            assert_eq!(driver.used.len(), 1);
            let used = &driver.used[0];
            assert_eq!(used.len, 513);
            assert_eq!(used.data[512], VIRTIO_BLK_S_OK as u8);
        }
    }
}
