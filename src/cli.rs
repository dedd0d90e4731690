//! The command line: a thin front end that turns arguments into a `VmConfig`.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use crate::config::{self, DEFAULT_CMDLINE, VmConfig};

#[derive(Parser, Debug)]
#[command(
    name = "kite",
    version,
    about = "Kite: a small KVM virtual machine monitor"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Boot a kernel and attach its serial console to this terminal.
    Run(RunArgs),
    /// Measure what a VM costs against the bare host: each workload on the host and in a VM.
    Bench(crate::bench::BenchArgs),
    /// Run one benchmark workload as a plain host process (the host side of `kite bench`).
    #[command(hide = true)]
    Workload(crate::bench::host::WorkloadArgs),
}

#[derive(Args, Debug)]
pub struct RunArgs {
    /// Kernel: an ELF vmlinux or a bzImage.
    #[arg(long, value_name = "PATH")]
    pub kernel: PathBuf,
    /// Initial ramdisk, placed at the top of low guest RAM.
    #[arg(long, value_name = "PATH")]
    pub initrd: Option<PathBuf>,
    /// Guest RAM, e.g. 256M, 1536M, 1G (a bare number is MiB).
    #[arg(long, value_name = "SIZE", default_value = "256M")]
    pub memory: String,
    /// Number of vCPUs.
    #[arg(long, value_name = "N", default_value = "1")]
    pub cpus: String,
    /// Kernel command line.
    #[arg(long, value_name = "TEXT", default_value = DEFAULT_CMDLINE)]
    pub cmdline: String,
    /// A raw disk image as the next virtio-blk device (/dev/vda, /dev/vdb, ...); repeatable.
    #[arg(long = "disk", value_name = "PATH[,readonly]")]
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
    pub ring0_workarounds: crate::arch::x86_64::emulated_ring0::Mode,
    /// No ACPI tables. By default Kite writes ACPI tables (MADT, FADT, DSDT) and names the
    /// virtio devices only in the DSDT, as kernels with ACPI (all distro kernels) expect. A
    /// kernel without CONFIG_ACPI needs this flag: the devices then go on its command line
    /// (virtio_mmio.device=...). The MP table describes the CPUs either way.
    #[arg(long)]
    pub no_acpi: bool,
    /// System-call filters: each of Kite's threads may make only the system calls on its list
    /// (src/seccomp.rs), and any other ends Kite with exit code 159 and one line naming the
    /// thread and the call. `off` runs without filters and `log` lets every call through but has
    /// the kernel log those outside the lists (dmesg); both are for debugging only.
    #[arg(long, value_name = "on|off|log", value_enum, default_value = "on")]
    pub seccomp: crate::seccomp::Mode,
    /// Print the whole start-up timeline and memory figures on stderr at the end (kite bench).
    #[arg(long, hide = true)]
    pub timeline: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Config(#[from] config::Error),
    #[error("invalid --timeout: give a positive number of seconds")]
    Timeout,
}

impl RunArgs {
    pub fn to_config(&self) -> Result<VmConfig, Error> {
        let timeout = match self.timeout {
            Some(t) if t.is_finite() && t > 0.0 => Some(Duration::from_secs_f64(t)),
            Some(_) => return Err(Error::Timeout),
            None => None,
        };
        Ok(VmConfig {
            kernel: self.kernel.clone(),
            initrd: self.initrd.clone(),
            memory: config::parse_memory(&self.memory)?,
            cpus: config::parse_cpus(&self.cpus)?,
            cmdline: self.cmdline.clone(),
            disks: self
                .disks
                .iter()
                .map(|d| config::parse_disk(d))
                .collect::<Result<_, _>>()?,
            nets: self
                .nets
                .iter()
                .map(|n| config::parse_net(n))
                .collect::<Result<_, _>>()?,
            vsock: self.vsock.as_deref().map(config::parse_vsock).transpose()?,
            rng: !self.no_rng,
            boot_timer: self.boot_timer,
            timeout,
            ring0_workarounds: self.ring0_workarounds,
            acpi: !self.no_acpi,
            seccomp: self.seccomp,
        })
    }
}
