//! What a virtio device sees of the world: its queues, its configuration space and an interrupt
//! handle. The transport ([`super::mmio`]) owns the registers; a device only implements
//! [`VirtioDevice`] and does its work when the event loop tells it a queue was notified, or, for
//! a device with host-side I/O of its own (a tap, sockets), that its backend is ready.

use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering, fence};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use event_manager::{EventOps, EventSet, Events, MutEventSubscriber};
use log::{debug, error, warn};
use virtio_bindings::virtio_mmio::{VIRTIO_MMIO_INT_CONFIG, VIRTIO_MMIO_INT_VRING};
use virtio_queue::{DescriptorChain, Queue, QueueOwnedT, QueueT};
use vm_memory::{Address, Bytes, GuestAddress};
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet as EpollSet};
use vmm_sys_util::eventfd::EventFd;

use super::chain::{Chain, read_chain};
use super::rate_limiter::LimiterState;
use crate::memory::GuestMem;

/// A virtio device behind a transport.
pub trait VirtioDevice: Send {
    /// The virtio device ID (`VIRTIO_ID_*`).
    fn device_type(&self) -> u32;
    /// The largest size of each queue (each a power of two); one entry per queue.
    fn queue_max_sizes(&self) -> &[u16];
    /// Device-specific feature bits offered to the driver (the transport adds its own).
    fn features(&self) -> u64;
    /// Read `data.len()` bytes at `offset` of the device-specific configuration space.
    fn read_config(&self, offset: u64, data: &mut [u8]);
    /// The driver set DRIVER_OK: start serving `queues` (those not ready must be left alone).
    fn activate(&mut self, active: Active);
    /// The driver reset the device: stop using the queues and go back to the initial state.
    fn reset(&mut self);
    /// The driver notified queue `index`. Returns true if the device stopped with work possibly
    /// left, to give other devices a turn; the caller then wakes it again later.
    fn process_queue(&mut self, index: usize) -> bool;
    /// A descriptor the event loop also watches for this device, if it has host-side I/O of its
    /// own: an epoll set of its tap or sockets, readable (level-triggered) while any of them is
    /// ready. It stays the same for the device's lifetime.
    fn backend_fd(&self) -> Option<RawFd> {
        None
    }
    /// [`Self::backend_fd`] is readable: serve what is ready. Work left over (a full ring, a
    /// spent budget) keeps the descriptor readable or waits for a queue notification.
    fn process_backend(&mut self) {}
    /// The queues the device serves, if the driver activated it (for a snapshot).
    fn active(&self) -> Option<&Active> {
        None
    }
    /// The device was rebuilt from a snapshot and activated again: connections to the host
    /// that the snapshot could not keep are gone (vsock tells the driver here).
    fn restored(&mut self) {}
    /// The device's rate limiters (buckets and budgets), for a snapshot: none, one (block,
    /// entropy) or two (net: receive, transmit).
    fn limiters(&self) -> Vec<LimiterState> {
        Vec::new()
    }
    /// Take up [`Self::limiters`] of a snapshot (before the device is activated again).
    fn restore_limiters(&mut self, saved: &[LimiterState]) -> Result<(), String> {
        restore_each(&mut [], saved)
    }
}

/// Give each of `limiters` its state from `saved`, which must have as many.
pub(crate) fn restore_each(
    limiters: &mut [&mut super::rate_limiter::RateLimiter],
    saved: &[LimiterState],
) -> Result<(), String> {
    if limiters.len() != saved.len() {
        return Err(format!(
            "{} rate limiters in the snapshot, {} on this device",
            saved.len(),
            limiters.len()
        ));
    }
    for (l, s) in limiters.iter_mut().zip(saved) {
        l.restore(s)?;
    }
    Ok(())
}

/// Shared handle to a device: the transport (vCPU threads) and the event loop both hold one.
pub type SharedDevice = Arc<Mutex<dyn VirtioDevice>>;

/// Lock a device; a poisoned lock still holds the best state there is.
pub fn lock(device: &SharedDevice) -> MutexGuard<'_, dyn VirtioDevice + 'static> {
    device.lock().unwrap_or_else(|e| e.into_inner())
}

/// Copy the bytes of `config` at `offset` into `data`; anything past the end reads as zero.
pub fn read_config_bytes(config: &[u8], offset: u64, data: &mut [u8]) {
    data.fill(0);
    let Ok(start) = usize::try_from(offset) else {
        return;
    };
    if let Some(src) = config.get(start..) {
        let n = src.len().min(data.len());
        data[..n].copy_from_slice(&src[..n]);
    }
}

struct InterruptState {
    /// InterruptStatus: VIRTIO_MMIO_INT_VRING and VIRTIO_MMIO_INT_CONFIG.
    status: AtomicU32,
    /// DEVICE_NEEDS_RESET, shown in the status register until the driver resets the device.
    needs_reset: AtomicBool,
    /// ConfigGeneration.
    config_generation: AtomicU32,
    /// Registered as a KVM irqfd for the device's IRQ line.
    irq: EventFd,
    /// Chains completed, bytes written to them, times the device needed a reset (metrics).
    completed: AtomicU64,
    bytes_to_guest: AtomicU64,
    needs_reset_count: AtomicU64,
}

/// The interrupt registers a snapshot keeps.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct InterruptSnapshot {
    pub status: u32,
    pub needs_reset: bool,
    pub config_generation: u32,
}

/// How a device (and its transport) interrupts the driver.
#[derive(Clone)]
pub struct Interrupt(Arc<InterruptState>);

impl Interrupt {
    pub fn new(irq: EventFd) -> Self {
        Self(Arc::new(InterruptState {
            status: AtomicU32::new(0),
            needs_reset: AtomicBool::new(false),
            config_generation: AtomicU32::new(0),
            irq,
            completed: AtomicU64::new(0),
            bytes_to_guest: AtomicU64::new(0),
            needs_reset_count: AtomicU64::new(0),
        }))
    }

    /// The device's counters for the metrics line: chains completed, bytes the device wrote
    /// into them, times it needed a reset.
    pub fn counters(&self) -> Vec<(&'static str, u64)> {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        vec![
            ("completed", get(&self.0.completed)),
            ("bytes_to_guest", get(&self.0.bytes_to_guest)),
            ("needs_reset", get(&self.0.needs_reset_count)),
        ]
    }

    fn raise(&self, bit: u32) {
        self.0.status.fetch_or(bit, Ordering::SeqCst);
        if let Err(e) = self.0.irq.write(1) {
            debug!("virtio: cannot signal irqfd: {e}");
        }
    }

    /// Tell the driver there are new buffers in a used ring.
    pub fn signal_used(&self) {
        self.raise(VIRTIO_MMIO_INT_VRING);
    }

    /// Tell the driver the configuration space changed (a disk's new capacity).
    pub fn signal_config_changed(&self) {
        self.0.config_generation.fetch_add(1, Ordering::SeqCst);
        self.raise(VIRTIO_MMIO_INT_CONFIG);
    }

    /// The device is in an error state only a reset clears: set DEVICE_NEEDS_RESET and send a
    /// configuration change notification.
    pub fn signal_needs_reset(&self) {
        self.0.needs_reset_count.fetch_add(1, Ordering::Relaxed);
        self.0.needs_reset.store(true, Ordering::SeqCst);
        self.raise(VIRTIO_MMIO_INT_CONFIG);
    }

    pub fn status(&self) -> u32 {
        self.0.status.load(Ordering::SeqCst)
    }

    pub fn ack(&self, bits: u32) {
        self.0.status.fetch_and(!bits, Ordering::SeqCst);
    }

    pub fn needs_reset(&self) -> bool {
        self.0.needs_reset.load(Ordering::SeqCst)
    }

    pub fn config_generation(&self) -> u32 {
        self.0.config_generation.load(Ordering::SeqCst)
    }

    /// The registers, for a snapshot.
    pub fn save(&self) -> InterruptSnapshot {
        InterruptSnapshot {
            status: self.status(),
            needs_reset: self.needs_reset(),
            config_generation: self.config_generation(),
        }
    }

    /// Take up `s` (from a snapshot); a pending event is raised again, so that a driver that
    /// had not taken it yet gets its interrupt.
    pub fn restore(&self, s: &InterruptSnapshot) {
        self.0.status.store(s.status, Ordering::SeqCst);
        self.0.needs_reset.store(s.needs_reset, Ordering::SeqCst);
        self.0
            .config_generation
            .store(s.config_generation, Ordering::SeqCst);
        if s.status != 0 {
            let _ = self.0.irq.write(1);
        }
    }

    /// Device reset: no event is pending and the error state is gone.
    pub fn reset(&self) {
        self.0.status.store(0, Ordering::SeqCst);
        self.0.needs_reset.store(false, Ordering::SeqCst);
    }
}

/// Everything a device gets when the driver sets DRIVER_OK.
pub struct Active {
    pub mem: GuestMem,
    pub queues: Vec<Queue>,
    pub interrupt: Interrupt,
    /// The feature bits the driver accepted.
    pub features: u64,
    /// Set when the device entered the needs-reset state; it then ignores its queues.
    broken: bool,
    /// Per queue: chains went on the used ring since the driver was last interrupted about it.
    unnotified: Vec<bool>,
    /// Per queue without EVENT_IDX: VIRTQ_USED_F_NO_NOTIFY is set (the device is taking
    /// buffers and will look at the ring again by itself).
    quiet: Vec<bool>,
}

/// What a device's request handler reports back for one descriptor chain.
pub enum Completion {
    /// Put the chain on the used ring with this many bytes written to it.
    Used(u32),
    /// The chain gives no way to answer (no status byte, say): the device needs a reset.
    Fatal(String),
    /// The device cannot take the chain now (its backend is full): leave it on the ring, as if
    /// it had not been taken, and stop; the device comes back when it can.
    Later,
    /// The device took the chain and answers it later (an asynchronous backend): its
    /// completion puts it on the used ring, in whatever order the backend finishes.
    Pending,
}

impl Active {
    /// Each ready queue starts out asking the driver to notify it of the first buffer it posts,
    /// whatever the device area held before (avail_event with EVENT_IDX, the used ring's flags
    /// without).
    pub fn new(mem: GuestMem, queues: Vec<Queue>, interrupt: Interrupt, features: u64) -> Self {
        let mut queues = queues;
        for queue in queues.iter_mut().filter(|q| q.ready()) {
            if let Err(e) = queue.enable_notification(&mem) {
                debug!("virtio: cannot ask for a queue's notifications: {e}");
            }
        }
        Self {
            mem,
            unnotified: vec![false; queues.len()],
            quiet: vec![false; queues.len()],
            queues,
            interrupt,
            features,
            broken: false,
        }
    }

    /// Each queue's next available and next used index, for a snapshot.
    pub fn positions(&self) -> Vec<(u16, u16)> {
        self.queues
            .iter()
            .map(|q| (q.next_avail(), q.next_used()))
            .collect()
    }

    /// Whether the device is in the needs-reset state.
    pub fn is_broken(&self) -> bool {
        self.broken
    }

    /// Put the device into the needs-reset state again (a snapshot taken in it).
    pub fn set_broken(&mut self) {
        self.broken = true;
    }

    /// Whether the driver accepted feature bit `bit`.
    pub fn has_feature(&self, bit: u32) -> bool {
        bit < 64 && self.features & (1 << bit) != 0
    }

    fn fail(&mut self, log: &mut LogLimiter, what: &str, why: &dyn std::fmt::Display) {
        if log.allow() {
            warn!("{what}: {why}; the device needs a reset");
        }
        self.broken = true;
        self.interrupt.signal_needs_reset();
    }

    /// Serve the available chains of queue `index` with `handle`, put them on the used ring and
    /// interrupt the driver once, if any went there. A chain that cannot be walked or answered puts the device into
    /// the needs-reset state; until the driver resets it, the device leaves its queues alone.
    /// A chain the handler leaves for later ends the turn.
    ///
    /// Serves at most a queue's worth of chains, so a driver that keeps refilling the ring cannot
    /// keep the event loop from other devices; returns true if it stopped for that reason.
    pub fn drain_queue(
        &mut self,
        index: usize,
        what: &str,
        log: &mut LogLimiter,
        mut handle: impl FnMut(&GuestMem, &Chain) -> Completion,
    ) -> bool {
        let mut served = 0usize;
        let mut budget_spent = false;
        while let Some(max_len) = self.ready_size(index) {
            if served == max_len {
                budget_spent = true;
                break;
            }
            served += 1;
            let Some(chain) = self.pop_chain(index, what, log) else {
                break;
            };
            match handle(&self.mem, &chain) {
                Completion::Used(len) => self.add_used(index, chain.head(), len, what, log),
                Completion::Fatal(why) => self.fail(log, what, &why),
                Completion::Later => {
                    self.unpop_chain(index);
                    break;
                }
                Completion::Pending => {}
            }
        }
        self.notify_used(index);
        budget_spent
    }

    /// The size of queue `index` if the device may use it: it is ready and the device is not in
    /// the needs-reset state.
    pub fn ready_size(&self, index: usize) -> Option<usize> {
        if self.broken {
            return None;
        }
        let queue = self.queues.get(index).filter(|q| q.ready())?;
        Some(usize::from(queue.size()))
    }

    /// Take the next available chain of queue `index`, walked to its end. `None` when the ring
    /// is empty or the queue unusable; a chain that cannot be walked (or a ring index that makes
    /// no sense) puts the device into the needs-reset state.
    ///
    /// The driver notifies the queue only when the device asks, which it does here alone:
    /// finding the ring empty, it asks to hear of the next buffer (with EVENT_IDX it sets
    /// avail_event to the next entry it will take; without, it clears VIRTQ_USED_F_NO_NOTIFY)
    /// and looks once more for a buffer posted meanwhile, which the driver may not notify.
    /// Taking a buffer again, it stops asking (without EVENT_IDX it sets NO_NOTIFY; with it,
    /// avail_event simply stays behind). So while the ring holds buffers the device has not
    /// taken, the driver does not notify, and a device stopping with buffers left must come back
    /// by itself (a spent budget, a backend that wakes it), or call
    /// [`Self::notify_on_next_post`]. Every notification the driver leaves out is an exit the
    /// guest does not pay.
    pub fn pop_chain(&mut self, index: usize, what: &str, log: &mut LogLimiter) -> Option<Chain> {
        let max_len = self.ready_size(index)?;
        let queue = self.queues.get_mut(index)?;
        let quiet = self.quiet.get_mut(index)?;
        let mut next = next_chain(queue, &self.mem);
        if matches!(next, Ok(None)) {
            next = match queue.enable_notification(&self.mem) {
                // Posted between the look and the request: take it (its notification may
                // never come), and stop asking again while the device is busy.
                Ok(true) => {
                    *quiet = true;
                    queue
                        .disable_notification(&self.mem)
                        .and_then(|()| next_chain(queue, &self.mem))
                }
                Ok(false) => {
                    *quiet = false;
                    Ok(None)
                }
                Err(e) => Err(e),
            };
        } else if matches!(next, Ok(Some(_))) && !*quiet && !queue.event_idx_enabled() {
            // The flag is written once per busy spell, not per buffer.
            *quiet = true;
            if let Err(e) = queue.disable_notification(&self.mem) {
                next = Err(e);
            }
        }
        let chain = match next {
            Ok(chain) => chain?,
            Err(e) => {
                self.fail(log, what, &e);
                return None;
            }
        };
        match read_chain(chain, max_len) {
            Ok(chain) => Some(chain),
            Err(e) => {
                self.fail(log, what, &e);
                None
            }
        }
    }

    /// For a device that stops taking buffers from queue `index` while the driver still has
    /// some posted there, and waits for the driver to post another: ask to hear of its next
    /// buffer (with EVENT_IDX, avail_event is set to the driver's available index; without,
    /// VIRTQ_USED_F_NO_NOTIFY is cleared). Returns true if the driver posted one meanwhile
    /// (that one may not be notified: act as if it were).
    pub fn notify_on_next_post(&mut self, index: usize) -> bool {
        let (Some(queue), Some(quiet)) = (self.queues.get_mut(index), self.quiet.get_mut(index))
        else {
            return false;
        };
        if !queue.ready() {
            return false;
        }
        let mem = &self.mem;
        let Ok(avail) = queue.avail_idx(mem, Ordering::Acquire) else {
            return false;
        };
        if !queue.event_idx_enabled() {
            if queue.enable_notification(mem).is_err() {
                return false;
            }
            *quiet = false;
            return queue
                .avail_idx(mem, Ordering::Acquire)
                .is_ok_and(|now| now != avail);
        }
        // avail_event follows the used ring's entries (virtio 1.2, 2.7.8); the transport
        // checked that it lies in guest memory.
        let at = GuestAddress(queue.used_ring()).checked_add(4 + 8 * u64::from(queue.size()));
        let stored = at.is_some_and(|at| mem.store(avail.0.to_le(), at, Ordering::Relaxed).is_ok());
        if !stored {
            return false;
        }
        // The driver reads avail_event after writing its index: both sides order the write
        // before the read, so either it sees the new avail_event or this sees its new index.
        fence(Ordering::SeqCst);
        queue
            .avail_idx(mem, Ordering::Acquire)
            .is_ok_and(|now| now != avail)
    }

    /// Give back the chain [`Self::pop_chain`] took last from queue `index`: it is the next one
    /// taken again, as if it had not been touched.
    pub fn unpop_chain(&mut self, index: usize) {
        if let Some(queue) = self.queues.get_mut(index) {
            let next = queue.next_avail().wrapping_sub(1);
            queue.set_next_avail(next);
        }
    }

    /// Put chain `head` on queue `index`'s used ring with `len` bytes written to it; the
    /// driver hears of it at the next [`Self::notify_used`]. If the used ring cannot be
    /// written, the device enters the needs-reset state.
    pub fn add_used(
        &mut self,
        index: usize,
        head: u16,
        len: u32,
        what: &str,
        log: &mut LogLimiter,
    ) {
        let (Some(queue), Some(unnotified)) =
            (self.queues.get_mut(index), self.unnotified.get_mut(index))
        else {
            return;
        };
        match queue.add_used(&self.mem, head, len) {
            Ok(()) => {
                *unnotified = true;
                let state = &self.interrupt.0;
                state.completed.fetch_add(1, Ordering::Relaxed);
                state
                    .bytes_to_guest
                    .fetch_add(u64::from(len), Ordering::Relaxed);
            }
            Err(e) => self.fail(log, what, &e),
        }
    }

    /// Interrupt the driver about the chains put on queue `index`'s used ring since the last
    /// call, if there are any and it did not ask not to be.
    pub fn notify_used(&mut self, index: usize) {
        self.notify_used_of(&[index]);
    }

    /// As [`Self::notify_used`] for each of `indexes`, with one interrupt at most: the driver
    /// looks at every used ring of the device when it takes it.
    pub fn notify_used_of(&mut self, indexes: &[usize]) {
        let mut signal = false;
        for &index in indexes {
            let (Some(queue), Some(unnotified)) =
                (self.queues.get_mut(index), self.unnotified.get_mut(index))
            else {
                continue;
            };
            // Asked of every queue with new entries: with EVENT_IDX the answer moves the
            // queue's record of what the driver was last told.
            if std::mem::take(unnotified) && queue.needs_notification(&self.mem).unwrap_or(true) {
                signal = true;
            }
        }
        if signal {
            self.interrupt.signal_used();
        }
    }
}

/// The next available chain of `queue`, if any.
fn next_chain<'a>(
    queue: &mut Queue,
    mem: &'a GuestMem,
) -> Result<Option<DescriptorChain<&'a GuestMem>>, virtio_queue::Error> {
    Ok(queue.iter(mem)?.next())
}

/// Lets a guest-triggered message through a few times a minute, so a guest cannot flood the log.
pub struct LogLimiter {
    window_start: Option<Instant>,
    in_window: u32,
    suppressed: u64,
}

impl LogLimiter {
    const BURST: u32 = 10;
    const WINDOW: Duration = Duration::from_secs(60);

    pub const fn new() -> Self {
        Self {
            window_start: None,
            in_window: 0,
            suppressed: 0,
        }
    }

    /// Whether the next message may be logged.
    pub fn allow(&mut self) -> bool {
        let now = Instant::now();
        let expired = self
            .window_start
            .is_none_or(|start| now.duration_since(start) >= Self::WINDOW);
        if expired {
            if self.suppressed > 0 {
                warn!(
                    "virtio: {} more guest-triggered messages were suppressed",
                    self.suppressed
                );
            }
            self.window_start = Some(now);
            self.in_window = 0;
            self.suppressed = 0;
        }
        if self.in_window < Self::BURST {
            self.in_window += 1;
            true
        } else {
            self.suppressed += 1;
            false
        }
    }
}

#[cfg(test)]
impl LogLimiter {
    /// Messages held back in the current window.
    pub fn suppressed(&self) -> u64 {
        self.suppressed
    }
}

impl Default for LogLimiter {
    fn default() -> Self {
        Self::new()
    }
}

/// The event-loop side of a device: wakes it when one of its queue eventfds fires. The eventfds
/// are also registered with KVM as ioeventfds on QueueNotify, so a guest's notification goes
/// straight from the vCPU to this loop. A device's backend descriptor, if it has one, is watched
/// here too.
pub struct QueueEvents {
    device: SharedDevice,
    events: Vec<EventFd>,
}

impl QueueEvents {
    /// `events[i]` is the notification eventfd of queue `i`.
    pub fn new(device: SharedDevice, events: Vec<EventFd>) -> Self {
        Self { device, events }
    }
}

/// The epoll set behind [`VirtioDevice::backend_fd`]: a device's host-side descriptors, each
/// reported with a token the device chooses.
pub struct BackendSet(Epoll);

impl BackendSet {
    pub fn new() -> io::Result<Self> {
        Epoll::new().map(Self)
    }

    /// Watch `fd` for `events`, reported with `token`.
    pub fn add(&self, fd: RawFd, events: EpollSet, token: u64) -> io::Result<()> {
        self.0
            .ctl(ControlOperation::Add, fd, EpollEvent::new(events, token))
    }

    /// Watch `fd`, already in the set, for `events` instead.
    pub fn modify(&self, fd: RawFd, events: EpollSet, token: u64) -> io::Result<()> {
        self.0
            .ctl(ControlOperation::Modify, fd, EpollEvent::new(events, token))
    }

    /// Stop watching `fd` (closing it does too).
    pub fn remove(&self, fd: RawFd) {
        let _ = self
            .0
            .ctl(ControlOperation::Delete, fd, EpollEvent::default());
    }

    /// What is ready now, without waiting: at most `events.len()` entries of it.
    pub fn ready<'a>(&self, events: &'a mut [EpollEvent]) -> &'a [EpollEvent] {
        let n = self.0.wait(0, events).unwrap_or(0);
        let events: &'a [EpollEvent] = events;
        events.get(..n).unwrap_or_default()
    }
}

impl AsRawFd for BackendSet {
    fn as_raw_fd(&self) -> RawFd {
        self.0.as_raw_fd()
    }
}

/// Event data of a device's backend descriptor (queue eventfds carry their queue index).
const BACKEND: u32 = u32::MAX;

/// Events the event loop handed to virtio devices (queue notifications and backend events),
/// Firecracker's `vmm.device_events`. One VM per process, so one count.
static DEVICE_EVENTS: AtomicU64 = AtomicU64::new(0);

/// How many events the event loop has handed to virtio devices.
pub fn device_events() -> u64 {
    DEVICE_EVENTS.load(Ordering::Relaxed)
}

impl MutEventSubscriber for QueueEvents {
    fn init(&mut self, ops: &mut EventOps) {
        for (index, event) in self.events.iter().enumerate() {
            let data = index as u32;
            if let Err(e) = ops.add(Events::with_data(event, data, EventSet::IN)) {
                error!("virtio: cannot watch queue {index}'s eventfd: {e}");
            }
        }
        if let Some(fd) = lock(&self.device).backend_fd()
            && let Err(e) = ops.add(Events::with_data_raw(fd, BACKEND, EventSet::IN))
        {
            error!("virtio: cannot watch a device's backend: {e}");
        }
    }

    fn process(&mut self, events: Events, _ops: &mut EventOps) {
        DEVICE_EVENTS.fetch_add(1, Ordering::Relaxed);
        if events.data() == BACKEND {
            lock(&self.device).process_backend();
            return;
        }
        let index = events.data() as usize;
        let Some(event) = self.events.get(index) else {
            return;
        };
        // Clear the eventfd first, so a notification that arrives while we work wakes us again.
        let _ = event.read();
        if lock(&self.device).process_queue(index) {
            // Come back after the other ready devices had their turn.
            let _ = event.write(1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_limiter_lets_a_burst_through_then_suppresses() {
        let mut limiter = LogLimiter::new();
        let allowed = (0..1000).filter(|_| limiter.allow()).count();
        assert_eq!(allowed, LogLimiter::BURST as usize);
        assert_eq!(limiter.suppressed, 1000 - u64::from(LogLimiter::BURST));
    }

    #[test]
    fn config_bytes_past_the_end_read_as_zero() {
        let config = [1u8, 2, 3, 4];
        let mut data = [0xffu8; 4];
        read_config_bytes(&config, 2, &mut data);
        assert_eq!(data, [3, 4, 0, 0]);
        read_config_bytes(&config, u64::MAX, &mut data);
        assert_eq!(data, [0; 4]);
    }

    /// A driver on one thread and the device on another, racing: the driver notifies only
    /// when avail_event asks, as Linux does. A buffer posted while the device re-arms
    /// avail_event would be stranded (and the test time out) without the recheck.
    #[test]
    fn event_idx_strands_no_buffer_posted_while_the_device_rearms() {
        use std::sync::atomic::AtomicBool;
        use std::thread;

        use virtio_bindings::virtio_ring::{VIRTIO_RING_F_EVENT_IDX, VRING_DESC_F_WRITE};
        use virtio_queue::desc::split::Descriptor;

        const SIZE: u16 = 16;
        const DESC: u64 = 0x1_0000;
        const AVAIL: u64 = 0x2_0000;
        const USED: u64 = 0x3_0000;
        const BUF: u64 = 0x4_0000;
        const TOTAL: u16 = 40_000;

        let mem = crate::memory::create(1 << 20).unwrap();
        let mut queue = <Queue as QueueT>::new(SIZE).unwrap();
        queue
            .try_set_desc_table_address(GuestAddress(DESC))
            .unwrap();
        queue
            .try_set_avail_ring_address(GuestAddress(AVAIL))
            .unwrap();
        queue.try_set_used_ring_address(GuestAddress(USED)).unwrap();
        queue.set_event_idx(true);
        queue.set_ready(true);
        for i in 0..u64::from(SIZE) {
            let desc = Descriptor::new(BUF + 16 * i, 16, VRING_DESC_F_WRITE as u16, 0);
            mem.write_obj(desc, GuestAddress(DESC + 16 * i)).unwrap();
        }
        let irq = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let features = 1 << VIRTIO_RING_F_EVENT_IDX;
        let interrupt = Interrupt::new(irq);
        let mut active = Active::new(mem.clone(), vec![queue], interrupt.clone(), features);
        let kick = Arc::new(EventFd::new(0).unwrap());
        let stop = Arc::new(AtomicBool::new(false));

        let device = {
            let (kick, stop) = (kick.clone(), stop.clone());
            thread::spawn(move || {
                let mut log = LogLimiter::new();
                while kick.read().is_ok() && !stop.load(Ordering::SeqCst) {
                    while active.drain_queue(0, "race", &mut log, |_, _| Completion::Used(16)) {}
                }
            })
        };

        let load = |addr: u64| -> u16 { mem.load(GuestAddress(addr), Ordering::Acquire).unwrap() };
        let mut avail = 0u16;
        let deadline = Instant::now() + Duration::from_secs(20);
        while avail != TOTAL {
            // Post each buffer as soon as the device used the last one: right when it looks
            // at an empty ring and re-arms.
            while avail != load(USED + 2) {
                assert!(Instant::now() < deadline, "device stopped at {avail}");
                thread::yield_now();
            }
            let slot = u64::from(avail % SIZE);
            mem.store(
                avail % SIZE,
                GuestAddress(AVAIL + 4 + 2 * slot),
                Ordering::Relaxed,
            )
            .unwrap();
            let old = avail;
            avail = avail.wrapping_add(1);
            mem.store(avail, GuestAddress(AVAIL + 2), Ordering::Release)
                .unwrap();
            fence(Ordering::SeqCst);
            let event = load(USED + 4 + 8 * u64::from(SIZE));
            if avail.wrapping_sub(event).wrapping_sub(1) < avail.wrapping_sub(old) {
                kick.write(1).unwrap();
            }
        }
        while load(USED + 2) != TOTAL {
            assert!(
                Instant::now() < deadline,
                "buffers stranded: {} of {TOTAL} used",
                load(USED + 2)
            );
            thread::yield_now();
        }
        stop.store(true, Ordering::SeqCst);
        kick.write(1).unwrap();
        device.join().unwrap();
        // The metrics counters saw every completion and its length.
        assert_eq!(
            interrupt.counters(),
            [
                ("completed", u64::from(TOTAL)),
                ("bytes_to_guest", 16 * u64::from(TOTAL)),
                ("needs_reset", 0)
            ]
        );
    }

    #[test]
    fn interrupt_status_is_set_and_acked() {
        let interrupt = Interrupt::new(EventFd::new(libc::EFD_NONBLOCK).unwrap());
        interrupt.signal_used();
        assert_eq!(interrupt.status(), VIRTIO_MMIO_INT_VRING);
        assert_eq!(interrupt.0.irq.read().unwrap(), 1);
        interrupt.signal_config_changed();
        assert_eq!(interrupt.config_generation(), 1);
        interrupt.ack(VIRTIO_MMIO_INT_VRING);
        assert_eq!(interrupt.status(), VIRTIO_MMIO_INT_CONFIG);
        interrupt.signal_needs_reset();
        assert!(interrupt.needs_reset());
        assert_eq!(interrupt.counters()[2], ("needs_reset", 1));
        interrupt.reset();
        assert!(!interrupt.needs_reset());
        assert_eq!(interrupt.status(), 0);
    }
}
