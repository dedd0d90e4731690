//! `kite jail` (Kite's binary as Firecracker's `jailer`): the VMM jailed as Kata and
//! firecracker-containerd jail Firecracker, run as a non-root uid, checked from outside: its
//! root is the chroot, its uid/gid, its cgroup and limit, its mount namespace, and a file
//! outside the jail it cannot reach. Bad flags are one line each and leave nothing behind.

mod common;

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::Netns;
use common::api::try_call;
use common::*;

const UID: u32 = 12_345;

/// Root, KVM: or the reason to skip.
fn unavailable() -> Option<(Need, String)> {
    kvm_and_root_unavailable("the jailer needs root")
}

struct Dir(PathBuf);

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A work directory with `firecracker`, a copy of Kite's binary (the jailer copies it on).
fn setup(tag: &str) -> (Dir, PathBuf, PathBuf) {
    let dir = std::env::temp_dir().join(format!("kite-jail-{}-{tag}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let base = dir.join("srv");
    std::fs::create_dir_all(&base).unwrap();
    let exe = dir.join("firecracker");
    std::fs::copy(env!("CARGO_BIN_EXE_kite"), &exe).unwrap();
    (Dir(dir), base, exe)
}

/// Which `--cgroup-version` and setting this host can give a pids limit with, if any.
fn pids_cgroup() -> Option<(&'static str, PathBuf)> {
    let mounts = std::fs::read_to_string("/proc/mounts").unwrap_or_default();
    for l in mounts.lines() {
        let f: Vec<&str> = l.split_whitespace().collect();
        if f.len() >= 4 && f[2] == "cgroup2" {
            let c = std::fs::read_to_string(Path::new(f[1]).join("cgroup.controllers"));
            if c.is_ok_and(|c| c.split_whitespace().any(|x| x == "pids")) {
                return Some(("2", PathBuf::from(f[1])));
            }
        }
    }
    for l in mounts.lines() {
        let f: Vec<&str> = l.split_whitespace().collect();
        if f.len() >= 4 && f[2] == "cgroup" && f[3].split(',').any(|o| o == "pids") {
            return Some(("1", PathBuf::from(f[1])));
        }
    }
    None
}

fn wait_for(path: &Path, child: &mut std::process::Child, limit: Duration) -> Duration {
    let t = Instant::now();
    while !path.exists() {
        if let Ok(Some(s)) = child.try_wait() {
            let mut err = String::new();
            if let Some(mut e) = child.stderr.take() {
                use std::io::Read;
                let _ = e.read_to_string(&mut err);
            }
            panic!("ended ({s}) before {} was there: {err}", path.display());
        }
        assert!(t.elapsed() < limit, "no {} after {limit:?}", path.display());
        std::thread::sleep(Duration::from_micros(200));
    }
    t.elapsed()
}

fn status_ids(pid: u32, key: &str) -> Vec<u32> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .unwrap()
        .split_whitespace()
        .map(|n| n.parse().unwrap())
        .collect()
}

#[test]
fn the_vmm_runs_jailed_as_a_non_root_user() {
    let test = "the_vmm_runs_jailed_as_a_non_root_user";
    if let Some((need, reason)) = unavailable() {
        return skip(test, need, &reason);
    }
    let kernel = testguest().unwrap_or_else(|e| panic!("{e}"));
    let (dir, base, exe) = setup("run");
    let id = format!("jt-{}", std::process::id());
    let cgroup = pids_cgroup();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_kite"));
    cmd.args(["jail", "--id", &id, "--exec-file"])
        .arg(&exe)
        .args(["--uid", &UID.to_string(), "--gid", &UID.to_string()])
        .arg("--chroot-base-dir")
        .arg(&base)
        .args(["--resource-limit", "no-file=256"]);
    if let Some((version, _)) = &cgroup {
        cmd.args(["--cgroup-version", version, "--cgroup", "pids.max=100"]);
    }
    // runtime-rs' VMM flags (crates/hypervisor/src/firecracker/inner.rs), plus the test
    // guest's --no-acpi.
    cmd.args(["--", "--api-sock", "/run/fc.sock", "--no-acpi"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let root = base.join("firecracker").join(&id).join("root");
    let sock = root.join("run/fc.sock");
    let mut child = cmd.spawn().unwrap();
    let child_pid = child.id();
    let jailed_ready = wait_for(&sock, &mut child, Duration::from_secs(20));
    let (stderr, _) = collect(child.stderr.take().unwrap());
    let api = |method: &str, path: &str, body: Option<&str>| {
        try_call(&sock, method, path, body).unwrap_or_else(|e| {
            let status = std::fs::read_to_string(format!("/proc/{}/status", child_pid));
            panic!(
                "{method} {path}: {e}\nVMM alive: {}\nstderr: {}",
                status.is_ok(),
                stderr.lock().unwrap()
            )
        })
    };
    let pid: u32 = std::fs::read_to_string(root.join("firecracker.pid"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert_eq!(
        pid,
        child.id(),
        "the pid file names the VMM (the jailer exec'd into it)"
    );
    // Its root is the jail: the pid file is at its /, the host's /etc is not there.
    let seen = PathBuf::from(format!("/proc/{pid}/root"));
    assert!(seen.join("firecracker.pid").exists());
    assert!(seen.join("dev/kvm").exists());
    assert!(!seen.join("etc").exists(), "the VMM sees the host's /etc");
    assert!(!seen.join("proc/self").exists(), "the VMM sees a /proc");
    // Its uid/gid (real, effective, saved, fs) and supplementary groups.
    assert_eq!(status_ids(pid, "Uid:"), [UID; 4]);
    assert_eq!(status_ids(pid, "Gid:"), [UID; 4]);
    assert!(status_ids(pid, "Groups:").is_empty());
    // Its mount namespace is not ours; its limit.
    let ns = |p: &str| std::fs::read_link(format!("/proc/{p}/ns/mnt")).unwrap();
    assert_ne!(ns(&pid.to_string()), ns("self"));
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let files = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap();
    assert_eq!(files.split_whitespace().nth(3), Some("256"), "{files}");
    // Its cgroup and the limit in it.
    if let Some((version, mount)) = &cgroup {
        let groups = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
        let want = format!("/firecracker/{id}");
        let line = groups
            .lines()
            .find(|l| {
                if version == &"1" {
                    l.contains(":pids:")
                } else {
                    l.starts_with("0::")
                }
            })
            .unwrap();
        assert!(line.ends_with(&want), "{groups}");
        let max =
            std::fs::read_to_string(mount.join(format!("firecracker/{id}/pids.max"))).unwrap();
        assert_eq!(max.trim(), "100");
    } else {
        skip(
            test,
            Need::Cgroup,
            "no pids cgroup controller here: the cgroup part is not checked",
        );
    }

    // A file outside the jail cannot be opened by it: a log file named by its host path.
    let outside = dir.0.join("outside.log");
    std::fs::write(&outside, b"host file\n").unwrap();
    let (status, body) = api(
        "PUT",
        "/logger",
        Some(&serde_json::json!({"log_path": outside, "level": "Info"}).to_string()),
    );
    assert_eq!(status, 400, "{body}");
    assert_eq!(std::fs::read(&outside).unwrap(), b"host file\n");

    // The guest boots from a kernel put into the jail, as Kata hard-links its kernel in.
    std::fs::copy(&kernel, root.join("vmlinux")).unwrap();
    let ok = |method: &str, path: &str, body: serde_json::Value| {
        let (status, text) = api(method, path, Some(&body.to_string()));
        assert_eq!(status, 204, "{method} {path}: {text}");
    };
    ok(
        "PUT",
        "/boot-source",
        serde_json::json!({"kernel_image_path": "/vmlinux", "boot_args": "kite_test=tick"}),
    );
    ok(
        "PUT",
        "/machine-config",
        serde_json::json!({"vcpu_count": 1, "mem_size_mib": 64}),
    );
    ok(
        "PUT",
        "/actions",
        serde_json::json!({"action_type": "InstanceStart"}),
    );
    let (_, info) = api("GET", "/", None);
    assert!(info.contains("\"Running\""), "{info}");
    // SAFETY: kill on our child (the VMM), not yet reaped.
    assert_eq!(unsafe { libc::kill(pid as i32, libc::SIGTERM) }, 0);
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(128 + libc::SIGTERM), "{status}");

    // The cost of the jail: exec to API socket, next to Kite alone (the median of 5 each).
    let mut alone = Vec::new();
    let mut jailed = vec![jailed_ready];
    for i in 0..5 {
        let s = dir.0.join(format!("alone{i}.sock"));
        let mut c = Command::new(&exe)
            .args(["--api-sock", s.to_str().unwrap()])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        alone.push(wait_for(&s, &mut c, Duration::from_secs(10)));
        let _ = c.kill();
        let _ = c.wait();
        if i < 4 {
            let id2 = format!("{id}-{i}");
            let root2 = base.join("firecracker").join(&id2).join("root");
            let mut c = Command::new(env!("CARGO_BIN_EXE_kite"))
                .args(["jail", "--id", &id2, "--exec-file"])
                .arg(&exe)
                .args(["--uid", &UID.to_string(), "--gid", &UID.to_string()])
                .arg("--chroot-base-dir")
                .arg(&base)
                .args(["--", "--api-sock", "/run/fc.sock"])
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap();
            jailed.push(wait_for(
                &root2.join("run/fc.sock"),
                &mut c,
                Duration::from_secs(10),
            ));
            let _ = c.kill();
            let _ = c.wait();
        }
    }
    alone.sort();
    jailed.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    eprintln!(
        "exec to API socket ready, median of 5: Kite alone {:.1} ms, jailed {:.1} ms ({:.1}x)",
        ms(alone[2]),
        ms(jailed[2]),
        ms(jailed[2]) / ms(alone[2])
    );
    if let Some((_, mount)) = &cgroup {
        let _ = std::fs::remove_dir(mount.join(format!("firecracker/{id}")));
    }
}

/// Run the jailer with `args` (after the work directory's exec file and base, unless
/// `raw`), as `uid` if given: (exit code, stderr).
fn jail_fails(args: &[&str], as_uid: Option<u32>) -> (Option<i32>, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_kite"));
    cmd.arg("jail").args(args).stdin(Stdio::null());
    if let Some(uid) = as_uid {
        cmd.uid(uid).gid(uid);
    }
    let out = cmd.output().unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn bad_jails_are_one_line_each_and_leave_nothing_behind() {
    let test = "bad_jails_are_one_line_each_and_leave_nothing_behind";
    if let Some((need, reason)) = unavailable() {
        return skip(test, need, &reason);
    }
    let (dir, base, exe) = setup("bad");
    let exe_s = exe.to_str().unwrap().to_string();
    let base_s = base.to_str().unwrap().to_string();
    let file = dir.0.join("a-file");
    std::fs::write(&file, b"").unwrap();
    let long = "a".repeat(65);
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec!["--exec-file", "firecracker"], "give an absolute path"),
        (
            vec!["--exec-file", "/nonexistent/firecracker"],
            "no such file",
        ),
        (vec!["--id", "a/b"], "--id \"a/b\": use 1 to 64"),
        (vec!["--id", &long], "use 1 to 64"),
        (
            vec!["--chroot-base-dir", file.to_str().unwrap()],
            "is not a directory",
        ),
        (
            vec!["--cgroup-version", "2", "--cgroup", "nosuch.max=1"],
            "no nosuch controller",
        ),
        (
            vec!["--cgroup", "nosuch.max=1"],
            "no cgroup v1 hierarchy has the nosuch controller",
        ),
        (
            vec!["--netns", "/nonexistent/netns"],
            "open the network namespace /nonexistent/netns",
        ),
        (vec!["--resource-limit", "cpu=1"], "--resource-limit cpu=1"),
    ];
    for (extra, want) in cases {
        let mut args = vec!["--id", "bad-1", "--exec-file", &exe_s, "--uid", "12345"];
        args.extend(["--gid", "12345", "--chroot-base-dir", &base_s]);
        // Later flags of the same name win in clap? No: repeated single flags are an error,
        // so the case's flags replace the defaults above by position.
        let mut merged: Vec<&str> = Vec::new();
        let mut i = 0;
        while i < args.len() {
            if extra.contains(&args[i]) && args[i].starts_with("--") {
                i += 2;
                continue;
            }
            merged.push(args[i]);
            i += 1;
        }
        merged.extend(extra.iter().copied());
        let (code, err) = jail_fails(&merged, None);
        assert_eq!(code, Some(1), "{merged:?}: {err}");
        assert_eq!(err.lines().count(), 1, "{merged:?}: {err}");
        assert!(
            err.starts_with("jailer: error: ") && err.contains(want),
            "{merged:?}: want {want:?} in {err}"
        );
        // Nothing half-made: a retry does not trip.
        let left: Vec<_> = std::fs::read_dir(&base)
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .collect();
        assert!(left.is_empty(), "{merged:?} left {left:?}");
    }
    // Not root: refused before anything is made.
    let (code, err) = jail_fails(
        &[
            "--id",
            "bad-2",
            "--exec-file",
            &exe_s,
            "--uid",
            "1",
            "--gid",
            "1",
            "--chroot-base-dir",
            &base_s,
        ],
        Some(UID),
    );
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("must run as root"), "{err}");
}

/// `--netns`, `--new-pid-ns` and `--daemonize` together (Kata passes `--netns` and
/// `--daemonize`): the VMM is in the given network namespace and a PID namespace of its own,
/// not our child, and the pid file names it as the host sees it.
#[test]
fn netns_new_pid_ns_and_daemonize() {
    let test = "netns_new_pid_ns_and_daemonize";
    if let Some((need, reason)) = unavailable() {
        return skip(test, need, &reason);
    }
    let ns = match Netns::create("jail") {
        Ok(ns) => ns,
        Err(e) => return skip(test, Need::Tap, &e),
    };
    let (_dir, base, exe) = setup("ns");
    let id = format!("ns-{}", std::process::id());
    let netns = format!("/run/netns/{}", ns.name);
    let out = Command::new(env!("CARGO_BIN_EXE_kite"))
        .args(["jail", "--id", &id, "--exec-file"])
        .arg(&exe)
        .args(["--uid", &UID.to_string(), "--gid", &UID.to_string()])
        .arg("--chroot-base-dir")
        .arg(&base)
        .args(["--netns", &netns, "--new-pid-ns", "--daemonize"])
        .args(["--", "--api-sock", "/run/fc.sock"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let root = base.join("firecracker").join(&id).join("root");
    let t = Instant::now();
    while !root.join("run/fc.sock").exists() {
        assert!(t.elapsed() < Duration::from_secs(10), "no API socket");
        std::thread::sleep(Duration::from_millis(5));
    }
    let pid: i32 = std::fs::read_to_string(root.join("firecracker.pid"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let link = |p: &str, kind: &str| std::fs::read_link(format!("/proc/{p}/ns/{kind}")).unwrap();
    let netns_id = std::fs::metadata(&netns).unwrap();
    use std::os::unix::fs::MetadataExt;
    let vmm_net = std::fs::metadata(format!("/proc/{pid}/ns/net")).unwrap();
    assert_eq!(vmm_net.ino(), netns_id.ino(), "the VMM is not in {netns}");
    assert_ne!(
        link(&pid.to_string(), "pid_for_children"),
        link("self", "pid_for_children")
    );
    // Inside its PID namespace the VMM is pid 1.
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let nspid = status.lines().find(|l| l.starts_with("NSpid:")).unwrap();
    assert!(nspid.trim_end().ends_with("\t1"), "{nspid}");
    // SAFETY: kill on the VMM's pid, read from its pid file.
    unsafe { libc::kill(pid, libc::SIGTERM) };
    let t = Instant::now();
    while std::fs::metadata(format!("/proc/{pid}")).is_ok() && t.elapsed() < Duration::from_secs(10)
    {
        std::thread::sleep(Duration::from_millis(10));
    }
}
