//! What Kite does for a guest on a host whose KVM emulates guest ring 0.
//!
//! Some hosts run KVM without VT-x/AMD-V under it (a paravirtual KVM inside a cloud VM, the
//! `kvm_pvm` module): guest ring-0 code is emulated instruction by instruction. Linux runs
//! there, slowly, if it avoids the instructions that emulator refuses and the hypercalls that
//! never return. Kite does that for the guest, so that a user needs to know none of it:
//!
//! * command-line words: `noxsave` (the emulator has no `xrstor`; the kernel then also drops
//!   everything that depends on XSAVE, such as AVX) and `clearcpuid=popcnt,smap,smep,cx16`
//!   (`popcnt` in patched alternatives, `clac`/`stac`, `cmpxchg16b` in SLUB); and, for speed,
//!   `erms,fsrm` in the same list (the emulator runs a `rep` string instruction one iteration
//!   at a time, so the kernel's byte-wise `rep movsb`/`rep stosb`, chosen when these are set,
//!   costs eight times the iterations of the `rep movsq` it uses otherwise) and
//!   `noreplace-smp` (a one-vCPU guest otherwise rewrites every `lock` prefix of the kernel
//!   with one text_poke each, seconds of emulated ring 0); `rcupdate.rcu_cpu_stall_suppress=1`
//!   (on a busy host the emulated kernel falls behind its RCU grace periods, and the stall
//!   report's NMI backtrace runs `lsl`, which the emulator refuses: the VM ended with a KVM
//!   internal error mid-boot; stalls are expected there, so only the report is dropped); each
//!   only if the command line does not already set that option. These go on the command line, not into CPUID: on such a
//!   host the guest kernel reads leaf 7 from the CPU itself, whatever KVM_SET_CPUID2 says;
//! * CPUID leaf 0x4000_0001: KVM_FEATURE_PV_SEND_IPI, PV_UNHALT and PV_SCHED_YIELD cleared,
//!   because their hypercalls (`vmcall`) never come back there: a second vCPU sending an IPI
//!   that way hangs the boot at `x86: Booting SMP configuration:`.
//!
//! The instructions the emulator stops on anyway (`int3`, `fwait`) are completed by the vCPU
//! loop whatever the host (see `vcpu::complete`): that is exact, not a workaround.

use std::path::Path;

use kvm_bindings::CpuId;

/// `--ring0-workarounds`: when to apply what this module does.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Mode {
    /// When the host looks like one whose KVM emulates ring 0.
    #[default]
    Auto,
    /// Always.
    On,
    /// Never.
    Off,
}

/// Words added to the kernel command line.
pub const CMDLINE_WORDS: [&str; 4] = [
    "noxsave",
    "clearcpuid=popcnt,smap,smep,cx16,erms,fsrm",
    "noreplace-smp",
    "rcupdate.rcu_cpu_stall_suppress=1",
];

/// CPUID leaf of KVM's paravirtual features.
const LEAF_KVM_FEATURES: u32 = 0x4000_0001;
const KVM_FEATURE_PV_UNHALT: u32 = 1 << 7;
const KVM_FEATURE_PV_SEND_IPI: u32 = 1 << 11;
const KVM_FEATURE_PV_SCHED_YIELD: u32 = 1 << 13;
const HYPERCALL_FEATURES: u32 =
    KVM_FEATURE_PV_UNHALT | KVM_FEATURE_PV_SEND_IPI | KVM_FEATURE_PV_SCHED_YIELD;

/// Why the host looks like one whose KVM emulates ring 0, or `None` if it does not.
/// `cpuinfo` and `modules` are the texts of /proc/cpuinfo and /proc/modules.
pub fn detect_from(cpuinfo: &str, modules: &str) -> Option<&'static str> {
    let pvm = modules
        .lines()
        .any(|l| l.split_whitespace().next() == Some("kvm_pvm"));
    if pvm {
        return Some("the kvm_pvm module is loaded");
    }
    let hw = cpuinfo
        .lines()
        .filter(|l| l.starts_with("flags"))
        .any(|l| l.split_whitespace().any(|f| f == "vmx" || f == "svm"));
    detect_hw(hw)
}

/// [`detect_from`]'s answer for this host, without reading either file (both cost, on every
/// `kite run`: the kernel makes /proc/cpuinfo afresh, its `cpu MHz` lines asking each CPU):
/// a module, loaded or built in (as kvm_pvm is on some hosts, where /proc/modules does not
/// list it or does not exist), has a directory in /sys/module; and the `vmx`/`svm` flags of
/// /proc/cpuinfo are CPUID.1:ECX[5] and CPUID.80000001h:ECX[2], asked of the CPU directly.
pub fn detect() -> Option<&'static str> {
    if Path::new("/sys/module/kvm_pvm").exists() {
        return Some("the kvm_pvm module is loaded");
    }
    detect_hw(cpu_has_vmx_or_svm())
}

/// The CPU's own answer: VT-x (CPUID.1:ECX bit 5) or AMD-V (CPUID.80000001h:ECX bit 2).
fn cpu_has_vmx_or_svm() -> bool {
    use std::arch::x86_64::__cpuid;
    let vmx = __cpuid(1).ecx & (1 << 5) != 0;
    let extended = __cpuid(0x8000_0000).eax;
    let svm = extended >= 0x8000_0001 && __cpuid(0x8000_0001).ecx & (1 << 2) != 0;
    vmx || svm
}

/// [`detect_from`]'s answer from the flag alone (no kvm_pvm module).
fn detect_hw(vmx_or_svm: bool) -> Option<&'static str> {
    match vmx_or_svm {
        true => None,
        false => Some("the CPU has no vmx/svm flag"),
    }
}

/// Whether to apply the workarounds, and why (for the log line).
pub fn decide(mode: Mode, detected: impl FnOnce() -> Option<&'static str>) -> Option<&'static str> {
    match mode {
        Mode::Off => None,
        Mode::On => Some("--ring0-workarounds on"),
        Mode::Auto => detected(),
    }
}

/// The words to add to `cmdline` for `kernel` once [`decide`] said yes: [`missing_words`], if
/// the kernel is Linux or `mode` is `On`. They are Linux's options: another kernel (the ring-3
/// test guest, a unikernel) gets none, and its command line stays as given (it may show it).
/// Linux is a bzImage, or an ELF with a note of Linux's or Xen's (every vmlinux since 4.20 has
/// Linux's build-salt note; PVH-capable ones have Xen's).
pub fn words_for(mode: Mode, kernel: &Path, bzimage: bool, cmdline: &str) -> Vec<&'static str> {
    if mode == Mode::On || bzimage || elf_notes_say_linux(kernel) {
        missing_words(cmdline)
    } else {
        Vec::new()
    }
}

/// Whether the ELF file at `path` has a note (in a PT_NOTE segment) named "Linux" or "Xen".
/// `false` if it cannot be read or parsed.
fn elf_notes_say_linux(path: &Path) -> bool {
    use std::io::{Read, Seek, SeekFrom};
    let Ok(mut file) = std::fs::File::open(path) else {
        return false;
    };
    let mut read_at = |offset: u64, len: usize| -> Option<Vec<u8>> {
        // Notes are small; a segment claiming more than 1 MiB is not read.
        if len > 1 << 20 {
            return None;
        }
        let mut buf = vec![0u8; len];
        file.seek(SeekFrom::Start(offset)).ok()?;
        file.read_exact(&mut buf).ok()?;
        Some(buf)
    };
    let Some(header) = read_at(0, 64) else {
        return false;
    };
    let u16_at = |b: &[u8], at: usize| u16::from_le_bytes([b[at], b[at + 1]]);
    let u32_at =
        |b: &[u8], at: usize| u32::from_le_bytes(b[at..at + 4].try_into().unwrap_or([0; 4]));
    let u64_at =
        |b: &[u8], at: usize| u64::from_le_bytes(b[at..at + 8].try_into().unwrap_or([0; 8]));
    // A little-endian ELF64.
    if header[..4] != *b"\x7fELF" || header[4] != 2 || header[5] != 1 {
        return false;
    }
    let (phoff, phentsize, phnum) = (
        u64_at(&header, 32),
        u16_at(&header, 54),
        u16_at(&header, 56),
    );
    if phentsize < 56 {
        return false;
    }
    let Some(table) = read_at(phoff, usize::from(phentsize) * usize::from(phnum)) else {
        return false;
    };
    table
        .chunks_exact(usize::from(phentsize))
        .filter(|ph| u32_at(ph, 0) == 4) // PT_NOTE
        .filter_map(|ph| read_at(u64_at(ph, 8), u64_at(ph, 32) as usize))
        .any(|notes| note_names(&notes).any(|name| name == b"Linux" || name == b"Xen"))
}

/// The names of the notes in a PT_NOTE segment's bytes (without their NUL).
fn note_names(mut notes: &[u8]) -> impl Iterator<Item = &[u8]> {
    let align4 = |n: usize| n.div_ceil(4) * 4;
    std::iter::from_fn(move || {
        if notes.len() < 12 {
            return None;
        }
        let namesz = u32::from_le_bytes(notes[0..4].try_into().ok()?) as usize;
        let descsz = u32::from_le_bytes(notes[4..8].try_into().ok()?) as usize;
        let name = notes.get(12..12 + namesz)?;
        let next = 12usize
            .checked_add(align4(namesz))?
            .checked_add(align4(descsz))?;
        notes = notes.get(next..).unwrap_or(&[]);
        Some(name.strip_suffix(&[0]).unwrap_or(name))
    })
}

/// The words of [`CMDLINE_WORDS`] whose option `cmdline` does not set yet.
pub fn missing_words(cmdline: &str) -> Vec<&'static str> {
    CMDLINE_WORDS
        .iter()
        .copied()
        .filter(|w| {
            let key = w.split('=').next().unwrap_or(w);
            !cmdline
                .split_whitespace()
                .any(|have| have.split('=').next() == Some(key))
        })
        .collect()
}

/// Clear the paravirtual features whose hypercalls do not return on such a host.
pub fn filter_cpuid(cpuid: &mut CpuId) {
    for e in cpuid.as_mut_slice() {
        if e.function == LEAF_KVM_FEATURES {
            e.eax &= !HYPERCALL_FEATURES;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kvm_bindings::kvm_cpuid_entry2;

    #[test]
    fn detection() {
        let intel = "processor\t: 0\nflags\t\t: fpu vme de pse vmx sse2\n";
        let plain = "processor\t: 0\nflags\t\t: fpu vme de pse hypervisor sse2\n";
        let amd = "flags\t\t: fpu svm\n";
        let pvm = "kvm_pvm 90112 0 - Live 0x0000000000000000\nkvm 1200000 1 kvm_pvm, Live 0x0\n";
        assert_eq!(detect_from(intel, "kvm_intel 1 0 - Live 0\n"), None);
        assert_eq!(detect_from(amd, ""), None);
        assert_eq!(detect_from(plain, ""), Some("the CPU has no vmx/svm flag"));
        assert_eq!(
            detect_from(intel, pvm),
            Some("the kvm_pvm module is loaded")
        );
        // A flag that merely contains the letters does not count.
        assert!(detect_from("flags\t: vmxsomething\n", "").is_some());
    }

    /// The quick answer (sysfs and CPUID) is the one the /proc files give on this host.
    #[test]
    fn quick_detection_agrees_with_the_proc_files() {
        let read = |p: &str| std::fs::read_to_string(p).unwrap_or_default();
        let cpuinfo = read("/proc/cpuinfo");
        let flags = detect_from(&cpuinfo, "");
        assert_eq!(
            detect_hw(cpu_has_vmx_or_svm()),
            flags,
            "CPUID against /proc/cpuinfo"
        );
        let modules = read("/proc/modules");
        if modules.lines().any(|l| l.starts_with("kvm_pvm ")) {
            assert_eq!(detect(), Some("the kvm_pvm module is loaded"));
        }
        if flags.is_none() && !Path::new("/sys/module/kvm_pvm").exists() {
            assert_eq!(detect(), None);
        }
    }

    /// A note as it sits in a PT_NOTE segment: sizes, type, name and description, 4-aligned.
    fn note(name: &[u8], desc: &[u8]) -> Vec<u8> {
        let mut v = Vec::new();
        v.extend_from_slice(&(name.len() as u32 + 1).to_le_bytes());
        v.extend_from_slice(&(desc.len() as u32).to_le_bytes());
        v.extend_from_slice(&1u32.to_le_bytes());
        v.extend_from_slice(name);
        v.push(0);
        while v.len() % 4 != 0 {
            v.push(0);
        }
        v.extend_from_slice(desc);
        while v.len() % 4 != 0 {
            v.push(0);
        }
        v
    }

    /// An ELF64 with one PT_NOTE segment holding `notes`.
    fn elf_with_notes(notes: &[u8]) -> Vec<u8> {
        let mut elf = vec![0u8; 64 + 56];
        elf[..4].copy_from_slice(b"\x7fELF");
        elf[4] = 2;
        elf[5] = 1;
        elf[32..40].copy_from_slice(&64u64.to_le_bytes()); // e_phoff
        elf[54..56].copy_from_slice(&56u16.to_le_bytes()); // e_phentsize
        elf[56..58].copy_from_slice(&1u16.to_le_bytes()); // e_phnum
        let ph = &mut elf[64..120];
        ph[0..4].copy_from_slice(&4u32.to_le_bytes()); // PT_NOTE
        ph[8..16].copy_from_slice(&120u64.to_le_bytes()); // p_offset
        ph[32..40].copy_from_slice(&(notes.len() as u64).to_le_bytes()); // p_filesz
        elf.extend_from_slice(notes);
        elf
    }

    #[test]
    fn linux_words_go_only_to_linux() {
        let dir = std::env::temp_dir().join(format!("kite-ring0-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let write = |name: &str, bytes: &[u8]| {
            let p = dir.join(name);
            std::fs::write(&p, bytes).unwrap();
            p
        };
        let gnu = note(b"GNU", &[1; 20]);
        let linux = [gnu.clone(), note(b"Linux", &[0; 4])].concat();
        let vmlinux = write("vmlinux", &elf_with_notes(&linux));
        let pvh = write("pvh", &elf_with_notes(&note(b"Xen", &[0; 8])));
        let other = write("other", &elf_with_notes(&gnu));
        let bare = write("bare", &elf_with_notes(&[]));
        let junk = write("junk", b"not an elf");
        let all = CMDLINE_WORDS.to_vec();
        let words = |m, p: &Path, bz| words_for(m, p, bz, "console=ttyS0");
        assert_eq!(words(Mode::Auto, &vmlinux, false), all);
        assert_eq!(words(Mode::Auto, &pvh, false), all);
        assert!(words(Mode::Auto, &other, false).is_empty());
        assert!(words(Mode::Auto, &bare, false).is_empty());
        assert!(words(Mode::Auto, &junk, false).is_empty());
        assert!(words(Mode::Auto, Path::new("/nonexistent"), false).is_empty());
        // A bzImage is Linux; `on` adds them whatever the kernel.
        assert_eq!(words(Mode::Auto, &junk, true), all);
        assert_eq!(words(Mode::On, &other, false), all);
        // A note cut short ends the walk without a panic.
        let cut = elf_with_notes(&linux[..linux.len() - 6]);
        let _ = elf_notes_say_linux(&write("cut", &cut));
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// The guest-images kernel, if built, is recognised.
    #[test]
    fn the_guest_images_vmlinux_is_linux() {
        let vmlinux = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../guest-images/out/vmlinux");
        if vmlinux.is_file() {
            assert!(elf_notes_say_linux(&vmlinux));
        }
    }

    #[test]
    fn modes() {
        let here = || Some("detected");
        let hw = || None;
        assert_eq!(decide(Mode::Auto, here), Some("detected"));
        assert_eq!(decide(Mode::Auto, hw), None);
        assert_eq!(decide(Mode::Off, here), None);
        assert!(decide(Mode::On, hw).is_some());
    }

    #[test]
    fn words_are_added_once() {
        assert_eq!(missing_words("console=ttyS0"), CMDLINE_WORDS.to_vec());
        assert_eq!(
            missing_words(
                "console=ttyS0 noxsave clearcpuid=popcnt noreplace-smp \
                 rcupdate.rcu_cpu_stall_suppress=0"
            ),
            Vec::<&str>::new()
        );
        assert_eq!(
            missing_words("clearcpuid=smap"),
            vec![
                "noxsave",
                "noreplace-smp",
                "rcupdate.rcu_cpu_stall_suppress=1"
            ],
            "a user's own clearcpuid= wins"
        );
    }

    #[test]
    fn hypercall_features_are_cleared_and_nothing_else() {
        let all = 0xffff_ffff;
        let entry = |function| kvm_cpuid_entry2 {
            function,
            eax: all,
            ebx: all,
            ecx: all,
            edx: all,
            ..Default::default()
        };
        let mut cpuid = CpuId::from_entries(&[entry(1), entry(LEAF_KVM_FEATURES)]).unwrap();
        filter_cpuid(&mut cpuid);
        let e = cpuid.as_slice();
        assert_eq!(
            (e[0].eax, e[0].ebx, e[0].ecx, e[0].edx),
            (all, all, all, all)
        );
        assert_eq!(e[1].eax & KVM_FEATURE_PV_SEND_IPI, 0);
        assert_eq!(e[1].eax & KVM_FEATURE_PV_UNHALT, 0);
        assert_eq!(e[1].eax & KVM_FEATURE_PV_SCHED_YIELD, 0);
        assert_eq!(e[1].eax | HYPERCALL_FEATURES, all);
        assert_eq!((e[1].ebx, e[1].ecx, e[1].edx), (all, all, all));
    }
}
