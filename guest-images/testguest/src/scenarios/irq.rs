//! `irq`: the 16550's transmitter-holding-register-empty interrupt (IER bit 1) on IRQ 4,
//! routed by the IOAPIC to vector 0x34 on this CPU, counted by the ring-0 handler while
//! ring 3 runs with interrupts enabled.
//!
//! The bytes sent are the result line's own prefix, `KITE-TEST irq `, so the console shows
//! nothing else. Like an interrupt-driven driver, it sends the next byte only after the
//! interrupt for the previous one arrived (or a per-byte wait ran out), then acknowledges
//! it by reading IIR. Sending without waiting lets several THRE events merge into one
//! interrupt (edge interrupts injected through an irqfd coalesce while one is pending),
//! which makes the count depend on host scheduling. Normally irqs = 1 (enabling the
//! interrupt with the transmitter empty raises it) + 14 (one per byte).

use super::Ctx;
use crate::apic::{IoApic, LocalApic, irq_count};
use crate::report::{self, Outcome};
use crate::serial::{self, COM1, COM1_IRQ, IER, IER_THR_EMPTY, IIR};
use crate::sys::{inb, ms_to_ticks, outb, rdtsc};
use crate::{fail, ok};

/// Overall time limit.
const TIMEOUT_MS: u64 = 2000;
/// Longest wait for one byte's interrupt.
const PER_BYTE_MS: u64 = 200;

/// Waits until the interrupt count of COM1 exceeds `count`, at most `ticks` TSC ticks or
/// until `deadline`; returns the new count.
fn wait_for_irq(count: u64, ticks: u64, deadline: u64) -> u64 {
    let start = rdtsc();
    loop {
        let now_count = irq_count(COM1_IRQ);
        let now = rdtsc();
        if now_count > count || now.wrapping_sub(start) >= ticks || now >= deadline {
            return now_count;
        }
        core::hint::spin_loop();
    }
}

/// `irqs=<interrupts counted>`; ok if at least one arrived within the time limit.
pub fn irq(_ctx: &mut Ctx) -> Outcome {
    LocalApic::enable();
    IoApic::route(COM1_IRQ, LocalApic::id());
    let before = irq_count(COM1_IRQ);
    let per_byte = ms_to_ticks(PER_BYTE_MS);
    let deadline = rdtsc() + ms_to_ticks(TIMEOUT_MS);

    // The transmitter is empty, so enabling its interrupt raises one at once.
    outb(COM1 + IER, IER_THR_EMPTY);
    let mut count = wait_for_irq(before, per_byte, deadline);
    inb(COM1 + IIR);
    report::prefix_via(|b| {
        serial::putb(b);
        count = wait_for_irq(count, per_byte, deadline);
        inb(COM1 + IIR);
    });
    outb(COM1 + IER, 0);
    IoApic::mask(COM1_IRQ);

    let irqs = irq_count(COM1_IRQ) - before;
    if irqs > 0 {
        ok!("irqs={irqs}")
    } else {
        fail!("irqs=0 (no interrupt on IOAPIC pin 4 within {TIMEOUT_MS} ms)")
    }
}
