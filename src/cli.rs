//! The command line: a thin front end that turns arguments into a `VmConfig`.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use kite_vmm::api::convert::{self, Extras};
use kite_vmm::api::types::{
    BootSource, Entropy, FullConfig, Logger, MachineConfig, Metrics, Vsock,
};
use kite_vmm::arch::x86_64::emulated_ring0;
use kite_vmm::config::{self, VmConfig};
use kite_vmm::seccomp;

/// Three worked examples, at the end of `kite --help` and `kite run --help`.
const EXAMPLES: &str = "\
Examples:
  Boot the guest-images Linux to a shell on this terminal (2 vCPUs, 256 MiB, a disk):
    kite run --kernel guest-images/out/vmlinux --initrd guest-images/out/initramfs.cpio \\
             --cpus 2 --memory 256M --disk disk.img

  Serve Firecracker's API on a socket; a client configures and starts the VM:
    kite run --api-sock /tmp/kite.sock &
    curl --unix-socket /tmp/kite.sock -X PUT http://localhost/boot-source \\
         -d '{\"kernel_image_path\": \"guest-images/out/vmlinux\"}'
    curl --unix-socket /tmp/kite.sock -X PUT http://localhost/actions \\
         -d '{\"action_type\": \"InstanceStart\"}'

  Measure what a VM costs against the bare host (CPU and port-I/O round trips, 3 runs):
    kite bench cpu pio-rtt --runs 3";

use crate::firecracker::{self, FirecrackerFlags};

#[derive(Parser, Debug)]
#[command(
    name = "kite",
    version = firecracker::KITE_VERSION,
    about = "Kite: a small KVM virtual machine monitor",
    after_help = EXAMPLES
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Boot a kernel and attach its serial console to this terminal.
    #[command(after_help = EXAMPLES)]
    Run(Box<RunArgs>),
    /// Measure what a VM costs against the bare host: each workload on the host and in a VM.
    Bench(kite_bench::BenchArgs),
    /// Restore a VM from a snapshot directory (`vmstate` and `memory`, as `kite snapshot`
    /// writes them) and attach its serial console to this terminal.
    Restore(crate::snapshot_cli::RestoreArgs),
    /// Snapshot the VM of a running `kite run --api-sock SOCKET` into a directory: pause it,
    /// write `vmstate` and `memory`, and resume it.
    Snapshot(crate::snapshot_cli::SnapshotArgs),
    /// Merge a diff snapshot's memory file over the full memory file it follows (as
    /// Firecracker's `rebase-snap`): load the diff's state file with the merged memory.
    RebaseSnap(crate::snapshot_cli::RebaseArgs),
    /// Firecracker's jailer: make a chroot jail and exec the VMM in it (as `jailer` does;
    /// docs/api.md, "The jailer").
    Jail(kite_jailer::JailArgs),
    /// Run one benchmark workload as a plain host process (the host side of `kite bench`).
    #[command(hide = true)]
    Workload(kite_bench::host::WorkloadArgs),
    /// Print a shell completion script on stdout (scripts/install.sh installs them).
    Completions {
        /// bash, zsh, fish, elvish or powershell.
        shell: clap_complete::Shell,
    },
    /// Write the manual pages (kite.1, kite-run.1, kite-bench.1, ...) into DIR.
    Man {
        /// Where to write them (made if missing).
        #[arg(value_name = "DIR")]
        dir: PathBuf,
    },
}

#[derive(Args, Debug, Default)]
pub struct RunArgs {
    /// Kernel: an ELF vmlinux or a bzImage. Required unless --config-file names one or
    /// --api-sock is given (then the API's PUT /boot-source does).
    #[arg(long, value_name = "PATH")]
    pub kernel: Option<PathBuf>,
    /// Initial ramdisk, placed at the top of low guest RAM.
    #[arg(long, value_name = "PATH")]
    pub initrd: Option<PathBuf>,
    /// Guest RAM, e.g. 256M, 1536M, 1G (a bare number is MiB) [default: 256M].
    #[arg(long, value_name = "SIZE")]
    pub memory: Option<String>,
    /// Number of vCPUs [default: 1].
    #[arg(long, value_name = "N")]
    pub cpus: Option<String>,
    /// Log the pages the guest writes (machine-config `track_dirty_pages`), so that
    /// `kite snapshot --diff` can write only the pages written since the last snapshot.
    #[arg(long)]
    pub track_dirty_pages: bool,
    /// Kernel command line [default: "console=ttyS0 reboot=k panic=1"].
    #[arg(long, value_name = "TEXT")]
    pub cmdline: Option<String>,
    /// A raw disk image as the next virtio-blk device (/dev/vda, /dev/vdb, ...); repeatable.
    #[arg(long = "disk", value_name = "PATH[,readonly][,io=uring]")]
    pub disks: Vec<String>,
    /// A virtio-net device on host tap NAME (created if missing and Kite may); repeatable.
    /// Without mac=, a random locally administered MAC.
    #[arg(long = "net", value_name = "tap=NAME[,mac=MAC]")]
    pub nets: Vec<String>,
    /// A virtio-vsock device with guest CID N; Kite listens on PATH for `CONNECT <port>`, and
    /// the guest's connections to host port P go to PATH_P.
    #[arg(long, value_name = "cid=N,socket=PATH")]
    pub vsock: Option<String>,
    /// Do not give the guest a virtio-rng device.
    #[arg(long)]
    pub no_rng: bool,
    /// Log the guest's boot time when its init writes the boot-timer register.
    #[arg(long)]
    pub boot_timer: bool,
    /// Stop the VM after this many seconds (exit code 124).
    #[arg(long, value_name = "SECONDS")]
    pub timeout: Option<f64>,
    /// Workarounds for a host whose KVM emulates guest ring 0 (no VT-x/AMD-V under it, e.g.
    /// kvm_pvm in a cloud VM): extra kernel command-line words and CPUID features hidden, so
    /// that Linux can run there. `auto` applies them when the host looks like one (no vmx/svm
    /// CPU flag, or kvm_pvm loaded) and says so in one log line.
    #[arg(long, value_name = "WHEN", value_enum, default_value = "auto")]
    pub ring0_workarounds: Ring0Workarounds,
    /// No ACPI tables. By default Kite writes ACPI tables (MADT, FADT, DSDT) and names the
    /// virtio devices only in the DSDT, as kernels with ACPI (all distro kernels) expect. A
    /// kernel without CONFIG_ACPI needs this flag: the devices then go on its command line
    /// (virtio_mmio.device=...). The MP table describes the CPUs either way.
    #[arg(long)]
    pub no_acpi: bool,
    /// System-call filters: each of Kite's threads may make only the system calls on its list
    /// (crates/vmm/src/seccomp.rs), and any other ends Kite with exit code 159 and one line naming the
    /// thread and the call. `off` runs without filters and `log` lets every call through but has
    /// the kernel log those outside the lists (dmesg); both are for debugging only.
    #[arg(long, value_name = "on|off|log", value_enum, default_value = "on")]
    pub seccomp: Seccomp,
    /// Serve Firecracker's REST API on this Unix socket (docs/api.md). Without --kernel or
    /// --config-file, Kite waits for the API to configure and start the VM.
    #[arg(long, value_name = "PATH")]
    pub api_sock: Option<PathBuf>,
    /// Boot from a Firecracker JSON configuration file (boot-source, machine-config, drives,
    /// network-interfaces, vsock, entropy, logger, metrics). A flag that sets what the file
    /// also sets is an error.
    #[arg(long, value_name = "FILE")]
    pub config_file: Option<PathBuf>,
    /// No API socket (Firecracker's flag; Kite serves none unless --api-sock is given).
    #[arg(long)]
    pub no_api: bool,
    /// The instance's id, shown by GET / [default: anonymous-instance].
    #[arg(long, value_name = "ID")]
    pub id: Option<String>,
    /// Log level: Error, Warning, Info, Debug, Trace or Off (overrides KITE_LOG).
    #[arg(long, value_name = "LEVEL")]
    pub level: Option<String>,
    /// Write Kite's log to this file (appended) or FIFO instead of stderr.
    #[arg(long, value_name = "PATH")]
    pub log_path: Option<PathBuf>,
    /// Print the whole start-up timeline and memory figures on stderr at the end (kite bench).
    #[arg(long, hide = true)]
    pub timeline: bool,
    #[command(flatten)]
    pub fc: FirecrackerFlags,
    /// Called as `firecracker`: without --api-sock or --no-api, the API is served on
    /// Firecracker's default socket.
    #[arg(skip)]
    pub as_firecracker: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Config(#[from] config::Error),
    #[error("invalid --timeout: give a positive number of seconds")]
    Timeout,
    #[error("{0}")]
    File(String),
    #[error(transparent)]
    Layout(#[from] convert::Error),
    #[error("{flag} and the config file's {field} both set {what}: give it in one place")]
    Both {
        flag: &'static str,
        field: &'static str,
        what: &'static str,
    },
    #[error(
        "no kernel: give --kernel PATH, --config-file FILE, or --api-sock PATH to configure the VM through the API"
    )]
    NoKernel,
    #[error("--no-api and --api-sock contradict each other: give one")]
    NoApi,
    #[error("{0}")]
    Level(String),
    #[error("--memory {given} is more than this host's {host} MiB of RAM: give less")]
    MemoryHost { given: String, host: u64 },
    #[error(transparent)]
    SeccompFilter(#[from] firecracker::FilterFileUnsupported),
    #[error(transparent)]
    Refused(#[from] firecracker::Refused),
}

/// `--ring0-workarounds` (the library's [`emulated_ring0::Mode`], as clap parses it).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Ring0Workarounds {
    /// When the host looks like one whose KVM emulates ring 0.
    #[default]
    Auto,
    /// Always.
    On,
    /// Never.
    Off,
}

impl From<Ring0Workarounds> for emulated_ring0::Mode {
    fn from(m: Ring0Workarounds) -> Self {
        match m {
            Ring0Workarounds::Auto => Self::Auto,
            Ring0Workarounds::On => Self::On,
            Ring0Workarounds::Off => Self::Off,
        }
    }
}

/// `--seccomp` (the library's [`seccomp::Mode`], as clap parses it).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Seccomp {
    /// A call outside its thread's list ends Kite (exit 159).
    #[default]
    On,
    /// No filters at all: for debugging only.
    Off,
    /// Every call is allowed; the kernel logs those outside the lists.
    Log,
}

impl From<Seccomp> for seccomp::Mode {
    fn from(m: Seccomp) -> Self {
        match m {
            Seccomp::On => Self::On,
            Seccomp::Off => Self::Off,
            Seccomp::Log => Self::Log,
        }
    }
}

/// What `kite run` does: boot now, or serve the API until it says so.
#[derive(Debug)]
pub struct Plan {
    /// The VM to boot now, if the flags or the file name a kernel and no API waits for one.
    pub boot: Option<VmConfig>,
    /// The configuration in Firecracker's layout (what `GET /vm/config` shows, and what the
    /// API's calls start from).
    pub layout: FullConfig,
    pub extras: Extras,
    pub api_sock: Option<PathBuf>,
    pub id: String,
}

impl RunArgs {
    fn extras(&self) -> Result<Extras, Error> {
        let timeout = match self.timeout {
            Some(t) if t.is_finite() && t > 0.0 => Some(Duration::from_secs_f64(t)),
            Some(_) => return Err(Error::Timeout),
            None => None,
        };
        Ok(Extras {
            boot_timer: self.boot_timer,
            timeout,
            ring0_workarounds: self.ring0_workarounds.into(),
            acpi: !self.no_acpi,
            seccomp: self.fc.seccomp()?.unwrap_or(self.seccomp.into()),
        })
    }

    /// The log level `--level` asks for.
    pub fn log_level(&self) -> Result<Option<log::LevelFilter>, Error> {
        self.level
            .as_deref()
            .map(kite_vmm::logging::parse_level)
            .transpose()
            .map_err(Error::Level)
    }

    /// The flags (and the config file, if any) as one configuration.
    pub fn plan(&self) -> Result<Plan, Error> {
        if self.no_api && self.api_sock.is_some() {
            return Err(Error::NoApi);
        }
        self.fc.refuse()?;
        let extras = self.extras()?;
        self.log_level()?;
        let from_file = self.config_file.is_some();
        let mut layout = match &self.config_file {
            Some(path) => kite_vmm::api::read_config_file(path).map_err(Error::File)?,
            None => FullConfig::default(),
        };
        let both = |flag, field, what| Error::Both { flag, field, what };
        let path = |p: &std::path::Path| p.to_string_lossy().into_owned();
        let boot = &mut layout.boot_source;
        if let Some(kernel) = &self.kernel {
            if boot.is_some() {
                return Err(both("--kernel", "boot-source", "the kernel"));
            }
            *boot = Some(BootSource {
                kernel_image_path: path(kernel),
                ..BootSource::default()
            });
        }
        let boot_set = |what: &str| {
            boot.as_ref().is_some_and(|b| match what {
                "initrd" => b.initrd_path.is_some(),
                _ => b.boot_args.is_some(),
            })
        };
        if self.initrd.is_some() && boot_set("initrd") {
            return Err(both("--initrd", "boot-source.initrd_path", "the initrd"));
        }
        if self.cmdline.is_some() && boot_set("cmdline") {
            return Err(both(
                "--cmdline",
                "boot-source.boot_args",
                "the kernel command line",
            ));
        }
        if let Some(b) = boot.as_mut() {
            if let Some(initrd) = &self.initrd {
                b.initrd_path = Some(path(initrd));
            }
            if let Some(cmdline) = &self.cmdline {
                b.boot_args = Some(cmdline.clone());
            }
        }
        let memory = self
            .memory
            .as_deref()
            .map(config::parse_memory)
            .transpose()?;
        let cpus = self.cpus.as_deref().map(config::parse_cpus).transpose()?;
        if memory.is_some() || cpus.is_some() {
            if layout.machine_config.is_some() {
                let flag = if memory.is_some() {
                    "--memory"
                } else {
                    "--cpus"
                };
                return Err(both(flag, "machine-config", "the machine's size"));
            }
            let mut m = MachineConfig::default();
            if let Some(bytes) = memory {
                m.mem_size_mib = bytes.div_ceil(1 << 20);
                m.mem_size_bytes = Some(bytes);
            }
            if let Some(n) = cpus {
                m.vcpu_count = n;
            }
            layout.machine_config = Some(m);
        }
        if self.track_dirty_pages {
            layout
                .machine_config
                .get_or_insert_with(MachineConfig::default)
                .track_dirty_pages = true;
        }
        if !self.disks.is_empty() {
            if !layout.drives.is_empty() {
                return Err(both("--disk", "drives", "the disks"));
            }
            for (i, text) in self.disks.iter().enumerate() {
                let d = config::parse_disk(text)?;
                layout.drives.push(convert::drive_of(i, &d));
            }
        }
        if !self.nets.is_empty() {
            if !layout.network_interfaces.is_empty() {
                return Err(both("--net", "network-interfaces", "the network"));
            }
            for (i, text) in self.nets.iter().enumerate() {
                let n = config::parse_net(text)?;
                layout.network_interfaces.push(convert::interface_of(i, &n));
            }
        }
        if let Some(text) = &self.vsock {
            if layout.vsock.is_some() {
                return Err(both("--vsock", "vsock", "the vsock device"));
            }
            let v = config::parse_vsock(text)?;
            layout.vsock = Some(Vsock {
                vsock_id: None,
                guest_cid: v.cid,
                uds_path: path(&v.socket),
            });
        }
        if self.no_rng && layout.entropy.is_some() {
            return Err(both("--no-rng", "entropy", "the entropy device"));
        }
        // The command line's default is an entropy device; a file's is what it says.
        if !from_file && !self.no_rng {
            layout.entropy = Some(Entropy::default());
        }
        let fc = &self.fc;
        let log_flags = [
            ("--level", self.level.is_some()),
            ("--log-path", self.log_path.is_some()),
            ("--show-level", fc.show_level),
            ("--show-log-origin", fc.show_log_origin),
            ("--module", fc.module.is_some()),
        ];
        if let Some(&(flag, _)) = log_flags.iter().find(|(_, given)| *given) {
            if layout.logger.is_some() {
                return Err(both(flag, "logger", "the log"));
            }
            layout.logger = Some(Logger {
                log_path: self.log_path.as_deref().map(path),
                level: self.level.clone(),
                show_level: fc.show_level.then_some(true),
                show_log_origin: fc.show_log_origin.then_some(true),
                module: fc.module.clone(),
            });
        }
        if let Some(m) = &fc.metrics_path {
            if layout.metrics.is_some() {
                return Err(both("--metrics-path", "metrics", "the metrics file"));
            }
            layout.metrics = Some(Metrics {
                metrics_path: path(m),
            });
        }
        // Firecracker serves its API on a default socket unless told --no-api.
        let api_sock = match &self.api_sock {
            Some(p) => Some(p.clone()),
            None if self.as_firecracker && !self.no_api => {
                Some(std::path::PathBuf::from(firecracker::DEFAULT_API_SOCK))
            }
            None => None,
        };
        let boot = match (&layout.boot_source, &api_sock) {
            (None, Some(_)) => None,
            (None, None) => return Err(Error::NoKernel),
            (Some(_), _) => {
                let vm = match convert::to_vm_config(&layout, &extras) {
                    Err(convert::Error::MemoryHost { host, .. }) if memory.is_some() => {
                        return Err(Error::MemoryHost {
                            given: self.memory.clone().unwrap_or_default(),
                            host,
                        });
                    }
                    other => other?,
                };
                Some(vm)
            }
        };
        Ok(Plan {
            boot,
            layout,
            extras,
            api_sock,
            id: self
                .id
                .clone()
                .unwrap_or_else(|| "anonymous-instance".into()),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    fn plan(args: &[&str]) -> Result<Plan, Error> {
        let mut argv = vec!["kite", "run"];
        argv.extend_from_slice(args);
        match Cli::try_parse_from(argv).unwrap().command {
            Command::Run(run) => run.plan(),
            _ => unreachable!(),
        }
    }

    fn plan_as_firecracker(args: &[&str]) -> Result<Plan, Error> {
        let mut argv = vec!["kite", "run"];
        argv.extend_from_slice(args);
        match Cli::try_parse_from(argv).unwrap().command {
            Command::Run(mut run) => {
                run.as_firecracker = true;
                run.plan()
            }
            _ => unreachable!(),
        }
    }

    #[test]
    fn firecracker_flags_are_taken() {
        // What the jailer, Kata and the SDK pass.
        let p = plan_as_firecracker(&[
            "--id",
            "vm1",
            "--start-time-us",
            "123",
            "--start-time-cpu-us",
            "4",
            "--parent-cpu-time-us",
            "5",
            "--no-seccomp",
            "--show-level",
            "--show-log-origin",
            "--module",
            "kite_vmm::api",
            "--metrics-path",
            "/tmp/m.fifo",
            "--http-api-max-payload-size",
            "100000",
            "--mmds-size-limit",
            "100000",
        ])
        .unwrap();
        // The default socket, as Firecracker's.
        assert_eq!(
            p.api_sock.as_deref(),
            Some(std::path::Path::new("/run/firecracker.socket"))
        );
        assert_eq!(p.extras.seccomp, seccomp::Mode::Off);
        let l = p.layout.logger.unwrap();
        assert_eq!((l.show_level, l.show_log_origin), (Some(true), Some(true)));
        assert_eq!(l.module.as_deref(), Some("kite_vmm::api"));
        assert_eq!(p.layout.metrics.unwrap().metrics_path, "/tmp/m.fifo");
        // --no-api keeps the default socket away; kite run has none by default.
        let p = plan_as_firecracker(&["--no-api", "--kernel", "k"]).unwrap();
        assert!(p.api_sock.is_none());
        assert!(plan(&["--kernel", "k"]).unwrap().api_sock.is_none());
        let p = plan(&["--kernel", "k", "--seccomp-level", "0"]).unwrap();
        assert_eq!(p.extras.seccomp, seccomp::Mode::Off);
        let e = plan(&["--kernel", "k", "--seccomp-filter", "f.bpf"]).unwrap_err();
        assert!(
            e.to_string().contains("does not load seccomp filters"),
            "{e}"
        );
        let e = plan(&["--kernel", "k", "--metadata", "m.json"]).unwrap_err();
        assert_eq!(
            e.to_string(),
            "--metadata: Kite has no MMDS (the metadata service); leave the flag out"
        );
        assert!(plan(&["--kernel", "k", "--enable-pci"]).is_err());
        let clash = Cli::try_parse_from(["kite", "run", "--no-seccomp", "--seccomp", "on"]);
        assert!(clash.is_err());
    }

    #[test]
    fn flags_alone_keep_their_defaults() {
        let p = plan(&["--kernel", "k"]).unwrap();
        let vm = p.boot.unwrap();
        assert_eq!((vm.cpus, vm.memory, vm.rng), (1, 256 << 20, true));
        assert!(!vm.track_dirty_pages);
        assert_eq!(vm.cmdline, kite_vmm::config::DEFAULT_CMDLINE);
        let vm = plan(&["--kernel", "k", "--memory", "64M", "--track-dirty-pages"])
            .unwrap()
            .boot
            .unwrap();
        assert!(vm.track_dirty_pages);
        assert_eq!(vm.memory, 64 << 20);
        assert_eq!(p.id, "anonymous-instance");
        let vm = plan(&[
            "--kernel",
            "k",
            "--memory",
            "65540K",
            "--cpus",
            "3",
            "--no-rng",
            "--disk",
            "a.img,readonly",
            "--net",
            "tap=t0,mac=02:00:00:00:00:01",
        ])
        .unwrap()
        .boot
        .unwrap();
        assert_eq!((vm.cpus, vm.memory, vm.rng), (3, 65540 << 10, false));
        assert!(vm.disks[0].readonly);
        assert_eq!(vm.nets[0].mac, [2, 0, 0, 0, 0, 1]);
    }

    #[test]
    fn api_sock_without_a_kernel_waits_and_no_kernel_at_all_is_an_error() {
        let p = plan(&["--api-sock", "/tmp/a.sock", "--memory", "64M"]).unwrap();
        assert!(p.boot.is_none());
        assert_eq!(p.layout.machine_config.unwrap().mem_size_mib, 64);
        assert!(matches!(plan(&[]), Err(Error::NoKernel)));
        assert!(matches!(
            plan(&["--no-api", "--api-sock", "x"]),
            Err(Error::NoApi)
        ));
        let e = plan(&["--kernel", "k", "--level", "loud"]).unwrap_err();
        assert!(matches!(e, Error::Level(_)), "{e}");
        assert!(e.to_string().contains("invalid log level 'loud'"), "{e}");
    }

    #[test]
    fn no_seccomp_is_firecrackers_seccomp_off() {
        assert_eq!(
            plan(&["--kernel", "k"]).unwrap().extras.seccomp,
            seccomp::Mode::On
        );
        let off = plan(&["--kernel", "k", "--no-seccomp"]).unwrap();
        assert_eq!(off.extras.seccomp, seccomp::Mode::Off);
        let both = Cli::try_parse_from(["kite", "run", "--no-seccomp", "--seccomp", "on"]);
        assert!(both.is_err());
    }
}
