//! One thread per vCPU: the KVM_RUN loop. Port and MMIO exits go to the buses; every other exit
//! either ends the VM with a clear reason or is ignored. The loop knows no device addresses.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use kvm_bindings::{KVM_SYSTEM_EVENT_CRASH, KVM_SYSTEM_EVENT_RESET, KVM_SYSTEM_EVENT_SHUTDOWN};
use kvm_ioctls::{VcpuExit, VcpuFd};
use vmm_sys_util::signal::{Killable, SIGRTMIN, register_signal_handler};

use crate::bus::Bus;
use crate::exit::{ExitHandle, ExitReason};

/// Signal used to kick a vCPU thread out of KVM_RUN.
fn kick_signal() -> i32 {
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
}

/// A running vCPU thread.
pub struct VcpuThread {
    pub index: u8,
    handle: JoinHandle<()>,
}

impl Vcpu {
    /// Start the thread. `started` is set to the time the first vCPU first entered the guest.
    pub fn start(self, started: Arc<std::sync::OnceLock<Instant>>) -> std::io::Result<VcpuThread> {
        let index = self.index;
        let handle = std::thread::Builder::new()
            .name(format!("vcpu{index}"))
            .spawn(move || self.run(&started))?;
        Ok(VcpuThread { index, handle })
    }

    fn run(mut self, started: &std::sync::OnceLock<Instant>) {
        let index = self.index;
        while !self.stop.load(Ordering::Acquire) {
            started.get_or_init(Instant::now);
            let reason = match self.fd.run() {
                Ok(exit) => match exit {
                    VcpuExit::IoIn(port, data) => {
                        self.pio.read(u64::from(port), data);
                        None
                    }
                    VcpuExit::IoOut(port, data) => {
                        self.pio.write(u64::from(port), data);
                        None
                    }
                    VcpuExit::MmioRead(addr, data) => {
                        self.mmio.read(addr, data);
                        None
                    }
                    VcpuExit::MmioWrite(addr, data) => {
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
                    VcpuExit::InternalError => Some(ExitReason::Fatal(self.internal_error())),
                    VcpuExit::Intr => None,
                    other => {
                        log::debug!("vCPU {index}: ignoring exit {other:?}");
                        None
                    }
                },
                Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => None,
                Err(e) => Some(ExitReason::Fatal(format!(
                    "vCPU {index}: KVM_RUN failed: {e}"
                ))),
            };
            if let Some(reason) = reason {
                self.exit.request(reason);
                return;
            }
        }
    }

    fn internal_error(&mut self) -> String {
        let index = self.index;
        // SAFETY: KVM filled the `internal` member of the union for KVM_EXIT_INTERNAL_ERROR,
        // which is the exit being handled.
        let (suberror, ndata) = unsafe {
            let internal = &self.fd.get_kvm_run().__bindgen_anon_1.internal;
            (internal.suberror, internal.ndata)
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
        format!(
            "vCPU {index}: KVM internal error, suberror {suberror} ({what}), {ndata} data words, at guest RIP {rip}"
        )
    }
}

impl VcpuThread {
    /// Stop and join: `stop` must already be set. Kicks the thread until it leaves KVM_RUN.
    pub fn join(self) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while !self.handle.is_finished() {
            if let Err(e) = self.handle.kill(kick_signal()) {
                log::debug!("kicking vCPU {}: {e}", self.index);
            }
            if Instant::now() > deadline {
                log::warn!("vCPU {} does not stop; leaving it", self.index);
                return;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        if self.handle.join().is_err() {
            log::error!("vCPU {} thread panicked", self.index);
        }
    }
}
