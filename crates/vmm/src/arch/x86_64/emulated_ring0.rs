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
//!   with one text_poke each, seconds of emulated ring 0); each only if the command line does
//!   not already set that option. These go on the command line, not into CPUID: on such a
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
pub const CMDLINE_WORDS: [&str; 3] = [
    "noxsave",
    "clearcpuid=popcnt,smap,smep,cx16,erms,fsrm",
    "noreplace-smp",
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
    if hw {
        None
    } else {
        Some("the CPU has no vmx/svm flag")
    }
}

/// [`detect_from`] on this host's /proc files (a file that cannot be read counts as empty).
/// Without /proc (in the jailer's chroot) the CPU flags come from CPUID instead, so that a
/// hardware host is not taken for an emulating one.
pub fn detect() -> Option<&'static str> {
    let read = |p: &str| std::fs::read_to_string(Path::new(p)).ok();
    let cpuinfo = read("/proc/cpuinfo").unwrap_or_else(cpuid_flags_line);
    detect_from(&cpuinfo, &read("/proc/modules").unwrap_or_default())
}

/// A /proc/cpuinfo `flags` line naming `vmx`/`svm` if CPUID lists them.
fn cpuid_flags_line() -> String {
    // SAFETY: CPUID leaves 1 and 0x8000_0001 exist on every x86-64 CPU; it only reads registers.
    #[allow(unused_unsafe)]
    let (leaf1, ext) = unsafe {
        (
            std::arch::x86_64::__cpuid(1),
            std::arch::x86_64::__cpuid(0x8000_0001),
        )
    };
    let mut line = String::from("flags\t\t:");
    if leaf1.ecx & (1 << 5) != 0 {
        line.push_str(" vmx");
    }
    if ext.ecx & (1 << 2) != 0 {
        line.push_str(" svm");
    }
    line
}

/// Whether to apply the workarounds, and why (for the log line).
pub fn decide(mode: Mode, detected: impl FnOnce() -> Option<&'static str>) -> Option<&'static str> {
    match mode {
        Mode::Off => None,
        Mode::On => Some("--ring0-workarounds on"),
        Mode::Auto => detected(),
    }
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
            missing_words("console=ttyS0 noxsave clearcpuid=popcnt noreplace-smp"),
            Vec::<&str>::new()
        );
        assert_eq!(
            missing_words("clearcpuid=smap"),
            vec!["noxsave", "noreplace-smp"],
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
