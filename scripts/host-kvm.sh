# Sourced by the scripts: what kind of KVM this host has.
# kite_host_emulates_ring0: true when KVM has no hardware virtualization under it (no vmx/svm
# CPU flag, or the paravirtual kvm_pvm module), so guest ring-0 code is emulated and slow.
kite_host_emulates_ring0() {
	if grep -qwE 'vmx|svm' /proc/cpuinfo 2>/dev/null && ! grep -qw kvm_pvm /proc/modules 2>/dev/null; then
		return 1
	fi
	return 0
}

# Kernel options that get a Linux guest past the instructions this kind of host's ring-0
# emulator cannot run (see docs/KVM-HERE.md in the shared docs).
KITE_EMULATED_RING0_CMDLINE="earlyprintk=ttyS0 noxsave clearcpuid=popcnt,smap,smep,cx16"
