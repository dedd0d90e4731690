//! Watching a running `kite` from outside: its memory report line, its threads' CPU time
//! (sampled from /proc while it runs), and host-side peers for vsock (echo, a reader that never
//! reads, a writer that never stops).

use std::collections::HashMap;
use std::io::{Read, Write};
use std::os::unix::net::UnixListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::Outcome;

/// Kite's own memory figure at exit: the MiB of `memory: X MiB VMM overhead (peak RSS Y MiB
/// ...)`, as (overhead, peak RSS).
pub fn memory_mib(stderr: &str) -> Option<(f64, f64)> {
    let line = stderr.lines().find(|l| l.contains("MiB VMM overhead"))?;
    let rest = line.split("memory: ").nth(1)?;
    let overhead = rest.split_whitespace().next()?.parse().ok()?;
    let peak = rest
        .split("peak RSS ")
        .nth(1)?
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    Some((overhead, peak))
}

/// CPU time (user + system, in clock ticks) of each thread of a process, by thread name,
/// as last seen while it ran.
#[derive(Clone, Debug, Default)]
pub struct ThreadCpu {
    /// name -> ticks (threads of the same name are added up).
    pub ticks: HashMap<String, u64>,
}

impl ThreadCpu {
    /// Ticks of the threads whose name starts with `prefix`.
    pub fn of(&self, prefix: &str) -> u64 {
        self.ticks
            .iter()
            .filter(|(n, _)| n.starts_with(prefix))
            .map(|(_, t)| t)
            .sum()
    }

    pub fn ms(ticks: u64) -> u64 {
        // SAFETY: sysconf reads a constant; no memory is involved.
        let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
        ticks * 1000 / hz
    }
}

fn sample(pid: u32) -> Option<ThreadCpu> {
    let mut per_tid: HashMap<String, u64> = HashMap::new();
    for entry in std::fs::read_dir(format!("/proc/{pid}/task")).ok()? {
        let Ok(entry) = entry else { continue };
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        // pid (comm) state ... utime stime: fields 14 and 15, counted after the ')'.
        let Some((head, tail)) = stat.rsplit_once(')') else {
            continue;
        };
        let name = head
            .split_once('(')
            .map(|(_, n)| n)
            .unwrap_or("?")
            .to_string();
        let f: Vec<&str> = tail.split_whitespace().collect();
        let (Some(u), Some(s)) = (f.get(11), f.get(12)) else {
            continue;
        };
        let t = u.parse::<u64>().unwrap_or(0) + s.parse::<u64>().unwrap_or(0);
        *per_tid.entry(name).or_default() += t;
    }
    Some(ThreadCpu { ticks: per_tid })
}

/// A `kite` child whose output is collected and whose threads' CPU is sampled every 20 ms.
pub struct Watched {
    pub child: Child,
    stdout: Arc<Mutex<String>>,
    stderr: Arc<Mutex<String>>,
    cpu: Arc<Mutex<ThreadCpu>>,
    readers: Vec<JoinHandle<()>>,
    start: Instant,
}

impl Watched {
    pub fn spawn(mut cmd: Command) -> Watched {
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("kite starts");
        let pid = child.id();
        let mut readers = Vec::new();
        let mut collect = |mut r: Box<dyn Read + Send>| {
            let buf = Arc::new(Mutex::new(String::new()));
            let b = buf.clone();
            readers.push(std::thread::spawn(move || {
                let mut chunk = [0u8; 4096];
                while let Ok(n) = r.read(&mut chunk) {
                    if n == 0 {
                        break;
                    }
                    b.lock()
                        .unwrap()
                        .push_str(&String::from_utf8_lossy(&chunk[..n]));
                }
            }));
            buf
        };
        let stdout = collect(Box::new(child.stdout.take().unwrap()));
        let stderr = collect(Box::new(child.stderr.take().unwrap()));
        let cpu = Arc::new(Mutex::new(ThreadCpu::default()));
        let c = cpu.clone();
        std::thread::spawn(move || {
            while let Some(s) = sample(pid) {
                if s.ticks.is_empty() {
                    break;
                }
                // Per name, the most seen: a zombie's last sample has only its main thread.
                let mut seen = c.lock().unwrap();
                for (name, t) in s.ticks {
                    let e = seen.ticks.entry(name).or_default();
                    *e = (*e).max(t);
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        });
        Watched {
            child,
            stdout,
            stderr,
            cpu,
            readers,
            start: Instant::now(),
        }
    }

    pub fn out(&self) -> String {
        self.stdout.lock().unwrap().clone()
    }

    pub fn cpu(&self) -> ThreadCpu {
        self.cpu.lock().unwrap().clone()
    }

    /// Waits until the console shows `text` (true) or kite exits or `limit` passes (false).
    pub fn wait_for(&mut self, text: &str, limit: Duration) -> bool {
        let start = Instant::now();
        while start.elapsed() < limit {
            if self.out().contains(text) {
                return true;
            }
            if self.child.try_wait().unwrap().is_some() {
                std::thread::sleep(Duration::from_millis(100));
                return self.out().contains(text);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        false
    }

    /// Waits for the exit (killing it after `limit`, which fails the test) and returns the
    /// outcome and the threads' CPU time as last seen.
    pub fn finish(mut self, limit: Duration) -> (Outcome, ThreadCpu) {
        let status = loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                break Some(s);
            }
            if self.start.elapsed() > limit {
                let _ = self.child.kill();
                let _ = self.child.wait();
                break None;
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        for r in self.readers.drain(..) {
            let _ = r.join();
        }
        let outcome = Outcome {
            code: status.and_then(|s| s.code()),
            stdout: self.out(),
            stderr: self.stderr.lock().unwrap().clone(),
            elapsed: self.start.elapsed(),
        };
        assert!(
            status.is_some(),
            "kite did not finish within {limit:?}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            outcome.stdout,
            outcome.stderr
        );
        (outcome, self.cpu())
    }
}

/// What a host peer did.
#[derive(Default)]
pub struct PeerStats {
    pub connections: AtomicU64,
    pub bytes: AtomicU64,
}

/// How a host peer behaves on each connection it accepts.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Peer {
    /// Echoes every byte until the other side closes.
    Echo,
    /// Accepts and never reads (holds the stream until stopped).
    Stall,
    /// Writes without end (until the write fails or it is stopped).
    Flood,
}

/// A Unix-socket peer at `path`, one thread per connection, until `stop` is set.
pub fn unix_peer(
    path: &Path,
    kind: Peer,
    stop: Arc<AtomicBool>,
) -> (Arc<PeerStats>, JoinHandle<()>) {
    let _ = std::fs::remove_file(path);
    let listener = UnixListener::bind(path)
        .unwrap_or_else(|e| panic!("cannot listen at {}: {e}", path.display()));
    listener.set_nonblocking(true).unwrap();
    let stats = Arc::new(PeerStats::default());
    let st = stats.clone();
    let handle = std::thread::spawn(move || {
        let mut conns = Vec::new();
        while !stop.load(Ordering::SeqCst) {
            let mut conn = match listener.accept() {
                Ok((conn, _)) => conn,
                Err(_) => {
                    std::thread::sleep(Duration::from_millis(5));
                    continue;
                }
            };
            st.connections.fetch_add(1, Ordering::SeqCst);
            let stop = stop.clone();
            let st = st.clone();
            conns.push(std::thread::spawn(move || {
                let _ = conn.set_nonblocking(false);
                let _ = conn.set_read_timeout(Some(Duration::from_millis(50)));
                let _ = conn.set_write_timeout(Some(Duration::from_millis(50)));
                let mut buf = vec![0u8; 65536];
                while !stop.load(Ordering::SeqCst) {
                    match kind {
                        Peer::Echo => match conn.read(&mut buf) {
                            Ok(0) => break,
                            Ok(n) => {
                                if conn.write_all(&buf[..n]).is_err() {
                                    break;
                                }
                                st.bytes.fetch_add(n as u64, Ordering::SeqCst);
                            }
                            Err(e)
                                if e.kind() == std::io::ErrorKind::WouldBlock
                                    || e.kind() == std::io::ErrorKind::TimedOut => {}
                            Err(_) => break,
                        },
                        Peer::Stall => std::thread::sleep(Duration::from_millis(20)),
                        Peer::Flood => match conn.write(&buf) {
                            Ok(n) => {
                                st.bytes.fetch_add(n as u64, Ordering::SeqCst);
                            }
                            Err(e)
                                if e.kind() == std::io::ErrorKind::WouldBlock
                                    || e.kind() == std::io::ErrorKind::TimedOut => {}
                            Err(_) => break,
                        },
                    }
                }
            }));
        }
        for c in conns {
            let _ = c.join();
        }
    });
    (stats, handle)
}
