//! How a VM ends: guest reset, triple fault, timeout and signals, with tiny hand-made guests
//! (a few ring-0 instructions, so they run quickly even where ring 0 is emulated).

mod common;

use std::time::Duration;

use common::*;

fn kvm_ok(test: &str) -> bool {
    match kvm_unavailable() {
        Some(reason) => {
            skip(test, Need::Kvm, &reason);
            false
        }
        None => true,
    }
}

#[test]
fn guest_output_then_reset_exits_zero() {
    if !kvm_ok("guest_output_then_reset_exits_zero") {
        return;
    }
    let k = temp_file(
        "reset",
        "k.elf",
        &tiny_elf(&print_and_reset(b"hello kite\n")),
    );
    let mut cmd = kite();
    cmd.args([
        "run",
        "--kernel",
        path_str(&k),
        "--memory",
        "32M",
        "--cpus",
        "2",
        "--cmdline",
        "a=b c",
    ]);
    let out = run(cmd, Duration::from_secs(30));
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    assert_eq!(out.stdout, "hello kite\n");
    assert!(
        out.stderr.contains("guest reset the machine"),
        "{}",
        out.stderr
    );
    assert!(out.stderr.contains("command line: a=b c"), "{}", out.stderr);
    assert!(out.stderr.contains("2 vCPUs, 32 MiB"), "{}", out.stderr);
    assert!(out.stderr.contains("entry 0x100000"), "{}", out.stderr);
}

#[test]
fn triple_fault_is_a_clear_failure() {
    if !kvm_ok("triple_fault_is_a_clear_failure") {
        return;
    }
    // Print a marker, then ud2: the boot IDT has no entries, so #UD escalates to a triple fault.
    let mut code = print_and_reset(b"before\n");
    code.truncate(code.len() - 5);
    code.extend_from_slice(&[0x0f, 0x0b]);
    let k = temp_file("triple", "k.elf", &tiny_elf(&code));
    let mut cmd = kite();
    cmd.args(["run", "--kernel", path_str(&k), "--memory", "32M"]);
    let out = run(cmd, Duration::from_secs(30));
    assert_eq!(out.code, Some(1), "{}", out.stderr);
    let last = out.stderr.lines().last().unwrap_or_default();
    assert!(
        last.contains("triple fault") && last.contains("guest's last console line: before"),
        "{last}"
    );
}

fn spinning_guest(test: &str) -> std::path::PathBuf {
    // Print a marker, then spin forever (jmp $).
    let mut code = print_and_reset(b"spinning\n");
    code.truncate(code.len() - 5);
    code.extend_from_slice(&[0xeb, 0xfe]);
    temp_file(test, "k.elf", &tiny_elf(&code))
}

#[test]
fn timeout_stops_the_vm_with_a_summary() {
    if !kvm_ok("timeout_stops_the_vm_with_a_summary") {
        return;
    }
    let k = spinning_guest("timeout");
    let mut cmd = kite();
    cmd.args([
        "run",
        "--kernel",
        path_str(&k),
        "--memory",
        "32M",
        "--cpus",
        "2",
        "--timeout",
        "0.5",
    ]);
    let out = run(cmd, Duration::from_secs(30));
    assert_eq!(out.code, Some(124), "{}", out.stderr);
    let last = out.stderr.lines().last().unwrap_or_default();
    assert!(
        last.contains("after 0.5 s") && last.contains("spinning"),
        "{last}"
    );
}

#[test]
fn sigterm_and_sigint_stop_the_vm() {
    if !kvm_ok("sigterm_and_sigint_stop_the_vm") {
        return;
    }
    let k = spinning_guest("signals");
    for (sig, code) in [(libc::SIGTERM, 143), (libc::SIGINT, 130)] {
        let mut cmd = kite();
        cmd.args([
            "run",
            "--kernel",
            path_str(&k),
            "--memory",
            "32M",
            "--cpus",
            "2",
        ]);
        let child = cmd.spawn().unwrap();
        let pid = child.id() as i32;
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(500));
            // SAFETY: sending a signal to our own child process.
            unsafe { libc::kill(pid, sig) };
        });
        let out = child.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(code), "{stderr}");
        assert!(stderr.contains(&format!("on signal {sig}")), "{stderr}");
        assert_eq!(String::from_utf8_lossy(&out.stdout), "spinning\n");
    }
}
