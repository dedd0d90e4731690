//! Kite's jailer: what Firecracker's `jailer` does, with its flags and chroot layout, so that
//! Kata Containers and firecracker-containerd can put Kite in the same jail they put
//! Firecracker in. Run as `jailer` (Kite's binary under that name) or `kite jail`:
//!
//! 1. check the flags (`--id` of 1 to 64 letters, digits and `-`; an absolute `--exec-file`;
//!    a `--chroot-base-dir` that is a directory; the cgroup and resource-limit values);
//! 2. close every inherited descriptor but stdio;
//! 3. make `<base>/<exec name>/<id>/root`, copy the executable in, owned by `--uid`/`--gid`,
//!    with `dev/`, `dev/net/`, `run/` and the nodes `dev/kvm`, `dev/net/tun`, `dev/urandom`
//!    and `dev/userfaultfd` (when the host has one); a dynamically linked executable's loader
//!    and libraries go in too (`libs`; Firecracker's jailer wants a static binary);
//! 4. join `--netns`, set `--resource-limit`s, create and enter the `--cgroup`s;
//! 5. a mount namespace of its own, the jail bind-mounted on itself, `pivot_root` into it and
//!    the old root detached;
//! 6. `--daemonize` (double fork, new session, stdio on /dev/null), `--new-pid-ns` (the VMM
//!    is pid 1 of a new PID namespace);
//! 7. `/<exec name>.pid` with the VMM's pid, then exec it as `--uid`/`--gid` with `--id` and
//!    the start-time flags, followed by what came after `--`.
//!
//! Each failure is one line naming the step and the path; whatever steps 3 and 4 made is
//! removed again, so that a retry with the same id does not trip on it.

mod cgroup;
mod jail;
mod libs;

use std::path::PathBuf;

use clap::Args;

pub use jail::{clock_us, run};

/// Firecracker's jailer flags.
#[derive(Args, Debug, Clone)]
pub struct JailArgs {
    /// The VM's id: 1 to 64 letters, digits and `-`; names its directory and cgroup.
    #[arg(long)]
    pub id: String,
    /// The VMM to jail (Kite's binary, called firecracker): an absolute path to a file.
    #[arg(long, value_name = "PATH")]
    pub exec_file: PathBuf,
    /// The user the VMM runs as.
    #[arg(long)]
    pub uid: u32,
    /// The group the VMM runs as.
    #[arg(long)]
    pub gid: u32,
    /// Where jails are made: <base>/<exec name>/<id>/root.
    #[arg(long, value_name = "DIR", default_value = "/srv/jailer")]
    pub chroot_base_dir: PathBuf,
    /// A network namespace to join (a path such as /var/run/netns/NAME).
    #[arg(long, value_name = "PATH")]
    pub netns: Option<PathBuf>,
    /// Run in the background: a new session, stdio on /dev/null.
    #[arg(long)]
    pub daemonize: bool,
    /// Run the VMM as pid 1 of a new PID namespace (the pid file has its pid outside).
    #[arg(long)]
    pub new_pid_ns: bool,
    /// A cgroup setting FILE=VALUE (e.g. cpu.max=50000 or pids.max=100); repeatable.
    #[arg(long, value_name = "FILE=VALUE")]
    pub cgroup: Vec<String>,
    /// 1 or 2 [default: 1, as Firecracker's jailer].
    #[arg(long, value_name = "1|2", default_value = "1", value_parser = clap::value_parser!(u8).range(1..=2))]
    pub cgroup_version: u8,
    /// The cgroup under which <id>'s is made [default: the exec file's name].
    #[arg(long, value_name = "PATH")]
    pub parent_cgroup: Option<PathBuf>,
    /// fsize=BYTES or no-file=N; repeatable.
    #[arg(long, value_name = "NAME=VALUE")]
    pub resource_limit: Vec<String>,
    /// Everything after `--`: the VMM's own flags.
    #[arg(last = true, value_name = "VMM FLAGS")]
    pub vmm_args: Vec<String>,
}

/// Why the jail was not made: one line naming the step and the path.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("--id {0:?}: use 1 to 64 letters, digits and '-'")]
    Id(String),
    #[error("--exec-file {0}: {1}")]
    ExecFile(String, &'static str),
    #[error("--chroot-base-dir {0}: {1}")]
    Base(String, String),
    #[error("{0}")]
    Flag(String),
    /// A step of making the jail failed on a path.
    #[error("{step} {path}: {source}")]
    Step {
        step: &'static str,
        path: String,
        #[source]
        source: std::io::Error,
    },
}

impl Error {
    pub(crate) fn step(
        step: &'static str,
        path: impl AsRef<std::path::Path>,
    ) -> impl FnOnce(std::io::Error) -> Error {
        let path = path.as_ref().display().to_string();
        move |source| Error::Step { step, path, source }
    }

    pub(crate) fn errno(
        step: &'static str,
        path: impl AsRef<std::path::Path>,
    ) -> impl FnOnce(nix::Error) -> Error {
        let path = path.as_ref().display().to_string();
        move |e| Error::Step {
            step,
            path,
            source: std::io::Error::from(e),
        }
    }
}

/// `--id`: Firecracker's rule.
pub fn check_id(id: &str) -> Result<(), Error> {
    let ok = !id.is_empty()
        && id.len() <= 64
        && id.chars().all(|c| c.is_ascii_alphanumeric() || c == '-');
    if ok {
        Ok(())
    } else {
        Err(Error::Id(id.to_string()))
    }
}

/// `--resource-limit NAME=VALUE`: (resource, value).
pub fn parse_limit(text: &str) -> Result<(nix::sys::resource::Resource, u64), Error> {
    use nix::sys::resource::Resource;
    let bad = || {
        Error::Flag(format!(
            "--resource-limit {text}: use fsize=BYTES or no-file=N"
        ))
    };
    let (name, value) = text.split_once('=').ok_or_else(bad)?;
    let value: u64 = value.parse().map_err(|_| bad())?;
    let resource = match name {
        "fsize" => Resource::RLIMIT_FSIZE,
        "no-file" => Resource::RLIMIT_NOFILE,
        _ => return Err(bad()),
    };
    Ok((resource, value))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_follow_firecrackers_rule() {
        check_id("a-1").unwrap();
        check_id(&"a".repeat(64)).unwrap();
        for bad in ["", "a/b", "../x", "a b", &"a".repeat(65)] {
            let e = check_id(bad).unwrap_err().to_string();
            assert!(e.contains("1 to 64 letters"), "{e}");
        }
    }

    #[test]
    fn resource_limits_parse() {
        assert_eq!(
            parse_limit("no-file=64").unwrap().0,
            nix::sys::resource::Resource::RLIMIT_NOFILE
        );
        assert!(parse_limit("fsize=x").is_err());
        assert!(parse_limit("cpu=1").is_err());
        assert!(parse_limit("fsize").is_err());
    }
}
