//! virtio-net (virtio 1.2, section 5.1) over a tap device: one receive and one transmit queue,
//! the MAC address in the configuration space, and checksum / TCP segmentation offloads passed
//! through the 12-byte `virtio_net_hdr_v1` that the tap reads and writes in front of each frame.
//!
//! Receive is driven by the tap: when it has a frame and the driver has posted a buffer, the
//! frame (header included) is copied into that buffer. When the receive ring is empty the device
//! stops watching the tap, and so leaves frames queued in the kernel, until the driver notifies
//! the receive queue; nothing is dropped for want of a buffer. A frame larger than the buffer
//! the driver posted is dropped (and logged, rate-limited); the buffer is kept for the next one.
//!
//! Transmit gathers each chain (header and frame) and writes it to the tap as one frame. A chain
//! that cannot be walked puts the device into the needs-reset state, as for every device; a chain
//! whose buffers are unusable (device-writable, outside guest RAM, too short or too long) is
//! returned unsent, with a rate-limited log line.
//!
//! The tap sits in an epoll set of the device's own, which the event loop watches
//! ([`VirtioDevice::backend_fd`]); all of this runs on the event loop.

use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use log::{error, warn};
use virtio_bindings::virtio_ids::VIRTIO_ID_NET;
use virtio_bindings::virtio_net::{
    VIRTIO_NET_F_CSUM, VIRTIO_NET_F_GUEST_CSUM, VIRTIO_NET_F_GUEST_TSO4, VIRTIO_NET_F_GUEST_TSO6,
    VIRTIO_NET_F_HOST_TSO4, VIRTIO_NET_F_HOST_TSO6, VIRTIO_NET_F_MAC,
};
use vmm_sys_util::epoll::{EpollEvent, EventSet};

use super::chain::{Chain, LayoutError};
use super::device::{Active, BackendSet, Completion, LogLimiter, VirtioDevice, read_config_bytes};
use super::tap::{Tap, VNET_HDR_LEN};
use crate::memory::GuestMem;

pub const QUEUE_SIZE: u16 = 256;
const RX: usize = 0;
const TX: usize = 1;
/// The largest frame a tap hands over or takes: a 64 KiB GSO packet, an Ethernet header with a
/// VLAN tag, and the virtio-net header.
pub const MAX_FRAME: usize = VNET_HDR_LEN + 65535 + 18;
const ETH_HLEN: usize = 14;
/// Offset of `num_buffers` in the header: the tap leaves it alone, the device sets it to 1.
const NUM_BUFFERS: usize = 10;

/// The offloads the device offers: the tap takes partial checksums and TSO frames from the
/// driver, and can hand them to a driver that accepts them.
const FEATURES: u64 = (1 << VIRTIO_NET_F_MAC)
    | (1 << VIRTIO_NET_F_CSUM)
    | (1 << VIRTIO_NET_F_GUEST_CSUM)
    | (1 << VIRTIO_NET_F_GUEST_TSO4)
    | (1 << VIRTIO_NET_F_GUEST_TSO6)
    | (1 << VIRTIO_NET_F_HOST_TSO4)
    | (1 << VIRTIO_NET_F_HOST_TSO6);

/// Where a virtio-net device's frames go: a tap, or in tests a socket pair. Each read and write
/// is one frame with its virtio-net header in front.
pub trait NetBackend: AsRawFd + Send {
    /// Read one frame into `buf`; `WouldBlock` when none is waiting.
    fn read_frame(&mut self, buf: &mut [u8]) -> io::Result<usize>;
    /// Write one frame.
    fn write_frame(&mut self, frame: &[u8]) -> io::Result<usize>;
    /// Which offloads (`TUN_F_*`) the driver takes on frames we hand it.
    fn set_offload(&mut self, flags: u32) -> io::Result<()>;
    /// Names the backend in log lines.
    fn name(&self) -> &str;
}

impl NetBackend for Tap {
    fn read_frame(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        Tap::read_frame(self, buf)
    }
    fn write_frame(&mut self, frame: &[u8]) -> io::Result<usize> {
        Tap::write_frame(self, frame)
    }
    fn set_offload(&mut self, flags: u32) -> io::Result<()> {
        Tap::set_offload(self, flags)
    }
    fn name(&self) -> &str {
        Tap::name(self)
    }
}

/// The tap offloads matching the features the driver accepted: what it can take on receive.
fn tap_offload(active: &Active) -> u32 {
    let mut flags = 0;
    // The kernel only takes TSO together with checksum offload, as the spec makes drivers do.
    if active.has_feature(VIRTIO_NET_F_GUEST_CSUM) {
        flags |= libc::TUN_F_CSUM;
        if active.has_feature(VIRTIO_NET_F_GUEST_TSO4) {
            flags |= libc::TUN_F_TSO4;
        }
        if active.has_feature(VIRTIO_NET_F_GUEST_TSO6) {
            flags |= libc::TUN_F_TSO6;
        }
    }
    flags
}

/// Why a transmit chain was returned unsent.
#[derive(Debug, thiserror::Error)]
enum TxError {
    #[error(transparent)]
    Layout(#[from] LayoutError),
    #[error("frame of {0} bytes is longer than {MAX_FRAME}")]
    Long(u64),
    #[error("guest memory access failed")]
    Memory(#[from] vm_memory::GuestMemoryError),
}

/// What the device counts, read by the metrics line without the device's lock; each is
/// Firecracker's `net` counter of the same name and meaning (byte counts include the
/// 12-byte virtio-net header, as Firecracker's do).
#[derive(Debug, Default)]
pub struct NetStats {
    rx_bytes_count: AtomicU64,
    rx_packets_count: AtomicU64,
    /// Frames read from the tap.
    rx_count: AtomicU64,
    /// Received frames that could not be written into the driver's buffer.
    rx_fails: AtomicU64,
    tap_read_fails: AtomicU64,
    rx_rate_limiter_throttled: AtomicU64,
    tx_bytes_count: AtomicU64,
    tx_packets_count: AtomicU64,
    /// Frames written to the tap.
    tx_count: AtomicU64,
    tap_write_fails: AtomicU64,
    /// Transmit chains that are not a frame (too short, too long, unreadable).
    tx_malformed_frames: AtomicU64,
    tx_rate_limiter_throttled: AtomicU64,
}

impl NetStats {
    /// `(Firecracker's name, value)` pairs.
    pub fn snapshot(&self) -> Vec<(&'static str, u64)> {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        vec![
            ("rx_bytes_count", get(&self.rx_bytes_count)),
            ("rx_packets_count", get(&self.rx_packets_count)),
            ("rx_count", get(&self.rx_count)),
            ("rx_fails", get(&self.rx_fails)),
            ("tap_read_fails", get(&self.tap_read_fails)),
            (
                "rx_rate_limiter_throttled",
                get(&self.rx_rate_limiter_throttled),
            ),
            ("tx_bytes_count", get(&self.tx_bytes_count)),
            ("tx_packets_count", get(&self.tx_packets_count)),
            ("tx_count", get(&self.tx_count)),
            ("tap_write_fails", get(&self.tap_write_fails)),
            ("tx_malformed_frames", get(&self.tx_malformed_frames)),
            (
                "tx_rate_limiter_throttled",
                get(&self.tx_rate_limiter_throttled),
            ),
        ]
    }
}

fn add(counter: &AtomicU64, n: u64) {
    counter.fetch_add(n, Ordering::Relaxed);
}

/// Epoll tokens of the limiters' timers (the backend's is 0).
const RX_TIMER: u64 = 1;
const TX_TIMER: u64 = 2;

/// A virtio-net device.
pub struct Net {
    backend: Box<dyn NetBackend>,
    config: [u8; 6],
    active: Option<Active>,
    /// Holds the backend's descriptor; watched by the event loop.
    epoll: BackendSet,
    /// What the epoll set waits for on the backend now.
    watching: EventSet,
    /// The receive ring was empty: wait for the driver's notification before reading the tap.
    rx_waiting: bool,
    /// Transmit waits for the backend to be writable: it took no more frames, or there are
    /// chains left from a spent budget.
    tx_blocked: bool,
    /// The backend failed for good (the tap was deleted); it is no longer watched.
    backend_gone: bool,
    frame: Vec<u8>,
    /// `rx_rate_limiter`, `tx_rate_limiter`: their timers are in the epoll set (tokens 1, 2).
    rx_limiter: super::rate_limiter::RateLimiter,
    tx_limiter: super::rate_limiter::RateLimiter,
    /// A received frame (in `rx_frame`) the receive limiter holds back.
    rx_pending: Option<usize>,
    rx_frame: Vec<u8>,
    /// The limiters wait for tokens.
    rx_limited: bool,
    tx_limited: bool,
    stats: Arc<NetStats>,
    /// Names the device in log lines.
    name: String,
    log: LogLimiter,
    chain_log: LogLimiter,
}

impl Net {
    pub fn new(backend: Box<dyn NetBackend>, mac: [u8; 6]) -> io::Result<Self> {
        Self::with_limits(backend, mac, Default::default(), Default::default())
    }

    /// The device's counters, shared.
    pub fn stats(&self) -> Arc<NetStats> {
        self.stats.clone()
    }

    /// `PATCH /network-interfaces`: replace the buckets each update names.
    pub fn update_rate_limits(&mut self, rx: super::RateLimitUpdate, tx: super::RateLimitUpdate) {
        self.rx_limiter.update(rx);
        self.tx_limiter.update(tx);
    }

    /// A device whose receive and transmit are limited by `rx` and `tx`.
    pub fn with_limits(
        backend: Box<dyn NetBackend>,
        mac: [u8; 6],
        rx: super::RateLimit,
        tx: super::RateLimit,
    ) -> io::Result<Self> {
        let epoll = BackendSet::new()?;
        epoll.add(backend.as_raw_fd(), EventSet::empty(), 0)?;
        let (rx_limiter, tx_limiter) = (
            super::rate_limiter::RateLimiter::new(rx),
            super::rate_limiter::RateLimiter::new(tx),
        );
        for (fd, token) in [(rx_limiter.fd(), RX_TIMER), (tx_limiter.fd(), TX_TIMER)] {
            if let Some(fd) = fd {
                epoll.add(fd, EventSet::IN, token)?;
            }
        }
        Ok(Self {
            name: format!("virtio-net {}", backend.name()),
            backend,
            config: mac,
            active: None,
            epoll,
            watching: EventSet::empty(),
            rx_waiting: true,
            tx_blocked: false,
            backend_gone: false,
            frame: vec![0u8; MAX_FRAME],
            rx_limiter,
            tx_limiter,
            rx_pending: None,
            rx_frame: vec![0u8; MAX_FRAME],
            rx_limited: false,
            tx_limited: false,
            stats: Arc::default(),
            log: LogLimiter::new(),
            chain_log: LogLimiter::new(),
        })
    }

    /// Make the epoll set wait for what the device can act on now.
    fn update_watch(&mut self) {
        if self.backend_gone {
            return;
        }
        let mut want = EventSet::empty();
        if self.active.is_some()
            && !self.rx_waiting
            && !self.rx_limited
            && self.rx_pending.is_none()
        {
            want |= EventSet::IN;
        }
        if self.active.is_some() && self.tx_blocked {
            want |= EventSet::OUT;
        }
        if want == self.watching {
            return;
        }
        match self.epoll.modify(self.backend.as_raw_fd(), want, 0) {
            Ok(()) => self.watching = want,
            Err(e) => error!("{}: cannot watch the backend: {e}", self.name),
        }
    }

    /// Copy frames from the backend into the driver's receive buffers while both last, at most
    /// a ring's worth per turn (level-triggered, the tap wakes us again for the rest).
    fn receive(&mut self) {
        let Some(active) = self.active.as_mut() else {
            return;
        };
        for _ in 0..QUEUE_SIZE {
            let Some(chain) = active.pop_chain(RX, &self.name, &mut self.chain_log) else {
                // Wait for the driver to post buffers; the frames stay in the tap meanwhile.
                self.rx_waiting = true;
                break;
            };
            // A receive buffer holds at least the virtio-net header.
            let writable = match chain.writable_only(&active.mem, VNET_HDR_LEN as u64) {
                Ok(w) => w,
                Err(e) => {
                    if self.log.allow() {
                        warn!("{}: {e}; buffer returned unused", self.name);
                    }
                    active.add_used(RX, chain.head(), 0, &self.name, &mut self.chain_log);
                    continue;
                }
            };
            let read = match self.rx_pending.take() {
                Some(n) => Ok(n),
                None => self.backend.read_frame(&mut self.rx_frame).inspect(|_| {
                    add(&self.stats.rx_count, 1);
                }),
            };
            let n = match read {
                Ok(n) => n,
                Err(e) => {
                    active.unpop_chain(RX);
                    if e.kind() != io::ErrorKind::WouldBlock {
                        add(&self.stats.tap_read_fails, 1);
                        // A lasting error would leave the tap readable forever and spin the
                        // event loop: stop watching it until the driver posts buffers again
                        // (asking it to notify the next one).
                        self.rx_waiting = !active.notify_on_next_post(RX);
                        if self.log.allow() {
                            warn!("{}: cannot read a frame: {e}", self.name);
                        }
                    }
                    break;
                }
            };
            if !self
                .rx_limiter
                .consume(n.saturating_sub(VNET_HDR_LEN) as u64)
            {
                // Held until the receive limiter's timer: the frame waits in `rx_frame`.
                add(&self.stats.rx_rate_limiter_throttled, 1);
                self.rx_pending = Some(n);
                self.rx_limited = true;
                active.unpop_chain(RX);
                break;
            }
            if n < VNET_HDR_LEN || n as u64 > writable.len() {
                // Keep the buffer for the next frame.
                active.unpop_chain(RX);
                if self.log.allow() {
                    warn!(
                        "{}: dropped a {n}-byte frame: the driver's receive buffer holds {} bytes",
                        self.name,
                        writable.len()
                    );
                }
                continue;
            }
            self.rx_frame[NUM_BUFFERS..NUM_BUFFERS + 2].copy_from_slice(&1u16.to_le_bytes());
            let len = match writable.write(&active.mem, &self.rx_frame[..n]) {
                Ok(len) => {
                    add(&self.stats.rx_bytes_count, len as u64);
                    add(&self.stats.rx_packets_count, 1);
                    len as u32
                }
                Err(e) => {
                    add(&self.stats.rx_fails, 1);
                    if self.log.allow() {
                        warn!("{}: cannot write a received frame: {e}", self.name);
                    }
                    0
                }
            };
            active.add_used(RX, chain.head(), len, &self.name, &mut self.chain_log);
        }
        active.notify_used(RX);
    }

    /// Send the driver's transmit chains to the backend, at most a ring's worth per turn.
    /// Returns true if the budget ran out with chains possibly left.
    fn transmit(&mut self) -> bool {
        let Some(active) = self.active.as_mut() else {
            return false;
        };
        if self.tx_blocked || self.tx_limited {
            return false;
        }
        let mut blocked = false;
        let mut limited = false;
        let stats = &self.stats;
        let budget_spent = active.drain_queue(TX, &self.name, &mut self.chain_log, |mem, chain| {
            match gather(mem, chain, &mut self.frame) {
                Ok(n) if !self.tx_limiter.consume(n.saturating_sub(VNET_HDR_LEN) as u64) => {
                    // Sent when the transmit limiter's timer says the tokens are there.
                    add(&stats.tx_rate_limiter_throttled, 1);
                    limited = true;
                    return Completion::Later;
                }
                Ok(n) => match self.backend.write_frame(&self.frame[..n]) {
                    Ok(_) => {
                        add(&stats.tx_bytes_count, n as u64);
                        add(&stats.tx_packets_count, 1);
                        add(&stats.tx_count, 1);
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        // Try this chain again once the backend is writable.
                        blocked = true;
                        return Completion::Later;
                    }
                    Err(e) => {
                        // EIO: the tap is down; EBADFD: it was deleted while Kite held it. The
                        // frame is lost as on a cable unplugged.
                        add(&stats.tap_write_fails, 1);
                        if self.log.allow() {
                            if e.raw_os_error() == Some(libc::EBADFD) {
                                warn!(
                                    "{}: frame dropped: the tap no longer exists (deleted while the VM runs?)",
                                    self.name
                                );
                            } else {
                                warn!("{}: frame not sent: {e}", self.name);
                            }
                        }
                    }
                },
                Err(e) => {
                    add(&stats.tx_malformed_frames, 1);
                    if self.log.allow() {
                        warn!("{}: {e}; frame not sent", self.name);
                    }
                }
            }
            Completion::Used(0)
        });
        self.tx_blocked = blocked;
        self.tx_limited = limited;
        budget_spent
    }
}

/// Copy a transmit chain (header and frame, at least a virtio-net and an Ethernet header) into
/// `frame`; returns its length.
fn gather(mem: &GuestMem, chain: &Chain, frame: &mut [u8]) -> Result<usize, TxError> {
    let readable = chain.readable_only(mem, (VNET_HDR_LEN + ETH_HLEN) as u64)?;
    let len = readable.len();
    if len > frame.len() as u64 {
        return Err(TxError::Long(len));
    }
    let len = len as usize;
    readable.read_exact(mem, &mut frame[..len])?;
    Ok(len)
}

impl VirtioDevice for Net {
    fn active(&self) -> Option<&Active> {
        self.active.as_ref()
    }

    fn limiters(&self) -> Vec<super::rate_limiter::LimiterState> {
        vec![self.rx_limiter.state(), self.tx_limiter.state()]
    }

    fn restore_limiters(
        &mut self,
        saved: &[super::rate_limiter::LimiterState],
    ) -> Result<(), String> {
        let limiters = &mut [&mut self.rx_limiter, &mut self.tx_limiter];
        super::device::restore_each(limiters, saved)
    }

    fn device_type(&self) -> u32 {
        VIRTIO_ID_NET
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE, QUEUE_SIZE]
    }

    fn features(&self) -> u64 {
        FEATURES
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.config, offset, data);
    }

    fn activate(&mut self, active: Active) {
        let flags = tap_offload(&active);
        if let Err(e) = self.backend.set_offload(flags)
            && self.log.allow()
        {
            error!("{}: cannot set offloads {flags:#x}: {e}", self.name);
        }
        self.active = Some(active);
        self.rx_waiting = false;
        self.tx_blocked = false;
        self.update_watch();
    }

    fn reset(&mut self) {
        self.active = None;
        self.rx_waiting = true;
        self.tx_blocked = false;
        self.update_watch();
    }

    fn process_queue(&mut self, index: usize) -> bool {
        let more = match index {
            RX => {
                // The driver posted receive buffers: take frames again.
                self.rx_waiting = false;
                self.receive();
                false
            }
            TX => self.transmit(),
            _ => false,
        };
        self.update_watch();
        more
    }

    fn backend_fd(&self) -> Option<RawFd> {
        Some(self.epoll.as_raw_fd())
    }

    fn process_backend(&mut self) {
        let mut events = [EpollEvent::default(); 1];
        for event in self.epoll.ready(&mut events) {
            match event.data() {
                RX_TIMER => {
                    if self.rx_limiter.expired() {
                        self.rx_limited = false;
                        self.receive();
                    }
                    continue;
                }
                TX_TIMER => {
                    if self.tx_limiter.expired() {
                        self.tx_limited = false;
                        if self.transmit() {
                            self.tx_limiter.wake_soon();
                        }
                    }
                    continue;
                }
                _ => {}
            }
            let set = event.event_set();
            if set.intersects(EventSet::ERROR | EventSet::HANG_UP) {
                error!("{}: the backend failed; the network is gone", self.name);
                self.epoll.remove(self.backend.as_raw_fd());
                self.backend_gone = true;
                return;
            }
            if set.contains(EventSet::OUT) {
                self.tx_blocked = false;
                if self.transmit() {
                    // Chains left over: come back when the (level-triggered) backend is
                    // writable.
                    self.tx_blocked = true;
                }
            }
            if set.contains(EventSet::IN) {
                self.receive();
            }
        }
        self.update_watch();
    }
}

#[cfg(test)]
mod tests;
