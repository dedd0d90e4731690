//! A small virtio-mmio driver (virtio 1.2, section 4.2, register layout version 2, split
//! virtqueues), for the device scenarios. Nothing in it is specific to one VMM: devices are
//! found through the `virtio_mmio.device=<size>@<addr>:<irq>` command-line entries and
//! matched by their DeviceID register.
//!
//! The register steps, the rings and the descriptor chains are kite-virtio-driver's
//! (crates/virtio-driver, shared with Kite's device tests and fuzz harness), here on raw
//! pointers ([`Phys`]: guest RAM is identity-mapped) and volatile MMIO ([`Window`]). What is
//! this guest's own: discovery, the checks and errors below, and how it waits.
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

use kite_virtio_driver::mmio::{
    self as reg, CONFIG, CONFIG_GENERATION, DEVICE_ID, INT_CONFIG, INTERRUPT_STATUS, MAGIC,
    MAGIC_VALUE, S_FAILED, STATUS, VERSION,
};
pub use kite_virtio_driver::mmio::{F_EVENT_IDX, F_EVENT_IDX_BIT, F_VERSION_1, S_NEEDS_RESET};
use kite_virtio_driver::{AVAIL_F_NO_INTERRUPT, Chains, Layout, Memory, Registers};
pub use kite_virtio_driver::{Buf, MAX_QUEUE};

use crate::apic::{IoApic, LocalApic, irq_count};
use crate::cmdline::{Cmdline, VirtioMmioDevice};
use crate::mem::{MMIO_WINDOW, PAGE_SIZE, PageAllocator, mmio};
use crate::sys::rdtsc;

pub const ID_NET: u32 = 1;
pub const ID_BLOCK: u32 = 2;
pub const ID_RNG: u32 = 4;
pub const ID_VSOCK: u32 = 19;

/// Guest RAM as the driver reaches it: identity-mapped, so an address is a pointer.
pub struct Phys;

impl Memory for Phys {
    fn read_u16(&self, addr: u64) -> u16 {
        // SAFETY: the driver only reads rings and tables it placed in identity-mapped RAM it
        // owns.
        unsafe { (addr as *const u16).read_volatile() }
    }

    fn read_u32(&self, addr: u64) -> u32 {
        // SAFETY: as in read_u16.
        unsafe { (addr as *const u32).read_volatile() }
    }

    fn write_u16(&mut self, addr: u64, value: u16) {
        // SAFETY: the driver only writes rings and tables it placed in identity-mapped RAM it
        // owns (the device only reads what the driver writes).
        unsafe { (addr as *mut u16).write_volatile(value) }
    }

    fn write_u32(&mut self, addr: u64, value: u32) {
        // SAFETY: as in write_u16.
        unsafe { (addr as *mut u32).write_volatile(value) }
    }

    fn write_u64(&mut self, addr: u64, value: u64) {
        // SAFETY: as in write_u16.
        unsafe { (addr as *mut u64).write_volatile(value) }
    }
}

/// A device's register window, at its address in the MMIO window.
#[derive(Clone, Copy)]
pub struct Window(pub u64);

impl Registers for Window {
    fn read(&mut self, offset: u64) -> u32 {
        mmio::read32(self.0 + offset)
    }

    fn write(&mut self, offset: u64, value: u32) {
        mmio::write32(self.0 + offset, value)
    }
}

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
    fn read(&self, offset: u64) -> u32 {
        Window(self.base).read(offset)
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
        let regs = &mut Window(base);
        reg::acknowledge(regs);
        let offered = reg::device_features(regs);
        if offered & F_VERSION_1 == 0 {
            reg::set_status(regs, S_FAILED);
            return Err(Error::NoVersion1(base));
        }
        let accepted = offered & (wanted | F_VERSION_1);
        if !reg::accept_features(regs, accepted) {
            reg::set_status(regs, S_FAILED);
            return Err(Error::FeaturesRefused(base, accepted));
        }
        dev.features = accepted;
        Ok(dev)
    }

    /// Writes 0 to Status and waits (up to ~1 s) for it to read back 0.
    pub fn reset(&self) -> Result<(), Error> {
        Window(self.base).write(STATUS, 0);
        let start = rdtsc();
        while self.read(STATUS) != 0 {
            if rdtsc().wrapping_sub(start) > 3_000_000_000 {
                return Err(Error::Timeout("the device reset"));
            }
            core::hint::spin_loop();
        }
        Ok(())
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
        let regs = &mut Window(self.base);
        let (ready, max) = reg::select_queue(regs, index as u32);
        if ready {
            return Err(Error::QueueInUse(index));
        }
        if max == 0 {
            return Err(Error::QueueMissing(index));
        }
        let limit = max.min(want.max(1) as u32).min(MAX_QUEUE as u32);
        // Largest power of two not above the limit.
        let size = 1u16 << (31 - limit.leading_zeros());
        let pages_for = |bytes: u64| bytes.div_ceil(PAGE_SIZE);
        let [desc_bytes, avail_bytes, used_bytes] = Layout::bytes(size);
        let desc = pages
            .alloc_pages_zeroed(pages_for(desc_bytes))
            .ok_or(Error::OutOfMemory("a descriptor table"))?;
        let avail = pages
            .alloc_pages_zeroed(pages_for(avail_bytes))
            .ok_or(Error::OutOfMemory("an available ring"))?;
        let used = pages
            .alloc_pages_zeroed(pages_for(used_bytes))
            .ok_or(Error::OutOfMemory("a used ring"))?;
        let layout = Layout {
            size,
            desc,
            avail,
            used,
        };
        let ring = kite_virtio_driver::Queue::new(layout, self.has(F_EVENT_IDX_BIT));
        if self.wait == Wait::Poll {
            if ring.event_idx {
                // The device ignores the flags: used_event trails the used index instead
                // (0xffff: the device's first completion, 0 -> 1, does not pass it).
                ring.set_used_event(&mut Phys, 0xffff);
            } else {
                ring.set_avail_flags(&mut Phys, AVAIL_F_NO_INTERRUPT);
            }
        }
        reg::queue_registers(regs, index as u32, size as u32, &layout, true);
        Ok(Queue {
            index,
            size,
            ring,
            chains: Chains::new(size),
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
        let now = reg::driver_ok(&mut Window(self.base));
        if now & S_NEEDS_RESET != 0 {
            return Err(Error::NeedsReset(self.base));
        }
        if now & reg::S_DRIVER_OK == 0 {
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

/// A split virtqueue: descriptor table, available ring (driver area) and used ring
/// (device area), each in its own zeroed pages.
pub struct Queue {
    pub index: u16,
    pub size: u16,
    ring: kite_virtio_driver::Queue,
    chains: Chains,
    irq: u8,
    wait: Wait,
    base: u64,
}

impl Queue {
    /// Free descriptors.
    pub fn free(&self) -> u16 {
        self.chains.free()
    }

    /// Chains posted and not yet completed.
    #[allow(dead_code)]
    pub fn in_flight(&self) -> u16 {
        self.ring.avail_idx().wrapping_sub(self.ring.last_used())
    }

    /// Puts a chain of `bufs` (device-readable ones first, as the spec requires) on the
    /// available ring; returns its head descriptor index, which [`Queue::pop_used`] hands
    /// back on completion. The device is not notified: call [`Queue::kick`].
    pub fn post(&mut self, bufs: &[Buf]) -> Result<u16, Error> {
        self.chains
            .post(&mut self.ring, &mut Phys, bufs)
            .map_err(|_| Error::QueueFull)
    }

    /// Notifies the device of new available buffers, unless it said it does not need it:
    /// VIRTQ_USED_F_NO_NOTIFY, or with EVENT_IDX an `avail_event` that the buffers posted
    /// since the last kick did not pass.
    pub fn kick(&mut self) {
        self.ring.kick(&Phys, &mut Window(self.base), self.index);
    }

    /// With EVENT_IDX: writes `used_event`, the used index past which the device is to
    /// interrupt.
    fn set_used_event(&self, event: u16) {
        self.ring.set_used_event(&mut Phys, event);
    }

    /// Takes the next completion off the used ring, if any: (head id, bytes written by the
    /// device). Frees the chain's descriptors.
    pub fn pop_used(&mut self) -> Result<Option<(u16, u32)>, Error> {
        let done = self
            .chains
            .pop_used(&mut self.ring, &Phys)
            .map_err(Error::BadUsed)?;
        if done.is_some() && self.ring.event_idx && self.wait == Wait::Poll {
            // Keep used_event just behind what the device has already passed: no interrupt.
            self.set_used_event(self.ring.last_used().wrapping_sub(1));
        }
        Ok(done)
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
                    while self.ring.used_idx(&Phys) == self.ring.last_used() && rdtsc() < deadline {
                        core::hint::spin_loop();
                    }
                }
                Wait::Irq => {
                    if self.ring.event_idx {
                        // An interrupt for the next completion (used.idx passing last_used),
                        // then look again: one that landed before the device could see
                        // used_event would not interrupt.
                        self.set_used_event(self.ring.last_used());
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
