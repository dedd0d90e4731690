//! `smp`: start every application processor the MP table lists with INIT-SIPI-SIPI.
//!
//! The real-mode trampoline (entry.S, `ap_tramp_start..ap_tramp_end`) is copied to the
//! first free 4 KiB page of e820 RAM below 1 MiB; each AP switches to long mode on the
//! guest's own GDT and page tables, increments `ap_checkin` and halts.

use core::sync::atomic::{AtomicU32, Ordering};

use super::Ctx;
use crate::apic::{ICR_INIT, ICR_STARTUP, LocalApic};
use crate::bootinfo::{BootInfo, E820_RAM};
use crate::report::Outcome;
use crate::sys::{delay_ticks, ms_to_ticks, rdtsc};
use crate::{fail, mptable, ok};

unsafe extern "C" {
    static ap_tramp_start: u8;
    static ap_tramp_end: u8;
    static ap_next_index: AtomicU32;
    static ap_checkin: AtomicU32;
}

/// How long to wait for the APs to check in.
const CHECKIN_TIMEOUT_MS: u64 = 3000;

/// A 4 KiB page in e820 RAM below 1 MiB (page 0, the real-mode IVT and BDA, excluded)
/// that holds neither the zero page, the command line nor the initrd.
fn trampoline_page(boot: &BootInfo) -> Option<u64> {
    let overlaps = |page: u64, start: u64, len: u64| start < page + 4096 && page < start + len;
    let cmdline =
        (boot.cmdline_addr != 0).then_some((boot.cmdline_addr, boot.cmdline().len() as u64 + 1));
    let busy = [Some((boot.zero_page, 4096)), cmdline, boot.initrd];
    (1..0x9f).map(|n| n * 4096u64).find(|&page| {
        let in_ram = boot.e820().iter().any(|e| {
            e.kind == E820_RAM && e.addr <= page && page + 4096 <= e.addr.saturating_add(e.size)
        });
        in_ram
            && !busy
                .iter()
                .flatten()
                .any(|&(start, len)| overlaps(page, start, len))
    })
}

/// `cpus=<processors that checked in, the BSP included> expected=<enabled processors in the
/// MP table>`; ok only if equal.
pub fn smp(ctx: &mut Ctx) -> Outcome {
    let mp = match mptable::read() {
        Ok(mp) => mp,
        Err(e) => return fail!("{e}"),
    };
    let expected = mp.count;
    let Some(page) = trampoline_page(ctx.boot) else {
        return fail!("no free RAM page below 1 MiB for the AP trampoline");
    };
    // SAFETY: the linker provides these symbols; the trampoline is plain bytes between
    // them, and `page` is free RAM below 1 MiB (identity-mapped, user-accessible).
    unsafe {
        let start = core::ptr::addr_of!(ap_tramp_start);
        let len = core::ptr::addr_of!(ap_tramp_end) as usize - start as usize;
        core::ptr::copy_nonoverlapping(start, page as *mut u8, len);
    }
    // SAFETY: statics defined in entry.S, only accessed atomically.
    let (next_index, checkin) = unsafe { (&ap_next_index, &ap_checkin) };
    next_index.store(0, Ordering::SeqCst);
    checkin.store(0, Ordering::SeqCst);

    LocalApic::enable();
    let me = LocalApic::id();
    let aps = mp.apic_ids[..mp.count]
        .iter()
        .copied()
        .filter(|&id| id != me);
    let mut started = 0u32;
    for id in aps.clone() {
        LocalApic::send_ipi(id, ICR_INIT);
        started += 1;
    }
    delay_ticks(ms_to_ticks(10));
    for _ in 0..2 {
        for id in aps.clone() {
            LocalApic::send_ipi(id, ICR_STARTUP | (page >> 12) as u32);
        }
        delay_ticks(ms_to_ticks(1));
    }

    let timeout = ms_to_ticks(CHECKIN_TIMEOUT_MS);
    let t0 = rdtsc();
    while checkin.load(Ordering::SeqCst) < started && rdtsc().wrapping_sub(t0) < timeout {
        core::hint::spin_loop();
    }
    let cpus = 1 + checkin.load(Ordering::SeqCst) as usize;
    if cpus == expected {
        ok!("cpus={cpus} expected={expected}")
    } else {
        fail!("cpus={cpus} expected={expected}")
    }
}
