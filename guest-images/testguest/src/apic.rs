//! Local APIC (xAPIC MMIO at 0xfee00000) and IOAPIC (0xfec00000), both programmed from
//! ring 3 through the user-accessible, uncached mapping of the MMIO window.
//!
//! Device interrupts: IOAPIC pin `p` is routed to vector `IRQ_VECTOR_BASE + p`, whose
//! ring-0 handler counts it in `irq_counts[p]` and sends the EOI (entry.S).

use core::sync::atomic::{AtomicU64, Ordering};

use crate::mem::mmio;

pub const LAPIC_BASE: u64 = 0xfee0_0000;
pub const IOAPIC_BASE: u64 = 0xfec0_0000;
pub const IRQ_VECTOR_BASE: u8 = 0x30;
pub const IRQ_PINS: usize = 32;
pub const SPURIOUS_VECTOR: u8 = 0xff;

const LAPIC_ID: u64 = 0x20;
const LAPIC_TPR: u64 = 0x80;
const LAPIC_SVR: u64 = 0xf0;
const LAPIC_ICR_LOW: u64 = 0x300;
const LAPIC_ICR_HIGH: u64 = 0x310;
const LAPIC_LVT_LINT0: u64 = 0x350;
const ICR_DELIVERY_PENDING: u32 = 1 << 12;
/// ICR destination shorthand "self", fixed delivery: the vector is the low byte.
const ICR_SELF_FIXED: u32 = 0x0004_0000;
pub const ICR_INIT: u32 = 0x0000_4500; // INIT, level assert
pub const ICR_STARTUP: u32 = 0x0000_4600; // start-up IPI; low byte = vector (page number)

unsafe extern "C" {
    /// Interrupt counts per IOAPIC pin, incremented by ring 0 (entry.S).
    static irq_counts: [AtomicU64; IRQ_PINS];
}

/// Interrupts counted on IOAPIC pin `pin` since boot.
pub fn irq_count(pin: u8) -> u64 {
    // SAFETY: irq_counts is a static array of IRQ_PINS u64s in .bss, only ever updated
    // atomically (`lock inc` in ring 0).
    unsafe { irq_counts[pin as usize % IRQ_PINS].load(Ordering::SeqCst) }
}

pub struct LocalApic;

impl LocalApic {
    fn read(reg: u64) -> u32 {
        mmio::read32(LAPIC_BASE + reg)
    }

    fn write(reg: u64, value: u32) {
        mmio::write32(LAPIC_BASE + reg, value)
    }

    /// This CPU's APIC ID.
    pub fn id() -> u8 {
        (Self::read(LAPIC_ID) >> 24) as u8
    }

    /// Software-enables the local APIC (spurious vector 0xff), accepts every priority and
    /// masks LINT0 (the 8259s are masked too; interrupts come via the IOAPIC).
    pub fn enable() {
        Self::write(LAPIC_TPR, 0);
        Self::write(LAPIC_LVT_LINT0, 1 << 16);
        Self::write(LAPIC_SVR, 0x100 | SPURIOUS_VECTOR as u32);
    }

    /// Sends this CPU a fixed interrupt on `vector` (taken once ring 3 runs with IF=1) and
    /// waits, briefly, for the local APIC to accept it. The local APIC must be enabled.
    pub fn self_ipi(vector: u8) {
        Self::send_ipi(0, ICR_SELF_FIXED | vector as u32);
    }

    /// Sends an IPI (`command` = ICR low word) to the CPU with APIC ID `dest` and waits,
    /// briefly, for the local APIC to accept it.
    pub fn send_ipi(dest: u8, command: u32) {
        Self::write(LAPIC_ICR_HIGH, (dest as u32) << 24);
        Self::write(LAPIC_ICR_LOW, command);
        for _ in 0..100_000 {
            if Self::read(LAPIC_ICR_LOW) & ICR_DELIVERY_PENDING == 0 {
                break;
            }
            core::hint::spin_loop();
        }
    }
}

pub struct IoApic;

impl IoApic {
    fn write(reg: u32, value: u32) {
        mmio::write32(IOAPIC_BASE, reg);
        mmio::write32(IOAPIC_BASE + 0x10, value);
    }

    #[allow(dead_code)]
    fn read(reg: u32) -> u32 {
        mmio::write32(IOAPIC_BASE, reg);
        mmio::read32(IOAPIC_BASE + 0x10)
    }

    /// Routes `pin` to vector `IRQ_VECTOR_BASE + pin` on the CPU with APIC ID `dest`:
    /// fixed delivery, physical destination, edge triggered, active high, unmasked. (The
    /// serial port's ISA IRQ and the virtio-mmio interrupts VMMs inject with irqfd are edge
    /// interrupts.)
    pub fn route(pin: u8, dest: u8) {
        let reg = 0x10 + 2 * pin as u32;
        Self::write(reg, 1 << 16); // masked while it changes
        Self::write(reg + 1, (dest as u32) << 24);
        Self::write(reg, (IRQ_VECTOR_BASE + pin) as u32);
    }

    pub fn mask(pin: u8) {
        Self::write(0x10 + 2 * pin as u32, 1 << 16);
    }
}
