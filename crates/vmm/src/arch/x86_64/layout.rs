//! Every guest-physical address, port and IRQ number Kite uses on x86-64, in one place.

/// GDT built for the 64-bit boot protocol.
pub const GDT_ADDR: u64 = 0x500;
/// Empty IDT loaded at boot (the kernel installs its own).
pub const IDT_ADDR: u64 = 0x520;
/// The zero page (`struct boot_params`); RSI points here at entry.
pub const ZERO_PAGE_ADDR: u64 = 0x7000;
/// Initial stack pointer.
pub const BOOT_STACK_ADDR: u64 = 0x8ff0;
/// Identity page tables: PML4, one PDPT, four page directories of 2 MiB pages (first 4 GiB).
pub const PML4_ADDR: u64 = 0x9000;
pub const PDPT_ADDR: u64 = 0xa000;
pub const PD_ADDR: u64 = 0xb000;
/// Number of page directories after PD_ADDR; each maps 1 GiB.
pub const PD_COUNT: u64 = 4;
/// Kernel command line.
pub const CMDLINE_ADDR: u64 = 0x20000;
/// Largest command line (with its NUL) the x86 kernel accepts (COMMAND_LINE_SIZE).
pub const CMDLINE_MAX_SIZE: usize = 2048;
/// Start of the extended BIOS data area, where the MP floating pointer lives; usable low RAM
/// ends here.
pub const EBDA_START: u64 = 0x9fc00;
/// The MP configuration table, at the start of the BIOS area 0xf0000-0xfffff: not e820 RAM, so
/// the kernel never reuses it.
pub const MPTABLE_CONFIG_ADDR: u64 = 0xf_0000;
/// The ACPI tables, RSDP first, in the BIOS area below the VM generation ID (the kernel scans
/// 0xe0000-0xfffff for the RSDP; none of it is e820 RAM).
pub const ACPI_START: u64 = 0xe_0000;
pub const ACPI_END: u64 = VMGENID_ADDR;
/// The VM generation ID's 16 bytes (devices::vmgenid), on the last page below the MP table:
/// not e820 RAM either, so the guest never reuses it.
pub const VMGENID_ADDR: u64 = 0xe_f000;
// Its 16 bytes sit between the ACPI tables and the MP table, out of e820's RAM, 8-byte aligned
// (as the VMGENID spec asks).
const _: () = assert!(
    VMGENID_ADDR >= ACPI_END
        && VMGENID_ADDR >= EBDA_START
        && VMGENID_ADDR + 16 <= MPTABLE_CONFIG_ADDR
        && VMGENID_ADDR.is_multiple_of(8)
);
/// End of the BIOS area (and of the first MiB).
pub const BIOS_AREA_END: u64 = 0x10_0000;
/// Start of RAM above the legacy hole; the kernel is loaded here or above.
pub const HIMEM_START: u64 = 0x10_0000;

/// The 32-bit MMIO gap: no RAM here, it is left for devices, the IOAPIC and the LAPIC.
pub const MMIO_GAP_START: u64 = 0xc000_0000;
pub const MMIO_GAP_END: u64 = 0x1_0000_0000;
/// First 4 KiB of the gap: the boot-timer MMIO register.
pub const BOOT_TIMER_ADDR: u64 = 0xd000_0000;
/// virtio-mmio windows are handed out from here, 4 KiB each.
pub const VIRTIO_MMIO_START: u64 = 0xd000_1000;
pub const VIRTIO_MMIO_SIZE: u64 = 0x1000;
pub const VIRTIO_MMIO_END: u64 = 0xe000_0000;
pub const IOAPIC_ADDR: u64 = 0xfec0_0000;
pub const APIC_ADDR: u64 = 0xfee0_0000;

/// Legacy ports.
pub const SERIAL_PORT: u64 = 0x3f8;
pub const SERIAL_PORT_LEN: u64 = 8;
pub const I8042_PORT: u64 = 0x60;
pub const I8042_PORT_LEN: u64 = 5;
/// The FADT's hardware-reduced registers (devices::acpi_pm): sleep control, sleep status, reset.
pub const ACPI_SLEEP_CONTROL_PORT: u64 = 0x600;
pub const ACPI_SLEEP_STATUS_PORT: u64 = 0x601;
pub const ACPI_RESET_PORT: u64 = 0x602;
pub const ACPI_PM_PORT_LEN: u64 = 3;
/// What the guest writes to the reset register to reset.
pub const ACPI_RESET_VALUE: u8 = 0x1;

/// IRQ lines (IOAPIC pins).
pub const SERIAL_IRQ: u32 = 4;
/// The ACPI generic event device's line (an ISA line no device uses: COM2's), which tells the
/// guest its VM generation ID changed (devices::vmgenid).
pub const VMGENID_IRQ: u32 = 3;
/// The i8042's keyboard interrupt.
pub const KEYBOARD_IRQ: u32 = 1;
pub const FIRST_DEVICE_IRQ: u32 = 5;
pub const LAST_DEVICE_IRQ: u32 = 23;
/// Number of IOAPIC pins the in-kernel irqchip has.
pub const IOAPIC_PINS: u32 = 24;

/// Where KVM puts the TSS it needs (three pages just below the gap end, inside the gap).
pub const KVM_TSS_ADDR: usize = 0xfffb_d000;
