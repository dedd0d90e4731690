//! A vCPU's first state, set by its own thread before its first KVM_RUN ([`apply`]): every
//! vCPU ioctl loads and puts the vCPU on the calling thread (on the hosts Kite is built on,
//! that costs MSR reads), so 32 vCPUs set up in parallel, each on its own thread, start sooner
//! than 32 set up one after the other by the main thread.

use kvm_bindings::{CpuId, kvm_cpuid_entry2};
use kvm_ioctls::VcpuFd;

use crate::arch::x86_64::regs;

/// What a vCPU's thread sets before the guest runs.
#[derive(Clone, Debug)]
pub enum Setup {
    /// A boot: the vCPU's CPUID table, the boot FPU, MSRs and LAPIC, and for the boot CPU the
    /// 64-bit entry state at `entry`.
    Boot {
        cpuid: Vec<kvm_cpuid_entry2>,
        entry: Option<u64>,
    },
    /// Nothing: the state was set already (a restore sets a snapshot's state before the
    /// devices), with this CPUID table.
    Done { cpuid: Vec<kvm_cpuid_entry2> },
}

impl Setup {
    /// The CPUID table the vCPU has once set up (what a snapshot keeps).
    pub fn cpuid(&self) -> &[kvm_cpuid_entry2] {
        match self {
            Setup::Boot { cpuid, .. } | Setup::Done { cpuid } => cpuid,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("KVM failed to set vCPU {index}'s CPUID")]
    Cpuid {
        index: u8,
        #[source]
        source: kvm_ioctls::Error,
    },
    #[error("vCPU {index}'s CPUID table has {len} entries, more than KVM takes")]
    CpuidTable { index: u8, len: usize },
    #[error("cannot set up vCPU {index}")]
    Regs {
        index: u8,
        #[source]
        source: regs::Error,
    },
}

impl Error {
    /// 1 for KVM's refusals (the host), 2 otherwise (as for any other boot step).
    pub fn exit_code(&self) -> i32 {
        match self {
            Error::Cpuid { .. } => 1,
            _ => 2,
        }
    }
}

/// Give vCPU `index` (on `fd`) the state `setup` describes. Called on the vCPU's own thread.
#[inline(never)]
pub fn apply(fd: &VcpuFd, index: u8, setup: &Setup) -> Result<(), Error> {
    let Setup::Boot { cpuid, entry } = setup else {
        return Ok(());
    };
    let table = CpuId::from_entries(cpuid).map_err(|_| Error::CpuidTable {
        index,
        len: cpuid.len(),
    })?;
    fd.set_cpuid2(&table)
        .map_err(|source| Error::Cpuid { index, source })?;
    regs::setup_common(fd).map_err(|source| Error::Regs { index, source })?;
    if let Some(entry) = entry {
        regs::setup_boot_cpu(fd, *entry).map_err(|source| Error::Regs { index, source })?;
    }
    Ok(())
}
