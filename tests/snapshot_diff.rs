//! Diff snapshots of the ring-3 test guest: a VM started with `track_dirty_pages`, a Full
//! snapshot, the guest runs on, a Diff snapshot (only the pages written since), the diff merged
//! over the full memory file with `kite rebase-snap`, and the merged file restored in a new
//! process, where the scenario finishes with a correct result line from where the Diff was taken.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::api::*;
use common::snap::*;
use common::*;

const LIMIT: Duration = Duration::from_secs(60);

/// Allocated bytes of `path` (its data, not its holes).
fn allocated(path: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path).unwrap().blocks() * 512
}

/// `kite rebase-snap --base-file base --diff-file diff`, which must succeed.
fn rebase(base: &Path, diff: &Path) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_kite"))
        .args(["rebase-snap", "--base-file", path_str(base)])
        .args(["--diff-file", path_str(diff)])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("merged"), "{stderr}");
}

#[test]
fn a_diff_merged_over_the_full_memory_file_restores_where_the_diff_was_taken() {
    let test = "snap_diff";
    let Some(kernel) = ready(test) else { return };
    let dir = snap_dir(test);
    let (full_state, base) = (dir.join("full.vmstate"), dir.join("full.memory"));
    let (diff_state, diff) = (dir.join("diff.vmstate"), dir.join("diff.memory"));
    let (again_state, again) = (dir.join("again.vmstate"), dir.join("again.memory"));

    let vm = ApiVm::start(test, &["--no-acpi", "--level", "Info"]);
    let boot = serde_json::json!({"kernel_image_path": kernel,
        "boot_args": "kite_test=tick kite_tick_ms=5 kite_n=400"});
    vm.ok("PUT", "/boot-source", &boot.to_string());
    vm.ok(
        "PUT",
        "/machine-config",
        r#"{"vcpu_count": 1, "mem_size_mib": 256, "track_dirty_pages": true}"#,
    );
    vm.ok("PUT", "/actions", r#"{"action_type": "InstanceStart"}"#);
    vm.wait_stdout(LIMIT, |out| last_tick(out) >= 10);

    // Full, then the guest runs on.
    vm.ok("PATCH", "/vm", PAUSE);
    let started = Instant::now();
    vm.ok(
        "PUT",
        "/snapshot/create",
        &create_body("Full", &full_state, &base),
    );
    let full_ms = started.elapsed().as_secs_f64() * 1e3;
    let full_at = last_tick(&vm.stdout());
    vm.ok("PATCH", "/vm", RESUME);
    vm.wait_stdout(LIMIT, |out| last_tick(out) >= full_at + 30);

    // Diff: only what was written since the Full.
    vm.ok("PATCH", "/vm", PAUSE);
    std::thread::sleep(Duration::from_millis(50));
    let before = vm.stdout();
    let diff_at = last_tick(&before);
    assert!(diff_at < 400, "the scenario ended before the diff");
    let started = Instant::now();
    vm.ok(
        "PUT",
        "/snapshot/create",
        &create_body("Diff", &diff_state, &diff),
    );
    let diff_ms = started.elapsed().as_secs_f64() * 1e3;
    // A Full of the same paused moment, to hold the merged file against.
    vm.ok(
        "PUT",
        "/snapshot/create",
        &create_body("Full", &again_state, &again),
    );
    let log = vm.stderr();
    drop(vm);
    // The API calls (a curl each) as the client sees them, and Kite's own figures.
    eprintln!(
        "256 MiB: Full create {full_ms:.1} ms ({} KiB allocated), Diff create {diff_ms:.1} ms ({} KiB allocated), by the client",
        allocated(&base) >> 10,
        allocated(&diff) >> 10
    );
    for line in log.lines().filter(|l| l.contains("snapshot written")) {
        eprintln!("{line}");
    }
    assert_eq!(std::fs::metadata(&diff).unwrap().len(), 256 << 20);
    assert!(
        allocated(&diff) < allocated(&base),
        "the diff ({} bytes) is not smaller than the full file ({} bytes)",
        allocated(&diff),
        allocated(&base)
    );

    // The guest changed memory between the two snapshots: the merge has work to do.
    assert!(
        std::fs::read(&base).unwrap() != std::fs::read(&again).unwrap(),
        "memory did not change between the Full and the Diff"
    );
    // Merge as Firecracker's users do with rebase-snap.
    rebase(&base, &diff);
    assert!(
        std::fs::read(&base).unwrap() == std::fs::read(&again).unwrap(),
        "the merged memory differs from a full snapshot of the same moment"
    );

    // Restored in a new process from the diff's state and the merged memory, tracking on
    // (by its deprecated name) for the next diff.
    let mut restored = ApiVm::start(&format!("{test}-restored"), &[]);
    let load = serde_json::json!({"snapshot_path": diff_state,
        "mem_backend": {"backend_type": "File", "backend_path": base},
        "enable_diff_snapshots": true, "resume_vm": true});
    restored.ok("PUT", "/snapshot/load", &load.to_string());

    // A diff of the restored VM (RAM mapped from the merged file), merged over that file
    // while the VM runs from it, is again the full memory of its moment.
    restored.wait_stdout(LIMIT, |out| last_tick(out) >= diff_at + 20);
    restored.ok("PATCH", "/vm", PAUSE);
    let (diff2_state, diff2) = (dir.join("diff2.vmstate"), dir.join("diff2.memory"));
    let (again2_state, again2) = (dir.join("again2.vmstate"), dir.join("again2.memory"));
    restored.ok(
        "PUT",
        "/snapshot/create",
        &create_body("Diff", &diff2_state, &diff2),
    );
    restored.ok(
        "PUT",
        "/snapshot/create",
        &create_body("Full", &again2_state, &again2),
    );
    rebase(&base, &diff2);
    assert!(
        std::fs::read(&base).unwrap() == std::fs::read(&again2).unwrap(),
        "the second merge differs from a full snapshot of the restored VM"
    );
    restored.ok("PATCH", "/vm", RESUME);
    assert_eq!(restored.wait(LIMIT), Some(0), "{}", restored.stderr());
    let out = restored.stdout();
    assert!(out.contains("KITE-TEST tick ok ticks=400"), "{out}");
    // The first process's console, then the restored one's, are one run of the scenario:
    // every tick once, in order, the restored ones going on from the Diff's moment (not the
    // Full's). (Joined, because the Diff may have caught the guest in the middle of a line.)
    let all = ticks(&format!("{before}{out}"));
    assert_eq!(all, (1..=400).collect::<Vec<u64>>(), "{before}\n---\n{out}");
    assert!(ticks(&out)[0] > full_at + 20, "{out}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_diff_without_dirty_page_tracking_is_refused_with_one_line() {
    let test = "snap_diff_untracked";
    let Some(kernel) = ready(test) else { return };
    let vm = ApiVm::start(
        test,
        &[
            "--no-acpi",
            "--kernel",
            path_str(&kernel),
            "--cmdline",
            "kite_test=tick kite_tick_ms=5 kite_n=100000",
        ],
    );
    vm.wait_stdout(LIMIT, |out| last_tick(out) >= 3);
    vm.ok("PATCH", "/vm", PAUSE);
    let (state, mem) = (vm.dir.join("s"), vm.dir.join("m"));
    let (status, body) = vm.call(
        "PUT",
        "/snapshot/create",
        Some(&create_body("Diff", &state, &mem)),
    );
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("track_dirty_pages"), "{body}");
    assert!(!body.trim_end().contains('\n'), "{body}");
    assert!(!state.exists() && !mem.exists());
    // The VM goes on.
    vm.ok("PATCH", "/vm", RESUME);
    let at = last_tick(&vm.stdout());
    vm.wait_stdout(LIMIT, |out| last_tick(out) > at + 2);
}
