//! `cpu` and `mem`: the workloads of the `kite-workloads` crate, timed with the TSC.

use super::Ctx;
use crate::report::Outcome;
use crate::sys::rdtsc;
use crate::{fail, ok};

/// `cycles=<n> checksum=0x<16 hex digits>`
pub fn cpu(_ctx: &mut Ctx) -> Outcome {
    let start = rdtsc();
    let checksum = kite_workloads::cpu_workload();
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
