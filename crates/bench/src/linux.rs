//! The `linux-boot` workload: how long Kite takes to boot the project's Linux guest
//! (`guest-images/out/vmlinux` with `initramfs.cpio`, built by `guest-images/build.sh`) to its
//! `/init`. Guest side only.
//!
//! Each run is `kite run --boot-timer --timeline` with `kite_test=boot`: `/init` writes the
//! boot-timer register, prints `KITE-GUEST-INIT-OK` and resets the machine, so Kite exits 0.
//! The rows are the start-up milestones of the timeline, as for `startup`
//! ([`super::milestones`]), with "guest ready (boot timer)" the moment `/init` starts its work.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use super::milestones;
use super::report::Row;
use super::runner::{self, Output};
use super::timeline;
use super::workloads::{GUEST_MEMORY, Outcome, Sample};

/// The images, relative to the repository.
pub const KERNEL: &str = "guest-images/out/vmlinux";
pub const INITRD: &str = "guest-images/out/initramfs.cpio";
/// What builds them.
pub const BUILD_SCRIPT: &str = "guest-images/build.sh";
/// The guest's kernel command line: `/init` of `kite_test=boot` resets the VM once it runs.
pub const CMDLINE: &str = "console=ttyS0 reboot=k panic=1 kite_test=boot";
/// The line `/init` prints first, just after the boot-timer write.
pub const INIT_LINE: &str = "KITE-GUEST-INIT-OK";
/// Runs when `--runs` is not given: a boot takes ~20 s where KVM emulates guest ring 0.
pub const DEFAULT_RUNS: u32 = 3;
/// Time limit of one boot.
pub const LIMIT: Duration = Duration::from_secs(180);

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A path given on the command line (`--kernel`, `--initrd`) that is not there.
    #[error("--{option} {}: no such file", .path.display())]
    Given { option: &'static str, path: PathBuf },
    #[error("{} is not built; run {BUILD_SCRIPT}", .0.display())]
    NotBuilt(PathBuf),
    #[error(
        "cannot find the Linux guest's images; run kite bench in the Kite repository (after {BUILD_SCRIPT}) or give --kernel and --initrd"
    )]
    NoRepository,
}

/// The Linux guest to boot.
#[derive(Clone, Debug, PartialEq)]
pub struct Images {
    pub kernel: PathBuf,
    pub initrd: PathBuf,
}

/// The images: `kernel` and `initrd` if given (they must exist), else the repository's
/// [`KERNEL`] and [`INITRD`] (see [`runner::find_repository`]). Unlike the test guest they are
/// not built here: a kernel build takes long.
pub fn find_images(kernel: Option<&Path>, initrd: Option<&Path>) -> Result<Images, Error> {
    let root = || runner::find_repository(BUILD_SCRIPT).ok_or(Error::NoRepository);
    let pick = |given: Option<&Path>, option: &'static str, default: &str| match given {
        Some(path) if path.is_file() => Ok(path.to_path_buf()),
        Some(path) => Err(Error::Given {
            option,
            path: path.to_path_buf(),
        }),
        None => {
            let path = root()?.join(default);
            if path.is_file() {
                Ok(path)
            } else {
                Err(Error::NotBuilt(path))
            }
        }
    };
    // A path the user gave that is not there is reported before a missing build.
    let kernel = pick(kernel, "kernel", KERNEL);
    let initrd = pick(initrd, "initrd", INITRD);
    match (kernel, initrd) {
        (Ok(kernel), Ok(initrd)) => Ok(Images { kernel, initrd }),
        (Err(e @ Error::Given { .. }), _) | (_, Err(e @ Error::Given { .. })) => Err(e),
        (Err(e), _) | (_, Err(e)) => Err(e),
    }
}

/// `kite run` of one boot.
pub fn command(exe: &Path, images: &Images) -> Command {
    let mut cmd = Command::new(exe);
    cmd.arg("run")
        .arg("--kernel")
        .arg(&images.kernel)
        .arg("--initrd")
        .arg(&images.initrd)
        .args(["--memory", GUEST_MEMORY, "--cpus", "1"])
        .args(["--boot-timer", "--timeline", "--cmdline", CMDLINE]);
    cmd
}

/// Boot once.
pub fn run_once(exe: &Path, images: &Images) -> Outcome {
    match runner::run(command(exe, images), LIMIT) {
        Ok(out) => check(&out),
        Err(e) => Outcome::Failed(e.to_string()),
    }
}

/// The kernel's panic line, else the last non-empty console line: how far the guest got.
fn last_console_line(out: &Output) -> &str {
    let mut lines = out.lines.iter().rev().map(|(_, l)| l.trim());
    lines
        .clone()
        .find(|l| l.contains("Kernel panic"))
        .or_else(|| lines.find(|l| !l.is_empty()))
        .unwrap_or("")
}

/// A finished boot's sample, or why it failed: Kite must exit 0, its timeline must have the
/// boot-timer mark and the console `/init`'s first line.
pub fn check(out: &Output) -> Outcome {
    let console = || match last_console_line(out) {
        "" => "; the guest printed nothing".to_string(),
        l => format!("; the guest's last line: {l}"),
    };
    if !out.status.success() {
        return Outcome::Failed(format!(
            "kite run ended with {}: {}{}",
            out.status,
            out.last_stderr_line(),
            console()
        ));
    }
    let timeline = timeline::parse(&out.stderr);
    if timeline.start_ns.is_none() {
        return Outcome::Failed("kite run --timeline printed no timeline".into());
    }
    if timeline.mark(milestones::BOOT_TIMER_MARK).is_none() {
        return Outcome::Failed(format!(
            "no boot-timer line: /init never wrote the boot-timer register{}",
            console()
        ));
    }
    let Some((at, line)) = out.lines.iter().find(|(_, l)| l.contains(INIT_LINE)) else {
        return Outcome::Failed(format!("no {INIT_LINE} line on the console{}", console()));
    };
    let ms_since_spawn = |ns: u64| ns.saturating_sub(out.spawned_ns) as f64 / 1e6;
    Outcome::Done(Sample {
        line: line.trim().to_string(),
        wall_ms: out.wall_ms(),
        line_ms: ms_since_spawn(*at),
        exec_ms: timeline.start_ns.map(ms_since_spawn),
        timeline,
        ..Sample::default()
    })
}

/// The rows of the boots: the milestones, in ms after spawn, and Kite's memory figures.
pub fn rows(guest: &[Sample]) -> Vec<Row> {
    milestones::rows(&milestones::LINUX_BOOT, guest)
}

#[cfg(test)]
mod tests {
    use std::os::unix::process::ExitStatusExt;
    use std::process::ExitStatus;

    use super::*;

    const STDERR: &str = "kite: 1 vCPUs, 256 MiB of RAM\n\
        kite: guest reset the machine; VM stopped\n\
        kite: timeline: process start at 1002000000 ns CLOCK_MONOTONIC\n\
        kite: timeline:    0.406 ms  KVM VM created\n\
        kite: timeline:    1.217 ms  guest RAM ready\n\
        kite: timeline:    8.560 ms  kernel loaded\n\
        kite: timeline:    9.767 ms  vCPUs configured\n\
        kite: timeline:    9.915 ms  first guest instruction\n\
        kite: timeline: 5000.247 ms  guest's first serial byte\n\
        kite: timeline: 20496.274 ms  guest ready (boot timer)\n\
        kite: timeline: memory: peak RSS 29560832 bytes, guest RAM resident 25632768 bytes\n";

    /// A run spawned at 1 s that printed `console` (a line a ms from 21.5 s on) and `stderr`.
    fn output(code: i32, console: &[&str], stderr: &str) -> Output {
        Output {
            lines: console
                .iter()
                .enumerate()
                .map(|(i, l)| (21_500_000_000 + i as u64 * 1_000_000, l.to_string()))
                .collect(),
            stderr: stderr.into(),
            status: ExitStatus::from_raw(code << 8),
            spawned_ns: 1_000_000_000,
            ended_ns: 23_000_000_000,
        }
    }

    fn failure(outcome: Outcome) -> String {
        match outcome {
            Outcome::Failed(why) => why,
            Outcome::Done(s) => panic!("done: {s:?}"),
            Outcome::NotAvailable(why) => panic!("n/a: {why}"),
        }
    }

    #[test]
    fn a_boot_to_init_is_a_sample() {
        let console = ["[   17.45] Run /init as init process", INIT_LINE, ""];
        let Outcome::Done(s) = check(&output(0, &console, STDERR)) else {
            panic!("not done")
        };
        assert_eq!(s.line, INIT_LINE);
        assert_eq!(s.wall_ms, 22_000.0);
        assert_eq!(s.line_ms, 20_501.0);
        assert_eq!(s.exec_ms, Some(2.0));
        assert_eq!(s.timeline.mark("guest ready (boot timer)"), Some(20496.274));
        let rows = rows(&[s]);
        let ready = rows
            .iter()
            .find(|r| r.name == "linux-boot: guest ready (boot timer)")
            .unwrap();
        assert_eq!(ready.guest, [20498.274]);
    }

    #[test]
    fn a_failed_boot_says_why() {
        // A panic resets the VM (panic=1), so Kite exits 0; the panic line says why.
        let no_timer = STDERR.replace("guest ready (boot timer)", "something else");
        let panic = [
            "[ 10.8] Kernel panic - not syncing: VFS",
            "[ 10.9] Rebooting",
            "",
        ];
        let why = failure(check(&output(0, &panic, &no_timer)));
        assert_eq!(
            why,
            "no boot-timer line: /init never wrote the boot-timer register; the guest's last \
             line: [ 10.8] Kernel panic - not syncing: VFS"
        );

        let why = failure(check(&output(
            1,
            &["Kernel panic - not syncing: VFS"],
            "kite: error: the guest did something\n",
        )));
        assert!(why.contains("exit status: 1"), "{why}");
        assert!(why.contains("the guest did something"), "{why}");
        assert!(why.contains("last line: Kernel panic"), "{why}");

        let why = failure(check(&output(0, &[INIT_LINE], &no_timer)));
        assert!(why.starts_with("no boot-timer line"), "{why}");

        let why = failure(check(&output(0, &[], STDERR)));
        assert_eq!(
            why,
            "no KITE-GUEST-INIT-OK line on the console; the guest printed nothing"
        );

        let why = failure(check(&output(0, &[INIT_LINE], "kite: guest reset\n")));
        assert_eq!(why, "kite run --timeline printed no timeline");
    }

    #[test]
    fn the_command_boots_the_images_to_init() {
        let images = Images {
            kernel: "/k/vmlinux".into(),
            initrd: "/k/initramfs.cpio".into(),
        };
        let cmd = command(Path::new("/bin/kite"), &images);
        assert_eq!(cmd.get_program(), "/bin/kite");
        let args: Vec<_> = cmd.get_args().map(|a| a.to_string_lossy()).collect();
        assert_eq!(
            args,
            [
                "run",
                "--kernel",
                "/k/vmlinux",
                "--initrd",
                "/k/initramfs.cpio",
                "--memory",
                "256M",
                "--cpus",
                "1",
                "--boot-timer",
                "--timeline",
                "--cmdline",
                "console=ttyS0 reboot=k panic=1 kite_test=boot"
            ]
        );
    }

    #[test]
    fn images_given_must_exist_and_missing_builds_say_how_to_build() {
        let none = Path::new("/nonexistent/vmlinux");
        let e = find_images(Some(none), None).unwrap_err();
        assert!(
            matches!(
                e,
                Error::Given {
                    option: "kernel",
                    ..
                }
            ),
            "{e}"
        );
        assert_eq!(e.to_string(), "--kernel /nonexistent/vmlinux: no such file");
        // This file exists: the missing initrd is the error.
        let here = Path::new(file!());
        let root = runner::find_repository(BUILD_SCRIPT);
        if let Some(root) = root {
            let kernel = root.join(here);
            let e = find_images(Some(&kernel), Some(none)).unwrap_err();
            assert!(
                matches!(
                    e,
                    Error::Given {
                        option: "initrd",
                        ..
                    }
                ),
                "{e}"
            );
            let both = find_images(Some(&kernel), Some(&kernel)).unwrap();
            assert_eq!(both.initrd, kernel);
        }
        let e = Error::NotBuilt(PathBuf::from("/r").join(KERNEL));
        assert_eq!(
            e.to_string(),
            "/r/guest-images/out/vmlinux is not built; run guest-images/build.sh"
        );
    }
}
