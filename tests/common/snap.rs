//! Snapshots of the ring-3 test guest over the API, shared by tests/snapshot.rs,
//! tests/snapshot_uffd.rs and tests/snapshot_diff.rs: a directory for the files, the guest
//! started under `kite run --api-sock`, the bodies of `PUT /snapshot/create` and `load`, and a
//! virtio-blk run paused in the middle of its writes.

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::api::{ApiVm, try_call};
use super::{Need, kvm_unavailable, path_str, skip, testguest};

/// How long a test guest's scenario may take to finish after a restore.
const LIMIT: Duration = Duration::from_secs(60);

pub const PAUSE: &str = r#"{"state": "Paused"}"#;
pub const RESUME: &str = r#"{"state": "Resumed"}"#;

/// A fresh directory of the test's own for snapshot files and sockets (kept apart from the
/// VMs' directories, which go with them).
pub fn snap_dir(test: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("kite-snap-{}-{test}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// The test guest; None (after a skip line) where KVM is unusable.
pub fn ready(test: &str) -> Option<PathBuf> {
    if let Some(reason) = kvm_unavailable() {
        skip(test, Need::Kvm, &reason);
        return None;
    }
    Some(testguest().unwrap_or_else(|e| panic!("{e}")))
}

/// `kite run --api-sock` of the test guest `kernel` without ACPI, with `memory`, `extra`
/// arguments and the command line `cmdline`.
pub fn start(test: &str, kernel: &Path, memory: &str, extra: &[&str], cmdline: &str) -> ApiVm {
    let mut args = vec![
        "--no-acpi",
        "--kernel",
        path_str(kernel),
        "--memory",
        memory,
    ];
    args.extend_from_slice(extra);
    args.extend_from_slice(&["--cmdline", cmdline]);
    ApiVm::start(test, &args)
}

/// `kite snapshot SOCKET DIR --leave-paused`: what it printed and how it ended.
pub fn kite_snapshot(sock: &Path, dir: &Path) -> std::process::Output {
    super::kite()
        .arg("snapshot")
        .arg(sock)
        .arg(dir)
        .arg("--leave-paused")
        .output()
        .unwrap()
}

/// The body of `PUT /snapshot/create`: a `kind` (Full or Diff) snapshot to `state` and `mem`.
pub fn create_body(kind: &str, state: &Path, mem: &Path) -> String {
    serde_json::json!({"snapshot_type": kind, "snapshot_path": state, "mem_file_path": mem})
        .to_string()
}

/// The body of `PUT /snapshot/load` from `state`, guest RAM from `backend` (File or Uffd) at
/// `path`.
pub fn load_body(state: &Path, backend: &str, path: &Path, resume: bool) -> String {
    format!(
        r#"{{"snapshot_path": "{}", "mem_backend": {{"backend_type": "{backend}", "backend_path": "{}"}}, "resume_vm": {resume}}}"#,
        state.display(),
        path.display()
    )
}

/// Every `tick N` of `console`, in order.
pub fn ticks(console: &str) -> Vec<u64> {
    console
        .lines()
        .filter_map(|l| l.strip_prefix("tick "))
        .filter_map(|n| n.trim().parse().ok())
        .collect()
}

/// The test guest's virtio-blk check (4 KiB requests, 4 deep, pattern `seed`) on a fresh
/// 64 MiB `disk` given as `--disk {disk_arg}`, paused in the middle of its writes. The check
/// takes under a second to a few seconds, with the host's load: each try pauses sooner after
/// the start, until the pause falls inside the scenario. Fails the test if it never does.
pub fn paused_during_disk_io(
    test: &str,
    kernel: &Path,
    disk: &Path,
    disk_arg: &str,
    seed: u64,
) -> ApiVm {
    let cmdline =
        format!("kite_test=virtio-blk kite_blk_req=4096 kite_blk_depth=4 kite_seed={seed}");
    for delay in [300, 150, 60, 20, 5] {
        std::fs::File::create(disk)
            .unwrap()
            .set_len(64 << 20)
            .unwrap();
        let vm = start(
            &format!("{test}{delay}"),
            kernel,
            "128M",
            &["--disk", disk_arg],
            &cmdline,
        );
        std::thread::sleep(Duration::from_millis(delay));
        let paused = matches!(
            try_call(&vm.sock, "PATCH", "/vm", Some(PAUSE)),
            Ok((204, _))
        );
        // What the guest printed just before the pause may still be on its way.
        std::thread::sleep(Duration::from_millis(50));
        if !paused || vm.stdout().contains("KITE-TEST") {
            eprintln!("{delay} ms: the scenario ended before the pause; again");
            continue;
        }
        return vm;
    }
    panic!("the virtio-blk scenario ended before every one of 5 pauses");
}

/// A restored VM's virtio-blk check (see [`paused_during_disk_io`]) finishes: exit 0 and its
/// ok line, and `disk` holds the whole pattern `seed`.
pub fn disk_check_finishes(restored: &mut ApiVm, disk: &Path, seed: u64) {
    assert_eq!(restored.wait(LIMIT), Some(0), "{}", restored.stderr());
    let out = restored.stdout();
    assert!(out.contains("KITE-TEST virtio-blk ok"), "{out}");
    let image = std::fs::read(disk).unwrap();
    assert_eq!(
        kite_workloads::disk_pattern_check(seed, 0, &image),
        None,
        "the image differs from what the guest wrote"
    );
}
