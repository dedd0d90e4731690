//! The TSC's frequency, for figures reported per second.
//!
//! Sources, first that answers wins (the result says which one, `tsc_src=`):
//!
//! | `tsc_src` | where from |
//! |---|---|
//! | `cpuid15` | CPUID leaf 0x15 with the crystal frequency filled in (exact) |
//! | `hv` | the hypervisor timing leaf 0x4000_0010, EAX = TSC kHz (VMware's, also some KVMs) |
//! | `pit` | measured: 20 ms of the 8254 PIT's channel 2 (one-shot) against the TSC |
//! | `cpuid16` | CPUID leaf 0x16's base frequency (nominal; may differ from the TSC) |
//! | `none` | nothing: `tsc_hz=0`, rates are left out and the host converts cycles itself |
//!
//! The PIT measurement polls port 0x61 (each read is an exit to the VMM), so its
//! resolution is one exit (tens of µs on an emulating host): better than 0.5 % over 20 ms.

use core::sync::atomic::{AtomicU64, Ordering};

use crate::sys::{cpuid, inb, outb, rdtsc};

#[derive(Clone, Copy)]
pub struct TscFreq {
    /// Ticks per second; 0 when unknown.
    pub hz: u64,
    pub source: &'static str,
}

const SOURCES: [&str; 5] = ["none", "cpuid15", "hv", "pit", "cpuid16"];
/// hz << 3 | index into SOURCES, once measured; 0 before.
static CACHE: AtomicU64 = AtomicU64::new(0);

const PIT_HZ: u64 = 1_193_182;
const PIT_MS: u64 = 20;

/// The TSC frequency (measured once, then cached).
pub fn tsc_freq() -> TscFreq {
    let cached = CACHE.load(Ordering::Relaxed);
    if cached != 0 {
        return TscFreq {
            hz: cached >> 3,
            source: SOURCES[(cached & 7) as usize],
        };
    }
    let (hz, index) = measure();
    CACHE.store(hz << 3 | index as u64, Ordering::Relaxed);
    TscFreq {
        hz,
        source: SOURCES[index],
    }
}

fn measure() -> (u64, usize) {
    let (max_leaf, ..) = cpuid(0, 0);
    if max_leaf >= 0x15 {
        let (den, num, crystal, _) = cpuid(0x15, 0);
        if den != 0 && num != 0 && crystal != 0 {
            return (crystal as u64 * num as u64 / den as u64, 1);
        }
    }
    let (_, _, ecx1, _) = cpuid(1, 0);
    if ecx1 & (1 << 31) != 0 {
        let (hv_max, ..) = cpuid(0x4000_0000, 0);
        if (0x4000_0010..0x4001_0000).contains(&hv_max) {
            let (khz, ..) = cpuid(0x4000_0010, 0);
            if khz != 0 {
                return (khz as u64 * 1000, 2);
            }
        }
    }
    if let Some(hz) = pit_measure() {
        return (hz, 3);
    }
    if max_leaf >= 0x16 {
        let (mhz, ..) = cpuid(0x16, 0);
        if mhz != 0 {
            return (mhz as u64 * 1_000_000, 4);
        }
    }
    (0, 0)
}

/// Counts TSC ticks while the PIT's channel 2 counts down `PIT_MS` milliseconds in mode 0
/// (interrupt on terminal count; its output shows in port 0x61 bit 5). None if the output
/// never rises (no PIT) or rises at once (no gate).
fn pit_measure() -> Option<u64> {
    let latch = PIT_HZ * PIT_MS / 1000;
    // Gate on (bit 0), speaker off (bit 1).
    let port61 = inb(0x61);
    outb(0x61, (port61 & !0x02) | 0x01);
    outb(0x43, 0xb0); // channel 2, lobyte/hibyte, mode 0, binary
    outb(0x42, latch as u8);
    outb(0x42, (latch >> 8) as u8);
    let start = rdtsc();
    let mut reads = 0u64;
    // Give up after ~1 s even at 10 GHz, in case the output never rises.
    let limit = 10_000_000_000u64;
    let end = loop {
        let now = rdtsc();
        if inb(0x61) & 0x20 != 0 {
            break now;
        }
        reads += 1;
        if now.wrapping_sub(start) > limit {
            outb(0x61, port61);
            return None;
        }
    };
    outb(0x61, port61);
    if reads < 2 {
        return None;
    }
    Some(end.wrapping_sub(start) * 1000 / PIT_MS)
}

/// `count` units in `ticks` TSC ticks, per second (0 if the frequency is unknown).
pub fn per_second(count: u64, ticks: u64, hz: u64) -> u64 {
    if ticks == 0 {
        return 0;
    }
    (count as u128 * hz as u128 / ticks as u128) as u64
}
