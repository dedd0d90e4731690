//! The one result line a scenario prints:
//! `KITE-TEST <name> ok key=value ...` or `KITE-TEST <name> FAIL <reason>`.

use core::fmt;
use core::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use crate::serial;

/// A fixed-capacity text buffer (no allocator); text past the capacity is dropped.
pub struct Line {
    buf: [u8; 512],
    len: usize,
}

impl Line {
    pub const fn new() -> Self {
        Line {
            buf: [0; 512],
            len: 0,
        }
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.buf[..self.len]
    }

    /// The text, or `?` if the cut at the capacity split a character.
    pub fn as_str(&self) -> &str {
        core::str::from_utf8(self.as_bytes()).unwrap_or("?")
    }

    /// The text up to its first space: a result line's first figure.
    pub fn first_word(&self) -> &str {
        self.as_str().split(' ').next().unwrap_or("?")
    }

    /// `<what>: <this line>`: a failure reason given its context.
    pub fn prefixed(&self, what: &str) -> Line {
        let mut line = Line::new();
        let _ = fmt::Write::write_fmt(&mut line, format_args!("{what}: {}", self.as_str()));
        line
    }

    pub fn push(&mut self, b: u8) {
        if self.len < self.buf.len() {
            self.buf[self.len] = b;
            self.len += 1;
        }
    }
}

impl fmt::Write for Line {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        for &b in s.as_bytes() {
            self.push(b);
        }
        Ok(())
    }
}

/// What a scenario returns: the `key=value ...` text after `ok`, or the reason after `FAIL`.
pub type Outcome = Result<Line, Line>;

/// `ok!("cycles={} n={}", c, n)`: a successful [`Outcome`].
#[macro_export]
macro_rules! ok {
    ($($arg:tt)*) => {{
        let mut line = $crate::report::Line::new();
        let _ = core::fmt::Write::write_fmt(&mut line, format_args!($($arg)*));
        Ok(line)
    }};
}

/// `fail!("reason {}", x)`: a failed [`Outcome`].
#[macro_export]
macro_rules! fail {
    ($($arg:tt)*) => {{
        let mut line = $crate::report::Line::new();
        let _ = core::fmt::Write::write_fmt(&mut line, format_args!($($arg)*));
        Err(line)
    }};
}

static mut NAME: [u8; 64] = [0; 64];
static NAME_LEN: AtomicUsize = AtomicUsize::new(0);
static PREFIX_DONE: AtomicBool = AtomicBool::new(false);
static FINISHED: AtomicBool = AtomicBool::new(false);

/// Sets the scenario name used by every line printed from now on (at most 64 bytes; no
/// spaces, since it comes from one command-line word).
pub fn set_name(name: &[u8]) {
    let n = name.len().min(64);
    // SAFETY: called once by the boot processor before anything reads NAME.
    unsafe { (&mut *core::ptr::addr_of_mut!(NAME))[..n].copy_from_slice(&name[..n]) };
    NAME_LEN.store(n, Ordering::SeqCst);
}

fn name() -> &'static [u8] {
    let n = NAME_LEN.load(Ordering::SeqCst);
    // SAFETY: NAME is written once by set_name before NAME_LEN is published.
    let name = unsafe { &(&*core::ptr::addr_of!(NAME))[..n] };
    if name.is_empty() { b"-" } else { name }
}

/// Prints `KITE-TEST <name> ` once; [`finish`] calls it.
pub fn prefix() {
    prefix_via(serial::putb);
}

/// Sends the bytes of `KITE-TEST <name> ` through `send` (which must put them on the serial
/// port), unless the prefix was already printed. For a scenario that watches its own
/// output (`irq`).
pub fn prefix_via(mut send: impl FnMut(u8)) {
    if !PREFIX_DONE.swap(true, Ordering::SeqCst) {
        b"KITE-TEST "
            .iter()
            .chain(name())
            .chain(b" ")
            .for_each(|&b| send(b));
    }
}

/// Prints the rest of the result line. Only the first call prints.
pub fn finish(outcome: &Outcome) {
    if FINISHED.swap(true, Ordering::SeqCst) {
        return;
    }
    prefix();
    let (word, text) = match outcome {
        Ok(line) => (&b"ok"[..], line.as_bytes()),
        Err(line) => (&b"FAIL"[..], line.as_bytes()),
    };
    serial::write_bytes(word);
    if !text.is_empty() {
        serial::putb(b' ');
        serial::write_bytes(text);
    }
    serial::putb(b'\n');
}
