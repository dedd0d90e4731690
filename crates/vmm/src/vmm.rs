//! The boot recipe (`Vmm::new`, one linear sequence of named steps) and the run loop
//! (`Vmm::run`: vCPU threads plus the main thread's event loop until something ends the VM).

use std::path::Path;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use event_manager::{EventManager, MutEventSubscriber, SubscriberOps};
use kvm_ioctls::{Kvm, VmFd};

use crate::api::running::{RunningApi, VmHandles};
use crate::arch::x86_64::{acpi, boot, mptable, regs};
use crate::config::VmConfig;
use crate::devices::boot_timer::BootTimer;
use crate::devices::i8042::I8042;
use crate::devices::manager::DeviceManager;
use crate::devices::serial::SerialDevice;
use crate::devices::virtio::{self, BlockHandle};
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
use crate::vcpu::setup::{self, Setup};
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
    #[error(transparent)]
    VcpuSetup(#[from] setup::Error),
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
            Error::VcpuSetup(e) => e.exit_code(),
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
    /// Restored on the Uffd backend: the userfaultfd and the handler's connection, kept until
    /// the VM has stopped.
    _uffd: Option<snapshot::uffd::Backend>,
    /// KVM logs the guest's writes to RAM (`track_dirty_pages`): diff snapshots can be made.
    track_dirty: bool,
    /// /proc/self/status, opened now for snapshots made once the seccomp filters are on.
    proc_status: Option<std::fs::File>,
    api: Option<RunningApi>,
    /// Called once every vCPU thread exists and bears its name (the API's answer to
    /// `InstanceStart`: Firecracker answers only after its vCPU threads are up).
    on_running: Option<Box<dyn FnOnce() + Send>>,
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
        // A kernel that cannot read ACPI tables finds its devices on the command line only.
        // Opened once: its symbols are read here and `boot` loads it (a kernel that cannot be
        // opened here is reported by `boot`, as without ACPI).
        let mut kernel_file = match config.acpi {
            true => std::fs::File::open(&config.kernel).ok(),
            false => None,
        };
        let without_acpi;
        let config = if kernel_file
            .as_mut()
            .is_some_and(crate::arch::x86_64::elf_acpi::lacks_acpi)
        {
            log::info!(
                "the kernel's symbol table names nothing ACPI: no ACPI tables, the virtio devices are named on the command line (as with --no-acpi)"
            );
            without_acpi = VmConfig {
                acpi: false,
                ..config.clone()
            };
            &without_acpi
        } else {
            config
        };
        let mut m = build(config, Ram::Fresh, process_start, &mut timeline)?;
        let setups = boot(&mut m, config, kernel_file, process_start, &mut timeline)?;
        Ok(finish(m, config, setups, process_start, timeline))
    }

    /// Build the machine a snapshot describes (with `overrides`), on its memory file or a
    /// page-fault handler (`mem`), and give every part its saved state instead of booting a
    /// kernel. The vCPUs start parked unless `resume`.
    pub fn restore(
        state: &snapshot::SnapshotState,
        mem: &snapshot::MemBackend,
        overrides: &snapshot::Overrides,
        resume: bool,
        process_start: Instant,
    ) -> Result<Vmm, Error> {
        let mut timeline = Timeline::default();
        let config = state.machine.config(overrides).map_err(Error::Restore)?;
        let ram = match mem {
            snapshot::MemBackend::File(path) => Ram::File(path),
            snapshot::MemBackend::Uffd(socket) => Ram::Uffd(socket),
        };
        let m = build(&config, ram, process_start, &mut timeline)?;
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
        let setups = (state.vcpus.iter())
            .map(|v| Setup::Done {
                cpuid: v.cpuid.clone(),
            })
            .collect();
        let mut vmm = finish(m, &config, setups, process_start, timeline);
        let ids: Vec<String> = state.machine.nets.iter().map(|n| n.0.clone()).collect();
        vmm.machine = snapshot::MachineState::of(&config, &ids);
        // Not for Uffd either: a page the handler has not served yet is not resident, yet not
        // zero (a Full snapshot reads every page, which the handler serves).
        vmm.anonymous_ram = false;
        if !resume {
            vmm.pause.start_paused();
        }
        log::info!(
            "restored a snapshot: {} vCPUs, {} MiB of RAM from {}",
            config.cpus,
            config.memory >> 20,
            mem
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

    /// Call `f` from [`Vmm::run`] once every vCPU thread has started under its name
    /// (`fc_vcpu N`), before the first event-loop turn.
    pub fn on_running(&mut self, f: impl FnOnce() + Send + 'static) {
        self.on_running = Some(Box::new(f));
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
            nets: (self.nets.iter().enumerate())
                .map(|(i, n)| (format!("eth{i}"), n.stats()))
                .collect(),
            device_events: crate::devices::virtio::device_events(),
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
        layout: &crate::api::types::FullConfig,
    ) -> Result<snapshot::CreateReport, String> {
        let mut machine = self.machine.clone();
        let ids = layout.network_interfaces.iter().map(|n| &n.iface_id);
        for (net, id) in machine.nets.iter_mut().zip(ids) {
            net.0 = id.clone();
        }
        // The files the disks read now (`PATCH /drives` may have changed them).
        for (disk, handle) in machine.disks.iter_mut().zip(&self.disks) {
            (disk.path, disk.io_engine) = handle.backing();
        }
        // Logger and metrics belong to the process, not to the VM.
        let layout = crate::api::types::FullConfig {
            logger: None,
            metrics: None,
            ..layout.clone()
        };
        machine.layout = Some(serde_json::to_string(&layout).map_err(|e| e.to_string())?);
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
        let stop = self.vcpus.first().map(|v| v.stop.clone());
        // Each vCPU thread sets its vCPU up itself, in parallel with the others, and answers
        // here before it may run.
        let (ready, answers) = std::sync::mpsc::channel();
        let mut threads: Vec<VcpuThread> = Vec::new();
        for vcpu in self.vcpus.drain(..) {
            let started = first_entry.clone();
            match vcpu.start(ready.clone(), started, vcpu_filter.clone(), gate.clone()) {
                Ok(t) => threads.push(t),
                Err(e) => {
                    self.exit.request(ExitReason::Fatal(format!(
                        "cannot start a vCPU thread: {e}"
                    )));
                    break;
                }
            }
        }
        drop(ready);
        let set_up = (0..threads.len())
            .map(|_| answers.recv().unwrap_or(Ok(())))
            .find(Result::is_err)
            .unwrap_or(Ok(()));
        self.timeline
            .marks
            .push(("vCPUs configured", self.process_start.elapsed()));
        // The vCPU threads install their filters before they wait at the gate; this thread
        // installs its own before opening it.
        let filtered = match (set_up, &main_filter) {
            (Err(e), _) => Err(Error::from(e)),
            (Ok(()), Some(filter)) => filter.apply("main").map_err(Error::from),
            (Ok(()), None) => Ok(()),
        };
        if let Err(e) = filtered {
            gate.open(false);
            crate::vcpu::join_all(threads);
            return Err(e);
        }
        gate.open(true);
        // Every vCPU thread has answered on `ready`, so each runs under its name: the API may
        // now answer InstanceStart (or the load), as Firecracker answers after starting them.
        if let Some(f) = self.on_running.take() {
            f();
        }
        let deadline = self.timeout.map(|t| (Instant::now() + t, t));
        let mut next_sample = Instant::now();
        let mut next_probe = Instant::now() + HALT_PROBE_INTERVAL;
        let loop_result = loop {
            if let Some(mut api) = self.api.take() {
                let counters = || self.counters();
                let snapshot =
                    |kind: snapshot::Kind,
                     state: &Path,
                     mem: &Path,
                     layout: &crate::api::types::FullConfig| {
                        self.snapshot(&threads, kind, state, mem, layout)
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
        crate::vcpu::join_all(threads);
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

/// The [`Vmm`] of a built machine, with what each vCPU's thread sets before it runs.
#[inline(never)]
fn finish(
    m: Machine,
    config: &VmConfig,
    setups: Vec<Setup>,
    process_start: Instant,
    timeline: Timeline,
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
        .zip(m.fds.into_iter().zip(setups))
        .map(|(index, (fd, setup))| Vcpu {
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
            cpuid: setup.cpuid().to_vec(),
            setup,
            msr_indices: msr_indices.clone(),
        })
        .collect();
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
        _uffd: m.uffd,
        track_dirty: config.track_dirty_pages,
        proc_status: std::fs::File::open("/proc/self/status").ok(),
        api: None,
        on_running: None,
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
