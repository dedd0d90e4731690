//! Scenarios of a guest that attacks its devices (the VMM must stay up, answer as the virtio
//! spec says and not grow): `hostile-huge`, `hostile-notify`, `hostile-reset`, `hostile-mmio`.
//! Each ends by using the devices properly once more, to show they still work. All polled.

use core::fmt::Write;

use super::{Ctx, blk, rng};
use crate::fail;
use crate::mem::mmio;
use crate::report::{Line, Outcome};
use crate::sys::{ms_to_ticks, rdtsc};
use crate::virtio::{self, Arena, Buf, Device, ID_BLOCK, ID_NET, ID_RNG, ID_VSOCK, Wait};

const QUEUE_NOTIFY: u64 = 0x050;
const STATUS: u64 = 0x070;
const T_IN: u32 = 0;
const T_OUT: u32 = 1;
const S_OK: u8 = 0;
const STEP_MS: u64 = 5000;

/// xorshift64*.
struct Rand(u64);

impl Rand {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}

/// The end of the highest e820 RAM range below 4 GiB: [0, top) is all the guest's RAM there.
fn ram_top(ctx: &Ctx) -> u64 {
    ctx.boot
        .e820()
        .iter()
        .filter(|e| e.kind == 1)
        .map(|e| e.addr.saturating_add(e.size))
        .filter(|&end| end <= 1 << 32)
        .max()
        .unwrap_or(0)
}

fn write_blk_header(addr: u64, kind: u32, sector: u64) {
    // SAFETY: a 16-byte header in arena RAM that the device does not own now.
    unsafe {
        (addr as *mut u32).write_volatile(kind);
        ((addr + 4) as *mut u32).write_volatile(0);
        ((addr + 8) as *mut u64).write_volatile(sector);
    }
}

fn read_u8(addr: u64) -> u8 {
    // SAFETY: a byte of arena RAM the device has given back.
    unsafe { (addr as *const u8).read_volatile() }
}

/// What a device did with a request: completed it (used length) or asked for a reset.
enum Answer {
    Used(u32),
    NeedsReset,
}

/// Opens device `id` afresh (reset, features, one queue of 256, DRIVER_OK), posts `bufs`,
/// notifies and waits for its answer; then resets it.
fn ask(ctx: &mut Ctx, id: u32, bufs: &[Buf], what: &'static str) -> Result<Answer, Line> {
    let entry = virtio::find(&ctx.cmdline, id, 0)?;
    let dev = Device::init(entry, id, 0, Wait::Poll)?;
    let mut q = dev.setup_queue(0, 256, &mut ctx.pages)?;
    let mut dev = dev;
    dev.driver_ok()?;
    q.post(bufs)?;
    q.kick();
    let deadline = rdtsc() + ms_to_ticks(STEP_MS);
    let answer = loop {
        if let Some((_, len)) = q.pop_used()? {
            break Answer::Used(len);
        }
        if dev.status() & virtio::S_NEEDS_RESET != 0 {
            break Answer::NeedsReset;
        }
        if rdtsc() > deadline {
            return fail!("no answer to {what} within {STEP_MS} ms");
        }
    };
    dev.shutdown();
    Ok(answer)
}

/// `hostile-huge`: descriptor chains whose buffers are huge, on virtio-blk and virtio-rng. Blk:
/// a write from all of RAM, a read into the largest free block, 15 buffers of all of RAM (just
/// under 4 GiB in all), a header buffer of all of RAM, and 200 buffers of all of RAM (past the
/// 4 GiB a chain may hold, virtio 1.2 2.7.5.2). Rng: the largest free block, 15 of it, a buffer
/// the device would have to read, a buffer past the end of RAM, 200 of the free block. The disk
/// (smaller than RAM) must answer IOERR and stay as it was; entropy requests get at most what
/// the device gives per request; the chains over 4 GiB may be refused with DEVICE_NEEDS_RESET.
/// After each, the device is reset; then a proper request of each must work.
pub fn huge(ctx: &mut Ctx) -> Outcome {
    let top = ram_top(ctx).min(u32::MAX as u64);
    let all = top as u32;
    let free_len = (ctx.pages.largest_free() - (8 << 20)).min(u32::MAX as u64);
    let mut arena = Arena::new(&mut ctx.pages, 64 << 10)?;
    let hdr = arena.take(16, 16)?;
    let status = arena.take(1, 1)?;
    let small = arena.take(4096, 4096)?;
    let free = ctx
        .pages
        .alloc(free_len, 4096)
        .ok_or(virtio::Error::OutOfMemory("the huge buffer"))?;
    let fl = free_len as u32;
    let entry = virtio::find(&ctx.cmdline, ID_BLOCK, 0)?;
    let capacity = Device::init(entry, ID_BLOCK, 0, Wait::Poll)?.config_u64(0);
    if capacity * 512 >= top {
        return fail!("the disk ({capacity} sectors) must be smaller than RAM ({top} bytes)");
    }
    let mut line = Line::new();
    let _ = write!(line, "ram={top} free_block={free_len} blk=");
    let mut chain = [Buf::r(0, all); 202];
    for case in 0..6 {
        // SAFETY: our status byte; a value the device never writes.
        unsafe { (status as *mut u8).write_volatile(0xee) };
        let kind = if case == 1 || case == 5 { T_IN } else { T_OUT };
        write_blk_header(hdr, kind, 0);
        let (bufs, what): (&[Buf], &'static str) = match case {
            0 => (
                &[Buf::r(hdr, 16), Buf::r(0, all), Buf::w(status, 1)],
                "a write of all RAM",
            ),
            1 => (
                &[Buf::r(hdr, 16), Buf::w(free, fl), Buf::w(status, 1)],
                "a read into the free block",
            ),
            2 => {
                chain[0] = Buf::r(hdr, 16);
                chain[16] = Buf::w(status, 1);
                (&chain[..17], "15 buffers of all RAM")
            }
            3 => (
                &[Buf::r(0, all), Buf::w(status, 1)],
                "a header buffer of all RAM",
            ),
            4 => {
                chain[0] = Buf::r(hdr, 16);
                chain[16] = Buf::r(0, all);
                chain[201] = Buf::w(status, 1);
                (&chain[..202], "200 buffers of all RAM")
            }
            _ => (
                &[Buf::r(hdr, 16), Buf::w(small, 4096), Buf::w(status, 1)],
                "a proper read",
            ),
        };
        let answer = ask(ctx, ID_BLOCK, bufs, what)?;
        let st = read_u8(status);
        match (case, answer) {
            (5, Answer::Used(4097)) if st == S_OK => {}
            (5, _) => return fail!("a proper read after the huge requests failed (status {st})"),
            (_, Answer::Used(len)) => {
                let _ = write!(line, "s{st}u{len},");
            }
            (_, Answer::NeedsReset) => {
                let _ = write!(line, "reset,");
            }
        }
    }
    let _ = write!(line, "ok rng=");
    let big = [Buf::w(free, fl); 200];
    for case in 0..6 {
        let (bufs, what): (&[Buf], &'static str) = match case {
            0 => (&big[..1], "entropy (the free block)"),
            1 => (&big[..15], "entropy (15 free blocks)"),
            2 => (&[Buf::r(0, all)], "entropy (readable)"),
            3 => (&[Buf::w(top + (1 << 30), u32::MAX)], "entropy (past RAM)"),
            4 => (&big[..200], "entropy (200 free blocks)"),
            _ => (&[Buf::w(small, 64)], "entropy (proper)"),
        };
        match (case, ask(ctx, ID_RNG, bufs, what)?) {
            (5, Answer::Used(64)) => {}
            (5, _) => return fail!("a proper 64-byte entropy request after the huge ones failed"),
            (_, Answer::Used(len)) => {
                let _ = write!(line, "u{len},");
            }
            (_, Answer::NeedsReset) => {
                let _ = write!(line, "reset,");
            }
        }
    }
    let _ = write!(line, "ok");
    Ok(line)
}

/// A device of `id` after DRIVER_OK with every queue (up to 3) set up and left empty.
fn open_empty(ctx: &mut Ctx, id: u32) -> Result<Option<(Device, u16)>, Line> {
    let entry = match virtio::find(&ctx.cmdline, id, 0) {
        Ok(e) => e,
        Err(virtio::Error::NotFound(_)) => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    let mut dev = Device::init(entry, id, 0, Wait::Poll)?;
    let mut queues = 0;
    while queues < 3 {
        match dev.setup_queue(queues, 16, &mut ctx.pages) {
            Ok(_) => queues += 1,
            Err(virtio::Error::QueueMissing(_)) => break,
            Err(e) => return Err(e.into()),
        }
    }
    dev.driver_ok()?;
    Ok(Some((dev, queues)))
}

/// `hostile-notify`: for `kite_ms` milliseconds (default 2000) notifies every queue of every
/// device (blk, rng, vsock, net: those present) while their rings stay empty, plus a queue
/// index that does not exist. Then one proper entropy request.
pub fn notify(ctx: &mut Ctx) -> Outcome {
    let ms = ctx.cmdline.get_u64("kite_ms").unwrap_or(2000);
    let mut devs: [Option<(Device, u16)>; 4] = [None, None, None, None];
    for (slot, id) in devs.iter_mut().zip([ID_BLOCK, ID_RNG, ID_VSOCK, ID_NET]) {
        *slot = open_empty(ctx, id)?;
    }
    let deadline = rdtsc() + ms_to_ticks(ms);
    let mut writes = 0u64;
    while rdtsc() < deadline {
        for (dev, queues) in devs.iter().flatten() {
            for q in 0..*queues as u32 {
                mmio::write32(dev.base + QUEUE_NOTIFY, q);
            }
            mmio::write32(dev.base + QUEUE_NOTIFY, 0xffff);
            writes += *queues as u64 + 1;
        }
    }
    let present = devs.iter().flatten().count();
    for (dev, _) in devs.iter().flatten() {
        dev.shutdown();
    }
    let r = rng::virtio_rng(ctx)?;
    let mut line = Line::new();
    let _ = write!(
        line,
        "devices={present} notifies={writes} ms={ms} then_rng={}",
        r.first_word()
    );
    Ok(line)
}

/// `hostile-reset`: `kite_rounds` rounds (default 200) of: virtio-blk set up, four 64 KiB writes
/// posted and notified, and the device reset at once; virtio-rng the same with a 64 KiB
/// request; virtio-vsock (if present) with a connection request to `kite_vsock_port` posted.
/// Then the `virtio-blk` check (the pattern of `kite_seed` over the disk) and a `virtio-rng`
/// read: the disk ends up exactly as the check wrote it.
pub fn reset(ctx: &mut Ctx) -> Outcome {
    let rounds = ctx.cmdline.get_u64("kite_rounds").unwrap_or(200);
    let port = ctx.cmdline.get_u64("kite_vsock_port").unwrap_or(1234) as u32;
    let mut arena = Arena::new(&mut ctx.pages, 5 * (64 << 10) + 8192)?;
    let hdrs = arena.take(4 * 16, 16)?;
    let statuses = arena.take(4, 4)?;
    let data = arena.take(4 * (64 << 10), 4096)?;
    let vsock_hdr = arena.take(64, 64)?;
    let has_vsock = virtio::find(&ctx.cmdline, ID_VSOCK, 0).is_ok();
    for round in 0..rounds {
        let entry = virtio::find(&ctx.cmdline, ID_BLOCK, 0)?;
        let dev = Device::init(entry, ID_BLOCK, 0, Wait::Poll)?;
        let mut q = dev.setup_queue(0, 16, &mut ctx.pages)?;
        let mut dev = dev;
        dev.driver_ok()?;
        for i in 0..4u64 {
            write_blk_header(hdrs + 16 * i, T_OUT, (round * 4 + i) % 64 * 128);
            q.post(&[
                Buf::r(hdrs + 16 * i, 16),
                Buf::r(data + i * (64 << 10), 64 << 10),
                Buf::w(statuses + i, 1),
            ])?;
        }
        q.kick();
        dev.reset()?;

        let entry = virtio::find(&ctx.cmdline, ID_RNG, 0)?;
        let dev = Device::init(entry, ID_RNG, 0, Wait::Poll)?;
        let mut q = dev.setup_queue(0, 4, &mut ctx.pages)?;
        let mut dev = dev;
        dev.driver_ok()?;
        q.post(&[Buf::w(data, 64 << 10)])?;
        q.kick();
        dev.reset()?;

        if has_vsock {
            let entry = virtio::find(&ctx.cmdline, ID_VSOCK, 0)?;
            let dev = Device::init(entry, ID_VSOCK, 0, Wait::Poll)?;
            let cid = dev.config_u64(0);
            let mut rx = dev.setup_queue(0, 4, &mut ctx.pages)?;
            let mut tx = dev.setup_queue(1, 4, &mut ctx.pages)?;
            let _event = dev.setup_queue(2, 4, &mut ctx.pages)?;
            let mut dev = dev;
            dev.driver_ok()?;
            rx.post(&[Buf::w(data, 4096)])?;
            rx.kick();
            // A REQUEST (op 1) from port 40000 + round to host CID 2.
            let mut h = [0u8; 44];
            h[0..8].copy_from_slice(&cid.to_le_bytes());
            h[8..16].copy_from_slice(&2u64.to_le_bytes());
            h[16..20].copy_from_slice(&(40000 + round as u32).to_le_bytes());
            h[20..24].copy_from_slice(&port.to_le_bytes());
            h[28..30].copy_from_slice(&1u16.to_le_bytes());
            h[30..32].copy_from_slice(&1u16.to_le_bytes());
            h[36..40].copy_from_slice(&(64u32 << 10).to_le_bytes());
            // SAFETY: our header buffer, which the device does not own now.
            unsafe { core::ptr::copy_nonoverlapping(h.as_ptr(), vsock_hdr as *mut u8, 44) };
            tx.post(&[Buf::r(vsock_hdr, 44)])?;
            tx.kick();
            dev.reset()?;
        }
    }
    let b = blk::virtio_blk(ctx).map_err(|e| e.prefixed("blk after the resets"))?;
    let r = rng::virtio_rng(ctx).map_err(|e| e.prefixed("rng after the resets"))?;
    let mut line = Line::new();
    let _ = write!(
        line,
        "rounds={rounds} vsock={} {} rng_{}",
        has_vsock as u8,
        b.first_word(),
        r.first_word()
    );
    Ok(line)
}

/// `hostile-mmio`: `kite_rounds` rounds (default 30) of random values written to every register
/// and the first 256 bytes of configuration space of every virtio-mmio device on the command
/// line, 32-bit writes to each and as many 8- and 16-bit writes at random offsets (seeded by
/// `kite_seed`). The identification registers must read the same after, every device must
/// reset, and then the `virtio-rng` read (and the `virtio-blk` check, if there is a disk)
/// must work.
pub fn mmio_fuzz(ctx: &mut Ctx) -> Outcome {
    let rounds = ctx.cmdline.get_u64("kite_rounds").unwrap_or(30);
    let mut rand = Rand(ctx.cmdline.get_u64("kite_seed").unwrap_or(1) | 1);
    let mut bases = [(0u64, 0u32); 16];
    let mut n = 0;
    for d in ctx.cmdline.virtio_mmio_devices() {
        if n < bases.len() && d.addr >= 0xc000_0000 && d.addr < 0xffff_f000 {
            bases[n] = (d.addr, mmio::read32(d.addr + 8));
            n += 1;
        }
    }
    if n == 0 {
        return fail!("no virtio_mmio.device= entries");
    }
    let start = rdtsc();
    let mut writes = 0u64;
    for _ in 0..rounds {
        for &(base, _) in &bases[..n] {
            for off in (0..0x200u64).step_by(4) {
                mmio::write32(base + off, rand.next() as u32);
                let r = rand.next();
                let at = base + (r >> 32) % 0x200;
                if r & 1 == 0 {
                    mmio::write8(at, (r >> 8) as u8);
                } else {
                    mmio::write16(at & !1, (r >> 8) as u16);
                }
                writes += 2;
            }
        }
    }
    let cycles = rdtsc().wrapping_sub(start);
    for &(base, id) in &bases[..n] {
        let (magic, version, now_id) = (
            mmio::read32(base),
            mmio::read32(base + 4),
            mmio::read32(base + 8),
        );
        if magic != 0x7472_6976 || version != 2 || now_id != id {
            return fail!(
                "device at {base:#x} reads magic {magic:#x} version {version} id {now_id} after the writes (id was {id})"
            );
        }
        mmio::write32(base + STATUS, 0);
        if mmio::read32(base + STATUS) != 0 {
            return fail!("device at {base:#x} did not reset after the writes");
        }
    }
    let r = rng::virtio_rng(ctx).map_err(|e| e.prefixed("rng after the writes"))?;
    let blk_ok = match virtio::find(&ctx.cmdline, ID_BLOCK, 0) {
        Ok(_) => {
            blk::virtio_blk(ctx).map_err(|e| e.prefixed("blk after the writes"))?;
            1
        }
        Err(_) => 0,
    };
    let mut line = Line::new();
    let _ = write!(
        line,
        "devices={n} rounds={rounds} writes={writes} cycles={cycles} blk_ok={blk_ok} rng_{}",
        r.first_word()
    );
    Ok(line)
}
