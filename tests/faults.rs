//! Disk faults and stops under load, with the test guest driving virtio-blk:
//!
//! - the image's file system fills up (a 2 MiB tmpfs): IOERR for the writes past the space,
//!   one log line naming the host's error, the next flush fails, what was flushed is intact;
//! - the image is truncated under the running VM: reads past the new end fail, Kite runs on;
//! - a FIFO, an unattached or a mounted block device as the disk: one clear line at start-up;
//! - SIGKILL while the guest writes and flushes in a loop, at least 50 times: every block the
//!   guest saw flushed is on the image;
//! - SIGTERM, SIGINT and SIGHUP while the disk is busy: exit 128+N, nothing torn, nothing
//!   flushed lost.
//!
//! Each prints a one-line summary (`FAULTS ...`) with the figures the report needs.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use kite_workloads::flushlog::{self, BLOCK_BYTES, Slot};

const SECTOR: u64 = 512;

fn disk_arg(path: &Path) -> String {
    path_str(path).to_string()
}

/// `kite run` of test-guest scenario `name` with `--disk disk`, or what the machine lacks.
fn kite_cmd(name: &str, disk: &str, words: &str) -> Result<Command, (Need, String)> {
    if let Some(reason) = kvm_unavailable() {
        return Err((Need::Kvm, reason));
    }
    let elf = testguest().map_err(|reason| (Need::GuestImages, reason))?;
    let mut cmd = kite();
    cmd.args([
        "run",
        "--kernel",
        path_str(&elf),
        "--no-acpi",
        "--memory",
        "256M",
        "--disk",
        disk,
        "--cmdline",
        format!("kite_test={name} {words}").trim(),
    ]);
    Ok(cmd)
}

/// Peak RSS in MiB from Kite's `memory:` line.
fn peak_rss_mib(stderr: &str) -> Option<f64> {
    let rest = stderr.split("peak RSS ").nth(1)?;
    rest.split_whitespace().next()?.parse().ok()
}

/// A tmpfs of `size` mounted on a fresh directory, unmounted on drop.
struct Tmpfs {
    dir: PathBuf,
}

impl Tmpfs {
    fn mount(test: &str, size: &str) -> Result<Tmpfs, String> {
        if !is_root() {
            return Err("mounting a tmpfs needs root".into());
        }
        let dir = std::env::temp_dir().join(format!("kite-{test}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).map_err(|e| format!("cannot make {}: {e}", dir.display()))?;
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(&dir)
            .output()
            .map_err(|e| format!("cannot run mount: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "cannot mount a tmpfs: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        Ok(Tmpfs { dir })
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.dir).output();
        let _ = std::fs::remove_dir(&self.dir);
    }
}

#[test]
fn a_full_file_system_gives_io_errors_one_line_and_a_failing_flush() {
    const TEST: &str = "a_full_file_system_gives_io_errors_one_line_and_a_failing_flush";
    let fs = match Tmpfs::mount(TEST, "2M") {
        Ok(fs) => fs,
        Err(reason) => return skip(TEST, Need::Root, &reason),
    };
    // A sparse 8 MiB image on 2 MiB of space: the guest fills the space, not the disk.
    let img = fs.dir.join("disk.img");
    std::fs::File::create(&img)
        .and_then(|f| f.set_len(8 << 20))
        .unwrap();
    let cmd = match kite_cmd("virtio-blk-fill", &disk_arg(&img), "kite_seed=9") {
        Ok(c) => c,
        Err((need, reason)) => return skip(TEST, need, &reason),
    };
    let r = Run::parse("virtio-blk-fill", run(cmd, Duration::from_secs(60)));
    r.expect_ok();
    // The writes past the space failed with IOERR, all of them, and Kite ran on to the end.
    assert_eq!(r.num("error_status"), 1, "{}", r.result);
    let first_error = r.num("first_error_sector");
    assert!(
        first_error * SECTOR <= 2 << 20,
        "a write failed only at {first_error}"
    );
    let more = r.get("more_errors");
    let (failed, tried) = more.split_once('/').unwrap();
    assert_eq!(failed, tried, "every write past the space fails: {more}");
    // The flush after the failures reports them; the next one has nothing to report.
    assert_eq!(r.num("flush_after_error"), 1, "{}", r.result);
    assert_eq!(r.num("next_flush"), 0, "{}", r.result);
    assert_eq!(r.num("intact"), 1, "the flushed area reads back whole");
    // One error line, naming the host's error (not a guest memory error).
    let errors = r.out.error_lines();
    let first = errors.first().expect("the failed write is logged");
    assert!(
        first.contains("No space left on device") && first.contains("failed on the host"),
        "{first}"
    );
    assert_eq!(
        r.out.error_lines().len(),
        1,
        "one rate-limited line:\n{}",
        r.out.stderr
    );
    assert!(!r.out.stderr.contains("guest memory"), "{}", r.out.stderr);
    // The host finds the flushed area on the image.
    let flushed = r.num("flushed_bytes") as usize;
    let image = std::fs::read(&img).unwrap();
    assert_eq!(
        kite_workloads::disk_pattern_check(9, 0, &image[..flushed]),
        None
    );
    eprintln!(
        "FAULTS disk-full: tmpfs 2M, image 8M; {} writes of 64K ok, first IOERR at sector {first_error}, {more} later writes IOERR, flush after: IOERR, next flush: OK, flushed data intact, {} error line(s), peak RSS {:?} MiB",
        r.num("written_ok") + 4,
        r.out.error_lines().len(),
        peak_rss_mib(&r.out.stderr)
    );
}

#[test]
fn reads_past_the_end_of_an_image_truncated_under_the_vm_fail() {
    const TEST: &str = "reads_past_the_end_of_an_image_truncated_under_the_vm_fail";
    let img = temp_file(TEST, "disk.img", &vec![0x5au8; 8 << 20]);
    let cmd = match kite_cmd("virtio-blk-shrink", &disk_arg(&img), "") {
        Ok(c) => c,
        Err((need, reason)) => return skip(TEST, need, &reason),
    };
    let mut g = Guest::start(cmd);
    assert!(
        g.wait_for(Duration::from_secs(30), |o| o
            .contains("KITE-PROGRESS ready")),
        "the guest never got ready\n{}\n{}",
        g.out(),
        g.err()
    );
    // Half of it goes while the guest reads it over and over.
    std::fs::OpenOptions::new()
        .write(true)
        .open(&img)
        .unwrap()
        .set_len(4 << 20)
        .unwrap();
    let code = g.wait_exit(Duration::from_secs(60));
    let out = Outcome {
        code,
        stdout: g.out(),
        stderr: g.err(),
        elapsed: Duration::ZERO,
    };
    let r = Run::parse("virtio-blk-shrink", out);
    r.expect_ok();
    // Reads below the new end never fail; the first failing read is past it (wherever the
    // guest's pass over the disk was); the start still reads afterwards.
    let first_error = r.num("first_error_sector");
    assert!(
        ((4 << 20) / SECTOR..(8 << 20) / SECTOR).contains(&first_error),
        "first failing read at sector {first_error}"
    );
    assert_eq!(r.num("status"), 1);
    assert_eq!(r.num("reread_first"), 0);
    assert!(
        r.out.stderr.contains("past the end of the image file"),
        "{}",
        r.out.stderr
    );
    assert!(!r.out.stderr.contains("panicked"), "{}", r.out.stderr);
    eprintln!(
        "FAULTS shrink: 8M image truncated to 4M under the VM after {} full passes; reads from sector {} get IOERR, sector 0 still reads, exit {:?}, peak RSS {:?} MiB",
        r.num("passes"),
        r.num("first_error_sector"),
        r.out.code,
        peak_rss_mib(&r.out.stderr)
    );
}

/// Kite with `disk` must stop at start-up with exit 2 and one error line containing `want`.
fn refused(disk: &str, want: &str) {
    let elf = testguest().unwrap_or_else(|e| panic!("{e}"));
    let mut cmd = kite();
    cmd.args([
        "run",
        "--kernel",
        path_str(&elf),
        "--no-acpi",
        "--disk",
        disk,
    ]);
    let out = run(cmd, Duration::from_secs(20));
    assert_eq!(out.code, Some(2), "{}", out.stderr);
    let errors = out.error_lines();
    assert_eq!(errors.len(), 1, "{}", out.stderr);
    assert!(errors[0].contains(want), "{}", errors[0]);
    assert!(!out.stdout.contains("KITE-TEST"), "the guest must not run");
}

#[test]
fn a_fifo_as_the_disk_is_one_clear_line_and_no_hang() {
    const TEST: &str = "a_fifo_as_the_disk_is_one_clear_line_and_no_hang";
    if let Some(reason) = kvm_unavailable() {
        return skip(TEST, Need::Kvm, &reason);
    }
    let fifo = temp_file(TEST, "x", b"").with_file_name("pipe");
    let c = std::ffi::CString::new(path_str(&fifo)).unwrap();
    // SAFETY: mkfifo reads the NUL-terminated path we own.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    // Readonly used to wait in open(2) for a writer that never came.
    for disk in [
        path_str(&fifo).to_string(),
        format!("{},readonly", path_str(&fifo)),
    ] {
        refused(&disk, "is a FIFO (named pipe), not an image");
    }
}

/// `losetup` with `args`; its stdout.
fn losetup(args: &[&str]) -> Result<String, String> {
    let out = Command::new("losetup")
        .args(args)
        .output()
        .map_err(|e| format!("cannot run losetup: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "losetup {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// A loop device over a file, detached on drop.
struct Loop(String);

impl Drop for Loop {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).output();
        let _ = losetup(&["-d", &self.0]);
    }
}

#[test]
fn block_devices_work_and_a_mounted_one_is_refused() {
    const TEST: &str = "block_devices_work_and_a_mounted_one_is_refused";
    if !is_root() {
        return skip(TEST, Need::Root, "loop devices need root");
    }
    if let Some(reason) = kvm_unavailable() {
        return skip(TEST, Need::Kvm, &reason);
    }
    let img = temp_file(TEST, "disk.img", &vec![0u8; 4 << 20]);
    let dev = match losetup(&["-f", "--show", path_str(&img)]) {
        Ok(d) => Loop(d),
        Err(reason) => return skip(TEST, Need::Loop, &reason),
    };
    // A loop device is a disk like a file: the pattern goes through it to the file.
    let cmd = kite_cmd("virtio-blk", &dev.0, "kite_seed=3 kite_blk_mib=1").unwrap();
    let r = Run::parse("virtio-blk", run(cmd, Duration::from_secs(60)));
    r.expect_ok();
    drop(dev);
    let data = std::fs::read(&img).unwrap();
    assert_eq!(
        kite_workloads::disk_pattern_check(3, 0, &data[..1 << 20]),
        None
    );
    // Mounted, it is refused for writing: our writes would corrupt a live file system.
    let dev = match losetup(&["-f", "--show", path_str(&img)]) {
        Ok(d) => Loop(d),
        Err(reason) => return skip(TEST, Need::Loop, &reason),
    };
    let mnt = img.with_file_name("mnt");
    std::fs::create_dir_all(&mnt).unwrap();
    let mkfs = Command::new("mke2fs")
        .args(["-q", "-F", "-t", "ext4", &dev.0])
        .output();
    let mount = Command::new("mount").arg(&dev.0).arg(&mnt).output();
    match (mkfs, mount) {
        (Ok(a), Ok(b)) if a.status.success() && b.status.success() => {}
        _ => {
            return skip(
                TEST,
                Need::Loop,
                "cannot make and mount an ext4 file system on a loop device",
            );
        }
    }
    refused(&dev.0, "is in use on this host (mounted");
    let _ = Command::new("umount").arg(&mnt).output();
    drop(dev);
    // A loop device with no backing file has no medium.
    if let Ok(free) = losetup(&["-f"]) {
        refused(&format!("{free},readonly"), "has no medium");
    }
}

/// A running `kite run` whose stdout is collected as it comes, with its pid for signals.
struct Vm {
    child: Child,
    stdout: Arc<Mutex<String>>,
    stderr: Arc<Mutex<String>>,
}

impl Vm {
    fn start(mut cmd: Command) -> Vm {
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("kite starts");
        let (stdout, _) = collect(child.stdout.take().unwrap());
        let (stderr, _) = collect(child.stderr.take().unwrap());
        Vm {
            child,
            stdout,
            stderr,
        }
    }

    fn out(&self) -> String {
        self.stdout.lock().unwrap().clone()
    }

    fn err(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// The highest `KITE-FLUSHED seq=` of a whole line (one cut by a kill does not count).
    fn flushed(&self) -> u64 {
        let out = self.out();
        let whole = &out[..out.rfind('\n').map_or(0, |i| i + 1)];
        whole
            .lines()
            .filter_map(|l| l.strip_prefix("KITE-FLUSHED seq="))
            .filter_map(|n| n.trim().parse().ok())
            .max()
            .unwrap_or(0)
    }

    /// Waits until the guest has flushed at least `seq` blocks; false if kite ended or 30 s
    /// passed first.
    fn wait_flushed(&mut self, seq: u64) -> bool {
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(30) {
            if self.flushed() >= seq {
                return true;
            }
            if self.child.try_wait().unwrap().is_some() {
                return false;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        false
    }

    fn signal(&self, sig: i32) {
        let pid = libc::pid_t::try_from(self.child.id()).unwrap();
        // SAFETY: kill(2) on our own child, not yet reaped, so the pid still names it.
        assert_eq!(unsafe { libc::kill(pid, sig) }, 0);
    }

    /// VmHWM of the running kite, in KiB.
    fn peak_rss_kib(&self) -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).ok()?;
        let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
        line.split_whitespace().nth(1)?.parse().ok()
    }

    /// Waits for the exit; the exit code (None: killed by a signal). Fails after 30 s.
    fn wait(&mut self) -> Option<i32> {
        let start = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                // Let the reader threads take the last bytes.
                std::thread::sleep(Duration::from_millis(50));
                return status.code();
            }
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "kite did not exit\n{}",
                self.err()
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Slots and blocks per flush of the flushlog scenario: a ring of 256 4 KiB blocks (64 for
/// the kill test, so that most runs wrap it and overwrites are checked too).
const SLOTS: u64 = 256;
const KILL_SLOTS: u64 = 64;
const BATCH: u64 = 8;

/// Checks an image the flushlog scenario wrote with `seed`, given the last sequence number
/// the guest saw flushed. Every block up to `flushed` must be there (or a later one in its
/// slot); a slot may hold a torn block only if `torn_ok` and a write after `flushed` went
/// there. Returns how many flushed blocks were checked.
fn check_flushlog(
    image: &[u8],
    slots: u64,
    seed: u64,
    flushed: u64,
    torn_ok: bool,
) -> Result<u64, String> {
    // After the last whole line the guest may have flushed one more batch (its line cut) and
    // started the next.
    let newest = flushed + 2 * BATCH;
    let mut checked = 0;
    for slot in 0..slots {
        let at = slot as usize * BLOCK_BYTES;
        let got = flushlog::read(seed, slot, &image[at..at + BLOCK_BYTES]);
        // The newest flushed block in this slot, if any.
        let want = (flushed >= slot)
            .then(|| flushed - (flushed - slot) % slots)
            .filter(|&w| w >= 1);
        let later_write = (flushed + 1..=newest).any(|s| s % slots == slot);
        match (want, got) {
            (_, Slot::Block(s)) if s % slots != slot || s > newest => {
                return Err(format!(
                    "slot {slot} holds block {s}, which never went there"
                ));
            }
            (Some(w), Slot::Block(s)) if s < w => {
                return Err(format!(
                    "slot {slot} holds block {s}, but block {w} was flushed there (last flushed {flushed})"
                ));
            }
            (Some(w), Slot::Empty) => {
                return Err(format!(
                    "slot {slot} is empty, but block {w} was flushed there"
                ));
            }
            (_, Slot::Torn) if !(torn_ok && later_write) => {
                return Err(format!(
                    "slot {slot} holds a torn block (last flushed {flushed})"
                ));
            }
            _ => {}
        }
        checked += u64::from(want.is_some());
    }
    Ok(checked)
}

/// xorshift64, for kill times.
fn next_rand(x: &mut u64) -> u64 {
    *x ^= *x << 13;
    *x ^= *x >> 7;
    *x ^= *x << 17;
    *x
}

#[test]
fn sigkill_during_writes_and_flushes_loses_no_flushed_block() {
    const TEST: &str = "sigkill_during_writes_and_flushes_loses_no_flushed_block";
    let kills: u64 = std::env::var("KITE_CRASH_KILLS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(60);
    let img = temp_file(TEST, "disk.img", b"");
    let mut rng = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
        | 1;
    let (mut blocks, mut max_flushed, mut peak_kib, mut torn_seen) = (0, 0, 0, 0);
    let start = Instant::now();
    for i in 0..kills {
        std::fs::write(&img, vec![0u8; (KILL_SLOTS as usize) * BLOCK_BYTES]).unwrap();
        let seed = i + 1;
        let words = format!("kite_seed={seed} kite_blk_slots={KILL_SLOTS} kite_blk_batch={BATCH}");
        let cmd = match kite_cmd("virtio-blk-flushlog", &disk_arg(&img), &words) {
            Ok(c) => c,
            Err((need, reason)) => return skip(TEST, need, &reason),
        };
        let mut vm = Vm::start(cmd);
        // Kill at a random moment once the loop runs: 0-120 ms after the first flush, so
        // some kills land in a write, some in a flush, some between (and after a wrap of the
        // 64 slots when late).
        assert!(
            vm.wait_flushed(1),
            "the guest never flushed\n{}\n{}",
            vm.out(),
            vm.err()
        );
        std::thread::sleep(Duration::from_micros(next_rand(&mut rng) % 120_000));
        peak_kib = peak_kib.max(vm.peak_rss_kib().unwrap_or(0));
        vm.signal(libc::SIGKILL);
        assert_eq!(vm.wait(), None, "kite was killed");
        let flushed = vm.flushed();
        let image = std::fs::read(&img).unwrap();
        match check_flushlog(&image, KILL_SLOTS, seed, flushed, true) {
            Ok(n) => blocks += n,
            Err(e) => panic!("kill {i}: {e}\n{}", vm.err()),
        }
        torn_seen += (0..KILL_SLOTS)
            .filter(|&s| {
                let at = s as usize * BLOCK_BYTES;
                flushlog::read(seed, s, &image[at..at + BLOCK_BYTES]) == Slot::Torn
            })
            .count();
        max_flushed = max_flushed.max(flushed);
    }
    eprintln!(
        "FAULTS sigkill: {kills} kills in {:.1} s; {blocks} flushed blocks checked, 0 lost; last flushed block up to {max_flushed}; {torn_seen} torn unflushed blocks; peak RSS {:.1} MiB",
        start.elapsed().as_secs_f64(),
        peak_kib as f64 / 1024.0
    );
}

#[test]
fn stop_signals_while_the_disk_is_busy_finish_requests_and_sync() {
    const TEST: &str = "stop_signals_while_the_disk_is_busy_finish_requests_and_sync";
    let img = temp_file(TEST, "disk.img", b"");
    for (sig, name) in [
        (libc::SIGTERM, "SIGTERM"),
        (libc::SIGINT, "SIGINT"),
        (libc::SIGHUP, "SIGHUP"),
    ] {
        std::fs::write(&img, vec![0u8; (SLOTS as usize) * BLOCK_BYTES]).unwrap();
        let seed = 100 + sig as u64;
        let words = format!("kite_seed={seed} kite_blk_slots={SLOTS} kite_blk_batch={BATCH}");
        let cmd = match kite_cmd("virtio-blk-flushlog", &disk_arg(&img), &words) {
            Ok(c) => c,
            Err((need, reason)) => return skip(TEST, need, &reason),
        };
        let mut vm = Vm::start(cmd);
        // Past a wrap of the slots, so that overwrites are in the image too.
        assert!(
            vm.wait_flushed(SLOTS + 5 * BATCH),
            "the guest never got going\n{}\n{}",
            vm.out(),
            vm.err()
        );
        vm.signal(sig);
        let code = vm.wait();
        let err = vm.err();
        assert_eq!(code, Some(128 + sig), "{name}: {err}");
        assert!(
            err.contains(&format!("stopped the VM on signal {sig}")),
            "{err}"
        );
        assert!(!err.contains("error"), "{name}: {err}");
        let flushed = vm.flushed();
        let image = std::fs::read(&img).unwrap();
        // Requests Kite took complete whole before it stops: nothing torn, even unflushed.
        let checked = check_flushlog(&image, SLOTS, seed, flushed, false)
            .unwrap_or_else(|e| panic!("{name}: {e}\n{err}"));
        eprintln!(
            "FAULTS {name}: stopped with {} after block {flushed} was flushed; {checked} flushed blocks checked, none torn, 0 lost; peak RSS {:?} MiB",
            128 + sig,
            peak_rss_mib(&err)
        );
    }
}
