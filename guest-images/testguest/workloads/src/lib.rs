//! The `cpu` and `mem` benchmark workloads of Kite's test guest.
//!
//! The same source runs inside the test guest (ring 3, `#![no_std]`) and as an ordinary
//! host program (`kite-workload-host`), so a guest figure can be compared with the host's
//! and the guest's `cpu` checksum can be checked against [`cpu_workload`] on the host.
//!
//! Everything here is integer arithmetic with explicit wrapping, so the results are the
//! same in debug and release builds and on every x86-64 machine. Cycle counting is left to
//! the callers.
#![no_std]

pub mod flushlog;

use core::cell::UnsafeCell;
use core::hint::black_box;
use core::sync::atomic::{AtomicBool, Ordering};

/// Iterations of the integer part of the `cpu` workload.
pub const CPU_INT_ITERATIONS: u64 = 20_000_000;
/// Entries (u64) of the table the memory-bound part of the `cpu` workload walks: 8 MiB.
pub const CPU_TABLE_ENTRIES: usize = 1 << 20;
/// Steps of the pseudo-random walk over that table.
pub const CPU_WALK_STEPS: u64 = 4_000_000;
/// Size of the buffer the guest's `mem` scenario (and the host program) hands to
/// [`mem_workload`]: larger than any last-level cache it is meant to run on.
pub const MEM_BUF_BYTES: usize = 64 << 20;
/// Read passes of [`mem_workload`] (after one write pass).
pub const MEM_READ_PASSES: u64 = 4;

/// A small, fast 64-bit mixing function (the splitmix64 finaliser).
#[inline(always)]
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// xorshift64* pseudo-random generator; deterministic for a given seed.
struct Rng(u64);

impl Rng {
    #[inline(always)]
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// A value in `0..n` (`n > 0`); the modulo bias is irrelevant here.
    #[inline(always)]
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// The integer part: a dependent chain of multiplies, shifts, rotates and a division.
fn cpu_integer_part(seed: u64) -> u64 {
    let mut h = seed;
    let mut acc = 0u64;
    let mut i = 0u64;
    while i < CPU_INT_ITERATIONS {
        h = mix(h ^ i);
        // A data-dependent division keeps the divider busy and defeats vectorisation.
        acc = acc
            .wrapping_add(h / ((i & 0xffff) | 1))
            .rotate_left((h & 63) as u32);
        i += 1;
    }
    black_box(h ^ acc)
}

/// The memory-bound part: build one random cycle over `table` (Sattolo's algorithm), then
/// follow it, so every step is a dependent load from a pseudo-random place.
fn cpu_memory_part(table: &mut [u64], seed: u64) -> u64 {
    let n = table.len();
    for (i, slot) in table.iter_mut().enumerate() {
        *slot = i as u64;
    }
    let mut rng = Rng(seed | 1);
    let mut i = n - 1;
    while i > 0 {
        let j = rng.below(i as u64) as usize;
        table.swap(i, j);
        i -= 1;
    }
    let mut idx = 0usize;
    let mut h = seed;
    let mut step = 0u64;
    while step < CPU_WALK_STEPS {
        let next = table[idx];
        h = h.rotate_left(5) ^ next.wrapping_mul(0x9e37_79b9_7f4a_7c15);
        idx = next as usize;
        step += 1;
    }
    black_box(h)
}

/// Runs the `cpu` workload over a caller-provided table of exactly
/// [`CPU_TABLE_ENTRIES`] entries (its contents on entry do not matter) and returns the
/// checksum. Panics if the table has the wrong size.
pub fn cpu_workload_in(table: &mut [u64]) -> u64 {
    assert_eq!(table.len(), CPU_TABLE_ENTRIES, "cpu workload table size");
    let a = cpu_integer_part(0x6b69_7465_2d63_7075); // "kite-cpu"
    let b = cpu_memory_part(table, a);
    mix(a ^ b.rotate_left(32))
}

/// The table used by [`cpu_workload`]: a static, so the function needs no allocator.
struct Table {
    busy: AtomicBool,
    cells: UnsafeCell<[u64; CPU_TABLE_ENTRIES]>,
}

// SAFETY: `cells` is only reached while `busy` is held (see `cpu_workload`).
unsafe impl Sync for Table {}

static TABLE: Table = Table {
    busy: AtomicBool::new(false),
    cells: UnsafeCell::new([0; CPU_TABLE_ENTRIES]),
};

/// Runs the `cpu` workload (an integer part and a memory-bound pseudo-random walk over an
/// 8 MiB table) and returns its deterministic checksum. Concurrent callers wait for each
/// other (the table is a single static).
pub fn cpu_workload() -> u64 {
    while TABLE
        .busy
        .compare_exchange_weak(false, true, Ordering::Acquire, Ordering::Relaxed)
        .is_err()
    {
        core::hint::spin_loop();
    }
    // SAFETY: `busy` is held, so this is the only reference to the table.
    let table = unsafe { &mut *TABLE.cells.get() };
    let sum = cpu_workload_in(table);
    TABLE.busy.store(false, Ordering::Release);
    sum
}

/// Touches every 4 KiB page of `buf`, so that first-touch faults (in the guest, the VMM's
/// and host's lazily backed memory) are not part of the [`mem_workload`] measurement.
/// Call it before starting the clock.
pub fn mem_prepare(buf: &mut [u8]) {
    for page in buf.chunks_mut(4096) {
        page[0] = 0;
        black_box(&mut page[0]);
    }
}

/// The `mem` workload: one pass writing every 64-bit word of `buf`, then
/// [`MEM_READ_PASSES`] passes reading every word. Returns the number of bytes moved
/// (written plus read), which the caller divides by the cycles it measured. Only whole,
/// aligned 64-bit words are used.
pub fn mem_workload(buf: &mut [u8]) -> u64 {
    // SAFETY: every bit pattern is a valid u64 and a valid u8.
    let (_, words, _) = unsafe { buf.align_to_mut::<u64>() };
    let mut pattern = 0x0123_4567_89ab_cdefu64;
    for w in words.iter_mut() {
        *w = pattern;
        pattern = pattern.wrapping_add(0x9e37_79b9_7f4a_7c15);
    }
    let mut sum = 0u64;
    for _ in 0..MEM_READ_PASSES {
        // An opaque reference per pass, so the passes cannot be merged or hoisted.
        let ws: &[u64] = black_box(&*words);
        let mut s = 0u64;
        for w in ws.iter() {
            s = s.wrapping_add(*w);
        }
        sum ^= black_box(s);
    }
    black_box(sum);
    (words.len() as u64) * 8 * (1 + MEM_READ_PASSES)
}

/// Bytes per cycle in thousandths, for printing with three decimals without floats.
pub fn milli_ratio(bytes: u64, cycles: u64) -> u64 {
    if cycles == 0 {
        return 0;
    }
    ((bytes as u128 * 1000) / cycles as u128) as u64
}

/// Bytes per disk sector in the [`disk_pattern_fill`] pattern (virtio-blk's unit).
pub const DISK_SECTOR_BYTES: usize = 512;

/// The 64-bit word at `word` (0..64) of `sector` in the disk pattern for `seed`.
#[inline(always)]
pub fn disk_pattern_word(seed: u64, sector: u64, word: u64) -> u64 {
    mix(mix(seed ^ 0x6b69_7465_2d62_6c6b) ^ ((sector << 6) | word))
}

/// Fills `buf` with the deterministic disk pattern that the test guest's `virtio-blk`
/// scenario writes, starting at sector `first_sector`: every 8-byte word (little-endian) is
/// [`disk_pattern_word`] of its sector and its place in the sector. The host checks an
/// image the guest wrote against the same function. `buf.len()` must be a multiple of 8;
/// it need not be a whole number of sectors.
pub fn disk_pattern_fill(seed: u64, first_sector: u64, buf: &mut [u8]) {
    let s = mix(seed ^ 0x6b69_7465_2d62_6c6b);
    for (i, chunk) in buf.chunks_exact_mut(8).enumerate() {
        let i = i as u64;
        let sector = first_sector + i / 64;
        let word = mix(s ^ ((sector << 6) | (i % 64)));
        chunk.copy_from_slice(&word.to_le_bytes());
    }
}

/// Checks `buf` against the disk pattern (see [`disk_pattern_fill`]) from sector
/// `first_sector`. Returns the byte offset (in `buf`) of the first 8-byte word that differs.
pub fn disk_pattern_check(seed: u64, first_sector: u64, buf: &[u8]) -> Option<usize> {
    let s = mix(seed ^ 0x6b69_7465_2d62_6c6b);
    for (i, chunk) in buf.chunks_exact(8).enumerate() {
        let n = i as u64;
        let sector = first_sector + n / 64;
        let word = mix(s ^ ((sector << 6) | (n % 64)));
        if chunk != word.to_le_bytes() {
            return Some(i * 8);
        }
    }
    None
}

/// An order-independent checksum of disk contents: the wrapping sum, over every whole
/// 512-byte sector of `buf` (the first one being sector `first_sector`), of a hash of the
/// sector's number and bytes. Sums of pieces add up (`wrapping_add`) to the sum of the
/// whole, in any order. The test guest reports it for data it read from a readonly disk.
pub fn disk_checksum(first_sector: u64, buf: &[u8]) -> u64 {
    let mut sum = 0u64;
    for (i, sector) in buf.chunks_exact(DISK_SECTOR_BYTES).enumerate() {
        let mut h = mix((first_sector + i as u64) ^ 0x6b69_7465_2d73_756d);
        for chunk in sector.chunks_exact(8) {
            let mut w = [0u8; 8];
            w.copy_from_slice(chunk);
            h = mix(h ^ u64::from_le_bytes(w));
        }
        sum = sum.wrapping_add(h);
    }
    sum
}
