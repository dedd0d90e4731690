//! Linux restored at its shell, with 1 and with 2 vCPUs: the guest-images kernel boots to its
//! busybox shell (about a minute on a host whose KVM emulates ring 0) with an ext4 disk, is
//! paused and snapshotted there, and a new `kite restore` process runs a command in that shell
//! at once, writes to and reads back the ext4 disk, and powers the guest off; the host then
//! finds the file in the image and the file system clean.

mod common;

use std::time::{Duration, Instant};

use common::api::*;
use common::*;

const BOOT_LIMIT: Duration = Duration::from_secs(240);

#[test]
fn linux_restored_at_its_shell_runs_a_command() {
    shell_restored("snap_linux_shell", "1");
}

fn shell_restored(test: &str, cpus: &str) {
    if let Some(reason) = kvm_unavailable() {
        return skip(test, Need::Kvm, &reason);
    }
    let (Some(kernel), Some(initrd)) = (guest_image("vmlinux"), guest_image("initramfs.cpio"))
    else {
        return skip(
            test,
            Need::GuestImages,
            "guest-images/out has no vmlinux/initramfs.cpio; run guest-images/build.sh",
        );
    };
    let dir = std::env::temp_dir().join(format!("kite-snap-{}-{test}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let img = dir.join("disk.img");
    if let Err(e) = common::ext4::make(&img) {
        return skip(
            test,
            Need::Tools,
            &format!("cannot make an ext4 image: {e}"),
        );
    }
    let snap = dir.join("snap");
    std::fs::create_dir_all(&snap).unwrap();
    let mut vm = ApiVm::start(
        test,
        &[
            "--kernel",
            path_str(&kernel),
            "--initrd",
            path_str(&initrd),
            "--disk",
            path_str(&img),
            "--no-acpi",
            "--memory",
            "256M",
            "--cpus",
            cpus,
            "--cmdline",
            // kvm-clock, not the TSC (which KVM cannot set on some hosts): see docs/api.md.
            "console=ttyS0 reboot=k panic=1 clocksource=kvm-clock tsc=unstable",
        ],
    );
    vm.wait_stdout(BOOT_LIMIT, |out| {
        out.contains("busybox shell on the console")
    });
    // The shell is up; make sure it is reading (its answer comes back), then snapshot it.
    vm.type_text("echo before-$((6 * 7))\n");
    vm.wait_stdout(Duration::from_secs(60), |out| out.contains("before-42"));
    std::thread::sleep(Duration::from_millis(500));
    let out = kite()
        .arg("snapshot")
        .arg(&vm.sock)
        .arg(&snap)
        .arg("--leave-paused")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    drop(vm);

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
    g.type_line(common::ext4::GUEST_LINE);
    let done = g.wait_for(Duration::from_secs(60), common::ext4::guest_done);
    assert!(
        done && common::ext4::guest_read_back(&g.out()),
        "the ext4 write and read back in the restored guest failed\n{}\n{}",
        g.out(),
        g.err()
    );
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
