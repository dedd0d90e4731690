//! Linux restored at its shell, with 1 and with 2 vCPUs: the guest-images kernel boots to its
//! busybox shell (about a minute on a host whose KVM emulates ring 0) with an ext4 disk, is
//! paused and snapshotted there, and a new `kite restore` process runs a command in that shell
//! at once, writes to and reads back the ext4 disk, and powers the guest off; the host then
//! finds the file in the image and the file system clean.

mod common;

use std::time::{Duration, Instant};

use common::*;

const BOOT_LIMIT: Duration = Duration::from_secs(240);

#[test]
fn linux_restored_at_its_shell_runs_a_command() {
    shell_restored("snap_linux_shell", "1");
}

fn shell_restored(test: &str, cpus: &str) {
    let Some(images) = linux::images(test) else {
        return;
    };
    let args = ["--no-acpi", "--cpus", cpus];
    let Some(snapshot) =
        linux::ShellSnapshot::take(test, &images, &args, BOOT_LIMIT, Duration::from_secs(60))
    else {
        return;
    };
    let linux::ShellSnapshot { dir, img, snap } = snapshot;

    let started = Instant::now();
    let mut cmd = kite();
    cmd.arg("restore").arg(&snap);
    let mut g = Guest::start(cmd);
    g.type_line("echo restored-$((6 * 7))");
    let answered = g.wait_for(Duration::from_secs(60), |out| out.contains("restored-42"));
    assert!(
        answered,
        "no answer after restore\n{}\n{}",
        g.out(),
        g.err()
    );
    eprintln!(
        "restore to the shell's answer: {:.0} ms",
        started.elapsed().as_secs_f64() * 1e3
    );
    common::ext4::write_and_read_back(&mut g, Duration::from_secs(60));
    g.type_line("poweroff -f");
    let code = g.wait_exit(Duration::from_secs(60));
    assert_eq!(code, Some(0), "{}\n{}", g.out(), g.err());
    assert!(g.err().contains("guest halted"), "{}", g.err());
    common::ext4::check_on_host(&img);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn linux_with_two_vcpus_restored_at_its_shell_runs_a_command() {
    shell_restored("snap_linux_shell2", "2");
}
