//! Snapshots of the ring-3 test guest: paused in the middle of a scenario, saved with
//! `PUT /snapshot/create` (or `kite snapshot`), and restored in a new process (with
//! `PUT /snapshot/load` or `kite restore`), where the scenario finishes with a correct result
//! line: tick, smp on 2 and 8 vCPUs, virtio-blk writes (also on io_uring, and through a rate
//! limiter that must still hold after the restore), virtio-rng, and vsock echo with its
//! connection open (the guest sees the transport reset and connects again). `GET /vm/config`
//! of a restored VM. And the bad input of issue 18: damaged, truncated and other-version files,
//! a short memory file, create while running, load after start, a directory that does not exist.
//! (Loads on the Uffd backend: tests/snapshot_uffd.rs.)

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::api::*;
use common::snap::*;
use common::*;

const LIMIT: Duration = Duration::from_secs(60);

/// Pause `vm` and write its snapshot to `dir/vmstate` and `dir/memory`.
fn create(vm: &ApiVm, dir: &Path) -> (PathBuf, PathBuf) {
    let (state, mem) = (dir.join("vmstate"), dir.join("memory"));
    vm.ok("PATCH", "/vm", PAUSE);
    vm.ok(
        "PUT",
        "/snapshot/create",
        &create_body("Full", &state, &mem),
    );
    (state, mem)
}

/// A new `kite run --api-sock` that loads the snapshot and resumes it.
fn load(test: &str, state: &Path, mem: &Path) -> ApiVm {
    let vm = ApiVm::start(&format!("{test}-restored"), &[]);
    vm.ok(
        "PUT",
        "/snapshot/load",
        &load_body(state, "File", mem, true),
    );
    vm
}

#[test]
fn a_ticking_guest_goes_on_where_it_was_in_a_new_process() {
    let test = "snap_tick";
    let Some(kernel) = ready(test) else { return };
    let dir = snap_dir(test);
    let vm = start(
        test,
        &kernel,
        "256M",
        &[],
        "kite_test=tick kite_tick_ms=5 kite_n=200",
    );
    vm.wait_stdout(LIMIT, |out| last_tick(out) >= 10);
    vm.bad(
        "PUT",
        "/snapshot/create",
        Some(r#"{"snapshot_path": "/tmp/x", "mem_file_path": "/tmp/y"}"#),
        "pause it first",
    );
    let (state, mem) = create(&vm, &dir);
    std::thread::sleep(Duration::from_millis(50));
    let before = vm.stdout();
    let paused_at = last_tick(&before);
    assert!(paused_at < 200, "the scenario ended before the snapshot");
    // The memory file is sparse: most of 256 MiB was never touched.
    let meta = std::fs::metadata(&mem).unwrap();
    assert_eq!(meta.len(), 256 << 20);
    use std::os::unix::fs::MetadataExt;
    assert!(
        meta.blocks() * 512 < 16 << 20,
        "{} bytes allocated",
        meta.blocks() * 512
    );
    drop(vm);

    let mut restored = load(test, &state, &mem);
    restored.bad(
        "PUT",
        "/snapshot/load",
        Some("{\"snapshot_path\": \"x\", \"mem_file_path\": \"y\"}"),
        "already running",
    );
    assert_eq!(restored.wait(LIMIT), Some(0), "{}", restored.stderr());
    let out = restored.stdout();
    assert!(out.contains("KITE-TEST tick ok ticks=200"), "{out}");
    // The two consoles joined are one run: every tick once, in order (joined, because the
    // snapshot may catch the guest in the middle of a line: `ti` before, `ck 12` after).
    let all = ticks(&format!("{before}{out}"));
    assert_eq!(all, (1..=200).collect::<Vec<u64>>(), "{before}\n---\n{out}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn two_vcpus_restored_with_kite_restore_finish_their_scenario() {
    smp_restored("snap_smp", 2);
}

#[test]
fn eight_vcpus_restored_with_kite_restore_finish_their_scenario() {
    smp_restored("snap_smp8", 8);
}

/// The smp scenario on `cpus` vCPUs, snapshotted with `kite snapshot` while it brings the
/// APs up and restored with `kite restore` in a new process: every AP checks in.
fn smp_restored(test: &str, cpus: u8) {
    let Some(kernel) = ready(test) else { return };
    let dir = snap_dir(test);
    let cpus_arg = cpus.to_string();
    // smp brings the APs up with INIT-SIPI-SIPI and waits for them: pause as early as
    // possible, so that the snapshot falls inside the scenario; try again if it finished.
    for attempt in 0..5 {
        let vm = start(
            &format!("{test}{attempt}"),
            &kernel,
            "64M",
            &["--cpus", &cpus_arg],
            "kite_test=smp",
        );
        let out = kite_snapshot(&vm.sock, &dir);
        std::thread::sleep(Duration::from_millis(50));
        // A guest that finished first has ended its VM: the snapshot finds no socket.
        if vm.stdout().contains("KITE-TEST") {
            eprintln!("attempt {attempt}: the scenario ended before the snapshot; again");
            continue;
        }
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        drop(vm);
        let mut cmd = kite();
        cmd.arg("restore").arg(&dir).args(["--timeout", "30"]);
        let run = run(cmd, LIMIT);
        assert_eq!(run.code, Some(0), "{}", run.stderr);
        let want = format!("KITE-TEST smp ok cpus={cpus} expected={cpus}");
        assert!(run.stdout.contains(&want), "{}\n{}", run.stdout, run.stderr);
        let _ = std::fs::remove_dir_all(&dir);
        return;
    }
    panic!("the smp scenario ended before every one of 5 snapshots");
}

#[test]
fn disk_writes_go_on_after_restore_and_the_disk_has_what_the_guest_wrote() {
    snapshot_during_disk_io("snap_blk", "");
}

/// The same on an io_uring disk (`io=uring`): the requests in flight at the pause complete
/// before the snapshot is written.
#[test]
fn an_io_uring_disk_is_drained_before_the_snapshot() {
    let test = "snap_blk_uring";
    if io_uring_unavailable(test) {
        return;
    }
    snapshot_during_disk_io(test, ",io=uring");
}

/// Snapshot a VM in the middle of the virtio-blk check (its disk given as `--disk
/// PATH{options}`), restore it and find the whole pattern on the disk.
fn snapshot_during_disk_io(test: &str, options: &str) {
    let Some(kernel) = ready(test) else { return };
    let dir = snap_dir(test);
    let disk = dir.join("disk.img");
    let disk_arg = format!("{}{options}", path_str(&disk));
    let vm = paused_during_disk_io(test, &kernel, &disk, &disk_arg, 9);
    // No snapshot_type: Full by default.
    let (state, mem) = (dir.join("vmstate"), dir.join("memory"));
    let body = format!(
        r#"{{"snapshot_path": "{}", "mem_file_path": "{}"}}"#,
        state.display(),
        mem.display()
    );
    vm.ok("PUT", "/snapshot/create", &body);
    drop(vm);
    let mut restored = load(test, &state, &mem);
    disk_check_finishes(&mut restored, &disk, 9);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn an_entropy_request_in_flight_completes_after_restore() {
    let test = "snap_rng";
    let Some(kernel) = ready(test) else { return };
    let dir = snap_dir(test);
    for attempt in 0..5 {
        let vm = start(
            &format!("{test}{attempt}"),
            &kernel,
            "64M",
            &[],
            "kite_test=virtio-rng kite_n=1048576",
        );
        let (state, mem) = create(&vm, &dir);
        std::thread::sleep(Duration::from_millis(50));
        if vm.stdout().contains("KITE-TEST") {
            eprintln!("attempt {attempt}: the scenario ended before the snapshot; again");
            continue;
        }
        drop(vm);
        let mut restored = load(test, &state, &mem);
        assert_eq!(restored.wait(LIMIT), Some(0), "{}", restored.stderr());
        let out = restored.stdout();
        assert!(
            out.contains("KITE-TEST virtio-rng ok bytes=1048576"),
            "{out}"
        );
        let _ = std::fs::remove_dir_all(&dir);
        return;
    }
    panic!("the virtio-rng scenario ended before every one of 5 snapshots");
}

/// One snapshot of a ticking guest, for the bad-input tests to damage.
fn good_snapshot(test: &str, kernel: &Path) -> (PathBuf, PathBuf, PathBuf) {
    let dir = snap_dir(test);
    let vm = start(
        test,
        kernel,
        "64M",
        &["--cpus", "2"],
        "kite_test=tick kite_tick_ms=5 kite_n=100",
    );
    vm.wait_stdout(LIMIT, |out| last_tick(out) >= 3);
    // A directory that does not exist: 400, the VM stays paused and well.
    vm.ok("PATCH", "/vm", PAUSE);
    vm.bad(
        "PUT",
        "/snapshot/create",
        Some(r#"{"snapshot_path": "/nonexistent-dir/s", "mem_file_path": "/nonexistent-dir/m"}"#),
        "No such file or directory",
    );
    vm.bad(
        "PUT",
        "/snapshot/create",
        Some(r#"{"snapshot_type": "Diff", "snapshot_path": "/tmp/s", "mem_file_path": "/tmp/m"}"#),
        "Diff",
    );
    vm.ok("PATCH", "/vm", RESUME);
    let (state, mem) = create(&vm, &dir);
    vm.ok("PATCH", "/vm", RESUME);
    let at = last_tick(&vm.stdout());
    vm.wait_stdout(LIMIT, |out| last_tick(out) > at + 2);
    let leftovers: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(leftovers.len(), 2, "{leftovers:?}");
    (dir, state, mem)
}

/// `kite restore DIR` ends with exit 2 and one error line containing `want`.
fn restore_refused(dir: &Path, want: &str) {
    let mut cmd = kite();
    cmd.arg("restore").arg(dir);
    let out = run(cmd, LIMIT);
    assert_eq!(out.code, Some(2), "{}", out.stderr);
    let errors = out.error_lines();
    assert_eq!(errors.len(), 1, "{}", out.stderr);
    assert!(errors[0].contains(want), "{}", out.stderr);
    assert!(!out.stdout.contains("tick"), "{}", out.stdout);
}

#[test]
fn damaged_files_are_refused_with_one_line() {
    let test = "snap_bad";
    let Some(kernel) = ready(test) else { return };
    let (dir, state, mem) = good_snapshot(test, &kernel);
    let good = std::fs::read(&state).unwrap();

    std::fs::write(&state, &good[..good.len() / 2]).unwrap();
    restore_refused(&dir, "truncated");
    let mut flipped = good.clone();
    let last = flipped.len() - 10;
    flipped[last] ^= 0x40;
    std::fs::write(&state, &flipped).unwrap();
    restore_refused(&dir, "checksum mismatch");
    let mut other = good.clone();
    other[8] = 99;
    std::fs::write(&state, &other).unwrap();
    restore_refused(&dir, "format version 99");
    std::fs::write(&state, b"hello").unwrap();
    restore_refused(&dir, "not a Kite snapshot file");

    std::fs::write(&state, &good).unwrap();
    std::fs::File::options()
        .write(true)
        .open(&mem)
        .unwrap()
        .set_len(32 << 20)
        .unwrap();
    restore_refused(&dir, "wrong or truncated memory file");

    // Over the API: a machine-config of another shape, then load after start.
    let vm = ApiVm::start(&format!("{test}-api"), &[]);
    vm.ok(
        "PUT",
        "/machine-config",
        r#"{"vcpu_count": 1, "mem_size_mib": 64}"#,
    );
    let body = format!(
        r#"{{"snapshot_path": "{}", "mem_file_path": "{}"}}"#,
        state.display(),
        mem.display()
    );
    vm.bad("PUT", "/snapshot/load", Some(&body), "2 vCPUs");
    vm.bad(
        "PUT",
        "/snapshot/create",
        Some(r#"{"snapshot_path": "a", "mem_file_path": "b"}"#),
        "no VM to snapshot",
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_full_disk_is_400_and_leaves_no_file_and_the_vm_goes_on() {
    let test = "snap_enospc";
    let Some(kernel) = ready(test) else { return };
    let dir = snap_dir(test);
    // A 64 KiB file system: the memory file cannot fit.
    let mounted = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=64k", "tmpfs"])
        .arg(&dir)
        .status()
        .is_ok_and(|s| s.success());
    if !mounted {
        let _ = std::fs::remove_dir_all(&dir);
        return skip(
            test,
            Need::Root,
            "cannot mount a small tmpfs (needs root) to fill up",
        );
    }
    struct Unmount<'a>(&'a Path);
    impl Drop for Unmount<'_> {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount").arg(self.0).status();
            let _ = std::fs::remove_dir_all(self.0);
        }
    }
    let _unmount = Unmount(&dir);
    let vm = start(
        test,
        &kernel,
        "64M",
        &[],
        "kite_test=tick kite_tick_ms=5 kite_n=100000",
    );
    vm.wait_stdout(LIMIT, |out| last_tick(out) >= 3);
    vm.ok("PATCH", "/vm", PAUSE);
    let body = format!(
        r#"{{"snapshot_path": "{}", "mem_file_path": "{}"}}"#,
        dir.join("vmstate").display(),
        dir.join("memory").display()
    );
    vm.bad(
        "PUT",
        "/snapshot/create",
        Some(&body),
        "No space left on device",
    );
    let left: Vec<_> = std::fs::read_dir(&dir).unwrap().collect();
    assert!(left.is_empty(), "{left:?}");
    vm.ok("PATCH", "/vm", RESUME);
    let at = last_tick(&vm.stdout());
    vm.wait_stdout(LIMIT, |out| last_tick(out) > at + 2);
}

#[test]
fn a_clone_listens_on_its_own_vsock_socket() {
    let test = "snap_vsock";
    let Some(kernel) = ready(test) else { return };
    let dir = snap_dir(test);
    let first = dir.join("first.sock");
    let vsock = format!("cid=3,socket={}", first.display());
    let vm = start(
        test,
        &kernel,
        "64M",
        &["--vsock", &vsock],
        "kite_test=tick kite_tick_ms=5 kite_n=120",
    );
    vm.wait_stdout(LIMIT, |out| last_tick(out) >= 5);
    let (state, mem) = create(&vm, &dir);
    drop(vm);
    let clone = dir.join("clone.sock");
    let restored = ApiVm::start(&format!("{test}-restored"), &[]);
    let body = |over: &str| {
        format!(
            r#"{{"snapshot_path": "{}", "mem_file_path": "{}", "resume_vm": true, "vsock_override": {{"uds_path": "{over}"}}, "network_overrides": [{{"iface_id": "eth9", "host_dev_name": "tap9"}}]}}"#,
            state.display(),
            mem.display()
        )
    };
    // An interface the snapshot does not have: 400, and the load can be tried again.
    restored.bad(
        "PUT",
        "/snapshot/load",
        Some(&body(path_str(&clone))),
        "eth9",
    );
    let body = body(path_str(&clone)).replace(
        r#", "network_overrides": [{"iface_id": "eth9", "host_dev_name": "tap9"}]"#,
        "",
    );
    restored.ok("PUT", "/snapshot/load", &body);
    assert!(
        clone.exists(),
        "the clone does not listen on {}",
        clone.display()
    );
    let mut restored = restored;
    assert_eq!(restored.wait(LIMIT), Some(0), "{}", restored.stderr());
    assert!(restored.stdout().contains("KITE-TEST tick ok ticks=120"));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_limited_drive_is_still_limited_after_restore() {
    limited_drive_across_restore("snap_limit", "Sync");
}

/// The same on a drive with `"io_engine": "Async"`: after the restore it is on io_uring again.
#[test]
fn an_io_uring_drive_is_on_io_uring_after_restore() {
    let test = "snap_limit_uring";
    if io_uring_unavailable(test) {
        return;
    }
    limited_drive_across_restore(test, "Async");
}

/// A drive limited to 2 MB/s (with `io_engine`), snapshotted in the middle of the virtio-blk
/// check (4 MiB written and read back: about 4 s through the bucket) and restored with a
/// `vsock_override`: the restored VM still takes seconds for the rest (an unlimited one takes
/// milliseconds), its drive is on the same engine (Kite's log line for the drive), the disk has
/// the pattern, and `GET /vm/config` answers the restored VM's configuration.
fn limited_drive_across_restore(test: &str, io_engine: &str) {
    let Some(kernel) = ready(test) else { return };
    let dir = snap_dir(test);
    let disk = dir.join("disk.img");
    std::fs::File::create(&disk)
        .unwrap()
        .set_len(4 << 20)
        .unwrap();
    let first = dir.join("first.sock");
    let vm = ApiVm::start(test, &["--no-acpi"]);
    let put = |path: &str, body: serde_json::Value| vm.ok("PUT", path, &body.to_string());
    put(
        "/boot-source",
        serde_json::json!({"kernel_image_path": kernel,
            "boot_args": "kite_test=virtio-blk kite_blk_req=65536 kite_seed=5"}),
    );
    put(
        "/machine-config",
        serde_json::json!({"vcpu_count": 1, "mem_size_mib": 64}),
    );
    put(
        "/drives/data",
        serde_json::json!({"drive_id": "data", "path_on_host": disk, "is_root_device": false,
            "io_engine": io_engine,
            "rate_limiter": {"bandwidth": {"size": 20_000, "refill_time": 10}}}),
    );
    put(
        "/vsock",
        serde_json::json!({"guest_cid": 3, "uds_path": first}),
    );
    put(
        "/actions",
        serde_json::json!({"action_type": "InstanceStart"}),
    );
    std::thread::sleep(Duration::from_millis(1500));
    let (state, mem) = create(&vm, &dir);
    assert!(
        !vm.stdout().contains("KITE-TEST"),
        "the scenario ended before the snapshot: the bucket did not hold it back\n{}",
        vm.stdout()
    );
    drop(vm);

    let clone = dir.join("clone.sock");
    let mut restored = ApiVm::start(&format!("{test}-restored"), &[]);
    let body = serde_json::json!({"snapshot_path": state,
        "mem_backend": {"backend_type": "File", "backend_path": mem},
        "resume_vm": true, "vsock_override": {"uds_path": clone}});
    let loaded = std::time::Instant::now();
    restored.ok("PUT", "/snapshot/load", &body.to_string());
    let (status, text) = restored.call("GET", "/vm/config", None);
    assert_eq!(status, 200, "{text}");
    let config: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(config["machine-config"]["vcpu_count"], 1, "{text}");
    assert_eq!(config["machine-config"]["mem_size_mib"], 64, "{text}");
    assert_eq!(
        config["boot-source"]["kernel_image_path"],
        path_str(&kernel),
        "{text}"
    );
    let drive = &config["drives"][0];
    assert_eq!(drive["drive_id"], "data", "{text}");
    assert_eq!(drive["path_on_host"], path_str(&disk), "{text}");
    assert_eq!(drive["io_engine"], io_engine, "{text}");
    assert_eq!(drive["rate_limiter"]["bandwidth"]["size"], 20_000, "{text}");
    assert_eq!(config["vsock"]["uds_path"], path_str(&clone), "{text}");
    assert_eq!(restored.wait(LIMIT), Some(0), "{}", restored.stderr());
    let took = loaded.elapsed();
    let out = restored.stdout();
    assert!(out.contains("KITE-TEST virtio-blk ok"), "{out}");
    let image = std::fs::read(&disk).unwrap();
    assert_eq!(
        kite_workloads::disk_pattern_check(5, 0, &image),
        None,
        "the image differs from what the guest wrote"
    );
    eprintln!("the restored VM finished the check in {took:?}");
    assert!(
        took >= Duration::from_millis(1200),
        "the restored VM finished in {took:?}: its drive ran unlimited"
    );
    let uring = restored.stderr().contains("on io_uring");
    assert_eq!(uring, io_engine == "Async", "{}", restored.stderr());
    let _ = std::fs::remove_dir_all(&dir);
}

/// The vsock echo with its connection open at the snapshot (the host peer of the first VM
/// takes the connection and never reads, so the guest waits for its echo): the restored guest
/// gets VIRTIO_VSOCK_EVENT_TRANSPORT_RESET, its connection is gone, and it connects again (to
/// the clone's socket, which echoes) and finishes the echo.
#[test]
fn an_open_vsock_connection_is_reset_by_the_restore_and_the_guest_connects_again() {
    use common::watch::{Peer, unix_peer};
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    let test = "snap_vsock_open";
    let Some(kernel) = ready(test) else { return };
    let dir = snap_dir(test);
    let (first, clone) = (dir.join("first.sock"), dir.join("clone.sock"));
    let stop = Arc::new(AtomicBool::new(false));
    let port = |s: &Path| PathBuf::from(format!("{}_1234", s.display()));
    let (stalled, stall_thread) = unix_peer(&port(&first), Peer::Stall, stop.clone());
    let (echoed, echo_thread) = unix_peer(&port(&clone), Peer::Echo, stop.clone());
    let vsock = format!("cid=3,socket={}", first.display());
    let vm = start(
        test,
        &kernel,
        "64M",
        &["--vsock", &vsock],
        "kite_test=virtio-vsock kite_vsock_bytes=262144",
    );
    // The guest waits up to 5 s for an echo: snapshot well within that.
    let start = std::time::Instant::now();
    while stalled.connections.load(Ordering::SeqCst) == 0 {
        assert!(
            start.elapsed() < LIMIT,
            "the guest did not connect\n{}",
            vm.stderr()
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    let (state, mem) = create(&vm, &dir);
    assert!(!vm.stdout().contains("KITE-TEST"), "{}", vm.stdout());
    drop(vm);
    let restored = ApiVm::start(&format!("{test}-restored"), &[]);
    let body = serde_json::json!({"snapshot_path": state,
        "mem_backend": {"backend_type": "File", "backend_path": mem},
        "resume_vm": true, "vsock_override": {"uds_path": clone}});
    restored.ok("PUT", "/snapshot/load", &body.to_string());
    let mut restored = restored;
    assert_eq!(restored.wait(LIMIT), Some(0), "{}", restored.stderr());
    stop.store(true, Ordering::SeqCst);
    let _ = (stall_thread.join(), echo_thread.join());
    let out = restored.stdout();
    let line = out
        .lines()
        .find(|l| l.contains("KITE-TEST virtio-vsock"))
        .unwrap_or_else(|| panic!("no result line\n{out}\n{}", restored.stderr()));
    eprintln!("{line}");
    assert!(line.contains("KITE-TEST virtio-vsock ok"), "{line}");
    assert!(line.contains(" reset_seen=1 "), "{line}");
    assert!(line.contains(" bytes=262144 echoed=262144 "), "{line}");
    assert_eq!(echoed.connections.load(Ordering::SeqCst), 1);
    assert_eq!(echoed.bytes.load(Ordering::SeqCst), 262144);
    let _ = std::fs::remove_dir_all(&dir);
}
