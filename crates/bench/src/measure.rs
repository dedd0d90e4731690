//! A child run that counts its whole cost: `kite bench --peer` runs both VMMs through it.
//!
//! The bench forks a launcher (a plain `fork`, which then makes only system calls) that becomes
//! a child subreaper (`PR_SET_CHILD_SUBREAPER`) and starts the VMM under `ptrace` with
//! `PTRACE_O_TRACEEXIT` only. The launcher reaps every process of the run, the VMM's own
//! children that outlive it (Kite's teardown child, in a process group of its own) included, as
//! they are handed to it; so that:
//! - **until freed** is the time from just before the VMM was started to the last of them
//!   reaped: the VM is gone by then, its memory unmapped;
//! - **CPU** is the launcher's `RUSAGE_CHILDREN` at that point: user and system time of every
//!   process of the run, and of nothing else (the launcher's own time is not in it);
//! - **peak RSS** is the VMM's own `VmHWM`, read from `/proc/PID/status` when the VMM stops at
//!   its exit (the exit event of ptrace), while its memory is still there. Unlike `wait4`'s
//!   `ru_maxrss`, which also counts the high-water mark of whatever process exec'd the VMM (a
//!   copy of the bench, with `fork`; the bench itself, with `vfork`), it is the VMM's alone.
//!
//! The ptrace stops cost both sides alike: one at each exec, one at the exit, one for each
//! signal the VMM's main thread receives (passed on unchanged).

use std::ffi::{CString, OsStr};
use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::ExitStatusExt;
use std::process::{Command, ExitStatus};
use std::time::{Duration, Instant};

use super::interrupt;
use super::runner::{self, Error, Output};
use super::timeline::monotonic_ns;

/// What one run cost, every process of it counted.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Cost {
    /// Start to the VMM's exit, ms.
    pub exit_ms: f64,
    /// Start to the last process of the run reaped (the VM freed), ms.
    pub freed_ms: f64,
    /// User + system time of every process of the run, ms.
    pub cpu_ms: f64,
    /// The VMM's own peak resident set (VmHWM at its exit), MiB; 0 if it could not be read.
    pub peak_rss_mib: f64,
}

/// What the launcher writes back: the fields in this order, as native-endian u64.
const FIELDS: usize = 7;
const F_STATUS: usize = 0;
const F_START: usize = 1;
const F_EXIT: usize = 2;
const F_FREED: usize = 3;
const F_CPU_US: usize = 4;
const F_HWM_KIB: usize = 5;
/// errno of the exec, 0 if it succeeded (the launcher then says so in F_STATUS too).
const F_EXEC_ERRNO: usize = 6;

fn os_err(what: &str) -> Error {
    Error::Wait(std::io::Error::new(
        std::io::Error::last_os_error().kind(),
        format!("{what}: {}", std::io::Error::last_os_error()),
    ))
}

/// Two descriptors of a new pipe, close-on-exec.
fn pipe() -> Result<(OwnedFd, OwnedFd), Error> {
    let mut fds = [0; 2];
    // SAFETY: pipe2 writes two new descriptors into `fds`.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(os_err("pipe2"));
    }
    // SAFETY: both are new and owned by nothing else.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

fn cstring(s: &OsStr) -> Result<CString, Error> {
    CString::new(s.as_bytes()).map_err(|_| Error::Spawn {
        program: s.to_string_lossy().into_owned(),
        source: std::io::Error::new(std::io::ErrorKind::InvalidInput, "contains a NUL byte"),
    })
}

/// Run `cmd` (program and arguments only; stdin from /dev/null, stdout and stderr captured) as
/// [`runner::run`] does, through the launcher, and say what it cost.
pub fn run(cmd: &Command, limit: Duration) -> Result<(Output, Cost), Error> {
    if let Some(signal) = interrupt::received() {
        return Err(Error::Interrupted(signal));
    }
    let program = cmd.get_program().to_string_lossy().into_owned();
    // Everything the launcher needs is made here: after fork it only makes system calls.
    let mut argv: Vec<CString> = vec![cstring(cmd.get_program())?];
    for a in cmd.get_args() {
        argv.push(cstring(a)?);
    }
    let mut argv_ptrs: Vec<*const libc::c_char> = argv.iter().map(|a| a.as_ptr()).collect();
    argv_ptrs.push(std::ptr::null());
    let null = File::open("/dev/null").map_err(|source| Error::Spawn {
        program: program.clone(),
        source,
    })?;
    let (out_r, out_w) = pipe()?;
    let (err_r, err_w) = pipe()?;
    let (res_r, res_w) = pipe()?;
    let fds = [null.as_raw_fd(), out_w.as_raw_fd(), err_w.as_raw_fd()];

    let spawned_ns = monotonic_ns();
    let start = Instant::now();
    // SAFETY: the child only makes async-signal-safe system calls (launcher) and ends in _exit.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(os_err("fork"));
    }
    if pid == 0 {
        // SAFETY: in the forked child; the pointers point at memory copied with it.
        unsafe { launcher(argv_ptrs.as_ptr(), fds, res_w.as_raw_fd()) }
    }
    drop((out_w, err_w, res_w, null));
    let out = runner::read_lines(File::from(out_r));
    let err = runner::read_lines(File::from(err_r));
    let mut status = 0;
    loop {
        // SAFETY: waitpid on our own child, status into a local.
        let r = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
        if r == pid {
            break;
        }
        if r < 0 && std::io::Error::last_os_error().raw_os_error() != Some(libc::EINTR) {
            return Err(os_err("waitpid"));
        }
        let stop = if let Some(signal) = interrupt::received() {
            Some(Error::Interrupted(signal))
        } else if start.elapsed() > limit {
            Some(Error::Timeout(limit))
        } else {
            None
        };
        if let Some(e) = stop {
            // The launcher's process group holds the whole run (but a teardown child, which
            // ends by itself).
            // SAFETY: kill() takes no memory; `pid` is our child, not yet reaped.
            unsafe {
                libc::kill(-pid, libc::SIGKILL);
                libc::kill(pid, libc::SIGKILL);
                libc::waitpid(pid, &mut status, 0);
            }
            return Err(e);
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    let mut words = [0u64; FIELDS];
    let mut bytes = Vec::new();
    let _ = std::io::Read::read_to_end(&mut File::from(res_r), &mut bytes);
    if bytes.len() != FIELDS * 8 {
        return Err(Error::Wait(std::io::Error::other(format!(
            "the launcher of {program} ended ({}) without its figures",
            ExitStatus::from_raw(status)
        ))));
    }
    for (w, chunk) in words.iter_mut().zip(bytes.chunks_exact(8)) {
        *w = u64::from_ne_bytes(chunk.try_into().unwrap_or_default());
    }
    if words[F_EXEC_ERRNO] != 0 {
        return Err(Error::Spawn {
            program,
            source: std::io::Error::from_raw_os_error(words[F_EXEC_ERRNO] as i32),
        });
    }
    let (lines, _) = out.join().unwrap_or_default();
    let (err_lines, _) = err.join().unwrap_or_default();
    let stderr = err_lines.into_iter().map(|(_, l)| l + "\n").collect();
    let ms = |a: u64, b: u64| b.saturating_sub(a) as f64 / 1e6;
    let cost = Cost {
        exit_ms: ms(words[F_START], words[F_EXIT]),
        freed_ms: ms(words[F_START], words[F_FREED]),
        cpu_ms: words[F_CPU_US] as f64 / 1e3,
        peak_rss_mib: words[F_HWM_KIB] as f64 / 1024.0,
    };
    let output = Output {
        lines,
        stderr,
        status: ExitStatus::from_raw(words[F_STATUS] as i32),
        spawned_ns,
        ended_ns: words[F_EXIT],
    };
    Ok((output, cost))
}

/// ptrace's unused address and data arguments, pointer-sized as the call takes them.
const NIL: usize = 0;

fn now_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: writes the time into `ts`.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// The launcher, in the forked child: start the VMM, reap everything, write the figures to
/// `result`, exit. Only system calls and work on the stack from here.
///
/// # Safety
/// Call only in a child just forked; `argv` is a NULL-terminated array of C strings.
unsafe fn launcher(argv: *const *const libc::c_char, fds: [i32; 3], result: i32) -> ! {
    let mut words = [0u64; FIELDS];
    // SAFETY (whole block): plain system calls on our own descriptors, pids and stack buffers.
    unsafe {
        libc::setpgid(0, 0);
        libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0);
        libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0);
        // Told at once if the exec fails: the write end closes on exec.
        let mut exec_pipe = [0; 2];
        libc::pipe2(exec_pipe.as_mut_ptr(), libc::O_CLOEXEC);
        words[F_START] = now_ns();
        let vmm = libc::fork();
        if vmm == 0 {
            libc::dup2(fds[0], 0);
            libc::dup2(fds[1], 1);
            libc::dup2(fds[2], 2);
            // As std's Command does: no signal blocked, SIGPIPE (which Rust's runtime ignores,
            // and exec keeps ignored) back to its default.
            let mut none: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut none);
            libc::sigprocmask(libc::SIG_SETMASK, &none, std::ptr::null_mut());
            libc::signal(libc::SIGPIPE, libc::SIG_DFL);
            libc::ptrace(libc::PTRACE_TRACEME, 0, NIL, NIL);
            libc::execvp(*argv, argv);
            let errno = *libc::__errno_location();
            libc::write(exec_pipe[1], (&errno as *const i32).cast(), 4);
            libc::_exit(127);
        }
        libc::close(exec_pipe[1]);
        // Only the VMM's copies of its stdout and stderr may keep them open.
        libc::close(fds[1]);
        libc::close(fds[2]);
        let mut errno = 0i32;
        if libc::read(exec_pipe[0], (&mut errno as *mut i32).cast(), 4) == 4 {
            words[F_EXEC_ERRNO] = errno.max(1) as u64;
        }
        let mut options_set = false;
        loop {
            let mut status = 0;
            let pid = libc::waitpid(-1, &mut status, libc::__WALL);
            if pid < 0 {
                if *libc::__errno_location() == libc::EINTR {
                    continue;
                }
                break; // ECHILD: every process of the run is reaped.
            }
            if pid != vmm {
                continue;
            }
            if libc::WIFSTOPPED(status) {
                let event = (status >> 16) & 0xff;
                let mut deliver = 0;
                if !options_set {
                    // The stop after the first exec: from here on, exits and execs are events.
                    options_set = true;
                    let options = libc::PTRACE_O_TRACEEXIT | libc::PTRACE_O_TRACEEXEC;
                    libc::ptrace(libc::PTRACE_SETOPTIONS, vmm, NIL, options as usize);
                } else if event == libc::PTRACE_EVENT_EXIT {
                    words[F_HWM_KIB] = read_hwm_kib(vmm);
                } else if event == 0 {
                    deliver = libc::WSTOPSIG(status);
                }
                libc::ptrace(libc::PTRACE_CONT, vmm, NIL, deliver as usize);
                continue;
            }
            words[F_STATUS] = status as u32 as u64;
            words[F_EXIT] = now_ns();
        }
        words[F_FREED] = now_ns();
        let mut usage: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_CHILDREN, &mut usage);
        let us = |t: libc::timeval| t.tv_sec as u64 * 1_000_000 + t.tv_usec as u64;
        words[F_CPU_US] = us(usage.ru_utime) + us(usage.ru_stime);
        let mut buf = [0u8; FIELDS * 8];
        for (chunk, w) in buf.chunks_exact_mut(8).zip(words) {
            chunk.copy_from_slice(&w.to_ne_bytes());
        }
        libc::write(result, buf.as_ptr().cast(), buf.len());
        libc::_exit(0)
    }
}

/// `VmHWM` of `pid` in KiB, 0 if unreadable. Stack buffers only (runs in the launcher).
fn read_hwm_kib(pid: i32) -> u64 {
    let mut path = [0u8; 32];
    let mut n = 0;
    for b in b"/proc/" {
        path[n] = *b;
        n += 1;
    }
    let mut digits = [0u8; 12];
    let mut d = 0;
    let mut p = pid as u32;
    loop {
        digits[d] = b'0' + (p % 10) as u8;
        d += 1;
        p /= 10;
        if p == 0 {
            break;
        }
    }
    while d > 0 {
        d -= 1;
        path[n] = digits[d];
        n += 1;
    }
    for b in b"/status" {
        path[n] = *b;
        n += 1;
    }
    let mut buf = [0u8; 8192];
    // SAFETY: `path` is NUL-terminated (zero-filled past `n`); reads into a stack buffer.
    let len = unsafe {
        let fd = libc::open(path.as_ptr().cast(), libc::O_RDONLY | libc::O_CLOEXEC);
        if fd < 0 {
            return 0;
        }
        let len = libc::read(fd, buf.as_mut_ptr().cast(), buf.len());
        libc::close(fd);
        len
    };
    if len <= 0 {
        return 0;
    }
    hwm_kib(&buf[..len as usize])
}

/// The number after `VmHWM:` in a `/proc/PID/status` text, 0 if there is none.
fn hwm_kib(text: &[u8]) -> u64 {
    let key = b"VmHWM:";
    let Some(at) = text.windows(key.len()).position(|w| w == key) else {
        return 0;
    };
    text[at + key.len()..]
        .iter()
        .skip_while(|b| b.is_ascii_whitespace())
        .take_while(|b| b.is_ascii_digit())
        .fold(0u64, |v, b| v * 10 + u64::from(b - b'0'))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sh(script: &str) -> Command {
        let mut c = Command::new("sh");
        c.args(["-c", script]);
        c
    }

    #[test]
    fn vmhwm_is_parsed() {
        assert_eq!(
            hwm_kib(b"Name:\tx\nVmPeak:\t 9 kB\nVmHWM:\t    4952 kB\n"),
            4952
        );
        assert_eq!(hwm_kib(b"Name:\tx\n"), 0);
    }

    #[test]
    fn a_child_that_outlives_the_process_is_waited_for_and_counted() {
        // The shell exits at once; its orphan, in a group of its own, burns CPU and then sleeps.
        let script = "echo hello; setsid sh -c 'i=0; while [ $i -lt 20000 ]; do i=$((i+1)); done; sleep 0.3' & exit 3";
        let (out, cost) = run(&sh(script), Duration::from_secs(30)).unwrap();
        assert_eq!(out.status.code(), Some(3));
        assert_eq!(out.lines.len(), 1);
        assert_eq!(out.lines[0].1, "hello");
        assert!(cost.exit_ms < 250.0, "{cost:?}");
        assert!(cost.freed_ms >= 300.0, "{cost:?}");
        assert!(cost.cpu_ms > 1.0, "{cost:?}");
        // sh's own peak, not the bench's (a test process of many MiB).
        assert!((0.1..16.0).contains(&cost.peak_rss_mib), "{cost:?}");
    }

    #[test]
    fn signals_reach_the_traced_process_and_its_peak_is_its_own() {
        // The test process holds 64 MiB, touched; the child must not be charged with it.
        let ballast = vec![1u8; 64 << 20];
        let (out, cost) = run(
            &sh("trap 'echo got; exit 0' USR1; kill -USR1 $$; sleep 0.1; exit 1"),
            Duration::from_secs(30),
        )
        .unwrap();
        assert_eq!(out.status.code(), Some(0), "{:?}", out.lines);
        assert_eq!(out.lines[0].1, "got");
        assert!(
            cost.peak_rss_mib > 0.0 && cost.peak_rss_mib < 32.0,
            "{cost:?}"
        );
        assert_eq!(ballast.iter().map(|&b| b as usize).sum::<usize>(), 64 << 20);
    }

    #[test]
    fn the_vmm_gets_default_signal_dispositions() {
        // SigBlk and SigIgn of the started process: nothing blocked, SIGPIPE not ignored.
        let (out, _) = run(
            &sh("grep -E '^Sig(Ign|Blk)' /proc/self/status"),
            Duration::from_secs(30),
        )
        .unwrap();
        let text: Vec<&str> = out.lines.iter().map(|(_, l)| l.as_str()).collect();
        assert_eq!(text[0], "SigBlk:\t0000000000000000");
        // SIGPIPE (13) is not ignored, though this process ignores it.
        let ign = u64::from_str_radix(text[1].trim_start_matches("SigIgn:\t"), 16).unwrap();
        assert_eq!(ign & (1 << (libc::SIGPIPE - 1)), 0, "{}", text[1]);
    }

    #[test]
    fn a_missing_program_and_a_time_limit() {
        let err = run(
            &Command::new("/nonexistent/kite-peer"),
            Duration::from_secs(5),
        )
        .unwrap_err();
        assert!(matches!(err, Error::Spawn { .. }), "{err}");
        let start = Instant::now();
        let err = run(&sh("exec sleep 30"), Duration::from_millis(200)).unwrap_err();
        assert!(matches!(err, Error::Timeout(_)), "{err}");
        assert!(start.elapsed() < Duration::from_secs(10));
    }
}
