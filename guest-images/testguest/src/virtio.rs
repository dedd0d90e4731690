//! A small virtio-mmio driver (virtio 1.2, section 4.2, register layout version 2, split
//! virtqueues), for the device scenarios. Nothing in it is specific to one VMM: devices are
//! found through the `virtio_mmio.device=<size>@<addr>:<irq>` command-line entries and
//! matched by their DeviceID register.
//!
//! Everything runs in ring 3, except the interrupt handler in entry.S: for an IOAPIC pin
//! with a device registered in `virtio_mmio_base[pin]`, it reads the device's
//! InterruptStatus, writes it back to InterruptACK, ORs it into `virtio_isr[pin]`, counts
//! the interrupt in `irq_counts[pin]` and sends the LAPIC EOI (two MMIO exits and a dozen
//! instructions in ring 0).
//!
//! Completions are found by reading the used ring. How the driver waits for them is the
//! [`Wait`] mode, chosen by `kite_virtio_wait=irq|poll` (default `irq`):
//!
//! * `irq`: the queue asks for interrupts; ring 3 spins on the pin's interrupt counter and
//!   looks at the used ring after each interrupt (and once before waiting).
//! * `poll`: the driver sets VIRTQ_AVAIL_F_NO_INTERRUPT on its queues, leaves the IOAPIC pin
//!   masked and spins on the used ring's index.
//!
//! With `kite_virtio_event_idx=1` the driver also wants VIRTIO_RING_F_EVENT_IDX (bit 29;
//! section 2.7.10) and, if the device offers it, uses the event indices instead of the ring
//! flags: it writes `used_event` (after the available ring) to ask for an interrupt for the
//! next completion only when it is about to wait for one, and notifies only when
//! `vring_need_event(avail_event, new, old)` holds for the `avail_event` the device wrote
//! (after the used ring). In `poll` mode `used_event` trails the used index, so the device has
//! no reason to interrupt.
//!
//! Set-up order (section 3.1.1): reset (and wait for Status to read 0), ACKNOWLEDGE, DRIVER,
//! feature negotiation (VIRTIO_F_VERSION_1 is required: legacy devices are refused),
//! FEATURES_OK and its read-back, queue set-up, DRIVER_OK.

use core::fmt;
use core::sync::atomic::{AtomicU32, AtomicU64, Ordering, fence};

use crate::apic::{IoApic, LocalApic, irq_count};
use crate::cmdline::{Cmdline, VirtioMmioDevice};
use crate::mem::{MMIO_WINDOW, PAGE_SIZE, PageAllocator, mmio};
use crate::sys::rdtsc;

pub const ID_NET: u32 = 1;
pub const ID_BLOCK: u32 = 2;
pub const ID_RNG: u32 = 4;
pub const ID_VSOCK: u32 = 19;

pub const F_VERSION_1: u64 = 1 << 32;
/// VIRTIO_RING_F_EVENT_IDX: `used_event` / `avail_event` instead of the ring flags.
pub const F_EVENT_IDX_BIT: u32 = 29;
pub const F_EVENT_IDX: u64 = 1 << F_EVENT_IDX_BIT;

// Registers (offsets in the device's window).
const MAGIC_VALUE: u64 = 0x000;
const VERSION: u64 = 0x004;
const DEVICE_ID: u64 = 0x008;
const DEVICE_FEATURES: u64 = 0x010;
const DEVICE_FEATURES_SEL: u64 = 0x014;
const DRIVER_FEATURES: u64 = 0x020;
const DRIVER_FEATURES_SEL: u64 = 0x024;
const QUEUE_SEL: u64 = 0x030;
const QUEUE_NUM_MAX: u64 = 0x034;
const QUEUE_NUM: u64 = 0x038;
const QUEUE_READY: u64 = 0x044;
const QUEUE_NOTIFY: u64 = 0x050;
const STATUS: u64 = 0x070;
const QUEUE_DESC_LOW: u64 = 0x080;
const QUEUE_DESC_HIGH: u64 = 0x084;
const QUEUE_DRIVER_LOW: u64 = 0x090;
const QUEUE_DRIVER_HIGH: u64 = 0x094;
const QUEUE_DEVICE_LOW: u64 = 0x0a0;
const QUEUE_DEVICE_HIGH: u64 = 0x0a4;
const INTERRUPT_STATUS: u64 = 0x060;
const CONFIG_GENERATION: u64 = 0x0fc;
const CONFIG: u64 = 0x100;

const MAGIC: u32 = 0x7472_6976; // "virt"

// Device status bits.
pub const S_ACKNOWLEDGE: u32 = 1;
pub const S_DRIVER: u32 = 2;
pub const S_DRIVER_OK: u32 = 4;
pub const S_FEATURES_OK: u32 = 8;
pub const S_NEEDS_RESET: u32 = 64;
pub const S_FAILED: u32 = 128;

// InterruptStatus bits.
#[allow(dead_code)]
pub const INT_VRING: u32 = 1;
pub const INT_CONFIG: u32 = 2;

// Split virtqueue flags.
const DESC_F_NEXT: u16 = 1;
const DESC_F_WRITE: u16 = 2;
const AVAIL_F_NO_INTERRUPT: u16 = 1;
const USED_F_NO_NOTIFY: u16 = 1;

/// Largest queue this driver sets up (a device may offer more; we use fewer).
pub const MAX_QUEUE: usize = 256;

unsafe extern "C" {
    /// Per IOAPIC pin: the virtio-mmio window whose interrupt the ring-0 handler
    /// acknowledges (0: none). entry.S.
    static virtio_mmio_base: [AtomicU64; 32];
    /// Per IOAPIC pin: InterruptStatus bits the ring-0 handler has seen (ORed). entry.S.
    static virtio_isr: [AtomicU32; 32];
}

/// Why the driver gave up; scenarios print it after `FAIL`.
#[derive(Debug)]
pub enum Error {
    /// No `virtio_mmio.device=` entry has a device of this ID.
    NotFound(u32),
    BadMagic(u64, u32),
    Legacy(u64),
    UnknownVersion(u64, u32),
    WrongId {
        addr: u64,
        want: u32,
        got: u32,
    },
    NoVersion1(u64),
    FeaturesRefused(u64, u64),
    QueueMissing(u16),
    QueueInUse(u16),
    OutOfMemory(&'static str),
    NeedsReset(u64),
    DriverOkRefused(u64, u32),
    Timeout(&'static str),
    QueueFull,
    BadUsed(u32),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        match *self {
            Error::NotFound(id) => write!(
                f,
                "no virtio-mmio device with DeviceID {id} among the virtio_mmio.device= entries"
            ),
            Error::BadMagic(a, m) => write!(f, "virtio-mmio at {a:#x}: bad MagicValue {m:#x}"),
            Error::Legacy(a) => write!(
                f,
                "virtio-mmio at {a:#x}: legacy device (Version 1); only Version 2 is supported"
            ),
            Error::UnknownVersion(a, v) => write!(f, "virtio-mmio at {a:#x}: Version {v}"),
            Error::WrongId { addr, want, got } => write!(
                f,
                "virtio-mmio at {addr:#x}: DeviceID {got}, expected {want}"
            ),
            Error::NoVersion1(a) => write!(
                f,
                "virtio-mmio at {a:#x}: device does not offer VIRTIO_F_VERSION_1"
            ),
            Error::FeaturesRefused(a, feat) => write!(
                f,
                "virtio-mmio at {a:#x}: FEATURES_OK not accepted for features {feat:#x}"
            ),
            Error::QueueMissing(q) => write!(f, "queue {q} does not exist (QueueNumMax 0)"),
            Error::QueueInUse(q) => write!(f, "queue {q} is already ready after reset"),
            Error::OutOfMemory(what) => write!(f, "out of guest RAM for {what}"),
            Error::NeedsReset(a) => write!(f, "virtio-mmio at {a:#x}: DEVICE_NEEDS_RESET"),
            Error::DriverOkRefused(a, s) => write!(
                f,
                "virtio-mmio at {a:#x}: DRIVER_OK not taken (Status {s:#x})"
            ),
            Error::Timeout(what) => write!(f, "timed out waiting for {what}"),
            Error::QueueFull => write!(f, "no free descriptors"),
            Error::BadUsed(id) => write!(f, "used ring returned unknown descriptor id {id}"),
        }
    }
}

/// How the driver learns about completions (see the module documentation).
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Wait {
    Irq,
    Poll,
}

impl Wait {
    /// `kite_virtio_wait=irq|poll`, default `irq`.
    pub fn from_cmdline(cmdline: &Cmdline) -> Result<Wait, &'static str> {
        match cmdline.get("kite_virtio_wait") {
            None | Some(b"irq") => Ok(Wait::Irq),
            Some(b"poll") => Ok(Wait::Poll),
            Some(_) => Err("kite_virtio_wait must be irq or poll"),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Wait::Irq => "irq",
            Wait::Poll => "poll",
        }
    }
}

/// Ring features the driver wants besides a scenario's own: VIRTIO_RING_F_EVENT_IDX with
/// `kite_virtio_event_idx=1` (`0` or absent: none).
pub fn ring_features(cmdline: &Cmdline) -> Result<u64, &'static str> {
    match cmdline.get("kite_virtio_event_idx") {
        None | Some(b"0") => Ok(0),
        Some(b"1") => Ok(F_EVENT_IDX),
        Some(_) => Err("kite_virtio_event_idx must be 0 or 1"),
    }
}

/// The spec's `vring_need_event`: whether moving an index from `old` to `new` passed
/// `event`, i.e. `event` is in `[old, new)` (modulo 2^16).
pub fn need_event(event: u16, new: u16, old: u16) -> bool {
    new.wrapping_sub(event).wrapping_sub(1) < new.wrapping_sub(old)
}

/// The `n`-th (from 0) declared virtio-mmio device whose DeviceID is `device_id`. Entries
/// outside the 32-bit MMIO window (which is all the guest maps for devices) and windows
/// without the virtio magic are skipped.
pub fn find(cmdline: &Cmdline, device_id: u32, n: usize) -> Result<VirtioMmioDevice, Error> {
    cmdline
        .virtio_mmio_devices()
        .filter(|d| {
            d.addr >= MMIO_WINDOW.0 && d.addr.saturating_add(0x100) <= MMIO_WINDOW.1 && d.irq < 24
        })
        .filter(|d| mmio::read32(d.addr + MAGIC_VALUE) == MAGIC)
        .filter(|d| mmio::read32(d.addr + DEVICE_ID) == device_id)
        .nth(n)
        .ok_or(Error::NotFound(device_id))
}

/// A device after feature negotiation (FEATURES_OK), before or after DRIVER_OK.
pub struct Device {
    pub base: u64,
    pub irq: u8,
    /// The features both sides agreed on.
    pub features: u64,
    pub wait: Wait,
    /// `irq_count(irq)` when the interrupt was routed.
    irqs_at_start: u64,
}

impl Device {
    fn read(&self, reg: u64) -> u32 {
        mmio::read32(self.base + reg)
    }

    fn write(&self, reg: u64, value: u32) {
        mmio::write32(self.base + reg, value)
    }

    /// Resets the device at `entry`, checks it is a version-2 device of `device_id`, and
    /// negotiates features: the driver accepts the device's offer ANDed with `wanted`, plus
    /// VIRTIO_F_VERSION_1, which the device must offer. Ends with FEATURES_OK read back.
    pub fn init(
        entry: VirtioMmioDevice,
        device_id: u32,
        wanted: u64,
        wait: Wait,
    ) -> Result<Device, Error> {
        let base = entry.addr;
        let magic = mmio::read32(base + MAGIC_VALUE);
        if magic != MAGIC {
            return Err(Error::BadMagic(base, magic));
        }
        match mmio::read32(base + VERSION) {
            2 => {}
            1 => return Err(Error::Legacy(base)),
            v => return Err(Error::UnknownVersion(base, v)),
        }
        let got = mmio::read32(base + DEVICE_ID);
        if got != device_id {
            return Err(Error::WrongId {
                addr: base,
                want: device_id,
                got,
            });
        }
        let mut dev = Device {
            base,
            irq: entry.irq as u8,
            features: 0,
            wait,
            irqs_at_start: 0,
        };
        dev.reset()?;
        dev.write(STATUS, S_ACKNOWLEDGE);
        dev.write(STATUS, S_ACKNOWLEDGE | S_DRIVER);

        let offered = dev.device_features();
        if offered & F_VERSION_1 == 0 {
            dev.write(STATUS, S_ACKNOWLEDGE | S_DRIVER | S_FAILED);
            return Err(Error::NoVersion1(base));
        }
        let accepted = offered & (wanted | F_VERSION_1);
        dev.write(DRIVER_FEATURES_SEL, 0);
        dev.write(DRIVER_FEATURES, accepted as u32);
        dev.write(DRIVER_FEATURES_SEL, 1);
        dev.write(DRIVER_FEATURES, (accepted >> 32) as u32);
        dev.write(STATUS, S_ACKNOWLEDGE | S_DRIVER | S_FEATURES_OK);
        if dev.read(STATUS) & S_FEATURES_OK == 0 {
            dev.write(STATUS, S_ACKNOWLEDGE | S_DRIVER | S_FAILED);
            return Err(Error::FeaturesRefused(base, accepted));
        }
        dev.features = accepted;
        Ok(dev)
    }

    /// Writes 0 to Status and waits (up to ~1 s) for it to read back 0.
    pub fn reset(&self) -> Result<(), Error> {
        self.write(STATUS, 0);
        let start = rdtsc();
        while self.read(STATUS) != 0 {
            if rdtsc().wrapping_sub(start) > 3_000_000_000 {
                return Err(Error::Timeout("the device reset"));
            }
            core::hint::spin_loop();
        }
        Ok(())
    }

    fn device_features(&self) -> u64 {
        self.write(DEVICE_FEATURES_SEL, 0);
        let low = self.read(DEVICE_FEATURES) as u64;
        self.write(DEVICE_FEATURES_SEL, 1);
        let high = self.read(DEVICE_FEATURES) as u64;
        high << 32 | low
    }

    pub fn has(&self, feature_bit: u32) -> bool {
        self.features & (1u64 << feature_bit) != 0
    }

    /// 1 if VIRTIO_RING_F_EVENT_IDX was negotiated, else 0 (for result lines).
    pub fn event_idx(&self) -> u8 {
        self.has(F_EVENT_IDX_BIT) as u8
    }

    #[allow(dead_code)]
    pub fn status(&self) -> u32 {
        self.read(STATUS)
    }

    /// Reads `N` bytes of the device-specific configuration space at `offset` with accesses
    /// of the field's width (1, 2 or 4 bytes; 8-byte fields as two 4-byte reads), repeated
    /// until ConfigGeneration is the same before and after.
    fn config_bytes<const N: usize>(&self, offset: u64) -> [u8; N] {
        loop {
            let generation = self.read(CONFIG_GENERATION);
            let mut out = [0u8; N];
            let at = self.base + CONFIG + offset;
            match N {
                1 => out[0] = mmio::read8(at),
                2 => out.copy_from_slice(&mmio::read16(at).to_le_bytes()[..N]),
                _ => {
                    for (i, chunk) in out.chunks_mut(4).enumerate() {
                        let v = mmio::read32(at + 4 * i as u64).to_le_bytes();
                        chunk.copy_from_slice(&v[..chunk.len()]);
                    }
                }
            }
            if self.read(CONFIG_GENERATION) == generation {
                return out;
            }
        }
    }

    /// The ConfigGeneration register.
    pub fn config_generation(&self) -> u32 {
        self.read(CONFIG_GENERATION)
    }

    /// The InterruptStatus register (bit 1: the configuration changed).
    pub fn interrupt_status(&self) -> u32 {
        self.read(INTERRUPT_STATUS)
    }

    #[allow(dead_code)]
    pub fn config_u8(&self, offset: u64) -> u8 {
        self.config_bytes::<1>(offset)[0]
    }

    #[allow(dead_code)]
    pub fn config_u16(&self, offset: u64) -> u16 {
        u16::from_le_bytes(self.config_bytes::<2>(offset))
    }

    pub fn config_u32(&self, offset: u64) -> u32 {
        u32::from_le_bytes(self.config_bytes::<4>(offset))
    }

    pub fn config_u64(&self, offset: u64) -> u64 {
        u64::from_le_bytes(self.config_bytes::<8>(offset))
    }

    /// Sets up queue `index` with at most `want` entries (the device's QueueNumMax and
    /// [`MAX_QUEUE`] bound it too; the size is a power of two), its rings in zeroed pages
    /// from `pages`. Call before [`Device::driver_ok`].
    pub fn setup_queue(
        &self,
        index: u16,
        want: u16,
        pages: &mut PageAllocator,
    ) -> Result<Queue, Error> {
        self.write(QUEUE_SEL, index as u32);
        if self.read(QUEUE_READY) != 0 {
            return Err(Error::QueueInUse(index));
        }
        let max = self.read(QUEUE_NUM_MAX);
        if max == 0 {
            return Err(Error::QueueMissing(index));
        }
        let limit = max.min(want.max(1) as u32).min(MAX_QUEUE as u32);
        // Largest power of two not above the limit.
        let size = 1u32 << (31 - limit.leading_zeros());
        let n = size as u64;
        let pages_for = |bytes: u64| bytes.div_ceil(PAGE_SIZE);
        let desc = pages
            .alloc_pages_zeroed(pages_for(16 * n))
            .ok_or(Error::OutOfMemory("a descriptor table"))?;
        let avail = pages
            .alloc_pages_zeroed(pages_for(6 + 2 * n))
            .ok_or(Error::OutOfMemory("an available ring"))?;
        let used = pages
            .alloc_pages_zeroed(pages_for(6 + 8 * n))
            .ok_or(Error::OutOfMemory("a used ring"))?;
        let event_idx = self.has(F_EVENT_IDX_BIT);
        if self.wait == Wait::Poll {
            if event_idx {
                // The device ignores the flags: used_event trails the used index instead
                // (0xffff: the device's first completion, 0 -> 1, does not pass it).
                write16(avail + 4 + 2 * n, 0xffff);
            } else {
                write16(avail, AVAIL_F_NO_INTERRUPT);
            }
        }
        self.write(QUEUE_NUM, size);
        self.write(QUEUE_DESC_LOW, desc as u32);
        self.write(QUEUE_DESC_HIGH, (desc >> 32) as u32);
        self.write(QUEUE_DRIVER_LOW, avail as u32);
        self.write(QUEUE_DRIVER_HIGH, (avail >> 32) as u32);
        self.write(QUEUE_DEVICE_LOW, used as u32);
        self.write(QUEUE_DEVICE_HIGH, (used >> 32) as u32);
        self.write(QUEUE_READY, 1);

        let mut free = [0u16; MAX_QUEUE];
        for (i, slot) in free.iter_mut().enumerate().take(size as usize) {
            // Popped from the end: hand out low indices first.
            *slot = (size as usize - 1 - i) as u16;
        }
        Ok(Queue {
            index,
            size: size as u16,
            desc,
            avail,
            used,
            notify: self.base + QUEUE_NOTIFY,
            free,
            free_len: size as u16,
            chain_len: [0; MAX_QUEUE],
            avail_idx: 0,
            kicked_idx: 0,
            last_used: 0,
            event_idx,
            irq: self.irq,
            wait: self.wait,
            base: self.base,
        })
    }

    /// Routes the interrupt (in `irq` mode) and sets DRIVER_OK; fails if the device does
    /// not take it or wants a reset.
    pub fn driver_ok(&mut self) -> Result<(), Error> {
        if self.wait == Wait::Irq {
            self.enable_irq();
        }
        let status = S_ACKNOWLEDGE | S_DRIVER | S_FEATURES_OK | S_DRIVER_OK;
        self.write(STATUS, status);
        let now = self.read(STATUS);
        if now & S_NEEDS_RESET != 0 {
            return Err(Error::NeedsReset(self.base));
        }
        if now & S_DRIVER_OK == 0 {
            return Err(Error::DriverOkRefused(self.base, now));
        }
        Ok(())
    }

    /// Registers this device with the ring-0 handler for its pin and routes the pin to
    /// this CPU.
    fn enable_irq(&mut self) {
        let pin = self.irq as usize;
        // SAFETY: statics of entry.S, only accessed atomically.
        unsafe {
            virtio_isr[pin].store(0, Ordering::SeqCst);
            virtio_mmio_base[pin].store(self.base, Ordering::SeqCst);
        }
        LocalApic::enable();
        self.irqs_at_start = irq_count(self.irq);
        IoApic::route(self.irq, LocalApic::id());
    }

    /// Interrupts received since DRIVER_OK (0 in poll mode).
    pub fn irqs(&self) -> u64 {
        match self.wait {
            Wait::Irq => irq_count(self.irq) - self.irqs_at_start,
            Wait::Poll => 0,
        }
    }

    /// Masks the pin, unregisters the device from the ring-0 handler and resets it.
    pub fn shutdown(&self) {
        if self.wait == Wait::Irq {
            IoApic::mask(self.irq);
            // SAFETY: as in enable_irq.
            unsafe { virtio_mmio_base[self.irq as usize].store(0, Ordering::SeqCst) };
        }
        let _ = self.reset();
    }
}

/// One buffer of a descriptor chain: guest-physical address, length, and whether the
/// device writes it (device-writable) or reads it.
#[derive(Clone, Copy)]
pub struct Buf {
    pub addr: u64,
    pub len: u32,
    pub device_writes: bool,
}

impl Buf {
    /// A buffer the device reads (driver to device).
    pub fn out(addr: u64, len: u32) -> Buf {
        Buf {
            addr,
            len,
            device_writes: false,
        }
    }

    /// A buffer the device writes (device to driver).
    pub fn inp(addr: u64, len: u32) -> Buf {
        Buf {
            addr,
            len,
            device_writes: true,
        }
    }
}

fn write16(addr: u64, v: u16) {
    // SAFETY: rings live in identity-mapped RAM the driver owns.
    unsafe { (addr as *mut u16).write_volatile(v) }
}

fn read16(addr: u64) -> u16 {
    // SAFETY: as for write16.
    unsafe { (addr as *const u16).read_volatile() }
}

fn read32(addr: u64) -> u32 {
    // SAFETY: as for write16.
    unsafe { (addr as *const u32).read_volatile() }
}

/// A split virtqueue: descriptor table, available ring (driver area) and used ring
/// (device area), each in its own zeroed pages.
pub struct Queue {
    pub index: u16,
    pub size: u16,
    desc: u64,
    avail: u64,
    used: u64,
    notify: u64,
    /// Stack of free descriptor indices.
    free: [u16; MAX_QUEUE],
    free_len: u16,
    /// Descriptors in the chain headed by each index (0: not a posted head).
    chain_len: [u16; MAX_QUEUE],
    /// Our copy of avail.idx.
    avail_idx: u16,
    /// avail.idx at the last [`Queue::kick`] (the `old` of `vring_need_event`).
    kicked_idx: u16,
    /// used.idx up to which we have taken completions.
    last_used: u16,
    /// VIRTIO_RING_F_EVENT_IDX was negotiated.
    event_idx: bool,
    irq: u8,
    wait: Wait,
    base: u64,
}

impl Queue {
    /// Free descriptors.
    pub fn free(&self) -> u16 {
        self.free_len
    }

    /// Chains posted and not yet completed.
    #[allow(dead_code)]
    pub fn in_flight(&self) -> u16 {
        self.avail_idx.wrapping_sub(self.last_used)
    }

    /// Puts a chain of `bufs` (device-readable ones first, as the spec requires) on the
    /// available ring; returns its head descriptor index, which [`Queue::pop_used`] hands
    /// back on completion. The device is not notified: call [`Queue::kick`].
    pub fn post(&mut self, bufs: &[Buf]) -> Result<u16, Error> {
        let n = bufs.len();
        if n == 0 || n > self.free_len as usize {
            return Err(Error::QueueFull);
        }
        // Take n descriptors; link them in order.
        let mut ids = [0u16; MAX_QUEUE];
        for id in ids.iter_mut().take(n) {
            self.free_len -= 1;
            *id = self.free[self.free_len as usize];
        }
        for (i, b) in bufs.iter().enumerate() {
            let d = self.desc + 16 * ids[i] as u64;
            let mut flags = if b.device_writes { DESC_F_WRITE } else { 0 };
            let next = if i + 1 < n {
                flags |= DESC_F_NEXT;
                ids[i + 1]
            } else {
                0
            };
            // SAFETY: descriptor table entries in RAM the driver owns.
            unsafe {
                (d as *mut u64).write_volatile(b.addr);
                ((d + 8) as *mut u32).write_volatile(b.len);
                ((d + 12) as *mut u16).write_volatile(flags);
                ((d + 14) as *mut u16).write_volatile(next);
            }
        }
        let head = ids[0];
        self.chain_len[head as usize] = n as u16;
        let slot = self.avail_idx % self.size;
        write16(self.avail + 4 + 2 * slot as u64, head);
        // The descriptors and the ring entry before the index that publishes them.
        fence(Ordering::Release);
        self.avail_idx = self.avail_idx.wrapping_add(1);
        write16(self.avail + 2, self.avail_idx);
        Ok(head)
    }

    /// Notifies the device of new available buffers, unless it said it does not need it:
    /// VIRTQ_USED_F_NO_NOTIFY, or with EVENT_IDX an `avail_event` that the buffers posted
    /// since the last kick did not pass.
    pub fn kick(&mut self) {
        // The index store must be visible before we read the device's flag or avail_event
        // (store-load).
        fence(Ordering::SeqCst);
        let old = self.kicked_idx;
        self.kicked_idx = self.avail_idx;
        let notify = if self.event_idx {
            let avail_event = read16(self.used + 4 + 8 * self.size as u64);
            need_event(avail_event, self.avail_idx, old)
        } else {
            read16(self.used) & USED_F_NO_NOTIFY == 0
        };
        if notify {
            mmio::write32(self.notify, self.index as u32);
        }
    }

    /// With EVENT_IDX: writes `used_event`, the used index past which the device is to
    /// interrupt.
    fn set_used_event(&self, event: u16) {
        write16(self.avail + 4 + 2 * self.size as u64, event);
    }

    /// Takes the next completion off the used ring, if any: (head id, bytes written by the
    /// device). Frees the chain's descriptors.
    pub fn pop_used(&mut self) -> Result<Option<(u16, u32)>, Error> {
        let used_idx = read16(self.used + 2);
        if used_idx == self.last_used {
            return Ok(None);
        }
        // The element after the index that published it.
        fence(Ordering::Acquire);
        let slot = self.last_used % self.size;
        let elem = self.used + 4 + 8 * slot as u64;
        let id = read32(elem);
        let len = read32(elem + 4);
        if id >= self.size as u32 || self.chain_len[id as usize] == 0 {
            return Err(Error::BadUsed(id));
        }
        let id = id as u16;
        self.last_used = self.last_used.wrapping_add(1);
        if self.event_idx && self.wait == Wait::Poll {
            // Keep used_event just behind what the device has already passed: no interrupt.
            self.set_used_event(self.last_used.wrapping_sub(1));
        }
        // Walk the chain to free it.
        let mut d = id;
        for _ in 0..self.chain_len[id as usize] {
            self.free[self.free_len as usize] = d;
            self.free_len += 1;
            d = read16(self.desc + 16 * d as u64 + 14);
        }
        self.chain_len[id as usize] = 0;
        Ok(Some((id, len)))
    }

    /// Waits until a completion arrives or `deadline` (a TSC value) passes: spinning on the
    /// used ring (poll) or on the pin's interrupt counter (irq).
    pub fn wait_used(&mut self, deadline: u64, what: &'static str) -> Result<(u16, u32), Error> {
        loop {
            let seen = irq_count(self.irq);
            if let Some(done) = self.pop_used()? {
                return Ok(done);
            }
            match self.wait {
                Wait::Poll => {
                    while read16(self.used + 2) == self.last_used && rdtsc() < deadline {
                        core::hint::spin_loop();
                    }
                }
                Wait::Irq => {
                    if self.event_idx {
                        // An interrupt for the next completion (used.idx passing last_used),
                        // then look again: one that landed before the device could see
                        // used_event would not interrupt.
                        self.set_used_event(self.last_used);
                        fence(Ordering::SeqCst);
                        if let Some(done) = self.pop_used()? {
                            return Ok(done);
                        }
                    }
                    while irq_count(self.irq) == seen && rdtsc() < deadline {
                        core::hint::spin_loop();
                    }
                    // SAFETY: static of entry.S, only accessed atomically.
                    // Take the configuration-change bit: each one is looked at once.
                    let isr = unsafe {
                        virtio_isr[self.irq as usize].fetch_and(!INT_CONFIG, Ordering::SeqCst)
                    };
                    if isr & INT_CONFIG != 0
                        && mmio::read32(self.base + STATUS) & S_NEEDS_RESET != 0
                    {
                        return Err(Error::NeedsReset(self.base));
                    }
                }
            }
            if rdtsc() >= deadline {
                if let Some(done) = self.pop_used()? {
                    return Ok(done);
                }
                if mmio::read32(self.base + STATUS) & S_NEEDS_RESET != 0 {
                    return Err(Error::NeedsReset(self.base));
                }
                return Err(Error::Timeout(what));
            }
        }
    }
}

/// A bump allocator over one block of guest RAM, for request headers and buffers.
pub struct Arena {
    next: u64,
    end: u64,
}

impl Arena {
    pub fn new(pages: &mut PageAllocator, bytes: u64) -> Result<Arena, Error> {
        let pages_needed = bytes.div_ceil(PAGE_SIZE);
        let start = pages
            .alloc_pages_zeroed(pages_needed)
            .ok_or(Error::OutOfMemory("buffers"))?;
        Ok(Arena {
            next: start,
            end: start + pages_needed * PAGE_SIZE,
        })
    }

    /// `bytes` bytes aligned to `align` (a power of two).
    pub fn take(&mut self, bytes: u64, align: u64) -> Result<u64, Error> {
        let at = (self.next + align - 1) & !(align - 1);
        if at + bytes > self.end {
            return Err(Error::OutOfMemory("buffers"));
        }
        self.next = at + bytes;
        Ok(at)
    }
}

impl From<Error> for crate::report::Line {
    fn from(e: Error) -> Self {
        let mut line = crate::report::Line::new();
        let _ = fmt::Write::write_fmt(&mut line, format_args!("{e}"));
        line
    }
}
