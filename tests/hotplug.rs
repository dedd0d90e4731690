//! `PATCH /drives/{id}` on a running VM, as firecracker-containerd and Kata hot-plug a
//! container's disk: a 0-byte placeholder before boot, then the real image at the same path;
//! the guest (the test guest's `virtio-blk-resize`) sees the new capacity, the configuration
//! change interrupt and the new contents. Bad calls are 400 and change nothing.

mod common;

use std::io::{Seek, SeekFrom, Write};
use std::time::{Duration, Instant};

use common::api::*;
use common::*;

const LIMIT: Duration = Duration::from_secs(60);

#[test]
fn a_placeholder_drive_is_swapped_for_an_image_while_the_guest_runs() {
    let test = "a_placeholder_drive_is_swapped_for_an_image_while_the_guest_runs";
    if let Some(reason) = kvm_unavailable() {
        return skip(test, Need::Kvm, &reason);
    }
    let kernel = testguest().unwrap_or_else(|e| panic!("{e}"));
    let mut vm = ApiVm::start(test, &["--no-acpi"]);
    let placeholder = vm.dir.join("drive_0");
    std::fs::write(&placeholder, b"").unwrap();
    let drive = |path: &std::path::Path| {
        serde_json::json!({"drive_id": "drive_0", "path_on_host": path,
            "is_root_device": false, "is_read_only": false, "rate_limiter": {}})
        .to_string()
    };
    vm.ok(
        "PUT",
        "/boot-source",
        &serde_json::json!({"kernel_image_path": kernel,
            "boot_args": "kite_test=virtio-blk-resize kite_virtio_wait=poll kite_ms=60000"})
        .to_string(),
    );
    vm.ok("PUT", "/drives/drive_0", &drive(&placeholder));
    // firecracker-containerd's body (the SDK's PartialDrive): the id and the path.
    let patch = |path: &std::path::Path| {
        serde_json::json!({"drive_id": "drive_0", "path_on_host": path}).to_string()
    };
    vm.bad(
        "PATCH",
        "/drives/drive_0",
        Some(&patch(&placeholder)),
        "works on a running VM",
    );
    vm.ok("PUT", "/actions", r#"{"action_type": "InstanceStart"}"#);
    vm.wait_stdout(LIMIT, |out| out.contains("KITE-PROGRESS ready sectors=0"));

    // Bad calls: 400, and the drive keeps its 0-byte file (the guest would say otherwise).
    let missing = vm.dir.join("no-such.img");
    vm.bad(
        "PATCH",
        "/drives/drive_9",
        Some(r#"{"drive_id": "drive_9", "path_on_host": "x"}"#),
        "no drive \"drive_9\"",
    );
    vm.bad(
        "PATCH",
        "/drives/drive_0",
        Some(&serde_json::json!({"drive_id": "drive_0", "path_on_host": missing}).to_string()),
        "keeps its old file",
    );
    vm.bad(
        "PATCH",
        "/drives/drive_0",
        Some(r#"{"drive_id": "drive_0", "path_on_host": "/"}"#),
        "keeps its old file",
    );
    vm.bad(
        "PATCH",
        "/drives/drive_0",
        Some(r#"{"drive_id": "drive_0", "rate_limiter": {"bandwidth": {"size": 9223372036854775808, "refill_time": 1}}}"#),
        "values overflow",
    );
    vm.ok("PATCH", "/vm", r#"{"state": "Paused"}"#);
    vm.bad(
        "PATCH",
        "/drives/drive_0",
        Some(&patch(&placeholder)),
        "paused",
    );
    vm.ok("PATCH", "/vm", r#"{"state": "Resumed"}"#);
    // A rate limiter that limits nothing is taken and changes nothing.
    vm.ok(
        "PATCH",
        "/drives/drive_0",
        r#"{"drive_id": "drive_0", "rate_limiter": {}}"#,
    );
    std::thread::sleep(Duration::from_millis(200));
    assert!(
        !vm.stdout().contains("virtio-blk-resize ok"),
        "{}",
        vm.stdout()
    );

    // The image arrives at the same path, in the same file (as a bind mount would show it):
    // 1 MiB starting with a marker. Kite holds this very file locked; the PATCH must still
    // reopen it.
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .open(&placeholder)
        .unwrap();
    f.set_len(1 << 20).unwrap();
    f.seek(SeekFrom::Start(0)).unwrap();
    f.write_all(b"KITEDISK").unwrap();
    drop(f);
    let t = Instant::now();
    vm.ok("PATCH", "/drives/drive_0", &patch(&placeholder));
    let latency = t.elapsed();
    eprintln!(
        "PATCH /drives latency (curl, request to 204): {:.2} ms",
        latency.as_secs_f64() * 1e3
    );
    if let Some(l) = vm
        .stderr()
        .lines()
        .find(|l| l.contains("drive drive_0: now"))
    {
        eprintln!("Kite's own measure: {l}");
    }
    let out = vm.wait_stdout(LIMIT, |out| {
        out.split("virtio-blk-resize ok")
            .nth(1)
            .is_some_and(|rest| rest.contains('\n'))
    });
    let line = out
        .lines()
        .find(|l| l.contains("virtio-blk-resize ok"))
        .unwrap();
    // "KITEDISK" as big-endian hex.
    for want in [
        "old=0 ",
        "new=2048 ",
        "config_irq=1",
        "generation_changed=1",
        "read_status=0",
        "first=4b4954454449534b",
    ] {
        assert!(line.contains(want), "{want} missing from {line}");
    }
    assert_eq!(vm.wait(LIMIT), Some(0), "{}", vm.stderr());
}

/// The same with Linux's own virtio-blk driver: a 0-byte placeholder, then `PATCH /drives`
/// while the shell runs; Linux sees the new size in /sys/block/vda/size and reads the new
/// file. One Linux boot (~1 min here; more under load).
#[test]
fn linux_sees_the_new_size_and_contents_after_patch_drives() {
    let test = "linux_sees_the_new_size_and_contents_after_patch_drives";
    let Some((kernel, initrd)) = linux::images(test) else {
        return;
    };
    let mut vm = ApiVm::start(test, &["--no-acpi"]);
    let disk = vm.dir.join("drive_0");
    std::fs::write(&disk, b"").unwrap();
    vm.ok(
        "PUT",
        "/boot-source",
        &serde_json::json!({"kernel_image_path": kernel, "initrd_path": initrd,
            "boot_args": "console=ttyS0 reboot=k panic=1"})
        .to_string(),
    );
    vm.ok(
        "PUT",
        "/machine-config",
        r#"{"vcpu_count": 1, "mem_size_mib": 128}"#,
    );
    vm.ok(
        "PUT",
        "/drives/drive_0",
        &serde_json::json!({"drive_id": "drive_0", "path_on_host": disk,
            "is_root_device": false, "is_read_only": false})
        .to_string(),
    );
    vm.ok("PUT", "/actions", r#"{"action_type": "InstanceStart"}"#);
    let boot = Duration::from_secs(300);
    vm.wait_stdout(boot, |out| out.contains("busybox shell on the console"));
    vm.type_text("echo size-before-$(cat /sys/block/vda/size)\n");
    vm.wait_stdout(LIMIT, |out| out.contains("size-before-0"));
    let mut image = vec![0u8; 1 << 20];
    image[..8].copy_from_slice(b"KITEDISK");
    let new = vm.dir.join("container.img");
    std::fs::write(&new, image).unwrap();
    vm.ok(
        "PATCH",
        "/drives/drive_0",
        &serde_json::json!({"drive_id": "drive_0", "path_on_host": new}).to_string(),
    );
    // The driver handles the configuration change in a work item: look until it has.
    // (The shell echoes the typed line, so the test waits for the output's own forms.)
    vm.type_text(
        "for i in 1 2 3 4 5 6 7 8 9 10; do s=$(cat /sys/block/vda/size); [ $s != 0 ] && break; sleep 1; done; echo SIZE=$s; head -c 8 /dev/vda; echo\n",
    );
    let size_line = |out: &str| {
        out.lines()
            .map(str::trim)
            .find(|l| l.starts_with("SIZE=") && l[5..].starts_with(|c: char| c.is_ascii_digit()))
            .map(str::to_string)
    };
    let out = vm.wait_stdout(Duration::from_secs(120), |out| size_line(out).is_some());
    assert_eq!(size_line(&out).as_deref(), Some("SIZE=2048"), "{out}");
    let out = vm.wait_stdout(Duration::from_secs(30), |out| out.contains("KITEDISK"));
    assert!(
        out.contains("detected capacity change from 0 to 2048"),
        "{out}"
    );
    vm.type_text("reboot -f\n");
    assert_eq!(
        vm.wait(Duration::from_secs(120)),
        Some(0),
        "{}",
        vm.stderr()
    );
}
