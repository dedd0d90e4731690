//! Watching a running `kite` from outside: its memory report line, its threads' CPU time
//! (sampled from /proc while it runs), and host-side peers for vsock (echo, a reader that never
//! reads, a writer that never stops).

use std::collections::HashMap;
use std::io::{Read, Write};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::{
    Need, Outcome, Run, collect, kite, kvm_unavailable, path_str, run, skip, temp_file, testguest,
};

/// Time limit of one run of a [`Machine`].
pub const LIMIT: Duration = Duration::from_secs(90);
/// The size of a [`Machine`]'s disk.
pub const DISK: usize = 8 << 20;

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
        let (stdout, out_reader) = collect(child.stdout.take().unwrap());
        let (stderr, err_reader) = collect(child.stderr.take().unwrap());
        let readers = vec![out_reader, err_reader];
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

/// A test-guest machine of 256 MiB with a disk, virtio-rng and vsock to host peers of the test's
/// choosing (each at `<socket>_<port>`), for one test; the peers stop when it is dropped.
pub struct Machine {
    pub test: &'static str,
    pub image: PathBuf,
    pub socket: PathBuf,
    /// Extra `kite run` arguments (e.g. `--net`), and a wrapper (e.g. `ip netns exec NS`).
    pub extra: Vec<String>,
    pub wrap: Vec<String>,
    stop: Arc<AtomicBool>,
    peers: Vec<std::thread::JoinHandle<()>>,
}

impl Machine {
    pub fn new(test: &'static str, peer_list: &[(u32, Peer)]) -> Option<Machine> {
        if let Some(reason) = kvm_unavailable() {
            skip(test, Need::Kvm, &reason);
            return None;
        }
        let image = temp_file(test, "disk.img", &vec![0u8; DISK]);
        let socket = image.with_file_name("v.sock");
        let stop = Arc::new(AtomicBool::new(false));
        let mut peers = Vec::new();
        for &(port, kind) in peer_list {
            let path = PathBuf::from(format!("{}_{port}", path_str(&socket)));
            peers.push(unix_peer(&path, kind, stop.clone()).1);
        }
        Some(Machine {
            test,
            image,
            socket,
            extra: Vec::new(),
            wrap: Vec::new(),
            stop,
            peers,
        })
    }

    pub fn command(&self, scenario: &str, words: &str) -> std::process::Command {
        let elf = testguest().unwrap_or_else(|e| panic!("{e}"));
        let cmdline = format!("kite_test={scenario} {words}");
        let vsock = format!("cid=9,socket={}", path_str(&self.socket));
        let mut cmd = match self.wrap.split_first() {
            Some((program, args)) => {
                let mut c = std::process::Command::new(program);
                c.args(args)
                    .arg(env!("CARGO_BIN_EXE_kite"))
                    .stdin(Stdio::null())
                    .stdout(Stdio::piped())
                    .stderr(Stdio::piped());
                c
            }
            None => kite(),
        };
        cmd.args(["run", "--kernel", path_str(&elf), "--no-acpi"])
            .args(["--memory", "256M", "--disk", path_str(&self.image)])
            .args(["--vsock", &vsock, "--cmdline", cmdline.trim()])
            .args(&self.extra);
        cmd
    }

    /// Kite's own memory (MiB) in a benign run of this machine: the `load` scenario.
    pub fn benign_overhead(&self) -> f64 {
        let out = run(
            self.command("load", "kite_seed=2 kite_vsock_bytes=64K"),
            LIMIT,
        );
        let mem = memory_mib(&out.stderr);
        Run::parse("load", out).expect_ok();
        // The attack starts from a zeroed disk again.
        std::fs::write(&self.image, vec![0u8; DISK]).unwrap();
        mem.expect("a memory report").0
    }

    /// Runs `scenario`, which must say ok and end the VM normally, with Kite's memory within
    /// 1 MiB of the benign run's; the result and the threads' CPU time.
    pub fn attack(&self, scenario: &str, words: &str) -> (Run, ThreadCpu) {
        self.attack_with(scenario, words, |_| {})
    }

    /// [`Machine::attack`], with `during` called on the running `kite` (to act on the host
    /// side while the guest runs).
    pub fn attack_with(
        &self,
        scenario: &str,
        words: &str,
        during: impl FnOnce(&mut Watched),
    ) -> (Run, ThreadCpu) {
        self.attack_within(scenario, words, 1.0, during)
    }

    /// [`Machine::attack_with`], allowing Kite's own memory `allowance` MiB over the benign
    /// run's.
    pub fn attack_within(
        &self,
        scenario: &str,
        words: &str,
        allowance: f64,
        during: impl FnOnce(&mut Watched),
    ) -> (Run, ThreadCpu) {
        let benign = self.benign_overhead();
        let mut w = Watched::spawn(self.command(scenario, words));
        during(&mut w);
        let (out, cpu) = w.finish(LIMIT);
        let (overhead, peak) =
            memory_mib(&out.stderr).unwrap_or_else(|| panic!("no memory report\n{}", out.stderr));
        let r = Run::parse(scenario, out);
        r.expect_ok();
        eprintln!(
            "{}: {scenario}: {} | Kite's own memory {overhead:.1} MiB (benign run {benign:.1}), \
             peak RSS {peak:.1} MiB; CPU ms: vcpu0 {} main {}",
            self.test,
            r.result,
            ThreadCpu::ms(cpu.of("fc_vcpu")),
            ThreadCpu::ms(cpu.of("kite"))
        );
        assert!(
            overhead <= benign + allowance,
            "{scenario}: Kite's own memory grew to {overhead:.1} MiB (benign run: {benign:.1} MiB, \
             {allowance} MiB more allowed)"
        );
        (r, cpu)
    }

    /// Whether the image is all the pattern of `seed` (all zeroes for `None`).
    pub fn disk_is(&self, seed: Option<u64>) {
        let data = std::fs::read(&self.image).unwrap();
        assert_eq!(data.len(), DISK, "the image changed size");
        match seed {
            Some(seed) => {
                if let Some(off) = kite_workloads::disk_pattern_check(seed, 0, &data) {
                    panic!("the image differs from the pattern of seed {seed} at byte {off}");
                }
            }
            None => assert!(data.iter().all(|&b| b == 0), "the image was written"),
        }
    }
}

impl Machine {
    /// Stops every host peer: their streams close and their listeners go.
    pub fn stop_peers(&self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

impl Drop for Machine {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        for p in self.peers.drain(..) {
            let _ = p.join();
        }
    }
}
