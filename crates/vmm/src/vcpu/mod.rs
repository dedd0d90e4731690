//! One thread per vCPU: the KVM_RUN loop. Port and MMIO exits go to the buses; an instruction
//! the host's KVM could not emulate is completed if it is in [`complete`]'s table; every other
//! exit either ends the VM with a clear reason or is ignored. The loop knows no device
//! addresses.

pub mod complete;
pub mod pause;
pub mod probe;
pub mod profile;
pub mod setup;
pub mod state;
pub mod stats;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use kvm_bindings::{KVM_SYSTEM_EVENT_CRASH, KVM_SYSTEM_EVENT_RESET, KVM_SYSTEM_EVENT_SHUTDOWN};
use kvm_ioctls::{VcpuExit, VcpuFd};
use vmm_sys_util::signal::{Killable, SIGRTMIN, register_signal_handler};

use crate::bus::Bus;
use crate::exit::{ExitHandle, ExitReason};
use crate::seccomp;
use complete::{Completion, Counts};

/// Signal used to kick a vCPU thread out of KVM_RUN.
pub(crate) fn kick_signal() -> i32 {
    SIGRTMIN()
}

extern "C" fn on_kick(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {}

/// Install the no-op handler for the kick signal (once per process, before vCPUs start), so
/// that the signal interrupts KVM_RUN with EINTR instead of killing the process.
pub fn install_kick_handler() -> std::io::Result<()> {
    register_signal_handler(kick_signal(), on_kick)
        .map_err(|e| std::io::Error::from_raw_os_error(e.errno()))
}

/// Everything a vCPU thread needs.
pub struct Vcpu {
    pub index: u8,
    pub fd: VcpuFd,
    pub pio: Arc<Bus>,
    pub mmio: Arc<Bus>,
    pub exit: Arc<ExitHandle>,
    pub stop: Arc<AtomicBool>,
    /// Instructions completed for the host's KVM, shared by all vCPUs.
    pub completed: Arc<Counts>,
    /// The event loop's question "are you stopped for good?", answered after a kick.
    pub halt: Arc<probe::HaltProbe>,
    /// Guest RIPs seen when a kick interrupted KVM_RUN (`KITE_GUEST_PROFILE`).
    pub samples: Option<Arc<std::sync::Mutex<Vec<u64>>>>,
    /// Where the vCPU parks while the VM is paused.
    pub pause: Arc<pause::PauseControl>,
    /// Exits handled, by kind (shared by all vCPUs).
    pub exits: Arc<stats::ExitCounts>,
    /// The CPUID table Kite set (what a snapshot keeps).
    pub cpuid: Vec<kvm_bindings::kvm_cpuid_entry2>,
    /// What the thread sets before the guest runs.
    pub setup: setup::Setup,
    /// The MSRs a snapshot saves ([`state::msr_indices`]).
    pub msr_indices: Arc<Vec<u32>>,
}

/// A running vCPU thread.
pub struct VcpuThread {
    pub index: u8,
    handle: JoinHandle<()>,
    requests: std::sync::mpsc::Sender<state::Request>,
}

/// Holds the vCPU threads back until every vCPU is set up and the main thread has installed
/// its own seccomp filter, so that no guest instruction runs before every vCPU has its state
/// and every thread is filtered.
#[derive(Debug, Default)]
pub struct StartGate {
    /// None while closed; then whether the vCPUs may run.
    go: Mutex<Option<bool>>,
    opened: Condvar,
}

impl StartGate {
    pub fn new() -> Self {
        Self::default()
    }

    /// Let the vCPU threads run (`go`), or end without running the guest (`!go`).
    pub fn open(&self, go: bool) {
        *self.go.lock().unwrap_or_else(|e| e.into_inner()) = Some(go);
        self.opened.notify_all();
    }

    /// Wait until the gate opens; whether to run.
    fn wait(&self) -> bool {
        let mut go = self.go.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            if let Some(go) = *go {
                return go;
            }
            go = self.opened.wait(go).unwrap_or_else(|e| e.into_inner());
        }
    }
}

impl Vcpu {
    /// Start the thread. It sets the vCPU up ([`setup::apply`]) and says so on `ready` (by then the thread
    /// bears its name: std names it before it runs), then
    /// installs `filter` (if any), waits at `gate`, then runs the guest; `started` is set to
    /// the time the first vCPU first entered the guest.
    pub fn start(
        self,
        ready: std::sync::mpsc::Sender<Result<(), setup::Error>>,
        started: Arc<std::sync::OnceLock<Instant>>,
        filter: Option<Arc<seccomp::Filter>>,
        gate: Arc<StartGate>,
    ) -> std::io::Result<VcpuThread> {
        let index = self.index;
        // Firecracker's name: Kata pins vCPUs by it (`fc_vcpu N` in /proc/<pid>/task/*/comm).
        let name = format!("fc_vcpu {index}");
        let (requests, inbox) = std::sync::mpsc::channel();
        let handle = std::thread::Builder::new()
            .name(name.clone())
            .spawn(move || {
                let set_up = setup::apply(&self.fd, index, &self.setup);
                let failed = set_up.is_err();
                // The main thread waits for every vCPU's answer before it opens the gate.
                let _ = ready.send(set_up);
                if failed {
                    return;
                }
                if let Some(filter) = filter
                    && let Err(e) = filter.apply(&name)
                {
                    self.exit.request(ExitReason::Fatal(format!(
                        "vCPU {index}: {}",
                        crate::error_chain(&e)
                    )));
                    return;
                }
                if gate.wait() {
                    self.run(&started, &inbox);
                }
            })?;
        Ok(VcpuThread {
            index,
            handle,
            requests,
        })
    }

    /// Answer the messages waiting (the thread is parked).
    #[inline(never)]
    fn serve(&mut self, inbox: &std::sync::mpsc::Receiver<state::Request>) {
        while let Ok(request) = inbox.try_recv() {
            match request {
                state::Request::Save(reply) => {
                    let saved = state::save(&mut self.fd, &self.cpuid, &self.msr_indices);
                    let _ = reply.send(saved);
                }
            }
        }
    }

    fn run(
        mut self,
        started: &std::sync::OnceLock<Instant>,
        inbox: &std::sync::mpsc::Receiver<state::Request>,
    ) {
        let index = self.index;
        let exits = self.exits.clone();
        let count = |c: &std::sync::atomic::AtomicU64| stats::ExitCounts::add(c);
        while !self.stop.load(Ordering::Acquire) {
            if self.pause.requested() {
                // Parked between two KVM_RUNs: the last exit has been handled in full.
                let pause = self.pause.clone();
                pause.park_with(&mut || self.serve(inbox));
                if self.stop.load(Ordering::Acquire) {
                    break;
                }
            }
            started.get_or_init(Instant::now);
            let reason = match self.fd.run() {
                Ok(exit) => match exit {
                    VcpuExit::IoIn(port, data) => {
                        count(&exits.io_in);
                        self.pio.read(u64::from(port), data);
                        None
                    }
                    VcpuExit::IoOut(port, data) => {
                        count(&exits.io_out);
                        self.pio.write(u64::from(port), data);
                        None
                    }
                    VcpuExit::MmioRead(addr, data) => {
                        count(&exits.mmio_read);
                        self.mmio.read(addr, data);
                        None
                    }
                    VcpuExit::MmioWrite(addr, data) => {
                        count(&exits.mmio_write);
                        self.mmio.write(addr, data);
                        None
                    }
                    VcpuExit::Hlt => {
                        Some(ExitReason::Fatal(format!("vCPU {index} halted (HLT exit)")))
                    }
                    VcpuExit::Shutdown => Some(ExitReason::Fatal(format!(
                        "vCPU {index}: guest triple fault (KVM_EXIT_SHUTDOWN)"
                    ))),
                    VcpuExit::SystemEvent(kind, _) => Some(match kind {
                        KVM_SYSTEM_EVENT_SHUTDOWN => ExitReason::GuestPowerOff,
                        KVM_SYSTEM_EVENT_RESET => ExitReason::GuestReset,
                        KVM_SYSTEM_EVENT_CRASH => {
                            ExitReason::Fatal(format!("vCPU {index}: guest crashed"))
                        }
                        other => {
                            ExitReason::Fatal(format!("vCPU {index}: unknown system event {other}"))
                        }
                    }),
                    VcpuExit::FailEntry(reason, cpu) => Some(ExitReason::Fatal(format!(
                        "vCPU {index}: KVM could not enter the guest (hardware entry failure reason {reason:#x} on host CPU {cpu})"
                    ))),
                    VcpuExit::InternalError => {
                        count(&exits.internal_error);
                        self.internal_error().err().map(ExitReason::Fatal)
                    }
                    VcpuExit::Intr => {
                        count(&exits.interrupted);
                        self.on_kick();
                        None
                    }
                    other => {
                        count(&exits.other);
                        log::debug!("vCPU {index}: ignoring exit {other:?}");
                        None
                    }
                },
                Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {
                    count(&exits.interrupted);
                    self.on_kick();
                    None
                }
                Err(e) => Some(ExitReason::Fatal(format!(
                    "vCPU {index}: KVM_RUN failed: {e}"
                ))),
            };
            if let Some(reason) = reason {
                self.exit.request(reason);
                return;
            }
        }
        if matches!(self.exit.reason(), Some(ExitReason::Timeout(_))) {
            self.log_state();
        }
    }

    /// Out of KVM_RUN on a kick: answer the halt probe, record the RIP when profiling.
    fn on_kick(&self) {
        let index = usize::from(self.index);
        if self.halt.asked(index) {
            let stopped = match (self.fd.get_mp_state(), self.fd.get_regs()) {
                (Ok(mp), Ok(regs)) => probe::stopped_for_good(mp.mp_state, regs.rflags),
                _ => false,
            };
            self.halt.answer(index, stopped);
        }
        if let Some(samples) = &self.samples
            && let Ok(regs) = self.fd.get_regs()
        {
            samples
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(regs.rip);
        }
    }

    /// At debug level, where this vCPU was when the VM was stopped (for a guest that hangs).
    #[inline(never)]
    fn log_state(&self) {
        if !log::log_enabled!(log::Level::Debug) {
            return;
        }
        let mp = self
            .fd
            .get_mp_state()
            .map(|m| m.mp_state.to_string())
            .unwrap_or_else(|e| e.to_string());
        let (rip, rax) = self
            .fd
            .get_regs()
            .map(|r| (format!("{:#x}", r.rip), format!("{:#x}", r.rax)))
            .unwrap_or_else(|e| (e.to_string(), String::new()));
        let (cs, cr0) = self
            .fd
            .get_sregs()
            .map(|s| (format!("{:#x}", s.cs.selector), format!("{:#x}", s.cr0)))
            .unwrap_or_else(|e| (e.to_string(), String::new()));
        log::debug!(
            "vCPU {} at stop: mp_state {mp}, RIP {rip}, CS {cs}, CR0 {cr0}, RAX {rax}",
            self.index
        );
    }

    /// Complete the instruction KVM could not emulate, if Kite knows it; else the one-line
    /// reason the VM ends.
    #[inline(never)]
    fn internal_error(&mut self) -> Result<(), String> {
        let index = self.index;
        // SAFETY: KVM filled the `internal` member of the union for KVM_EXIT_INTERNAL_ERROR,
        // which is the exit being handled.
        let (suberror, ndata, data) = unsafe {
            let internal = &self.fd.get_kvm_run().__bindgen_anon_1.internal;
            (internal.suberror, internal.ndata, internal.data)
        };
        let insn = complete::instruction_bytes(suberror, ndata, &data);
        let why_not = match insn {
            Ok(insn) => match Completion::lookup(insn.as_slice()) {
                Some(c) => match self.complete(c) {
                    Ok(()) => {
                        self.completed.add(c);
                        return Ok(());
                    }
                    Err(e) => format!("; {} not completed: {e}", c.name()),
                },
                None => format!(
                    "; instruction bytes {} (not one Kite completes)",
                    insn.hex()
                ),
            },
            Err(complete::NoBytes::NotEmulation) => String::new(),
            Err(e) => format!("; {e}"),
        };
        let what = match suberror {
            1 => "emulation failure",
            2 => "simultaneous exception",
            3 => "delivery event",
            4 => "unexpected exit reason",
            _ => "unknown",
        };
        let rip = match self.fd.get_regs() {
            Ok(regs) => format!("{:#x}", regs.rip),
            Err(e) => format!("unknown ({e})"),
        };
        Err(format!(
            "vCPU {index}: KVM internal error, suberror {suberror} ({what}), {ndata} data words, at guest RIP {rip}{why_not}"
        ))
    }

    /// Finish `c` on this vCPU: step over it, drop the exception KVM queued for it, and
    /// inject the one the instruction raises, if any.
    #[inline(never)]
    fn complete(&mut self, c: Completion) -> Result<(), String> {
        let fd = &self.fd;
        let fsw = match c {
            Completion::Fwait => fd.get_fpu().map_err(|e| format!("KVM_GET_FPU: {e}"))?.fsw,
            Completion::Int3 => 0,
        };
        let sregs = fd.get_sregs().map_err(|e| format!("KVM_GET_SREGS: {e}"))?;
        let action = c.action(fsw, sregs.cr0)?;
        let mut regs = fd.get_regs().map_err(|e| format!("KVM_GET_REGS: {e}"))?;
        let mut events = fd
            .get_vcpu_events()
            .map_err(|e| format!("KVM_GET_VCPU_EVENTS: {e}"))?;
        regs.rip = regs.rip.wrapping_add(action.advance);
        events.exception.injected = 0;
        events.exception.pending = 0;
        events.exception.has_error_code = 0;
        events.exception.error_code = 0;
        if let Some(vector) = action.inject {
            events.exception.injected = 1;
            events.exception.nr = vector;
        }
        fd.set_regs(&regs)
            .map_err(|e| format!("KVM_SET_REGS: {e}"))?;
        fd.set_vcpu_events(&events)
            .map_err(|e| format!("KVM_SET_VCPU_EVENTS: {e}"))?;
        log::debug!(
            "vCPU {}: completed {} for the host's KVM",
            self.index,
            c.name()
        );
        Ok(())
    }
}

impl VcpuThread {
    /// Ask the (parked) vCPU for its state: the reply comes on the returned channel once the
    /// thread has been woken with [`pause::PauseControl::post`].
    pub fn request_state(&self) -> std::sync::mpsc::Receiver<Result<state::VcpuState, String>> {
        let (tx, rx) = std::sync::mpsc::channel();
        if self.requests.send(state::Request::Save(tx)).is_err() {
            log::debug!("vCPU {} has stopped: no state", self.index);
        }
        rx
    }

    /// Interrupt KVM_RUN once (the thread goes straight back in).
    pub fn kick(&self) {
        let _ = self.handle.kill(kick_signal());
    }
}

/// Stop and join every thread of `threads`: `stop` must already be set. All are kicked at
/// once, and again every millisecond while any is still in KVM_RUN (a kick that lands between
/// a thread's look at `stop` and its KVM_RUN is lost), so that 32 vCPUs stop in about the time
/// one does, not one after the other.
pub fn join_all(mut threads: Vec<VcpuThread>) {
    const KICK_AGAIN: Duration = Duration::from_millis(1);
    const POLL: Duration = Duration::from_micros(50);
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut next_kick = Instant::now();
    loop {
        let now = Instant::now();
        let (done, running): (Vec<_>, Vec<_>) =
            threads.into_iter().partition(|t| t.handle.is_finished());
        for t in done {
            if t.handle.join().is_err() {
                log::error!("vCPU {} thread panicked", t.index);
            }
        }
        threads = running;
        if threads.is_empty() {
            return;
        }
        if now > deadline {
            for t in &threads {
                log::warn!("vCPU {} does not stop; leaving it", t.index);
            }
            return;
        }
        if now >= next_kick {
            for t in &threads {
                if let Err(e) = t.handle.kill(kick_signal()) {
                    log::debug!("kicking vCPU {}: {e}", t.index);
                }
            }
            next_kick = now + KICK_AGAIN;
        }
        std::thread::sleep(POLL);
    }
}
