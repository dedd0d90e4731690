//! Virtio devices on the virtio-mmio transport.
//!
//! Each device gets a 4 KiB MMIO window and an IRQ line from [`MmioSlots`]. Its transport
//! (`mmio.rs`) sits on the MMIO bus and only keeps registers, on vCPU threads. Queue
//! notifications (writes to QueueNotify) reach the device through KVM ioeventfds, one per queue,
//! watched by the event loop on the main thread; the device interrupts through a KVM irqfd. So
//! device I/O happens only on the event loop, never on a vCPU thread.
//!
//! Devices with host-side I/O of their own (net's tap, vsock's sockets) keep those descriptors in
//! an epoll set the event loop watches next to their queue eventfds, so that I/O happens on the
//! event loop too.
//!
//! The VMM attaches devices with [`attach_block`], [`attach_rng`], [`attach_net`] and
//! [`attach_vsock`], and calls [`BlockHandle::sync`] on every disk at shutdown.

pub mod block;
mod chain;
mod device;
mod disk;
#[cfg(feature = "guest-driver")]
mod driver;
mod iov;
mod mmio;
mod net;
mod rate_limiter;
mod rng;
mod tap;
#[cfg(test)]
mod testutil;
mod vsock;

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use event_manager::{EventManager, MutEventSubscriber, SubscriberOps};
use kvm_ioctls::{IoEventAddress, VmFd};
use linux_loader::cmdline::Cmdline;
use vm_allocator::{AddressAllocator, AllocPolicy, IdAllocator};
use vm_memory::GuestAddress;
use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};

use crate::arch::x86_64::layout::{
    FIRST_DEVICE_IRQ, LAST_DEVICE_IRQ, VIRTIO_MMIO_END, VIRTIO_MMIO_SIZE, VIRTIO_MMIO_START,
};
use crate::bus::Bus;
use crate::memory::GuestMem;
use block::Block;
pub use device::{Interrupt, device_events};
use device::{QueueEvents, SharedDevice};
use mmio::QUEUE_NOTIFY;
pub use mmio::{MmioTransport, QueueRegs, TransportState};
use net::Net;
pub use net::NetStats;
pub use rate_limiter::{Bucket, BucketState, LimiterState, RateLimit, RateLimitUpdate};
use rng::Rng;
pub(crate) use rng::fill_random;
use tap::Tap;
use vsock::Vsock;

/// A disk as the user asked for it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DiskConfig {
    /// A raw image file (or block device), a whole number of 512-byte sectors long.
    pub path: PathBuf,
    /// Attach it readonly: the guest's writes fail, and other VMs may share it readonly.
    pub readonly: bool,
    /// Firecracker's `rate_limiter` (none: no limit).
    pub rate_limit: RateLimit,
    /// How requests reach the image: Firecracker's `io_engine`.
    pub io_engine: IoEngine,
}

/// Firecracker's drive `io_engine`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum IoEngine {
    /// One request at a time, with blocking calls on the event loop.
    #[default]
    Sync,
    /// io_uring: many requests in flight, completed in any order.
    Async,
}

/// A network interface as the user asked for it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NetConfig {
    /// The host tap device; opened, or created if it is missing and Kite may.
    pub tap: String,
    /// The guest's MAC address.
    pub mac: [u8; 6],
    /// `rx_rate_limiter` and `tx_rate_limiter` (none: no limit).
    pub rx_rate_limit: RateLimit,
    pub tx_rate_limit: RateLimit,
}

/// A vsock device as the user asked for it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VsockConfig {
    /// The guest's context ID (3 or more).
    pub cid: u32,
    /// Kite listens here for host programs; guest connections to host port P go to `<socket>_P`.
    pub socket: PathBuf,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Disk(#[from] disk::Error),
    #[error(transparent)]
    Tap(#[from] tap::Error),
    #[error(transparent)]
    Vsock(#[from] vsock::Error),
    #[error("cannot make an epoll set for {0}")]
    Epoll(String, #[source] std::io::Error),
    #[error("no virtio-mmio window or IRQ line is left for another device")]
    NoSlot(#[source] vm_allocator::Error),
    #[error("cannot create an eventfd")]
    EventFd(#[source] std::io::Error),
    #[error("KVM refused an irqfd for IRQ {irq}")]
    Irqfd {
        irq: u32,
        #[source]
        source: kvm_ioctls::Error,
    },
    #[error("KVM refused an ioeventfd at {addr:#x}")]
    Ioeventfd {
        addr: u64,
        #[source]
        source: kvm_ioctls::Error,
    },
    #[error("cannot put a virtio device on the MMIO bus at {addr:#x}")]
    Bus {
        addr: u64,
        #[source]
        source: crate::bus::Error,
    },
    #[error("cannot add the virtio device at {addr:#x} to the kernel command line")]
    Cmdline {
        addr: u64,
        #[source]
        source: linux_loader::cmdline::Error,
    },
    #[error("bad virtio device")]
    Transport(#[from] mmio::Error),
    #[error("drive {}: io_engine Async needs io_uring, which this host refuses ({source}); \
             use io_engine Sync (--disk without io=uring)", .path.display())]
    NoUring {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot sync disk image {}", .path.display())]
    Sync {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Hands out the 4 KiB virtio-mmio windows and the IRQ lines devices use.
pub struct MmioSlots {
    windows: AddressAllocator,
    irqs: IdAllocator,
}

impl MmioSlots {
    pub fn new() -> Self {
        // The layout constants describe a valid, non-empty range of each; a unit test checks.
        let windows = AddressAllocator::new(VIRTIO_MMIO_START, VIRTIO_MMIO_END - VIRTIO_MMIO_START)
            .expect("the virtio-mmio range in layout.rs is valid");
        let irqs = IdAllocator::new(FIRST_DEVICE_IRQ, LAST_DEVICE_IRQ)
            .expect("the device IRQ range in layout.rs is valid");
        Self { windows, irqs }
    }

    /// A window's base address and an IRQ line.
    pub fn allocate(&mut self) -> Result<(u64, u32), Error> {
        let irq = self.irqs.allocate_id().map_err(Error::NoSlot)?;
        let window = self
            .windows
            .allocate(VIRTIO_MMIO_SIZE, VIRTIO_MMIO_SIZE, AllocPolicy::FirstMatch)
            .map_err(Error::NoSlot)?;
        Ok((window.start(), irq))
    }
}

impl Default for MmioSlots {
    fn default() -> Self {
        Self::new()
    }
}

/// The event loop every device's queue events go to.
pub type EventLoop = EventManager<Arc<Mutex<dyn MutEventSubscriber + Send>>>;

/// The devices below their transport, for what drives them without KVM: the fuzz harness
/// (`fuzz/harness`) and the micro-benchmarks (`benches/`). Not part of the interface the VMM
/// uses; see [`crate::harness`].
#[doc(hidden)]
pub mod harness {
    pub use super::block::Block;
    pub use super::chain::Chain;
    pub use super::device::{
        Active, Completion, Interrupt, LogLimiter, SharedDevice, VirtioDevice, lock,
        read_config_bytes,
    };
    pub use super::disk::Disk;
    #[cfg(feature = "guest-driver")]
    pub use super::driver::GuestRam;
    pub use super::mmio::{MmioTransport, QUEUE_NOTIFY};
    pub use super::net::{MAX_FRAME, Net, NetBackend};
    pub use super::rng::Rng;
    pub use super::tap::VNET_HDR_LEN;
    pub use super::vsock::Vsock;
}

/// What attaching a virtio device touches.
pub struct VirtioContext<'a> {
    pub vm: &'a VmFd,
    pub mem: &'a GuestMem,
    pub mmio_bus: &'a mut Bus,
    pub event_manager: &'a mut EventLoop,
    /// Where to announce each device as `virtio_mmio.device=...`; `None` when the ACPI tables
    /// describe them instead.
    pub cmdline: Option<&'a mut Cmdline>,
    pub slots: &'a mut MmioSlots,
    /// Every device attached so far, in order (for the ACPI DSDT).
    pub placed: Vec<Placement>,
    /// Every device's name (`virtio-blk0`, `virtio-net0`, ...) and counters (metrics).
    pub counters: Vec<(String, Interrupt)>,
    /// Every device attached so far, with its transport (for the device manager).
    pub attached: Vec<Attached>,
}

/// An attached device as the device manager holds it.
#[derive(Clone)]
pub struct Attached {
    /// `virtio-blk0`, `virtio-net0`, ...
    pub name: String,
    pub placement: Placement,
    pub transport: Arc<Mutex<MmioTransport>>,
}

/// Where an attached device sits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Placement {
    pub addr: u64,
    pub irq: u32,
}

/// The VMM's handle on an attached disk.
#[derive(Clone)]
pub struct BlockHandle {
    device: Arc<Mutex<Block>>,
    stats: Arc<block::BlockStats>,
    /// The transport's interrupt, for the configuration change `PATCH /drives` raises.
    interrupt: Interrupt,
    pub placement: Placement,
}

impl BlockHandle {
    /// `(counter, value)` pairs for the metrics line (read without the device's lock).
    pub fn stats(&self) -> Vec<(&'static str, u64)> {
        self.stats.snapshot()
    }

    /// Make everything the guest wrote to the disk durable (fdatasync). Waits for a request the
    /// device is working on to complete first. Call it for every disk at shutdown.
    pub fn sync(&self) -> Result<(), Error> {
        let mut block = self.device.lock().unwrap_or_else(|e| e.into_inner());
        block.sync().map_err(|source| Error::Sync {
            path: block.path().to_path_buf(),
            source,
        })
    }

    /// Wait for the io_uring requests in flight and answer them on the used ring (pause,
    /// snapshot). Nothing to do for a sync drive.
    pub fn drain(&self) {
        let mut block = self.device.lock().unwrap_or_else(|e| e.into_inner());
        block.drain();
    }

    /// The file the device reads and writes now (`PATCH /drives` may have changed it), and
    /// its engine.
    pub fn backing(&self) -> (PathBuf, IoEngine) {
        let block = self.device.lock().unwrap_or_else(|e| e.into_inner());
        (block.path().to_path_buf(), block.io_engine())
    }

    /// `PATCH /drives/{id}` with `rate_limiter`: the buckets it names are replaced.
    pub fn update_rate_limit(&self, u: RateLimitUpdate) {
        let mut block = self.device.lock().unwrap_or_else(|e| e.into_inner());
        block.update_rate_limit(u);
    }

    /// `PATCH /drives/{id}` with `path_on_host`: open `path` (readonly as before), make what
    /// the guest wrote to the old file durable, back the device with the new file and tell the
    /// driver its capacity changed (configuration change interrupt), as Firecracker does. The
    /// same path again (after a bind mount over it) works: the old file's lock is released for
    /// the open and taken back if it fails. On any error the device keeps its old file.
    /// Returns the old and new capacity in sectors.
    pub fn update(&self, path: &std::path::Path) -> Result<(u64, u64), Error> {
        use std::sync::atomic::Ordering::Relaxed;
        let mut block = self.device.lock().unwrap_or_else(|e| e.into_inner());
        let readonly = block.readonly();
        block.unlock_disk();
        let opened = disk::Disk::open(path, readonly);
        let image = match opened {
            Ok(image) => image,
            Err(e) => {
                if !block.relock_disk() {
                    log::warn!(
                        "{}: another process locked it while PATCH /drives tried {}",
                        block.path().display(),
                        path.display()
                    );
                }
                self.stats.update_fails.fetch_add(1, Relaxed);
                return Err(e.into());
            }
        };
        let new = image.sectors;
        let old_sectors = block.sectors();
        // Dropping the old disk syncs what the guest wrote to it (and logs a failure).
        drop(block.replace_disk(image));
        drop(block);
        self.interrupt.signal_config_changed();
        self.stats.updates.fetch_add(1, Relaxed);
        Ok((old_sectors, new))
    }
}

/// Whether this host lets Kite set up an io_uring (`io_engine: "Async"`), and if not why.
pub fn io_uring_probe() -> std::io::Result<()> {
    block::probe_uring()
}

/// Open `disk` (locked against other writers) and attach it as a virtio-blk device.
pub fn attach_block(ctx: &mut VirtioContext<'_>, disk: &DiskConfig) -> Result<BlockHandle, Error> {
    let image = disk::Disk::open(&disk.path, disk.readonly)?;
    let mut block = match disk.io_engine {
        IoEngine::Sync => Block::new(image),
        IoEngine::Async => Block::with_uring(image).map_err(|source| Error::NoUring {
            path: disk.path.clone(),
            source,
        })?,
    };
    block.update_rate_limit(RateLimitUpdate {
        bandwidth: Some(disk.rate_limit.bandwidth),
        ops: Some(disk.rate_limit.ops),
    });
    let stats = block.stats();
    let device = Arc::new(Mutex::new(block));
    let placement = attach(ctx, device.clone())?;
    let interrupt = match ctx.counters.last() {
        Some((_, interrupt)) => interrupt.clone(),
        None => unreachable!("attach records every device's interrupt"),
    };
    Ok(BlockHandle {
        device,
        stats,
        interrupt,
        placement,
    })
}

/// Attach a virtio-rng device fed by the host's getrandom.
pub fn attach_rng(ctx: &mut VirtioContext<'_>, limit: RateLimit) -> Result<Placement, Error> {
    attach(ctx, Arc::new(Mutex::new(Rng::with_limit(limit))))
}

/// The VMM's handle on an attached network interface (for `PATCH /network-interfaces`).
pub struct NetHandle {
    device: Arc<Mutex<Net>>,
    stats: Arc<net::NetStats>,
    pub placement: Placement,
}

impl NetHandle {
    /// `(counter, value)` pairs for the metrics line (read without the device's lock).
    pub fn stats(&self) -> Vec<(&'static str, u64)> {
        self.stats.snapshot()
    }

    /// Replace the rate limiter buckets the updates name.
    pub fn update_rate_limits(&self, rx: RateLimitUpdate, tx: RateLimitUpdate) {
        let mut net = self.device.lock().unwrap_or_else(|e| e.into_inner());
        net.update_rate_limits(rx, tx);
    }
}

/// Open (or create) the tap `net.tap` and attach it as a virtio-net device.
pub fn attach_net(ctx: &mut VirtioContext<'_>, net: &NetConfig) -> Result<NetHandle, Error> {
    let tap = Tap::open(&net.tap)?;
    if tap.created() {
        log::info!(
            "created tap {} (it is down and goes away with Kite; bring it up to use it)",
            net.tap
        );
    }
    let device = Net::with_limits(Box::new(tap), net.mac, net.rx_rate_limit, net.tx_rate_limit)
        .map_err(|e| Error::Epoll(format!("tap {}", net.tap), e))?;
    let stats = device.stats();
    let device = Arc::new(Mutex::new(device));
    let placement = attach(ctx, device.clone())?;
    Ok(NetHandle {
        device,
        stats,
        placement,
    })
}

/// Attach a virtio-vsock device for guest CID `vsock.cid`, listening on `vsock.socket`.
pub fn attach_vsock(ctx: &mut VirtioContext<'_>, vsock: &VsockConfig) -> Result<Placement, Error> {
    let device = Vsock::new(vsock.cid, &vsock.socket)?;
    attach(ctx, Arc::new(Mutex::new(device)))
}

fn eventfd() -> Result<EventFd, Error> {
    EventFd::new(EFD_NONBLOCK).map_err(Error::EventFd)
}

/// Give `device` a window and an IRQ, wire its ioeventfds and irqfd into KVM, its transport onto
/// the MMIO bus and its queue events into the event loop, and tell the guest kernel where it is.
fn attach(ctx: &mut VirtioContext<'_>, device: SharedDevice) -> Result<Placement, Error> {
    let (addr, irq) = ctx.slots.allocate()?;
    if let Some(cmdline) = ctx.cmdline.as_deref_mut() {
        cmdline
            .add_virtio_mmio_device(VIRTIO_MMIO_SIZE, GuestAddress(addr), irq, None)
            .map_err(|source| Error::Cmdline { addr, source })?;
    }
    ctx.placed.push(Placement { addr, irq });

    let irq_event = eventfd()?;
    ctx.vm
        .register_irqfd(&irq_event, irq)
        .map_err(|source| Error::Irqfd { irq, source })?;
    let interrupt = Interrupt::new(irq_event);
    let kind = match device::lock(&device).device_type() {
        1 => "virtio-net",
        2 => "virtio-blk",
        4 => "virtio-rng",
        19 => "virtio-vsock",
        _ => "virtio",
    };
    let nth = ctx
        .counters
        .iter()
        .filter(|(name, _)| name.starts_with(kind))
        .count();
    let name = format!("{kind}{nth}");
    ctx.counters.push((name.clone(), interrupt.clone()));

    let queues = device::lock(&device).queue_max_sizes().len();
    let mut events = Vec::with_capacity(queues);
    let mut transport_events = Vec::with_capacity(queues);
    let notify = addr + QUEUE_NOTIFY;
    for index in 0..queues {
        let event = eventfd()?;
        ctx.vm
            .register_ioevent(&event, &IoEventAddress::Mmio(notify), index as u32)
            .map_err(|source| Error::Ioeventfd {
                addr: notify,
                source,
            })?;
        transport_events.push(event.try_clone().map_err(Error::EventFd)?);
        events.push(event);
    }

    let transport =
        MmioTransport::new(device.clone(), ctx.mem.clone(), interrupt, transport_events)?;
    let transport = Arc::new(Mutex::new(transport));
    ctx.mmio_bus
        .insert(transport.clone(), addr, VIRTIO_MMIO_SIZE)
        .map_err(|source| Error::Bus { addr, source })?;
    ctx.attached.push(Attached {
        name,
        placement: Placement { addr, irq },
        transport,
    });
    ctx.event_manager
        .add_subscriber(Arc::new(Mutex::new(QueueEvents::new(device, events))));
    Ok(Placement { addr, irq })
}

#[cfg(test)]
mod tests;
