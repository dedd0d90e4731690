//! `hello`, `echo`, `tick`, `pio-rtt`, `mmio-rtt`.

use core::fmt::Write;

use super::Ctx;
use crate::mem::mmio;
use crate::report::{Line, Outcome};
use crate::serial;
use crate::sys::{inb, ms_to_ticks, rdtsc};
use crate::{fail, ok};

/// An I/O port no PC device claims; every access exits to the VMM.
pub const PIO_RTT_PORT: u16 = 0x510;
/// An address in the 32-bit MMIO window no device claims (Kite's virtio-mmio windows
/// start at 0xd0000000).
pub const MMIO_RTT_ADDR: u64 = 0xcfff_f000;
pub const DEFAULT_N: u64 = 100_000;

/// `ram_mib=<usable e820 RAM in MiB> ram_probes=<n> cmdline=<command line, each space
/// replaced by '+'>`
pub fn hello(ctx: &mut Ctx) -> Outcome {
    let mut line = Line::new();
    let _ = write!(
        line,
        "ram_mib={} ram_probes={} cmdline=",
        ctx.boot.ram_bytes() >> 20,
        probe_ram(ctx)
    );
    for &b in ctx.boot.cmdline() {
        line.push(match b {
            b' ' | b'\t' | b'\n' | b'\r' => b'+',
            _ => b,
        });
    }
    Ok(line)
}

/// Reads a byte at the start of each RAM range and of each GiB in it, and at its last byte:
/// a page missing from the identity map faults (and the scenario fails with the address)
/// instead of passing. Returns the number of reads; reads of untouched RAM cost the host
/// no memory (its zero page backs them).
fn probe_ram(ctx: &Ctx) -> u64 {
    use crate::bootinfo::E820_RAM;
    use crate::mem::{MAPPED_LIMIT, read_u8};
    const GIB: u64 = 1 << 30;
    let mut reads = 0;
    for e in ctx.boot.e820().iter().filter(|e| e.kind == E820_RAM) {
        let end = e.addr.saturating_add(e.size).min(MAPPED_LIMIT);
        let mut at = e.addr;
        while at < end {
            core::hint::black_box(read_u8(at));
            reads += 1;
            at = (at / GIB + 1) * GIB;
        }
        if e.addr < end {
            core::hint::black_box(read_u8(end - 1));
            reads += 1;
        }
    }
    reads
}

/// Reads one line typed on the console (polling the UART, up to 10 s):
/// `text=<the line, each space replaced by '+'>`.
pub fn echo(_ctx: &mut Ctx) -> Outcome {
    let deadline = rdtsc().wrapping_add(ms_to_ticks(10_000));
    let mut line = Line::new();
    let _ = write!(line, "text=");
    loop {
        match serial::try_getb() {
            Some(b'\n' | b'\r') => return Ok(line),
            Some(b' ') => line.push(b'+'),
            Some(b) => line.push(b),
            None if rdtsc() > deadline => return fail!("no input line within 10 s"),
            None => core::hint::spin_loop(),
        }
    }
}

/// Prints `tick <k>` (k = 1, 2, ...) on its own line every `kite_tick_ms` ms (default 10) of
/// TSC time, the next deadline counted from the line before, so that a guest stopped for a
/// while prints one line when it goes on, not a burst. Ends after `kite_n` ticks (default
/// 100000) or when a byte arrives on the console: `ticks=<k>`.
pub fn tick(ctx: &mut Ctx) -> Outcome {
    let n = ctx.n(100_000);
    let every = ms_to_ticks(ctx.cmdline.get_u64("kite_tick_ms").unwrap_or(10).max(1));
    let mut next = rdtsc().wrapping_add(every);
    let mut ticks = 0u64;
    while ticks < n {
        if serial::try_getb().is_some() {
            break;
        }
        let now = rdtsc();
        if now >= next {
            ticks += 1;
            let _ = writeln!(serial::Serial, "tick {ticks}");
            next = now.wrapping_add(every);
        }
        core::hint::spin_loop();
    }
    ok!("ticks={}", ticks)
}

/// Times `n` round trips through the VMM with `op`: `cycles_per_rtt=<n> n=<N>`.
fn rtt(ctx: &mut Ctx, op: impl Fn()) -> Outcome {
    let n = ctx.n(DEFAULT_N);
    if n == 0 {
        return fail!("kite_n must be at least 1");
    }
    for _ in 0..100 {
        op(); // warm-up: first-exit costs (page walks, MMIO caches in the host)
    }
    let start = rdtsc();
    for _ in 0..n {
        op();
    }
    let cycles = rdtsc().wrapping_sub(start);
    ok!("cycles_per_rtt={} n={}", cycles / n, n)
}

/// One-byte `in` from port 0x510 per round trip.
pub fn pio_rtt(ctx: &mut Ctx) -> Outcome {
    rtt(ctx, || {
        inb(PIO_RTT_PORT);
    })
}

/// One 4-byte read from 0xcfff_f000 per round trip.
pub fn mmio_rtt(ctx: &mut Ctx) -> Outcome {
    rtt(ctx, || {
        mmio::read32(MMIO_RTT_ADDR);
    })
}

/// Deliberately faults, to exercise the exception path: never ok. `kite_fault=ud` (default:
/// `ud2`, vector 6), `pf` (a read of unmapped 256 GiB, vector 14) or `gp` (a privileged
/// instruction in ring 3, vector 13). The line printed is the exception handler's:
/// `FAIL exception vector=<n> error=<hex> rip=<hex>[ cr2=<hex>]`.
pub fn fault(ctx: &mut Ctx) -> Outcome {
    match ctx.cmdline.get("kite_fault").unwrap_or(b"ud") {
        b"pf" => {
            mmio::read32(256 << 30);
        }
        // SAFETY: hlt in ring 3 raises #GP, which is the point.
        b"gp" => unsafe { core::arch::asm!("hlt") },
        // SAFETY: ud2 raises #UD, which is the point.
        _ => unsafe { core::arch::asm!("ud2") },
    }
    fail!("no exception")
}
