//! vCPU state for the 64-bit boot protocol: GDT, identity page tables, segment and control
//! registers, general registers, FPU, boot MSRs and the LAPIC's LINT0/LINT1.
//!
//! The builders are pure so they can be tested without KVM; `setup_*` apply them to a vCPU.

use kvm_bindings::{
    Msrs, kvm_fpu, kvm_lapic_state, kvm_msr_entry, kvm_regs, kvm_segment, kvm_sregs,
};
use kvm_ioctls::VcpuFd;
use vm_memory::{Bytes, GuestAddress};

use super::layout::*;
use crate::memory::GuestMem;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot write boot page tables or GDT to guest memory")]
    Memory(#[from] vm_memory::GuestMemoryError),
    #[error("KVM refused the vCPU's {what}")]
    Kvm {
        what: &'static str,
        #[source]
        source: kvm_ioctls::Error,
    },
    #[error("KVM accepted only {set} of {total} boot MSRs")]
    Msrs { set: usize, total: usize },
}

fn kvm(what: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> Error {
    move |source| Error::Kvm { what, source }
}

const X86_CR0_PE: u64 = 1 << 0;
const X86_CR0_ET: u64 = 1 << 4;
const X86_CR0_NE: u64 = 1 << 5;
const X86_CR0_PG: u64 = 1 << 31;
const X86_CR4_PAE: u64 = 1 << 5;
const X86_CR4_OSFXSR: u64 = 1 << 9;
const X86_CR4_OSXMMEXCPT: u64 = 1 << 10;
const EFER_LME: u64 = 1 << 8;
const EFER_LMA: u64 = 1 << 10;

/// GDT entry from flags (access byte plus the flags nibble), base and limit.
pub const fn gdt_entry(flags: u16, base: u32, limit: u32) -> u64 {
    ((base as u64 & 0xff00_0000) << 32)
        | ((base as u64 & 0x00ff_ffff) << 16)
        | (limit as u64 & 0x0000_ffff)
        | ((limit as u64 & 0x000f_0000) << 32)
        | ((flags as u64 & 0xf0ff) << 40)
}

/// The boot GDT: null, 64-bit code (selector 0x08), data (0x10), TSS (0x18).
pub const BOOT_GDT: [u64; 4] = [
    0,
    gdt_entry(0xa09b, 0, 0xfffff),
    gdt_entry(0xc093, 0, 0xfffff),
    gdt_entry(0x808b, 0, 0xfffff),
];

/// The `kvm_segment` a GDT entry describes, when loaded with selector `index * 8`.
pub fn segment_from_gdt(entry: u64, index: u8) -> kvm_segment {
    let bit = |n: u32| ((entry >> n) & 1) as u8;
    kvm_segment {
        base: ((entry >> 16) & 0xff_ffff) | (((entry >> 56) & 0xff) << 24),
        limit: {
            let raw = ((entry & 0xffff) | ((entry >> 32) & 0xf_0000)) as u32;
            if bit(55) == 1 {
                (raw << 12) | 0xfff
            } else {
                raw
            }
        },
        selector: u16::from(index) * 8,
        type_: ((entry >> 40) & 0xf) as u8,
        present: bit(47),
        dpl: ((entry >> 45) & 3) as u8,
        db: bit(54),
        s: bit(44),
        l: bit(53),
        g: bit(55),
        avl: bit(52),
        unusable: if bit(47) == 1 { 0 } else { 1 },
        padding: 0,
    }
}

/// Identity page tables for the first 4 GiB with 2 MiB pages: (address, entry) pairs to write,
/// made as they are written (a list of all 2,053 would be 32 KiB of heap at every start).
pub fn page_table_entries() -> impl Iterator<Item = (u64, u64)> {
    const PRESENT_RW: u64 = 0x3;
    const PAGE_SIZE_2M: u64 = 0x80;
    let pml4 = std::iter::once((PML4_ADDR, PDPT_ADDR | PRESENT_RW));
    let tables = (0..PD_COUNT).flat_map(|pd| {
        let pd_addr = PD_ADDR + pd * 0x1000;
        let pdpte = std::iter::once((PDPT_ADDR + pd * 8, pd_addr | PRESENT_RW));
        let pdes = (0..512u64).map(move |i| {
            let phys = ((pd << 9) + i) << 21;
            (pd_addr + i * 8, phys | PRESENT_RW | PAGE_SIZE_2M)
        });
        pdpte.chain(pdes)
    });
    pml4.chain(tables)
}

// The tables must not run into the command line.
const _: () = assert!(PD_ADDR + PD_COUNT * 0x1000 <= CMDLINE_ADDR);

/// Write the boot GDT, an empty IDT and the identity page tables into guest memory.
pub fn write_boot_tables(mem: &GuestMem) -> Result<(), Error> {
    for (i, entry) in BOOT_GDT.iter().enumerate() {
        mem.write_obj(*entry, GuestAddress(GDT_ADDR + 8 * i as u64))?;
    }
    mem.write_obj(0u64, GuestAddress(IDT_ADDR))?;
    for (addr, entry) in page_table_entries() {
        mem.write_obj(entry, GuestAddress(addr))?;
    }
    Ok(())
}

/// Segment and control registers for 64-bit entry, starting from what KVM reported.
pub fn boot_sregs(mut sregs: kvm_sregs) -> kvm_sregs {
    let code = segment_from_gdt(BOOT_GDT[1], 1);
    let data = segment_from_gdt(BOOT_GDT[2], 2);
    let tss = segment_from_gdt(BOOT_GDT[3], 3);
    sregs.gdt.base = GDT_ADDR;
    sregs.gdt.limit = (std::mem::size_of_val(&BOOT_GDT) - 1) as u16;
    sregs.idt.base = IDT_ADDR;
    sregs.idt.limit = 7;
    sregs.cs = code;
    sregs.ds = data;
    sregs.es = data;
    sregs.fs = data;
    sregs.gs = data;
    sregs.ss = data;
    sregs.tr = tss;
    sregs.cr3 = PML4_ADDR;
    sregs.cr4 |= X86_CR4_PAE | X86_CR4_OSFXSR | X86_CR4_OSXMMEXCPT;
    sregs.cr0 |= X86_CR0_PE | X86_CR0_PG | X86_CR0_ET | X86_CR0_NE;
    sregs.efer |= EFER_LME | EFER_LMA;
    sregs
}

/// General registers at entry: RIP at the kernel, RSI at the zero page, interrupts off.
pub fn boot_regs(entry: u64) -> kvm_regs {
    kvm_regs {
        rflags: 0x2,
        rip: entry,
        rsp: BOOT_STACK_ADDR,
        rbp: BOOT_STACK_ADDR,
        rsi: ZERO_PAGE_ADDR,
        ..Default::default()
    }
}

/// x87 and SSE control words at their power-on defaults.
pub fn boot_fpu() -> kvm_fpu {
    kvm_fpu {
        fcw: 0x37f,
        mxcsr: 0x1f80,
        ..Default::default()
    }
}

/// The MSRs a booting kernel expects in a known state.
pub fn boot_msr_entries() -> Vec<kvm_msr_entry> {
    const MSR_IA32_SYSENTER_CS: u32 = 0x174;
    const MSR_IA32_SYSENTER_ESP: u32 = 0x175;
    const MSR_IA32_SYSENTER_EIP: u32 = 0x176;
    const MSR_STAR: u32 = 0xc000_0081;
    const MSR_LSTAR: u32 = 0xc000_0082;
    const MSR_CSTAR: u32 = 0xc000_0083;
    const MSR_SYSCALL_MASK: u32 = 0xc000_0084;
    const MSR_KERNEL_GS_BASE: u32 = 0xc000_0102;
    const MSR_IA32_TSC: u32 = 0x10;
    const MSR_IA32_MISC_ENABLE: u32 = 0x1a0;
    const MISC_ENABLE_FAST_STRING: u64 = 1;
    let msr = |index, data| kvm_msr_entry {
        index,
        data,
        ..Default::default()
    };
    vec![
        msr(MSR_IA32_SYSENTER_CS, 0),
        msr(MSR_IA32_SYSENTER_ESP, 0),
        msr(MSR_IA32_SYSENTER_EIP, 0),
        msr(MSR_STAR, 0),
        msr(MSR_CSTAR, 0),
        msr(MSR_KERNEL_GS_BASE, 0),
        msr(MSR_SYSCALL_MASK, 0),
        msr(MSR_LSTAR, 0),
        msr(MSR_IA32_TSC, 0),
        msr(MSR_IA32_MISC_ENABLE, MISC_ENABLE_FAST_STRING),
    ]
}

const APIC_LVT0: usize = 0x350;
const APIC_LVT1: usize = 0x360;
const APIC_MODE_NMI: u32 = 0x4;
const APIC_MODE_EXTINT: u32 = 0x7;

fn lapic_reg(lapic: &kvm_lapic_state, offset: usize) -> u32 {
    let b = &lapic.regs[offset..offset + 4];
    u32::from_le_bytes([b[0] as u8, b[1] as u8, b[2] as u8, b[3] as u8])
}

fn set_lapic_reg(lapic: &mut kvm_lapic_state, offset: usize, value: u32) {
    for (dst, src) in lapic.regs[offset..offset + 4]
        .iter_mut()
        .zip(value.to_le_bytes())
    {
        *dst = src as _;
    }
}

/// LINT0 as ExtINT (the PIC's line) and LINT1 as NMI, as the MP table declares them.
pub fn boot_lapic(mut lapic: kvm_lapic_state) -> kvm_lapic_state {
    let with_mode = |reg: u32, mode: u32| (reg & !0x700) | (mode << 8);
    let lvt0 = lapic_reg(&lapic, APIC_LVT0);
    set_lapic_reg(&mut lapic, APIC_LVT0, with_mode(lvt0, APIC_MODE_EXTINT));
    let lvt1 = lapic_reg(&lapic, APIC_LVT1);
    set_lapic_reg(&mut lapic, APIC_LVT1, with_mode(lvt1, APIC_MODE_NMI));
    lapic
}

/// State every vCPU needs: FPU, boot MSRs, LAPIC LINT set-up.
pub fn setup_common(vcpu: &VcpuFd) -> Result<(), Error> {
    vcpu.set_fpu(&boot_fpu()).map_err(kvm("FPU state"))?;
    let entries = boot_msr_entries();
    let msrs = Msrs::from_entries(&entries).map_err(|_| Error::Msrs {
        set: 0,
        total: entries.len(),
    })?;
    let set = vcpu.set_msrs(&msrs).map_err(kvm("MSRs"))?;
    if set != entries.len() {
        return Err(Error::Msrs {
            set,
            total: entries.len(),
        });
    }
    let lapic = vcpu.get_lapic().map_err(kvm("LAPIC state"))?;
    vcpu.set_lapic(&boot_lapic(lapic))
        .map_err(kvm("LAPIC state"))?;
    Ok(())
}

/// State of the boot processor: segments, paging, and registers pointing at the kernel.
pub fn setup_boot_cpu(vcpu: &VcpuFd, entry: u64) -> Result<(), Error> {
    let sregs = vcpu.get_sregs().map_err(kvm("segment registers"))?;
    vcpu.set_sregs(&boot_sregs(sregs))
        .map_err(kvm("segment registers"))?;
    vcpu.set_regs(&boot_regs(entry)).map_err(kvm("registers"))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gdt_entries_encode_long_mode_segments() {
        assert_eq!(BOOT_GDT[1], 0x00af_9b00_0000_ffff);
        assert_eq!(BOOT_GDT[2], 0x00cf_9300_0000_ffff);
        assert_eq!(BOOT_GDT[3], 0x008f_8b00_0000_ffff);
        let cs = segment_from_gdt(BOOT_GDT[1], 1);
        assert_eq!(
            (cs.selector, cs.l, cs.db, cs.present, cs.dpl, cs.s, cs.type_),
            (8, 1, 0, 1, 0, 1, 0xb)
        );
        assert_eq!(cs.limit, 0xffff_ffff);
        let ds = segment_from_gdt(BOOT_GDT[2], 2);
        assert_eq!(
            (ds.selector, ds.l, ds.db, ds.type_, ds.g),
            (0x10, 0, 1, 3, 1)
        );
        let tr = segment_from_gdt(BOOT_GDT[3], 3);
        assert_eq!(
            (tr.selector, tr.s, tr.type_, tr.unusable),
            (0x18, 0, 0xb, 0)
        );
        assert_eq!(segment_from_gdt(0, 0).unusable, 1);
        assert_eq!(
            segment_from_gdt(gdt_entry(0x93, 0x1234_5678, 0xabcde), 1).base,
            0x1234_5678
        );
    }

    #[test]
    fn page_tables_identity_map_4gib_with_2mib_pages() {
        let entries: Vec<_> = page_table_entries().collect();
        assert_eq!(entries.len(), 1 + 4 + 4 * 512);
        assert_eq!(entries[0], (PML4_ADDR, PDPT_ADDR | 3));
        let lookup = |addr: u64| entries.iter().find(|e| e.0 == addr).map(|e| e.1);
        // Walk the tables for a few addresses and check they map to themselves.
        for va in [
            0u64,
            0x100_0000,
            0x3fff_ffff,
            0x4000_0000,
            0xfee0_0000,
            0xffff_ffff,
        ] {
            let pml4e = lookup(PML4_ADDR + ((va >> 39) & 511) * 8).unwrap();
            let pdpte = lookup((pml4e & !0xfff) + ((va >> 30) & 511) * 8).unwrap();
            let pde = lookup((pdpte & !0xfff) + ((va >> 21) & 511) * 8).unwrap();
            assert_eq!(pde & 0x83, 0x83, "present, writable, 2 MiB page at {va:#x}");
            assert_eq!((pde & !0x1f_ffff & !0xfff) | (va & 0x1f_ffff), va);
        }
    }

    #[test]
    fn sregs_enter_long_mode_with_paging() {
        let s = boot_sregs(kvm_sregs::default());
        assert_eq!(s.cr0 & (X86_CR0_PE | X86_CR0_PG), X86_CR0_PE | X86_CR0_PG);
        assert_ne!(s.cr4 & X86_CR4_PAE, 0);
        assert_eq!(s.efer & (EFER_LME | EFER_LMA), EFER_LME | EFER_LMA);
        assert_eq!(s.cr3, PML4_ADDR);
        assert_eq!((s.gdt.base, s.gdt.limit), (GDT_ADDR, 31));
        assert_eq!(
            (s.cs.selector, s.ds.selector, s.ss.selector, s.tr.selector),
            (8, 0x10, 0x10, 0x18)
        );
    }

    #[test]
    fn regs_point_at_kernel_and_zero_page() {
        let r = boot_regs(0x100_0000);
        assert_eq!(
            (r.rip, r.rsi, r.rsp, r.rflags),
            (0x100_0000, ZERO_PAGE_ADDR, BOOT_STACK_ADDR, 2)
        );
        assert_eq!(boot_fpu().fcw, 0x37f);
        assert!(
            boot_msr_entries()
                .iter()
                .any(|m| m.index == 0x1a0 && m.data == 1)
        );
    }

    #[test]
    fn lapic_lint0_extint_lint1_nmi() {
        let mut l = kvm_lapic_state::default();
        set_lapic_reg(&mut l, APIC_LVT0, 0x0001_0000);
        set_lapic_reg(&mut l, APIC_LVT1, 0x0001_0400);
        let l = boot_lapic(l);
        assert_eq!(lapic_reg(&l, APIC_LVT0), 0x0001_0700);
        assert_eq!(lapic_reg(&l, APIC_LVT1), 0x0001_0400);
    }
}
