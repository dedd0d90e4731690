//! The metrics file (`PUT /metrics`, the config file's `metrics`): one JSON line of counters,
//! written every [`INTERVAL`] and on `FlushMetrics`. A FIFO works too (opened without waiting
//! for a reader; a line no reader takes is dropped, never blocking the VM).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::{Map, Value, json};

/// How often a line is written without being asked.
pub const INTERVAL: Duration = Duration::from_secs(60);

/// What the line counts, gathered by the VMM when it writes one.
#[derive(Debug, Default, Clone)]
pub struct Counters {
    /// vCPU exits handled, by kind.
    pub exits: Vec<(&'static str, u64)>,
    /// Instructions completed for the host's KVM (`vcpu/complete.rs`).
    pub completed: Vec<(&'static str, u64)>,
    /// Per device: name and its (counter, value) pairs.
    pub devices: Vec<(String, Vec<(&'static str, u64)>)>,
    /// API requests answered, and how many of them failed.
    pub api_requests: u64,
    pub api_errors: u64,
    pub pauses: u64,
    pub resumes: u64,
}

impl Counters {
    /// The JSON object of one line.
    pub fn to_json(&self) -> Value {
        let map = |pairs: &[(&'static str, u64)]| -> Map<String, Value> {
            pairs
                .iter()
                .map(|&(k, v)| (k.to_string(), Value::from(v)))
                .collect()
        };
        let devices: Map<String, Value> = self
            .devices
            .iter()
            .map(|(name, pairs)| (name.clone(), Value::Object(map(pairs))))
            .collect();
        let utc_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        json!({
            "utc_timestamp_ms": utc_ms,
            "vcpu_exits": map(&self.exits),
            "completed_instructions": map(&self.completed),
            "devices": devices,
            "api": {"requests": self.api_requests, "errors": self.api_errors},
            "vm": {"pauses": self.pauses, "resumes": self.resumes},
        })
    }
}

/// An open metrics file or FIFO.
#[derive(Debug)]
pub struct MetricsSink {
    file: std::fs::File,
    pub path: PathBuf,
    pub last: Instant,
}

impl MetricsSink {
    /// Open `path` for appending (created if missing); a FIFO is opened read-write so that the
    /// open does not wait for a reader.
    pub fn open(path: &Path) -> std::io::Result<Self> {
        use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
        let fifo = std::fs::metadata(path)
            .map(|m| m.file_type().is_fifo())
            .unwrap_or(false);
        let file = std::fs::OpenOptions::new()
            .read(fifo)
            .append(!fifo)
            .write(true)
            .create(!fifo)
            .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open(path)?;
        Ok(Self {
            file,
            path: path.to_owned(),
            last: Instant::now(),
        })
    }

    /// Write one line.
    pub fn write(&mut self, counters: &Counters) -> std::io::Result<()> {
        self.last = Instant::now();
        let mut line = counters.to_json().to_string();
        line.push('\n');
        self.file.write_all(line.as_bytes())
    }

    /// Whether a periodic line is due.
    pub fn due(&self) -> bool {
        self.last.elapsed() >= INTERVAL
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_json_line_per_write() {
        let dir = std::env::temp_dir().join(format!("kite-metrics-{}", std::process::id()));
        let mut sink = MetricsSink::open(&dir).unwrap();
        let mut c = Counters {
            exits: vec![("io_out", 7)],
            completed: vec![("int3", 1)],
            devices: vec![("block0".into(), vec![("requests", 3)])],
            ..Counters::default()
        };
        sink.write(&c).unwrap();
        c.api_requests = 2;
        sink.write(&c).unwrap();
        let text = std::fs::read_to_string(&dir).unwrap();
        let _ = std::fs::remove_file(&dir);
        let lines: Vec<Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[0]["vcpu_exits"]["io_out"], 7);
        assert_eq!(lines[0]["devices"]["block0"]["requests"], 3);
        assert_eq!(lines[1]["api"]["requests"], 2);
    }
}
