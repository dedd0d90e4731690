//! The boot recipe (`Vmm::new`, one linear sequence of named steps) and the run loop
//! (`Vmm::run`: vCPU threads plus the main thread's event loop until something ends the VM).

use std::path::Path;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use event_manager::{EventManager, MutEventSubscriber, SubscriberOps};
use kvm_bindings::kvm_pit_config;
use kvm_ioctls::{Cap, Kvm, VmFd};
use vmm_sys_util::eventfd::EventFd;

use crate::api::running::{RunningApi, VmHandles};
use crate::arch::x86_64::{acpi, boot, layout, mptable, regs};
use crate::bus::Bus;
use crate::config::VmConfig;
use crate::devices::boot_timer::BootTimer;
use crate::devices::i8042::I8042;
use crate::devices::manager::DeviceManager;
use crate::devices::serial::{ConsoleInput, SerialDevice};
use crate::devices::virtio::{self, BlockHandle, MmioSlots, VirtioContext};
use crate::exit::{ExitHandle, ExitReason};
use crate::machine::{Machine, Ram, boot, build};
use crate::memory::{self, GuestMem};
use crate::seccomp::{self, ThreadKind};
use crate::signals::{ExitWatcher, block_stop_signals};
use crate::snapshot;
use crate::teardown::Teardown;
use crate::vcpu::pause::PauseControl;
use crate::vcpu::probe::HaltProbe;
use crate::vcpu::profile;
use crate::vcpu::stats::ExitCounts;
use crate::vcpu::{StartGate, Vcpu, VcpuThread};

/// The event loop all device I/O runs on.
pub type EventMgr = EventManager<Arc<Mutex<dyn MutEventSubscriber + Send>>>;

/// Where Kite finds KVM; `KITE_KVM_DEVICE` overrides it (used by the tests).
pub fn kvm_device_path() -> std::path::PathBuf {
    std::env::var_os("KITE_KVM_DEVICE").map_or_else(|| "/dev/kvm".into(), Into::into)
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{} does not exist: this host has no KVM; load the kvm_intel or kvm_amd module (and enable virtualization in the firmware)", path.display())]
    KvmMissing { path: std::path::PathBuf },
    #[error("no permission to open {}: add this user to the group owning it (usually 'kvm': sudo usermod -aG kvm $USER, then log in again) or run as root", path.display())]
    KvmPermission { path: std::path::PathBuf },
    #[error("cannot open {}", path.display())]
    KvmOpen {
        path: std::path::PathBuf,
        #[source]
        source: kvm_ioctls::Error,
    },
    #[error("KVM API version is {0}, Kite needs 12")]
    KvmApiVersion(i32),
    #[error("KVM lacks {0}, which Kite needs; use a newer host kernel")]
    KvmCap(&'static str),
    #[error(
        "--cpus {asked} is more than {max}, the most this host's KVM and Kite's MP table allow"
    )]
    TooManyCpus { asked: u8, max: usize },
    #[error("KVM failed to {what}")]
    Kvm {
        what: &'static str,
        #[source]
        source: kvm_ioctls::Error,
    },
    #[error("guest memory")]
    Memory(#[from] memory::Error),
    #[error(transparent)]
    Boot(#[from] boot::Error),
    #[error("cannot build the MP table")]
    MpTable(#[from] mptable::Error),
    #[error(transparent)]
    Acpi(#[from] acpi::Error),
    #[error("cannot set up vCPU {index}")]
    Regs {
        index: u8,
        #[source]
        source: regs::Error,
    },
    #[error("cannot place device on the bus")]
    Bus(#[from] crate::bus::Error),
    #[error("{what}")]
    Io {
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("event loop failed")]
    EventLoop(#[source] event_manager::Error),
    #[error(transparent)]
    Virtio(#[from] virtio::Error),
    #[error("invalid kernel command line: {0:?}")]
    Cmdline(linux_loader::cmdline::Error),
    #[error(transparent)]
    Seccomp(#[from] seccomp::Error),
    #[error("cannot restore the snapshot: {0}")]
    Restore(String),
    #[error(transparent)]
    VmGenId(#[from] crate::devices::vmgenid::Error),
}

impl Error {
    /// 2 for problems with what the user gave us or with the host set-up, 1 otherwise.
    pub fn exit_code(&self) -> i32 {
        match self {
            Error::Kvm { .. }
            | Error::EventLoop(_)
            | Error::Io { .. }
            | Error::Bus(_)
            | Error::VmGenId(_) => 1,
            _ => 2,
        }
    }
}

pub(crate) fn kvm_err(what: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> Error {
    move |source| Error::Kvm { what, source }
}

pub(crate) fn io_err(what: &'static str) -> impl FnOnce(std::io::Error) -> Error {
    move |source| Error::Io { what, source }
}

/// Start-up milestones, for the log and for `kite bench`.
#[derive(Clone, Debug, Default)]
pub struct Timeline {
    pub marks: Vec<(&'static str, Duration)>,
}

/// What `run` reports besides the exit reason.
#[derive(Clone, Debug)]
pub struct RunReport {
    pub reason: ExitReason,
    /// The guest console's last line, for a user wondering how far the guest got.
    pub last_console_line: String,
    pub timeline: Timeline,
    pub boot_time: Option<(Duration, Duration)>,
    /// Peak RSS and guest RAM touched, measured when the vCPUs have stopped.
    pub memory: Option<memory::MemoryUsage>,
}

pub struct Vmm {
    _kvm: Kvm,
    vm: VmFd,
    mem: GuestMem,
    vcpus: Vec<Vcpu>,
    exit: Arc<ExitHandle>,
    event_manager: EventMgr,
    serial: Arc<Mutex<SerialDevice>>,
    boot_timer: Option<Arc<Mutex<BootTimer>>>,
    disks: Vec<BlockHandle>,
    /// The network interfaces, for `PATCH /network-interfaces`.
    nets: Vec<virtio::NetHandle>,
    completed: Arc<crate::vcpu::complete::Counts>,
    samples: Option<Arc<Mutex<Vec<u64>>>>,
    halt: Arc<HaltProbe>,
    pause: Arc<PauseControl>,
    exits: Arc<ExitCounts>,
    i8042: Arc<Mutex<I8042>>,
    device_counters: Vec<(String, virtio::Interrupt)>,
    /// Every device, for snapshots (and, later, the API and metrics).
    devices: DeviceManager,
    /// The machine's shape, as a snapshot records it.
    machine: snapshot::MachineState,
    /// Guest RAM is anonymous (booted), not mapped from a snapshot's memory file.
    anonymous_ram: bool,
    /// KVM logs the guest's writes to RAM (`track_dirty_pages`): diff snapshots can be made.
    track_dirty: bool,
    /// /proc/self/status, opened now for snapshots made once the seccomp filters are on.
    proc_status: Option<std::fs::File>,
    api: Option<RunningApi>,
    timeout: Option<Duration>,
    seccomp: seccomp::Mode,
    process_start: Instant,
    timeline: Timeline,
}

impl Vmm {
    /// Build the VM from `config`, top to bottom, and boot its kernel. `process_start` anchors
    /// the boot timeline.
    pub fn new(config: &VmConfig, process_start: Instant) -> Result<Vmm, Error> {
        let mut timeline = Timeline::default();
        let mut m = build(config, Ram::Fresh, process_start, &mut timeline)?;
        let cpuids = boot(&mut m, config, process_start, &mut timeline)?;
        Ok(finish(m, config, cpuids, process_start, timeline))
    }

    /// Build the machine a snapshot describes (with `overrides`), on its memory file, and give
    /// every part its saved state instead of booting a kernel. The vCPUs start parked unless
    /// `resume`.
    pub fn restore(
        state: &snapshot::SnapshotState,
        mem_file: &Path,
        overrides: &snapshot::Overrides,
        resume: bool,
        process_start: Instant,
    ) -> Result<Vmm, Error> {
        let mut timeline = Timeline::default();
        let config = state.machine.config(overrides).map_err(Error::Restore)?;
        let m = build(&config, Ram::File(mem_file), process_start, &mut timeline)?;
        state.vm.restore(&m.vm).map_err(Error::Restore)?;
        for (i, (fd, s)) in m.fds.iter().zip(&state.vcpus).enumerate() {
            crate::vcpu::state::restore(fd, s)
                .map_err(|e| Error::Restore(format!("vCPU {i}: {e}")))?;
        }
        m.devices.restore(&state.devices).map_err(Error::Restore)?;
        // The machine has a new generation ID (machine::build): tell the guest, so Linux
        // reseeds its RNG and clones of one snapshot do not share entropy.
        if let Some(genid) = &m.vmgenid {
            genid.notify(&m.vm)?;
        }
        timeline
            .marks
            .push(("state restored", process_start.elapsed()));
        let cpuids = state.vcpus.iter().map(|v| v.cpuid.clone()).collect();
        let mut vmm = finish(m, &config, cpuids, process_start, timeline);
        let ids: Vec<String> = state.machine.nets.iter().map(|n| n.0.clone()).collect();
        vmm.machine = snapshot::MachineState::of(&config, &ids);
        vmm.anonymous_ram = false;
        if !resume {
            vmm.pause.start_paused();
        }
        log::info!(
            "restored a snapshot: {} vCPUs, {} MiB of RAM from {}",
            config.cpus,
            config.memory >> 20,
            mem_file.display()
        );
        Ok(vmm)
    }

    /// Enforce the seccomp filters as `mode` says (a restored VM starts with them on).
    pub fn with_seccomp(mut self, mode: seccomp::Mode) -> Self {
        self.seccomp = mode;
        self
    }

    /// Stop the VM after `timeout`.
    pub fn with_timeout(mut self, timeout: Option<Duration>) -> Self {
        self.timeout = timeout;
        self
    }

    /// Serve the API (`--api-sock`) from the event loop while the VM runs.
    pub fn attach_api(&mut self, api: RunningApi) {
        self.api = Some(api);
    }

    /// The counters of the metrics line.
    fn counters(&self) -> crate::api::metrics::Counters {
        crate::api::metrics::Counters {
            exits: self.exits.snapshot(),
            completed: self.completed.snapshot(),
            devices: self
                .device_counters
                .iter()
                .map(|(name, irq)| (name.clone(), irq.counters()))
                .chain(
                    (self.disks.iter().enumerate()).map(|(i, d)| (format!("block{i}"), d.stats())),
                )
                .collect(),
            ..Default::default()
        }
    }

    /// Save the paused VM to `state` and `mem` (see [`snapshot::create`]).
    fn snapshot(
        &self,
        threads: &[VcpuThread],
        kind: snapshot::Kind,
        state: &Path,
        mem: &Path,
        net_ids: &[String],
    ) -> Result<snapshot::CreateReport, String> {
        let mut machine = self.machine.clone();
        for (net, id) in machine.nets.iter_mut().zip(net_ids) {
            net.0 = id.clone();
        }
        let parts = snapshot::Parts {
            vm: &self.vm,
            mem: &self.mem,
            pause: &self.pause,
            threads,
            devices: &self.devices,
            machine,
            anonymous: self.anonymous_ram,
            status: self.proc_status.as_ref(),
            track_dirty: self.track_dirty,
        };
        snapshot::create(&parts, kind, state, mem).map_err(|e| crate::error_chain(&e))
    }

    /// Run until the guest or the user ends the VM; every vCPU thread is joined on return.
    /// Run the VM to its end. With the report comes what is left of the VM, for
    /// [`Teardown::finish`] once the caller has said its last word.
    pub fn run(mut self) -> Result<(RunReport, Teardown), Error> {
        let signals = block_stop_signals().map_err(io_err("cannot set up signal handling"))?;
        let watcher = Arc::new(Mutex::new(ExitWatcher {
            exit: self.exit.clone(),
            signals,
        }));
        // While paused, only this loop runs: stop signals, exits and the API; no device work.
        let mut paused_loop = EventMgr::new().map_err(Error::EventLoop)?;
        paused_loop.add_subscriber(watcher.clone());
        self.event_manager.add_subscriber(watcher);
        if let Some(channel) = self.api.as_ref().and_then(|a| a.channel.as_ref()) {
            for mgr in [&mut self.event_manager, &mut paused_loop] {
                let waker = crate::api::Waker(channel.wake.clone());
                mgr.add_subscriber(Arc::new(Mutex::new(waker)));
            }
        }
        crate::vcpu::install_kick_handler()
            .map_err(io_err("cannot install the vCPU kick handler"))?;

        // Everything the rest of the run opens is opened now: the main thread's filter allows
        // open(2) only of disk images (PATCH /drives) and of new snapshot files.
        let usage = memory::UsageProbe::new()
            .map_err(|e| log::debug!("{e}"))
            .ok();
        let teardown_signal = crate::teardown::Signal::new()
            .map_err(|e| log::debug!("no teardown pipe: {e}"))
            .ok();
        let profile = profile::path().map(|path| {
            let file = std::fs::File::create(&path)
                .map_err(|e| {
                    log::warn!("cannot write the guest profile to {}: {e}", path.display())
                })
                .ok();
            (path, file)
        });
        let (main_filter, vcpu_filter) = seccomp_filters(self.seccomp)?;

        let first_entry = Arc::new(OnceLock::new());
        let gate = Arc::new(StartGate::new());
        if main_filter.is_none() {
            // No filters to wait for: each vCPU enters the guest as soon as it starts.
            gate.open(true);
        }
        let stop = self.vcpus.first().map(|v| v.stop.clone());
        let mut threads: Vec<VcpuThread> = Vec::new();
        for vcpu in self.vcpus.drain(..) {
            match vcpu.start(first_entry.clone(), vcpu_filter.clone(), gate.clone()) {
                Ok(t) => threads.push(t),
                Err(e) => {
                    self.exit.request(ExitReason::Fatal(format!(
                        "cannot start a vCPU thread: {e}"
                    )));
                    break;
                }
            }
        }
        // The vCPU threads install their filters before they wait at the gate; this thread
        // installs its own before opening it.
        if let Some(filter) = &main_filter
            && let Err(e) = filter.apply("main")
        {
            gate.open(false);
            threads.into_iter().for_each(VcpuThread::join);
            return Err(e.into());
        }
        gate.open(true);
        let deadline = self.timeout.map(|t| (Instant::now() + t, t));
        let mut next_sample = Instant::now();
        let mut next_probe = Instant::now() + HALT_PROBE_INTERVAL;
        let loop_result = loop {
            if let Some(mut api) = self.api.take() {
                let counters = || self.counters();
                let snapshot =
                    |kind: snapshot::Kind, state: &Path, mem: &Path, net_ids: &[String]| {
                        self.snapshot(&threads, kind, state, mem, net_ids)
                    };
                let vm = VmHandles {
                    pause: &self.pause,
                    threads: &threads,
                    exit: &self.exit,
                    i8042: &self.i8042,
                    counters: &counters,
                    snapshot: &snapshot,
                    disks: &self.disks,
                    nets: &self.nets,
                };
                api.serve(&vm);
                api.tick(&vm);
                self.api = Some(api);
            }
            let paused = self.pause.is_paused();
            if paused {
                next_probe = Instant::now() + HALT_PROBE_INTERVAL;
            }
            if self.samples.is_some() && !paused && Instant::now() >= next_sample {
                threads.iter().for_each(VcpuThread::kick);
                next_sample += profile::INTERVAL;
            }
            if Instant::now() >= next_probe {
                if self.halt.round() {
                    self.exit.request(ExitReason::GuestHalted);
                    continue;
                }
                threads.iter().for_each(VcpuThread::kick);
                next_probe = Instant::now() + HALT_PROBE_INTERVAL;
            }
            if self.exit.reason().is_some() {
                break Ok(());
            }
            if let Some((at, t)) = deadline
                && Instant::now() >= at
            {
                self.exit.request(ExitReason::Timeout(t));
                continue;
            }
            let wait = if self.samples.is_some() { 1 } else { 100 };
            let events = if paused {
                &mut paused_loop
            } else {
                &mut self.event_manager
            };
            if let Err(e) = events.run_with_timeout(wait) {
                break Err(Error::EventLoop(e));
            }
        };
        if let Some(stop) = stop {
            stop.store(true, std::sync::atomic::Ordering::Release);
        }
        self.pause.release();
        for t in threads {
            t.join();
        }
        let counters = self.counters();
        if let Some(api) = self.api.as_mut() {
            api.last_line(counters);
        }
        if let Some(summary) = self.completed.summary() {
            log::info!("{summary}");
        }
        if let (Some(samples), Some((path, Some(file)))) = (&self.samples, profile) {
            profile::write(
                file,
                &path,
                &samples.lock().unwrap_or_else(|e| e.into_inner()),
            );
        }
        // Requests already taken from a queue have completed (devices finish each one under
        // their lock); make what the guest wrote durable before Kite exits.
        for disk in &self.disks {
            if let Err(e) = disk.sync() {
                log::error!("{e}");
            }
        }
        loop_result?;
        let memory = usage.and_then(|u| u.usage(&self.mem).map_err(|e| log::debug!("{e}")).ok());

        let start = self.process_start;
        if let Some(at) = first_entry.get() {
            self.timeline
                .marks
                .push(("first guest instruction", at.duration_since(start)));
        }
        let serial = self.serial.lock().unwrap_or_else(|e| e.into_inner());
        let console = serial.uart.writer();
        if let Some(at) = console.first_byte() {
            self.timeline
                .marks
                .push(("guest's first serial byte", at.duration_since(start)));
        }
        let boot_time = self
            .boot_timer
            .as_ref()
            .and_then(|t| t.lock().unwrap_or_else(|e| e.into_inner()).boot_time());
        if let Some((wall, _)) = boot_time {
            self.timeline.marks.push(("guest ready (boot timer)", wall));
        }
        let report = RunReport {
            reason: self.exit.reason().unwrap_or(ExitReason::Fatal(
                "VM stopped for no recorded reason".into(),
            )),
            last_console_line: console.last_line(),
            timeline: self.timeline.clone(),
            boot_time,
            memory,
        };
        drop(serial);
        // Everything else in `self` (devices, disks, sockets, the event loop) is dropped, and
        // so closed, when this returns.
        Ok((report, Teardown::new(self.vm, self.mem, teardown_signal)))
    }
}

/// The [`Vmm`] of a built machine whose vCPUs have their state (`cpuids`: the CPUID table each
/// was given).
fn finish(
    m: Machine,
    config: &VmConfig,
    cpuids: Vec<Vec<kvm_bindings::kvm_cpuid_entry2>>,
    process_start: Instant,
    mut timeline: Timeline,
) -> Vmm {
    let (pio, mmio) = (Arc::new(m.pio), Arc::new(m.mmio));
    let stop = Arc::new(AtomicBool::new(false));
    let completed = Arc::new(crate::vcpu::complete::Counts::default());
    let samples = profile::path().map(|_| Arc::new(Mutex::new(Vec::new())));
    let halt = Arc::new(HaltProbe::new(config.cpus.into()));
    let pause = Arc::new(PauseControl::new());
    let exits = Arc::new(ExitCounts::default());
    let msr_indices = Arc::new(crate::vcpu::state::msr_indices(&m.kvm));
    let vcpus = (0u8..)
        .zip(m.fds.into_iter().zip(cpuids))
        .map(|(index, (fd, cpuid))| Vcpu {
            index,
            fd,
            pio: pio.clone(),
            mmio: mmio.clone(),
            exit: m.exit.clone(),
            stop: stop.clone(),
            completed: completed.clone(),
            samples: samples.clone(),
            halt: halt.clone(),
            pause: pause.clone(),
            exits: exits.clone(),
            cpuid,
            msr_indices: msr_indices.clone(),
        })
        .collect();
    timeline
        .marks
        .push(("vCPUs configured", process_start.elapsed()));
    for (name, at) in &timeline.marks {
        log::info!("{:>8.1} ms  {name}", at.as_secs_f64() * 1e3);
    }
    Vmm {
        _kvm: m.kvm,
        vm: m.vm,
        mem: m.mem,
        vcpus,
        exit: m.exit,
        event_manager: m.event_manager,
        serial: m.serial,
        boot_timer: m.boot_timer,
        disks: m.disks,
        nets: m.nets,
        completed,
        samples,
        halt,
        pause,
        exits,
        i8042: m.i8042,
        device_counters: m.device_counters,
        devices: m.devices,
        machine: snapshot::MachineState::of(config, &[]),
        anonymous_ram: true,
        track_dirty: config.track_dirty_pages,
        proc_status: std::fs::File::open("/proc/self/status").ok(),
        api: None,
        timeout: config.timeout,
        seccomp: config.seccomp,
        process_start,
        timeline,
    }
}

/// The main thread's filter and the vCPU threads' (shared by them).
type ThreadFilters = (Option<seccomp::Filter>, Option<Arc<seccomp::Filter>>);

/// The filters for `mode`, built, with the SIGSYS handler installed; none with `--seccomp off`,
/// which is said loudly (as is `log`).
fn seccomp_filters(mode: seccomp::Mode) -> Result<ThreadFilters, Error> {
    match mode {
        seccomp::Mode::On => {}
        seccomp::Mode::Off => log::warn!(
            "--seccomp off: NO system-call filters; the threads that face the guest may make any system call Kite's user may. For debugging only"
        ),
        seccomp::Mode::Log => log::warn!(
            "--seccomp log: system calls outside the filters are allowed, and logged by the kernel (dmesg or the audit log), not stopped. For debugging only"
        ),
    }
    let main = seccomp::Filter::new(ThreadKind::Main, mode)?;
    let vcpu = seccomp::Filter::new(ThreadKind::Vcpu, mode)?;
    if main.is_some() {
        seccomp::sigsys::install_handler()?;
        log::debug!(
            "seccomp: the main thread may make {} system calls, each vCPU thread {}",
            ThreadKind::Main.syscall_count(),
            ThreadKind::Vcpu.syscall_count()
        );
    }
    Ok((main, vcpu.map(Arc::new)))
}

/// How often the event loop asks whether every vCPU has stopped for good (see
/// `vcpu::probe`): a halted guest ends within two to three of these.
const HALT_PROBE_INTERVAL: Duration = Duration::from_millis(250);

pub(crate) fn open_kvm(path: &Path) -> Result<Kvm, Error> {
    use std::os::unix::ffi::OsStrExt;
    let c_path =
        std::ffi::CString::new(path.as_os_str().as_bytes()).map_err(|_| Error::KvmMissing {
            path: path.to_owned(),
        })?;
    Kvm::new_with_path(c_path).map_err(|source| match source.errno() {
        libc::ENOENT => Error::KvmMissing {
            path: path.to_owned(),
        },
        libc::EACCES | libc::EPERM => Error::KvmPermission {
            path: path.to_owned(),
        },
        _ => Error::KvmOpen {
            path: path.to_owned(),
            source,
        },
    })
}

pub(crate) fn check_kvm(kvm: &Kvm, cpus: u8) -> Result<(), Error> {
    let version = kvm.get_api_version();
    if version != 12 {
        return Err(Error::KvmApiVersion(version));
    }
    let needed = [
        (Cap::Irqchip, "KVM_CAP_IRQCHIP"),
        (Cap::UserMemory, "KVM_CAP_USER_MEMORY"),
        (Cap::SetTssAddr, "KVM_CAP_SET_TSS_ADDR"),
        (Cap::Pit2, "KVM_CAP_PIT2"),
        (Cap::PitState2, "KVM_CAP_PIT_STATE2"),
        (Cap::ExtCpuid, "KVM_CAP_EXT_CPUID"),
        (Cap::Irqfd, "KVM_CAP_IRQFD"),
        (Cap::Ioeventfd, "KVM_CAP_IOEVENTFD"),
    ];
    if let Some((_, name)) = needed.iter().find(|(cap, _)| !kvm.check_extension(*cap)) {
        return Err(Error::KvmCap(name));
    }
    check_cpus(cpus, kvm.get_max_vcpus())
}

/// `cpus` vCPUs are allowed if both KVM (`kvm_max`, its KVM_CAP_MAX_VCPUS) and the MP table
/// ([`mptable::MAX_CPUS`]) allow that many.
fn check_cpus(cpus: u8, kvm_max: usize) -> Result<(), Error> {
    let max = kvm_max.min(mptable::MAX_CPUS.into());
    if usize::from(cpus) > max {
        return Err(Error::TooManyCpus { asked: cpus, max });
    }
    Ok(())
}

pub(crate) fn setup_irqchip(vm: &VmFd) -> Result<(), Error> {
    vm.set_tss_address(layout::KVM_TSS_ADDR)
        .map_err(kvm_err("set the TSS address"))?;
    vm.create_irq_chip()
        .map_err(kvm_err("create the in-kernel irqchip"))?;
    // KVM_PIT_SPEAKER_DUMMY: the PC speaker port is emulated (as silence) in the kernel.
    let pit = kvm_pit_config {
        flags: kvm_bindings::KVM_PIT_SPEAKER_DUMMY,
        ..Default::default()
    };
    vm.create_pit2(pit)
        .map_err(kvm_err("create the in-kernel PIT"))?;
    Ok(())
}

pub(crate) fn load_initrd(
    mem: &GuestMem,
    path: &Path,
    kernel: &boot::LoadedKernel,
) -> Result<(vm_memory::GuestAddress, u64), Error> {
    let (addr, size) = boot::load_initrd(mem, path, kernel)?;
    log::info!(
        "initrd {} at {:#x}-{:#x} ({} KiB)",
        path.display(),
        addr.0,
        addr.0 + size,
        size >> 10
    );
    Ok((addr, size))
}

/// The disks, where each virtio device sits, each one's counters, the devices, and the network
/// interfaces.
type Attached = (
    Vec<BlockHandle>,
    Vec<virtio::Placement>,
    Vec<(String, virtio::Interrupt)>,
    Vec<virtio::Attached>,
    Vec<virtio::NetHandle>,
);

/// Disks first (so the guest names them vda, vdb, ... in order), then the entropy device, then
/// network interfaces and vsock.
pub(crate) fn attach_virtio(
    config: &VmConfig,
    vm: &VmFd,
    mem: &GuestMem,
    mmio: &mut Bus,
    event_manager: &mut EventMgr,
) -> Result<Attached, Error> {
    let mut slots = MmioSlots::new();
    let mut ctx = VirtioContext {
        vm,
        mem,
        mmio_bus: mmio,
        event_manager,
        cmdline: None,
        slots: &mut slots,
        placed: Vec::new(),
        counters: Vec::new(),
        attached: Vec::new(),
    };
    let mut disks = Vec::new();
    for disk in &config.disks {
        let handle = virtio::attach_block(&mut ctx, disk)?;
        log::info!(
            "virtio-blk {}{} at {:#x}, IRQ {}",
            disk.path.display(),
            if disk.readonly { " (readonly)" } else { "" },
            handle.placement.addr,
            handle.placement.irq
        );
        disks.push(handle);
    }
    if config.rng {
        let at = virtio::attach_rng(&mut ctx, config.rng_rate_limit)?;
        log::info!("virtio-rng at {:#x}, IRQ {}", at.addr, at.irq);
    }
    let mut nets = Vec::new();
    for net in &config.nets {
        let handle = virtio::attach_net(&mut ctx, net)?;
        let at = handle.placement;
        nets.push(handle);
        let mac = net.mac.map(|b| format!("{b:02x}")).join(":");
        log::info!(
            "virtio-net on tap {} (MAC {mac}) at {:#x}, IRQ {}",
            net.tap,
            at.addr,
            at.irq
        );
    }
    if let Some(vsock) = &config.vsock {
        let at = virtio::attach_vsock(&mut ctx, vsock)?;
        log::info!(
            "virtio-vsock CID {} on {} at {:#x}, IRQ {}",
            vsock.cid,
            vsock.socket.display(),
            at.addr,
            at.irq
        );
    }
    Ok((disks, ctx.placed, ctx.counters, ctx.attached, nets))
}

/// The i8042 at ports 0x60-0x64, its keyboard on IRQ 1.
pub(crate) fn add_i8042(
    vm: &VmFd,
    pio: &mut Bus,
    exit: Arc<ExitHandle>,
) -> Result<Arc<Mutex<I8042>>, Error> {
    let irq = EventFd::new(libc::EFD_NONBLOCK).map_err(io_err("cannot create the i8042 irqfd"))?;
    vm.register_irqfd(&irq, layout::KEYBOARD_IRQ)
        .map_err(kvm_err("register the i8042 irqfd"))?;
    let dev = Arc::new(Mutex::new(I8042::new(exit, Some(irq))));
    pio.insert(dev.clone(), layout::I8042_PORT, layout::I8042_PORT_LEN)?;
    Ok(dev)
}

pub(crate) fn add_serial(
    vm: &VmFd,
    pio: &mut Bus,
    event_manager: &mut EventMgr,
) -> Result<Arc<Mutex<SerialDevice>>, Error> {
    let irq = EventFd::new(libc::EFD_NONBLOCK).map_err(io_err("cannot create the serial irqfd"))?;
    vm.register_irqfd(&irq, layout::SERIAL_IRQ)
        .map_err(kvm_err("register the serial irqfd"))?;
    let (dev, drained) = SerialDevice::new(irq, Box::new(std::io::stdout()))
        .map_err(io_err("cannot create the serial port"))?;
    let serial = Arc::new(Mutex::new(dev));
    pio.insert(serial.clone(), layout::SERIAL_PORT, layout::SERIAL_PORT_LEN)?;
    event_manager.add_subscriber(Arc::new(Mutex::new(ConsoleInput::new(
        serial.clone(),
        libc::STDIN_FILENO,
        drained,
    ))));
    Ok(serial)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpus_up_to_the_mp_table_limit_when_kvm_allows_more() {
        for cpus in [1, 37, 38, 64, 254] {
            assert!(check_cpus(cpus, 1024).is_ok(), "{cpus}");
        }
        let err = check_cpus(255, 1024).unwrap_err();
        assert!(matches!(
            err,
            Error::TooManyCpus {
                asked: 255,
                max: 254
            }
        ));
        assert_eq!(
            err.to_string(),
            "--cpus 255 is more than 254, the most this host's KVM and Kite's MP table allow"
        );
    }

    #[test]
    fn cpus_up_to_kvm_limit_when_lower() {
        assert!(check_cpus(2, 2).is_ok());
        assert!(matches!(
            check_cpus(3, 2),
            Err(Error::TooManyCpus { asked: 3, max: 2 })
        ));
        assert!(check_cpus(200, 240).is_ok());
        assert!(matches!(
            check_cpus(241, 240),
            Err(Error::TooManyCpus {
                asked: 241,
                max: 240
            })
        ));
    }
}
