//! A vCPU's KVM state for snapshots: [`VcpuState`], read from and written to a vCPU fd in
//! Firecracker's order, and the messages that ask a parked vCPU thread for it.
//!
//! The MSRs saved are those KVM_GET_MSR_INDEX_LIST names plus [`EXTRA_MSRS`], which that list
//! leaves out on some hosts (see shared/docs/KVM-HERE.md) although they read and write. The
//! CPUID kept is the table Kite *set* (KVM_GET_CPUID2 reports more than was set on some hosts).

use std::sync::mpsc::Sender;

use kvm_bindings::{
    CpuId, Msrs, kvm_cpuid_entry2, kvm_debugregs, kvm_lapic_state, kvm_mp_state, kvm_msr_entry,
    kvm_regs, kvm_sregs, kvm_vcpu_events, kvm_xcrs, kvm_xsave,
};
use kvm_ioctls::{Kvm, VcpuFd};
use serde::{Deserialize, Serialize};

/// MSRs saved besides KVM's list: EFER, APIC_BASE, FS/GS/KERNEL_GS base, TSC_AUX, SPEC_CTRL,
/// XSS, SYSENTER_*, STAR/LSTAR/CSTAR/SFMASK, PAT, TSC, MISC_ENABLE, kvmclock's two.
pub const EXTRA_MSRS: &[u32] = &[
    0xc000_0080,
    0x1b,
    0xc000_0100,
    0xc000_0101,
    0xc000_0102,
    0xc000_0103,
    0x48,
    0xda0,
    0x174,
    0x175,
    0x176,
    0xc000_0081,
    0xc000_0082,
    0xc000_0083,
    0xc000_0084,
    0x277,
    0x10,
    0x1a0,
    0x4b56_4d00,
    0x4b56_4d01,
];

/// Everything KVM keeps of one vCPU.
#[derive(Debug, Serialize, Deserialize)]
pub struct VcpuState {
    pub cpuid: Vec<kvm_cpuid_entry2>,
    pub mp_state: kvm_mp_state,
    pub regs: kvm_regs,
    pub sregs: kvm_sregs,
    pub xsave: kvm_xsave,
    pub xcrs: kvm_xcrs,
    pub debugregs: kvm_debugregs,
    pub lapic: kvm_lapic_state,
    pub msrs: Vec<kvm_msr_entry>,
    pub events: kvm_vcpu_events,
}

/// The MSR indices to save on this host: KVM's list and [`EXTRA_MSRS`], each once.
pub fn msr_indices(kvm: &Kvm) -> Vec<u32> {
    let mut list: Vec<u32> = kvm
        .get_msr_index_list()
        .map(|l| l.as_slice().to_vec())
        .unwrap_or_default();
    for &m in EXTRA_MSRS {
        if !list.contains(&m) {
            list.push(m);
        }
    }
    list
}

fn msrs_of(entries: &[kvm_msr_entry]) -> Result<Msrs, String> {
    Msrs::from_entries(entries).map_err(|e| format!("too many MSRs ({e:?})"))
}

/// Read every MSR of `indices` that this vCPU has; those KVM refuses are left out.
fn get_msrs(fd: &VcpuFd, indices: &[u32]) -> Result<Vec<kvm_msr_entry>, String> {
    let entries: Vec<kvm_msr_entry> = indices
        .iter()
        .map(|&index| kvm_msr_entry {
            index,
            ..Default::default()
        })
        .collect();
    let mut all = msrs_of(&entries)?;
    let n = fd
        .get_msrs(&mut all)
        .map_err(|e| format!("KVM_GET_MSRS: {e}"))?;
    if n == entries.len() {
        return Ok(all.as_slice().to_vec());
    }
    // KVM stops at the first MSR it refuses: read them one by one, keeping those that read.
    let mut kept = Vec::with_capacity(entries.len());
    for entry in entries {
        let mut one = msrs_of(&[entry])?;
        if fd.get_msrs(&mut one) == Ok(1) {
            kept.extend_from_slice(one.as_slice());
        }
    }
    Ok(kept)
}

/// Save `fd`'s state. The vCPU must not be in KVM_RUN (its thread calls this while parked);
/// first it re-enters once with immediate_exit set, so that an I/O or MMIO exit in flight
/// completes inside KVM before the registers are read.
// Never inlined (a cold path): its locals stay out of the caller's stack frame, whose pages
// (stack probes touch each) are resident for the whole run.
#[inline(never)]
pub fn save(
    fd: &mut VcpuFd,
    cpuid: &[kvm_cpuid_entry2],
    msrs: &[u32],
) -> Result<VcpuState, String> {
    fd.set_kvm_immediate_exit(1);
    let settle = fd.run().map(|_| ());
    fd.set_kvm_immediate_exit(0);
    match settle {
        Err(e) if e.errno() != libc::EINTR => {
            return Err(format!("KVM_RUN with immediate_exit: {e}"));
        }
        _ => {}
    }
    let err = |what: &'static str| move |e: kvm_ioctls::Error| format!("{what}: {e}");
    Ok(VcpuState {
        cpuid: cpuid.to_vec(),
        mp_state: fd.get_mp_state().map_err(err("KVM_GET_MP_STATE"))?,
        regs: fd.get_regs().map_err(err("KVM_GET_REGS"))?,
        sregs: fd.get_sregs().map_err(err("KVM_GET_SREGS"))?,
        xsave: fd.get_xsave().map_err(err("KVM_GET_XSAVE"))?,
        xcrs: fd.get_xcrs().map_err(err("KVM_GET_XCRS"))?,
        debugregs: fd.get_debug_regs().map_err(err("KVM_GET_DEBUGREGS"))?,
        lapic: fd.get_lapic().map_err(err("KVM_GET_LAPIC"))?,
        msrs: get_msrs(fd, msrs)?,
        events: fd.get_vcpu_events().map_err(err("KVM_GET_VCPU_EVENTS"))?,
    })
}

/// Give `fd` the state `s`, in the order Firecracker restores it (CPUID first: KVM checks the
/// rest against it; vcpu events last: they may depend on everything before).
#[inline(never)]
pub fn restore(fd: &VcpuFd, s: &VcpuState) -> Result<(), String> {
    let err = |what: &'static str| move |e: kvm_ioctls::Error| format!("{what}: {e}");
    let cpuid = CpuId::from_entries(&s.cpuid).map_err(|e| format!("CPUID table: {e:?}"))?;
    fd.set_cpuid2(&cpuid).map_err(err("KVM_SET_CPUID2"))?;
    fd.set_mp_state(s.mp_state)
        .map_err(err("KVM_SET_MP_STATE"))?;
    fd.set_regs(&s.regs).map_err(err("KVM_SET_REGS"))?;
    fd.set_sregs(&s.sregs).map_err(err("KVM_SET_SREGS"))?;
    // SAFETY: `s.xsave` is a whole kvm_xsave (4 KiB, as KVM_GET_XSAVE returns it); Kite never
    // asks for the dynamic XSAVE features (AMX) that would make KVM read more than that.
    unsafe { fd.set_xsave(&s.xsave) }.map_err(err("KVM_SET_XSAVE"))?;
    fd.set_xcrs(&s.xcrs).map_err(err("KVM_SET_XCRS"))?;
    fd.set_debug_regs(&s.debugregs)
        .map_err(err("KVM_SET_DEBUGREGS"))?;
    fd.set_lapic(&s.lapic).map_err(err("KVM_SET_LAPIC"))?;
    // KVM stops at the first MSR it refuses (XSS, on a host that reads it but takes no
    // write of it): skip that one and go on with the rest.
    let mut rest: &[kvm_msr_entry] = &s.msrs;
    while !rest.is_empty() {
        let n = fd.set_msrs(&msrs_of(rest)?).map_err(err("KVM_SET_MSRS"))?;
        if n >= rest.len() {
            break;
        }
        log::debug!(
            "KVM refused MSR {:#x} = {:#x} on restore; left as it is",
            rest[n].index,
            rest[n].data
        );
        rest = &rest[n + 1..];
    }
    fd.set_vcpu_events(&s.events)
        .map_err(err("KVM_SET_VCPU_EVENTS"))?;
    Ok(())
}

/// A message to a vCPU thread, answered while it is parked.
pub enum Request {
    /// Send back the vCPU's state.
    Save(Sender<Result<VcpuState, String>>),
}
