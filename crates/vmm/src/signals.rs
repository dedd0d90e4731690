//! Stop signals as events: SIGINT, SIGTERM and SIGHUP are blocked and read from a signalfd by
//! the event loop ([`ExitWatcher`]), which also wakes on an exit request.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::Arc;

use event_manager::{EventOps, Events, MutEventSubscriber};
use vmm_sys_util::epoll::EventSet;

use crate::exit::{ExitHandle, ExitReason};

/// Block SIGINT, SIGTERM and SIGHUP in this thread only (a helper thread such as the API's,
/// so that the main thread's signalfd receives them).
pub fn block_in_this_thread() -> std::io::Result<()> {
    // SAFETY: sigemptyset/sigaddset initialise the local set; pthread_sigmask only reads it.
    let rc = unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for sig in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
            libc::sigaddset(&mut set, sig);
        }
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut())
    };
    if rc != 0 {
        return Err(std::io::Error::from_raw_os_error(rc));
    }
    Ok(())
}

/// Block SIGINT, SIGTERM and SIGHUP in this thread (and the vCPU threads it will start) and
/// return a signalfd that receives them, so the event loop handles them like any other event.
pub fn block_stop_signals() -> std::io::Result<OwnedFd> {
    // SAFETY: sigemptyset/sigaddset initialise the local set; pthread_sigmask and signalfd only
    // read it. The returned fd is checked and then owned by the OwnedFd.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for sig in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
            libc::sigaddset(&mut set, sig);
        }
        let rc = libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        if rc != 0 {
            return Err(std::io::Error::from_raw_os_error(rc));
        }
        let fd = libc::signalfd(-1, &set, libc::SFD_NONBLOCK | libc::SFD_CLOEXEC);
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(OwnedFd::from_raw_fd(fd))
    }
}

/// A stop signal waiting on `signals` (a non-blocking signalfd from [`block_stop_signals`]),
/// taken from it.
pub fn pending(signals: &OwnedFd) -> Option<i32> {
    let mut info = std::mem::MaybeUninit::<libc::signalfd_siginfo>::uninit();
    let size = std::mem::size_of::<libc::signalfd_siginfo>();
    // SAFETY: reading at most `size` bytes into a buffer of exactly that size.
    let n = unsafe { libc::read(signals.as_raw_fd(), info.as_mut_ptr().cast(), size) };
    if n != size as isize {
        return None;
    }
    // SAFETY: the kernel wrote a whole signalfd_siginfo.
    let info = unsafe { info.assume_init() };
    Some(info.ssi_signo as i32)
}

/// Wakes the event loop when an exit is requested, and turns stop signals into an exit.
pub struct ExitWatcher {
    pub exit: Arc<ExitHandle>,
    pub signals: OwnedFd,
}

impl MutEventSubscriber for ExitWatcher {
    fn init(&mut self, ops: &mut EventOps) {
        for fd in [self.exit.eventfd().as_raw_fd(), self.signals.as_raw_fd()] {
            if let Err(e) = ops.add(Events::new_raw(fd, EventSet::IN)) {
                log::error!("cannot watch for exit events: {e}");
            }
        }
    }

    fn process(&mut self, events: Events, _ops: &mut EventOps) {
        if events.fd() == self.exit.eventfd().as_raw_fd() {
            let _ = self.exit.eventfd().read();
            return;
        }
        if let Some(signal) = pending(&self.signals) {
            self.exit.request(ExitReason::Signal(signal));
        }
    }
}
