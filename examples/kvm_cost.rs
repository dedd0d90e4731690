//! KVM's own cost of a VM of a given size, without Kite: create a VM, map guest RAM, register
//! it in KVM slots (split around the 3-4 GiB gap), add the TSS, irqchip and PIT, create one
//! vCPU, then close everything: the order Kite uses. With `--irqchip-first` the slots are
//! registered after the irqchip instead, which costs milliseconds more on some hosts. Each step is timed on its own, wall and CPU, so Kite's
//! start-up and teardown figures can be compared with what KVM alone costs on this host.
//!
//! `cargo run --release --example kvm_cost [RUNS]` prints one line per guest size.

use std::time::Instant;

use kvm_bindings::{kvm_pit_config, kvm_userspace_memory_region};
use kvm_ioctls::Kvm;

const GIB: u64 = 1 << 30;
const GAP_START: u64 = 3 * GIB;
const GAP_END: u64 = 4 * GIB;

/// This thread's CPU time (user + system), in ms.
fn thread_cpu_ms() -> f64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes only `ts`, which lives for the call.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    ts.tv_sec as f64 * 1e3 + ts.tv_nsec as f64 / 1e6
}

/// Wall and CPU ms of `f`.
fn timed<T>(f: impl FnOnce() -> T) -> (T, f64, f64) {
    let (w, c) = (Instant::now(), thread_cpu_ms());
    let out = f();
    (out, w.elapsed().as_secs_f64() * 1e3, thread_cpu_ms() - c)
}

struct Sample {
    create: f64,
    register: f64,
    vcpu: f64,
    close: (f64, f64),
    unmap: f64,
}

fn irqchip(vm: &kvm_ioctls::VmFd) {
    vm.set_tss_address(0xfffb_d000).expect("TSS");
    vm.create_irq_chip().expect("irqchip");
    vm.create_pit2(kvm_pit_config::default()).expect("PIT");
}

fn one(kvm: &Kvm, size: u64, irqchip_first: bool) -> Sample {
    let (vm, create, _) = timed(|| kvm.create_vm().expect("create a VM"));
    if irqchip_first {
        irqchip(&vm);
    }
    let mut ranges = vec![(0u64, size.min(GAP_START))];
    if size > GAP_START {
        ranges.push((GAP_END, size - GAP_START));
    }
    let maps: Vec<(u64, *mut libc::c_void, u64)> = ranges
        .iter()
        .map(|&(gpa, len)| {
            // SAFETY: a fresh private anonymous mapping; nothing else refers to it.
            let host = unsafe {
                libc::mmap(
                    std::ptr::null_mut(),
                    len as usize,
                    libc::PROT_READ | libc::PROT_WRITE,
                    libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                    -1,
                    0,
                )
            };
            assert_ne!(host, libc::MAP_FAILED, "mmap {len} bytes");
            (gpa, host, len)
        })
        .collect();
    let ((), register, _) = timed(|| {
        for (slot, &(gpa, host, len)) in maps.iter().enumerate() {
            let region = kvm_userspace_memory_region {
                slot: slot as u32,
                flags: 0,
                guest_phys_addr: gpa,
                memory_size: len,
                userspace_addr: host as u64,
            };
            // SAFETY: the mapping outlives the VM (unmapped after the VM fd is closed below).
            unsafe { vm.set_user_memory_region(region) }.expect("memory slot");
        }
    });
    if !irqchip_first {
        irqchip(&vm);
    }
    let (vcpu, vcpu_ms, _) = timed(|| vm.create_vcpu(0).expect("vCPU"));
    let ((), close_wall, close_cpu) = timed(|| {
        drop(vcpu);
        drop(vm);
    });
    let ((), unmap, _) = timed(|| {
        for &(_, host, len) in &maps {
            // SAFETY: unmapping our own mapping, no longer used by anything.
            unsafe { libc::munmap(host, len as usize) };
        }
    });
    Sample {
        create,
        register,
        vcpu: vcpu_ms,
        close: (close_wall, close_cpu),
        unmap,
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let irqchip_first = args.iter().any(|a| a == "--irqchip-first");
    let runs: usize = args.iter().find_map(|a| a.parse().ok()).unwrap_or(11);
    let kvm = Kvm::new().expect("open /dev/kvm");
    println!(
        "median of {runs} runs, ms{}  create VM  register RAM  create vCPU  close (wall / CPU)  munmap",
        if irqchip_first {
            " (irqchip first)"
        } else {
            ""
        }
    );
    for size in [64 << 20, 256 << 20, GIB, 4 * GIB, 16 * GIB] {
        let s: Vec<Sample> = (0..runs).map(|_| one(&kvm, size, irqchip_first)).collect();
        let m = |f: fn(&Sample) -> f64| median(s.iter().map(f).collect());
        println!(
            "{:>6} MiB guest RAM            {:>8.3}  {:>12.3}  {:>11.3}  {:>8.3} / {:>7.3}  {:>6.3}",
            size >> 20,
            m(|s| s.create),
            m(|s| s.register),
            m(|s| s.vcpu),
            m(|s| s.close.0),
            m(|s| s.close.1),
            m(|s| s.unmap),
        );
    }
}
