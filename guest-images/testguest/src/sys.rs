//! Ring-3 primitives: port I/O (IOPL=3), the TSC, CPUID, the `int 0x80` gate, ending the
//! VM, and the memory functions the compiler expects (there is no libc).

use core::arch::asm;

#[inline(always)]
pub fn outb(port: u16, value: u8) {
    // SAFETY: ring 3 runs with IOPL=3; port writes have no effect on Rust memory.
    unsafe {
        asm!("out dx, al", in("dx") port, in("al") value, options(nomem, nostack, preserves_flags))
    }
}

#[inline(always)]
pub fn inb(port: u16) -> u8 {
    let value: u8;
    // SAFETY: as for `outb`.
    unsafe {
        asm!("in al, dx", in("dx") port, out("al") value, options(nomem, nostack, preserves_flags))
    }
    value
}

#[inline(always)]
pub fn rdtsc() -> u64 {
    // SAFETY: CR4.TSD is clear, so rdtsc works in ring 3; no memory effects.
    unsafe { core::arch::x86_64::_rdtsc() }
}

/// CPUID leaf/subleaf -> (eax, ebx, ecx, edx).
pub fn cpuid(leaf: u32, subleaf: u32) -> (u32, u32, u32, u32) {
    let r = core::arch::x86_64::__cpuid_count(leaf, subleaf);
    (r.eax, r.ebx, r.ecx, r.edx)
}

/// System calls of the `int 0x80` gate (see entry.S).
#[allow(dead_code)]
pub mod nr {
    pub const NOP: u64 = 0;
    pub const HALT: u64 = 1;
    pub const RDMSR: u64 = 2;
    pub const WRMSR: u64 = 3;
    pub const DIE: u64 = 4;
    pub const RELOAD_CR3: u64 = 5;
}

/// Calls ring 0 through the `int 0x80` gate.
#[inline(always)]
pub fn syscall(number: u64, a0: u64, a1: u64) -> u64 {
    let ret: u64;
    // SAFETY: the gate preserves every register but rax; the calls it offers do not
    // touch memory Rust knows about.
    unsafe {
        asm!("int 0x80", inout("rax") number => ret, in("rdi") a0, in("rsi") a1, options(nostack))
    }
    ret
}

/// TSC ticks per second, for time limits only (nothing reported depends on it): CPUID
/// leaf 0x15 or 0x16 or the hypervisor's 0x40000010 when present, else 3 GHz.
pub fn tsc_hz() -> u64 {
    let (max_leaf, ..) = cpuid(0, 0);
    if max_leaf >= 0x15 {
        let (den, num, crystal, _) = cpuid(0x15, 0);
        if den != 0 && num != 0 && crystal != 0 {
            return crystal as u64 * num as u64 / den as u64;
        }
    }
    if max_leaf >= 0x16 {
        let (mhz, ..) = cpuid(0x16, 0);
        if mhz != 0 {
            return mhz as u64 * 1_000_000;
        }
    }
    let (hv_max, ..) = cpuid(0x4000_0000, 0);
    if (0x4000_0010..0x4001_0000).contains(&hv_max) {
        let (khz, ..) = cpuid(0x4000_0010, 0);
        if khz != 0 {
            return khz as u64 * 1000;
        }
    }
    3_000_000_000
}

/// TSC ticks for `ms` milliseconds (approximate, see [`tsc_hz`]).
pub fn ms_to_ticks(ms: u64) -> u64 {
    tsc_hz() / 1000 * ms
}

/// Busy-waits for `ticks` TSC ticks.
pub fn delay_ticks(ticks: u64) {
    let start = rdtsc();
    while rdtsc().wrapping_sub(start) < ticks {
        core::hint::spin_loop();
    }
}

/// Ends the VM: i8042 reset (`out 0x64, 0xfe`), which Kite and Firecracker-like VMMs turn
/// into a clean exit. If the VM is still running after about a second, triple-fault.
pub fn end_vm() -> ! {
    outb(0x64, 0xfe);
    delay_ticks(3_000_000_000);
    syscall(nr::DIE, 0, 0);
    loop {
        core::hint::spin_loop();
    }
}

// The compiler lowers copies and fills to these; there is no libc to provide them.

#[unsafe(no_mangle)]
pub unsafe extern "C" fn memcpy(dest: *mut u8, src: *const u8, n: usize) -> *mut u8 {
    // SAFETY: the caller passes valid, non-overlapping ranges of n bytes.
    unsafe {
        asm!("rep movsb", inout("rdi") dest => _, inout("rsi") src => _, inout("rcx") n => _,
             options(nostack, preserves_flags));
    }
    dest
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn memmove(dest: *mut u8, src: *const u8, n: usize) -> *mut u8 {
    if (dest as usize).wrapping_sub(src as usize) >= n {
        // No harmful overlap: copy forwards.
        // SAFETY: the caller passes valid ranges of n bytes.
        unsafe { memcpy(dest, src, n) };
    } else {
        // dest lies inside [src, src + n): copy backwards.
        // SAFETY: as above; the direction flag is restored before returning.
        unsafe {
            asm!("std", "rep movsb", "cld",
                 inout("rdi") dest.add(n).wrapping_sub(1) => _,
                 inout("rsi") src.add(n).wrapping_sub(1) => _,
                 inout("rcx") n => _, options(nostack));
        }
    }
    dest
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn memset(dest: *mut u8, value: i32, n: usize) -> *mut u8 {
    // SAFETY: the caller passes a valid range of n bytes.
    unsafe {
        asm!("rep stosb", inout("rdi") dest => _, inout("rcx") n => _, in("al") value as u8,
             options(nostack, preserves_flags));
    }
    dest
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn memcmp(a: *const u8, b: *const u8, n: usize) -> i32 {
    let mut i = 0;
    while i < n {
        // SAFETY: the caller passes valid ranges of n bytes.
        let (x, y) = unsafe { (a.add(i).read_volatile(), b.add(i).read_volatile()) };
        if x != y {
            return x as i32 - y as i32;
        }
        i += 1;
    }
    0
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn bcmp(a: *const u8, b: *const u8, n: usize) -> i32 {
    // SAFETY: same contract as memcmp.
    unsafe { memcmp(a, b, n) }
}
