//! Kite's test guest: a tiny x86-64 kernel booted by the Linux 64-bit boot protocol.
//!
//! Ring 0 (entry.S) builds page tables, GDT, TSS and IDT and drops to ring 3 with IOPL=3;
//! everything here runs in ring 3 (at native speed even where guest ring 0 is emulated).
//! The scenario named by `kite_test=<name>` on the command line runs and prints one line,
//! `KITE-TEST <name> ok key=value ...` or `KITE-TEST <name> FAIL <reason>`, on the serial
//! port; then the guest ends the VM with an i8042 reset. See README.md.
#![no_std]
#![no_main]
// Outcome carries its text inline (there is no allocator); returning 520 bytes is fine.
#![allow(clippy::result_large_err)]

use core::panic::PanicInfo;

mod apic;
mod bootinfo;
mod clock;
mod cmdline;
mod mem;
mod mptable;
mod report;
mod scenarios;
mod serial;
mod sys;
mod virtio;

core::arch::global_asm!(include_str!("entry.S"), options(att_syntax));

/// Ring-3 entry, called by entry.S with the zero page's address.
#[unsafe(no_mangle)]
extern "C" fn kite_main(zero_page: u64) -> ! {
    serial::init();
    let boot = bootinfo::BootInfo::read(zero_page);
    mem::map_ram_above_1gib(&boot);
    let cmdline = cmdline::Cmdline::new(boot.cmdline());
    let name = cmdline.get("kite_test").unwrap_or(b"");
    report::set_name(name);
    let outcome = match scenarios::find(name) {
        Some(scenario) => {
            let mut ctx = scenarios::Ctx {
                boot: &boot,
                cmdline,
                pages: mem::PageAllocator::new(&boot),
            };
            (scenario.run)(&mut ctx)
        }
        None => fail!("unknown scenario"),
    };
    report::finish(&outcome);
    sys::end_vm()
}

unsafe extern "C" {
    static fault_vector: u64;
    static fault_error: u64;
    static fault_rip: u64;
    static fault_cr2: u64;
}

/// Where ring 0 sends the CPU after an exception (ring 3, fault stack, interrupts off).
#[unsafe(no_mangle)]
extern "C" fn kite_fault() -> ! {
    // SAFETY: written by entry.S's exception handler just before it jumped here.
    let (vector, error, rip, cr2) = unsafe {
        (
            core::ptr::addr_of!(fault_vector).read_volatile(),
            core::ptr::addr_of!(fault_error).read_volatile(),
            core::ptr::addr_of!(fault_rip).read_volatile(),
            core::ptr::addr_of!(fault_cr2).read_volatile(),
        )
    };
    let outcome: report::Outcome = if vector == 14 {
        fail!("exception vector={vector} error={error:#x} rip={rip:#x} cr2={cr2:#x}")
    } else {
        fail!("exception vector={vector} error={error:#x} rip={rip:#x}")
    };
    report::finish(&outcome);
    sys::end_vm()
}

#[panic_handler]
fn panic(info: &PanicInfo) -> ! {
    let outcome: report::Outcome = match info.location() {
        Some(loc) => fail!("panic at {}:{}: {}", loc.file(), loc.line(), info.message()),
        None => fail!("panic: {}", info.message()),
    };
    report::finish(&outcome);
    sys::end_vm()
}
