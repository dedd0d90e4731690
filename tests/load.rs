//! Many VMs at once: 20 `kite run` processes started together, each a 64 MiB test guest with a
//! virtio-blk disk of its own, virtio-rng and a vsock device to an echo server of its own,
//! running the `load` scenario (the blk pattern over the whole disk read back and flushed,
//! 4 KiB of entropy, 64 KiB echoed over vsock). Every one must report ok, every disk must be
//! byte for byte the pattern its guest wrote, every echo server must have seen all the bytes,
//! and no Kite's own memory (its report at exit: peak RSS less guest RAM touched) may exceed
//! that of the same machine run alone by more than 1 MiB.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use common::watch::{Peer, memory_mib, unix_peer};
use common::*;

const VMS: usize = 20;
const DISK: usize = 4 << 20;
const VSOCK_BYTES: u64 = 64 << 10;
const LIMIT: Duration = Duration::from_secs(120);

struct Machine {
    image: std::path::PathBuf,
    socket: std::path::PathBuf,
    seed: u64,
}

impl Machine {
    fn new(test: &str, i: usize) -> Machine {
        let image = temp_file(test, &format!("disk{i}.img"), &vec![0u8; DISK]);
        let socket = image.with_file_name(format!("v{i}.sock"));
        Machine {
            image,
            socket,
            seed: 100 + i as u64,
        }
    }

    fn command(&self, elf: &std::path::Path) -> std::process::Command {
        let mut cmd = kite();
        let vsock = format!("cid={},socket={}", 3 + self.seed, path_str(&self.socket));
        let cmdline = format!(
            "kite_test=load kite_seed={} kite_vsock_port=1234 kite_vsock_bytes={VSOCK_BYTES}",
            self.seed
        );
        cmd.args([
            "run",
            "--kernel",
            path_str(elf),
            "--no-acpi",
            "--memory",
            "64M",
            "--disk",
            path_str(&self.image),
            "--vsock",
            &vsock,
            "--cmdline",
            &cmdline,
        ]);
        cmd
    }

    /// Checks the outcome, the image and returns Kite's memory overhead in MiB.
    fn check(&self, i: usize, out: Outcome) -> f64 {
        let overhead = memory_mib(&out.stderr)
            .unwrap_or_else(|| panic!("VM {i}: no memory report\n{}", out.stderr))
            .0;
        let r = Run::parse("load", out);
        r.expect_ok();
        assert_eq!(
            r.num("sectors"),
            (DISK / 512) as u64,
            "VM {i}: {}",
            r.result
        );
        assert_eq!(r.num("seed"), self.seed, "VM {i}: {}", r.result);
        assert_eq!(r.get("flushed"), "1", "VM {i}: {}", r.result);
        assert_eq!(r.num("rng_bytes"), 4096, "VM {i}: {}", r.result);
        assert_eq!(r.num("vsock_echoed"), VSOCK_BYTES, "VM {i}: {}", r.result);
        let data = std::fs::read(&self.image).unwrap();
        assert_eq!(data.len(), DISK, "VM {i}: the image changed size");
        if let Some(off) = kite_workloads::disk_pattern_check(self.seed, 0, &data) {
            panic!("VM {i}: image differs from its guest's pattern at byte {off}");
        }
        overhead
    }
}

#[test]
fn twenty_vms_at_once_lose_nothing() {
    const TEST: &str = "twenty_vms_at_once_lose_nothing";
    if let Some(reason) = kvm_unavailable() {
        return skip(TEST, Need::Kvm, &reason);
    }
    let elf = testguest().unwrap_or_else(|e| panic!("{e}"));
    let machines: Vec<Machine> = (0..=VMS).map(|i| Machine::new(TEST, i)).collect();
    let stop = Arc::new(AtomicBool::new(false));
    let peers: Vec<_> = machines
        .iter()
        .map(|m| {
            let listen = std::path::PathBuf::from(format!("{}_1234", path_str(&m.socket)));
            unix_peer(&listen, Peer::Echo, stop.clone())
        })
        .collect();

    // The last machine alone first: Kite's usual memory for this machine.
    let alone = machines[VMS].check(VMS, run(machines[VMS].command(&elf), LIMIT));

    // Then the 20 others all at once.
    let children: Vec<_> = machines[..VMS]
        .iter()
        .map(|m| {
            let cmd = m.command(&elf);
            std::thread::spawn(move || run(cmd, LIMIT))
        })
        .collect();
    let outcomes: Vec<Outcome> = children.into_iter().map(|c| c.join().unwrap()).collect();
    let mut worst = 0.0f64;
    for (i, (m, out)) in machines.iter().zip(outcomes).enumerate() {
        let overhead = m.check(i, out);
        worst = worst.max(overhead);
        assert!(
            overhead <= alone + 1.0,
            "VM {i}: Kite's own memory was {overhead:.1} MiB with {VMS} VMs at once, {alone:.1} MiB alone"
        );
    }
    stop.store(true, Ordering::SeqCst);
    for (i, (stats, handle)) in peers.into_iter().enumerate() {
        handle.join().unwrap();
        assert_eq!(
            stats.bytes.load(Ordering::SeqCst),
            VSOCK_BYTES,
            "echo server of VM {i}"
        );
    }
    eprintln!(
        "{VMS} VMs at once: Kite's own memory at most {worst:.1} MiB each (alone: {alone:.1} MiB)"
    );
}
