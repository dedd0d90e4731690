//! Helpers shared by the integration tests: run `kite` with a time limit, find guest images,
//! and skip with a one-line reason.
#![allow(dead_code)]

pub mod api;
pub mod ext4;
pub mod host;
pub mod linux;
pub mod snap;
pub mod watch;

use std::collections::HashMap;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub fn kite() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_kite"));
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    cmd
}

/// What a finished `kite` printed and how it ended.
#[derive(Debug)]
pub struct Outcome {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
    pub elapsed: Duration,
}

impl Outcome {
    /// stderr lines that are errors (not the start-up log).
    pub fn error_lines(&self) -> Vec<&str> {
        self.stderr
            .lines()
            .filter(|l| l.starts_with("kite: error:"))
            .collect()
    }
}

/// Run to completion, killing it (and failing the test) after `limit`.
pub fn run(cmd: Command, limit: Duration) -> Outcome {
    run_with_input(cmd, None, limit)
}

/// As [`run`], with `input` written to the child's stdin (then closed).
pub fn run_with_input(mut cmd: Command, input: Option<Vec<u8>>, limit: Duration) -> Outcome {
    let start = Instant::now();
    if input.is_some() {
        cmd.stdin(Stdio::piped());
    }
    let mut child = cmd.spawn().expect("kite binary starts");
    if let (Some(input), Some(mut stdin)) = (input, child.stdin.take()) {
        std::thread::spawn(move || {
            let _ = std::io::Write::write_all(&mut stdin, &input);
        });
    }
    let mut out = child.stdout.take().unwrap();
    let mut err = child.stderr.take().unwrap();
    let out_t = std::thread::spawn(move || {
        let mut s = Vec::new();
        let _ = out.read_to_end(&mut s);
        String::from_utf8_lossy(&s).into_owned()
    });
    let err_t = std::thread::spawn(move || {
        let mut s = Vec::new();
        let _ = err.read_to_end(&mut s);
        String::from_utf8_lossy(&s).into_owned()
    });
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break Some(status);
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let outcome = Outcome {
        code: status.and_then(|s| s.code()),
        stdout: out_t.join().unwrap(),
        stderr: err_t.join().unwrap(),
        elapsed: start.elapsed(),
    };
    assert!(
        status.is_some(),
        "kite did not finish within {limit:?}\n--- stdout ---\n{}\n--- stderr ---\n{}",
        outcome.stdout,
        outcome.stderr
    );
    outcome
}

/// Skipping: `skip(test, Need::Kvm, reason)` prints one line and appends it to the skip log
/// that `scripts/test.sh` lists (and checks against the needs the machine declares).
pub use kite_testkit::{Need, skip};

/// Why a test that needs KVM cannot run here, if it cannot.
pub fn kvm_unavailable() -> Option<String> {
    match std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
    {
        Ok(_) => None,
        Err(e) => Some(format!("/dev/kvm is not usable ({e})")),
    }
}

/// Whether this host refuses io_uring (Kite's probe); if it does, after a skip line for `test`.
pub fn io_uring_unavailable(test: &str) -> bool {
    match kite_vmm::devices::virtio::io_uring_probe() {
        Ok(_) => false,
        Err(e) => {
            skip(
                test,
                Need::IoUring,
                &format!("this host refuses io_uring: {e}"),
            );
            true
        }
    }
}

/// Whether the tests run as root.
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions; it only reads the caller's id.
    unsafe { libc::geteuid() == 0 }
}

/// Why a test that needs both KVM and root cannot run here, if it cannot, with the need it
/// lacks; `why_root` says what the test needs root for.
pub fn kvm_and_root_unavailable(why_root: &str) -> Option<(Need, String)> {
    if let Some(reason) = kvm_unavailable() {
        return Some((Need::Kvm, reason));
    }
    (!is_root()).then(|| (Need::Root, why_root.to_string()))
}

/// True on a host whose KVM emulates guest ring 0 (no vmx/svm, or the kvm_pvm module).
pub fn host_emulates_ring0() -> bool {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let hw = cpuinfo
        .lines()
        .filter(|l| l.starts_with("flags"))
        .any(|l| l.split_whitespace().any(|f| f == "vmx" || f == "svm"));
    let pvm = std::fs::read_to_string("/proc/modules")
        .unwrap_or_default()
        .contains("kvm_pvm");
    !hw || pvm
}

/// A file from guest-images/out, if it has been built.
pub fn guest_image(name: &str) -> Option<PathBuf> {
    let p = root().join("guest-images/out").join(name);
    p.exists().then_some(p)
}

/// The test guest ELF, built on first use.
pub fn testguest() -> Result<PathBuf, String> {
    static BUILT: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    BUILT
        .get_or_init(|| {
            let script = root().join("guest-images/testguest/build.sh");
            if !script.exists() {
                return Err("guest-images/testguest/build.sh is missing".into());
            }
            let out = Command::new(&script)
                .output()
                .map_err(|e| format!("cannot run {}: {e}", script.display()))?;
            if !out.status.success() {
                return Err(format!(
                    "test guest build failed:\n{}{}",
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr)
                ));
            }
            let elf = root().join("guest-images/out/testguest.elf");
            if elf.exists() {
                Ok(elf)
            } else {
                Err(format!("{} was not produced", elf.display()))
            }
        })
        .clone()
}

pub fn path_str(p: &Path) -> &str {
    p.to_str().expect("test paths are UTF-8")
}

/// A minimal ELF64 executable whose one segment holds `code`, loaded and entered at 1 MiB.
pub fn tiny_elf(code: &[u8]) -> Vec<u8> {
    const LOAD: u64 = 0x10_0000;
    const HDR: usize = 64 + 56;
    let mut f = Vec::new();
    f.extend_from_slice(b"\x7fELF\x02\x01\x01\0\0\0\0\0\0\0\0\0");
    f.extend_from_slice(&2u16.to_le_bytes()); // ET_EXEC
    f.extend_from_slice(&0x3eu16.to_le_bytes()); // x86-64
    f.extend_from_slice(&1u32.to_le_bytes());
    f.extend_from_slice(&LOAD.to_le_bytes()); // entry
    f.extend_from_slice(&64u64.to_le_bytes()); // phoff
    f.extend_from_slice(&0u64.to_le_bytes()); // shoff
    f.extend_from_slice(&0u32.to_le_bytes());
    for v in [64u16, 56, 1, 64, 0, 0] {
        f.extend_from_slice(&v.to_le_bytes()); // ehsize, phentsize, phnum, shentsize, shnum, shstrndx
    }
    f.extend_from_slice(&1u32.to_le_bytes()); // PT_LOAD
    f.extend_from_slice(&5u32.to_le_bytes()); // R+X
    f.extend_from_slice(&(HDR as u64).to_le_bytes()); // offset
    f.extend_from_slice(&LOAD.to_le_bytes()); // vaddr
    f.extend_from_slice(&LOAD.to_le_bytes()); // paddr
    f.extend_from_slice(&(code.len() as u64).to_le_bytes());
    f.extend_from_slice(&(code.len() as u64).to_le_bytes());
    f.extend_from_slice(&0x1000u64.to_le_bytes());
    assert_eq!(f.len(), HDR);
    f.extend_from_slice(code);
    f
}

/// Guest code: print `text` on the serial port, then reset through the i8042.
pub fn print_and_reset(text: &[u8]) -> Vec<u8> {
    let mut c = vec![0x66, 0xba, 0xf8, 0x03]; // mov dx, 0x3f8
    for &b in text {
        c.extend_from_slice(&[0xb0, b, 0xee]); // mov al, b; out dx, al
    }
    c.extend_from_slice(&[0xb0, 0xfe, 0xe6, 0x64, 0xf4]); // mov al, 0xfe; out 0x64, al; hlt
    c
}

/// Write `bytes` to a fresh file in a per-test temporary directory.
pub fn temp_file(test: &str, name: &str, bytes: &[u8]) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("kite-test-{}-{test}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let p = dir.join(name);
    std::fs::write(&p, bytes).unwrap();
    p
}

/// A network namespace of the test's own, deleted on drop.
pub struct Netns {
    pub name: String,
}

impl Netns {
    /// Makes the namespace, or says why it cannot (not root, no `ip`).
    pub fn create(tag: &str) -> Result<Netns, String> {
        let name = format!("kite-{tag}-{}", std::process::id());
        let out = std::process::Command::new("ip")
            .args(["netns", "add", &name])
            .output()
            .map_err(|e| format!("cannot run ip: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "cannot make a network namespace: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        Ok(Netns { name })
    }

    /// A namespace holding tap `tap`, up, with the host side's address 10.0.2.2/24.
    pub fn with_tap(tag: &str, tap: &str) -> Result<Netns, String> {
        let ns = Netns::create(tag)?;
        for step in [
            &["ip", "link", "set", "lo", "up"][..],
            &["ip", "tuntap", "add", "dev", tap, "mode", "tap"],
            &["ip", "addr", "add", "10.0.2.2/24", "dev", tap],
            &["ip", "link", "set", tap, "up"],
        ] {
            ns.exec(step)
                .map_err(|e| format!("cannot set up the tap: {e}"))?;
        }
        Ok(ns)
    }

    /// Runs a command inside the namespace; its stderr on failure.
    pub fn exec(&self, args: &[&str]) -> Result<String, String> {
        let out = std::process::Command::new("ip")
            .args(["netns", "exec", &self.name])
            .args(args)
            .output()
            .map_err(|e| format!("cannot run ip netns exec: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "{}: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// A UDP echo server at `addr` inside the namespace until `stop` is set; returns once it
    /// listens. The thread's result: how many datagrams it echoed.
    pub fn udp_echo(
        &self,
        addr: &str,
        stop: Arc<std::sync::atomic::AtomicBool>,
    ) -> std::thread::JoinHandle<Result<u64, String>> {
        let (ns, addr) = (self.name.clone(), addr.to_string());
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let handle = std::thread::spawn(move || {
            let socket = enter_netns(&ns)
                .and_then(|()| std::net::UdpSocket::bind(&addr))
                .and_then(|s| {
                    s.set_read_timeout(Some(Duration::from_millis(50)))
                        .map(|()| s)
                })
                .map_err(|e| format!("UDP echo server at {addr}: {e}"));
            let _ = ready_tx.send(socket.as_ref().map(|_| ()).map_err(Clone::clone));
            let socket = socket?;
            let (mut buf, mut echoed) = ([0u8; 65536], 0u64);
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                match socket.recv_from(&mut buf) {
                    Ok((n, from)) => {
                        socket
                            .send_to(&buf[..n], from)
                            .map_err(|e| format!("echo to {from}: {e}"))?;
                        echoed += 1;
                    }
                    Err(e)
                        if e.kind() == std::io::ErrorKind::WouldBlock
                            || e.kind() == std::io::ErrorKind::TimedOut => {}
                    Err(e) => return Err(format!("UDP echo server: {e}")),
                }
            }
            Ok(echoed)
        });
        if let Ok(Err(e)) = ready_rx.recv_timeout(Duration::from_secs(10)) {
            panic!("{e}");
        }
        handle
    }

    /// `kite` with `args`, run inside the namespace.
    pub fn kite(&self, args: &[&str]) -> std::process::Command {
        let mut cmd = std::process::Command::new("ip");
        cmd.args(["netns", "exec", &self.name, env!("CARGO_BIN_EXE_kite")])
            .args(args)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        cmd
    }
}

/// Moves the calling thread into network namespace `name` (for sockets that must live there).
pub fn enter_netns(name: &str) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let f = std::fs::File::open(format!("/run/netns/{name}"))?;
    // SAFETY: setns on an open namespace file; it changes only this thread's namespace.
    if unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = std::process::Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
    }
}

/// What one run of a scenario printed.
pub struct Run {
    /// The text after `KITE-TEST <name> `: `ok key=value ...` or `FAIL reason`.
    pub result: String,
    pub figures: HashMap<String, String>,
    pub out: Outcome,
}

impl Run {
    /// The result line of scenario `name` in `out`, split into the text after the name and its
    /// key=value figures; fails the test with everything kite printed if there is none.
    pub fn parse(name: &str, out: Outcome) -> Run {
        let prefix = format!("KITE-TEST {name} ");
        let result = out
            .stdout
            .lines()
            .find_map(|l| l.strip_prefix(&prefix))
            .unwrap_or_else(|| {
                panic!(
                    "no {prefix} line\n--- stdout ---\n{}\n--- stderr ---\n{}",
                    out.stdout, out.stderr
                )
            })
            .trim_end()
            .to_string();
        let figures = result
            .split_whitespace()
            .skip(1)
            .filter_map(|w| w.split_once('='))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Run {
            result,
            figures,
            out,
        }
    }

    pub fn ok(&self) -> bool {
        self.result.starts_with("ok")
    }

    pub fn get(&self, key: &str) -> &str {
        self.figures
            .get(key)
            .unwrap_or_else(|| panic!("no {key}= in: {}", self.result))
    }

    /// A figure with a fractional part, such as `bytes_per_cycle=9.205`.
    pub fn float(&self, key: &str) -> f64 {
        self.get(key)
            .parse()
            .unwrap_or_else(|_| panic!("{key} is not a number in: {}", self.result))
    }

    pub fn num(&self, key: &str) -> u64 {
        self.get(key)
            .parse()
            .unwrap_or_else(|_| panic!("{key} is not a number in: {}", self.result))
    }

    /// Fails the test with everything kite printed unless the scenario said ok and kite ended
    /// by the guest's reset (exit code 0).
    pub fn expect_ok(&self) -> &Self {
        assert!(
            self.ok(),
            "scenario failed: {}\n--- stderr ---\n{}",
            self.result,
            self.out.stderr
        );
        assert_eq!(
            self.out.code,
            Some(0),
            "the guest ends the VM by an i8042 reset\n{}",
            self.out.stderr
        );
        self
    }
}

/// Runs the test guest's scenario `name` with extra `kite run` arguments and command-line
/// words; None (after a skip line) where KVM is unusable.
pub fn scenario(test: &str, name: &str, args: &[&str], words: &str) -> Option<Run> {
    if let Some(reason) = kvm_unavailable() {
        skip(test, Need::Kvm, &reason);
        return None;
    }
    let elf = testguest().unwrap_or_else(|e| panic!("{e}"));
    let cmdline = format!("kite_test={name} {words}");
    let mut cmd = kite();
    cmd.args([
        "run",
        "--kernel",
        path_str(&elf),
        "--no-acpi",
        "--memory",
        "256M",
        "--cmdline",
        cmdline.trim(),
    ]);
    cmd.args(args);
    Some(Run::parse(name, run(cmd, Duration::from_secs(120))))
}

/// Everything `r` gives, appended to a shared string as it comes, by a thread (whose handle is
/// returned, for callers that must know the text is complete).
pub fn collect(
    mut r: impl Read + Send + 'static,
) -> (Arc<Mutex<String>>, std::thread::JoinHandle<()>) {
    let text = Arc::new(Mutex::new(String::new()));
    let into = text.clone();
    let reader = std::thread::spawn(move || {
        let mut chunk = [0u8; 4096];
        while let Ok(n) = r.read(&mut chunk) {
            if n == 0 {
                break;
            }
            into.lock()
                .unwrap()
                .push_str(&String::from_utf8_lossy(&chunk[..n]));
        }
    });
    (text, reader)
}

/// A running `kite run` whose console and log are collected as they come.
pub struct Guest {
    child: std::process::Child,
    stdin: Option<std::process::ChildStdin>,
    stdout: Arc<Mutex<String>>,
    stderr: Arc<Mutex<String>>,
}

impl Guest {
    pub fn start(mut cmd: Command) -> Guest {
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("kite starts");
        let (stdout, _) = collect(child.stdout.take().unwrap());
        let (stderr, _) = collect(child.stderr.take().unwrap());
        Guest {
            stdin: child.stdin.take(),
            child,
            stdout,
            stderr,
        }
    }

    pub fn out(&self) -> String {
        self.stdout.lock().unwrap().clone()
    }

    /// The VMM's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn err(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// Wait until `done(stdout)` holds, kite exits or `limit` passes.
    pub fn wait_for(&mut self, limit: Duration, done: impl Fn(&str) -> bool) -> bool {
        let start = Instant::now();
        while start.elapsed() < limit {
            if done(&self.out()) {
                return true;
            }
            if self.child.try_wait().unwrap().is_some() {
                std::thread::sleep(Duration::from_millis(200));
                return done(&self.out());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        false
    }

    /// The exit code, or `None` if kite is still running after `limit`.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<i32> {
        let start = Instant::now();
        while start.elapsed() < limit {
            if let Some(status) = self.child.try_wait().unwrap() {
                // Let the reader threads take the last bytes.
                std::thread::sleep(Duration::from_millis(200));
                return status.code();
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        None
    }

    /// Asks kite to stop (SIGTERM, which it handles like the end of the VM) and waits up to
    /// `grace` for it to exit; then kills it. The exit code, or `None` if it had to be killed.
    pub fn stop(&mut self, grace: Duration) -> Option<i32> {
        if self.child.try_wait().unwrap().is_none() {
            let pid = libc::pid_t::try_from(self.child.id()).expect("a pid fits pid_t");
            // SAFETY: kill(2) on our own child, which has not been reaped (try_wait said it
            // is running), so the pid still names it; no memory is involved.
            unsafe { libc::kill(pid, libc::SIGTERM) };
        }
        let code = self.wait_exit(grace);
        if code.is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        code
    }

    pub fn type_line(&mut self, line: &str) {
        let stdin = self.stdin.as_mut().expect("stdin is piped");
        stdin.write_all(line.as_bytes()).unwrap();
        stdin.write_all(b"\n").unwrap();
        stdin.flush().unwrap();
    }
}

impl Drop for Guest {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
