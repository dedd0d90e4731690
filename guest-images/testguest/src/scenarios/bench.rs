//! `cpu` and `mem`: the workloads of the `kite-workloads` crate, timed with the TSC.

use super::Ctx;
use crate::report::Outcome;
use crate::sys::rdtsc;
use crate::{fail, ok};

/// `cycles=<n> checksum=0x<16 hex digits>`
///
/// The workload's 8 MiB table comes from free RAM, not from a static: a static would sit in
/// the image's bss, which every scenario zeroes at start (8 MiB of first touches, about
/// 80 ms on a host whose KVM emulates guest paging, for scenarios that never use it).
pub fn cpu(ctx: &mut Ctx) -> Outcome {
    let size = (kite_workloads::CPU_TABLE_ENTRIES * 8) as u64;
    let Some(addr) = ctx
        .pages
        .alloc(size, 2 << 20)
        .or_else(|| ctx.pages.alloc(size, 4096))
    else {
        return fail!(
            "not enough RAM: need {} MiB free above the image, largest free block is {} MiB",
            size >> 20,
            ctx.pages.largest_free() >> 20
        );
    };
    // SAFETY: the allocator handed out [addr, addr + size) of identity-mapped RAM that
    // nothing else uses; it is 8-byte aligned and any bit pattern is a valid u64.
    let table = unsafe {
        core::slice::from_raw_parts_mut(addr as *mut u64, kite_workloads::CPU_TABLE_ENTRIES)
    };
    // First touches before the clock starts, as the bss clearing used to do for the static.
    // SAFETY: the same memory, viewed as bytes.
    kite_workloads::mem_prepare(unsafe {
        core::slice::from_raw_parts_mut(addr as *mut u8, size as usize)
    });
    let start = rdtsc();
    let checksum = kite_workloads::cpu_workload_in(table);
    let cycles = rdtsc().wrapping_sub(start);
    ok!("cycles={cycles} checksum={checksum:#018x}")
}

/// `bytes_per_cycle=<n.nnn> bytes=<n> cycles=<n>` over a 64 MiB buffer of RAM above the
/// image.
pub fn mem(ctx: &mut Ctx) -> Outcome {
    let size = kite_workloads::MEM_BUF_BYTES as u64;
    let addr = match ctx
        .pages
        .alloc(size, 2 << 20)
        .or_else(|| ctx.pages.alloc(size, 4096))
    {
        Some(addr) => addr,
        None => {
            return fail!(
                "not enough RAM: need {} MiB free above the image, largest free block is {} MiB",
                size >> 20,
                ctx.pages.largest_free() >> 20
            );
        }
    };
    // SAFETY: the allocator handed out [addr, addr + size) of identity-mapped RAM that
    // nothing else uses.
    let buf = unsafe { core::slice::from_raw_parts_mut(addr as *mut u8, size as usize) };
    kite_workloads::mem_prepare(buf);
    let start = rdtsc();
    let bytes = kite_workloads::mem_workload(buf);
    let cycles = rdtsc().wrapping_sub(start);
    let milli = kite_workloads::milli_ratio(bytes, cycles);
    ok!(
        "bytes_per_cycle={}.{:03} bytes={bytes} cycles={cycles}",
        milli / 1000,
        milli % 1000
    )
}
