//! virtio-blk under host faults, for Kite's fault tests (keys in the README):
//!
//! * `virtio-blk-fill`: write and flush a first area, then write on until a write fails (the
//!   host's file system is full), try a few more, flush twice, and read the first area back.
//! * `virtio-blk-shrink`: say `KITE-PROGRESS ready`, then read the disk over and over until a
//!   read fails (the host shrank the image), and read sector 0 again.
//! * `virtio-blk-resize`: say `KITE-PROGRESS ready sectors=<n>`, then wait until the capacity
//!   changes (the host's `PATCH /drives`), and read the new disk's first sector.
//! * `virtio-blk-flushlog`: write numbered blocks (`kite_workloads::flushlog`) in a ring of
//!   slots, a batch at a time, flush after each batch and print `KITE-FLUSHED seq=<n>`: every
//!   block up to `n` is durable. Runs until the VM is stopped, or for `kite_n` batches.

use core::fmt::Write;

use kite_workloads::flushlog;

use super::Ctx;
use super::blk::{Blk, S_OK, SECTOR, T_FLUSH, T_IN, T_OUT, size_arg};
use crate::fail;
use crate::report::{Line, Outcome};
use crate::serial;
use crate::sys::{ms_to_ticks, rdtsc};
use crate::virtio::Wait;

fn wait(ctx: &Ctx) -> Result<Wait, Line> {
    match Wait::from_cmdline(&ctx.cmdline) {
        Ok(w) => Ok(w),
        Err(e) => fail!("{e}"),
    }
}

/// One line on the console (not the result line).
fn say(args: core::fmt::Arguments) {
    let mut line = Line::new();
    let _ = line.write_fmt(args);
    line.push(b'\n');
    serial::write_bytes(line.as_bytes());
}

pub fn fill(ctx: &mut Ctx) -> Outcome {
    let req = size_arg(ctx, "kite_blk_req", 64 << 10)?;
    let first = size_arg(ctx, "kite_blk_first", 256 << 10)?;
    let more = ctx.n(16);
    let seed = ctx.cmdline.get_u64("kite_seed").unwrap_or(1);
    if req == 0 || req % SECTOR != 0 || first % req != 0 {
        return fail!("kite_blk_req must be a multiple of 512 that divides kite_blk_first");
    }
    let mut blk = Blk::open(ctx, wait(ctx)?, 1, req)?;
    let sectors = blk.capacity;
    let per = req / SECTOR;
    if first / SECTOR + per > sectors {
        return fail!("the disk ({sectors} sectors) is too small");
    }
    // 1. The first area, flushed: it must survive whatever follows.
    let mut at = 0;
    while at < first / SECTOR {
        let slot = blk.take_slot(T_OUT, at, req).ok_or_else(super::blk::busy)?;
        kite_workloads::disk_pattern_fill(seed, at, blk.data(slot));
        blk.submit(slot)?;
        blk.q.kick();
        let (_, status) = blk.complete()?;
        if status != S_OK {
            return fail!("write at sector {at} returned status {status} before the disk filled");
        }
        at += per;
    }
    let status = blk.single(T_FLUSH, 0, 0)?;
    if status != S_OK {
        return fail!("the first FLUSH returned status {status}");
    }
    // 2. On until a write fails.
    let mut written_ok = 0u64;
    let (first_error, error_status) = loop {
        if at + per > sectors {
            return fail!("no write failed: all {sectors} sectors were written");
        }
        let status = blk.single(T_OUT, at, req)?;
        if status != S_OK {
            break (at, status);
        }
        written_ok += 1;
        at += per;
    };
    // 3. Writes past it fail too (their data would not fit either).
    let mut more_errors = 0;
    let mut tried = 0;
    while tried < more && at + 2 * per <= sectors {
        at += per;
        tried += 1;
        if blk.single(T_OUT, at, req)? != S_OK {
            more_errors += 1;
        }
    }
    // 4. The next flush reports the failed writes; the one after has nothing to report.
    let flush_after_error = blk.single(T_FLUSH, 0, 0)?;
    let next_flush = blk.single(T_FLUSH, 0, 0)?;
    // 5. The first area reads back whole.
    let mut intact = 1;
    let mut at = 0;
    while at < first / SECTOR {
        let slot = blk.take_slot(T_IN, at, req).ok_or_else(super::blk::busy)?;
        blk.data(slot).fill(0);
        blk.submit(slot)?;
        blk.q.kick();
        let (slot, status) = blk.complete()?;
        if status != S_OK || kite_workloads::disk_pattern_check(seed, at, blk.data(slot)).is_some()
        {
            intact = 0;
        }
        at += per;
    }
    blk.dev.shutdown();
    crate::ok!(
        "flushed_bytes={first} written_ok={written_ok} first_error_sector={first_error} error_status={error_status} more_errors={more_errors}/{tried} flush_after_error={flush_after_error} next_flush={next_flush} intact={intact}"
    )
}

pub fn shrink(ctx: &mut Ctx) -> Outcome {
    let req = size_arg(ctx, "kite_blk_req", 64 << 10)?;
    if req == 0 || req % SECTOR != 0 {
        return fail!("kite_blk_req must be a non-zero multiple of 512");
    }
    let limit = ms_to_ticks(ctx.cmdline.get_u64("kite_ms").unwrap_or(20_000));
    let mut blk = Blk::open(ctx, wait(ctx)?, 1, req)?;
    let sectors = blk.capacity;
    let per = req / SECTOR;
    say(format_args!("KITE-PROGRESS ready sectors={sectors}"));
    let start = rdtsc();
    let mut passes = 0u64;
    let (first_error, status) = 'passes: loop {
        let mut at = 0;
        while at < sectors {
            if rdtsc().wrapping_sub(start) > limit {
                return fail!("no read failed in {passes} passes over the disk");
            }
            let status = blk.single(T_IN, at, req.min((sectors - at) * SECTOR))?;
            if status != S_OK {
                break 'passes (at, status);
            }
            at += per;
        }
        passes += 1;
    };
    let reread_first = blk.single(T_IN, 0, req)?;
    blk.dev.shutdown();
    crate::ok!(
        "first_error_sector={first_error} status={status} passes={passes} reread_first={reread_first}"
    )
}

pub fn resize(ctx: &mut Ctx) -> Outcome {
    let limit = ms_to_ticks(ctx.cmdline.get_u64("kite_ms").unwrap_or(20_000));
    let mut blk = Blk::open(ctx, wait(ctx)?, 1, SECTOR)?;
    // `kite_blk_from=<n>`: the capacity to wait to change from (the host may have changed it
    // before the driver first looked); by default the capacity found at start.
    let old = ctx.cmdline.get_u64("kite_blk_from").unwrap_or(blk.capacity);
    let generation = blk.dev.config_generation();
    say(format_args!("KITE-PROGRESS ready sectors={old}"));
    let start = rdtsc();
    let new = loop {
        let now = blk.dev.config_u64(0);
        if now != old {
            break now;
        }
        if rdtsc().wrapping_sub(start) > limit {
            return fail!("the capacity stayed {old} sectors");
        }
    };
    let config_irq = (blk.dev.interrupt_status() >> 1) & 1;
    let generation_changed = u8::from(blk.dev.config_generation() != generation);
    let slot = blk.take_slot(T_IN, 0, SECTOR).ok_or_else(super::blk::busy)?;
    blk.submit(slot)?;
    blk.q.kick();
    let (slot, status) = blk.complete()?;
    let mut first = [0u8; 8];
    first.copy_from_slice(&blk.data(slot)[..8]);
    blk.dev.shutdown();
    crate::ok!(
        "old={old} new={new} config_irq={config_irq} generation_changed={generation_changed} read_status={status} first={:016x}",
        u64::from_be_bytes(first)
    )
}

pub fn flushlog(ctx: &mut Ctx) -> Outcome {
    let bs = flushlog::BLOCK_BYTES as u64;
    let seed = ctx.cmdline.get_u64("kite_seed").unwrap_or(1);
    let batch = ctx.cmdline.get_u64("kite_blk_batch").unwrap_or(8).max(1);
    let depth = ctx.cmdline.get_u64("kite_blk_depth").unwrap_or(4) as usize;
    let batches = ctx.cmdline.get_u64("kite_n");
    let mut blk = Blk::open(ctx, wait(ctx)?, depth, bs)?;
    let slots = (blk.capacity / (bs / SECTOR))
        .min(ctx.cmdline.get_u64("kite_blk_slots").unwrap_or(u64::MAX));
    if slots == 0 {
        return fail!("the disk is smaller than one {bs}-byte block");
    }
    let mut seq = 0u64;
    let mut done = 0u64;
    while batches.is_none_or(|n| done < n) {
        let first = seq + 1;
        let mut next = first;
        let mut filled = first;
        blk.pipeline(
            T_OUT,
            || {
                if next >= first + batch {
                    return None;
                }
                let at = next % slots * (bs / SECTOR);
                next += 1;
                Some((at, bs))
            },
            |data, sector| {
                flushlog::fill(seed, filled, sector / (bs / SECTOR), data);
                filled += 1;
            },
            |_, _| Ok(()),
        )?;
        seq = first + batch - 1;
        let status = blk.single(T_FLUSH, 0, 0)?;
        if status != S_OK {
            return fail!("FLUSH after block {seq} returned status {status}");
        }
        say(format_args!("KITE-FLUSHED seq={seq}"));
        done += 1;
    }
    blk.dev.shutdown();
    crate::ok!(
        "blocks={seq} slots={slots} batch={batch} depth={}",
        blk.depth
    )
}
