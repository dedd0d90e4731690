//! Replays of Kubernetes' microVM runtimes driving `firecracker` (issue 19), step by step as
//! their sources do it, against Kite with the test guest's `agent` scenario (it listens on
//! vsock like the runtimes' agents, waits for the block hotplug, then stops as told):
//!
//! * Kata Containers' Go runtime, unjailed and jailed: src/runtime/virtcontainers/fc.go
//!   (kata-containers 7c6ba40c, "fc.go:N" below).
//! * Kata's runtime-rs: src/runtime-rs/crates/hypervisor/src/firecracker/ (fc_api.rs,
//!   inner.rs, inner_hypervisor.rs) and crates/agent/src/sock/hybrid_vsock.rs.
//! * firecracker-containerd (be68640a) through firecracker-go-sdk's default handlers
//!   (6fb280e9): runtime/service.go, runtime/drive_handler.go, runtime/noop_jailer.go;
//!   the SDK's machine.go, handlers.go, firecracker.go (every PUT with a 500 ms context,
//!   drives 250 ms) and vsock/dial.go.
//!
//! The guest's console goes to a pipe (Kata's debug mode, fc.go:401; runtime-rs pipes
//! stderr, inner.rs:137) so that its result line can be checked.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::api::{call, try_call};
use common::host::{bind_mount, drain, fifo_reader, mkfifo, umount};
use common::*;

/// firecracker-go-sdk firecracker.go:33: `defaultFirecrackerRequestTimeout = 500` (ms).
const SDK_TIMEOUT: Duration = Duration::from_millis(500);
/// How long a replay waits for the guest (agent, hotplug, stop) on a loaded machine.
const GUEST_LIMIT: Duration = Duration::from_secs(60);

/// A directory with `firecracker`, a symlink to Kite's binary; removed at the end.
struct Scratch(PathBuf);

impl Scratch {
    fn new(test: &str) -> Scratch {
        let dir = std::env::temp_dir().join(format!("kite-replay-{}-{test}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_kite"), dir.join("firecracker")).unwrap();
        Scratch(dir)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// One API call as the runtime sends it: 204 (any 2xx for runtime-rs' retry loop), and, for
/// the SDK, within its per-request timeout.
fn put(sock: &Path, method: &str, path: &str, body: serde_json::Value, limit: Option<Duration>) {
    let t = Instant::now();
    let (status, text) = call(sock, method, path, Some(&body.to_string()));
    let took = t.elapsed();
    assert_eq!(status, 204, "{method} {path} {body}: {text}");
    if let Some(limit) = limit {
        assert!(
            took < limit,
            "{method} {path} took {took:?}: the SDK gives it {limit:?}"
        );
    }
}

/// Wait for the API socket to answer `GET /` (the runtimes poll it; fc.go:331 every 10 ms).
fn wait_api(sock: &Path, limit: Duration) -> String {
    let t = Instant::now();
    loop {
        if sock.exists()
            && let Ok((200, body)) = try_call(sock, "GET", "/", None)
        {
            return body;
        }
        assert!(
            t.elapsed() < limit,
            "no API on {} within {limit:?}",
            sock.display()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// The agent connection as the runtimes make it: connect to the vsock device's Unix socket,
/// send `<verb> <port>\n`, expect `OK <host port>\n` within 10 s; redial until the guest
/// listens (Kata: client.go HybridVSockDialer; runtime-rs: hybrid_vsock.rs connect_helper;
/// the SDK: vsock/dial.go tryConnect). Then one line there and back.
/// `seen` says what the VMM printed, for a failure's message.
fn agent_session(uds: &Path, verb: &str, port: u32, seen: &dyn Fn() -> String) -> Duration {
    let start = Instant::now();
    let mut stream = loop {
        assert!(
            start.elapsed() < GUEST_LIMIT,
            "the agent never answered {verb} {port} on {}\n{}",
            uds.display(),
            seen()
        );
        if let Ok(mut s) = UnixStream::connect(uds) {
            s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            // A refused connection (the guest not listening yet) is hung up: dial again.
            let sent = s.write_all(format!("{verb} {port}\n").as_bytes());
            let mut line = String::new();
            let mut reader = BufReader::new(s.try_clone().unwrap());
            if sent.is_ok() && reader.read_line(&mut line).is_ok() && line.starts_with("OK ") {
                assert!(line.trim_end()[3..].parse::<u32>().is_ok(), "{line:?}");
                break s;
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let connected = start.elapsed();
    let ping = b"ping from the runtime\n";
    stream.write_all(ping).unwrap();
    let mut echo = String::new();
    BufReader::new(stream).read_line(&mut echo).unwrap();
    assert_eq!(echo.as_bytes(), ping);
    connected
}

/// The test guest's `agent` words after the runtime's own kernel arguments: it listens on
/// vsock `port`, disk `blk` is the one hotplugged (from `from` sectors), `stop` how the guest ends.
fn agent_words(port: u32, blk: usize, from: u64, stop: &str) -> String {
    format!(
        "kite_test=agent kite_agent_port={port} kite_blk_index={blk} kite_blk_from={from} kite_virtio_wait=poll kite_agent_stop={stop} kite_ms=60000"
    )
}

/// The container's image: 1 MiB starting with `tag`.
fn image(dir: &Path, tag: &[u8; 8]) -> PathBuf {
    let path = dir.join("container.img");
    let mut bytes = vec![0u8; 1 << 20];
    bytes[..8].copy_from_slice(tag);
    std::fs::write(&path, bytes).unwrap();
    path
}

/// The guest's hotplug line (`result`: its result line): it saw the new capacity (2048
/// sectors) and reads the image.
fn check_hotplug(out: &str, tag: &[u8; 8], result: bool) {
    let prefix = if result {
        "KITE-TEST agent ok echoed=22 "
    } else {
        "KITE-PROGRESS agent hotplug "
    };
    let line = out
        .lines()
        .find(|l| l.starts_with(prefix))
        .unwrap_or_else(|| panic!("no line {prefix:?}\n{out}"));
    assert!(
        line.contains("new=2048") && line.contains("read_status=0"),
        "{line}"
    );
    let first = format!("first={:016x}", u64::from_be_bytes(*tag));
    assert!(line.contains(&first), "{line}");
}

fn skip_unless_kvm(test: &str) -> bool {
    if let Some(reason) = kvm_unavailable() {
        skip(test, Need::Kvm, &reason);
        return true;
    }
    false
}

/// Kata's Go runtime without `jailer_path` (fc.go). fcInitConfiguration (fc.go:718):
/// `<vmPath>/root/run` made; the kernel and rootfs at `<jailerRoot>/vmlinux` and `/rootfs`
/// (fcJailResource, fc.go:547, bind mounts; here copies), eight 0-byte `drive_N`
/// (createDiskPool fc.go:867, createJailedDrive fc.go:511), the FIFOs opened for reading first
/// (fcListenToFifo fc.go:682); `fcConfig.json` written (StartVM fc.go:821); `firecracker
/// --api-sock <jailerRoot>/run/firecracker.socket --config-file <jailerRoot>/fcConfig.json`
/// (fcInit fc.go:396); the API polled until Running within fcTimeout, 10 s (waitVMMRunning
/// fc.go:331); `kata.hvsock` chmodded 0640 (fc.go:853); the agent on port 1024 (`CONNECT
/// 1024`, hypervisor.go:81 vSockPort); a container's image as `drive_0` and `PATCH
/// /drives/drive_0` with only `path_on_host` (hotplugBlockDevice fc.go:1131,
/// fcUpdateBlockDrive fc.go:1070); stop: SIGTERM, SIGKILL after fcStopSandboxTimeout, 15 s
/// (fcEnd fc.go:473, utils.WaitLocalProcess).
#[test]
fn kata_go_unjailed() {
    let test = "kata_go_unjailed";
    if let Some((need, reason)) =
        kvm_and_root_unavailable("Kata bind-mounts the container's image over drive_0 (root)")
    {
        return skip(test, need, &reason);
    }
    let kernel = testguest().unwrap_or_else(|e| panic!("{e}"));
    let scratch = Scratch::new(test);
    // setPaths (fc.go:228): <chroot base>/firecracker/<id>/root, the base /run/vc.
    let root = scratch.0.join("vc/firecracker/kata-sandbox/root");
    std::fs::create_dir_all(root.join("run")).unwrap();
    std::fs::copy(&kernel, root.join("vmlinux")).unwrap();
    std::fs::write(root.join("rootfs"), vec![0u8; 1 << 20]).unwrap();
    let mut drives = vec![serde_json::json!({"drive_id": "rootfs",
        "path_on_host": root.join("rootfs"), "is_root_device": false, "is_read_only": true})];
    for i in 0..8 {
        let path = root.join(format!("drive_{i}"));
        std::fs::write(&path, b"").unwrap();
        drives.push(serde_json::json!({"drive_id": format!("drive_{i}"),
            "path_on_host": path, "is_root_device": false, "is_read_only": false}));
    }
    let (log, metrics) = (root.join("logs.fifo"), root.join("metrics.fifo"));
    mkfifo(&log);
    mkfifo(&metrics);
    let readers = [fifo_reader(&log), fifo_reader(&metrics)];
    let uds = root.join("kata.hvsock");
    // fcKernelParams (fc.go:92) with console=ttyS0 (debug, fc.go:759), then the guest's words.
    let boot_args = format!(
        "pci=off reboot=k panic=1 iommu=off net.ifnames=0 random.trust_cpu=on acpi=off console=ttyS0 {}",
        agent_words(1024, 1, 0, "hold")
    );
    let config = serde_json::json!({
        "boot-source": {"kernel_image_path": root.join("vmlinux"), "boot_args": boot_args},
        "drives": drives,
        "machine-config": {"vcpu_count": 1, "mem_size_mib": 64, "smt": false},
        "logger": {"level": "Debug", "log_path": log},
        "metrics": {"metrics_path": metrics},
        "vsock": {"vsock_id": "root", "guest_cid": 3, "uds_path": uds},
    });
    let config_path = root.join("fcConfig.json");
    std::fs::write(&config_path, serde_json::to_vec_pretty(&config).unwrap()).unwrap();
    let sock = root.join("run/firecracker.socket");
    let mut cmd = Command::new(scratch.0.join("firecracker"));
    cmd.arg("--api-sock")
        .arg(&sock)
        .arg("--config-file")
        .arg(&config_path);
    let mut vmm = Guest::start(cmd);
    let info = wait_api(&sock, Duration::from_secs(10));
    assert!(info.contains("\"Running\""), "{info}");
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&uds, std::fs::Permissions::from_mode(0o640)).unwrap();
    let connected = agent_session(&uds, "CONNECT", 1024, &|| {
        format!("{}\n{}", vmm.out(), vmm.err())
    });
    eprintln!("Kata Go: agent connected {connected:?} after the VM was Running");
    let tag = b"KATAUNJL";
    let img = image(&scratch.0, tag);
    // hotplugBlockDevice: fcJailResource bind-mounts the image over the placeholder.
    let drive0 = root.join("drive_0");
    bind_mount(&img, &drive0);
    put(
        &sock,
        "PATCH",
        "/drives/drive_0",
        serde_json::json!({"drive_id": "drive_0", "path_on_host": drive0}),
        None,
    );
    let held = vmm.wait_for(GUEST_LIMIT, |o| o.contains("KITE-PROGRESS agent holding"));
    assert!(held, "{}\n{}", vmm.out(), vmm.err());
    check_hotplug(&vmm.out(), tag, false);
    // fcEnd: SIGTERM, SIGKILL after 15 s. Kite ends on SIGTERM (128 + 15).
    let code = vmm.stop(Duration::from_secs(15));
    assert_eq!(code, Some(128 + libc::SIGTERM), "{}", vmm.err());
    assert!(!sock.exists(), "the API socket is removed at exit");
    // cleanupJail (fc.go:916): the placeholder unmounted.
    umount(&drive0);
    drop(readers);
}

/// Kata's runtime-rs without a jailer. prepare_vm (inner_hypervisor.rs:21): `<vm_path>/run`
/// made; prepare_vmm (inner.rs:76): `firecracker --api-sock <vm_path>/run/fc.sock`, stderr
/// piped; prepare_vmm_resources (fc_api.rs:87), each call retried every 10 ms
/// (send_request_with_retry fc_api.rs:246): PUT /boot-source (the configured kernel's own path,
/// `pci=off iommu=off` then the configured kernel_params), /machine-config (`mem_size_mib`,
/// `vcpu_count` only), /drives/rootfs, five 0-byte `drive1`..`drive5` under `<vm_path>/root`
/// (DISK_POOL_SIZE 6, fc_api.rs:150); prepare_hvsock (fc_api.rs:69): PUT /vsock (`guest_cid` 3,
/// `<vm_path>/kata.hvsock`, id `root`); start_vm (inner_hypervisor.rs:74): InstanceStart; the
/// agent with a lower-case `connect 1024` (hybrid_vsock.rs:72); patch_container_rootfs
/// (fc_api.rs:175): PATCH /drives/drive1 with `"rate_limiter": null` (RateLimiterConfig::new
/// with no limits is None); stop_vm (inner_hypervisor.rs:88): `kill()`, SIGKILL.
#[test]
fn kata_runtime_rs() {
    let test = "kata_runtime_rs";
    if skip_unless_kvm(test) {
        return;
    }
    let kernel = testguest().unwrap_or_else(|e| panic!("{e}"));
    let scratch = Scratch::new(test);
    let vm_path = scratch.0.join("kata-sandbox");
    std::fs::create_dir_all(vm_path.join("run")).unwrap();
    let sock = vm_path.join("run/fc.sock");
    let mut cmd = Command::new(scratch.0.join("firecracker"));
    cmd.arg("--api-sock").arg(&sock);
    let mut vmm = Guest::start(cmd);
    wait_api(&sock, Duration::from_secs(10));
    let rootfs = scratch.0.join("kata-containers.img");
    std::fs::write(&rootfs, vec![0u8; 1 << 20]).unwrap();
    // The test guest has no ACPI: a user of such a kernel adds acpi=off to kernel_params.
    let params = format!(
        "pci=off iommu=off console=ttyS0 acpi=off {}",
        agent_words(1024, 1, 0, "hold")
    );
    put(
        &sock,
        "PUT",
        "/boot-source",
        serde_json::json!({"kernel_image_path": kernel, "boot_args": params}),
        None,
    );
    put(
        &sock,
        "PUT",
        "/machine-config",
        serde_json::json!({"mem_size_mib": 64, "vcpu_count": 1}),
        None,
    );
    put(
        &sock,
        "PUT",
        "/drives/rootfs",
        serde_json::json!({"drive_id": "rootfs", "path_on_host": rootfs,
            "is_root_device": false, "is_read_only": true}),
        None,
    );
    let pool = vm_path.join("root");
    std::fs::create_dir_all(&pool).unwrap();
    for i in 1..6 {
        let path = pool.join(format!("drive{i}"));
        std::fs::write(&path, b"").unwrap();
        put(
            &sock,
            "PUT",
            &format!("/drives/drive{i}"),
            serde_json::json!({"drive_id": format!("drive{i}"), "path_on_host": path,
                "is_root_device": false, "is_read_only": false}),
            None,
        );
    }
    let uds = vm_path.join("kata.hvsock");
    put(
        &sock,
        "PUT",
        "/vsock",
        serde_json::json!({"guest_cid": 3, "uds_path": uds, "vsock_id": "root"}),
        None,
    );
    put(
        &sock,
        "PUT",
        "/actions",
        serde_json::json!({"action_type": "InstanceStart"}),
        None,
    );
    agent_session(&uds, "connect", 1024, &|| {
        format!("{}\n{}", vmm.out(), vmm.err())
    });
    let tag = b"KATARUST";
    let img = image(&scratch.0, tag);
    put(
        &sock,
        "PATCH",
        "/drives/drive1",
        serde_json::json!({"drive_id": "drive1", "path_on_host": img, "rate_limiter": null}),
        None,
    );
    let held = vmm.wait_for(GUEST_LIMIT, |o| o.contains("KITE-PROGRESS agent holding"));
    assert!(held, "{}\n{}", vmm.out(), vmm.err());
    check_hotplug(&vmm.out(), tag, false);
    // kill(): SIGKILL, no grace.
    let pid = vmm.pid();
    // SAFETY: kill(2) on the VMM, our child, not reaped yet (wait_for saw it running).
    unsafe { libc::kill(pid as i32, libc::SIGKILL) };
    // No exit code (killed by a signal), and reaped within 10 s.
    assert_eq!(vmm.wait_exit(Duration::from_secs(10)), None);
    assert!(
        std::fs::metadata(format!("/proc/{pid}")).is_err(),
        "the VMM outlived SIGKILL"
    );
}

/// firecracker-containerd's CreateVM with the noop jailer, through the SDK's default handlers.
/// buildVMConfiguration (service.go:926): socket `firecracker.sock` and vsock
/// `firecracker.vsock` relative to the shim directory (the cwd), id `agent_api` and no CID (0),
/// `cpu_template` T2 on Intel hosts and `smt` (helpers.go:35), the log and metrics FIFOs made
/// by the shim (service.go:968); the root drive and one stub drive per container
/// (drive_handler.go:266: a file of one 512-byte sector, its id the base32 of its name),
/// appended after the root drive (service.go:1008, CreateContainerStubs). noop_jailer.go:57: `firecracker
/// --api-sock firecracker.sock --id <vmID>`. The SDK (handlers.go:304 defaultFcInitHandlerList,
/// machine.go): startVMM, the socket within 3 s (waitForSocket); PUT /logger (`show_level`
/// true, `show_log_origin` false), /metrics, /machine-config then GET /machine-config
/// (refreshMachineConfiguration), /boot-source, /drives/{id} (each drive 250 ms:
/// firecracker.go:218), /vsock, InstanceStart (machine.go:922); every PUT within 500 ms.
/// The agent on port 10789 (service.go:74, vsock/dial.go `CONNECT 10789`); the container's
/// image patched onto the stub drive (drive_handler.go:368 UpdateGuestDrive); the stop: the
/// SDK's Machine.Shutdown, `SendCtrlAltDel` (machine.go:464, 941), and the guest reboots.
#[test]
fn firecracker_containerd() {
    let test = "firecracker_containerd";
    if skip_unless_kvm(test) {
        return;
    }
    let kernel = testguest().unwrap_or_else(|e| panic!("{e}"));
    let scratch = Scratch::new(test);
    let shim = scratch.0.join("shim");
    std::fs::create_dir_all(&shim).unwrap();
    for fifo in ["fc-logs.fifo", "fc-metrics.fifo"] {
        let c = std::ffi::CString::new(path_str(&shim.join(fifo))).unwrap();
        // SAFETY: mkfifo reads the NUL-terminated path only.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o700) }, 0);
    }
    let root_drive = scratch.0.join("rootfs.img");
    std::fs::write(&root_drive, vec![0u8; 1 << 20]).unwrap();
    let stub = shim.join("ctrstub0");
    std::fs::write(&stub, vec![0u8; 512]).unwrap();
    let stub_id = "MN2HE43UOVRDA";
    let mut cmd = Command::new(scratch.0.join("firecracker"));
    cmd.args(["--api-sock", "firecracker.sock", "--id", "fc-vm-1"])
        .current_dir(&shim);
    let mut vmm = Guest::start(cmd);
    let sock = shim.join("firecracker.sock");
    let t = Instant::now();
    while !sock.exists() {
        assert!(
            t.elapsed() < Duration::from_secs(3),
            "no API socket within 3 s"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    // The shim reads the VMM's log FIFO (the SDK's captureFifoToFile, handlers.go:172).
    let mut log = fifo_reader(&shim.join("fc-logs.fifo"));
    let sdk = Some(SDK_TIMEOUT);
    put(
        &sock,
        "PUT",
        "/logger",
        serde_json::json!({"log_path": "fc-logs.fifo", "level": "Debug",
            "show_level": true, "show_log_origin": false}),
        sdk,
    );
    put(
        &sock,
        "PUT",
        "/metrics",
        serde_json::json!({"metrics_path": "fc-metrics.fifo"}),
        sdk,
    );
    let vendor = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let mut machine = serde_json::json!({"vcpu_count": 1, "mem_size_mib": 64, "smt": false});
    if vendor.contains("GenuineIntel") {
        machine["cpu_template"] = "T2".into();
    }
    put(&sock, "PUT", "/machine-config", machine, sdk);
    let (status, body) = call(&sock, "GET", "/machine-config", None);
    assert_eq!(status, 200, "{body}");
    // config.go:34 defaultKernelArgs, then the guest's words.
    let args = format!(
        "console=ttyS0 noapic reboot=k panic=1 pci=off nomodules rw {}",
        agent_words(10789, 1, 1, "cad")
    );
    put(
        &sock,
        "PUT",
        "/boot-source",
        serde_json::json!({"kernel_image_path": kernel, "boot_args": args}),
        sdk,
    );
    let half = Some(SDK_TIMEOUT / 2);
    put(
        &sock,
        "PUT",
        "/drives/root_drive",
        serde_json::json!({"drive_id": "root_drive", "path_on_host": root_drive,
            "is_root_device": true, "is_read_only": true}),
        half,
    );
    put(
        &sock,
        "PUT",
        &format!("/drives/{stub_id}"),
        serde_json::json!({"drive_id": stub_id, "path_on_host": stub,
            "is_root_device": false, "is_read_only": false}),
        half,
    );
    put(
        &sock,
        "PUT",
        "/vsock",
        serde_json::json!({"guest_cid": 0, "uds_path": "firecracker.vsock", "vsock_id": "agent_api"}),
        sdk,
    );
    put(
        &sock,
        "PUT",
        "/actions",
        serde_json::json!({"action_type": "InstanceStart"}),
        sdk,
    );
    agent_session(&shim.join("firecracker.vsock"), "CONNECT", 10789, &|| {
        format!("{}\n{}", vmm.out(), vmm.err())
    });
    let tag = b"FCCTRDIM";
    let img = image(&scratch.0, tag);
    put(
        &sock,
        "PATCH",
        &format!("/drives/{stub_id}"),
        serde_json::json!({"drive_id": stub_id, "path_on_host": img}),
        sdk,
    );
    let waiting = vmm.wait_for(GUEST_LIMIT, |o| {
        o.contains("agent waiting for ctrl-alt-del")
    });
    assert!(waiting, "{}\n{}", vmm.out(), vmm.err());
    put(
        &sock,
        "PUT",
        "/actions",
        serde_json::json!({"action_type": "SendCtrlAltDel"}),
        sdk,
    );
    let code = vmm.wait_exit(GUEST_LIMIT);
    assert_eq!(code, Some(0), "{}\n{}", vmm.out(), vmm.err());
    let log_text = drain(&mut log);
    assert!(log_text.contains("guest reset the machine"), "{log_text}");
    check_hotplug(&vmm.out(), tag, true);
}

/// Kata Containers' Go runtime with `jailer_path` set, step by step as fc.go does it:
/// `firecracker --version` (getVersionNumber fc.go:289, checkVersion fc.go:317: >= 0.21.1); `<root>/run`
/// made (fcInitConfiguration fc.go:718); the jail root bind-mounted on itself and made shared
/// (fcRemountJailerRootWithExec fc.go:531, called at fc.go:735); the kernel and rootfs put in the jail as `/vmlinux`
/// and `/rootfs` (fcJailResource fc.go:547); eight 0-byte `/drive_N` placeholders
/// (createDiskPool fc.go:867); the log and metrics FIFOs opened for reading first
/// (fcListenToFifo fc.go:682); `fcConfig.json` written into the jail (StartVM fc.go:825);
/// `jailer --id --exec-file --uid --gid --chroot-base-dir --daemonize -- --config-file
/// /fcConfig.json` (fcInit fc.go:353); the API polled on `<root>/run/firecracker.socket` until
/// Running within fcTimeout, 10 s (waitVMMRunning fc.go:331); the pid from
/// `<root>/firecracker.pid` (readJailedFirecrackerPID fc.go:457); `kata.hvsock` chmodded 0640
/// (fc.go:854); the agent's `CONNECT 1024` on it (hypervisor.go:81 vSockPort); a container's
/// image bind-mounted over `/drive_0` and `PATCH /drives/drive_0` (hotplugBlockDevice
/// fc.go:1131); stop: SIGTERM, SIGKILL after fcStopSandboxTimeout, 15 s (fcEnd fc.go:473).
/// The jailed VMM's stdio is /dev/null, so the guest's view of the hotplug is read from the
/// metrics FIFO (`FlushMetrics`) instead of its console.
#[test]
fn kata_go_jailed() {
    let test = "kata_go_jailed";
    if let Some((need, reason)) =
        kvm_and_root_unavailable("the jailer and Kata's bind mounts need root")
    {
        return skip(test, need, &reason);
    }
    let kernel = testguest().unwrap_or_else(|e| panic!("{e}"));
    let scratch = Scratch::new(test);
    let dir = &scratch.0;
    std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_kite"), dir.join("jailer")).unwrap();
    let base = dir.join("vc");
    let id = format!("kata{}", std::process::id());
    let root = base.join("firecracker").join(&id).join("root");
    let v = Command::new(dir.join("firecracker"))
        .arg("--version")
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&v.stdout).starts_with("Firecracker v"));
    std::fs::create_dir_all(root.join("run")).unwrap();
    bind_mount(&root, &root);
    let c = std::ffi::CString::new(path_str(&root)).unwrap();
    let none = std::ptr::null();
    // SAFETY: mount reads the NUL-terminated path only.
    let shared = unsafe { libc::mount(none, c.as_ptr(), none, libc::MS_SHARED, none.cast()) };
    assert_eq!(shared, 0);
    // cleanupJail (fc.go:916): the placeholder and the jail root unmounted, even on a failure.
    struct Mounts(PathBuf);
    impl Drop for Mounts {
        fn drop(&mut self) {
            umount(&self.0.join("drive_0"));
            umount(&self.0);
        }
    }
    let _mounts = Mounts(root.clone());
    std::fs::copy(&kernel, root.join("vmlinux")).unwrap();
    std::fs::write(root.join("rootfs"), vec![0u8; 1 << 20]).unwrap();
    let mut drives = vec![
        serde_json::json!({"drive_id": "rootfs", "path_on_host": "/rootfs",
        "is_root_device": false, "is_read_only": true}),
    ];
    for i in 0..8 {
        std::fs::write(root.join(format!("drive_{i}")), b"").unwrap();
        drives.push(serde_json::json!({"drive_id": format!("drive_{i}"),
            "path_on_host": format!("/drive_{i}"), "is_root_device": false,
            "is_read_only": false}));
    }
    let (log, metrics) = (root.join("logs.fifo"), root.join("metrics.fifo"));
    mkfifo(&log);
    mkfifo(&metrics);
    let log_r = std::cell::RefCell::new(fifo_reader(&log));
    let mut metrics_r = fifo_reader(&metrics);
    let boot_args = format!(
        "pci=off reboot=k panic=1 iommu=off net.ifnames=0 random.trust_cpu=on acpi=off console=ttyS0 {}",
        agent_words(1024, 1, 0, "hold")
    );
    let config = serde_json::json!({
        "boot-source": {"kernel_image_path": "/vmlinux", "boot_args": boot_args},
        "drives": drives,
        "machine-config": {"vcpu_count": 1, "mem_size_mib": 64, "smt": false},
        "logger": {"level": "Debug", "log_path": "/logs.fifo"},
        "metrics": {"metrics_path": "/metrics.fifo"},
        "vsock": {"vsock_id": "root", "guest_cid": 3, "uds_path": "/kata.hvsock"},
    });
    let json = serde_json::to_vec_pretty(&config).unwrap();
    std::fs::write(root.join("fcConfig.json"), json).unwrap();
    let jailer = Command::new(dir.join("jailer"))
        .args(["--id", &id, "--exec-file"])
        .arg(dir.join("firecracker"))
        .args(["--uid", "0", "--gid", "0", "--chroot-base-dir"])
        .arg(&base)
        .args(["--daemonize", "--", "--config-file", "/fcConfig.json"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&jailer.stderr);
    assert!(jailer.status.success(), "{stderr}");
    let sock = root.join("run/firecracker.socket");
    let running = wait_api(&sock, Duration::from_secs(10));
    assert!(
        running.contains("\"Running\"") && running.contains(&id),
        "{running}"
    );
    let pid: i32 = std::fs::read_to_string(root.join("firecracker.pid"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    // Whatever happens next, the jailed VMM does not outlive the test.
    struct Vmm(i32);
    impl Drop for Vmm {
        fn drop(&mut self) {
            // SAFETY: kill on the VMM's pid, read from its pid file.
            unsafe { libc::kill(self.0, libc::SIGKILL) };
        }
    }
    let vmm = Vmm(pid);
    use std::os::unix::fs::PermissionsExt;
    let uds = root.join("kata.hvsock");
    std::fs::set_permissions(&uds, std::fs::Permissions::from_mode(0o640)).unwrap();
    let connected = agent_session(&uds, "CONNECT", 1024, &|| drain(&mut log_r.borrow_mut()));
    eprintln!("Kata Go, jailed: agent connected {connected:?} after the VM was Running");
    let img = image(dir, b"KATAJAIL");
    bind_mount(&img, &root.join("drive_0"));
    let body = serde_json::json!({"drive_id": "drive_0", "path_on_host": "/drive_0"});
    put(&sock, "PATCH", "/drives/drive_0", body, None);
    // The guest reads the first sector of the new image: one 512-byte read on drive_0, the
    // second disk (block1). Each line counts what happened since the one before (as
    // Firecracker's do): the sums over the lines are the totals.
    let flush = serde_json::json!({"action_type": "FlushMetrics"});
    let t = Instant::now();
    let mut lines: Vec<serde_json::Value> = Vec::new();
    let sum = |lines: &[serde_json::Value], group: &str, key: &str| -> u64 {
        lines.iter().filter_map(|l| l[group][key].as_u64()).sum()
    };
    let device_sum = |lines: &[serde_json::Value], key: &str| -> u64 {
        lines
            .iter()
            .filter_map(|l| l["devices"]["block1"][key].as_u64())
            .sum()
    };
    loop {
        put(&sock, "PUT", "/actions", flush.clone(), None);
        let text = drain(&mut metrics_r);
        lines.extend(text.lines().filter_map(|l| serde_json::from_str(l).ok()));
        if device_sum(&lines, "bytes") == 512 {
            break;
        }
        assert!(
            t.elapsed() < GUEST_LIMIT,
            "the guest did not read the hotplugged image: {text}\n{}",
            drain(&mut log_r.borrow_mut())
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(sum(&lines, "block", "update_count"), 1, "{lines:?}");
    assert_eq!(device_sum(&lines, "errors"), 0, "{lines:?}");
    // fcEnd: SIGTERM, then SIGKILL after 15 s; Kite ends on the SIGTERM.
    // SAFETY: kill on the VMM's pid, read from its pid file.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    let t = Instant::now();
    while std::fs::metadata(format!("/proc/{pid}")).is_ok() {
        assert!(
            t.elapsed() < Duration::from_secs(15),
            "the jailed VMM was still there 15 s after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    drop(vmm);
    let log_text = drain(&mut log_r.borrow_mut());
    assert!(log_text.contains("on signal 15"), "{log_text}");
    assert!(!sock.exists(), "the API socket is removed at exit");
}
