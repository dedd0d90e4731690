//! Kite as Kubernetes' microVM runtimes start and drive Firecracker (issue 19): Kata
//! Containers' Go runtime (src/runtime/virtcontainers/fc.go) and runtime-rs
//! (crates/hypervisor/src/firecracker/), firecracker-containerd through firecracker-go-sdk.
//! They exec a binary named `firecracker` (a copy, in the jailer's chroot) with Firecracker's
//! flags, no /proc, an empty environment and /dev/null stdio, and send bodies Kite once
//! refused: `{}` rate limiters, 0-byte placeholder drives, `guest_cid` 0, a CPU template,
//! `smt: true`, log and metrics FIFOs nobody reads yet.

mod common;

use std::io::Read;
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::api::{call, fault};
use common::*;

/// A directory with `firecracker`, a symlink to Kite's binary (the runtimes' name for it).
fn firecracker_dir(test: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("kite-rt-{}-{test}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_kite"), dir.join("firecracker")).unwrap();
    dir
}

fn mkfifo(path: &Path) {
    let c = std::ffi::CString::new(path_str(path)).unwrap();
    // SAFETY: mkfifo reads the NUL-terminated path only.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0, "mkfifo");
}

/// Open a FIFO's reading end without waiting for a writer.
fn fifo_reader(path: &Path) -> std::fs::File {
    std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
        .unwrap()
}

/// What a non-blocking reader has, up to end of file or "nothing more now".
fn drain(f: &mut std::fs::File) -> String {
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match f.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
            Err(e) => panic!("reading a FIFO: {e}"),
        }
    }
    String::from_utf8_lossy(&out).into_owned()
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
    assert!(last["vcpu"]["exit_io_out"].as_u64().unwrap() > 0, "{last}");
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

fn bind_mount(from: &Path, to: &Path) {
    let (f, t) = (
        std::ffi::CString::new(path_str(from)).unwrap(),
        std::ffi::CString::new(path_str(to)).unwrap(),
    );
    // SAFETY: mount reads the two NUL-terminated paths only.
    let r = unsafe {
        libc::mount(
            f.as_ptr(),
            t.as_ptr(),
            std::ptr::null(),
            libc::MS_BIND,
            std::ptr::null(),
        )
    };
    assert_eq!(
        r,
        0,
        "bind mount {} on {}: {}",
        from.display(),
        to.display(),
        std::io::Error::last_os_error()
    );
}

fn umount(at: &Path) {
    let c = std::ffi::CString::new(path_str(at)).unwrap();
    // SAFETY: umount2 reads the NUL-terminated path only.
    unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
}

/// Kata Containers' Go runtime with `jailer_path` set, step by step as
/// src/runtime/virtcontainers/fc.go does it: `firecracker --version` (getVersionNumber,
/// parseVersion, checkVersion >= 0.21.1); `<root>/run` made by Kata (fcInitConfiguration); the
/// jail root bind-mounted on itself and made shared (fcRemountJailerRootWithExec); the kernel
/// and rootfs put in the jail as `/vmlinux` and `/rootfs` (fcJailResource, fcSetBootSource,
/// fcSetVMRootfs); eight 0-byte `/drive_N` placeholders (createDiskPool, createJailedDrive); the
/// log and metrics FIFOs opened for reading first (fcListenToFifo); `fcConfig.json` written
/// into the jail (StartVM); `jailer --id --exec-file --uid 0 --gid 0 --chroot-base-dir
/// --daemonize -- --config-file /fcConfig.json` (fcInit); the API polled on
/// `<root>/run/firecracker.socket` (waitVMMRunning) and the pid read from
/// `<root>/firecracker.pid` (readJailedFirecrackerPID); `kata.hvsock` chmodded (StartVM); a
/// container's image bind-mounted over `/drive_0` and `PATCH /drives/drive_0` (block hotplug).
/// The guest (the test guest's `virtio-blk-resize` on the second disk) sees the new capacity,
/// reads the new file, and resets.
#[test]
fn kata_go_jailed() {
    let test = "kata_go_jailed";
    if let Some((need, reason)) =
        kvm_and_root_unavailable("the jailer and Kata's bind mounts need root")
    {
        return skip(test, need, &reason);
    }
    let kernel = testguest().unwrap_or_else(|e| panic!("{e}"));
    let dir = firecracker_dir("kata-jailed");
    std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_kite"), dir.join("jailer")).unwrap();
    let base = dir.join("vc");
    let id = format!("kata{}", std::process::id());
    let root = base.join("firecracker").join(&id).join("root");
    // fc.go getVersionNumber/checkVersion.
    let v = Command::new(dir.join("firecracker"))
        .arg("--version")
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&v.stdout).starts_with("Firecracker v"));
    // fcInitConfiguration: MkdirAll(jailerRoot/run); fcRemountJailerRootWithExec.
    std::fs::create_dir_all(root.join("run")).unwrap();
    bind_mount(&root, &root);
    let c = std::ffi::CString::new(path_str(&root)).unwrap();
    // SAFETY: mount reads the NUL-terminated path only.
    let shared = unsafe {
        libc::mount(
            std::ptr::null(),
            c.as_ptr(),
            std::ptr::null(),
            libc::MS_SHARED,
            std::ptr::null(),
        )
    };
    assert_eq!(shared, 0);
    let cleanup = |root: &Path| {
        umount(&root.join("drive_0"));
        umount(root);
    };
    std::fs::copy(&kernel, root.join("vmlinux")).unwrap();
    std::fs::write(root.join("rootfs"), vec![0u8; 1 << 20]).unwrap();
    for i in 0..8 {
        std::fs::write(root.join(format!("drive_{i}")), b"").unwrap();
    }
    let (log, metrics) = (root.join("logs.fifo"), root.join("metrics.fifo"));
    mkfifo(&log);
    mkfifo(&metrics);
    let (mut log_r, mut metrics_r) = (fifo_reader(&log), fifo_reader(&metrics));
    let mut drives = vec![
        serde_json::json!({"drive_id": "rootfs", "path_on_host": "/rootfs",
        "is_root_device": false, "is_read_only": true}),
    ];
    for i in 0..8 {
        drives.push(serde_json::json!({"drive_id": format!("drive_{i}"),
            "path_on_host": format!("/drive_{i}"), "is_root_device": false,
            "is_read_only": false}));
    }
    // fcKernelParams (acpi=off among them), then the test guest's own words.
    let config = serde_json::json!({
        "boot-source": {"kernel_image_path": "/vmlinux",
            "boot_args": "pci=off reboot=k panic=1 iommu=off net.ifnames=0 random.trust_cpu=on acpi=off console=ttyS0 kite_test=virtio-blk-resize kite_blk_index=1 kite_blk_from=0 kite_virtio_wait=poll kite_ms=60000"},
        "drives": drives,
        "machine-config": {"vcpu_count": 1, "mem_size_mib": 64, "smt": false},
        "logger": {"level": "Debug", "log_path": "/logs.fifo"},
        "metrics": {"metrics_path": "/metrics.fifo"},
        "vsock": {"vsock_id": "root", "guest_cid": 3, "uds_path": "/kata.hvsock"},
    });
    std::fs::write(
        root.join("fcConfig.json"),
        serde_json::to_vec_pretty(&config).unwrap(),
    )
    .unwrap();
    // fcInit, jailed.
    let jailer = Command::new(dir.join("jailer"))
        .args(["--id", &id, "--exec-file"])
        .arg(dir.join("firecracker"))
        .args(["--uid", "0", "--gid", "0", "--chroot-base-dir"])
        .arg(&base)
        .args(["--daemonize", "--", "--config-file", "/fcConfig.json"])
        .output()
        .unwrap();
    assert!(
        jailer.status.success(),
        "{}",
        String::from_utf8_lossy(&jailer.stderr)
    );
    // waitVMMRunning: the API on the default socket, the VM Running (started from the file).
    let sock = root.join("run/firecracker.socket");
    let t = Instant::now();
    let running = loop {
        if sock.exists()
            && let Ok((200, body)) = common::api::try_call(&sock, "GET", "/", None)
            && body.contains("\"Running\"")
        {
            break body;
        }
        if t.elapsed() > Duration::from_secs(10) {
            cleanup(&root);
            panic!(
                "the VM was not Running within fcTimeout (10 s): {}",
                drain(&mut log_r)
            );
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    assert!(running.contains(&id), "{running}");
    let pid: i32 = std::fs::read_to_string(root.join("firecracker.pid"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    // StartVM: chmod kata.hvsock 0640.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(
        root.join("kata.hvsock"),
        std::fs::Permissions::from_mode(0o640),
    )
    .unwrap();
    // Block hotplug: the container's image bind-mounted over the placeholder, then PATCH.
    let image = dir.join("container.img");
    let mut bytes = vec![0u8; 1 << 20];
    bytes[..8].copy_from_slice(b"KITEDISK");
    std::fs::write(&image, bytes).unwrap();
    bind_mount(&image, &root.join("drive_0"));
    let t = Instant::now();
    let (status, body) = call(
        &sock,
        "PATCH",
        "/drives/drive_0",
        Some(r#"{"drive_id": "drive_0", "path_on_host": "/drive_0"}"#),
    );
    let patch_ms = t.elapsed().as_secs_f64() * 1e3;
    if status != 204 {
        cleanup(&root);
        panic!("PATCH /drives/drive_0: {status} {body}");
    }
    eprintln!("PATCH /drives (Kata, jailed, after a bind mount): {patch_ms:.2} ms");
    // The guest reads the new disk and resets: the VMM ends by itself.
    let t = Instant::now();
    while std::fs::metadata(format!("/proc/{pid}")).is_ok() {
        if t.elapsed() > Duration::from_secs(60) {
            // fcEnd: SIGTERM, then SIGKILL.
            // SAFETY: kill on the VMM's pid, read from its pid file.
            unsafe { libc::kill(pid, libc::SIGKILL) };
            cleanup(&root);
            panic!(
                "the guest did not end after the hotplug: {}",
                drain(&mut log_r)
            );
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let log_text = drain(&mut log_r);
    let lines: Vec<serde_json::Value> = drain(&mut metrics_r)
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    cleanup(&root);
    assert!(log_text.contains("guest reset the machine"), "{log_text}");
    let last = lines
        .last()
        .unwrap_or_else(|| panic!("no metrics line; log: {log_text}"));
    assert_eq!(last["block"]["update_count"], 1, "{last}");
    // drive_0 is the second disk (block1): one 512-byte read of the new file.
    assert_eq!(last["devices"]["block1"]["bytes"], 512, "{last}");
    assert_eq!(last["devices"]["block1"]["errors"], 0, "{last}");
    let _ = std::fs::remove_dir_all(&dir);
}
