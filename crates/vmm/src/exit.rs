//! Why the VM ended, and the handle every thread uses to end it.
//!
//! The first reason given wins; later ones (other vCPUs failing as the VM is torn down) are
//! ignored. Requesting an exit wakes the main thread's event loop through an eventfd.

use std::sync::Mutex;
use std::time::Duration;

use vmm_sys_util::eventfd::EventFd;

/// Why the VM stopped.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ExitReason {
    /// The guest reset the machine (i8042 reset line, or a KVM reset event): a normal end.
    GuestReset,
    /// The guest powered off: a normal end.
    GuestPowerOff,
    /// Every vCPU stopped for good (halted with interrupts masked): how a guest without ACPI
    /// powers off or halts. A normal end.
    GuestHalted,
    /// A signal asked Kite to stop.
    Signal(i32),
    /// `--timeout` elapsed.
    Timeout(Duration),
    /// The VM cannot go on (guest crash, KVM error, device failure).
    Fatal(String),
}

impl ExitReason {
    /// The process exit code for this reason.
    pub fn exit_code(&self) -> i32 {
        match self {
            ExitReason::GuestReset | ExitReason::GuestPowerOff | ExitReason::GuestHalted => 0,
            ExitReason::Signal(sig) => 128 + sig,
            ExitReason::Timeout(_) => 124,
            ExitReason::Fatal(_) => 1,
        }
    }

    /// One line for the user.
    pub fn describe(&self) -> String {
        match self {
            ExitReason::GuestReset => "guest reset the machine; VM stopped".into(),
            ExitReason::GuestPowerOff => "guest powered off; VM stopped".into(),
            ExitReason::GuestHalted => {
                "guest halted (every vCPU stopped with interrupts off); VM stopped".into()
            }
            ExitReason::Signal(sig) => format!("stopped the VM on signal {sig}"),
            ExitReason::Timeout(t) => {
                format!("stopped the VM after {} s (--timeout)", t.as_secs_f64())
            }
            ExitReason::Fatal(msg) => msg.clone(),
        }
    }
}

/// Shared by vCPUs, devices and the event loop.
#[derive(Debug)]
pub struct ExitHandle {
    reason: Mutex<Option<ExitReason>>,
    evt: EventFd,
}

impl ExitHandle {
    pub fn new() -> std::io::Result<Self> {
        Ok(Self {
            reason: Mutex::new(None),
            evt: EventFd::new(libc::EFD_NONBLOCK)?,
        })
    }

    /// Ask for the VM to stop. Only the first reason is kept.
    pub fn request(&self, reason: ExitReason) {
        let mut slot = self.reason.lock().unwrap_or_else(|e| e.into_inner());
        if slot.is_none() {
            *slot = Some(reason);
        }
        drop(slot);
        // A full counter still wakes the reader, so an error here loses nothing.
        let _ = self.evt.write(1);
    }

    pub fn reason(&self) -> Option<ExitReason> {
        self.reason
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The eventfd that becomes readable when an exit is requested.
    pub fn eventfd(&self) -> &EventFd {
        &self.evt
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_reason_wins_and_wakes_the_eventfd() {
        let h = ExitHandle::new().unwrap();
        assert_eq!(h.reason(), None);
        h.request(ExitReason::GuestReset);
        h.request(ExitReason::Fatal("late".into()));
        assert_eq!(h.reason(), Some(ExitReason::GuestReset));
        assert_eq!(h.eventfd().read().unwrap(), 2);
    }

    #[test]
    fn exit_codes() {
        assert_eq!(ExitReason::GuestReset.exit_code(), 0);
        assert_eq!(ExitReason::GuestPowerOff.exit_code(), 0);
        assert_eq!(ExitReason::GuestHalted.exit_code(), 0);
        assert_eq!(ExitReason::Fatal("x".into()).exit_code(), 1);
        assert_eq!(ExitReason::Signal(15).exit_code(), 143);
        assert_eq!(ExitReason::Timeout(Duration::from_secs(1)).exit_code(), 124);
    }
}
