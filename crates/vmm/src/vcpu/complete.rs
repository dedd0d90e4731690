//! Instructions Kite finishes for a host whose KVM could not.
//!
//! On some hosts (a paravirtual KVM that emulates guest ring 0 instruction by instruction) KVM
//! stops with `KVM_EXIT_INTERNAL_ERROR`, suberror `KVM_INTERNAL_ERROR_EMULATION`, on a few
//! instructions its emulator does not know. Since Linux 5.16 KVM then hands over the bytes it
//! fetched (the `emulation_failure` member of `kvm_run`, flag
//! `KVM_INTERNAL_ERROR_EMULATION_FLAG_INSTRUCTION_BYTES`): `data[0]` holds the flags, the next
//! byte the number of bytes fetched and the bytes follow. KVM has queued an exception for the
//! instruction, which the VMM must clear if it completes the instruction itself.
//!
//! This module is the table: pure data and parsing, no KVM calls. A host that gives no bytes
//! gets no guess: the VM ends as it would without this table.

use std::sync::atomic::{AtomicU64, Ordering};

/// `KVM_INTERNAL_ERROR_EMULATION`.
pub const SUBERROR_EMULATION: u32 = 1;
/// `KVM_INTERNAL_ERROR_EMULATION_FLAG_INSTRUCTION_BYTES`.
const FLAG_INSTRUCTION_BYTES: u64 = 1;
/// Bytes of `kvm_run.internal.data` that hold flags, length and instruction (3 u64 words).
const WORDS_WITH_BYTES: usize = 3;
/// Most bytes an x86 instruction (and KVM's buffer) can hold.
const MAX_INSN: usize = 15;

/// The instruction bytes KVM fetched at the failing RIP.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct InsnBytes {
    bytes: [u8; MAX_INSN],
    len: usize,
}

impl InsnBytes {
    pub fn as_slice(&self) -> &[u8] {
        &self.bytes[..self.len]
    }

    /// The bytes as hex, space-separated, for a message.
    pub fn hex(&self) -> String {
        self.as_slice()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<Vec<_>>()
            .join(" ")
    }
}

/// Why the internal error carries no instruction to look at.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum NoBytes {
    #[error("not an emulation failure")]
    NotEmulation,
    #[error("the host gave no instruction bytes")]
    NotProvided,
    #[error("the host gave a malformed instruction buffer")]
    Malformed,
}

/// Find the instruction bytes in an internal error's `suberror`, `ndata` and `data` words.
pub fn instruction_bytes(suberror: u32, ndata: u32, data: &[u64]) -> Result<InsnBytes, NoBytes> {
    if suberror != SUBERROR_EMULATION {
        return Err(NoBytes::NotEmulation);
    }
    let ndata = usize::try_from(ndata).map_err(|_| NoBytes::Malformed)?;
    if ndata < WORDS_WITH_BYTES || data.len() < WORDS_WITH_BYTES {
        return Err(NoBytes::NotProvided);
    }
    if data[0] & FLAG_INSTRUCTION_BYTES == 0 {
        return Err(NoBytes::NotProvided);
    }
    let mut raw = [0u8; 16];
    raw[..8].copy_from_slice(&data[1].to_le_bytes());
    raw[8..].copy_from_slice(&data[2].to_le_bytes());
    let len = usize::from(raw[0]);
    if len == 0 || len > MAX_INSN {
        return Err(NoBytes::Malformed);
    }
    let mut bytes = [0u8; MAX_INSN];
    bytes.copy_from_slice(&raw[1..]);
    Ok(InsnBytes { bytes, len })
}

/// An instruction Kite knows how to finish, and how.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Completion {
    /// `int3` (0xCC): a trap, so the guest sees #BP with RIP after the instruction. Linux
    /// executes one in ring 0 as a self-test of its text-patching, and kprobes use it.
    Int3,
    /// `fwait` (0x9B): waits for pending unmasked x87 exceptions. With none pending (x87 status
    /// word ES clear) and no #NM due (not CR0.TS with CR0.MP), it does nothing. Linux executes
    /// it when it drops a task's FPU state, on every exec and exit.
    Fwait,
}

/// What the vCPU must do to complete an instruction.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Action {
    /// Bytes to advance RIP by.
    pub advance: u64,
    /// Exception vector to inject after advancing, if any.
    pub inject: Option<u8>,
}

/// `#BP`.
pub const VECTOR_BP: u8 = 3;

impl Completion {
    /// Look up the instruction at the start of `insn`. Only exact, prefix-free encodings are
    /// known: anything else is left to end the VM.
    pub fn lookup(insn: &[u8]) -> Option<Completion> {
        match insn.first()? {
            0xcc => Some(Completion::Int3),
            0x9b => Some(Completion::Fwait),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Completion::Int3 => "int3",
            Completion::Fwait => "fwait",
        }
    }

    /// The action, given what the instruction depends on: the x87 status word and CR0. `Err`
    /// says why the instruction would not be a no-op here (Kite does not raise #MF or #NM).
    pub fn action(self, fpu_status: u16, cr0: u64) -> Result<Action, &'static str> {
        match self {
            Completion::Int3 => Ok(Action {
                advance: 1,
                inject: Some(VECTOR_BP),
            }),
            Completion::Fwait => {
                const FSW_ES: u16 = 1 << 7;
                const CR0_MP: u64 = 1 << 1;
                const CR0_TS: u64 = 1 << 3;
                if fpu_status & FSW_ES != 0 {
                    return Err("an unmasked x87 exception is pending (#MF due)");
                }
                if cr0 & (CR0_MP | CR0_TS) == CR0_MP | CR0_TS {
                    return Err("CR0.TS and CR0.MP are set (#NM due)");
                }
                Ok(Action {
                    advance: 1,
                    inject: None,
                })
            }
        }
    }
}

/// How many instructions of each kind were completed, across all vCPUs.
#[derive(Debug, Default)]
pub struct Counts {
    int3: AtomicU64,
    fwait: AtomicU64,
}

impl Counts {
    pub fn add(&self, c: Completion) {
        let counter = match c {
            Completion::Int3 => &self.int3,
            Completion::Fwait => &self.fwait,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// `(name, count)` for each instruction Kite completes (the metrics line).
    pub fn snapshot(&self) -> Vec<(&'static str, u64)> {
        vec![
            (Completion::Int3.name(), self.int3.load(Ordering::Relaxed)),
            (Completion::Fwait.name(), self.fwait.load(Ordering::Relaxed)),
        ]
    }

    /// "completed 14 instructions the host's KVM could not: int3 1, fwait 13", or `None`.
    pub fn summary(&self) -> Option<String> {
        let parts = [
            (Completion::Int3, self.int3.load(Ordering::Relaxed)),
            (Completion::Fwait, self.fwait.load(Ordering::Relaxed)),
        ];
        let total: u64 = parts.iter().map(|&(_, n)| n).sum();
        if total == 0 {
            return None;
        }
        let list = parts
            .iter()
            .filter(|&&(_, n)| n > 0)
            .map(|&(c, n)| format!("{} {n}", c.name()))
            .collect::<Vec<_>>()
            .join(", ");
        let noun = if total == 1 {
            "instruction"
        } else {
            "instructions"
        };
        Some(format!(
            "completed {total} {noun} the host's KVM could not: {list}"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The data words KVM writes for an emulation failure with `insn` fetched.
    fn data_with(insn: &[u8]) -> [u64; 4] {
        let mut raw = [0x90u8; 16];
        raw[0] = MAX_INSN as u8;
        raw[1..1 + insn.len()].copy_from_slice(insn);
        let lo = u64::from_le_bytes(raw[..8].try_into().unwrap());
        let hi = u64::from_le_bytes(raw[8..].try_into().unwrap());
        [FLAG_INSTRUCTION_BYTES, lo, hi, 0]
    }

    #[test]
    fn parses_the_bytes_after_the_length_byte() {
        let data = data_with(&[0xcc, 0x0f, 0x1f]);
        let insn = instruction_bytes(1, 3, &data).unwrap();
        assert_eq!(insn.as_slice().len(), 15);
        assert_eq!(&insn.as_slice()[..3], &[0xcc, 0x0f, 0x1f]);
        assert_eq!(insn.as_slice()[14], 0x90);
        assert!(insn.hex().starts_with("cc 0f 1f 90"));
    }

    #[test]
    fn shorter_fetch_keeps_its_length() {
        let mut data = data_with(&[0x9b]);
        data[1] = (data[1] & !0xff) | 2;
        let insn = instruction_bytes(1, 3, &data).unwrap();
        assert_eq!(insn.as_slice(), &[0x9b, 0x90]);
    }

    #[test]
    fn int3_injects_bp_after_it() {
        let insn = instruction_bytes(1, 3, &data_with(&[0xcc])).unwrap();
        let c = Completion::lookup(insn.as_slice()).unwrap();
        assert_eq!(c, Completion::Int3);
        assert_eq!(
            c.action(0, 0x8005_0033).unwrap(),
            Action {
                advance: 1,
                inject: Some(3)
            }
        );
    }

    #[test]
    fn fwait_is_stepped_over_unless_an_exception_is_due() {
        let insn = instruction_bytes(1, 3, &data_with(&[0x9b, 0xdb, 0xe3])).unwrap();
        let c = Completion::lookup(insn.as_slice()).unwrap();
        assert_eq!(c, Completion::Fwait);
        let cr0 = 0x8005_0033; // PE MP ET NE WP AM PG, TS clear
        assert_eq!(
            c.action(0, cr0).unwrap(),
            Action {
                advance: 1,
                inject: None
            }
        );
        // ES set: #MF would be due.
        assert!(c.action(0x0081, cr0).is_err());
        // TS and MP: #NM would be due.
        assert!(c.action(0, cr0 | 8).is_err());
        // TS without MP: fwait ignores TS.
        assert!(c.action(0, (cr0 & !2) | 8).is_ok());
    }

    #[test]
    fn unknown_instructions_are_not_completed() {
        // xrstor, cmpxchg16b, popcnt, clac, a prefixed int3.
        for insn in [
            &[0x0f, 0xae, 0x2f][..],
            &[0x48, 0x0f, 0xc7, 0x0e],
            &[0xf3, 0x48, 0x0f, 0xb8, 0xc7],
            &[0x0f, 0x01, 0xca],
            &[0x66, 0xcc],
        ] {
            let parsed = instruction_bytes(1, 3, &data_with(insn)).unwrap();
            assert_eq!(Completion::lookup(parsed.as_slice()), None, "{insn:02x?}");
        }
        assert_eq!(Completion::lookup(&[]), None);
    }

    #[test]
    fn no_guessing_without_bytes() {
        let mut data = data_with(&[0xcc]);
        // Another suberror.
        assert_eq!(instruction_bytes(3, 3, &data), Err(NoBytes::NotEmulation));
        // Too few words, from the host or in the buffer.
        assert_eq!(instruction_bytes(1, 2, &data), Err(NoBytes::NotProvided));
        assert_eq!(
            instruction_bytes(1, 3, &data[..2]),
            Err(NoBytes::NotProvided)
        );
        assert_eq!(instruction_bytes(1, 0, &data), Err(NoBytes::NotProvided));
        // A host that does not set the flag (older KVM: data[0] is something else).
        data[0] = 0;
        assert_eq!(instruction_bytes(1, 3, &data), Err(NoBytes::NotProvided));
        // A length of 0 or past the buffer.
        let mut data = data_with(&[0xcc]);
        data[1] &= !0xff;
        assert_eq!(instruction_bytes(1, 3, &data), Err(NoBytes::Malformed));
        data[1] |= 16;
        assert_eq!(instruction_bytes(1, 3, &data), Err(NoBytes::Malformed));
    }

    #[test]
    fn summary_counts_each_kind() {
        let c = Counts::default();
        assert_eq!(c.summary(), None);
        c.add(Completion::Int3);
        assert_eq!(
            c.summary().unwrap(),
            "completed 1 instruction the host's KVM could not: int3 1"
        );
        for _ in 0..13 {
            c.add(Completion::Fwait);
        }
        assert_eq!(
            c.summary().unwrap(),
            "completed 14 instructions the host's KVM could not: int3 1, fwait 13"
        );
    }
}
