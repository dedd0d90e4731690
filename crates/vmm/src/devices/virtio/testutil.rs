//! A guest driver played in-process, for unit tests: it sets devices up through the mmio
//! registers, posts descriptor chains in a `GuestMemoryMmap`, rings the doorbell through the
//! register file and runs the event loop that wakes the device. No KVM is involved.

use std::sync::{Arc, Mutex};

use event_manager::{EventManager, MutEventSubscriber, SubscriberOps};
use virtio_bindings::virtio_config::{
    VIRTIO_CONFIG_S_ACKNOWLEDGE, VIRTIO_CONFIG_S_DRIVER, VIRTIO_CONFIG_S_DRIVER_OK,
    VIRTIO_CONFIG_S_FEATURES_OK,
};
use virtio_bindings::virtio_ring::{
    VIRTIO_RING_F_EVENT_IDX, VRING_DESC_F_INDIRECT, VRING_DESC_F_NEXT, VRING_DESC_F_WRITE,
};
use virtio_queue::desc::split::Descriptor;
use vm_memory::{Bytes, GuestAddress};
use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};

use super::device::{Interrupt, QueueEvents, SharedDevice};
use super::mmio::MmioTransport;
use crate::bus::BusDevice;
use crate::memory::GuestMem;

pub const MEM_SIZE: u64 = 8 << 20;
const QUEUE_AREA: u64 = 0x1_0000;
const BUF_AREA: u64 = 0x10_0000;

/// One descriptor as the test writes it.
#[derive(Clone, Copy, Debug)]
pub struct Desc {
    pub addr: u64,
    pub len: u32,
    pub write: bool,
}

impl Desc {
    pub fn r(addr: u64, len: u32) -> Self {
        Self {
            addr,
            len,
            write: false,
        }
    }
    pub fn w(addr: u64, len: u32) -> Self {
        Self {
            addr,
            len,
            write: true,
        }
    }
}

struct GuestQueue {
    size: u16,
    desc: u64,
    avail: u64,
    used: u64,
    next_desc: u16,
    avail_idx: u16,
}

type Subscriber = Arc<Mutex<dyn MutEventSubscriber + Send>>;

pub struct Guest {
    pub mem: GuestMem,
    pub transport: MmioTransport,
    pub device: SharedDevice,
    pub irq: EventFd,
    events: EventManager<Subscriber>,
    queues: Vec<GuestQueue>,
    next_buf: u64,
}

impl Guest {
    /// Put `device` behind a transport, with a queue eventfd per queue on an event loop.
    pub fn new(device: SharedDevice) -> Self {
        let mem = crate::memory::create(MEM_SIZE).unwrap();
        let irq = EventFd::new(EFD_NONBLOCK).unwrap();
        let interrupt = Interrupt::new(irq.try_clone().unwrap());
        let n = super::device::lock(&device).queue_max_sizes().len();
        let evts: Vec<EventFd> = (0..n)
            .map(|_| EventFd::new(EFD_NONBLOCK).unwrap())
            .collect();
        let clones = evts.iter().map(|e| e.try_clone().unwrap()).collect();
        let transport = MmioTransport::new(device.clone(), mem.clone(), interrupt, clones).unwrap();
        let mut events = EventManager::<Subscriber>::new().unwrap();
        events.add_subscriber(Arc::new(Mutex::new(QueueEvents::new(device.clone(), evts))));
        Self {
            mem,
            transport,
            device,
            irq,
            events,
            queues: Vec::new(),
            next_buf: BUF_AREA,
        }
    }

    pub fn read(&mut self, offset: u64) -> u32 {
        let mut data = [0u8; 4];
        self.transport.read(offset, &mut data);
        u32::from_le_bytes(data)
    }

    pub fn write(&mut self, offset: u64, value: u32) {
        self.transport.write(offset, &value.to_le_bytes());
    }

    pub fn status(&mut self) -> u32 {
        self.read(0x70)
    }

    pub fn set_status(&mut self, bits: u32) {
        let s = self.status();
        self.write(0x70, s | bits);
    }

    pub fn device_features(&mut self) -> u64 {
        self.write(0x14, 1);
        let high = self.read(0x10);
        self.write(0x14, 0);
        let low = self.read(0x10);
        (u64::from(high) << 32) | u64::from(low)
    }

    /// Reset, ACKNOWLEDGE, DRIVER, write `features`, FEATURES_OK; whether the device took them.
    pub fn negotiate(&mut self, features: u64) -> bool {
        self.write(0x70, 0);
        self.set_status(VIRTIO_CONFIG_S_ACKNOWLEDGE);
        self.set_status(VIRTIO_CONFIG_S_DRIVER);
        self.write(0x24, 0);
        self.write(0x20, features as u32);
        self.write(0x24, 1);
        self.write(0x20, (features >> 32) as u32);
        self.set_status(VIRTIO_CONFIG_S_FEATURES_OK);
        self.status() & VIRTIO_CONFIG_S_FEATURES_OK != 0
    }

    /// Write queue `index`'s registers for a ring of `size` entries in its own 64 KiB area.
    pub fn setup_queue(&mut self, index: u32, size: u16) {
        let base = QUEUE_AREA * (u64::from(index) + 1);
        let q = GuestQueue {
            size,
            desc: base,
            avail: base + 0x4000,
            used: base + 0x8000,
            next_desc: 0,
            avail_idx: 0,
        };
        self.mem
            .write_slice(&[0u8; 0x10000], GuestAddress(base))
            .unwrap();
        self.write(0x30, index);
        assert_eq!(self.read(0x44), 0, "queue {index} already in use");
        assert!(u32::from(size) <= self.read(0x34));
        self.write(0x38, u32::from(size));
        for (low, addr) in [(0x80, q.desc), (0x90, q.avail), (0xa0, q.used)] {
            self.write(low, addr as u32);
            self.write(low + 4, (addr >> 32) as u32);
        }
        self.write(0x44, 1);
        let i = index as usize;
        if self.queues.len() <= i {
            self.queues.resize_with(i + 1, || GuestQueue {
                size: 0,
                desc: 0,
                avail: 0,
                used: 0,
                next_desc: 0,
                avail_idx: 0,
            });
        }
        self.queues[i] = q;
    }

    /// The whole start-up: every offered feature but EVENT_IDX (the driver notifies every buffer
    /// and wants every interrupt), every queue with `size` entries, DRIVER_OK.
    pub fn start(&mut self, size: u16) {
        self.start_with(size, false);
    }

    /// [`Self::start`] with EVENT_IDX accepted too.
    pub fn start_event_idx(&mut self, size: u16) {
        self.start_with(size, true);
    }

    fn start_with(&mut self, size: u16, event_idx: bool) {
        let offered = self.device_features();
        let bit = 1u64 << VIRTIO_RING_F_EVENT_IDX;
        assert_ne!(offered & bit, 0, "EVENT_IDX not offered");
        let features = if event_idx { offered } else { offered & !bit };
        assert!(self.negotiate(features));
        let n = super::device::lock(&self.device).queue_max_sizes().len();
        for i in 0..n {
            self.setup_queue(i as u32, size);
        }
        self.set_status(VIRTIO_CONFIG_S_DRIVER_OK);
        assert_eq!(self.status() & 0x4f, 0x0f, "device did not start");
    }

    /// Guest memory for a buffer of `len` bytes (page-aligned, zeroed).
    pub fn alloc(&mut self, len: u32) -> u64 {
        let addr = self.next_buf;
        self.next_buf += u64::from(len).next_multiple_of(0x1000).max(0x1000);
        assert!(self.next_buf <= MEM_SIZE, "test ran out of guest memory");
        self.mem
            .write_slice(&vec![0u8; len as usize], GuestAddress(addr))
            .unwrap();
        addr
    }

    /// A buffer holding `data`.
    pub fn buf(&mut self, data: &[u8]) -> u64 {
        let addr = self.alloc(data.len() as u32);
        self.mem.write_slice(data, GuestAddress(addr)).unwrap();
        addr
    }

    pub fn bytes(&self, addr: u64, len: usize) -> Vec<u8> {
        let mut v = vec![0u8; len];
        self.mem.read_slice(&mut v, GuestAddress(addr)).unwrap();
        v
    }

    /// Write raw descriptors `(addr, len, flags, next)` at the next free table slots and make
    /// the first one available. Returns its index.
    pub fn push_raw(&mut self, queue: usize, table: &[(u64, u32, u16, u16)]) -> u16 {
        let q = &mut self.queues[queue];
        let head = q.next_desc;
        for (i, &(addr, len, flags, next)) in table.iter().enumerate() {
            let slot = (head as usize + i) % q.size as usize;
            let desc = Descriptor::new(addr, len, flags, next);
            self.mem
                .write_obj(desc, GuestAddress(q.desc + 16 * slot as u64))
                .unwrap();
        }
        q.next_desc = ((head as usize + table.len()) % q.size as usize) as u16;
        self.make_available(queue, head);
        head
    }

    /// Put descriptor index `head` on the available ring.
    pub fn make_available(&mut self, queue: usize, head: u16) {
        let q = &mut self.queues[queue];
        let slot = u64::from(q.avail_idx % q.size);
        self.mem
            .write_obj(head, GuestAddress(q.avail + 4 + 2 * slot))
            .unwrap();
        q.avail_idx = q.avail_idx.wrapping_add(1);
        self.mem
            .write_obj(q.avail_idx, GuestAddress(q.avail + 2))
            .unwrap();
    }

    /// Set the available ring's index directly (to fake a driver that lies about it).
    pub fn set_avail_idx(&mut self, queue: usize, idx: u16) {
        let q = &mut self.queues[queue];
        q.avail_idx = idx;
        self.mem.write_obj(idx, GuestAddress(q.avail + 2)).unwrap();
    }

    /// Post a well-formed chain of `descs`; returns the head index.
    pub fn push(&mut self, queue: usize, descs: &[Desc]) -> u16 {
        let q = &self.queues[queue];
        let head = q.next_desc;
        let size = q.size;
        let table: Vec<_> = descs
            .iter()
            .enumerate()
            .map(|(i, d)| {
                let last = i + 1 == descs.len();
                let mut flags = if d.write {
                    VRING_DESC_F_WRITE as u16
                } else {
                    0
                };
                if !last {
                    flags |= VRING_DESC_F_NEXT as u16;
                }
                let next = ((head as usize + i + 1) % size as usize) as u16;
                (d.addr, d.len, flags, if last { 0 } else { next })
            })
            .collect();
        self.push_raw(queue, &table)
    }

    /// Post `descs` as an indirect table behind a single ring descriptor.
    pub fn push_indirect(&mut self, queue: usize, descs: &[Desc]) -> u16 {
        let table = self.alloc(16 * descs.len() as u32);
        for (i, d) in descs.iter().enumerate() {
            let last = i + 1 == descs.len();
            let mut flags = if d.write {
                VRING_DESC_F_WRITE as u16
            } else {
                0
            };
            if !last {
                flags |= VRING_DESC_F_NEXT as u16;
            }
            let next = if last { 0 } else { i as u16 + 1 };
            let desc = Descriptor::new(d.addr, d.len, flags, next);
            self.mem
                .write_obj(desc, GuestAddress(table + 16 * i as u64))
                .unwrap();
        }
        let len = 16 * descs.len() as u32;
        self.push_raw(queue, &[(table, len, VRING_DESC_F_INDIRECT as u16, 0)])
    }

    /// Ring queue `index`'s doorbell through the register file and run the event loop once.
    pub fn kick(&mut self, queue: u32) {
        self.write(super::mmio::QUEUE_NOTIFY, queue);
        self.run_events();
    }

    /// Run the event loop once without waiting; returns how many events it dispatched.
    pub fn run_events(&mut self) -> usize {
        self.events.run_with_timeout(0).unwrap()
    }

    pub fn used_idx(&self, queue: usize) -> u16 {
        let q = &self.queues[queue];
        self.mem.read_obj(GuestAddress(q.used + 2)).unwrap()
    }

    /// Used ring entry `n` as `(head, len)`.
    pub fn used(&self, queue: usize, n: u16) -> (u32, u32) {
        let q = &self.queues[queue];
        let at = q.used + 4 + 8 * u64::from(n % q.size);
        let id: u32 = self.mem.read_obj(GuestAddress(at)).unwrap();
        let len: u32 = self.mem.read_obj(GuestAddress(at + 4)).unwrap();
        (id, len)
    }

    /// EVENT_IDX: write used_event (after the available ring), the used index past which the
    /// driver wants an interrupt.
    pub fn set_used_event(&mut self, queue: usize, idx: u16) {
        let q = &self.queues[queue];
        let at = q.avail + 4 + 2 * u64::from(q.size);
        self.mem.write_obj(idx, GuestAddress(at)).unwrap();
    }

    /// EVENT_IDX: avail_event (after the used ring), the available index past which the device
    /// wants a notification.
    pub fn avail_event(&self, queue: usize) -> u16 {
        let q = &self.queues[queue];
        let at = q.used + 4 + 8 * u64::from(q.size);
        self.mem.read_obj(GuestAddress(at)).unwrap()
    }

    /// The available index the driver published last.
    pub fn avail_idx(&self, queue: usize) -> u16 {
        self.queues[queue].avail_idx
    }

    /// EVENT_IDX: whether a driver that moved the available index from `old` to where it is now
    /// must notify the device (avail_event lies in `old..new`, wrapping), as Linux decides.
    pub fn kick_wanted(&self, queue: usize, old: u16) -> bool {
        let new = self.avail_idx(queue);
        let event = self.avail_event(queue);
        new.wrapping_sub(event).wrapping_sub(1) < new.wrapping_sub(old)
    }

    /// EVENT_IDX: post `descs` and notify the device only if it asked to be (see
    /// [`Self::kick_wanted`]); the event loop runs either way. Returns the head and whether the
    /// driver notified.
    pub fn post(&mut self, queue: usize, descs: &[Desc]) -> (u16, bool) {
        let old = self.avail_idx(queue);
        let head = self.push(queue, descs);
        let kicked = self.kick_wanted(queue, old);
        if kicked {
            self.write(super::mmio::QUEUE_NOTIFY, queue as u32);
        }
        self.run_events();
        (head, kicked)
    }

    /// Whether the irqfd fired since the last call.
    pub fn irq_fired(&self) -> bool {
        self.irq.read().is_ok()
    }

    /// Whether the device reports DEVICE_NEEDS_RESET.
    pub fn needs_reset(&mut self) -> bool {
        self.status() & 0x40 != 0
    }
}
