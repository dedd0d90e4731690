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
            println!(
                "KITE-TEST {} FAIL unknown scenario",
                if name.is_empty() { "-" } else { &name }
            );
            return ExitCode::FAILURE;
        }
    }
    ExitCode::SUCCESS
}

/// The guest's command-line parser is plain `core` code: test it here, on the host.
#[cfg(test)]
#[path = "../../src/cmdline.rs"]
#[allow(dead_code)]
mod guest_cmdline;

#[cfg(test)]
mod tests {
    use super::guest_cmdline::{Cmdline, VirtioMmioDevice, parse_number};

    #[test]
    fn words_keys_and_quotes() {
        let c =
            Cmdline::new(b"  console=ttyS0 kite_test=hello  x=\"a b\" kite_n=0x10 kite_test=other");
        assert_eq!(c.get("kite_test"), Some(&b"hello"[..]));
        assert_eq!(c.get("x"), Some(&b"a b"[..]));
        assert_eq!(c.get_u64("kite_n"), Some(16));
        assert_eq!(c.get("kite"), None);
        assert_eq!(c.words().count(), 5);
    }

    #[test]
    fn numbers() {
        assert_eq!(parse_number(b"100000"), Some(100_000));
        assert_eq!(parse_number(b"0xd0001000"), Some(0xd000_1000));
        assert_eq!(parse_number(b"4K"), Some(4096));
        assert_eq!(parse_number(b"2m"), Some(2 << 20));
        assert_eq!(parse_number(b"12x"), None);
        assert_eq!(parse_number(b""), None);
        assert_eq!(parse_number(b"0x"), None);
        assert_eq!(parse_number(b"99999999999999999999999"), None);
    }

    #[test]
    fn virtio_mmio_entries() {
        let c = Cmdline::new(
            b"virtio_mmio.device=4K@0xd0001000:5 virtio_mmio.device=0x1000@0xd0002000:6:3 \
              virtio_mmio.device=bad virtio_mmio.device=4K@0xd0003000",
        );
        let devs: Vec<VirtioMmioDevice> = c.virtio_mmio_devices().collect();
        assert_eq!(
            devs,
            [
                VirtioMmioDevice {
                    size: 4096,
                    addr: 0xd000_1000,
                    irq: 5,
                    id: None
                },
                VirtioMmioDevice {
                    size: 4096,
                    addr: 0xd000_2000,
                    irq: 6,
                    id: Some(3)
                },
            ]
        );
    }

    #[test]
    fn cpu_checksum_is_stable() {
        assert_eq!(kite_workloads::cpu_workload(), 0xac29_1310_aae5_0d5b);
    }

    #[test]
    fn mem_workload_counts_bytes() {
        let mut buf = vec![0u8; 1 << 20];
        kite_workloads::mem_prepare(&mut buf);
        assert_eq!(kite_workloads::mem_workload(&mut buf), 5 << 20);
        assert_eq!(kite_workloads::milli_ratio(3000, 1000), 3000);
        assert_eq!(kite_workloads::milli_ratio(1, 0), 0);
    }

    #[test]
    fn disk_pattern_is_per_sector_and_checkable() {
        use kite_workloads::{
            DISK_SECTOR_BYTES, disk_pattern_check, disk_pattern_fill, disk_pattern_word,
        };
        let mut whole = vec![0u8; 8 * DISK_SECTOR_BYTES];
        disk_pattern_fill(3, 10, &mut whole);
        // A piece filled on its own matches the same place of the whole.
        let mut piece = vec![0u8; 2 * DISK_SECTOR_BYTES];
        disk_pattern_fill(3, 13, &mut piece);
        assert_eq!(piece, whole[3 * DISK_SECTOR_BYTES..5 * DISK_SECTOR_BYTES]);
        let w = u64::from_le_bytes(whole[DISK_SECTOR_BYTES + 16..][..8].try_into().unwrap());
        assert_eq!(w, disk_pattern_word(3, 11, 2));
        assert_eq!(disk_pattern_check(3, 10, &whole), None);
        assert_ne!(disk_pattern_check(4, 10, &whole), None);
        assert_eq!(disk_pattern_check(3, 11, &whole), Some(0));
        whole[5 * DISK_SECTOR_BYTES + 9] ^= 1;
        assert_eq!(
            disk_pattern_check(3, 10, &whole),
            Some(5 * DISK_SECTOR_BYTES + 8)
        );
    }

    #[test]
    fn disk_checksum_adds_up_in_any_order() {
        use kite_workloads::{DISK_SECTOR_BYTES, disk_checksum, disk_pattern_fill};
        let mut disk = vec![0u8; 16 * DISK_SECTOR_BYTES];
        disk_pattern_fill(1, 0, &mut disk);
        let whole = disk_checksum(0, &disk);
        let (a, b) = disk.split_at(5 * DISK_SECTOR_BYTES);
        assert_eq!(disk_checksum(5, b).wrapping_add(disk_checksum(0, a)), whole);
        // The sector number counts, not just the bytes.
        assert_ne!(disk_checksum(1, &disk), whole);
        assert_ne!(disk_checksum(0, &vec![0u8; DISK_SECTOR_BYTES]), 0);
    }
}
