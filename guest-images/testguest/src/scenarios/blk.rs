//! `virtio-blk`: the first virtio block device (DeviceID 2), through the driver in
//! `virtio.rs`. Three ways to run it (keys in the README):
//!
//! * check (default): write the `kite_workloads::disk_pattern_fill` pattern for seed
//!   `kite_seed` over the disk (or its first `kite_blk_mib` MiB), read it all back and
//!   compare, then FLUSH.
//! * readonly (the device offers VIRTIO_BLK_F_RO): a write must fail with
//!   VIRTIO_BLK_S_IOERR; then everything is read and summed with
//!   `kite_workloads::disk_checksum`, for the host to compare with the image.
//! * throughput (`kite_blk_mode=seq|rand`): timed writes then reads of `kite_blk_bs`-byte
//!   blocks, sequential over the area or at random block-aligned places in it. The data is
//!   not checked.
//!
//! Requests are pipelined: up to `kite_blk_depth` (default 4) are on the queue at once.

use core::fmt::Write;

use super::Ctx;
use crate::clock::{per_second, tsc_freq};
use crate::fail;
use crate::report::{Line, Outcome};
use crate::sys::{ms_to_ticks, rdtsc};
use crate::virtio::{self, Arena, Buf, Device, ID_BLOCK, Queue, Wait};

const F_SIZE_MAX: u32 = 1;
const F_SEG_MAX: u32 = 2;
const F_RO: u32 = 5;
const F_FLUSH: u32 = 9;

pub(super) const T_IN: u32 = 0;
pub(super) const T_OUT: u32 = 1;
pub(super) const T_FLUSH: u32 = 4;

pub(super) const S_OK: u8 = 0;
pub(super) const S_IOERR: u8 = 1;

pub(super) const SECTOR: u64 = 512;
const MAX_DEPTH: usize = 32;
/// Time limit for any one request.
const REQUEST_MS: u64 = 10_000;
/// Default data bytes per request in the check and readonly modes.
const DEFAULT_REQ_BYTES: u64 = 256 << 10;
/// Default operations of the random throughput mode (when the area has more blocks).
const DEFAULT_RAND_OPS: u64 = 8192;

/// A request on the queue.
#[derive(Clone, Copy, Default)]
struct Slot {
    /// 16-byte request header, then the status byte at +16.
    header: u64,
    data: u64,
    /// Request data: sector and length in bytes.
    sector: u64,
    bytes: u64,
    kind: u32,
}

pub(super) struct Blk {
    pub(super) dev: Device,
    pub(super) q: Queue,
    pub(super) capacity: u64,
    /// Largest data segment (0: no limit).
    size_max: u64,
    slots: [Slot; MAX_DEPTH],
    pub(super) depth: usize,
    /// Head descriptor -> slot.
    slot_of: [u8; virtio::MAX_QUEUE],
    free_slots: [u8; MAX_DEPTH],
    free_len: usize,
    timeout: u64,
}

impl Blk {
    /// Sets up the device and `depth` slots of `buf_bytes` data each (fewer if the queue
    /// cannot hold that many requests).
    pub(super) fn open(
        ctx: &mut Ctx,
        wait: Wait,
        depth: usize,
        buf_bytes: u64,
    ) -> Result<Blk, Line> {
        // `kite_blk_index=<n>`: the n-th virtio-blk device (default the first).
        let index = ctx.cmdline.get_u64("kite_blk_index").unwrap_or(0) as usize;
        let entry = virtio::find(&ctx.cmdline, ID_BLOCK, index)?;
        let ring = match virtio::ring_features(&ctx.cmdline) {
            Ok(f) => f,
            Err(e) => return fail!("{e}"),
        };
        let wanted = (1 << F_SIZE_MAX) | (1 << F_SEG_MAX) | (1 << F_RO) | (1 << F_FLUSH) | ring;
        let mut dev = Device::init(entry, ID_BLOCK, wanted, wait)?;
        let capacity = dev.config_u64(0);
        let size_max = if dev.has(F_SIZE_MAX) {
            dev.config_u32(8) as u64
        } else {
            0
        };
        let seg_max = if dev.has(F_SEG_MAX) {
            dev.config_u32(12) as u64
        } else {
            u64::MAX
        };
        let segs = match size_max {
            0 => 1,
            m => buf_bytes.div_ceil(m),
        };
        if segs > seg_max {
            return fail!(
                "a request of {buf_bytes} bytes needs {segs} segments of at most {size_max} bytes; the device takes {seg_max}"
            );
        }
        let q = dev.setup_queue(0, virtio::MAX_QUEUE as u16, &mut ctx.pages)?;
        let depth = depth
            .clamp(1, MAX_DEPTH)
            .min(q.size as usize / (segs as usize + 2));
        if depth == 0 {
            return fail!(
                "queue of {} cannot hold one request of {segs} segments",
                q.size
            );
        }
        let mut arena = Arena::new(&mut ctx.pages, depth as u64 * (buf_bytes + 4096) + 4096)?;
        let mut slots = [Slot::default(); MAX_DEPTH];
        let mut free_slots = [0u8; MAX_DEPTH];
        for (i, slot) in slots.iter_mut().enumerate().take(depth) {
            slot.header = arena.take(32, 32)?;
            free_slots[i] = i as u8;
        }
        for slot in slots.iter_mut().take(depth) {
            slot.data = arena.take(buf_bytes, 4096)?;
        }
        dev.driver_ok()?;
        Ok(Blk {
            dev,
            q,
            capacity,
            size_max,
            slots,
            depth,
            slot_of: [0; virtio::MAX_QUEUE],
            free_slots,
            free_len: depth,
            timeout: ms_to_ticks(REQUEST_MS),
        })
    }

    fn readonly(&self) -> bool {
        self.dev.has(F_RO)
    }

    pub(super) fn data(&mut self, slot: usize) -> &mut [u8] {
        let s = self.slots[slot];
        // SAFETY: the slot's buffer is ours (arena RAM) while the slot is not on the queue.
        unsafe { core::slice::from_raw_parts_mut(s.data as *mut u8, s.bytes as usize) }
    }

    /// A free slot, for a request of `bytes` at `sector`; the caller fills its data (for a
    /// write) and calls [`Blk::submit`].
    pub(super) fn take_slot(&mut self, kind: u32, sector: u64, bytes: u64) -> Option<usize> {
        if self.free_len == 0 {
            return None;
        }
        self.free_len -= 1;
        let i = self.free_slots[self.free_len] as usize;
        let s = &mut self.slots[i];
        s.kind = kind;
        s.sector = sector;
        s.bytes = bytes;
        Some(i)
    }

    pub(super) fn submit(&mut self, slot: usize) -> Result<(), Line> {
        let s = self.slots[slot];
        // SAFETY: the header and status belong to this free slot.
        unsafe {
            (s.header as *mut u32).write_volatile(s.kind);
            ((s.header + 4) as *mut u32).write_volatile(0);
            ((s.header + 8) as *mut u64).write_volatile(s.sector);
            ((s.header + 16) as *mut u8).write_volatile(0xff);
        }
        let mut bufs = [Buf::r(0, 0); virtio::MAX_QUEUE];
        bufs[0] = Buf::r(s.header, 16);
        let mut n = 1;
        let seg = if self.size_max == 0 {
            u32::MAX as u64
        } else {
            self.size_max
        };
        let mut off = 0;
        while off < s.bytes {
            let len = (s.bytes - off).min(seg);
            bufs[n] = Buf {
                addr: s.data + off,
                len: len as u32,
                device_writes: s.kind == T_IN,
            };
            n += 1;
            off += len;
        }
        bufs[n] = Buf::w(s.header + 16, 1);
        n += 1;
        let head = self.q.post(&bufs[..n])?;
        self.slot_of[head as usize] = slot as u8;
        Ok(())
    }

    /// Waits for one request to complete; returns its slot (free again once the caller is
    /// done with its data) and status byte.
    pub(super) fn complete(&mut self) -> Result<(usize, u8), Line> {
        let deadline = rdtsc() + self.timeout;
        let (head, _len) = self.q.wait_used(deadline, "a virtio-blk request")?;
        let slot = self.slot_of[head as usize] as usize;
        // SAFETY: the device finished with the header/status.
        let status = unsafe { ((self.slots[slot].header + 16) as *const u8).read_volatile() };
        self.free_slots[self.free_len] = slot as u8;
        self.free_len += 1;
        Ok((slot, status))
    }

    /// One request, waited for: returns its status.
    pub(super) fn single(&mut self, kind: u32, sector: u64, bytes: u64) -> Result<u8, Line> {
        let slot = self.take_slot(kind, sector, bytes).ok_or_else(busy)?;
        self.submit(slot)?;
        self.q.kick();
        Ok(self.complete()?.1)
    }

    /// Runs requests of `kind` for every (sector, bytes) `next` yields, keeping up to
    /// `depth` on the queue. `fill` prepares a write's data; `done` sees each completed
    /// request (its status was OK). Returns the requests done.
    pub(super) fn pipeline(
        &mut self,
        kind: u32,
        mut next: impl FnMut() -> Option<(u64, u64)>,
        mut fill: impl FnMut(&mut [u8], u64),
        mut done: impl FnMut(&[u8], u64) -> Result<(), Line>,
    ) -> Result<u64, Line> {
        let mut count = 0;
        let mut more = true;
        loop {
            let mut posted = false;
            while more && self.free_len > 0 {
                let Some((sector, bytes)) = next() else {
                    more = false;
                    break;
                };
                let slot = self.take_slot(kind, sector, bytes).ok_or_else(busy)?;
                fill(self.data(slot), sector);
                self.submit(slot)?;
                posted = true;
            }
            if posted {
                self.q.kick();
            }
            if self.free_len == self.depth {
                return Ok(count);
            }
            let (slot, status) = self.complete()?;
            let s = self.slots[slot];
            if status != S_OK {
                return fail!(
                    "{} of {} bytes at sector {} returned status {status}",
                    if kind == T_IN { "read" } else { "write" },
                    s.bytes,
                    s.sector
                );
            }
            done(self.data(slot), s.sector)?;
            count += 1;
        }
    }

    fn flush(&mut self) -> Result<u64, Line> {
        let start = rdtsc();
        let status = self.single(T_FLUSH, 0, 0)?;
        if status != S_OK {
            return fail!("FLUSH returned status {status}");
        }
        Ok(rdtsc().wrapping_sub(start))
    }
}

pub(super) fn busy() -> Line {
    let mut l = Line::new();
    let _ = write!(l, "no free request slot");
    l
}

/// Reads a size from the command line (memparse syntax) or uses `default`.
pub(super) fn size_arg(ctx: &Ctx, key: &'static str, default: u64) -> Result<u64, Line> {
    match ctx.cmdline.get(key) {
        None => Ok(default),
        Some(v) => match crate::cmdline::parse_number(v) {
            Some(n) => Ok(n),
            None => fail!("{key} is not a number"),
        },
    }
}

/// Sequential (sector, bytes) pieces of `req` bytes over `sectors` sectors.
fn sequential(sectors: u64, req: u64) -> impl FnMut() -> Option<(u64, u64)> {
    let mut at = 0u64;
    move || {
        if at >= sectors {
            return None;
        }
        let n = (req / SECTOR).min(sectors - at);
        let piece = (at, n * SECTOR);
        at += n;
        Some(piece)
    }
}

/// `tsc_hz=<n> tsc_src=<s> wait=<m> irqs=<n> event_idx=<0/1>`, the common tail of every ok
/// line.
fn tail(line: &mut Line, blk: &Blk, hz: u64, src: &str) {
    let _ = write!(
        line,
        " tsc_hz={hz} tsc_src={src} wait={} irqs={} event_idx={}",
        blk.dev.wait.name(),
        blk.dev.irqs(),
        blk.dev.event_idx()
    );
}

pub fn virtio_blk(ctx: &mut Ctx) -> Outcome {
    let wait = match Wait::from_cmdline(&ctx.cmdline) {
        Ok(w) => w,
        Err(e) => return fail!("{e}"),
    };
    match ctx.cmdline.get("kite_blk_mode") {
        None | Some(b"check") => check(ctx, wait),
        Some(b"seq") => throughput(ctx, wait, false),
        Some(b"rand") => throughput(ctx, wait, true),
        Some(_) => fail!("kite_blk_mode must be check, seq or rand"),
    }
}

/// The area the scenario works on: the whole disk or its first `kite_blk_mib` MiB.
fn area(ctx: &Ctx, capacity: u64) -> Result<u64, Line> {
    let sectors = match ctx.cmdline.get_u64("kite_blk_mib") {
        Some(mib) => capacity.min(mib.saturating_mul(2048)),
        None => capacity,
    };
    if sectors == 0 {
        return fail!("the disk has no sectors (capacity {capacity})");
    }
    Ok(sectors)
}

fn check(ctx: &mut Ctx, wait: Wait) -> Outcome {
    let seed = ctx.cmdline.get_u64("kite_seed").unwrap_or(1);
    let req = size_arg(ctx, "kite_blk_req", DEFAULT_REQ_BYTES)?;
    let depth = ctx.cmdline.get_u64("kite_blk_depth").unwrap_or(4) as usize;
    if req == 0 || req % SECTOR != 0 {
        return fail!("kite_blk_req must be a non-zero multiple of 512");
    }
    let freq = tsc_freq();
    let mut blk = Blk::open(ctx, wait, depth, req)?;
    let sectors = area(ctx, blk.capacity)?;
    let bytes = sectors * SECTOR;

    if blk.readonly() {
        // A write must fail; its data would be the pattern (it must not land).
        let slot = blk.take_slot(T_OUT, 0, SECTOR).ok_or_else(busy)?;
        kite_workloads::disk_pattern_fill(seed, 0, blk.data(slot));
        blk.submit(slot)?;
        blk.q.kick();
        let (_, write_status) = blk.complete()?;
        if write_status != S_IOERR {
            return fail!(
                "readonly device: a write returned status {write_status}, expected {S_IOERR} (IOERR)"
            );
        }
        let mut sum = 0u64;
        let start = rdtsc();
        blk.pipeline(
            T_IN,
            sequential(sectors, req),
            |_, _| {},
            |data, sector| {
                sum = sum.wrapping_add(kite_workloads::disk_checksum(sector, data));
                Ok(())
            },
        )?;
        let read_cycles = rdtsc().wrapping_sub(start);
        let mut line = Line::new();
        let _ = write!(
            line,
            "readonly=1 sectors={sectors} write_status={write_status} read_sum={sum:#018x} read_bytes_per_sec={} read_cycles={read_cycles} req_bytes={req} depth={}",
            per_second(bytes, read_cycles, freq.hz),
            blk.depth
        );
        tail(&mut line, &blk, freq.hz, freq.source);
        blk.dev.shutdown();
        return Ok(line);
    }

    let start = rdtsc();
    blk.pipeline(
        T_OUT,
        sequential(sectors, req),
        |data, sector| kite_workloads::disk_pattern_fill(seed, sector, data),
        |_, _| Ok(()),
    )?;
    let write_cycles = rdtsc().wrapping_sub(start);

    let start = rdtsc();
    blk.pipeline(
        T_IN,
        sequential(sectors, req),
        |data, _| data.fill(0),
        |data, sector| match kite_workloads::disk_pattern_check(seed, sector, data) {
            None => Ok(()),
            Some(off) => fail!(
                "data read back differs at sector {} (byte {} of a {}-byte read at sector {sector})",
                sector + off as u64 / SECTOR,
                off,
                data.len()
            ),
        },
    )?;
    let read_cycles = rdtsc().wrapping_sub(start);

    let (flushed, flush_cycles) = if blk.dev.has(F_FLUSH) {
        (1, blk.flush()?)
    } else {
        (0, 0)
    };
    let mut line = Line::new();
    let _ = write!(
        line,
        "sectors={sectors} write_bytes_per_sec={} read_bytes_per_sec={} write_cycles={write_cycles} read_cycles={read_cycles} flushed={flushed} flush_cycles={flush_cycles} seed={seed} req_bytes={req} depth={}",
        per_second(bytes, write_cycles, freq.hz),
        per_second(bytes, read_cycles, freq.hz),
        blk.depth
    );
    tail(&mut line, &blk, freq.hz, freq.source);
    blk.dev.shutdown();
    Ok(line)
}

/// xorshift64*, for random block numbers.
struct Rand(u64);

impl Rand {
    fn below(&mut self, n: u64) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d) % n
    }
}

fn throughput(ctx: &mut Ctx, wait: Wait, random: bool) -> Outcome {
    let default_bs = if random { 4096 } else { 1 << 20 };
    let bs = size_arg(ctx, "kite_blk_bs", default_bs)?;
    let depth = ctx.cmdline.get_u64("kite_blk_depth").unwrap_or(4) as usize;
    let seed = ctx.cmdline.get_u64("kite_seed").unwrap_or(1);
    if bs == 0 || bs % SECTOR != 0 {
        return fail!("kite_blk_bs must be a non-zero multiple of 512");
    }
    let freq = tsc_freq();
    let mut blk = Blk::open(ctx, wait, depth, bs)?;
    let sectors = area(ctx, blk.capacity)?;
    let blocks = sectors / (bs / SECTOR);
    if blocks == 0 {
        return fail!("the area ({sectors} sectors) is smaller than one block of {bs} bytes");
    }
    let ops = match ctx.cmdline.get_u64("kite_n") {
        Some(n) if n > 0 => n,
        Some(_) => return fail!("kite_n must be at least 1"),
        None if random => blocks.min(DEFAULT_RAND_OPS),
        None => blocks,
    };
    // Write buffers hold the pattern of the area's first block (not checked afterwards).
    for slot in 0..blk.depth {
        blk.slots[slot].bytes = bs;
        kite_workloads::disk_pattern_fill(seed, 0, blk.data(slot));
    }
    let sectors_per_block = bs / SECTOR;
    let places = |seed: u64| {
        let mut i = 0u64;
        let mut rng = Rand(seed | 1);
        move || {
            if i == ops {
                return None;
            }
            let block = if random {
                rng.below(blocks)
            } else {
                i % blocks
            };
            i += 1;
            Some((block * sectors_per_block, bs))
        }
    };

    let (write_cycles, flush_cycles) = if blk.readonly() {
        (0, 0)
    } else {
        let start = rdtsc();
        blk.pipeline(T_OUT, places(seed), |_, _| {}, |_, _| Ok(()))?;
        let cycles = rdtsc().wrapping_sub(start);
        let flush = if blk.dev.has(F_FLUSH) {
            blk.flush()?
        } else {
            0
        };
        (cycles, flush)
    };
    let write_ops = if blk.readonly() { 0 } else { ops };
    let start = rdtsc();
    blk.pipeline(T_IN, places(seed ^ 0x5eed), |_, _| {}, |_, _| Ok(()))?;
    let read_cycles = rdtsc().wrapping_sub(start);

    let mut line = Line::new();
    let _ = write!(
        line,
        "mode={} bs={bs} depth={} ops={ops} readonly={} write_bytes={} write_cycles={write_cycles} write_bytes_per_sec={} write_iops={} flush_cycles={flush_cycles} read_bytes={} read_cycles={read_cycles} read_bytes_per_sec={} read_iops={}",
        if random { "rand" } else { "seq" },
        blk.depth,
        u8::from(blk.readonly()),
        write_ops * bs,
        per_second(write_ops * bs, write_cycles, freq.hz),
        per_second(write_ops, write_cycles, freq.hz),
        ops * bs,
        per_second(ops * bs, read_cycles, freq.hz),
        per_second(ops, read_cycles, freq.hz),
    );
    tail(&mut line, &blk, freq.hz, freq.source);
    blk.dev.shutdown();
    Ok(line)
}
