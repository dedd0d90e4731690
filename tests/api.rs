//! The Firecracker-compatible API over its Unix socket (curl as the client) and the config
//! file: each endpoint's success path, bad input, the order rules, whole boots of the test
//! guest configured only through the API or only from a file, and `GET /vm/config` round trips.

mod common;

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::time::Duration;

use common::api::*;
use common::*;

const LIMIT: Duration = Duration::from_secs(60);

/// The test guest, or None (after a skip line) where it cannot run.
fn guest(test: &str) -> Option<String> {
    if let Some(reason) = kvm_unavailable() {
        skip(test, Need::Kvm, &reason);
        return None;
    }
    Some(path_str(&testguest().unwrap_or_else(|e| panic!("{e}"))).to_string())
}

fn boot_source(kernel: &str, args: &str) -> String {
    serde_json::json!({"kernel_image_path": kernel, "boot_args": args}).to_string()
}

#[test]
fn a_guest_configured_and_started_only_through_the_api() {
    let test = "a_guest_configured_and_started_only_through_the_api";
    let Some(kernel) = guest(test) else { return };
    let mut vm = ApiVm::start(test, &["--no-acpi", "--id", "vm-7"]);
    let (status, body) = vm.call("GET", "/", None);
    assert_eq!(status, 200, "{body}");
    let info: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(info["id"], "vm-7");
    assert_eq!(info["state"], "Not started");
    assert_eq!(info["vmm_version"], env!("CARGO_PKG_VERSION"));

    let disk = vm.dir.join("disk.img");
    std::fs::write(&disk, vec![0u8; 1 << 20]).unwrap();
    let log = vm.dir.join("kite.log");
    let metrics = vm.dir.join("metrics.json");
    vm.ok(
        "PUT",
        "/boot-source",
        &boot_source(&kernel, "kite_test=tick kite_tick_ms=5"),
    );
    vm.ok(
        "PUT",
        "/machine-config",
        r#"{"vcpu_count": 1, "mem_size_mib": 64}"#,
    );
    vm.ok("PATCH", "/machine-config", r#"{"vcpu_count": 2}"#);
    let (status, body) = vm.call("GET", "/machine-config", None);
    assert_eq!(status, 200);
    let m: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        (m["vcpu_count"].as_u64(), m["mem_size_mib"].as_u64()),
        (Some(2), Some(64))
    );
    let drive = serde_json::json!({"drive_id": "data", "path_on_host": disk,
        "is_root_device": false, "is_read_only": true});
    vm.ok("PUT", "/drives/data", &drive.to_string());
    vm.ok("PUT", "/entropy", "{}");
    vm.ok(
        "PUT",
        "/vsock",
        &serde_json::json!({"guest_cid": 3, "uds_path": vm.dir.join("v.sock")}).to_string(),
    );
    vm.ok(
        "PUT",
        "/logger",
        &serde_json::json!({"log_path": log, "level": "Info"}).to_string(),
    );
    vm.ok(
        "PUT",
        "/metrics",
        &serde_json::json!({"metrics_path": metrics}).to_string(),
    );
    vm.ok("PUT", "/actions", r#"{"action_type": "InstanceStart"}"#);
    vm.wait_stdout(LIMIT, |out| last_tick(out) >= 3);

    let (status, body) = vm.call("GET", "/", None);
    assert_eq!(status, 200);
    assert!(body.contains(r#""state":"Running""#), "{body}");
    let (status, body) = vm.call("GET", "/vm/config", None);
    assert_eq!(status, 200);
    let config: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(config["machine-config"]["vcpu_count"], 2);
    assert_eq!(config["drives"][0]["drive_id"], "data");
    assert_eq!(config["vsock"]["guest_cid"], 3);

    // After boot: configuration is refused, InstanceStart too; the VM goes on.
    vm.bad(
        "PUT",
        "/machine-config",
        Some(r#"{"vcpu_count": 1, "mem_size_mib": 64}"#),
        "already running",
    );
    vm.bad(
        "PUT",
        "/drives/data",
        Some(&drive.to_string()),
        "already running",
    );
    vm.bad(
        "PUT",
        "/actions",
        Some(r#"{"action_type": "InstanceStart"}"#),
        "already running",
    );
    vm.ok("PUT", "/actions", r#"{"action_type": "FlushMetrics"}"#);
    let line = std::fs::read_to_string(&metrics).unwrap();
    let first: serde_json::Value = serde_json::from_str(line.lines().next().unwrap()).unwrap();
    assert!(
        first["vcpu_exits"]["io_out"].as_u64().unwrap() > 0,
        "{line}"
    );
    assert!(first["api"]["requests"].as_u64().unwrap() >= 3, "{line}");
    assert!(first["devices"]["block0"].is_object(), "{line}");
    // The read-only disk was never used by this guest; the rng and vsock devices exist.
    assert_eq!(first["devices"]["virtio-blk0"]["completed"], 0, "{line}");
    assert!(first["devices"]["virtio-rng0"].is_object(), "{line}");
    assert!(first["devices"]["virtio-vsock0"].is_object(), "{line}");
    // Ctrl-Alt-Del goes to the keyboard; this guest ignores it.
    vm.ok("PUT", "/actions", r#"{"action_type": "SendCtrlAltDel"}"#);
    let before = last_tick(&vm.stdout());
    vm.wait_stdout(LIMIT, |out| last_tick(out) > before);

    vm.type_text("q");
    assert_eq!(vm.wait(LIMIT), Some(0), "{}", vm.stderr());
    assert!(vm.stdout().contains("KITE-TEST tick ok"), "{}", vm.stdout());
    let log_text = std::fs::read_to_string(&log).unwrap();
    assert!(log_text.contains("guest reset the machine"), "{log_text}");
    assert!(!vm.sock.exists(), "the API socket is removed at exit");
}

#[test]
fn bad_requests_get_400_and_a_fault_message_and_the_api_keeps_working() {
    let test = "bad_requests_get_400_and_a_fault_message_and_the_api_keeps_working";
    let Some(kernel) = guest(test) else { return };
    let mut vm = ApiVm::start(test, &["--no-acpi"]);
    let mc = "/machine-config";
    vm.bad("PUT", mc, Some("{\"vcpu_count\": 1,"), "invalid JSON");
    vm.bad("PUT", mc, Some("{}"), "missing field");
    vm.bad(
        "PUT",
        mc,
        Some(r#"{"vcpu_count": 1, "mem_size_mib": 64, "cpus": 2}"#),
        "unknown field `cpus`",
    );
    vm.bad(
        "PUT",
        mc,
        Some(r#"{"vcpu_count": "two", "mem_size_mib": 64}"#),
        "invalid type",
    );
    vm.bad(
        "PUT",
        mc,
        Some(r#"{"vcpu_count": 0, "mem_size_mib": 64}"#),
        "vcpu_count 0 is out of range",
    );
    vm.bad(
        "PUT",
        mc,
        Some(r#"{"vcpu_count": 1, "mem_size_mib": 1048576}"#),
        "more than this host's",
    );
    vm.bad(
        "PUT",
        mc,
        Some(r#"{"vcpu_count": 3, "mem_size_mib": 64, "smt": true}"#),
        "even number of vCPUs",
    );
    vm.bad("PUT", mc, None, "needs a JSON body");
    vm.bad(
        "PUT",
        "/balloon",
        Some("{}"),
        "does not support the balloon",
    );
    vm.bad(
        "PUT",
        "/snapshot/create",
        Some("{}"),
        "missing field `snapshot_path`",
    );
    vm.bad("PUT", "/mmds", Some("{}"), "does not support MMDS");
    vm.bad("GET", "/nowhere", None, "no such endpoint");
    vm.bad(
        "PUT",
        "/drives/a",
        Some(r#"{"drive_id": "b", "path_on_host": "x", "is_root_device": false}"#),
        "differs",
    );
    vm.bad(
        "PUT",
        "/actions",
        Some(r#"{"action_type": "InstanceStart"}"#),
        "no kernel",
    );
    vm.bad(
        "PATCH",
        "/vm",
        Some(r#"{"state": "Resumed"}"#),
        "has not started",
    );
    vm.bad(
        "PUT",
        "/actions",
        Some(r#"{"action_type": "Reboot"}"#),
        "unknown action_type",
    );
    // A kernel that is not there: the start fails, the API stays, a good start then works.
    vm.ok(
        "PUT",
        "/boot-source",
        &boot_source("/nonexistent/vmlinux", ""),
    );
    vm.bad(
        "PUT",
        "/actions",
        Some(r#"{"action_type": "InstanceStart"}"#),
        "cannot start the VM",
    );

    // Raw clients: too big, half a request, nothing at all, garbage.
    let raw = |bytes: &[u8]| -> String {
        let mut s = UnixStream::connect(&vm.sock).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        s.write_all(bytes).unwrap();
        let mut out = String::new();
        let _ = s.read_to_string(&mut out);
        out
    };
    let big = format!(
        "PUT /machine-config HTTP/1.1\r\nContent-Length: {}\r\n\r\n",
        1 << 20
    );
    let answer = raw(big.as_bytes());
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert!(answer.contains("fault_message"), "{answer}");
    let answer = raw(b"\x01\x02 not http\r\n\r\n");
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    let silent = UnixStream::connect(&vm.sock).unwrap();
    let mut half = UnixStream::connect(&vm.sock).unwrap();
    half.write_all(b"PUT /machine-config HTTP/1.1\r\nContent-Length: 50\r\n\r\n{\"vcpu")
        .unwrap();
    // Others are served meanwhile.
    let (status, _) = vm.call("GET", "/", None);
    assert_eq!(status, 200);
    half.set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let mut answer = String::new();
    let _ = half.read_to_string(&mut answer);
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    assert!(answer.contains("incomplete request"), "{answer}");

    // Many clients at once: every one gets an answer.
    let sock = vm.sock.clone();
    let clients: Vec<_> = (0..40)
        .map(|i| {
            let sock = sock.clone();
            std::thread::spawn(move || {
                let body = format!(r#"{{"vcpu_count": {}, "mem_size_mib": 64}}"#, i % 3 + 1);
                call(&sock, "PUT", "/machine-config", Some(&body)).0
            })
        })
        .collect();
    for c in clients {
        assert_eq!(c.join().unwrap(), 204);
    }
    drop(silent);

    vm.ok(
        "PUT",
        "/boot-source",
        &boot_source(&kernel, "kite_test=hello"),
    );
    vm.ok("PUT", mc, r#"{"vcpu_count": 1, "mem_size_mib": 64}"#);
    vm.ok("PUT", "/actions", r#"{"action_type": "InstanceStart"}"#);
    assert_eq!(vm.wait(LIMIT), Some(0), "{}", vm.stderr());
    assert!(
        vm.stdout().contains("KITE-TEST hello ok ram_mib=63 ")
            && vm.stdout().contains(" cmdline=kite_test=hello"),
        "{}",
        vm.stdout()
    );
}

fn config_file(dir: &std::path::Path, name: &str, json: &serde_json::Value) -> std::path::PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, serde_json::to_string_pretty(json).unwrap()).unwrap();
    p
}

#[test]
fn a_config_file_boots_and_get_vm_config_round_trips() {
    let test = "a_config_file_boots_and_get_vm_config_round_trips";
    let Some(kernel) = guest(test) else { return };
    let dir = temp_file(test, "x", b"").parent().unwrap().to_path_buf();
    let file = config_file(
        &dir,
        "vm.json",
        &serde_json::json!({
            "boot-source": {"kernel_image_path": kernel, "boot_args": "kite_test=hello"},
            "machine-config": {"vcpu_count": 2, "mem_size_mib": 96, "smt": false},
            "entropy": {}
        }),
    );
    let out = run(
        {
            let mut c = kite();
            c.args(["run", "--no-acpi", "--config-file", path_str(&file)]);
            c
        },
        LIMIT,
    );
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    assert!(
        out.stdout.contains("KITE-TEST hello ok ram_mib=95 ")
            && out.stdout.contains(" cmdline=kite_test=hello"),
        "{}",
        out.stdout
    );
    assert!(out.stderr.contains("2 vCPUs"), "{}", out.stderr);

    // A flag naming what the file names, an unknown field, an unsupported value: one line.
    let one_line = |args: &[&str], want: &str| {
        let mut c = kite();
        c.arg("run").args(args);
        let out = run(c, LIMIT);
        assert_eq!(out.code, Some(2), "{args:?}: {}", out.stderr);
        let errors = out.error_lines();
        assert_eq!(errors.len(), 1, "{}", out.stderr);
        assert!(errors[0].contains(want), "{args:?}: {}", errors[0]);
    };
    one_line(
        &["--config-file", path_str(&file), "--memory", "64M"],
        "--memory and the config file's machine-config both set",
    );
    one_line(
        &["--config-file", path_str(&file), "--kernel", &kernel],
        "--kernel and the config file's boot-source",
    );
    let odd = config_file(
        &dir,
        "odd.json",
        &serde_json::json!({"boot-source": {"kernel_image_path": kernel}, "machin-config": {}}),
    );
    one_line(
        &["--config-file", path_str(&odd)],
        "unknown field `machin-config`",
    );
    let unsupported = config_file(
        &dir,
        "unsupported.json",
        &serde_json::json!({"boot-source": {"kernel_image_path": kernel},
            "machine-config": {"vcpu_count": 1, "mem_size_mib": 64, "huge_pages": "2M"}}),
    );
    one_line(
        &["--config-file", path_str(&unsupported)],
        "machine-config.huge_pages",
    );
    one_line(
        &["--config-file", "/nonexistent.json"],
        "cannot read --config-file",
    );

    // GET /vm/config of a VM started from flags, written to a file, boots the same VM.
    let mut vm = ApiVm::start(
        test,
        &[
            "--no-acpi",
            "--kernel",
            &kernel,
            "--memory",
            "80M",
            "--cpus",
            "2",
            "--cmdline",
            "kite_test=echo",
        ],
    );
    let (status, body) = vm.call("GET", "/vm/config", None);
    assert_eq!(status, 200, "{body}");
    vm.type_text("first\n");
    assert_eq!(vm.wait(LIMIT), Some(0), "{}", vm.stderr());
    assert!(vm.stdout().contains("KITE-TEST echo ok text=first"));
    let got: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(got["machine-config"]["mem_size_mib"], 80);
    let again = config_file(&dir, "again.json", &got);
    let mut c = kite();
    c.args(["run", "--no-acpi", "--config-file", path_str(&again)]);
    let out = run_with_input(c, Some(b"second\n".to_vec()), LIMIT);
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    assert!(
        out.stdout.contains("KITE-TEST echo ok text=second"),
        "{}",
        out.stdout
    );
    assert!(
        out.stderr.contains("2 vCPUs, 80 MiB of RAM"),
        "{}",
        out.stderr
    );
    assert!(out.stderr.contains("virtio-rng"), "{}", out.stderr);
}

#[test]
fn firecracker_flags_through_a_symlink_named_firecracker() {
    let test = "firecracker_flags_through_a_symlink_named_firecracker";
    let Some(kernel) = guest(test) else { return };
    let dir = temp_file(test, "x", b"").parent().unwrap().to_path_buf();
    let link = dir.join("firecracker");
    let _ = std::fs::remove_file(&link);
    std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_kite"), &link).unwrap();
    let file = config_file(
        &dir,
        "vm.json",
        &serde_json::json!({
            "boot-source": {"kernel_image_path": kernel, "boot_args": "kite_test=hello"},
            "machine-config": {"vcpu_count": 1, "mem_size_mib": 64}
        }),
    );
    let log = dir.join("fc.log");
    let mut c = std::process::Command::new(&link);
    c.args([
        "--no-api",
        "--config-file",
        path_str(&file),
        "--id",
        "fc-1",
        "--level",
        "Debug",
        "--log-path",
        path_str(&log),
        "--boot-timer",
        "--no-acpi",
    ])
    .stdin(std::process::Stdio::null())
    .stdout(std::process::Stdio::piped())
    .stderr(std::process::Stdio::piped());
    let out = run(c, LIMIT);
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    assert!(out.stdout.contains("KITE-TEST hello ok"), "{}", out.stdout);
    let log_text = std::fs::read_to_string(&log).unwrap();
    assert!(log_text.contains("guest reset the machine"), "{log_text}");
    assert!(
        log_text.contains("seccomp: the main thread may make"),
        "debug level: {log_text}"
    );
    let mut c = std::process::Command::new(&link);
    c.args(["--no-api", "--api-sock", "/tmp/x.sock"]);
    c.stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let out = run(c, LIMIT);
    assert_eq!(out.code, Some(2));
    assert!(
        out.stderr.contains("--no-api and --api-sock"),
        "{}",
        out.stderr
    );
}

#[test]
fn a_stop_signal_while_waiting_for_the_api_ends_kite_and_removes_the_socket() {
    let test = "a_stop_signal_while_waiting_for_the_api_ends_kite_and_removes_the_socket";
    if guest(test).is_none() {
        return;
    }
    let mut vm = ApiVm::start(test, &["--no-acpi"]);
    let (status, _) = vm.call("GET", "/", None);
    assert_eq!(status, 200);
    vm.signal(libc::SIGTERM);
    assert_eq!(vm.wait(LIMIT), Some(128 + libc::SIGTERM), "{}", vm.stderr());
    assert!(!vm.sock.exists(), "the socket is left behind");
    assert!(
        vm.stderr().contains("stopped on signal 15"),
        "{}",
        vm.stderr()
    );
}
