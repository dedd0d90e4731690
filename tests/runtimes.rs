//! Kite as Kubernetes' microVM runtimes start and drive Firecracker (issue 19): Kata
//! Containers' Go runtime (src/runtime/virtcontainers/fc.go) and runtime-rs
//! (crates/hypervisor/src/firecracker/), firecracker-containerd through firecracker-go-sdk.
//! They exec a binary named `firecracker` (a copy, in the jailer's chroot) with Firecracker's
//! flags, no /proc, an empty environment and /dev/null stdio, and send bodies Kite once
//! refused: `{}` rate limiters, 0-byte placeholder drives, `guest_cid` 0, a CPU template,
//! `smt: true`, log and metrics FIFOs nobody reads yet.

mod common;

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::api::{call, fault};
use common::host::{drain, fifo_reader, mkfifo};
use common::*;

/// A directory with `firecracker`, a symlink to Kite's binary (the runtimes' name for it).
fn firecracker_dir(test: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("kite-rt-{}-{test}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_kite"), dir.join("firecracker")).unwrap();
    dir
}

#[test]
fn firecracker_version_is_what_kata_parses() {
    let dir = firecracker_dir("version");
    let out = Command::new(dir.join("firecracker"))
        .arg("--version")
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    // fc.go's parseVersion: the first line's second word, less its `v`; at least 0.21.1.
    let first = text.lines().next().unwrap();
    let word = first.split(' ').nth(1).unwrap();
    assert!(first.starts_with("Firecracker v"), "{text}");
    let nums: Vec<u32> = word[1..].split('.').map(|n| n.parse().unwrap()).collect();
    assert!(nums >= vec![0, 21, 1], "{text}");
    let kite = Command::new(env!("CARGO_BIN_EXE_kite"))
        .arg("--version")
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&kite.stdout).starts_with("kite "));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn firecracker_flags_the_runtimes_pass_are_taken() {
    // No kernel and --no-api: Kite gets past the flags (and says what is missing), so every
    // flag here was taken. Older SDKs' --seccomp-level too.
    let dir = firecracker_dir("flags");
    let out = Command::new(dir.join("firecracker"))
        .args([
            "--id",
            "abc",
            "--start-time-us",
            "1",
            "--start-time-cpu-us",
            "1",
            "--parent-cpu-time-us",
            "1",
            "--seccomp-level",
            "2",
            "--show-level",
            "--show-log-origin",
            "--module",
            "kite_vmm",
            "--http-api-max-payload-size",
            "60000",
            "--mmds-size-limit",
            "60000",
            "--no-api",
        ])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("no kernel"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// The Kata-style start: `firecracker` with the jailer's flags, no /proc (a private mount
/// namespace with an empty tmpfs over it), an empty environment, /dev/null stdio; then
/// Kata's and firecracker-containerd's bodies through the API, the guest boots, vCPU threads
/// carry Firecracker's names, and the metrics FIFO gets Firecracker's names and a last line.
#[test]
fn started_as_the_runtimes_start_firecracker() {
    let test = "started_as_the_runtimes_start_firecracker";
    if let Some((need, reason)) =
        kvm_and_root_unavailable("hiding /proc needs a mount namespace (root)")
    {
        return skip(test, need, &reason);
    }
    let kernel = testguest().unwrap_or_else(|e| panic!("{e}"));
    let dir = firecracker_dir("kata");
    let sock = dir.join("firecracker.socket");
    let (log, metrics) = (dir.join("log.fifo"), dir.join("metrics.fifo"));
    mkfifo(&log);
    mkfifo(&metrics);
    let mono_us = {
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: clock_gettime writes one timespec.
        unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
        ts.tv_sec as u64 * 1_000_000 + ts.tv_nsec as u64 / 1_000
    };
    let mut cmd = Command::new(dir.join("firecracker"));
    cmd.args(["--api-sock", path_str(&sock), "--id", "kata-sandbox"])
        .args(["--start-time-us", &mono_us.to_string()])
        .args(["--start-time-cpu-us", "0", "--parent-cpu-time-us", "1000"])
        .args(["--no-seccomp"])
        .env_clear()
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    // SAFETY: between fork and exec only unshare and mount are called, which are
    // async-signal-safe system calls; the strings are made before the fork.
    unsafe {
        cmd.pre_exec(|| {
            if libc::unshare(libc::CLONE_NEWNS) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            let root = c"/";
            let none = c"none";
            let proc_dir = c"/proc";
            let tmpfs = c"tmpfs";
            let private = libc::MS_REC | libc::MS_PRIVATE;
            if libc::mount(
                none.as_ptr(),
                root.as_ptr(),
                std::ptr::null(),
                private,
                std::ptr::null(),
            ) != 0
                || libc::mount(
                    none.as_ptr(),
                    proc_dir.as_ptr(),
                    tmpfs.as_ptr(),
                    0,
                    std::ptr::null(),
                ) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = cmd.spawn().unwrap();
    let pid = child.id();
    let started = Instant::now();
    while !sock.exists() {
        if let Ok(Some(status)) = child.try_wait() {
            panic!("firecracker (Kite) ended before its API socket was there: {status}");
        }
        assert!(started.elapsed() < Duration::from_secs(10), "no API socket");
        std::thread::sleep(Duration::from_millis(5));
    }
    // What the process sees: no /proc, no environment, /dev/null on stdio.
    let proc_seen = std::fs::read_dir(format!("/proc/{pid}/root/proc"))
        .unwrap()
        .count();
    assert_eq!(proc_seen, 0, "the VMM sees a /proc");
    assert!(
        std::fs::read(format!("/proc/{pid}/environ"))
            .unwrap()
            .is_empty()
    );
    let stdout = std::fs::read_link(format!("/proc/{pid}/fd/1")).unwrap();
    assert_eq!(stdout, Path::new("/dev/null"));

    let ok = |method: &str, path: &str, body: serde_json::Value| {
        let (status, text) = call(&sock, method, path, Some(&body.to_string()));
        assert_eq!(status, 204, "{method} {path} {body}: {text}");
    };
    // GET /vm/config before any machine-config: Firecracker's schema, never null.
    let (status, text) = call(&sock, "GET", "/vm/config", None);
    assert_eq!(status, 200);
    let config: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert!(config["machine-config"]["vcpu_count"].is_u64(), "{text}");
    // Kata opens the FIFOs' reading ends only later; the PUTs must not wait for them.
    let t = Instant::now();
    ok(
        "PUT",
        "/logger",
        serde_json::json!({"log_path": log, "level": "Info", "show_level": true,
            "show_log_origin": false}),
    );
    ok(
        "PUT",
        "/metrics",
        serde_json::json!({"metrics_path": metrics}),
    );
    assert!(
        t.elapsed() < Duration::from_millis(500),
        "{:?}",
        t.elapsed()
    );
    let (mut log_r, mut metrics_r) = (fifo_reader(&log), fifo_reader(&metrics));
    // firecracker-containerd: "smt" always, a CPU template for the host's vendor.
    let vendor = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let template = if vendor.contains("AuthenticAMD") {
        serde_json::json!("T2A")
    } else if vendor.contains("GenuineIntel") {
        serde_json::json!("T2")
    } else {
        serde_json::Value::Null
    };
    ok(
        "PUT",
        "/machine-config",
        serde_json::json!({"vcpu_count": 2, "mem_size_mib": 64, "smt": true,
            "cpu_template": template, "track_dirty_pages": null}),
    );
    ok(
        "PUT",
        "/boot-source",
        serde_json::json!({"kernel_image_path": kernel,
            // Kata's kernel parameters include acpi=off: the devices must then be named on
            // the command line, which the test guest (no ACPI) reads.
            "boot_args": "acpi=off kite_test=tick kite_tick_ms=20", "initrd_path": null}),
    );
    // Kata's eight placeholder drives: 0-byte files, `{}` rate limiters.
    for i in 0..8 {
        let file = dir.join(format!("drive_{i}"));
        std::fs::write(&file, b"").unwrap();
        ok(
            "PUT",
            &format!("/drives/drive_{i}"),
            serde_json::json!({"drive_id": format!("drive_{i}"), "path_on_host": file,
                "is_root_device": false, "is_read_only": false, "rate_limiter": {},
                "io_engine": null}),
        );
    }
    ok(
        "PUT",
        "/vsock/root",
        serde_json::json!({"vsock_id": "root", "guest_cid": 0,
            "uds_path": dir.join("kata.hvsock")}),
    );
    ok("PUT", "/entropy", serde_json::json!({"rate_limiter": {}}));
    // Kata's interface: `{}` rate limiters (a tap Kite makes, gone with it).
    let tap = format!("kr{}", std::process::id() % 100_000);
    ok(
        "PUT",
        "/network-interfaces/eth0",
        serde_json::json!({"iface_id": "eth0", "host_dev_name": tap,
            "guest_mac": "02:00:00:00:00:01", "rx_rate_limiter": {}, "tx_rate_limiter": {}}),
    );
    ok(
        "PUT",
        "/actions",
        serde_json::json!({"action_type": "InstanceStart"}),
    );
    // Kata pins vCPUs by these names (fc.go, vcpu thread ids). Firecracker starts its vCPU
    // threads before it answers InstanceStart, and so does Kite: read /proc at once.
    let mut names: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .flatten()
        .filter_map(|t| std::fs::read_to_string(t.path().join("comm")).ok())
        .map(|n| n.trim().to_string())
        .filter(|n| n.starts_with("fc_vcpu"))
        .collect();
    names.sort();
    assert_eq!(names, ["fc_vcpu 0", "fc_vcpu 1"]);
    let (_, text) = call(&sock, "GET", "/", None);
    assert!(text.contains("\"Running\""), "{text}");
    // Rate limiters changed on the running VM; bad ones refused.
    ok(
        "PATCH",
        "/network-interfaces/eth0",
        serde_json::json!({"iface_id": "eth0",
            "tx_rate_limiter": {"bandwidth": {"size": 1_000_000, "refill_time": 100}}}),
    );
    let (status, text) = call(
        &sock,
        "PATCH",
        "/network-interfaces/eth9",
        Some(r#"{"iface_id": "eth9", "rx_rate_limiter": {}}"#),
    );
    assert_eq!(status, 400, "{text}");
    assert!(
        fault(&text).contains("no network interface \"eth9\""),
        "{text}"
    );
    let (status, text) = call(
        &sock,
        "PATCH",
        "/network-interfaces/eth0",
        Some(
            r#"{"iface_id": "eth0", "rx_rate_limiter": {"ops": {"size": 1, "refill_time": 18446744073709551615}}}"#,
        ),
    );
    assert_eq!(status, 400, "{text}");
    assert!(fault(&text).contains("values overflow"), "{text}");
    let (_, text) = call(&sock, "GET", "/vm/config", None);
    let config: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(
        config["network-interfaces"][0]["tx_rate_limiter"]["bandwidth"]["size"], 1_000_000,
        "{text}"
    );
    // Let the guest run a little, then stop it the way the runtimes do (SIGTERM).
    std::thread::sleep(Duration::from_millis(500));
    let (status, text) = call(
        &sock,
        "PUT",
        "/actions",
        Some(r#"{"action_type": "FlushMetrics"}"#),
    );
    assert_eq!(status, 204, "{}", fault(&text));
    // SAFETY: kill on our child, not yet reaped.
    assert_eq!(unsafe { libc::kill(pid as i32, libc::SIGTERM) }, 0);
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < deadline, "no exit after SIGTERM");
        std::thread::sleep(Duration::from_millis(10));
    };
    assert_eq!(status.code(), Some(128 + libc::SIGTERM), "{status}");
    let lines: Vec<serde_json::Value> = drain(&mut metrics_r)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    // The flush and the last line at exit.
    assert!(lines.len() >= 2, "{lines:?}");
    let last = lines.last().unwrap();
    // Each line counts what happened since the one before (Firecracker's way): summed, the
    // guest's console writes are there.
    let io_out: u64 = lines
        .iter()
        .map(|l| l["vcpu"]["exit_io_out"].as_u64().unwrap())
        .sum();
    assert!(io_out > 0, "{lines:?}");
    // Firecracker's `net` (all interfaces) and `net_<iface_id>` groups, and `vmm`.
    assert!(last["net"]["tx_bytes_count"].is_u64(), "{last}");
    assert!(last["net_eth0"]["rx_packets_count"].is_u64(), "{last}");
    assert_eq!(last["vmm"]["panic_count"], 0, "{last}");
    assert!(last["vmm"]["device_events"].is_u64(), "{last}");
    let startup = last["api_server"]["process_startup_time_us"]
        .as_u64()
        .unwrap();
    assert!(startup > 0 && startup < 10_000_000, "{last}");
    assert!(
        last["api_server"]["process_startup_time_cpu_us"]
            .as_u64()
            .unwrap()
            >= 1000
    );
    let log_text = drain(&mut log_r);
    assert!(
        log_text.contains("[INFO]") || log_text.contains("[Info]"),
        "{log_text}"
    );
    assert!(log_text.contains("disk of 0 sectors"), "{log_text}");
    if !template.is_null() {
        assert!(log_text.contains("not applied"), "{log_text}");
    }
    assert!(!sock.exists(), "the socket is removed at exit");
    let _ = std::fs::remove_dir_all(&dir);
}
