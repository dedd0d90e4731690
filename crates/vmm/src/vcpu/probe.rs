//! Is the guest stopped for good? A guest without ACPI cannot power off: Linux's `poweroff`
//! and `halt` end with every CPU executing `hlt` with interrupts masked, which with KVM's
//! in-kernel irqchip never leaves the kernel. The event loop asks each vCPU (a flag, then a
//! kick out of KVM_RUN); each answers from its own thread, where KVM lets it read its state.
//! Two rounds in a row in which every vCPU answers "stopped" end the VM as a power-off.

use std::sync::atomic::{AtomicU8, Ordering};

use kvm_bindings::{KVM_MP_STATE_HALTED, KVM_MP_STATE_INIT_RECEIVED, KVM_MP_STATE_UNINITIALIZED};

const ASKED: u8 = 0;
const RUNNING: u8 = 1;
const STOPPED: u8 = 2;

/// RFLAGS.IF.
const RFLAGS_IF: u64 = 1 << 9;

/// Whether a vCPU in `mp_state` with `rflags` can never run again without an NMI, INIT or
/// SIPI: halted with interrupts masked, or never started (an AP the guest did not boot).
pub fn stopped_for_good(mp_state: u32, rflags: u64) -> bool {
    match mp_state {
        KVM_MP_STATE_HALTED => rflags & RFLAGS_IF == 0,
        KVM_MP_STATE_UNINITIALIZED | KVM_MP_STATE_INIT_RECEIVED => true,
        _ => false,
    }
}

/// One answer slot per vCPU.
#[derive(Debug)]
pub struct HaltProbe {
    answers: Vec<AtomicU8>,
    rounds: AtomicU8,
}

impl HaltProbe {
    pub fn new(vcpus: usize) -> Self {
        Self {
            answers: (0..vcpus).map(|_| AtomicU8::new(RUNNING)).collect(),
            rounds: AtomicU8::new(0),
        }
    }

    /// Event loop: take the last round's answers, then ask again (kick the vCPUs after this).
    /// True once two rounds in a row found every vCPU stopped.
    pub fn round(&self) -> bool {
        let all = self
            .answers
            .iter()
            .all(|a| a.swap(ASKED, Ordering::AcqRel) == STOPPED);
        let rounds = if all {
            self.rounds.load(Ordering::Acquire).saturating_add(1)
        } else {
            0
        };
        self.rounds.store(rounds, Ordering::Release);
        rounds >= 2
    }

    /// vCPU `index`: whether a question is waiting.
    pub fn asked(&self, index: usize) -> bool {
        self.answers
            .get(index)
            .is_some_and(|a| a.load(Ordering::Acquire) == ASKED)
    }

    /// vCPU `index`: the answer.
    pub fn answer(&self, index: usize, stopped: bool) {
        if let Some(a) = self.answers.get(index) {
            a.store(if stopped { STOPPED } else { RUNNING }, Ordering::Release);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kvm_bindings::KVM_MP_STATE_RUNNABLE;

    #[test]
    fn only_halted_with_interrupts_off_or_never_started_is_stopped() {
        assert!(stopped_for_good(KVM_MP_STATE_HALTED, 0x2));
        assert!(
            !stopped_for_good(KVM_MP_STATE_HALTED, 0x202),
            "idle: sti; hlt"
        );
        assert!(!stopped_for_good(KVM_MP_STATE_RUNNABLE, 0x2));
        assert!(stopped_for_good(KVM_MP_STATE_UNINITIALIZED, 0x2));
    }

    #[test]
    fn two_rounds_of_all_stopped_are_needed() {
        let p = HaltProbe::new(2);
        assert!(!p.round());
        p.answer(0, true);
        p.answer(1, true);
        assert!(!p.round(), "one round is not enough");
        assert!(p.asked(0) && p.asked(1));
        p.answer(0, true);
        p.answer(1, true);
        assert!(p.round());
    }

    #[test]
    fn a_running_or_silent_vcpu_resets_the_count() {
        let p = HaltProbe::new(2);
        p.answer(0, true);
        p.answer(1, true);
        assert!(!p.round());
        p.answer(0, true);
        p.answer(1, false);
        assert!(!p.round());
        p.answer(0, true);
        p.answer(1, true);
        assert!(!p.round(), "count restarted");
        // vCPU 1 did not answer (busy in user space when kicked): not stopped.
        p.answer(0, true);
        assert!(!p.round());
    }
}
