//! Kite hands the kernel's teardown of the VM to a child process and exits without waiting for
//! it (crates/vmm/src/teardown.rs). This test makes itself a child subreaper, so that the child, orphaned
//! when Kite exits, becomes its own, and checks what a user depends on: Kite's exit code and
//! last line are as before, its output pipes reach end-of-file and its process group is empty
//! while the child may still run, and the child, which runs under Kite's seccomp filter, ends by
//! itself with status 0 (not killed by SIGSYS, not left behind).

mod common;

use std::io::Read;
use std::time::{Duration, Instant};

use common::*;

/// The orphans adopted by this process that have ended: (pid, wait status).
fn reap_adopted(limit: Duration) -> Vec<(i32, i32)> {
    let start = Instant::now();
    let mut reaped = Vec::new();
    while start.elapsed() < limit {
        let mut status = 0;
        // SAFETY: waitpid writes only `status`.
        let pid = unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG) };
        if pid > 0 {
            reaped.push((pid, status));
            continue;
        }
        if pid < 0 {
            break; // ECHILD: no children left
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    reaped
}

#[test]
fn the_vm_is_torn_down_by_a_child_that_exits_cleanly() {
    let test = "the_vm_is_torn_down_by_a_child_that_exits_cleanly";
    if let Some(why) = kvm_unavailable() {
        return skip(test, Need::Kvm, &why);
    }
    let guest = match testguest() {
        Ok(g) => g,
        Err(why) => return skip(test, Need::GuestImages, &why),
    };
    // SAFETY: prctl with integer arguments; makes this process adopt orphaned descendants.
    let rc = unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
    assert_eq!(rc, 0, "PR_SET_CHILD_SUBREAPER");

    let mut cmd = kite();
    cmd.args(["run", "--no-acpi", "--memory", "256M", "--kernel"])
        .arg(&guest)
        .args(["--cmdline", "kite_test=hello"]);
    // A group of its own, as a shell starts a job: once Kite has exited, the group must be
    // empty (the teardown child, still closing the VM, is in a group of its own).
    std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
    let mut child = cmd.spawn().expect("kite starts");
    let kite_pid = child.id() as i32;
    let (mut out, mut err) = (String::new(), String::new());
    // End-of-file on both pipes: the teardown child closed its copies at once.
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .unwrap();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    let status = child.wait().expect("kite ends");
    // SAFETY: kill() with signal 0 only checks whether any process of the group exists.
    let group_alive = unsafe { libc::kill(-kite_pid, 0) } == 0;
    assert!(!group_alive, "a process of Kite's group outlived it");
    assert_eq!(status.code(), Some(0), "stderr:\n{err}");
    assert!(out.contains("KITE-TEST hello ok"), "stdout:\n{out}");
    assert_eq!(
        err.lines().last(),
        Some("kite: guest reset the machine; VM stopped"),
        "the exit reason stays the last line; stderr:\n{err}"
    );

    let adopted: Vec<(i32, i32)> = reap_adopted(Duration::from_secs(10))
        .into_iter()
        .filter(|&(pid, _)| pid != kite_pid)
        .collect();
    assert_eq!(
        adopted.len(),
        1,
        "one teardown child, adopted when Kite exited: {adopted:?}"
    );
    let (_, status) = adopted[0];
    assert!(
        libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
        "the teardown child ended with wait status {status:#x} (a signal: {})",
        libc::WIFSIGNALED(status)
    );
}
