//! `irq`: the 16550's transmitter-holding-register-empty interrupt (IER bit 1) on IRQ 4,
//! routed by the IOAPIC to vector 0x34 on this CPU, counted by the ring-0 handler while
//! ring 3 runs with interrupts enabled. The bytes sent are the result line's own prefix,
//! `KITE-TEST irq `, so the console shows nothing else.

use super::Ctx;
use crate::apic::{IoApic, LocalApic, irq_count};
use crate::report::{self, Outcome};
use crate::serial::{self, COM1, COM1_IRQ, IER, IER_THR_EMPTY, IIR};
use crate::sys::{inb, ms_to_ticks, outb, rdtsc};
use crate::{fail, ok};

const TIMEOUT_MS: u64 = 1000;

/// `irqs=<interrupts counted>`; ok if at least one arrived within a second.
pub fn irq(_ctx: &mut Ctx) -> Outcome {
    LocalApic::enable();
    IoApic::route(COM1_IRQ, LocalApic::id());
    let before = irq_count(COM1_IRQ);

    serial::set_ack_thre(true);
    outb(COM1 + IER, IER_THR_EMPTY);
    inb(COM1 + IIR);
    report::prefix();

    let timeout = ms_to_ticks(TIMEOUT_MS);
    let t0 = rdtsc();
    while irq_count(COM1_IRQ) == before && rdtsc().wrapping_sub(t0) < timeout {
        core::hint::spin_loop();
    }
    // Let interrupts still in flight for the last bytes land before counting.
    let settle = rdtsc();
    while rdtsc().wrapping_sub(settle) < ms_to_ticks(1) {
        core::hint::spin_loop();
    }
    outb(COM1 + IER, 0);
    serial::set_ack_thre(false);
    IoApic::mask(COM1_IRQ);

    let irqs = irq_count(COM1_IRQ) - before;
    if irqs > 0 {
        ok!("irqs={irqs}")
    } else {
        fail!("irqs=0 (no interrupt on IOAPIC pin 4 within {TIMEOUT_MS} ms)")
    }
}
