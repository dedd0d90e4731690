//! Ctrl-C, SIGTERM and SIGHUP during `kite bench`. The handler only notes the signal; the bench
//! sees it between runs (and [`super::runner`] while a child runs), starts nothing more and
//! returns, so that its namespace and scratch directory go away with their guards.

use std::io;
use std::sync::atomic::{AtomicI32, Ordering};

use libc::{SIGHUP, SIGINT, SIGTERM, c_int};

/// The signal that came, or 0.
static RECEIVED: AtomicI32 = AtomicI32::new(0);

extern "C" fn note(signal: c_int) {
    // An atomic store and nothing else: async-signal-safe.
    RECEIVED.store(signal, Ordering::SeqCst);
}

/// Catch SIGINT, SIGTERM and SIGHUP from now on (a signal this process was started with
/// ignored, as under nohup, stays ignored). Children get the default action back when they
/// exec.
pub fn catch() -> io::Result<()> {
    for signal in [SIGINT, SIGTERM, SIGHUP] {
        // SAFETY: an all-zero sigaction is a valid value (SIG_DFL, empty mask, no flags); it is
        // only read into here.
        let mut old: libc::sigaction = unsafe { std::mem::zeroed() };
        // SAFETY: sigaction with no new action only reads the current one into `old`.
        if unsafe { libc::sigaction(signal, std::ptr::null(), &mut old) } != 0 {
            return Err(io::Error::last_os_error());
        }
        if old.sa_sigaction == libc::SIG_IGN {
            continue;
        }
        let mut action = old;
        action.sa_sigaction = note as extern "C" fn(c_int) as libc::sighandler_t;
        action.sa_flags = libc::SA_RESTART;
        // SAFETY: `note` is async-signal-safe (one atomic store) and lives as long as the
        // process; `action` is a valid sigaction (the old one's mask, our handler and flags).
        if unsafe { libc::sigaction(signal, &action, std::ptr::null_mut()) } != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// The signal that came since [`catch`], if one did.
pub fn received() -> Option<i32> {
    match RECEIVED.load(Ordering::SeqCst) {
        0 => None,
        signal => Some(signal),
    }
}

pub fn name(signal: i32) -> String {
    match signal {
        SIGINT => "SIGINT".into(),
        SIGTERM => "SIGTERM".into(),
        SIGHUP => "SIGHUP".into(),
        _ => format!("signal {signal}"),
    }
}
