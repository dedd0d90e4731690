//! The one way a Kite test skips itself: [`skip`] names the [`Need`] the machine lacks, prints
//! one line and appends it to the skip log (`$KITE_SKIP_LOG`), where `scripts/test.sh` lists it
//! and, for a need the machine declares it has (`$KITE_MACHINE_HAS`), fails the run.
//!
//! Used by the integration tests (`tests/common`) and, as a dev-dependency, by kite-vmm's unit
//! tests. `scripts/fuzz.sh` writes the same line format itself (need `nightly`).

use std::io::Write;
use std::path::Path;

/// What a test can need that a machine may lack: a fixed set, so that a machine can declare
/// what it has (`KITE_MACHINE_HAS="kvm root tap ..."`) and a skip for any of those fails CI.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Need {
    /// A /dev/kvm this user may open.
    Kvm,
    /// Running as root: mounting a tmpfs, making loop devices, switching users.
    Root,
    /// Network namespaces with tap devices in them: root, /dev/net/tun, `ip`.
    Tap,
    /// Loop devices, and an ext4 file system mounted on one.
    Loop,
    /// The host tools `scripts/test.sh` installs: `ip`, `mke2fs`, `setpriv`, `iasl`.
    Tools,
    /// The guest images `guest-images/build.sh` and `guest-images/testguest/build.sh` make.
    GuestImages,
    /// Debian's cloud kernel, which `guest-images/debian-kernel.sh` fetches from Debian's archive.
    DistroKernel,
    /// A user (nobody) who may run the kite binary but not open /dev/kvm.
    Nobody,
    /// The nightly toolchain and cargo-fuzz, for `scripts/fuzz.sh`.
    Nightly,
    /// A cgroup v2 hierarchy at /sys/fs/cgroup with the pids controller (the jailer's cgroups).
    Cgroup,
    /// io_uring that this process may set up (Linux 5.6+, not disabled by sysctl or a
    /// container's seccomp profile): the virtio-blk Async engine.
    IoUring,
    /// A userfaultfd that catches KVM's faults too (root, /dev/userfaultfd access or
    /// vm.unprivileged_userfaultfd=1): the Uffd memory backend of snapshot loads.
    Userfaultfd,
}

impl Need {
    /// Every need, in the order `scripts/test.sh` lists them.
    pub const ALL: [Need; 12] = [
        Need::Kvm,
        Need::Root,
        Need::Tap,
        Need::Loop,
        Need::Tools,
        Need::GuestImages,
        Need::DistroKernel,
        Need::Nobody,
        Need::Nightly,
        Need::Cgroup,
        Need::IoUring,
        Need::Userfaultfd,
    ];

    /// The name a machine declares in `KITE_MACHINE_HAS` and the skip log shows.
    pub fn name(self) -> &'static str {
        match self {
            Need::Kvm => "kvm",
            Need::Root => "root",
            Need::Tap => "tap",
            Need::Loop => "loop",
            Need::Tools => "tools",
            Need::GuestImages => "guest-images",
            Need::DistroKernel => "distro-kernel",
            Need::Nobody => "nobody",
            Need::Nightly => "nightly",
            Need::Cgroup => "cgroup",
            Need::IoUring => "io-uring",
            Need::Userfaultfd => "userfaultfd",
        }
    }
}

/// The skip log's line for `test` skipping for lack of `need`: `[need] test: reason`.
pub fn line(test: &str, need: Need, reason: &str) -> String {
    // One line, whatever the reason holds (an error message may carry a newline).
    let reason = reason.split_whitespace().collect::<Vec<_>>().join(" ");
    format!("[{}] {test}: {reason}", need.name())
}

/// Records that `test` skipped itself because the machine lacks `need` (`reason` says how):
/// one `SKIPPED` line on stderr, and the same line appended to `$KITE_SKIP_LOG` if it is set.
pub fn skip(test: &str, need: Need, reason: &str) {
    let line = line(test, need, reason);
    eprintln!("SKIPPED {line}");
    if let Some(path) = std::env::var_os("KITE_SKIP_LOG") {
        append(Path::new(&path), &line);
    }
}

/// Appends `line` to the log at `path`, best effort (a skip must not fail the test).
fn append(path: &Path, line: &str) {
    if let Ok(mut f) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
    {
        // One write of the whole line: O_APPEND keeps lines from parallel tests whole.
        let _ = f.write_all(format!("{line}\n").as_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_line_names_the_need_the_test_and_one_line_of_reason() {
        assert_eq!(
            line("t", Need::DistroKernel, "no network:\n  apt-get failed "),
            "[distro-kernel] t: no network: apt-get failed"
        );
    }

    #[test]
    fn skips_append_whole_lines_to_the_log() {
        let path = std::env::temp_dir().join(format!("kite-testkit-{}.txt", std::process::id()));
        let _ = std::fs::remove_file(&path);
        append(&path, &line("first", Need::Kvm, "no /dev/kvm"));
        append(&path, &line("second", Need::Tap, "not root"));
        let log = std::fs::read_to_string(&path).unwrap();
        std::fs::remove_file(&path).unwrap();
        assert_eq!(log, "[kvm] first: no /dev/kvm\n[tap] second: not root\n");
    }

    /// `scripts/test.sh` checks `KITE_MACHINE_HAS` against its own list of the needs' names;
    /// that list must be this one.
    #[test]
    fn test_sh_knows_every_need_and_no_other() {
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../../scripts/test.sh");
        let text = std::fs::read_to_string(script).unwrap();
        let known = text
            .lines()
            .find_map(|l| l.strip_prefix("KNOWN_NEEDS=\""))
            .and_then(|l| l.strip_suffix('"'))
            .expect("scripts/test.sh has a KNOWN_NEEDS=\"...\" line");
        let names: Vec<&str> = Need::ALL.iter().map(|n| n.name()).collect();
        assert_eq!(known.split(' ').collect::<Vec<_>>(), names);
    }
}
