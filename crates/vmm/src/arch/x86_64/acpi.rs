//! ACPI tables, for kernels that find the machine through ACPI (distro kernels have
//! `CONFIG_X86_MPPARSE` off and their virtio-mmio driver has no command-line devices).
//!
//! Written with the rust-vmm `acpi_tables` crate into the BIOS area below the MP table
//! (`layout::ACPI_START..ACPI_END`), which e820 does not call usable RAM:
//!
//! * RSDP at `ACPI_START` (16-byte aligned, so the kernel's scan of 0xE0000-0xFFFFF finds it
//!   too; its address also goes in the zero page's `acpi_rsdp_addr`);
//! * XSDT -> FADT, MADT; FADT -> DSDT;
//! * FADT: a hardware-reduced platform (no PM timer, no fixed events, no SCI), with a sleep
//!   control/status register pair and a reset register in port space, served by
//!   `devices::acpi_pm`; no CMOS RTC, no VGA;
//! * MADT: one enabled local APIC per vCPU (the APIC ids CPUID reports: the vCPU index), the
//!   IOAPIC (id `cpus`, as in the MP table), ISA IRQ 0 -> GSI 2 (where KVM's PIT arrives) and
//!   LINT1 as NMI on every CPU;
//! * DSDT: `\_S5` (sleep type 5 is power-off), the 16550 (`PNP0501`) and one `LNRO0005` node
//!   per virtio-mmio window with its memory and interrupt resources; with a VM generation ID
//!   (`devices::vmgenid`), `VGEN` (`_CID` `VM_GEN_COUNTER`, its `ADDR`) and the generic event
//!   device `GED_` (`ACPI0013`) whose interrupt notifies `VGEN` (`Notify (VGEN, 0x80)`).
//!
//! The AML is built into a plain vector and appended to the DSDT once: the crate's `Sdt`
//! recomputes its checksum on every byte appended through its `AmlSink`.

use acpi_tables::aml::{
    Arg, Device, EISAName, Equal, IO, If, Interrupt, Memory32Fixed, Method, Name, Notify, Package,
    Path, ResourceTemplate, Scope,
};
use acpi_tables::fadt::{FADTBuilder, Flags};
use acpi_tables::gas::{AccessSize, AddressSpace, GAS};
use acpi_tables::madt::{
    EnabledStatus, IoApic, LocalInterruptController, MADT, ProcessorLocalApic,
};
use acpi_tables::rsdp::Rsdp;
use acpi_tables::sdt::Sdt;
use acpi_tables::xsdt::XSDT;
use acpi_tables::{Aml, AmlSink};
use vm_memory::{Address, Bytes, GuestAddress};
use zerocopy::{Immutable, IntoBytes};

use super::layout;
use crate::memory::GuestMem;

const OEM_ID: [u8; 6] = *b"KITE  ";
const OEM_REVISION: u32 = 1;

/// `\_S5`'s sleep type: what the guest writes (shifted into SLP_TYP) to power off.
pub const S5_SLEEP_TYPE: u8 = 5;

/// Where a virtio-mmio device sits, for its DSDT node.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VirtioWindow {
    pub addr: u64,
    pub irq: u32,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("the ACPI tables ({0} bytes) do not fit below the MP table")]
    TooBig(usize),
    #[error("cannot write the ACPI tables into guest memory")]
    Write(#[source] vm_memory::GuestMemoryError),
}

/// MADT Interrupt Source Override (type 2), which the crate does not provide.
#[repr(C, packed)]
#[derive(Clone, Copy, Debug, IntoBytes, Immutable)]
struct InterruptSourceOverride {
    kind: u8,
    length: u8,
    bus: u8,
    source: u8,
    gsi: u32,
    flags: u16,
}

/// MADT Local APIC NMI (type 4), which the crate does not provide.
#[repr(C, packed)]
#[derive(Clone, Copy, Debug, IntoBytes, Immutable)]
struct LocalApicNmi {
    kind: u8,
    length: u8,
    processor_uid: u8,
    flags: u16,
    lint: u8,
}

impl Aml for InterruptSourceOverride {
    fn to_aml_bytes(&self, sink: &mut dyn AmlSink) {
        sink.vec(self.as_bytes());
    }
}

impl Aml for LocalApicNmi {
    fn to_aml_bytes(&self, sink: &mut dyn AmlSink) {
        sink.vec(self.as_bytes());
    }
}

/// The tables, each with the guest address it goes to.
#[derive(Debug)]
pub struct Tables {
    pub rsdp: GuestAddress,
    pub blobs: Vec<(GuestAddress, Vec<u8>)>,
}

fn bytes_of(aml: &dyn Aml) -> Vec<u8> {
    let mut v = Vec::new();
    aml.to_aml_bytes(&mut v);
    v
}

/// `\_SB_.VGEN`, the VM generation ID (the `_CID` and the `ADDR` package, low and high halves
/// of the ID's address, are what Linux's `vmgenid` driver looks for), and `\_SB_.GED_`, the
/// generic event device whose edge on [`layout::VMGENID_IRQ`] runs `_EVT`, which notifies
/// `VGEN` (0x80: its ID changed).
fn vmgenid_aml() -> Vec<u8> {
    let addr_low = layout::VMGENID_ADDR as u32;
    let addr_high = (layout::VMGENID_ADDR >> 32) as u32;
    let addr = Package::new(vec![&addr_low, &addr_high]);
    let mut v = bytes_of(&Device::new(
        Path::new("\\_SB_.VGEN"),
        vec![
            &Name::new(Path::new("_HID"), &"KITEVGID"),
            &Name::new(Path::new("_CID"), &"VM_GEN_COUNTER"),
            &Name::new(Path::new("_DDN"), &"VM_GEN_COUNTER"),
            &Name::new(Path::new("ADDR"), &addr),
        ],
    ));
    let irq = Interrupt::new(true, true, false, false, layout::VMGENID_IRQ);
    let crs = ResourceTemplate::new(vec![&irq]);
    let is_ours = Equal::new(&Arg(0), &layout::VMGENID_IRQ);
    let vgen_path = Path::new("\\_SB_.VGEN");
    let notify = Notify::new(&vgen_path, &0x80u8);
    let on_ours = If::new(&is_ours, vec![&notify]);
    let evt = Method::new(Path::new("_EVT"), 1, false, vec![&on_ours]);
    v.extend(bytes_of(&Device::new(
        Path::new("\\_SB_.GED_"),
        vec![
            &Name::new(Path::new("_HID"), &"ACPI0013"),
            &Name::new(Path::new("_UID"), &0u8),
            &Name::new(Path::new("_CRS"), &crs),
            &evt,
        ],
    )));
    v
}

fn dsdt(virtio: &[VirtioWindow], vmgenid: bool) -> Vec<u8> {
    let s5 = Package::new(vec![&S5_SLEEP_TYPE, &S5_SLEEP_TYPE]);
    let mut body = bytes_of(&Name::new(Path::new("\\_S5_"), &s5));

    let com1_hid = EISAName::new("PNP0501");
    let com1_io = IO::new(
        layout::SERIAL_PORT as u16,
        layout::SERIAL_PORT as u16,
        1,
        layout::SERIAL_PORT_LEN as u8,
    );
    let com1_irq = Interrupt::new(true, true, false, false, layout::SERIAL_IRQ);
    let com1_crs = ResourceTemplate::new(vec![&com1_io, &com1_irq]);
    let com1_names = [
        Name::new(Path::new("_HID"), &com1_hid),
        Name::new(Path::new("_UID"), &0u8),
        Name::new(Path::new("_CRS"), &com1_crs),
    ];
    let [hid, uid, crs] = &com1_names;
    let com1 = Device::new(Path::new("COM1"), vec![hid, uid, crs]);

    // Each node owns its parts; build them first so the Device can borrow them.
    let parts: Vec<(String, u32, Memory32Fixed, Interrupt)> = virtio
        .iter()
        .enumerate()
        .map(|(i, w)| {
            (
                format!("V{i:03X}"),
                i as u32,
                Memory32Fixed::new(true, w.addr as u32, layout::VIRTIO_MMIO_SIZE as u32),
                Interrupt::new(true, true, false, false, w.irq),
            )
        })
        .collect();
    let crs: Vec<ResourceTemplate> = parts
        .iter()
        .map(|(_, _, mem, irq)| ResourceTemplate::new(vec![mem, irq]))
        .collect();
    let names: Vec<[Name; 3]> = parts
        .iter()
        .zip(&crs)
        .map(|((_, uid, _, _), crs)| {
            [
                Name::new(Path::new("_HID"), &"LNRO0005"),
                Name::new(Path::new("_UID"), uid),
                Name::new(Path::new("_CRS"), crs),
            ]
        })
        .collect();
    let devices: Vec<Device> = parts
        .iter()
        .zip(&names)
        .map(|((name, _, _, _), [hid, uid, crs])| {
            Device::new(Path::new(name), vec![hid as &dyn Aml, uid, crs])
        })
        .collect();
    let mut children: Vec<&dyn Aml> = vec![&com1];
    children.extend(devices.iter().map(|d| d as &dyn Aml));
    body.extend(bytes_of(&Scope::new(Path::new("\\_SB_"), children)));
    if vmgenid {
        body.extend(vmgenid_aml());
    }

    let mut table = Sdt::new(*b"DSDT", 36, 2, OEM_ID, *b"KITEDSDT", OEM_REVISION);
    table.append_slice(&body);
    table.as_slice().to_vec()
}

fn fadt(dsdt: GuestAddress) -> Vec<u8> {
    // IA-PC boot architecture flags: no VGA, no CMOS RTC.
    const VGA_NOT_PRESENT: u16 = 1 << 2;
    const CMOS_RTC_NOT_PRESENT: u16 = 1 << 5;
    let port = |p: u64| GAS::new(AddressSpace::SystemIo, 8, 0, AccessSize::ByteAccess, p);
    let mut fadt = FADTBuilder::new(OEM_ID, *b"KITEFACP", OEM_REVISION)
        .flag(Flags::HwReducedAcpi)
        .flag(Flags::ResetRegSup)
        .dsdt_64(dsdt.raw_value());
    fadt.iapc_boot_arch = (VGA_NOT_PRESENT | CMOS_RTC_NOT_PRESENT).into();
    fadt.sleep_control_reg = port(layout::ACPI_SLEEP_CONTROL_PORT);
    fadt.sleep_status_reg = port(layout::ACPI_SLEEP_STATUS_PORT);
    fadt.reset_reg = port(layout::ACPI_RESET_PORT);
    fadt.reset_value = layout::ACPI_RESET_VALUE;
    bytes_of(&fadt.finalize())
}

fn madt(cpus: u8) -> Vec<u8> {
    // MPS INTI flags: polarity and trigger "conforming to the bus".
    const CONFORMING: u16 = 0;
    const ALL_PROCESSORS: u8 = 0xff;
    let mut madt = MADT::new(
        OEM_ID,
        *b"KITEAPIC",
        OEM_REVISION,
        LocalInterruptController::Address(layout::APIC_ADDR as u32),
    );
    for cpu in 0..cpus {
        madt.add_structure(ProcessorLocalApic::new(cpu, cpu, EnabledStatus::Enabled));
    }
    madt.add_structure(IoApic::new(cpus, layout::IOAPIC_ADDR as u32, 0));
    madt.add_structure(InterruptSourceOverride {
        kind: 2,
        length: 10,
        bus: 0,
        source: 0,
        gsi: 2,
        flags: CONFORMING,
    });
    madt.add_structure(LocalApicNmi {
        kind: 4,
        length: 6,
        processor_uid: ALL_PROCESSORS,
        flags: CONFORMING,
        lint: 1,
    });
    bytes_of(&madt)
}

/// Build every table for `cpus` vCPUs and the virtio devices in `virtio`, and with `vmgenid`
/// the VM generation ID's devices.
pub fn build(cpus: u8, virtio: &[VirtioWindow], vmgenid: bool) -> Result<Tables, Error> {
    let align = |a: u64| a.next_multiple_of(16);
    let rsdp_addr = GuestAddress(layout::ACPI_START);
    let mut next = align(rsdp_addr.raw_value() + Rsdp::len() as u64);
    let mut place = |bytes: &Vec<u8>| {
        let at = GuestAddress(next);
        next = align(next + bytes.len() as u64);
        at
    };

    let dsdt = dsdt(virtio, vmgenid);
    let dsdt_addr = place(&dsdt);
    let fadt = fadt(dsdt_addr);
    let fadt_addr = place(&fadt);
    let madt = madt(cpus);
    let madt_addr = place(&madt);
    let mut xsdt = XSDT::new(OEM_ID, *b"KITEXSDT", OEM_REVISION);
    xsdt.add_entry(fadt_addr.raw_value());
    xsdt.add_entry(madt_addr.raw_value());
    let xsdt = bytes_of(&xsdt);
    let xsdt_addr = place(&xsdt);
    let rsdp = bytes_of(&Rsdp::new(OEM_ID, xsdt_addr.raw_value()));

    if next > layout::ACPI_END {
        return Err(Error::TooBig((next - layout::ACPI_START) as usize));
    }
    Ok(Tables {
        rsdp: rsdp_addr,
        blobs: vec![
            (rsdp_addr, rsdp),
            (xsdt_addr, xsdt),
            (fadt_addr, fadt),
            (madt_addr, madt),
            (dsdt_addr, dsdt),
        ],
    })
}

/// Build the tables and write them into guest memory; the RSDP's address.
pub fn write(
    mem: &GuestMem,
    cpus: u8,
    virtio: &[VirtioWindow],
    vmgenid: bool,
) -> Result<GuestAddress, Error> {
    let tables = build(cpus, virtio, vmgenid)?;
    for (addr, bytes) in &tables.blobs {
        mem.write_slice(bytes, *addr).map_err(Error::Write)?;
    }
    Ok(tables.rsdp)
}

/// Whether to write ACPI tables: `acpi` (not `--no-acpi`) unless the guest is told `acpi=off`
/// or `noapic`, which is logged.
///
/// `noapic` (in firectl's and Firecracker's documented default kernel options) tells Linux not
/// to use the IOAPIC, so its interrupts must come through the 8259 PIC. A hardware-reduced ACPI
/// platform (the FADT's HW_REDUCED_ACPI, as Kite's and Firecracker's) has no PIC: Linux then
/// takes the null PIC and leaves the in-kernel one unprogrammed, whose first interrupt (the
/// serial port's IRQ 4) arrives as vector 4 and kills the kernel (`overflow: 0000 [#1]`). With
/// the MP table alone Linux finds and programs the PIC and routes every ISA IRQ through it.
pub fn wanted(acpi: bool, cmdline: &str) -> bool {
    // Asked once per device set-up step; said once.
    static SAID: std::sync::Once = std::sync::Once::new();
    if acpi && off_in(cmdline) {
        SAID.call_once(|| log::info!(
            "acpi=off on the guest's command line: no ACPI tables, the virtio devices are named on the command line"
        ));
        return false;
    }
    if acpi && noapic_in(cmdline) {
        SAID.call_once(|| log::info!(
            "noapic on the guest's command line: no ACPI tables (a hardware-reduced ACPI platform has no 8259 PIC, which a guest without the IOAPIC needs); the MP table describes the CPUs and the virtio devices are named on the command line"
        ));
        return false;
    }
    acpi
}

/// Whether `cmdline` turns the IOAPIC off (`noapic`).
pub fn noapic_in(cmdline: &str) -> bool {
    cmdline.split_whitespace().any(|w| w == "noapic")
}

/// Whether `cmdline` turns ACPI off (`acpi=off`, which Kata Containers always passes): such a
/// guest never reads the tables, so its virtio devices must be named on the command line.
pub fn off_in(cmdline: &str) -> bool {
    cmdline.split_whitespace().any(|w| w == "acpi=off")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn windows(n: usize) -> Vec<VirtioWindow> {
        (0..n)
            .map(|i| VirtioWindow {
                addr: layout::VIRTIO_MMIO_START + i as u64 * layout::VIRTIO_MMIO_SIZE,
                irq: layout::FIRST_DEVICE_IRQ + i as u32,
            })
            .collect()
    }

    fn table<'a>(t: &'a Tables, sig: &[u8]) -> (u64, &'a [u8]) {
        t.blobs
            .iter()
            .find(|(_, b)| b.starts_with(sig))
            .map(|(a, b)| (a.raw_value(), b.as_slice()))
            .unwrap_or_else(|| panic!("no {}", String::from_utf8_lossy(sig)))
    }

    fn sum(b: &[u8]) -> u8 {
        b.iter().fold(0u8, |a, x| a.wrapping_add(*x))
    }

    fn u32_at(b: &[u8], at: usize) -> u32 {
        u32::from_le_bytes(b[at..at + 4].try_into().unwrap())
    }

    fn u64_at(b: &[u8], at: usize) -> u64 {
        u64::from_le_bytes(b[at..at + 8].try_into().unwrap())
    }

    #[test]
    fn every_checksum_is_zero_and_every_length_is_right() {
        let t = build(4, &windows(3), true).unwrap();
        let (_, rsdp) = table(&t, b"RSD PTR ");
        assert_eq!(sum(&rsdp[..20]), 0, "RSDP v1 checksum");
        assert_eq!(sum(rsdp), 0, "RSDP extended checksum");
        for sig in [b"XSDT", b"FACP", b"APIC", b"DSDT"] {
            let (_, b) = table(&t, sig);
            assert_eq!(sum(b), 0, "{}", String::from_utf8_lossy(sig));
            assert_eq!(u32_at(b, 4) as usize, b.len());
        }
    }

    #[test]
    fn pointers_resolve() {
        let t = build(2, &windows(1), true).unwrap();
        let (rsdp_at, rsdp) = table(&t, b"RSD PTR ");
        assert_eq!(rsdp_at, layout::ACPI_START);
        assert_eq!(rsdp_at % 16, 0);
        assert!(
            (0xe_0000..0x10_0000).contains(&rsdp_at),
            "in the BIOS scan area"
        );
        let (xsdt_at, xsdt) = table(&t, b"XSDT");
        assert_eq!(u64_at(rsdp, 24), xsdt_at);
        let entries: Vec<u64> = (36..xsdt.len())
            .step_by(8)
            .map(|o| u64_at(xsdt, o))
            .collect();
        let (fadt_at, fadt) = table(&t, b"FACP");
        let (madt_at, _) = table(&t, b"APIC");
        assert_eq!(entries, vec![fadt_at, madt_at]);
        let (dsdt_at, _) = table(&t, b"DSDT");
        assert_eq!(u64_at(fadt, 140), dsdt_at, "X_DSDT");
        assert_eq!(u32_at(fadt, 112) & (1 << 20), 1 << 20, "HW_REDUCED_ACPI");
        // Sleep control register: system I/O, 8 bits, at the port devices::acpi_pm serves.
        assert_eq!(fadt[244], 1);
        assert_eq!(u64_at(fadt, 248), layout::ACPI_SLEEP_CONTROL_PORT);
        assert_eq!(u64_at(fadt, 116 + 4), layout::ACPI_RESET_PORT);
        assert_eq!(fadt[128], layout::ACPI_RESET_VALUE);
    }

    #[test]
    fn madt_lists_one_enabled_lapic_per_vcpu_with_its_apic_id() {
        for cpus in [1u8, 2, 254] {
            let t = build(cpus, &[], true).unwrap();
            let (_, madt) = table(&t, b"APIC");
            assert_eq!(u32_at(madt, 36), layout::APIC_ADDR as u32);
            let mut at = 44;
            let mut lapics = Vec::new();
            let mut ioapic = None;
            let mut overrides = Vec::new();
            while at < madt.len() {
                let (kind, len) = (madt[at], madt[at + 1] as usize);
                match kind {
                    0 => lapics.push((madt[at + 2], madt[at + 3], u32_at(madt, at + 4))),
                    1 => ioapic = Some((madt[at + 2], u32_at(madt, at + 4))),
                    2 => overrides.push((madt[at + 3], u32_at(madt, at + 4))),
                    _ => {}
                }
                at += len;
            }
            assert_eq!(at, madt.len());
            let want: Vec<_> = (0..cpus).map(|c| (c, c, 1)).collect();
            assert_eq!(lapics, want, "uid, APIC id (= CPUID's), enabled");
            assert_eq!(ioapic, Some((cpus, layout::IOAPIC_ADDR as u32)));
            assert_eq!(overrides, vec![(0, 2)], "IRQ 0 -> GSI 2");
        }
    }

    #[test]
    fn tables_stay_out_of_usable_ram_the_kernel_and_the_mp_table() {
        // The most the CLI allows: 254 vCPUs, and a device on every IRQ line.
        let n = (layout::LAST_DEVICE_IRQ - layout::FIRST_DEVICE_IRQ + 1) as usize;
        let t = build(254, &windows(n), true).unwrap();
        for (addr, bytes) in &t.blobs {
            let (start, end) = (addr.raw_value(), addr.raw_value() + bytes.len() as u64);
            // e820's usable RAM is [0, EBDA_START) and [HIMEM_START, ...): the kernel, the
            // initrd and everything else Kite writes at or above HIMEM_START live there.
            assert!(start >= layout::EBDA_START, "{start:#x}");
            assert!(
                end <= layout::MPTABLE_CONFIG_ADDR,
                "{end:#x} reaches the MP table"
            );
            assert!(end <= layout::HIMEM_START);
        }
        let mut spans: Vec<_> = t
            .blobs
            .iter()
            .map(|(a, b)| (a.raw_value(), a.raw_value() + b.len() as u64))
            .collect();
        spans.sort();
        assert!(spans.windows(2).all(|w| w[0].1 <= w[1].0), "tables overlap");
    }

    #[test]
    fn dsdt_has_a_node_per_device() {
        let t = build(1, &windows(2), true).unwrap();
        let (_, dsdt) = table(&t, b"DSDT");
        let has = |s: &[u8]| dsdt.windows(s.len()).any(|w| w == s);
        assert!(has(b"LNRO0005"));
        assert!(has(b"V000") && has(b"V001") && !has(b"V002"));
        assert!(has(b"COM1") && has(b"_S5_"));
    }

    #[test]
    fn dsdt_has_the_vm_generation_id_and_its_event_device_only_when_asked() {
        let t = build(1, &windows(1), true).unwrap();
        let (_, dsdt) = table(&t, b"DSDT");
        let has = |s: &[u8]| dsdt.windows(s.len()).any(|w| w == s);
        // What Linux's vmgenid driver matches and evaluates, and the GED that notifies it.
        for s in [
            &b"VGEN"[..],
            b"VM_GEN_COUNTER",
            b"ADDR",
            b"GED_",
            b"ACPI0013",
            b"_EVT",
        ] {
            assert!(has(s), "{}", String::from_utf8_lossy(s));
        }
        // ADDR's low half: a DWord (0x0c) holding VMGENID_ADDR.
        let mut low = vec![0x0c];
        low.extend((layout::VMGENID_ADDR as u32).to_le_bytes());
        assert!(has(&low));
        // The GED's interrupt: an extended IRQ descriptor, consumer and edge, on its line.
        let mut irq = vec![0x89, 6, 0, 0b11, 1];
        irq.extend(layout::VMGENID_IRQ.to_le_bytes());
        assert!(has(&irq));
        // Notify (\_SB_.VGEN, 0x80).
        assert!(has(b"\x86\\\x2e_SB_VGEN\x0a\x80"));

        let t = build(1, &windows(1), false).unwrap();
        let (_, dsdt) = table(&t, b"DSDT");
        let has = |s: &[u8]| dsdt.windows(s.len()).any(|w| w == s);
        assert!(!has(b"VGEN") && !has(b"ACPI0013"));
    }

    #[test]
    fn acpi_off_is_a_whole_word() {
        assert!(off_in("console=ttyS0 acpi=off reboot=k"));
        assert!(!off_in("console=ttyS0 noacpi=off"));
        assert!(!off_in("acpi=force"));
    }

    #[test]
    fn noapic_means_no_tables() {
        let firectl = "console=ttyS0 noapic reboot=k panic=1 pci=off nomodules";
        assert!(!wanted(true, firectl));
        assert!(wanted(true, "console=ttyS0 reboot=k panic=1"));
        assert!(wanted(true, "console=ttyS0 nolapic_timer"));
        assert!(!wanted(false, "console=ttyS0"));
    }
}
