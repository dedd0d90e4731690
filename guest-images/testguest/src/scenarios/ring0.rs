//! `ring0-insns`: `int3` and `fwait` executed in ring 0, on purpose.
//!
//! These are the two instructions Linux runs in ring 0 that the emulated-ring-0 KVM of the
//! development machines cannot emulate: Linux's int3 self-test and kprobes (`int3`), and
//! `fpu__drop()` on every exec and exit (`fwait`). There Kite completes them (RIP + 1, #BP
//! injected for `int3`); on a hardware KVM host the CPU runs them. Either way the guest must
//! see what a CPU does:
//!
//! * `int3`: a trap through IDT vector 3, taken once, from ring 0 (CS 0x08), with the RIP in
//!   the frame just past the one-byte 0xCC; execution goes on there after `iretq`.
//! * `fwait` after `fninit` (no x87 exception pending): nothing happens, execution goes on.
//!
//! How it gets to ring 0: ring 3 installs two gates of its own in the IDT (which is in the
//! user-writable image), vector 3 (#BP) and [`RING0_VECTOR`], and sends itself a fixed IPI
//! on [`RING0_VECTOR`] through the local APIC. The `int 0x80` gate cannot be used: on the
//! development machines a software interrupt (`int n`) in guest ring 3 raises #UD. The
//! IPI's handler runs the instructions in ring 0, EOIs and returns to ring 3, which then
//! puts the original gates back and checks what the handlers recorded. Both handlers are a
//! dozen instructions of assembly: no Rust code runs in ring 0.

use core::sync::atomic::{AtomicU64, Ordering};

use super::Ctx;
use crate::apic::LocalApic;
use crate::report::Outcome;
use crate::sys::{ms_to_ticks, rdtsc};
use crate::{fail, ok};

/// The kernel code selector (entry.S's GDT): the CS a trap frame from ring 0 holds.
const KERNEL_CS: u64 = 0x08;
/// #BP.
const VECTOR_BP: usize = 3;
/// The self-IPI that runs the instructions in ring 0: a vector no device or exception uses.
const RING0_VECTOR: u8 = 0x50;
/// Present, DPL 0, 64-bit interrupt gate.
const GATE_INTERRUPT_DPL0: u64 = 0x8e;
/// How long ring 3 waits for the IPI's handler to have run.
const TIMEOUT_MS: u64 = 1000;

/// Times the #BP handler ran.
static BP_RUNS: AtomicU64 = AtomicU64::new(0);
/// RIP in the #BP handler's frame (the last time it ran).
static BP_RIP: AtomicU64 = AtomicU64::new(0);
/// CS in that frame.
static BP_CS: AtomicU64 = AtomicU64::new(0);
/// How far the ring-0 code got: 1 in ring 0 (before `int3`), 2 after `int3`, 3 after
/// `fwait`, 4 done (EOI sent, about to return to ring 3).
static REACHED: AtomicU64 = AtomicU64::new(0);

core::arch::global_asm!(
    r#"
    .pushsection .text.ring0_insns, "ax"
    .globl ring0_insns_bp_handler, ring0_insns_ipi_handler
    .globl ring0_insns_int3, ring0_insns_after_int3

/* #BP (vector 3, a trap, no error code): count, record the frame's RIP and CS, and return
 * to that RIP. Stack: RIP, CS, RFLAGS, RSP, SS. */
ring0_insns_bp_handler:
    push %rax
    incq {bp_runs}(%rip)
    mov 8(%rsp), %rax
    mov %rax, {bp_rip}(%rip)
    mov 16(%rsp), %rax
    mov %rax, {bp_cs}(%rip)
    pop %rax
    iretq

/* The self-IPI: int3 and fwait in ring 0, then EOI and back to ring 3. Ring 3 runs no x87
 * code, so fninit loses nothing of its state. */
ring0_insns_ipi_handler:
    push %rax
    movq $1, {reached}(%rip)
ring0_insns_int3:
    int3
ring0_insns_after_int3:
    movq $2, {reached}(%rip)
    fninit
    fwait
    movq $3, {reached}(%rip)
    mov ${lapic_eoi}, %eax
    movl $0, (%rax)
    movq $4, {reached}(%rip)
    pop %rax
    iretq

    .popsection
"#,
    bp_runs = sym BP_RUNS,
    bp_rip = sym BP_RIP,
    bp_cs = sym BP_CS,
    reached = sym REACHED,
    lapic_eoi = const 0xfee0_00b0u32,
    options(att_syntax)
);

unsafe extern "C" {
    // Labels in the assembly above: handlers entered through the IDT, and the `int3` and
    // the instruction after it. Declared as functions only to take their addresses.
    fn ring0_insns_bp_handler();
    fn ring0_insns_ipi_handler();
    fn ring0_insns_int3();
    fn ring0_insns_after_int3();
    /// entry.S's IDT: 256 16-byte gates.
    static mut idt: [u64; 512];
}

/// The address of an assembly label declared as a function above.
fn addr(label: unsafe extern "C" fn()) -> u64 {
    label as usize as u64
}

/// The two quadwords of a 64-bit interrupt gate to `handler` in the kernel code segment.
fn interrupt_gate(handler: u64) -> [u64; 2] {
    let lo = (handler & 0xffff)
        | (KERNEL_CS << 16)
        | (GATE_INTERRUPT_DPL0 << 40)
        | (((handler >> 16) & 0xffff) << 48);
    [lo, handler >> 32]
}

/// Replaces IDT gate `vector`; returns the gate it held.
fn set_gate(vector: usize, gate: [u64; 2]) -> [u64; 2] {
    let base = (&raw mut idt).cast::<u64>();
    // SAFETY: the IDT is 256 16-byte gates in the image, mapped writable for ring 3, and
    // vector < 256. Only this CPU runs, and nothing raises this vector while the two halves
    // are written (ring 3 sends the IPI only after both gates are in place).
    unsafe {
        let p = base.add(vector * 2);
        let old = [p.read_volatile(), p.add(1).read_volatile()];
        p.write_volatile(gate[0]);
        p.add(1).write_volatile(gate[1]);
        old
    }
}

/// `bp_runs=1 int3_at=0x<addr> bp_rip=0x<addr + 1> bp_cs=0x8 fwait=1`.
pub fn ring0_insns(_ctx: &mut Ctx) -> Outcome {
    let int3_at = addr(ring0_insns_int3);
    let after_int3 = addr(ring0_insns_after_int3);
    // SAFETY: int3_at is an address in the image's .text, mapped readable for ring 3.
    let byte = unsafe { (int3_at as *const u8).read_volatile() };
    if byte != 0xcc || after_int3 != int3_at + 1 {
        return fail!(
            "setup: the instruction at {int3_at:#x} is {byte:#04x}, {} bytes long, not the one-byte int3 (0xcc)",
            after_int3.wrapping_sub(int3_at)
        );
    }

    let old_bp = set_gate(VECTOR_BP, interrupt_gate(addr(ring0_insns_bp_handler)));
    let old_ipi = set_gate(
        RING0_VECTOR as usize,
        interrupt_gate(addr(ring0_insns_ipi_handler)),
    );
    LocalApic::enable();
    LocalApic::self_ipi(RING0_VECTOR);
    let deadline = rdtsc().wrapping_add(ms_to_ticks(TIMEOUT_MS));
    while REACHED.load(Ordering::SeqCst) < 4 && rdtsc() < deadline {
        core::hint::spin_loop();
    }
    let reached = REACHED.load(Ordering::SeqCst);
    set_gate(RING0_VECTOR as usize, old_ipi);
    set_gate(VECTOR_BP, old_bp);

    let runs = BP_RUNS.load(Ordering::SeqCst);
    let rip = BP_RIP.load(Ordering::SeqCst);
    let cs = BP_CS.load(Ordering::SeqCst);
    match reached {
        0 => {
            return fail!(
                "ring 0: the self-IPI on vector {RING0_VECTOR:#x} was not taken within {TIMEOUT_MS} ms"
            );
        }
        1 => return fail!("int3: execution did not go on after it (bp_runs={runs})"),
        2 => return fail!("fwait: execution did not go on after it"),
        3 => return fail!("ring 0: the IPI handler did not finish"),
        _ => {}
    }
    if runs != 1 {
        return fail!("int3: the #BP handler ran {runs} times, not once");
    }
    if cs != KERNEL_CS {
        return fail!("int3: CS in the #BP frame is {cs:#x}, not {KERNEL_CS:#x} (ring 0)");
    }
    if rip != after_int3 {
        return fail!(
            "int3: RIP in the #BP frame is {rip:#x}, not {after_int3:#x} (right after the int3 at {int3_at:#x})"
        );
    }
    ok!("bp_runs={runs} int3_at={int3_at:#x} bp_rip={rip:#x} bp_cs={cs:#x} fwait=1")
}
