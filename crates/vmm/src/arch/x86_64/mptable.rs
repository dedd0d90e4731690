//! The Intel MultiProcessor Specification (version 1.4) tables that tell the guest kernel how many
//! vCPUs there are and how the interrupt controllers are wired.
//!
//! The floating pointer goes where the kernel scans for it, the first kilobyte of the extended
//! BIOS data area; the configuration table it points to goes in the BIOS area, which has room
//! for it whatever the number of vCPUs:
//!
//! ```text
//! EBDA_START            MP floating pointer structure ("_MP_", 16 bytes); its physical
//!                       address field holds MPTABLE_CONFIG_ADDR
//! MPTABLE_CONFIG_ADDR   MP configuration table header ("PCMP", 44 bytes), followed by its
//! (0xf0000)             entries: one processor entry per vCPU, the ISA bus, the IOAPIC, one
//!                       I/O interrupt assignment per IOAPIC pin, and ExtINT/NMI on LINT0/LINT1
//!                       of every local APIC
//! ```
//!
//! Neither area is e820 RAM ([`super::boot::e820_map`]: RAM is `[0, EBDA_START)` and from
//! 1 MiB), so the kernel does not reuse them. The number of vCPUs is bounded by the 8-bit xAPIC
//! ids, not by room: [`MAX_CPUS`] vCPUs take ids `0..MAX_CPUS`, the IOAPIC the next one, and
//! 0xff is the broadcast id. The configuration table for that many takes 5,348 bytes of the
//! BIOS area's 64 KiB.

use std::mem::size_of;

use vm_memory::{Address, ByteValued, Bytes, GuestAddress};

use super::layout;
use crate::memory::GuestMem;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("the MP table needs at least one vCPU")]
    NoCpus,
    #[error("the MP table describes at most {MAX_CPUS} vCPUs (xAPIC ids), not {0}")]
    TooManyCpus(u8),
    #[error("could not write the MP {what} at {addr:#x} into guest memory")]
    Write {
        what: &'static str,
        addr: u64,
        #[source]
        source: vm_memory::GuestMemoryError,
    },
}

/// Where the MP floating pointer goes, and the bytes the kernel scans for it from there.
const MPF_ADDR: u64 = layout::EBDA_START;
const MPF_SCAN_LEN: u64 = 1024;

const MPF_SIGNATURE: [u8; 4] = *b"_MP_";
const MPC_SIGNATURE: [u8; 4] = *b"PCMP";
/// Revision of the specification the tables follow (1.4).
const MP_SPEC_REV: u8 = 4;
const OEM_ID: [u8; 8] = *b"KITE    ";
const PRODUCT_ID: [u8; 12] = *b"KITE VMM    ";

// Entry types.
const MP_PROCESSOR: u8 = 0;
const MP_BUS: u8 = 1;
const MP_IOAPIC: u8 = 2;
const MP_IO_INTERRUPT: u8 = 3;
const MP_LOCAL_INTERRUPT: u8 = 4;

// Processor entry flags.
const CPU_ENABLED: u8 = 1 << 0;
const CPU_BSP: u8 = 1 << 1;
/// Local APIC version of an integrated (xAPIC) local APIC.
const APIC_VERSION: u8 = 0x14;
/// CPU signature of the processor entries: family 6, model 0, stepping 0.
const CPU_SIGNATURE: u32 = 6 << 8;
/// Feature flags of the processor entries (CPUID.1:EDX): FPU and on-chip APIC.
const CPU_FEATURES: u32 = (1 << 0) | (1 << 9);

// IOAPIC.
const IOAPIC_VERSION: u8 = 0x11;
const IOAPIC_ENABLED: u8 = 1 << 0;

/// The only bus: ISA, id 0.
const ISA_BUS_ID: u8 = 0;
const ISA_BUS_TYPE: [u8; 6] = *b"ISA   ";

// Interrupt types.
const INT_TYPE_INT: u8 = 0;
const INT_TYPE_NMI: u8 = 1;
const INT_TYPE_EXTINT: u8 = 3;
/// Polarity and trigger mode "conform to the specifications of the bus".
const INT_FLAGS_CONFORMING: u16 = 0;
/// Destination local APIC id meaning "all local APICs".
const ALL_LOCAL_APICS: u8 = 0xff;

/// MP floating pointer structure (MP spec 4.1).
#[repr(C, packed)]
#[derive(Clone, Copy, Default)]
struct MpFloatingPointer {
    signature: [u8; 4],
    physical_address: u32,
    /// In 16-byte units.
    length: u8,
    spec_rev: u8,
    checksum: u8,
    /// 0: a configuration table is present (no default configuration).
    feature1: u8,
    /// Bit 7 (IMCRP) clear: virtual wire mode, no IMCR.
    feature2: u8,
    feature3_5: [u8; 3],
}

/// MP configuration table header (MP spec 4.2).
#[repr(C, packed)]
#[derive(Clone, Copy, Default)]
struct MpConfigHeader {
    signature: [u8; 4],
    base_table_length: u16,
    spec_rev: u8,
    checksum: u8,
    oem_id: [u8; 8],
    product_id: [u8; 12],
    oem_table_pointer: u32,
    oem_table_size: u16,
    entry_count: u16,
    local_apic_address: u32,
    extended_table_length: u16,
    extended_table_checksum: u8,
    reserved: u8,
}

/// Processor entry (MP spec 4.3.1).
#[repr(C, packed)]
#[derive(Clone, Copy, Default)]
struct MpProcessor {
    entry_type: u8,
    local_apic_id: u8,
    local_apic_version: u8,
    cpu_flags: u8,
    cpu_signature: u32,
    feature_flags: u32,
    reserved: [u32; 2],
}

/// Bus entry (MP spec 4.3.2).
#[repr(C, packed)]
#[derive(Clone, Copy, Default)]
struct MpBus {
    entry_type: u8,
    bus_id: u8,
    bus_type: [u8; 6],
}

/// I/O APIC entry (MP spec 4.3.3).
#[repr(C, packed)]
#[derive(Clone, Copy, Default)]
struct MpIoApic {
    entry_type: u8,
    ioapic_id: u8,
    ioapic_version: u8,
    flags: u8,
    address: u32,
}

/// I/O interrupt assignment (type 3) and local interrupt assignment (type 4) entries share one
/// layout (MP spec 4.3.4 and 4.3.5); `dest_id`/`dest_pin` are an IOAPIC id and INTIN pin for the
/// former, a local APIC id and LINTIN pin for the latter.
#[repr(C, packed)]
#[derive(Clone, Copy, Default)]
struct MpInterrupt {
    entry_type: u8,
    interrupt_type: u8,
    flags: u16,
    source_bus_id: u8,
    source_bus_irq: u8,
    dest_id: u8,
    dest_pin: u8,
}

// SAFETY: the structs above are `repr(C, packed)` and made only of integers and byte arrays, so
// they have no padding and every bit pattern is a valid value.
unsafe impl ByteValued for MpFloatingPointer {}
// SAFETY: as above.
unsafe impl ByteValued for MpConfigHeader {}
// SAFETY: as above.
unsafe impl ByteValued for MpProcessor {}
// SAFETY: as above.
unsafe impl ByteValued for MpBus {}
// SAFETY: as above.
unsafe impl ByteValued for MpIoApic {}
// SAFETY: as above.
unsafe impl ByteValued for MpInterrupt {}

// The sizes the specification gives.
const _: () = assert!(size_of::<MpFloatingPointer>() == 16);
const _: () = assert!(size_of::<MpConfigHeader>() == 44);
const _: () = assert!(size_of::<MpProcessor>() == 20);
const _: () = assert!(size_of::<MpBus>() == 8);
const _: () = assert!(size_of::<MpIoApic>() == 8);
const _: () = assert!(size_of::<MpInterrupt>() == 8);

/// Number of local interrupt assignment entries (ExtINT on LINT0, NMI on LINT1).
const LOCAL_INTERRUPTS: usize = 2;

/// Bytes the configuration table (header and entries) takes for `num_cpus` vCPUs.
const fn config_table_size(num_cpus: usize) -> usize {
    size_of::<MpConfigHeader>()
        + num_cpus * size_of::<MpProcessor>()
        + size_of::<MpBus>()
        + size_of::<MpIoApic>()
        + (layout::IOAPIC_PINS as usize + LOCAL_INTERRUPTS) * size_of::<MpInterrupt>()
}

/// The most vCPUs the MP table describes: their local APIC ids are `0..MAX_CPUS`, the IOAPIC
/// takes id `MAX_CPUS`, and 0xff ([`ALL_LOCAL_APICS`]) is the broadcast id.
pub const MAX_CPUS: u8 = 254;

// The IOAPIC's id, the one after the last vCPU's, stays below the broadcast id.
const _: () = assert!(MAX_CPUS < ALL_LOCAL_APICS);
// The floating pointer lies on a 16-byte boundary (the kernel's scan step) in the EBDA's first
// kilobyte, below the legacy video hole at 0xa0000.
const _: () = assert!(MPF_ADDR.is_multiple_of(16));
const _: () = assert!(MPF_ADDR + MPF_SCAN_LEN <= 0xa0000);
// The configuration table for MAX_CPUS fits in the BIOS area, which is not RAM for the kernel
// (above the EBDA, below 1 MiB) and is reachable by the floating pointer's 32-bit address.
const _: () = assert!(
    layout::MPTABLE_CONFIG_ADDR + config_table_size(MAX_CPUS as usize) as u64
        <= layout::BIOS_AREA_END
);
const _: () = assert!(layout::MPTABLE_CONFIG_ADDR >= 0xa0000);
const _: () = assert!(layout::BIOS_AREA_END <= layout::HIMEM_START);

/// Sum of the bytes of `obj`, modulo 256.
fn byte_sum<T: ByteValued>(obj: &T) -> u8 {
    obj.as_slice()
        .iter()
        .fold(0u8, |sum, b| sum.wrapping_add(*b))
}

/// Writes the table's entries one after the other, counting them and summing their bytes.
struct EntryWriter<'a> {
    mem: &'a GuestMem,
    addr: GuestAddress,
    count: u16,
    sum: u8,
}

impl EntryWriter<'_> {
    fn push<T: ByteValued>(&mut self, what: &'static str, entry: T) -> Result<(), Error> {
        write(self.mem, what, entry, self.addr)?;
        self.addr = self.addr.unchecked_add(size_of::<T>() as u64);
        self.count += 1;
        self.sum = self.sum.wrapping_add(byte_sum(&entry));
        Ok(())
    }
}

fn write<T: ByteValued>(
    mem: &GuestMem,
    what: &'static str,
    obj: T,
    addr: GuestAddress,
) -> Result<(), Error> {
    mem.write_obj(obj, addr).map_err(|source| Error::Write {
        what,
        addr: addr.raw_value(),
        source,
    })
}

/// Write the MP floating pointer (at [`layout::EBDA_START`]) and configuration table (at
/// [`layout::MPTABLE_CONFIG_ADDR`]) for `num_cpus` vCPUs: local APIC ids `0..num_cpus`, vCPU 0
/// the bootstrap processor, IOAPIC id `num_cpus`.
pub fn setup_mptable(mem: &GuestMem, num_cpus: u8) -> Result<(), Error> {
    if num_cpus == 0 {
        return Err(Error::NoCpus);
    }
    if num_cpus > MAX_CPUS {
        return Err(Error::TooManyCpus(num_cpus));
    }
    let ioapic_id = num_cpus;

    let mpf_addr = GuestAddress(MPF_ADDR);
    let header_addr = GuestAddress(layout::MPTABLE_CONFIG_ADDR);
    let mut entries = EntryWriter {
        mem,
        addr: header_addr.unchecked_add(size_of::<MpConfigHeader>() as u64),
        count: 0,
        sum: 0,
    };

    for cpu in 0..num_cpus {
        let bsp = if cpu == 0 { CPU_BSP } else { 0 };
        entries.push(
            "processor entry",
            MpProcessor {
                entry_type: MP_PROCESSOR,
                local_apic_id: cpu,
                local_apic_version: APIC_VERSION,
                cpu_flags: CPU_ENABLED | bsp,
                cpu_signature: CPU_SIGNATURE,
                feature_flags: CPU_FEATURES,
                reserved: [0; 2],
            },
        )?;
    }
    entries.push(
        "bus entry",
        MpBus {
            entry_type: MP_BUS,
            bus_id: ISA_BUS_ID,
            bus_type: ISA_BUS_TYPE,
        },
    )?;
    entries.push(
        "IOAPIC entry",
        MpIoApic {
            entry_type: MP_IOAPIC,
            ioapic_id,
            ioapic_version: IOAPIC_VERSION,
            flags: IOAPIC_ENABLED,
            address: layout::IOAPIC_ADDR as u32,
        },
    )?;
    for pin in 0..layout::IOAPIC_PINS as u8 {
        entries.push(
            "I/O interrupt entry",
            MpInterrupt {
                entry_type: MP_IO_INTERRUPT,
                interrupt_type: INT_TYPE_INT,
                flags: INT_FLAGS_CONFORMING,
                source_bus_id: ISA_BUS_ID,
                source_bus_irq: pin,
                dest_id: ioapic_id,
                dest_pin: pin,
            },
        )?;
    }
    for (lint, interrupt_type) in [(0, INT_TYPE_EXTINT), (1, INT_TYPE_NMI)] {
        entries.push(
            "local interrupt entry",
            MpInterrupt {
                entry_type: MP_LOCAL_INTERRUPT,
                interrupt_type,
                flags: INT_FLAGS_CONFORMING,
                source_bus_id: ISA_BUS_ID,
                source_bus_irq: 0,
                dest_id: ALL_LOCAL_APICS,
                dest_pin: lint,
            },
        )?;
    }

    let table_end = entries.addr;
    debug_assert_eq!(
        table_end.raw_value() - header_addr.raw_value(),
        config_table_size(num_cpus as usize) as u64
    );
    let mut header = MpConfigHeader {
        signature: MPC_SIGNATURE,
        base_table_length: (table_end.raw_value() - header_addr.raw_value()) as u16,
        spec_rev: MP_SPEC_REV,
        checksum: 0,
        oem_id: OEM_ID,
        product_id: PRODUCT_ID,
        oem_table_pointer: 0,
        oem_table_size: 0,
        entry_count: entries.count,
        local_apic_address: layout::APIC_ADDR as u32,
        extended_table_length: 0,
        extended_table_checksum: 0,
        reserved: 0,
    };
    header.checksum = 0u8.wrapping_sub(byte_sum(&header).wrapping_add(entries.sum));
    write(mem, "configuration table header", header, header_addr)?;

    let mut mpf = MpFloatingPointer {
        signature: MPF_SIGNATURE,
        physical_address: header_addr.raw_value() as u32,
        length: 1,
        spec_rev: MP_SPEC_REV,
        ..Default::default()
    };
    mpf.checksum = 0u8.wrapping_sub(byte_sum(&mpf));
    write(mem, "floating pointer", mpf, mpf_addr)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn memory() -> GuestMem {
        crate::memory::create(2 << 20).unwrap()
    }

    fn sum_bytes(mem: &GuestMem, addr: u64, len: usize) -> u8 {
        let mut buf = vec![0u8; len];
        mem.read_slice(&mut buf, GuestAddress(addr)).unwrap();
        buf.iter().fold(0u8, |s, b| s.wrapping_add(*b))
    }

    /// Scan the EBDA's first kilobyte on 16-byte boundaries for the floating pointer, as the
    /// kernel does.
    fn find_mpf(mem: &GuestMem) -> u64 {
        (layout::EBDA_START..layout::EBDA_START + 1024)
            .step_by(16)
            .find(|&addr| {
                let sig: [u8; 4] = mem.read_obj(GuestAddress(addr)).unwrap();
                sig == MPF_SIGNATURE
            })
            .expect("no _MP_ signature in the EBDA")
    }

    /// Whether `[addr, addr + len)` overlaps RAM in the e820 map of a `mem_size` guest.
    fn overlaps_e820_ram(mem_size: u64, addr: u64, len: u64) -> bool {
        crate::arch::x86_64::boot::e820_map(mem_size)
            .iter()
            .any(|e| addr < { e.addr } + { e.size } && { e.addr } < addr + len)
    }

    /// Check everything `setup_mptable(mem, num_cpus)` should have written, reaching the
    /// configuration table the way the kernel does: through the floating pointer.
    fn check(mem: &GuestMem, num_cpus: u8) {
        let mpf_addr = find_mpf(mem);
        let mpf: MpFloatingPointer = mem.read_obj(GuestAddress(mpf_addr)).unwrap();
        assert_eq!({ mpf.length }, 1);
        assert_eq!({ mpf.spec_rev }, 4);
        assert_eq!(
            mpf.feature1, 0,
            "a configuration table, not a default configuration"
        );
        assert_eq!(sum_bytes(mem, mpf_addr, 16), 0);

        let table = u64::from(mpf.physical_address);
        assert_eq!(table, layout::MPTABLE_CONFIG_ADDR);
        let header: MpConfigHeader = mem.read_obj(GuestAddress(table)).unwrap();
        assert_eq!(header.signature, *b"PCMP");
        assert_eq!({ header.spec_rev }, 4);
        assert_eq!({ header.local_apic_address }, layout::APIC_ADDR as u32);
        let length = header.base_table_length as usize;
        assert_eq!(
            length,
            44 + 20 * num_cpus as usize + 8 + 8 + 8 * (layout::IOAPIC_PINS as usize + 2)
        );
        assert!((0xf0000..0x100000).contains(&table));
        assert!(table + length as u64 <= 0x100000);
        assert_eq!(sum_bytes(mem, table, length), 0);
        for mem_size in [2 << 20, 256 << 20, 4 << 30] {
            assert!(!overlaps_e820_ram(mem_size, mpf_addr, 16));
            assert!(!overlaps_e820_ram(mem_size, table, length as u64));
        }

        let mut processors = Vec::new();
        let mut ioapics = Vec::new();
        let mut io_interrupts = Vec::new();
        let mut local_interrupts = Vec::new();
        let mut buses = 0;
        let mut addr = table + 44;
        for _ in 0..header.entry_count {
            let entry_type: u8 = mem.read_obj(GuestAddress(addr)).unwrap();
            let size = match entry_type {
                MP_PROCESSOR => {
                    processors.push(mem.read_obj::<MpProcessor>(GuestAddress(addr)).unwrap());
                    20
                }
                MP_BUS => {
                    let bus: MpBus = mem.read_obj(GuestAddress(addr)).unwrap();
                    assert_eq!(bus.bus_type, *b"ISA   ");
                    buses += 1;
                    8
                }
                MP_IOAPIC => {
                    ioapics.push(mem.read_obj::<MpIoApic>(GuestAddress(addr)).unwrap());
                    8
                }
                MP_IO_INTERRUPT => {
                    io_interrupts.push(mem.read_obj::<MpInterrupt>(GuestAddress(addr)).unwrap());
                    8
                }
                MP_LOCAL_INTERRUPT => {
                    local_interrupts.push(mem.read_obj::<MpInterrupt>(GuestAddress(addr)).unwrap());
                    8
                }
                t => panic!("unknown entry type {t}"),
            };
            addr += size;
        }
        assert_eq!(addr, table + length as u64);

        assert_eq!(processors.len(), num_cpus as usize);
        for (i, cpu) in processors.iter().enumerate() {
            assert_eq!(cpu.local_apic_id as usize, i);
            assert_eq!(cpu.local_apic_version, 0x14);
            assert_ne!(cpu.cpu_flags & CPU_ENABLED, 0);
            assert_eq!(cpu.cpu_flags & CPU_BSP != 0, i == 0);
        }
        assert_eq!(buses, 1);

        assert_eq!(ioapics.len(), 1);
        let ioapic = ioapics[0];
        assert_eq!({ ioapic.address }, layout::IOAPIC_ADDR as u32);
        assert_eq!(ioapic.ioapic_id, num_cpus);
        assert_eq!(ioapic.ioapic_version, 0x11);
        assert_ne!(ioapic.flags & IOAPIC_ENABLED, 0);

        assert_eq!(io_interrupts.len(), 24);
        for (pin, int) in io_interrupts.iter().enumerate() {
            assert_eq!(int.interrupt_type, INT_TYPE_INT);
            assert_eq!(int.source_bus_id, ISA_BUS_ID);
            assert_eq!(int.source_bus_irq as usize, pin);
            assert_eq!(int.dest_id, num_cpus);
            assert_eq!(int.dest_pin as usize, pin);
        }

        assert_eq!(local_interrupts.len(), 2);
        assert_eq!(local_interrupts[0].interrupt_type, INT_TYPE_EXTINT);
        assert_eq!(local_interrupts[0].dest_pin, 0);
        assert_eq!(local_interrupts[1].interrupt_type, INT_TYPE_NMI);
        assert_eq!(local_interrupts[1].dest_pin, 1);
        for int in &local_interrupts {
            assert_eq!(int.dest_id, 0xff);
        }
    }

    #[test]
    fn one_cpu() {
        let mem = memory();
        setup_mptable(&mem, 1).unwrap();
        check(&mem, 1);
    }

    #[test]
    fn two_cpus() {
        let mem = memory();
        setup_mptable(&mem, 2).unwrap();
        check(&mem, 2);
    }

    #[test]
    fn more_cpus_than_the_ebda_holds() {
        // 37 was the most when the whole table lived in the EBDA's last kilobyte.
        for cpus in [37, 38, 64, 128] {
            let mem = memory();
            setup_mptable(&mem, cpus).unwrap();
            check(&mem, cpus);
        }
    }

    #[test]
    fn most_cpus() {
        assert_eq!(MAX_CPUS, 254);
        let mem = memory();
        setup_mptable(&mem, MAX_CPUS).unwrap();
        // `check` also sees the IOAPIC at id 254, below the broadcast id 255.
        check(&mem, MAX_CPUS);
        // The figure the module documentation gives, well within the BIOS area's 64 KiB.
        assert_eq!(config_table_size(254), 5348);
    }

    #[test]
    fn a_smaller_table_over_a_larger_one_checks_out() {
        // Length, entry count and checksum come from what was written, not what lies around.
        let mem = memory();
        setup_mptable(&mem, MAX_CPUS).unwrap();
        setup_mptable(&mem, 3).unwrap();
        check(&mem, 3);
    }

    #[test]
    fn zero_cpus_is_an_error() {
        assert!(matches!(setup_mptable(&memory(), 0), Err(Error::NoCpus)));
    }

    #[test]
    fn too_many_cpus_is_an_error() {
        // MAX_CPUS + 1 is 255, the broadcast id: the only u8 above the limit.
        let mem = memory();
        let err = setup_mptable(&mem, MAX_CPUS + 1).unwrap_err();
        assert!(matches!(err, Error::TooManyCpus(255)));
        assert_eq!(
            err.to_string(),
            "the MP table describes at most 254 vCPUs (xAPIC ids), not 255"
        );
    }

    #[test]
    fn memory_without_the_ebda_is_an_error() {
        let mem = crate::memory::create(0x8_0000).unwrap();
        assert!(matches!(setup_mptable(&mem, 1), Err(Error::Write { .. })));
    }

    #[test]
    fn memory_without_the_bios_area_is_an_error() {
        // RAM up to the video hole: room for the floating pointer, none for the table.
        let mem = crate::memory::create(0xa_0000).unwrap();
        assert!(matches!(
            setup_mptable(&mem, 1),
            Err(Error::Write { addr, .. }) if addr >= layout::MPTABLE_CONFIG_ADDR
        ));
    }
}
