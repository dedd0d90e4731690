//! A hostile guest: the test guest's `hostile-*` scenarios attack Kite's virtio devices (huge
//! descriptor chains, notification storms on empty rings, resets in the middle of I/O, random
//! values in every virtio-mmio register, vsock packets that lie about their length and credit).
//! Kite must stay up, answer as the virtio spec says (each scenario checks the answers and then
//! uses the devices properly once more), the guest must end the VM normally (exit 0), the disk
//! must hold exactly what the guest last wrote properly, and Kite's own memory (its report at
//! exit: peak RSS less guest RAM touched) must stay within 1 MiB of a benign run of the same
//! machine. While the guest spins on notifications, Kite's CPU time must be on its vCPU
//! thread, not its event loop.

mod common;

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use common::watch::{Peer, ThreadCpu, Watched, memory_mib, unix_peer};
use common::*;

const LIMIT: Duration = Duration::from_secs(90);
const DISK: usize = 8 << 20;

/// A machine of 256 MiB with a disk, virtio-rng and vsock (an echo server at port 1234, a host
/// program that never reads at 1235), for one test.
struct Machine {
    test: &'static str,
    image: PathBuf,
    socket: PathBuf,
    stop: Arc<AtomicBool>,
    peers: Vec<std::thread::JoinHandle<()>>,
}

impl Machine {
    fn new(test: &'static str) -> Option<Machine> {
        if let Some(reason) = kvm_unavailable() {
            skip(test, &reason);
            return None;
        }
        let image = temp_file(test, "disk.img", &vec![0u8; DISK]);
        let socket = image.with_file_name("v.sock");
        let stop = Arc::new(AtomicBool::new(false));
        let mut peers = Vec::new();
        for (port, kind) in [(1234, Peer::Echo), (1235, Peer::Stall)] {
            let path = PathBuf::from(format!("{}_{port}", path_str(&socket)));
            peers.push(unix_peer(&path, kind, stop.clone()).1);
        }
        Some(Machine {
            test,
            image,
            socket,
            stop,
            peers,
        })
    }

    fn command(&self, scenario: &str, words: &str) -> std::process::Command {
        let elf = testguest().unwrap_or_else(|e| panic!("{e}"));
        let cmdline = format!("kite_test={scenario} {words}");
        let vsock = format!("cid=9,socket={}", path_str(&self.socket));
        let mut cmd = kite();
        cmd.args(["run", "--kernel", path_str(&elf), "--no-acpi"])
            .args(["--memory", "256M", "--disk", path_str(&self.image)])
            .args(["--vsock", &vsock, "--cmdline", cmdline.trim()]);
        cmd
    }

    /// Kite's own memory (MiB) in a benign run of this machine: the `load` scenario.
    fn benign_overhead(&self) -> f64 {
        let out = run(
            self.command("load", "kite_seed=2 kite_vsock_bytes=64K"),
            LIMIT,
        );
        let mem = memory_mib(&out.stderr);
        Run::parse("load", out).expect_ok();
        // The attack starts from a zeroed disk again.
        std::fs::write(&self.image, vec![0u8; DISK]).unwrap();
        mem.expect("a memory report").0
    }

    /// Runs `scenario`, which must say ok and end the VM normally, with Kite's memory within
    /// 1 MiB of the benign run's; the result and the threads' CPU time.
    fn attack(&self, scenario: &str, words: &str) -> (Run, ThreadCpu) {
        let benign = self.benign_overhead();
        let (out, cpu) = Watched::spawn(self.command(scenario, words)).finish(LIMIT);
        let (overhead, peak) =
            memory_mib(&out.stderr).unwrap_or_else(|| panic!("no memory report\n{}", out.stderr));
        let r = Run::parse(scenario, out);
        r.expect_ok();
        eprintln!(
            "{}: {scenario}: {} | Kite's own memory {overhead:.1} MiB (benign run {benign:.1}), \
             peak RSS {peak:.1} MiB; CPU ms: vcpu0 {} main {}",
            self.test,
            r.result,
            ThreadCpu::ms(cpu.of("vcpu")),
            ThreadCpu::ms(cpu.of("kite"))
        );
        assert!(
            overhead <= benign + 1.0,
            "{scenario}: Kite's own memory grew to {overhead:.1} MiB (benign run: {benign:.1} MiB)"
        );
        (r, cpu)
    }

    /// Whether the image is all the pattern of `seed` (all zeroes for `None`).
    fn disk_is(&self, seed: Option<u64>) {
        let data = std::fs::read(&self.image).unwrap();
        assert_eq!(data.len(), DISK, "the image changed size");
        match seed {
            Some(seed) => {
                if let Some(off) = kite_workloads::disk_pattern_check(seed, 0, &data) {
                    panic!("the image differs from the pattern of seed {seed} at byte {off}");
                }
            }
            None => assert!(data.iter().all(|&b| b == 0), "the image was written"),
        }
    }
}

impl Drop for Machine {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        for p in self.peers.drain(..) {
            let _ = p.join();
        }
    }
}

#[test]
fn huge_descriptor_chains_are_refused_and_the_disk_is_untouched() {
    let Some(m) = Machine::new("huge_descriptor_chains_are_refused_and_the_disk_is_untouched")
    else {
        return;
    };
    let (r, _) = m.attack("hostile-huge", "");
    // Blk: a write from all of RAM, a read into the free block, 15 buffers of all of RAM and a
    // header buffer of all of RAM: IOERR (status 1, one byte written); 200 buffers of all of
    // RAM (over the 4 GiB a chain may hold): DEVICE_NEEDS_RESET; then a proper read.
    assert_eq!(r.get("blk"), "s1u1,s1u1,s1u1,s1u1,reset,ok", "{}", r.result);
    // Rng: the free block and 15 of it get one request's worth (64 KiB); a device-readable
    // buffer and one past RAM are returned unused; 200 free blocks: NEEDS_RESET.
    assert_eq!(r.get("rng"), "u65536,u65536,u0,u0,reset,ok", "{}", r.result);
    m.disk_is(None);
}

#[test]
fn notification_storms_cost_the_guest_not_kite() {
    let Some(m) = Machine::new("notification_storms_cost_the_guest_not_kite") else {
        return;
    };
    let (r, cpu) = m.attack("hostile-notify", "kite_ms=3000");
    assert_eq!(r.num("devices"), 3, "{}", r.result);
    assert!(r.num("notifies") > 1000, "{}", r.result);
    assert_eq!(r.get("then_rng"), "bytes=4096", "{}", r.result);
    let (vcpu, main) = (cpu.of("vcpu"), cpu.of("kite"));
    assert!(
        vcpu > 0 && main * 2 <= vcpu,
        "while the guest spun on notifications Kite's main thread used {} ms of CPU, its vCPU \
         thread {} ms",
        ThreadCpu::ms(main),
        ThreadCpu::ms(vcpu)
    );
    m.disk_is(None);
}

#[test]
fn resets_in_the_middle_of_io_lose_nothing() {
    let Some(m) = Machine::new("resets_in_the_middle_of_io_lose_nothing") else {
        return;
    };
    let (r, _) = m.attack("hostile-reset", "kite_rounds=200 kite_seed=9");
    assert_eq!(r.num("rounds"), 200, "{}", r.result);
    assert_eq!(r.num("vsock"), 1, "{}", r.result);
    assert_eq!(r.num("sectors"), (DISK / 512) as u64, "{}", r.result);
    // The check after the resets wrote the pattern over the whole disk: a write from a reset
    // round landing after it would show here.
    m.disk_is(Some(9));
}

#[test]
fn random_register_writes_leave_the_devices_working() {
    let Some(m) = Machine::new("random_register_writes_leave_the_devices_working") else {
        return;
    };
    let (r, _) = m.attack("hostile-mmio", "kite_rounds=30 kite_seed=4");
    assert_eq!(r.num("devices"), 3, "{}", r.result);
    assert_eq!(r.num("writes"), 30 * 3 * 128 * 2, "{}", r.result);
    assert_eq!(r.num("blk_ok"), 1, "{}", r.result);
    assert_eq!(r.get("rng_bytes"), "4096", "{}", r.result);
    m.disk_is(Some(4));
}

#[test]
fn lying_vsock_packets_are_reset() {
    let Some(m) = Machine::new("lying_vsock_packets_are_reset") else {
        return;
    };
    let (r, _) = m.attack("hostile-vsock", "kite_rounds=20");
    // 5 lies a round, 20 rounds, and the overrun: each answered with RST.
    assert_eq!(r.num("rsts"), 101, "{}", r.result);
    // The overrun was cut off past Kite's 256 KiB buffer (plus what the host socket holds),
    // well before the 2 MiB the guest tried.
    let overrun = r.num("overrun_sent");
    assert!(overrun > 256 << 10 && overrun < 2 << 20, "{}", r.result);
    assert_eq!(r.num("credit_echo"), 16384, "{}", r.result);
    assert_eq!(r.num("proper_echo"), 4096, "{}", r.result);
}
