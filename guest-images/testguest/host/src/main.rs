//! Runs the test guest's `cpu` or `mem` workload on the host and prints the same
//! `KITE-TEST` line, with the same keys, as the guest scenario:
//!
//! ```text
//! KITE-TEST cpu ok cycles=<n> checksum=0x<16 hex digits>
//! KITE-TEST mem ok bytes_per_cycle=<n.nnn> bytes=<n> cycles=<n>
//! ```
//!
//! Usage: `kite-workload-host cpu|mem`. Cycles are TSC ticks (rdtsc), as in the guest.

use std::process::ExitCode;

fn rdtsc() -> u64 {
    // SAFETY: rdtsc has no memory effects; x86-64 always has it.
    unsafe { core::arch::x86_64::_rdtsc() }
}

fn main() -> ExitCode {
    let name = std::env::args().nth(1).unwrap_or_default();
    match name.as_str() {
        "cpu" => {
            let start = rdtsc();
            let checksum = kite_workloads::cpu_workload();
            let cycles = rdtsc().wrapping_sub(start);
            println!("KITE-TEST cpu ok cycles={cycles} checksum={checksum:#018x}");
        }
        "mem" => {
            let mut buf = vec![0u8; kite_workloads::MEM_BUF_BYTES];
            kite_workloads::mem_prepare(&mut buf);
            let start = rdtsc();
            let bytes = kite_workloads::mem_workload(&mut buf);
            let cycles = rdtsc().wrapping_sub(start);
            let milli = kite_workloads::milli_ratio(bytes, cycles);
            println!(
                "KITE-TEST mem ok bytes_per_cycle={}.{:03} bytes={bytes} cycles={cycles}",
                milli / 1000,
                milli % 1000
            );
        }
        _ => {
            println!("KITE-TEST {} FAIL unknown scenario", if name.is_empty() { "-" } else { &name });
            return ExitCode::FAILURE;
        }
    }
    ExitCode::SUCCESS
}
