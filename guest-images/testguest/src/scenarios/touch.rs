//! `touch`: what the first write to each page of guest RAM costs, round after round. For
//! `kite bench snapshot`: the first round in a fresh VM pays for fresh host pages, later rounds
//! find them mapped, and the first round after a restore from a lazily mapped memory file pays
//! for bringing each page in from the file.

use core::fmt::Write;

use super::Ctx;
use crate::report::Outcome;
use crate::serial;
use crate::sys::{ms_to_ticks, rdtsc};
use crate::{fail, ok};

const PAGE: u64 = 4096;

/// Takes `kite_touch_mib` MiB (default 64) of free RAM, then every `kite_tick_ms` ms (default
/// 300, counted from the end of the round before) writes one byte to each of its 4 KiB pages,
/// timed by the TSC, and prints `touch <round> cycles=<n>` on its own line. Ends after `kite_n`
/// rounds (default 100000) or when a byte arrives on the console: `rounds=<n> mib=<m>`.
pub fn touch(ctx: &mut Ctx) -> Outcome {
    let mib = ctx.cmdline.get_u64("kite_touch_mib").unwrap_or(64).max(1);
    let n = ctx.n(100_000);
    let every = ms_to_ticks(ctx.cmdline.get_u64("kite_tick_ms").unwrap_or(300).max(1));
    let size = mib << 20;
    let Some(addr) = ctx
        .pages
        .alloc(size, 2 << 20)
        .or_else(|| ctx.pages.alloc(size, PAGE))
    else {
        return fail!(
            "not enough RAM: need {mib} MiB free above the image, largest free block is {} MiB",
            ctx.pages.largest_free() >> 20
        );
    };
    let mut rounds = 0u64;
    let mut next = rdtsc();
    while rounds < n {
        if serial::try_getb().is_some() {
            break;
        }
        if rdtsc() < next {
            core::hint::spin_loop();
            continue;
        }
        rounds += 1;
        let start = rdtsc();
        let mut page = addr;
        while page < addr + size {
            // SAFETY: [addr, addr + size) is identity-mapped RAM the allocator gave this
            // scenario alone.
            unsafe { core::ptr::write_volatile(page as *mut u8, rounds as u8) };
            page += PAGE;
        }
        let end = rdtsc();
        let _ = writeln!(serial::Serial, "touch {rounds} cycles={}", end.wrapping_sub(start));
        next = end.wrapping_add(every);
    }
    ok!("rounds={rounds} mib={mib}")
}
