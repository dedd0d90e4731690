//! Seccomp filters: a thread under Kite's filter making a system call outside its list ends the
//! process with the documented line and exit code (in a child process made for the test: this
//! test binary again, running only `child_process`), and the filters are on in every thread of
//! a running `kite run` unless `--seccomp off` says otherwise.

mod common;

use std::ffi::CStr;
use std::fs::File;
use std::io::Write;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

/// Names what the child does: `<thread kind>-<action>[-raw]`.
const CHILD_ENV: &str = "KITE_SECCOMP_TEST_CHILD";

/// Kite's documented exit code for a call outside the filter (128 + SIGSYS).
const EXIT_SECCOMP: i32 = 159;

const TAIL: &str = ", which its seccomp filter does not allow; Kite stopped (exit 159; --seccomp off runs without filters, for debugging)";

/// Not a test of its own: the body of the child processes the tests below start. Without
/// `KITE_SECCOMP_TEST_CHILD` it does nothing.
#[test]
fn child_process() {
    if let Ok(what) = std::env::var(CHILD_ENV) {
        child(&what);
    }
}

/// In the child: a thread installs Kite's filter for its kind as Kite does (SIGSYS handler
/// first, then the filter), then makes one system call; if the call was allowed the process
/// exits with 0.
fn child(what: &str) {
    use kite_vmm::seccomp::{Filter, Mode, ThreadKind, sigsys};
    let mut words = what.split('-');
    let (kind, name) = match words.next() {
        Some("vcpu") => (ThreadKind::Vcpu, "vcpu3"),
        _ => (ThreadKind::Main, "main"),
    };
    let action = words.next().unwrap_or_default().to_string();
    if words.next() == Some("raw") {
        let guard = kite_vmm::terminal::RawModeGuard::new(libc::STDIN_FILENO);
        assert!(guard.is_some(), "stdin is not a terminal");
        // Left in raw mode on purpose: only the SIGSYS handler restores it.
        std::mem::forget(guard);
    }
    sigsys::install_handler().unwrap();
    let filter = Filter::new(kind, Mode::On).unwrap().unwrap();
    let thread = std::thread::Builder::new()
        .name(name.into())
        .spawn(move || {
            filter.apply(name).unwrap();
            // SAFETY: plain system calls with valid arguments; their results are only printed.
            let result = unsafe {
                match action.as_str() {
                    "open" => libc::open(c"/proc/self/status".as_ptr(), libc::O_RDONLY),
                    "inetsocket" => libc::socket(libc::AF_INET, libc::SOCK_DGRAM, 0),
                    "unixsocket" => libc::socket(
                        libc::AF_UNIX,
                        libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
                        0,
                    ),
                    "exit" => 0,
                    other => panic!("unknown action {other}"),
                }
            };
            let line = format!("child: allowed, result {result}\n");
            // SAFETY: writing a live buffer to stderr, then ending the process (exit_group is
            // on every list; a thread's own exit is not on the main thread's).
            unsafe {
                libc::write(libc::STDERR_FILENO, line.as_ptr().cast(), line.len());
                libc::_exit(0);
            }
        })
        .unwrap();
    let _ = thread.join();
    unreachable!("the child thread ends the process");
}

/// Run this binary as the child doing `what`, with `stdin` as its standard input.
fn run_child(what: &str, stdin: Stdio) -> (Option<i32>, String) {
    let exe = std::env::current_exe().unwrap();
    let out = Command::new(exe)
        .args([
            "--exact",
            "child_process",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_ENV, what)
        .stdin(stdin)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The one line the SIGSYS handler wrote, failing unless there is exactly one.
fn denial_line(stderr: &str) -> &str {
    let lines: Vec<&str> = stderr
        .lines()
        .filter(|l| l.starts_with("kite: error:"))
        .collect();
    assert_eq!(lines.len(), 1, "{stderr}");
    lines[0]
}

#[test]
fn a_vcpu_thread_opening_a_file_ends_kite_with_one_line() {
    let (code, stderr) = run_child("vcpu-open", Stdio::null());
    assert_eq!(code, Some(EXIT_SECCOMP), "{stderr}");
    assert_eq!(
        denial_line(&stderr),
        format!("kite: error: thread vcpu3 made system call openat (257){TAIL}")
    );
}

#[test]
fn the_main_thread_is_held_to_its_argument_checks() {
    // socket() is on the main thread's list for Unix stream sockets (vsock) only.
    let (code, stderr) = run_child("main-inetsocket", Stdio::null());
    assert_eq!(code, Some(EXIT_SECCOMP), "{stderr}");
    assert_eq!(
        denial_line(&stderr),
        format!("kite: error: thread main made system call socket (41){TAIL}")
    );
    let (code, stderr) = run_child("main-unixsocket", Stdio::null());
    assert_eq!(code, Some(0), "{stderr}");
    assert!(stderr.contains("child: allowed, result "), "{stderr}");
    assert!(!stderr.contains("result -1"), "{stderr}");
    // And a vCPU thread may not make even that one.
    let (code, stderr) = run_child("vcpu-unixsocket", Stdio::null());
    assert_eq!(code, Some(EXIT_SECCOMP), "{stderr}");
    assert!(denial_line(&stderr).contains("thread vcpu3 made system call socket (41)"));
}

/// A pseudo-terminal: the controlling side, and the terminal itself.
fn pty() -> (OwnedFd, File) {
    // SAFETY: posix_openpt returns a new descriptor or -1, which is checked.
    let master = unsafe { libc::posix_openpt(libc::O_RDWR | libc::O_NOCTTY) };
    assert!(
        master >= 0,
        "posix_openpt: {}",
        std::io::Error::last_os_error()
    );
    // SAFETY: `master` was just opened and is owned by nothing else.
    let master = unsafe { OwnedFd::from_raw_fd(master) };
    let mut name = [0 as libc::c_char; 128];
    // SAFETY: grantpt/unlockpt act on the descriptor; ptsname_r writes at most `name.len()`
    // bytes, NUL-terminated, into `name`.
    unsafe {
        assert_eq!(libc::grantpt(master.as_raw_fd()), 0);
        assert_eq!(libc::unlockpt(master.as_raw_fd()), 0);
        assert_eq!(
            libc::ptsname_r(master.as_raw_fd(), name.as_mut_ptr(), name.len()),
            0
        );
    }
    // SAFETY: ptsname_r succeeded, so `name` holds a NUL-terminated path.
    let path = unsafe { CStr::from_ptr(name.as_ptr()) };
    let terminal = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path.to_str().unwrap())
        .unwrap();
    (master, terminal)
}

fn termios(terminal: &File) -> libc::termios {
    // SAFETY: termios is plain data, filled by tcgetattr, whose result is checked.
    let mut t: libc::termios = unsafe { std::mem::zeroed() };
    // SAFETY: `t` is a valid termios to fill; the descriptor is open.
    assert_eq!(unsafe { libc::tcgetattr(terminal.as_raw_fd(), &mut t) }, 0);
    t
}

fn canonical(t: &libc::termios) -> bool {
    t.c_lflag & (libc::ICANON | libc::ECHO) == (libc::ICANON | libc::ECHO)
}

#[test]
fn the_sigsys_handler_restores_the_terminal() {
    let (_master, terminal) = pty();
    assert!(
        canonical(&termios(&terminal)),
        "a new pty is in canonical mode"
    );
    // Control: a child that leaves raw mode on and exits without restoring leaves the terminal
    // raw, so the check below can tell.
    let (code, stderr) = run_child("main-exit-raw", terminal.try_clone().unwrap().into());
    assert_eq!(code, Some(0), "{stderr}");
    assert!(!canonical(&termios(&terminal)), "the control left it raw");
    let mut t = termios(&terminal);
    t.c_lflag |= libc::ICANON | libc::ECHO;
    // SAFETY: `t` is a valid termios for this terminal.
    assert_eq!(
        unsafe { libc::tcsetattr(terminal.as_raw_fd(), libc::TCSANOW, &t) },
        0
    );

    let (code, stderr) = run_child("vcpu-open-raw", terminal.try_clone().unwrap().into());
    assert_eq!(code, Some(EXIT_SECCOMP), "{stderr}");
    assert!(denial_line(&stderr).contains("thread vcpu3 made system call openat (257)"));
    assert!(
        canonical(&termios(&terminal)),
        "the SIGSYS handler put the terminal back"
    );
}

/// Every thread of a running `kite run` with `extra` arguments, as (name, seccomp mode from
/// /proc/PID/task/TID/status), once a vCPU thread exists and (with `want` 2) has its filter;
/// then the VM is ended by input and must exit 0. `None` if KVM is missing (the test skips).
fn thread_modes(test: &str, extra: &[&str], want: u32) -> Option<(Vec<(String, u32)>, String)> {
    if let Some(reason) = kvm_unavailable() {
        skip(test, Need::Kvm, &reason);
        return None;
    }
    let elf = testguest().unwrap_or_else(|e| panic!("{e}"));
    let mut cmd = kite();
    cmd.args([
        "run",
        "--kernel",
        path_str(&elf),
        "--no-acpi",
        "--memory",
        "64M",
    ])
    .args(extra)
    .args(["--cpus", "2", "--cmdline", "kite_test=echo"])
    .stdin(Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    let tasks = format!("/proc/{}/task", child.id());
    let start = Instant::now();
    let modes = loop {
        let mut modes = Vec::new();
        for task in std::fs::read_dir(&tasks).unwrap().flatten() {
            let status = std::fs::read_to_string(task.path().join("status")).unwrap_or_default();
            let field = |key: &str| {
                status
                    .lines()
                    .find_map(|l| l.strip_prefix(key))
                    .map(|v| v.trim().to_string())
                    .unwrap_or_default()
            };
            modes.push((field("Name:"), field("Seccomp:").parse().unwrap_or(0)));
        }
        let vcpus = modes
            .iter()
            .filter(|(n, _)| n.starts_with("fc_vcpu"))
            .count();
        if vcpus == 2 && modes.iter().all(|&(_, m)| m == want) {
            break modes;
        }
        if start.elapsed() > Duration::from_secs(30) {
            let _ = child.kill();
            panic!("threads never all reached seccomp mode {want}: {modes:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    child.stdin.take().unwrap().write_all(b"done\n").unwrap();
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("KITE-TEST echo ok text=done"),
        "{stderr}"
    );
    Some((modes, stderr))
}

#[test]
fn every_kite_thread_is_filtered_by_default() {
    let Some((modes, stderr)) = thread_modes("every_kite_thread_is_filtered_by_default", &[], 2)
    else {
        return;
    };
    // The main thread (named after the program) and one thread per vCPU: nothing else but
    // KVM's own kernel workers in the thread group (kvm-nx-lpage-recovery), which make no
    // system calls.
    let mut names: Vec<&str> = modes
        .iter()
        .map(|(n, _)| n.as_str())
        .filter(|n| !n.starts_with("kvm-"))
        .collect();
    names.sort_unstable();
    assert_eq!(names, ["fc_vcpu 0", "fc_vcpu 1", "kite"], "{modes:?}");
    assert!(!stderr.contains("seccomp"), "{stderr}");
}

#[test]
fn seccomp_off_says_so_and_filters_nothing() {
    let Some((_, stderr)) = thread_modes(
        "seccomp_off_says_so_and_filters_nothing",
        &["--seccomp", "off"],
        0,
    ) else {
        return;
    };
    assert!(
        stderr.contains("kite: warning: --seccomp off: NO system-call filters"),
        "{stderr}"
    );
}

#[test]
fn the_api_thread_is_filtered_too() {
    let test = "the_api_thread_is_filtered_too";
    let sock = std::env::temp_dir().join(format!("kite-seccomp-api-{}.sock", std::process::id()));
    let _ = std::fs::remove_file(&sock);
    let Some((modes, stderr)) = thread_modes(test, &["--api-sock", path_str(&sock)], 2) else {
        return;
    };
    let mut names: Vec<&str> = modes
        .iter()
        .map(|(n, _)| n.as_str())
        .filter(|n| !n.starts_with("kvm-"))
        .collect();
    names.sort_unstable();
    assert_eq!(
        names,
        ["api", "fc_vcpu 0", "fc_vcpu 1", "kite"],
        "{modes:?}"
    );
    assert!(!sock.exists(), "the socket is removed at exit: {stderr}");
}
