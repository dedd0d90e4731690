//! The `pause-resume` workload: how long `PATCH /vm` takes to park every vCPU (Paused) and to
//! have them all running again (Resumed), from the API call to its answer, which Kite sends
//! once the vCPUs are parked or running. Guest side only.
//!
//! Each run starts `kite run --api-sock` with the test guest's `tick` scenario on 2 vCPUs,
//! pauses and resumes it [`CYCLES`] times over the socket, then ends the guest by typing on its
//! console. The sample's figures are the medians of the run's cycles.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::report::Row;
use super::stats::Summary;
use super::workloads::{Outcome, Sample};

/// Pause/resume cycles per run.
pub const CYCLES: usize = 100;
const LIMIT: Duration = Duration::from_secs(60);

/// One HTTP/1.1 request on a new connection to `sock`; the response's status (the response is
/// parsed by httparse).
pub fn request(sock: &Path, method: &str, path: &str, body: &str) -> std::io::Result<u16> {
    let mut s = UnixStream::connect(sock)?;
    s.set_read_timeout(Some(LIMIT))?;
    let text = format!(
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    s.write_all(text.as_bytes())?;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 1024];
    loop {
        let n = s.read(&mut chunk)?;
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
        let mut headers = [httparse::EMPTY_HEADER; 16];
        let mut resp = httparse::Response::new(&mut headers);
        if let Ok(httparse::Status::Complete(_)) = resp.parse(&buf) {
            return Ok(resp.code.unwrap_or(0));
        }
    }
    Err(std::io::Error::other(
        "the connection closed without a response",
    ))
}

/// Ends the child if the run fails half-way.
struct Guard(Child);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn micros(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

/// One run: [`CYCLES`] pauses and resumes.
pub fn run_once(exe: &Path, guest: &Path, scratch: &Path) -> Outcome {
    match measure(exe, guest, scratch) {
        Ok(sample) => Outcome::Done(sample),
        Err(e) => Outcome::Failed(e),
    }
}

fn measure(exe: &Path, guest: &Path, scratch: &Path) -> Result<Sample, String> {
    let _ = std::fs::create_dir_all(scratch);
    let sock = scratch.join("pause-api.sock");
    let _ = std::fs::remove_file(&sock);
    let spawned = Instant::now();
    let child = Command::new(exe)
        .args(["run", "--no-acpi", "--memory", "64M", "--cpus", "2"])
        .arg("--kernel")
        .arg(guest)
        .arg("--api-sock")
        .arg(&sock)
        .args(["--cmdline", "kite_test=tick kite_tick_ms=1000"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("cannot start kite: {e}"))?;
    let mut child = Guard(child);
    while !sock.exists() {
        if spawned.elapsed() > LIMIT {
            return Err("no API socket".into());
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    let patch = |state: &str| -> Result<Duration, String> {
        let t = Instant::now();
        let body = format!(r#"{{"state": "{state}"}}"#);
        match request(&sock, "PATCH", "/vm", &body) {
            Ok(204) => Ok(t.elapsed()),
            Ok(status) => Err(format!("PATCH /vm {state}: status {status}")),
            Err(e) => Err(format!("PATCH /vm {state}: {e}")),
        }
    };
    let (mut pauses, mut resumes) = (Vec::new(), Vec::new());
    for _ in 0..CYCLES {
        pauses.push(micros(patch("Paused")?));
        resumes.push(micros(patch("Resumed")?));
    }
    if let Some(stdin) = child.0.stdin.as_mut() {
        let _ = stdin.write_all(b"q");
    }
    let status = loop {
        if let Some(s) = child.0.try_wait().map_err(|e| e.to_string())? {
            break s;
        }
        if spawned.elapsed() > LIMIT {
            return Err("the guest did not end after the cycles".into());
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    if !status.success() {
        return Err(format!("kite ended with {status}"));
    }
    let median = |v: &[f64]| Summary::of(v).map_or(f64::NAN, |s| s.median);
    let (p, r) = (median(&pauses), median(&resumes));
    let mut sample = Sample {
        line: format!("pause_us={p:.1} resume_us={r:.1} cycles={CYCLES}"),
        wall_ms: spawned.elapsed().as_secs_f64() * 1e3,
        ..Sample::default()
    };
    sample.numbers.insert("pause_us".into(), p);
    sample.numbers.insert("resume_us".into(), r);
    Ok(sample)
}

/// The rows: the median of each run's median, guest side only.
pub fn rows(guest: &[Sample]) -> Vec<Row> {
    let col = |key: &str| -> Vec<f64> {
        guest
            .iter()
            .filter_map(|s| s.numbers.get(key).copied())
            .collect()
    };
    let name = "pause-resume";
    vec![
        Row::new(
            name,
            &format!("{name}: PATCH /vm Paused to all vCPUs parked (median of {CYCLES})"),
            "µs",
            Vec::new(),
            col("pause_us"),
        ),
        Row::new(
            name,
            &format!("{name}: PATCH /vm Resumed to all vCPUs running (median of {CYCLES})"),
            "µs",
            Vec::new(),
            col("resume_us"),
        ),
    ]
}
