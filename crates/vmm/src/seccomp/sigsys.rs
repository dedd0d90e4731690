//! What happens when a thread makes a system call outside its filter: the kernel skips the call
//! and sends the thread SIGSYS; this handler writes one line on stderr naming the thread and the
//! call, restores the terminal if Kite put it in raw mode, and ends the process with
//! [`EXIT_CODE`].
//!
//! Everything here is async-signal-safe: no allocation, no locks. The line is formatted into a
//! fixed buffer and written with one write(2); the thread's name comes from a thread-local set
//! before its filter was installed; the terminal's saved mode from a static set when raw mode
//! was entered (`terminal::restore_from_signal_handler`). The handler's own system calls
//! (write, the terminal's ioctl, exit_group) are on every list. Were one of them refused, the
//! kernel would kill the process with SIGSYS's default action instead (a core dump, exit by
//! signal 31), never a hang.

use std::cell::Cell;

pub use super::names::syscall_name;

/// Kite's exit code when a seccomp filter stops it: 128 + SIGSYS.
pub const EXIT_CODE: i32 = 128 + libc::SIGSYS;

/// The longest thread name kept (longer ones are cut).
const NAME_LEN: usize = 24;

thread_local! {
    /// This thread's name for the SIGSYS line, and its length.
    static THREAD_NAME: Cell<([u8; NAME_LEN], usize)> = const { Cell::new(([0; NAME_LEN], 0)) };
}

/// Name the calling thread in a SIGSYS line (before its filter goes on).
pub(super) fn set_thread_name(name: &str) {
    let mut buf = [0u8; NAME_LEN];
    let len = name.len().min(NAME_LEN);
    buf[..len].copy_from_slice(&name.as_bytes()[..len]);
    THREAD_NAME.with(|n| n.set((buf, len)));
}

/// Install the SIGSYS handler for the whole process (before any filter goes on).
pub fn install_handler() -> Result<(), super::Error> {
    vmm_sys_util::signal::register_signal_handler(libc::SIGSYS, on_sigsys)
        .map_err(|e| super::Error::Handler(std::io::Error::from_raw_os_error(e.errno())))
}

/// `siginfo_t` as the kernel fills it for SIGSYS on x86_64: the common header, then the
/// `_sigsys` member of the union (`include/uapi/asm-generic/siginfo.h`).
#[repr(C)]
struct SigsysInfo {
    signo: i32,
    errno: i32,
    code: i32,
    _pad: i32,
    call_addr: *mut libc::c_void,
    syscall: i32,
    arch: u32,
}

/// `si_code` of a SIGSYS sent by a seccomp filter.
const SYS_SECCOMP: i32 = 1;

extern "C" fn on_sigsys(_: libc::c_int, info: *mut libc::siginfo_t, _: *mut libc::c_void) {
    let nr = if info.is_null() {
        None
    } else {
        // SAFETY: the kernel passes a valid siginfo_t, which is at least as large as
        // SigsysInfo (128 bytes) and has its layout for SIGSYS; we only read plain integers.
        let info = unsafe { &*info.cast::<SigsysInfo>() };
        (info.code == SYS_SECCOMP).then_some(i64::from(info.syscall))
    };
    let (name, len) = THREAD_NAME.with(Cell::get);
    let mut line = Line::new();
    denial_line(&mut line, &name[..len], nr);
    let text = line.as_bytes();
    // SAFETY: writing `text.len()` bytes from a live buffer to stderr; write(2) is
    // async-signal-safe. Nothing useful can be done if it fails.
    unsafe { libc::write(libc::STDERR_FILENO, text.as_ptr().cast(), text.len()) };
    crate::terminal::restore_from_signal_handler();
    // SAFETY: _exit is async-signal-safe and ends the process (exit_group) without running
    // anything else.
    unsafe { libc::_exit(EXIT_CODE) };
}

/// The one line: which thread, which call, how Kite ends, how to run without the filters.
fn denial_line(out: &mut Line, thread: &[u8], nr: Option<i64>) {
    out.push(b"kite: error: thread ");
    out.push(if thread.is_empty() { b"?" } else { thread });
    match nr {
        Some(nr) => {
            out.push(b" made system call ");
            match syscall_name(nr) {
                Some(name) => {
                    out.push(name.as_bytes());
                    out.push(b" (");
                    out.push_number(nr);
                    out.push(b")");
                }
                None => out.push_number(nr),
            }
            out.push(b", which its seccomp filter does not allow");
        }
        None => out.push(b" received SIGSYS, not from its seccomp filter"),
    }
    out.push(b"; Kite stopped (exit 159; --seccomp off runs without filters, for debugging)\n");
}

/// A fixed buffer for the line; what does not fit is cut.
struct Line {
    buf: [u8; 256],
    len: usize,
}

impl Line {
    fn new() -> Self {
        Self {
            buf: [0; 256],
            len: 0,
        }
    }

    fn push(&mut self, bytes: &[u8]) {
        let n = bytes.len().min(self.buf.len() - self.len);
        self.buf[self.len..self.len + n].copy_from_slice(&bytes[..n]);
        self.len += n;
    }

    fn push_number(&mut self, n: i64) {
        if n < 0 {
            self.push(b"-");
        }
        let mut digits = [0u8; 20];
        let mut i = digits.len();
        let mut v = n.unsigned_abs();
        loop {
            i -= 1;
            digits[i] = b'0' + (v % 10) as u8;
            v /= 10;
            if v == 0 {
                break;
            }
        }
        self.push(&digits[i..]);
    }

    fn as_bytes(&self) -> &[u8] {
        &self.buf[..self.len]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(thread: &str, nr: Option<i64>) -> String {
        let mut line = Line::new();
        denial_line(&mut line, thread.as_bytes(), nr);
        String::from_utf8(line.as_bytes().to_vec()).unwrap()
    }

    #[test]
    fn the_line_names_thread_and_call() {
        assert_eq!(
            text("vcpu0", Some(41)),
            "kite: error: thread vcpu0 made system call socket (41), which its seccomp filter does not allow; Kite stopped (exit 159; --seccomp off runs without filters, for debugging)\n"
        );
        assert!(text("main", Some(400)).contains("thread main made system call 400, which"));
        assert!(text("", None).contains("thread ? received SIGSYS, not from its seccomp filter"));
        assert_eq!(EXIT_CODE, 159);
    }

    #[test]
    fn numbers_and_overflow() {
        let mut line = Line::new();
        line.push_number(0);
        line.push(b" ");
        line.push_number(-12);
        line.push(b" ");
        line.push_number(i64::MIN);
        assert_eq!(line.as_bytes(), b"0 -12 -9223372036854775808");
        let mut line = Line::new();
        for _ in 0..100 {
            line.push(b"abcd");
        }
        assert_eq!(line.as_bytes().len(), 256);
    }

    #[test]
    fn thread_name_is_cut_to_fit() {
        set_thread_name("a-very-long-thread-name-indeed");
        let (name, len) = THREAD_NAME.with(Cell::get);
        assert_eq!(&name[..len], b"a-very-long-thread-name-");
    }
}
