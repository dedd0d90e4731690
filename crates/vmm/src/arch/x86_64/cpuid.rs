//! Per-vCPU adjustment of the CPUID entries `KVM_GET_SUPPORTED_CPUID` returns.
//!
//! KVM reports the host's values for the topology fields; [`filter_cpuid`] replaces them with
//! one simple topology, the same in every leaf that describes it:
//!
//! * one package (socket) holding `num_cpus` cores, one thread per core (no SMT); with
//!   Firecracker's `smt: true` ([`filter_cpuid_smt`]), `num_cpus / 2` cores of two threads;
//! * vCPU `i` has initial APIC id and x2APIC id `i`, so the core id is the whole APIC id; the
//!   core field is `ceil(log2(num_cpus))` bits wide (0 for a single vCPU);
//! * the level 1 and 2 caches belong to one core (shared by one thread), caches of level 3 and
//!   above are shared by the whole package.
//!
//! Leaves changed:
//!
//! | leaf | field | value |
//! | --- | --- | --- |
//! | 1 | EBX\[31:24\] initial APIC id | `cpu_index` |
//! | 1 | EBX\[23:16\] logical processors per package | `num_cpus` |
//! | 1 | EDX\[28\] HTT | set iff `num_cpus > 1` |
//! | 1 | ECX\[31\] hypervisor present | set (TSC-deadline, ECX\[24\], stays as KVM reports) |
//! | 4, each valid subleaf | EAX\[31:26\] cores per package − 1 | `num_cpus - 1` (at most 63) |
//! | 4, each valid subleaf | EAX\[25:14\] threads sharing the cache − 1 | 0 for L1/L2, `num_cpus - 1` for L3+ |
//! | 0xB and 0x1F, subleaf 0 | SMT level | EAX shift 0, EBX 1, ECX type 1 |
//! | 0xB and 0x1F, subleaf 1 | core level | EAX shift `ceil(log2(num_cpus))`, EBX `num_cpus`, ECX type 2 |
//! | 0xB and 0x1F, subleaf ≥ 2 | invalid level | EAX 0, EBX 0, ECX = subleaf number, type 0 |
//! | 0xB and 0x1F, every subleaf | EDX x2APIC id | `cpu_index` |
//! | 0x8000_0008 | ECX\[7:0\] cores − 1 (AMD NC) | `num_cpus - 1` |
//! | 0x8000_0008 | ECX\[15:12\] APIC id core bits (AMD ApicIdSize) | `ceil(log2(num_cpus))` |
//! | 0x8000_001E | extended APIC id, core id, threads per core, node | `cpu_index`, `cpu_index`, 1, node 0 of 1 |
//!
//! Leaf 0xB/0x1F is only touched when KVM lists it; its subleaf 1 is added if KVM lists only
//! subleaf 0 (recent kernels do). Every other leaf, KVM's paravirtual leaves from 0x4000_0000
//! included, is left as KVM reports it.

use kvm_bindings::{CpuId, KVM_CPUID_FLAG_SIGNIFCANT_INDEX, kvm_cpuid_entry2};

// Leaf 1.
const LEAF_FEATURES: u32 = 1;
const EBX_APIC_ID_SHIFT: u32 = 24;
const EBX_LOGICAL_COUNT_SHIFT: u32 = 16;
const EBX_TOPOLOGY_MASK: u32 = 0xffff_0000;
const EDX_HTT: u32 = 1 << 28;
const ECX_HYPERVISOR: u32 = 1 << 31;

// Leaf 4.
const LEAF_CACHE_PARAMS: u32 = 4;
const EAX_CACHE_TYPE_MASK: u32 = 0x1f;
const EAX_CACHE_LEVEL_SHIFT: u32 = 5;
const EAX_CACHE_LEVEL_MASK: u32 = 0x7;
const EAX_CORES_SHIFT: u32 = 26;
const EAX_CORES_MASK: u32 = 0x3f;
const EAX_SHARING_SHIFT: u32 = 14;
const EAX_SHARING_MASK: u32 = 0xfff;

// Leaves 0xB and 0x1F.
const LEAF_TOPOLOGY: u32 = 0xb;
const LEAF_TOPOLOGY_V2: u32 = 0x1f;
const LEVEL_TYPE_SMT: u32 = 1;
const LEVEL_TYPE_CORE: u32 = 2;
const ECX_LEVEL_TYPE_SHIFT: u32 = 8;

// AMD leaves.
const LEAF_AMD_SIZES: u32 = 0x8000_0008;
const ECX_NC_MASK: u32 = 0xff;
const ECX_APIC_ID_SIZE_SHIFT: u32 = 12;
const ECX_APIC_ID_SIZE_MASK: u32 = 0xf;
const LEAF_AMD_TOPOLOGY: u32 = 0x8000_001e;

/// Replace `mask << shift` in `reg` with `value` (truncated to the mask).
fn set_field(reg: &mut u32, shift: u32, mask: u32, value: u32) {
    *reg = (*reg & !(mask << shift)) | ((value & mask) << shift);
}

/// Bits needed to number `n` items: `ceil(log2(n))`, 0 for `n <= 1`.
fn id_bits(n: u8) -> u32 {
    u8::BITS - n.saturating_sub(1).leading_zeros()
}

/// Adjust `cpuid`, as returned by `KVM_GET_SUPPORTED_CPUID`, for vCPU `cpu_index` of
/// `num_cpus` (treated as at least 1), following the topology in the module documentation.
pub fn filter_cpuid(cpuid: &mut CpuId, cpu_index: u8, num_cpus: u8) {
    filter_cpuid_smt(cpuid, cpu_index, num_cpus, false);
}

/// [`filter_cpuid`], with two threads per core when `smt` and there is more than one vCPU
/// (Firecracker's `smt: true`; `num_cpus` is then even): vCPUs 2k and 2k+1 are the threads of
/// core k. The SMT level of leaf 0xB/0x1F is 1 bit wide holding 2 threads, caches of level 1
/// and 2 are shared by the core's 2 threads, and AMD's leaf 0x8000_001E says 2 threads per
/// core and core id `cpu_index / 2`.
pub fn filter_cpuid_smt(cpuid: &mut CpuId, cpu_index: u8, num_cpus: u8, smt: bool) {
    let num_cpus = num_cpus.max(1);
    let apic_id = u32::from(cpu_index);
    let count = u32::from(num_cpus);
    let core_bits = id_bits(num_cpus);
    let threads: u32 = if smt && num_cpus > 1 { 2 } else { 1 };
    let thread_bits = threads - 1;
    let cores = count / threads;

    let mut topology_leaves_missing_subleaf_1 = Vec::new();
    for function in [LEAF_TOPOLOGY, LEAF_TOPOLOGY_V2] {
        let subleaves: Vec<u32> = cpuid
            .as_slice()
            .iter()
            .filter(|e| e.function == function)
            .map(|e| e.index)
            .collect();
        if subleaves.contains(&0) && !subleaves.contains(&1) {
            topology_leaves_missing_subleaf_1.push(function);
        }
    }
    for function in topology_leaves_missing_subleaf_1 {
        let entry = kvm_cpuid_entry2 {
            function,
            index: 1,
            flags: KVM_CPUID_FLAG_SIGNIFCANT_INDEX,
            ..Default::default()
        };
        if cpuid.push(entry).is_err() {
            log::warn!("no room for CPUID leaf {function:#x} subleaf 1: topology left incomplete");
        }
    }

    for entry in cpuid.as_mut_slice() {
        match entry.function {
            LEAF_FEATURES => {
                entry.ebx = (entry.ebx & !EBX_TOPOLOGY_MASK)
                    | (apic_id << EBX_APIC_ID_SHIFT)
                    | (count << EBX_LOGICAL_COUNT_SHIFT);
                if num_cpus > 1 {
                    entry.edx |= EDX_HTT;
                } else {
                    entry.edx &= !EDX_HTT;
                }
                entry.ecx |= ECX_HYPERVISOR;
            }
            LEAF_CACHE_PARAMS if entry.eax & EAX_CACHE_TYPE_MASK != 0 => {
                let level = (entry.eax >> EAX_CACHE_LEVEL_SHIFT) & EAX_CACHE_LEVEL_MASK;
                let sharing = if level >= 3 { count - 1 } else { threads - 1 };
                set_field(
                    &mut entry.eax,
                    EAX_CORES_SHIFT,
                    EAX_CORES_MASK,
                    (cores - 1).min(EAX_CORES_MASK),
                );
                set_field(&mut entry.eax, EAX_SHARING_SHIFT, EAX_SHARING_MASK, sharing);
            }
            LEAF_TOPOLOGY | LEAF_TOPOLOGY_V2 => {
                entry.flags |= KVM_CPUID_FLAG_SIGNIFCANT_INDEX;
                let (shift, processors, level_type) = match entry.index {
                    0 => (thread_bits, threads, LEVEL_TYPE_SMT),
                    1 => (core_bits, count, LEVEL_TYPE_CORE),
                    _ => (0, 0, 0),
                };
                entry.eax = shift;
                entry.ebx = processors;
                entry.ecx = (level_type << ECX_LEVEL_TYPE_SHIFT) | (entry.index & 0xff);
                entry.edx = apic_id;
            }
            LEAF_AMD_SIZES => {
                set_field(&mut entry.ecx, 0, ECX_NC_MASK, count - 1);
                set_field(
                    &mut entry.ecx,
                    ECX_APIC_ID_SIZE_SHIFT,
                    ECX_APIC_ID_SIZE_MASK,
                    core_bits,
                );
            }
            LEAF_AMD_TOPOLOGY => {
                // EAX: extended APIC id. EBX[7:0]: core id, EBX[15:8]: threads per core - 1.
                // ECX[7:0]: node id, ECX[10:8]: nodes per package - 1.
                entry.eax = apic_id;
                entry.ebx = ((threads - 1) << 8) | (apic_id >> thread_bits);
                entry.ecx = 0;
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(
        function: u32,
        index: u32,
        eax: u32,
        ebx: u32,
        ecx: u32,
        edx: u32,
    ) -> kvm_cpuid_entry2 {
        kvm_cpuid_entry2 {
            function,
            index,
            flags: if matches!(function, 4 | 0xb) {
                KVM_CPUID_FLAG_SIGNIFCANT_INDEX
            } else {
                0
            },
            eax,
            ebx,
            ecx,
            edx,
            ..Default::default()
        }
    }

    /// Host-like values: 16 logical processors, SMT, TSC-deadline set, some feature bits.
    fn host_cpuid() -> CpuId {
        CpuId::from_entries(&[
            entry(0, 0, 0x1f, 0x756e_6547, 0x6c65_746e, 0x4965_6e69),
            // EBX: APIC id 0x0b, 16 logical processors, CLFLUSH 8; ECX: TSC-deadline, x2APIC.
            entry(
                1,
                0,
                0x000a_0671,
                0x0b10_0800,
                (1 << 24) | (1 << 21),
                0x178b_fbff,
            ),
            // L1 data cache (type 1, level 1), 2 threads sharing, 8 cores.
            entry(
                4,
                0,
                (7 << 26) | (1 << 14) | (1 << 5) | 1,
                0x01c0_003f,
                0x3f,
                0,
            ),
            // L3 unified cache (type 3, level 3), 16 threads sharing, 8 cores.
            entry(
                4,
                1,
                (7 << 26) | (15 << 14) | (3 << 5) | 3,
                0x03c0_003f,
                0x3fff,
                6,
            ),
            // Null subleaf ending leaf 4.
            entry(4, 2, 0, 0, 0, 0),
            entry(6, 0, 0x77, 2, 9, 0),
            entry(0xb, 0, 1, 2, 0x100, 0x0b),
            entry(0xb, 1, 4, 16, 0x201, 0x0b),
            entry(0x4000_0000, 0, 0x4000_0001, 0x4b4d_564b, 0x564b_4d56, 0x4d),
            entry(0x8000_0008, 0, 0x3030, 0, 0x0000_700f, 0),
        ])
        .unwrap()
    }

    fn find(cpuid: &CpuId, function: u32, index: u32) -> kvm_cpuid_entry2 {
        *cpuid
            .as_slice()
            .iter()
            .find(|e| e.function == function && e.index == index)
            .unwrap_or_else(|| panic!("no leaf {function:#x}.{index}"))
    }

    fn check(cpu_index: u8, num_cpus: u8) {
        let host = host_cpuid();
        let mut cpuid = host_cpuid();
        filter_cpuid(&mut cpuid, cpu_index, num_cpus);
        let n = u32::from(num_cpus);
        let id = u32::from(cpu_index);
        let bits = match num_cpus {
            1 => 0,
            4 => 2,
            _ => unreachable!(),
        };

        let leaf1 = find(&cpuid, 1, 0);
        assert_eq!(leaf1.ebx >> 24, id);
        assert_eq!((leaf1.ebx >> 16) & 0xff, n);
        assert_eq!(
            leaf1.ebx & 0xffff,
            0x0800,
            "CLFLUSH size and brand index kept"
        );
        assert_eq!(leaf1.edx & (1 << 28) != 0, num_cpus > 1);
        assert_eq!(leaf1.edx & !(1 << 28), 0x178b_fbff & !(1 << 28));
        assert_ne!(leaf1.ecx & (1 << 31), 0, "hypervisor bit");
        assert_ne!(leaf1.ecx & (1 << 24), 0, "TSC-deadline as KVM reports");
        assert_eq!(leaf1.eax, 0x000a_0671);

        let l1 = find(&cpuid, 4, 0);
        assert_eq!(l1.eax >> 26, n - 1);
        assert_eq!((l1.eax >> 14) & 0xfff, 0);
        assert_eq!(l1.eax & 0x3fff, (1 << 5) | 1, "type and level kept");
        assert_eq!(l1.ebx, 0x01c0_003f);
        let l3 = find(&cpuid, 4, 1);
        assert_eq!(l3.eax >> 26, n - 1);
        assert_eq!((l3.eax >> 14) & 0xfff, n - 1);
        assert_eq!(l3.eax & 0x3fff, (3 << 5) | 3);
        assert_eq!(find(&cpuid, 4, 2), find(&host, 4, 2), "null subleaf kept");

        let smt = find(&cpuid, 0xb, 0);
        assert_eq!((smt.eax, smt.ebx, smt.ecx, smt.edx), (0, 1, 0x100, id));
        let core = find(&cpuid, 0xb, 1);
        assert_eq!(
            (core.eax, core.ebx, core.ecx, core.edx),
            (bits, n, 0x201, id)
        );
        assert!(
            !cpuid
                .as_slice()
                .iter()
                .any(|e| e.function == 0xb && e.index > 1)
        );

        let amd = find(&cpuid, 0x8000_0008, 0);
        assert_eq!(amd.ecx & 0xff, n - 1);
        assert_eq!((amd.ecx >> 12) & 0xf, bits);
        assert_eq!(amd.eax, 0x3030);

        for leaf in [0, 6, 0x4000_0000] {
            assert_eq!(find(&cpuid, leaf, 0), find(&host, leaf, 0));
        }
        assert_eq!(cpuid.as_slice().len(), host.as_slice().len());
    }

    #[test]
    fn first_of_four() {
        check(0, 4);
    }

    #[test]
    fn fourth_of_four() {
        check(3, 4);
    }

    #[test]
    fn single_cpu() {
        check(0, 1);
    }

    #[test]
    fn missing_core_level_is_added_and_extra_levels_invalidated() {
        let mut cpuid = CpuId::from_entries(&[
            entry(0xb, 0, 0, 0, 0, 0),
            entry(0x1f, 0, 1, 2, 0x100, 7),
            entry(0x1f, 1, 4, 16, 0x201, 7),
            entry(0x1f, 2, 5, 32, 0x502, 7),
        ])
        .unwrap();
        filter_cpuid(&mut cpuid, 5, 6);

        let core = find(&cpuid, 0xb, 1);
        assert_eq!((core.eax, core.ebx, core.ecx, core.edx), (3, 6, 0x201, 5));
        assert_eq!(core.flags, KVM_CPUID_FLAG_SIGNIFCANT_INDEX);
        let smt = find(&cpuid, 0xb, 0);
        assert_eq!((smt.eax, smt.ebx, smt.ecx, smt.edx), (0, 1, 0x100, 5));
        let smt = find(&cpuid, 0x1f, 0);
        assert_eq!((smt.eax, smt.ebx, smt.ecx, smt.edx), (0, 1, 0x100, 5));
        let core = find(&cpuid, 0x1f, 1);
        assert_eq!((core.eax, core.ebx, core.ecx, core.edx), (3, 6, 0x201, 5));
        let extra = find(&cpuid, 0x1f, 2);
        assert_eq!((extra.eax, extra.ebx, extra.ecx, extra.edx), (0, 0, 2, 5));
        assert_eq!(cpuid.as_slice().len(), 5);
    }

    #[test]
    fn amd_extended_topology() {
        let mut cpuid =
            CpuId::from_entries(&[entry(0x8000_001e, 0, 0x20, 0x0110, 0x0103, 0)]).unwrap();
        filter_cpuid(&mut cpuid, 3, 4);
        let e = find(&cpuid, 0x8000_001e, 0);
        assert_eq!((e.eax, e.ebx, e.ecx, e.edx), (3, 3, 0, 0));
    }

    #[test]
    fn smt_gives_two_threads_per_core() {
        let mut cpuid = host_cpuid();
        cpuid
            .push(entry(0x8000_001e, 0, 0x20, 0x0110, 0x0103, 0))
            .unwrap();
        filter_cpuid_smt(&mut cpuid, 3, 4, true);
        let smt = find(&cpuid, 0xb, 0);
        assert_eq!((smt.eax, smt.ebx, smt.ecx, smt.edx), (1, 2, 0x100, 3));
        let core = find(&cpuid, 0xb, 1);
        assert_eq!((core.eax, core.ebx, core.ecx, core.edx), (2, 4, 0x201, 3));
        let l1 = find(&cpuid, 4, 0);
        assert_eq!(
            (l1.eax >> 14) & 0xfff,
            1,
            "L1 shared by the core's two threads"
        );
        assert_eq!((l1.eax >> 26) & 0x3f, 1, "two cores");
        let amd = find(&cpuid, 0x8000_001e, 0);
        assert_eq!((amd.eax, amd.ebx), (3, 0x101), "thread 1 of core 1");
        // One vCPU: no SMT whatever is asked.
        let mut one = host_cpuid();
        filter_cpuid_smt(&mut one, 0, 1, true);
        let smt = find(&one, 0xb, 0);
        assert_eq!((smt.eax, smt.ebx), (0, 1));
    }

    #[test]
    fn id_bits_rounds_up() {
        let bits: Vec<u32> = [0, 1, 2, 3, 4, 5, 8, 9, 128, 254, 255]
            .into_iter()
            .map(id_bits)
            .collect();
        assert_eq!(bits, [0, 0, 1, 2, 2, 3, 3, 4, 7, 8, 8]);
    }
}
