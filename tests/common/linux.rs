//! The guest-images Linux for the tests that boot it: its kernel and initramfs (or a skip),
//! and a snapshot of it paused at its busybox shell with an ext4 disk, for the restore tests.

use std::path::PathBuf;
use std::time::Duration;

use super::api::ApiVm;
use super::{Need, guest_image, kvm_unavailable, path_str, skip};

/// The command line of a boot to the shell: kvm-clock, not the TSC (which KVM cannot set on
/// some hosts): see docs/api.md.
pub const SHELL_CMDLINE: &str = "console=ttyS0 reboot=k panic=1 clocksource=kvm-clock tsc=unstable";

/// The kernel and initramfs; None (after a skip line) where KVM is unusable or they have not
/// been built.
pub fn images(test: &str) -> Option<(PathBuf, PathBuf)> {
    if let Some(reason) = kvm_unavailable() {
        skip(test, Need::Kvm, &reason);
        return None;
    }
    match (guest_image("vmlinux"), guest_image("initramfs.cpio")) {
        (Some(kernel), Some(initrd)) => Some((kernel, initrd)),
        _ => {
            skip(
                test,
                Need::GuestImages,
                "guest-images/out has no vmlinux/initramfs.cpio; run guest-images/build.sh",
            );
            None
        }
    }
}

/// A snapshot of Linux at its shell (`kite snapshot --leave-paused`), in a directory of the
/// test's own, with the ext4 disk image it was booted with.
pub struct ShellSnapshot {
    /// The test's directory (removed by the test once it passed).
    pub dir: PathBuf,
    /// The ext4 image (`--disk`), at the path the snapshot names.
    pub img: PathBuf,
    /// The snapshot's directory, for `kite restore`.
    pub snap: PathBuf,
}

impl ShellSnapshot {
    /// Boots `kernel` and `initrd` with a fresh ext4 disk, 256 MiB and `args` (`--cpus`,
    /// `--no-acpi`, ...), waits up to `boot` for the shell and up to `answer` for it to answer
    /// a command, and snapshots it there. None (after a skip line) if no ext4 image can be made.
    pub fn take(
        test: &str,
        (kernel, initrd): &(PathBuf, PathBuf),
        args: &[&str],
        boot: Duration,
        answer: Duration,
    ) -> Option<ShellSnapshot> {
        let dir = std::env::temp_dir().join(format!("kite-snap-{}-{test}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let img = dir.join("disk.img");
        if let Err(e) = super::ext4::make(&img) {
            skip(
                test,
                Need::Tools,
                &format!("cannot make an ext4 image: {e}"),
            );
            return None;
        }
        let snap = dir.join("snap");
        std::fs::create_dir_all(&snap).unwrap();
        let mut all = vec![
            "--kernel",
            path_str(kernel),
            "--initrd",
            path_str(initrd),
            "--disk",
            path_str(&img),
            "--memory",
            "256M",
            "--cmdline",
            SHELL_CMDLINE,
        ];
        all.extend_from_slice(args);
        let mut vm = ApiVm::start(test, &all);
        vm.wait_stdout(boot, |out| out.contains("busybox shell on the console"));
        // The shell is up; make sure it is reading (its answer comes back), then snapshot it.
        vm.type_text("echo before-$((6 * 7))\n");
        vm.wait_stdout(answer, |out| out.contains("before-42"));
        std::thread::sleep(Duration::from_millis(500));
        let out = super::snap::kite_snapshot(&vm.sock, &snap);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        Some(ShellSnapshot { dir, img, snap })
    }
}
