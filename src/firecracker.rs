//! Firecracker's own flags, which the runtimes that exec `firecracker` (Kata Containers,
//! firecracker-containerd through firecracker-go-sdk, the jailer) pass and `kite run` takes
//! too, and what `--version` prints under each name.

use std::path::PathBuf;

use clap::Args;

pub use kite_vmm::api::FIRECRACKER_VERSION;

/// Where Firecracker serves its API when neither `--api-sock` nor `--no-api` is given.
pub const DEFAULT_API_SOCK: &str = "/run/firecracker.socket";

/// `firecracker --version`: Firecracker's first line (`Firecracker v<semver>`, which Kata
/// parses), a blank line as Firecracker prints, then what it really is.
pub fn firecracker_version_text() -> String {
    format!(
        "Firecracker v{FIRECRACKER_VERSION}\n\nKite {} (a Firecracker-compatible VMM; docs/api.md)\n",
        env!("CARGO_PKG_VERSION")
    )
}

/// `kite --version`.
pub const KITE_VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (answers to Firecracker's API and flags as Firecracker v1.7.0)"
);

/// Firecracker's flags beyond the ones `kite run` shares with it.
#[derive(Args, Debug, Default, Clone)]
pub struct FirecrackerFlags {
    /// Firecracker's: when the process (or the jailer before it) started, CLOCK_MONOTONIC in
    /// microseconds; the metrics' api_server.process_startup_time_us counts from it.
    #[arg(long, value_name = "US")]
    pub start_time_us: Option<u64>,
    /// Firecracker's: the process CPU time at start, in microseconds (for
    /// api_server.process_startup_time_cpu_us).
    #[arg(long, value_name = "US")]
    pub start_time_cpu_us: Option<u64>,
    /// Firecracker's: CPU time the parent (the jailer) spent, in microseconds, added to
    /// api_server.process_startup_time_cpu_us.
    #[arg(long, value_name = "US")]
    pub parent_cpu_time_us: Option<u64>,
    /// Firecracker's: no system-call filters (the same as --seccomp off).
    #[arg(long, conflicts_with_all = ["seccomp", "seccomp_filter", "seccomp_level"])]
    pub no_seccomp: bool,
    /// Firecracker's custom filter file: not supported (Kite's per-thread filters are built
    /// in); refused with one line.
    #[arg(long, value_name = "FILE", conflicts_with_all = ["seccomp", "seccomp_level"])]
    pub seccomp_filter: Option<PathBuf>,
    /// Older Firecracker's: 0 = no filters (--seccomp off), 1 or 2 = Kite's filters (on).
    #[arg(long, value_name = "0|1|2", value_parser = clap::value_parser!(u8).range(0..=2),
          conflicts_with = "seccomp")]
    pub seccomp_level: Option<u8>,
    /// Firecracker's: show each log line's level.
    #[arg(long)]
    pub show_level: bool,
    /// Firecracker's: show each log line's source file and line.
    #[arg(long)]
    pub show_log_origin: bool,
    /// Firecracker's: log only records from modules whose path starts with this (Kite's
    /// module paths: kite_vmm::devices, kite_vmm::api, ...).
    #[arg(long, value_name = "MODULE")]
    pub module: Option<String>,
    /// Firecracker's: write metrics lines to this file or FIFO (as PUT /metrics).
    #[arg(long, value_name = "PATH")]
    pub metrics_path: Option<PathBuf>,
    /// Firecracker's: the largest API request body, in bytes [default: 51200].
    #[arg(long, value_name = "BYTES", value_parser = clap::value_parser!(u64).range(1..))]
    pub http_api_max_payload_size: Option<u64>,
    /// Firecracker's MMDS store limit, in bytes: taken and unused (Kite has no MMDS).
    #[arg(long, value_name = "BYTES")]
    pub mmds_size_limit: Option<u64>,
    /// Firecracker's MMDS contents file: refused with one line (Kite has no MMDS).
    #[arg(long, value_name = "FILE")]
    pub metadata: Option<PathBuf>,
    /// Firecracker's PCI transport: refused with one line (Kite's devices are virtio-mmio).
    #[arg(long)]
    pub enable_pci: bool,
}

/// `--seccomp-filter` given.
#[derive(Debug, thiserror::Error)]
#[error(
    "--seccomp-filter {0}: Kite does not load seccomp filters from a file (its per-thread filters are built in); leave the flag out, or give --no-seccomp"
)]
pub struct FilterFileUnsupported(pub String);

/// A Firecracker flag that cannot mean anything for Kite.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Refused(pub &'static str);

impl FirecrackerFlags {
    /// Refuse the flags Kite cannot honour, each with one line.
    pub fn refuse(&self) -> Result<(), Refused> {
        if self.metadata.is_some() {
            return Err(Refused(
                "--metadata: Kite has no MMDS (the metadata service); leave the flag out",
            ));
        }
        if self.enable_pci {
            return Err(Refused(
                "--enable-pci: Kite's devices are virtio-mmio only; leave the flag out",
            ));
        }
        Ok(())
    }

    /// The seccomp mode these flags ask for, if they ask for one.
    pub fn seccomp(&self) -> Result<Option<kite_vmm::seccomp::Mode>, FilterFileUnsupported> {
        use kite_vmm::seccomp::Mode;
        if let Some(path) = &self.seccomp_filter {
            return Err(FilterFileUnsupported(path.display().to_string()));
        }
        Ok(match (self.no_seccomp, self.seccomp_level) {
            (true, _) | (false, Some(0)) => Some(Mode::Off),
            (false, Some(_)) => Some(Mode::On),
            (false, None) => None,
        })
    }

    /// Record the startup figures (call when the API socket is ready, as Firecracker does).
    pub fn record_startup(&self) {
        if self.start_time_us.is_some() || self.start_time_cpu_us.is_some() {
            let (wall, cpu) = kite_vmm::api::metrics::record_startup(
                self.start_time_us,
                self.start_time_cpu_us,
                self.parent_cpu_time_us,
            );
            log::debug!("process startup: {wall:?} us wall, {cpu:?} us CPU");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_version_line_is_what_kata_parses() {
        let text = firecracker_version_text();
        let first = text.lines().next().unwrap();
        let mut fields = first.split(' ');
        assert_eq!(fields.next(), Some("Firecracker"));
        let v = fields.next().unwrap().trim_start_matches('v');
        let nums: Vec<u32> = v.split('.').map(|n| n.parse().unwrap()).collect();
        assert_eq!(nums.len(), 3);
        assert!(nums >= vec![0, 21, 1], "{v}");
        assert!(KITE_VERSION.contains(FIRECRACKER_VERSION));
    }

    #[test]
    fn seccomp_flags_map_to_modes() {
        use kite_vmm::seccomp::Mode;
        let f = |no, level| FirecrackerFlags {
            no_seccomp: no,
            seccomp_level: level,
            ..Default::default()
        };
        assert_eq!(f(true, None).seccomp().unwrap(), Some(Mode::Off));
        assert_eq!(f(false, Some(0)).seccomp().unwrap(), Some(Mode::Off));
        assert_eq!(f(false, Some(2)).seccomp().unwrap(), Some(Mode::On));
        assert_eq!(f(false, None).seccomp().unwrap(), None);
        let e = FirecrackerFlags {
            seccomp_filter: Some("x.bpf".into()),
            ..Default::default()
        }
        .seccomp()
        .unwrap_err();
        assert!(
            e.to_string()
                .starts_with("--seccomp-filter x.bpf: Kite does not")
        );
    }
}
