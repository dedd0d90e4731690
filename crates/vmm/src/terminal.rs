//! Console terminal mode: while the VM runs, keystrokes go to the guest one at a time without
//! local echo. Signal keys (Ctrl-C) stay with the host so they stop the VM. The previous mode
//! is restored when the guard drops, on every exit path including panics, and by the SIGSYS
//! handler when a seccomp filter stops Kite (`restore_from_signal_handler`).

use std::os::fd::RawFd;
use std::sync::OnceLock;

/// The mode to go back to, for the SIGSYS handler (which can neither lock nor reach the guard).
static SAVED: OnceLock<(RawFd, libc::termios)> = OnceLock::new();

pub struct RawModeGuard {
    fd: RawFd,
    saved: libc::termios,
}

impl RawModeGuard {
    /// Put `fd` in raw mode if it is a terminal; `None` if it is not one.
    pub fn new(fd: RawFd) -> Option<Self> {
        // SAFETY: isatty only inspects the fd.
        if unsafe { libc::isatty(fd) } != 1 {
            return None;
        }
        // SAFETY: termios is plain data; tcgetattr fills it and we check the result.
        let mut saved: libc::termios = unsafe { std::mem::zeroed() };
        // SAFETY: `saved` is a valid termios for tcgetattr to fill.
        if unsafe { libc::tcgetattr(fd, &mut saved) } != 0 {
            return None;
        }
        let mut raw = saved;
        raw.c_lflag &= !(libc::ICANON | libc::ECHO | libc::ECHONL | libc::IEXTEN);
        raw.c_iflag &= !(libc::IXON | libc::ICRNL | libc::INLCR | libc::IGNCR | libc::ISTRIP);
        raw.c_cc[libc::VMIN] = 1;
        raw.c_cc[libc::VTIME] = 0;
        // SAFETY: `raw` is a valid termios derived from the current one.
        if unsafe { libc::tcsetattr(fd, libc::TCSANOW, &raw) } != 0 {
            return None;
        }
        // Only the first raw-mode terminal of the process is kept (Kite makes one).
        let _ = SAVED.set((fd, saved));
        Some(Self { fd, saved })
    }
}

impl Drop for RawModeGuard {
    fn drop(&mut self) {
        // SAFETY: restoring the termios read from the same fd in `new`.
        unsafe { libc::tcsetattr(self.fd, libc::TCSANOW, &self.saved) };
    }
}

/// Put the terminal back in the mode it had before [`RawModeGuard::new`], if that changed it.
/// Async-signal-safe (an atomic load and tcsetattr), for the SIGSYS handler, which ends the
/// process without running the guard's drop.
pub fn restore_from_signal_handler() {
    if let Some((fd, saved)) = SAVED.get() {
        // SAFETY: restoring a termios read from the same fd; tcsetattr is async-signal-safe.
        unsafe { libc::tcsetattr(*fd, libc::TCSANOW, saved) };
    }
}
