//! A guest driver played in-process, for unit tests, on kite-virtio-driver (as the test guest and
//! the fuzz harness are): it sets devices up through the mmio registers, posts descriptor chains
//! in a `GuestMemoryMmap`, rings the doorbell through the register file and runs the event loop
//! that wakes the device. No KVM is involved. Chains take the table's slots one after another,
//! so a test knows which slot each descriptor is in.

use std::sync::{Arc, Mutex};

use event_manager::{EventManager, MutEventSubscriber, SubscriberOps};
/// A buffer of a chain: `Desc::r` the device reads, `Desc::w` it writes.
pub use kite_virtio_driver::Buf as Desc;
use kite_virtio_driver::{Layout, Queue, mmio, need_event};
use virtio_bindings::virtio_ring::VIRTIO_RING_F_EVENT_IDX;
use vm_memory::{Bytes, GuestAddress};
use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};

use super::device::{Interrupt, QueueEvents, SharedDevice};
use super::driver::GuestRam;
use super::mmio::MmioTransport;
use crate::memory::GuestMem;

pub const MEM_SIZE: u64 = 8 << 20;
const QUEUE_AREA: u64 = 0x1_0000;
const BUF_AREA: u64 = 0x10_0000;

type Subscriber = Arc<Mutex<dyn MutEventSubscriber + Send>>;

pub struct Guest {
    pub mem: GuestMem,
    pub transport: MmioTransport,
    pub device: SharedDevice,
    pub irq: EventFd,
    events: EventManager<Subscriber>,
    queues: Vec<Queue>,
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
        kite_virtio_driver::Registers::read(&mut self.transport, offset)
    }

    pub fn write(&mut self, offset: u64, value: u32) {
        kite_virtio_driver::Registers::write(&mut self.transport, offset, value)
    }

    pub fn status(&mut self) -> u32 {
        self.read(mmio::STATUS)
    }

    pub fn set_status(&mut self, bits: u32) {
        mmio::set_status(&mut self.transport, bits)
    }

    pub fn device_features(&mut self) -> u64 {
        mmio::device_features(&mut self.transport)
    }

    /// Reset, ACKNOWLEDGE, DRIVER, write `features`, FEATURES_OK; whether the device took them.
    pub fn negotiate(&mut self, features: u64) -> bool {
        mmio::negotiate(&mut self.transport, |_| features).is_some()
    }

    /// Write queue `index`'s registers for a ring of `size` entries in its own 64 KiB area.
    pub fn setup_queue(&mut self, index: u32, size: u16) {
        let base = QUEUE_AREA * (u64::from(index) + 1);
        let layout = Layout {
            size,
            desc: base,
            avail: base + 0x4000,
            used: base + 0x8000,
        };
        self.mem
            .write_slice(&[0u8; 0x10000], GuestAddress(base))
            .unwrap();
        let (ready, max) = mmio::select_queue(&mut self.transport, index);
        assert!(!ready, "queue {index} already in use");
        assert!(u32::from(size) <= max);
        mmio::queue_registers(&mut self.transport, index, u32::from(size), &layout, true);
        let i = index as usize;
        if self.queues.len() <= i {
            self.queues.resize_with(i + 1, Queue::default);
        }
        self.queues[i] = Queue::new(layout, false);
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
        let status = mmio::driver_ok(&mut self.transport);
        assert!(mmio::started(status), "device did not start");
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
        let table: Vec<_> = table
            .iter()
            .map(|&(addr, len, flags, next)| kite_virtio_driver::Desc::new(addr, len, flags, next))
            .collect();
        self.queues[queue].push_raw(&mut GuestRam(&self.mem), &table)
    }

    /// Put descriptor index `head` on the available ring.
    pub fn make_available(&mut self, queue: usize, head: u16) {
        self.queues[queue].publish(&mut GuestRam(&self.mem), head)
    }

    /// Set the available ring's index directly (to fake a driver that lies about it).
    pub fn set_avail_idx(&mut self, queue: usize, idx: u16) {
        self.queues[queue].set_avail_idx(&mut GuestRam(&self.mem), idx)
    }

    /// Post a well-formed chain of `descs`; returns the head index.
    pub fn push(&mut self, queue: usize, descs: &[Desc]) -> u16 {
        self.queues[queue].push(&mut GuestRam(&self.mem), descs)
    }

    /// Post `descs` as an indirect table behind a single ring descriptor.
    pub fn push_indirect(&mut self, queue: usize, descs: &[Desc]) -> u16 {
        let table = self.alloc(16 * descs.len() as u32);
        self.queues[queue].push_indirect(&mut GuestRam(&self.mem), table, descs)
    }

    /// Ring queue `index`'s doorbell through the register file and run the event loop once.
    pub fn kick(&mut self, queue: u32) {
        mmio::notify(&mut self.transport, queue as u16);
        self.run_events();
    }

    /// Run the event loop once without waiting; returns how many events it dispatched.
    pub fn run_events(&mut self) -> usize {
        self.events.run_with_timeout(0).unwrap()
    }

    pub fn used_idx(&self, queue: usize) -> u16 {
        self.queues[queue].used_idx(&GuestRam(&self.mem))
    }

    /// Used ring entry `n` as `(head, len)`.
    pub fn used(&self, queue: usize, n: u16) -> (u32, u32) {
        self.queues[queue].used_elem(&GuestRam(&self.mem), n)
    }

    /// EVENT_IDX: write used_event (after the available ring), the used index past which the
    /// driver wants an interrupt.
    pub fn set_used_event(&mut self, queue: usize, idx: u16) {
        self.queues[queue].set_used_event(&mut GuestRam(&self.mem), idx)
    }

    /// EVENT_IDX: avail_event (after the used ring), the available index past which the device
    /// wants a notification.
    pub fn avail_event(&self, queue: usize) -> u16 {
        self.queues[queue].avail_event(&GuestRam(&self.mem))
    }

    /// Without EVENT_IDX: whether the device set VIRTQ_USED_F_NO_NOTIFY in the used ring's
    /// flags (the driver need not notify what it posts).
    pub fn no_notify(&self, queue: usize) -> bool {
        let flags = kite_virtio_driver::Memory::read_u16(
            &GuestRam(&self.mem),
            self.queues[queue].layout.used,
        );
        flags & 1 != 0
    }

    /// The available index the driver published last.
    pub fn avail_idx(&self, queue: usize) -> u16 {
        self.queues[queue].avail_idx()
    }

    /// EVENT_IDX: whether a driver that moved the available index from `old` to where it is now
    /// must notify the device (avail_event lies in `old..new`, wrapping), as Linux decides.
    pub fn kick_wanted(&self, queue: usize, old: u16) -> bool {
        need_event(self.avail_event(queue), self.avail_idx(queue), old)
    }

    /// EVENT_IDX: post `descs` and notify the device only if it asked to be (see
    /// [`Self::kick_wanted`]); the event loop runs either way. Returns the head and whether the
    /// driver notified.
    pub fn post(&mut self, queue: usize, descs: &[Desc]) -> (u16, bool) {
        let old = self.avail_idx(queue);
        let head = self.push(queue, descs);
        let kicked = self.kick_wanted(queue, old);
        if kicked {
            mmio::notify(&mut self.transport, queue as u16);
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
        self.status() & mmio::S_NEEDS_RESET != 0
    }
}
