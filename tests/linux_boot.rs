//! Linux as the client of every Kite device: the guest-images kernel boots to its busybox
//! /init, which drives Kite's devices with Linux's own drivers (virtio-blk and ext4,
//! virtio-net, virtio-rng, virtio-vsock, the 16550, SMP and power-off through Kite's ACPI tables)
//! and prints one result line per check. The host then checks what the guest left behind. One
//! boot takes the other way in: `--no-acpi`, with the MP table and command-line devices.
//!
//! These run on every KVM host. Where the host's KVM emulates guest ring 0, a boot takes about
//! half a minute and each fork+exec in the guest about a second (README.md, "Hosts whose KVM
//! emulates guest ring 0"), so the
//! checks share one boot, and the tests run two VMs at once on the two cores.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;

/// How long one boot may take, whatever the host.
const BOOT_LIMIT: Duration = Duration::from_secs(240);

/// The kernel and initramfs (as strings, for argument lists), or a skip.
fn images(test: &str) -> Option<(String, String)> {
    let (kernel, initrd) = linux::images(test)?;
    Some((path_str(&kernel).to_string(), path_str(&initrd).to_string()))
}

/// `kite run` with the guest images and `extra` arguments.
fn kite_args(kernel: &str, initrd: &str, extra: &[&str]) -> Vec<String> {
    let mut args: Vec<String> = ["run", "--kernel", kernel, "--initrd", initrd]
        .iter()
        .map(|s| s.to_string())
        .collect();
    args.extend(extra.iter().map(|s| s.to_string()));
    args
}

/// Parse kite's "initrd ... at 0xA-0xB" log line.
fn initrd_range(stderr: &str) -> Option<(u64, u64)> {
    let line = stderr.lines().find(|l| l.starts_with("kite: initrd "))?;
    let range = line.split(" at ").nth(1)?.split_whitespace().next()?;
    let (a, b) = range.split_once('-')?;
    let hex = |s: &str| u64::from_str_radix(s.trim_start_matches("0x"), 16).ok();
    Some((hex(a)?, hex(b)?))
}

fn scratch_dir(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("kite-linux-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// An ext4 image holding kite-hello.txt with `word`, made with `mke2fs -d`.
fn make_ext4(dir: &Path, word: &str) -> Result<PathBuf, String> {
    let content = dir.join("content");
    std::fs::create_dir_all(&content).unwrap();
    std::fs::write(content.join("kite-hello.txt"), word).unwrap();
    let img = dir.join("root.ext4");
    let out = Command::new("mke2fs")
        .args(["-q", "-F", "-t", "ext4", "-d"])
        .args([path_str(&content), path_str(&img), "16M"])
        .output()
        .map_err(|e| format!("mke2fs (e2fsprogs) is not available: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "mke2fs failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(img)
}

/// The host end of the vsock check: accepts one connection on `path`, reads the guest's
/// line, answers `hello-from-host`, and returns what the guest sent.
fn vsock_peer(path: PathBuf) -> std::thread::JoinHandle<Result<String, String>> {
    let listener = UnixListener::bind(&path).expect("bind the vsock peer socket");
    std::thread::spawn(move || {
        listener.set_nonblocking(true).unwrap();
        let start = Instant::now();
        let mut stream = loop {
            match listener.accept() {
                Ok((s, _)) => break s,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    if start.elapsed() > BOOT_LIMIT {
                        return Err("the guest never connected".to_string());
                    }
                    std::thread::sleep(Duration::from_millis(50));
                }
                Err(e) => return Err(format!("accept: {e}")),
            }
        };
        stream.set_nonblocking(false).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        let mut line = String::new();
        BufReader::new(&stream)
            .read_line(&mut line)
            .map_err(|e| format!("read: {e}"))?;
        stream
            .write_all(b"hello-from-host\n")
            .map_err(|e| format!("write: {e}"))?;
        Ok(line.trim_end().to_string())
    })
}

/// The guest's `KITE-GUEST <check> ...` line for `check`, if any.
fn result_line<'a>(out: &'a str, check: &str) -> Option<&'a str> {
    let prefix = format!("KITE-GUEST {check} ");
    out.lines()
        .map(|l| l.trim_end_matches('\r'))
        .find(|l| l.starts_with(&prefix))
}

fn debugfs_cat(img: &Path, file: &str) -> String {
    let out = Command::new("debugfs")
        .args(["-R", &format!("cat /{file}"), path_str(img)])
        .output()
        .expect("debugfs runs");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// One boot with two vCPUs that runs every device check; then the host checks the disks and
/// the vsock peer. Every failing check is named.
#[test]
fn linux_drives_every_kite_device() {
    let test = "linux_drives_every_kite_device";
    let Some((kernel, initrd)) = images(test) else {
        return;
    };
    let dir = scratch_dir("devices");
    let word = format!("hello-from-ext4-{}", std::process::id());
    let ext4 = match make_ext4(&dir, &word) {
        Ok(img) => img,
        Err(reason) => return skip(test, Need::Tools, &reason),
    };
    let ro: Vec<u8> = (0..1u32 << 20).map(|i| (i * 7 + 3) as u8).collect();
    let ro_img = dir.join("readonly.img");
    std::fs::write(&ro_img, &ro).unwrap();
    let sock = dir.join("vsock");
    let peer = vsock_peer(PathBuf::from(format!("{}_1234", sock.display())));

    let mut checks = vec!["smp", "rng", "ext4", "readonly", "vsock"];
    let tap = "klinux0";
    let ns = match Netns::with_tap("linux", tap) {
        Ok(ns) => {
            checks.push("ping");
            Some(ns)
        }
        Err(reason) => {
            skip(&format!("{test} (ping check)"), Need::Tap, &reason);
            None
        }
    };
    let cmdline = format!(
        "console=ttyS0 reboot=k panic=1 kite.marker=42 kite_test=devices kite_cpus=2 kite_word={word} kite_checks={} kite_vsock_port=1234 kite_end=poweroff",
        checks.join(",")
    );
    let disk_rw = path_str(&ext4).to_string();
    let disk_ro = format!("{},readonly", path_str(&ro_img));
    let vsock = format!("cid=3,socket={}", path_str(&sock));
    let net = format!("tap={tap}");
    let mut extra = vec![
        "--memory",
        "256M",
        "--cpus",
        "2",
        "--boot-timer",
        "--disk",
        &disk_rw,
        "--disk",
        &disk_ro,
        "--vsock",
        &vsock,
        "--cmdline",
        &cmdline,
    ];
    if ns.is_some() {
        extra.extend(["--net", &net]);
    }
    let args = kite_args(&kernel, &initrd, &extra);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let cmd = match &ns {
        Some(ns) => ns.kite(&args),
        None => {
            let mut c = kite();
            c.args(&args);
            c
        }
    };
    let mut g = Guest::start(cmd);
    let code = g.wait_exit(BOOT_LIMIT);
    let (out, err) = (g.out(), g.err());
    let context = format!("--- console ---\n{out}\n--- kite ---\n{err}");

    let mut failed: Vec<String> = Vec::new();
    let mut expect = |name: &str, ok: bool, why: String| {
        if !ok {
            failed.push(format!("{name}: {why}"));
        }
    };

    // The kernel's early log: our command line, e820 map, initrd and MP table.
    expect(
        "boot data: command line",
        out.contains(&format!("Command line: {cmdline}")),
        "the kernel did not echo our command line".into(),
    );
    let e820: Vec<_> = out.lines().filter(|l| l.contains("BIOS-e820:")).collect();
    expect(
        "boot data: e820",
        e820.len() == 2
            && out.contains("BIOS-e820: [mem 0x0000000000000000-0x000000000009fbff] usable")
            && out.contains("BIOS-e820: [mem 0x0000000000100000-0x000000000fffffff] usable"),
        format!("{e820:?}"),
    );
    match initrd_range(&err) {
        Some((start, end)) => {
            let last = end.next_multiple_of(4096) - 1;
            expect(
                "boot data: initrd",
                out.contains(&format!("RAMDISK: [mem {start:#010x}-{last:#010x}]")),
                format!("no RAMDISK line for {start:#x}-{last:#x}"),
            );
        }
        None => expect(
            "boot data: initrd",
            false,
            "kite logged no initrd range".into(),
        ),
    }
    expect(
        "boot data: ACPI",
        out.contains("ACPI: RSDP 0x00000000000E0000")
            && out.contains("ACPI: Using ACPI (MADT) for SMP configuration information")
            && out.contains("ACPI: 1 ACPI AML tables successfully acquired and loaded")
            && out.contains("Allowing 2 CPUs"),
        "the kernel did not take its CPUs from Kite's MADT or load its DSDT".into(),
    );
    expect(
        "devices only in the DSDT",
        !err.contains("virtio_mmio.device=") && !out.contains("virtio_mmio.device="),
        "virtio_mmio.device= words on the command line with ACPI on".into(),
    );

    // /init ran, and the boot timer saw it.
    expect(
        "init",
        out.contains("KITE-GUEST-INIT-OK"),
        "no init marker".into(),
    );
    let boot_ms = err
        .lines()
        .find_map(|l| l.strip_prefix("kite: guest boot time: "))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|ms| ms.parse::<u64>().ok());
    expect(
        "boot timer",
        boot_ms.is_some_and(|ms| ms > 0),
        format!("no positive 'guest boot time' ({boot_ms:?})"),
    );

    // Each check printed its ok line.
    for check in &checks {
        let line = result_line(&out, check);
        expect(
            check,
            line.is_some_and(|l| l.starts_with(&format!("KITE-GUEST {check} ok"))),
            format!("{line:?}"),
        );
    }
    expect(
        "smp",
        result_line(&out, "smp") == Some("KITE-GUEST smp ok 2"),
        "wanted 2 processors".into(),
    );
    expect(
        "ext4 read",
        result_line(&out, "ext4") == Some(&*format!("KITE-GUEST ext4 ok {word}")),
        "the guest did not read the file the test put on the image".into(),
    );
    expect(
        "vsock reply",
        result_line(&out, "vsock") == Some("KITE-GUEST vsock ok hello-from-host"),
        "the guest did not get the host's reply".into(),
    );
    expect("exit code", code == Some(0), format!("{code:?}"));
    expect(
        "ACPI power-off",
        err.contains("guest powered off"),
        "poweroff -f did not reach Kite through the FADT's sleep register".into(),
    );
    drop(g);

    // What the guest left behind.
    match peer.join().unwrap() {
        Ok(line) => expect(
            "vsock message",
            line == "hello-from-guest",
            format!("host got {line:?}"),
        ),
        Err(e) => expect("vsock message", false, e),
    }
    let fsck = Command::new("e2fsck")
        .args(["-fn", path_str(&ext4)])
        .output();
    match fsck {
        Ok(o) => expect(
            "ext4 e2fsck",
            o.status.success(),
            String::from_utf8_lossy(&o.stdout).into_owned(),
        ),
        Err(e) => expect("ext4 e2fsck", false, format!("cannot run e2fsck: {e}")),
    }
    let new = debugfs_cat(&ext4, "kite-new.txt");
    expect(
        "ext4 write",
        new == format!("{word}\n"),
        format!("kite-new.txt holds {new:?}"),
    );
    expect(
        "readonly image",
        std::fs::read(&ro_img).unwrap() == ro,
        "the read-only image changed".into(),
    );

    assert!(failed.is_empty(), "failed: {failed:#?}\n{context}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// An /init that exits panics the kernel; with `panic=-1` it resets at once, so Kite exits 0
/// (a guest reset), and the panic line is the last thing on the console but for the kernel's
/// own report of it (registers, call trace, kernel offset).
#[test]
fn linux_panic_when_init_exits() {
    let test = "linux_panic_when_init_exits";
    let Some((kernel, initrd)) = images(test) else {
        return;
    };
    let args = kite_args(
        &kernel,
        &initrd,
        &[
            "--memory",
            "128M",
            "--cmdline",
            "console=ttyS0 reboot=k panic=-1 kite_test=exit",
        ],
    );
    let mut cmd = kite();
    cmd.args(&args);
    let mut g = Guest::start(cmd);
    let code = g.wait_exit(BOOT_LIMIT);
    let (out, err) = (g.out(), g.err());
    let lines: Vec<&str> = out
        .lines()
        .map(|l| l.trim_end_matches('\r'))
        .filter(|l| !l.trim().is_empty())
        .collect();
    let at = lines
        .iter()
        .position(|l| l.contains("Kernel panic - not syncing: Attempted to kill init!"));
    let context = format!("--- console ---\n{out}\n--- kite ---\n{err}");
    let at = at.unwrap_or_else(|| panic!("no panic line\n{context}"));
    // After it, only the kernel's report: timestamped log lines, no user-space output.
    let after = &lines[at + 1..];
    assert!(
        after.iter().all(|l| l.starts_with('[')) && after.len() < 40,
        "output after the panic line: {after:#?}\n{context}"
    );
    assert_eq!(code, Some(0), "{err}");
    let kite_last = err.lines().last().unwrap_or_default();
    assert!(kite_last.contains("guest reset the machine"), "{err}");
}

/// `kite` with `args` boots to the interactive shell, which answers `echo {word}-$((6 * 7))`
/// with `{word}-42`; `poweroff -f` then ends the VM with exit 0. The console and Kite's log.
fn shell_answers_and_powers_off(args: &[String], word: &str) -> (String, String) {
    let mut cmd = kite();
    cmd.args(args);
    let mut g = Guest::start(cmd);
    let prompt = g.wait_for(BOOT_LIMIT, |out| {
        out.contains("busybox shell on the console")
    });
    assert!(prompt, "no shell banner\n{}\n{}", g.out(), g.err());
    g.type_line(&format!("echo {word}-$((6 * 7))"));
    let answer = format!("{word}-42");
    let answered = g.wait_for(Duration::from_secs(60), |out| out.contains(&answer));
    assert!(
        answered,
        "the shell did not answer\n{}\n{}",
        g.out(),
        g.err()
    );
    g.type_line("poweroff -f");
    let code = g.wait_exit(Duration::from_secs(60));
    assert_eq!(code, Some(0), "{}\n{}", g.out(), g.err());
    (g.out(), g.err())
}

/// No kite_test word: /init starts an interactive shell on the console. What the user types
/// reaches it, and `poweroff -f` ends the VM with exit 0. This boot uses `--no-acpi`: the kernel
/// finds its CPU in the MP table and its devices on the command line, and, with no ACPI to power
/// off through, `poweroff -f` halts every CPU, which Kite notices.
#[test]
fn linux_shell_on_the_console() {
    let test = "linux_shell_on_the_console";
    let Some((kernel, initrd)) = images(test) else {
        return;
    };
    let args = kite_args(
        &kernel,
        &initrd,
        &[
            "--no-acpi",
            "--memory",
            "128M",
            "--cmdline",
            "console=ttyS0 reboot=k panic=1",
        ],
    );
    let (out, err) = shell_answers_and_powers_off(&args, "shell-says");
    assert!(err.contains("guest halted"), "{err}");
    assert!(out.contains("MPTABLE: OEM ID: KITE"), "{out}");
    assert!(err.contains("virtio_mmio.device=4K@0xd0001000:5"), "{err}");
    assert!(
        out.contains("virtio-mmio: Registering device virtio-mmio.0"),
        "{out}"
    );
}

/// firectl's default kernel options (firecracker-go-sdk's cmd/firectl: `console=ttyS0 noapic
/// reboot=k panic=1 pci=off nomodules`), exactly, with Kite's defaults (no `--no-acpi`): the
/// guest reaches its shell and runs a command. `noapic` sends its interrupts through the 8259
/// PIC, which a hardware-reduced ACPI platform lacks, so Kite writes no ACPI tables for it: the
/// MP table and the command line describe the machine.
#[test]
fn linux_with_firectls_kernel_options() {
    let test = "linux_with_firectls_kernel_options";
    let Some((kernel, initrd)) = images(test) else {
        return;
    };
    let args = kite_args(
        &kernel,
        &initrd,
        &[
            "--memory",
            "128M",
            "--cmdline",
            "console=ttyS0 noapic reboot=k panic=1 pci=off nomodules",
        ],
    );
    let (out, err) = shell_answers_and_powers_off(&args, "noapic-says");
    assert!(err.contains("noapic on the guest's command line"), "{err}");
    assert!(err.contains("virtio_mmio.device=4K@0xd0001000:5"), "{err}");
    // Interrupts through the PIC: the serial port's IRQ 4 worked, and no IOAPIC was set up.
    assert!(out.contains("ttyS0 at I/O 0x3f8 (irq = 4"), "{out}");
    assert!(!out.contains("overflow: 0000"), "{out}");
}
