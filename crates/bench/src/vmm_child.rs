//! A VMM child of `kite bench snapshot` (Kite or the peer): spawned with its stdio piped, its
//! console read line by line as it comes, its API called over its socket, ended by a byte on its
//! console (or killed), and never left behind (its `Drop` kills it).

use std::io::Write;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::interrupt;
use super::pause::request;
use super::runner;
use super::timeline::monotonic_ns;

/// The thread reading a child's stderr: its lines, each stamped, and when it ended.
type StderrReader = JoinHandle<(Vec<(u64, String)>, u64)>;

/// Longest wait for any one thing a VMM should do.
pub const LIMIT: Duration = Duration::from_secs(120);

/// A running VMM: its console read line by line as it comes, its stderr kept.
pub struct VmmChild {
    child: Child,
    stdin: Option<ChildStdin>,
    sock: Option<PathBuf>,
    lines: Receiver<(u64, String)>,
    stderr: Option<StderrReader>,
    /// CLOCK_MONOTONIC ns just before it was spawned.
    pub spawned_ns: u64,
}

impl VmmChild {
    /// Start `cmd` with its stdin, stdout and stderr piped; `sock` is its API socket, if any.
    pub fn spawn(mut cmd: Command, sock: Option<&Path>) -> Result<VmmChild, String> {
        if let Some(sock) = sock {
            let _ = std::fs::remove_file(sock);
        }
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let spawned_ns = monotonic_ns();
        let mut child = cmd
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", cmd.get_program().display()))?;
        let (tx, lines) = std::sync::mpsc::channel();
        if let Some(out) = child.stdout.take() {
            std::thread::spawn(move || {
                use std::io::BufRead;
                let mut reader = std::io::BufReader::new(out);
                let mut buf = Vec::new();
                while let Ok(n) = reader.read_until(b'\n', &mut buf) {
                    if n == 0 {
                        break;
                    }
                    let text = String::from_utf8_lossy(&buf);
                    let line = text.trim_end_matches(['\n', '\r']).to_string();
                    if tx.send((monotonic_ns(), line)).is_err() {
                        break;
                    }
                    buf.clear();
                }
            });
        }
        Ok(VmmChild {
            stdin: child.stdin.take(),
            stderr: child.stderr.take().map(runner::read_lines),
            child,
            sock: sock.map(Path::to_path_buf),
            lines,
            spawned_ns,
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Wait until the API socket takes connections.
    pub fn wait_for_api(&mut self) -> Result<(), String> {
        let Some(sock) = self.sock.clone() else {
            return Err("no API socket".into());
        };
        let start = Instant::now();
        loop {
            if UnixStream::connect(&sock).is_ok() {
                return Ok(());
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(format!(
                    "it ended with {status} before its API socket was up"
                ));
            }
            if start.elapsed() > LIMIT || interrupt::received().is_some() {
                return Err("its API socket did not come up".into());
            }
            std::thread::sleep(Duration::from_micros(500));
        }
    }

    /// One API call that must answer 204; its time in ms.
    pub fn call(&mut self, method: &str, path: &str, body: &str) -> Result<f64, String> {
        let sock = self.sock.clone().ok_or("no API socket")?;
        let start = Instant::now();
        match request(&sock, method, path, body) {
            Ok(204) => Ok(start.elapsed().as_secs_f64() * 1e3),
            Ok(status) => Err(format!("{method} {path}: status {status}{}", self.why())),
            Err(e) => Err(format!("{method} {path}: {e}{}", self.why())),
        }
    }

    /// The next console line `want` takes (skipping others), with when it came.
    pub fn wait_line(
        &mut self,
        what: &str,
        want: impl Fn(&str) -> bool,
    ) -> Result<(u64, String), String> {
        let start = Instant::now();
        loop {
            if interrupt::received().is_some() {
                return Err("interrupted".into());
            }
            match self.lines.recv_timeout(Duration::from_millis(100)) {
                Ok((at, line)) if want(&line) => return Ok((at, line)),
                Ok(_) => {}
                Err(RecvTimeoutError::Disconnected) => {
                    return Err(format!("its console closed before {what}{}", self.why()));
                }
                Err(RecvTimeoutError::Timeout) if start.elapsed() > LIMIT => {
                    return Err(format!("no {what} within {} s", LIMIT.as_secs()));
                }
                Err(RecvTimeoutError::Timeout) => {}
            }
        }
    }

    /// `; it ended with <status>` if it has ended, else nothing.
    fn why(&mut self) -> String {
        match self.child.try_wait() {
            Ok(Some(status)) => format!("; it ended with {status}"),
            _ => String::new(),
        }
    }

    /// Type a byte on its console (the scenarios used here end on one).
    pub fn type_byte(&mut self) {
        if let Some(mut stdin) = self.stdin.take() {
            let _ = stdin.write_all(b"q");
        }
    }

    /// End the guest by a byte on its console and wait for the VMM to exit; kill it if it has
    /// not within 10 s. Its stderr.
    pub fn end(&mut self) -> String {
        self.type_byte();
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(10) {
            if let Ok(Some(_)) = self.child.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        let lines = self.stderr.take().and_then(|t| t.join().ok());
        lines
            .map(|(l, _)| l.into_iter().map(|(_, l)| l + "\n").collect())
            .unwrap_or_default()
    }
}

impl Drop for VmmChild {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Some(sock) = &self.sock {
            let _ = std::fs::remove_file(sock);
        }
    }
}
