//! Linux boots under Kite. Here (KVM emulating guest ring 0) the kernel's early log is the
//! evidence: it saw our command line, our e820 map, the initrd where we put it and every CPU of
//! the MP table. On a hardware KVM host the guest also reaches /init.

mod common;

use std::io::Read;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;

/// Kernel options for a host whose KVM emulates ring 0 (see scripts/host-kvm.sh).
const EMULATED_RING0_CMDLINE: &str = "earlyprintk=ttyS0 noxsave clearcpuid=popcnt,smap,smep,cx16";

struct Guest {
    child: std::process::Child,
    stdout: Arc<Mutex<String>>,
    stderr: Arc<Mutex<String>>,
}

impl Guest {
    fn start(args: &[&str]) -> Guest {
        let mut cmd = kite();
        cmd.args(args).stdout(Stdio::piped()).stderr(Stdio::piped());
        let mut child = cmd.spawn().unwrap();
        let collect = |mut r: Box<dyn Read + Send>| {
            let buf = Arc::new(Mutex::new(String::new()));
            let b = buf.clone();
            std::thread::spawn(move || {
                let mut chunk = [0u8; 4096];
                while let Ok(n) = r.read(&mut chunk) {
                    if n == 0 {
                        break;
                    }
                    b.lock()
                        .unwrap()
                        .push_str(&String::from_utf8_lossy(&chunk[..n]));
                }
            });
            buf
        };
        let stdout = collect(Box::new(child.stdout.take().unwrap()));
        let stderr = collect(Box::new(child.stderr.take().unwrap()));
        Guest {
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

    /// Wait until `done(stdout)` holds or kite exits or `limit` passes.
    fn wait_for(&mut self, limit: Duration, done: impl Fn(&str) -> bool) -> bool {
        let start = Instant::now();
        while start.elapsed() < limit {
            if done(&self.out()) {
                return true;
            }
            if self.child.try_wait().unwrap().is_some() {
                std::thread::sleep(Duration::from_millis(200));
                return done(&self.out());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        false
    }

    fn wait_exit(&mut self, limit: Duration) -> Option<i32> {
        let start = Instant::now();
        while start.elapsed() < limit {
            if let Some(status) = self.child.try_wait().unwrap() {
                std::thread::sleep(Duration::from_millis(200));
                return status.code();
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        None
    }
}

impl Drop for Guest {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn images(test: &str) -> Option<(String, String)> {
    if let Some(reason) = kvm_unavailable() {
        skip(test, &reason);
        return None;
    }
    match (guest_image("vmlinux"), guest_image("initramfs.cpio.gz")) {
        (Some(k), Some(i)) => Some((path_str(&k).to_string(), path_str(&i).to_string())),
        _ => {
            skip(
                test,
                "guest-images/out has no vmlinux/initramfs; run guest-images/build.sh",
            );
            None
        }
    }
}

/// Parse kite's "initrd ... at 0xA-0xB" log line.
fn initrd_range(stderr: &str) -> Option<(u64, u64)> {
    let line = stderr.lines().find(|l| l.starts_with("kite: initrd "))?;
    let range = line.split(" at ").nth(1)?.split_whitespace().next()?;
    let (a, b) = range.split_once('-')?;
    let hex = |s: &str| u64::from_str_radix(s.trim_start_matches("0x"), 16).ok();
    Some((hex(a)?, hex(b)?))
}

#[test]
fn linux_early_log_shows_our_boot_data() {
    let test = "linux_early_log_shows_our_boot_data";
    let Some((kernel, initrd)) = images(test) else {
        return;
    };
    let cmdline = format!("console=ttyS0 reboot=k panic=1 {EMULATED_RING0_CMDLINE} kite.marker=42");
    let mut g = Guest::start(&[
        "run",
        "--kernel",
        &kernel,
        "--initrd",
        &initrd,
        "--memory",
        "256M",
        "--cpus",
        "2",
        "--cmdline",
        &cmdline,
    ]);
    let want = [
        format!("Command line: {cmdline}"),
        "BIOS-e820: [mem 0x0000000000000000-0x000000000009fbff] usable".to_string(),
        "BIOS-e820: [mem 0x0000000000100000-0x000000000fffffff] usable".to_string(),
        "RAMDISK: [mem ".to_string(),
        "Allowing 2 CPUs".to_string(),
    ];
    let seen = g.wait_for(Duration::from_secs(240), |out| {
        want.iter().all(|w| out.contains(w.as_str()))
    });
    let out = g.out();
    assert!(
        seen,
        "kernel log lacks {:?}\n--- console ---\n{out}\n--- kite ---\n{}",
        want.iter()
            .filter(|w| !out.contains(w.as_str()))
            .collect::<Vec<_>>(),
        g.err()
    );
    // No other RAM than ours.
    let e820: Vec<_> = out.lines().filter(|l| l.contains("BIOS-e820:")).collect();
    assert_eq!(e820.len(), 2, "{e820:?}");
    // The RAMDISK the kernel reports is where Kite put the initrd (Linux rounds its end up to
    // a whole page).
    let (start, end) = initrd_range(&g.err()).expect("kite logs the initrd range");
    let last = end.next_multiple_of(4096) - 1;
    assert!(
        out.contains(&format!("RAMDISK: [mem {start:#010x}-{last:#010x}]")),
        "RAMDISK line should be {start:#x}-{last:#x}:\n{}",
        out.lines()
            .filter(|l| l.contains("RAMDISK"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    // The MP table came from us.
    assert!(out.contains("MPTABLE: OEM ID: KITE"), "{out}");

    // Then the guest stops (here: at an instruction the ring-0 emulator cannot run, or by
    // resetting on a real host) and kite ends the VM cleanly. If it is still running after a
    // while, a SIGTERM must end it cleanly instead.
    let code = match g.wait_exit(Duration::from_secs(60)) {
        Some(code) => code,
        None => {
            // SAFETY: signalling our own child.
            unsafe { libc::kill(g.child.id() as i32, libc::SIGTERM) };
            g.wait_exit(Duration::from_secs(10))
                .expect("kite stops on SIGTERM")
        }
    };
    let err = g.err();
    let last = err.lines().last().unwrap_or_default().to_string();
    match code {
        0 => assert!(
            last.contains("guest reset") || last.contains("powered off"),
            "{last}"
        ),
        1 => assert!(
            last.contains("vCPU") && last.contains("guest's last console line"),
            "{last}"
        ),
        143 => assert!(last.contains("signal 15"), "{last}"),
        other => panic!("unexpected exit code {other}: {err}"),
    }
    if code == 1 && last.contains("internal error") {
        assert!(
            last.contains("suberror") && last.contains("RIP 0x"),
            "{last}"
        );
    }
    assert!(!err.contains("panicked"), "{err}");
}

#[test]
fn linux_boots_to_init() {
    let test = "linux_boots_to_init";
    let Some((kernel, initrd)) = full_boot_images(test) else {
        return;
    };
    let mut g = Guest::start(&[
        "run",
        "--kernel",
        &kernel,
        "--initrd",
        &initrd,
        "--memory",
        "256M",
        "--cpus",
        "2",
        "--boot-timer",
        "--cmdline",
        "console=ttyS0 reboot=k panic=1",
    ]);
    let code = g.wait_exit(Duration::from_secs(60));
    let (out, err) = (g.out(), g.err());
    assert!(
        out.contains("KITE-GUEST-INIT-OK"),
        "no init marker\n{out}\n{err}"
    );
    assert_eq!(code, Some(0), "{err}");
    assert!(err.contains("guest boot time:"), "{err}");
}

/// Skip reason for the full-boot tests on this host, if any; else the images.
fn full_boot_images(test: &str) -> Option<(String, String)> {
    if host_emulates_ring0() {
        skip(
            test,
            "this host's KVM emulates guest ring 0 (no vmx/svm), so Linux takes minutes to boot; runs on hardware KVM hosts",
        );
        return None;
    }
    images(test)
}

#[test]
fn linux_mounts_ext4_root_from_virtio_blk() {
    let test = "linux_mounts_ext4_root_from_virtio_blk";
    let Some((kernel, initrd)) = full_boot_images(test) else {
        return;
    };
    let dir = std::env::temp_dir().join(format!("kite-ext4-{}", std::process::id()));
    let content = dir.join("content");
    std::fs::create_dir_all(&content).unwrap();
    let word = format!("hello-from-ext4-{}", std::process::id());
    std::fs::write(content.join("kite-hello.txt"), &word).unwrap();
    let img = dir.join("root.ext4");
    let mkfs = std::process::Command::new("mke2fs")
        .args([
            "-q",
            "-F",
            "-t",
            "ext4",
            "-d",
            path_str(&content),
            path_str(&img),
            "16M",
        ])
        .output();
    match mkfs {
        Ok(o) if o.status.success() => {}
        Ok(o) => {
            return skip(
                test,
                &format!(
                    "mke2fs failed: {}",
                    String::from_utf8_lossy(&o.stderr).trim()
                ),
            );
        }
        Err(e) => return skip(test, &format!("mke2fs (e2fsprogs) is not available: {e}")),
    }
    let disk = path_str(&img).to_string();
    let mut g = Guest::start(&[
        "run",
        "--kernel",
        &kernel,
        "--initrd",
        &initrd,
        "--memory",
        "256M",
        "--disk",
        &disk,
        "--cmdline",
        "console=ttyS0 reboot=k panic=1 root=/dev/vda kite_test=ext4",
    ]);
    let code = g.wait_exit(Duration::from_secs(60));
    let (out, err) = (g.out(), g.err());
    assert!(
        out.contains(&format!("KITE-GUEST ext4 ok {word}")),
        "{out}\n{err}"
    );
    assert_eq!(code, Some(0), "{err}");
}

#[test]
fn linux_brings_eth0_up_and_pings_the_host() {
    let test = "linux_brings_eth0_up_and_pings_the_host";
    let Some((kernel, initrd)) = full_boot_images(test) else {
        return;
    };
    let tap = "kping0";
    let ns = match Netns::with_tap("ping", tap) {
        Ok(ns) => ns,
        Err(reason) => return skip(test, &reason),
    };
    let net = format!("tap={tap}");
    let cmd = ns.kite(&[
        "run",
        "--kernel",
        &kernel,
        "--initrd",
        &initrd,
        "--memory",
        "256M",
        "--net",
        &net,
        "--cmdline",
        "console=ttyS0 reboot=k panic=1 kite_test=ping kite_ip=10.0.2.15/24 kite_peer=10.0.2.2",
    ]);
    let out = run(cmd, Duration::from_secs(60));
    assert!(
        out.stdout.contains("KITE-GUEST ping ok"),
        "{}\n{}",
        out.stdout,
        out.stderr
    );
    assert_eq!(out.code, Some(0), "{}", out.stderr);
}
