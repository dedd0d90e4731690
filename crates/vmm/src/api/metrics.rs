//! The metrics file (`PUT /metrics`, the config file's `metrics`): one JSON line of counters,
//! written every [`INTERVAL`] and on `FlushMetrics`. A FIFO works too (opened without waiting
//! for a reader; a line no reader takes is dropped, never blocking the VM).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::{Map, Value, json};

/// How often a line is written without being asked.
pub const INTERVAL: Duration = Duration::from_secs(60);

/// Firecracker's `api_server.process_startup_time_us` and `..._cpu_us`, set once when the API
/// socket is ready ([`record_startup`]).
static STARTUP: OnceLock<(Option<u64>, Option<u64>)> = OnceLock::new();

/// `clock` now, in microseconds.
pub fn clock_us(clock: libc::clockid_t) -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec, which `ts` is.
    if unsafe { libc::clock_gettime(clock, &mut ts) } != 0 {
        return 0;
    }
    (ts.tv_sec as u64) * 1_000_000 + (ts.tv_nsec as u64) / 1_000
}

/// The jailer's (or a runtime's) start-time flags, turned into Firecracker's two startup
/// figures when the API is ready: wall time since `--start-time-us` (CLOCK_MONOTONIC), and
/// CPU time since `--start-time-cpu-us` plus `--parent-cpu-time-us`. Returns what it recorded.
pub fn record_startup(
    start_us: Option<u64>,
    start_cpu_us: Option<u64>,
    parent_cpu_us: Option<u64>,
) -> (Option<u64>, Option<u64>) {
    let wall = start_us.map(|s| clock_us(libc::CLOCK_MONOTONIC).saturating_sub(s));
    let cpu = start_cpu_us.map(|s| {
        clock_us(libc::CLOCK_PROCESS_CPUTIME_ID).saturating_sub(s) + parent_cpu_us.unwrap_or(0)
    });
    *STARTUP.get_or_init(|| (wall, cpu))
}

/// What the line counts, gathered by the VMM when it writes one.
#[derive(Debug, Default, Clone)]
pub struct Counters {
    /// vCPU exits handled, by kind.
    pub exits: Vec<(&'static str, u64)>,
    /// Instructions completed for the host's KVM (`vcpu/complete.rs`).
    pub completed: Vec<(&'static str, u64)>,
    /// Per device: name and its (counter, value) pairs.
    pub devices: Vec<(String, Vec<(&'static str, u64)>)>,
    /// Per network interface: its `iface_id` and its counters under Firecracker's names.
    pub nets: Vec<(String, Vec<(&'static str, u64)>)>,
    /// Events the event loop handed to devices (Firecracker's `vmm.device_events`).
    pub device_events: u64,
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
        let (startup, startup_cpu) = STARTUP.get().copied().unwrap_or_default();
        let exit = |name: &str| {
            self.exits
                .iter()
                .find(|(n, _)| *n == name)
                .map_or(0, |&(_, v)| v)
        };
        let blocks = |key: &str| -> u64 {
            self.devices
                .iter()
                .filter(|(n, _)| n.starts_with("block"))
                .flat_map(|(_, pairs)| pairs.iter().filter(|(k, _)| *k == key))
                .map(|&(_, v)| v)
                .sum()
        };
        // Firecracker's `net` is every interface's counters summed; `net_<iface_id>` each one's.
        // Every name is there, 0 without interfaces, as in Firecracker's line.
        let mut net = map(&crate::devices::virtio::NetStats::default().snapshot());
        for (_, pairs) in &self.nets {
            for &(k, v) in pairs {
                let sum = net.get(k).and_then(Value::as_u64).unwrap_or(0) + v;
                net.insert(k.to_string(), Value::from(sum));
            }
        }
        let mut line = json!({
            "utc_timestamp_ms": utc_ms,
            // Firecracker's names, for the same meanings (Kata and the SDK read these).
            "api_server": {
                "process_startup_time_us": startup.unwrap_or(0),
                "process_startup_time_cpu_us": startup_cpu.unwrap_or(0),
            },
            "vcpu": {
                "exit_io_in": exit("io_in"),
                "exit_io_out": exit("io_out"),
                "exit_mmio_read": exit("mmio_read"),
                "exit_mmio_write": exit("mmio_write"),
                "failures": exit("internal_error"),
            },
            "block": {
                "execute_fails": blocks("errors"),
                "update_count": blocks("updates"),
                "update_fails": blocks("update_fails"),
            },
            "vcpu_exits": map(&self.exits),
            "completed_instructions": map(&self.completed),
            "devices": devices,
            "api": {"requests": self.api_requests, "errors": self.api_errors},
            "vm": {"pauses": self.pauses, "resumes": self.resumes},
            "net": net,
            // A panic ends Kite before another line is written, so every line says 0.
            "vmm": {"device_events": self.device_events, "panic_count": 0},
        });
        if let Value::Object(line) = &mut line {
            for (id, pairs) in &self.nets {
                line.insert(format!("net_{id}"), Value::Object(map(pairs)));
            }
        }
        line
    }

    /// Name the interfaces by their `iface_id`s (in the order they were attached).
    pub fn name_nets<'a>(mut self, ids: impl Iterator<Item = &'a String>) -> Self {
        for ((name, _), id) in self.nets.iter_mut().zip(ids) {
            name.clone_from(id);
        }
        self
    }
}

/// Keys whose values are levels, written as they are; every other number in a line is a
/// counter, written as what it gained since the line before (Firecracker's `SharedStoreMetric`
/// and `SharedIncMetric`).
const GAUGES: &[&str] = &["utc_timestamp_ms", "api_server"];

/// `now` with every counter less its value in `before` (the last line's totals): what each
/// counted since then. A counter `before` lacks (a device added since) counts from 0.
fn since(now: &Value, before: Option<&Value>) -> Value {
    match (now, before) {
        (Value::Object(now), before) => Value::Object(
            now.iter()
                .map(|(k, v)| {
                    let v = match GAUGES.contains(&k.as_str()) {
                        true => v.clone(),
                        false => since(v, before.and_then(|b| b.get(k))),
                    };
                    (k.clone(), v)
                })
                .collect(),
        ),
        (Value::Number(n), Some(Value::Number(b))) => match (n.as_u64(), b.as_u64()) {
            (Some(n), Some(b)) => Value::from(n.saturating_sub(b)),
            _ => Value::Number(n.clone()),
        },
        (v, _) => v.clone(),
    }
}

/// An open metrics file or FIFO.
#[derive(Debug)]
pub struct MetricsSink {
    file: std::fs::File,
    pub path: PathBuf,
    pub last: Instant,
    /// The totals the last line was computed from.
    written: Option<Value>,
}

impl MetricsSink {
    /// Open `path` for appending (created if missing); a FIFO is opened read-write so that the
    /// open does not wait for a reader.
    pub fn open(path: &Path) -> std::io::Result<Self> {
        let file = crate::logging::open_log_file(path)?;
        Ok(Self {
            file,
            path: path.to_owned(),
            last: Instant::now(),
            written: None,
        })
    }

    /// Write one line: each counter's gain since the last line (the first: since start), as
    /// Firecracker writes them, so that a reader summing the lines gets the totals. A line a
    /// FIFO drops is lost with what it counted, as in Firecracker.
    pub fn write(&mut self, counters: &Counters) -> std::io::Result<()> {
        self.last = Instant::now();
        let totals = counters.to_json();
        let mut line = since(&totals, self.written.as_ref()).to_string();
        self.written = Some(totals);
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
        // The second line counts what happened since the first, as Firecracker's lines do.
        assert_eq!(lines[1]["vcpu_exits"]["io_out"], 0);
        assert_eq!(lines[1]["vcpu"]["exit_io_out"], 0);
        assert_eq!(lines[1]["devices"]["block0"]["requests"], 0);
        // Firecracker's names for the same figures.
        assert_eq!(lines[0]["vcpu"]["exit_io_out"], 7);
        assert_eq!(lines[0]["block"]["execute_fails"], 0);
        assert!(lines[0]["api_server"]["process_startup_time_us"].is_u64());
    }

    #[test]
    fn counters_are_written_as_gains_and_levels_as_they_are() {
        let path = std::env::temp_dir().join(format!("kite-metrics-gain-{}", std::process::id()));
        let mut sink = MetricsSink::open(&path).unwrap();
        let mut c = Counters {
            devices: vec![("virtio-rng0".into(), vec![("completed", 5)])],
            api_requests: 4,
            ..Counters::default()
        };
        sink.write(&c).unwrap();
        c.api_requests = 10;
        c.devices[0].1[0].1 = 6;
        // A device attached since the last line counts from 0.
        c.devices.push(("block0".into(), vec![("requests", 3)]));
        sink.write(&c).unwrap();
        sink.write(&c).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        let _ = std::fs::remove_file(&path);
        let lines: Vec<Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        let requests: Vec<u64> = lines
            .iter()
            .map(|l| l["api"]["requests"].as_u64().unwrap())
            .collect();
        assert_eq!(requests, [4, 6, 0]);
        assert_eq!(lines[1]["devices"]["virtio-rng0"]["completed"], 1);
        assert_eq!(lines[1]["devices"]["block0"]["requests"], 3);
        assert_eq!(lines[2]["devices"]["block0"]["requests"], 0);
        // Levels are not differences: the clock and the start-up figures stand as they are.
        assert!(
            lines[2]["utc_timestamp_ms"].as_u64().unwrap()
                >= lines[0]["utc_timestamp_ms"].as_u64().unwrap()
        );
        assert!(lines[2]["utc_timestamp_ms"].as_u64().unwrap() > 1_000_000_000_000);
        assert_eq!(
            lines[2]["api_server"]["process_startup_time_us"],
            lines[0]["api_server"]["process_startup_time_us"]
        );
    }

    #[test]
    fn net_and_vmm_groups_have_firecrackers_names() {
        let c = Counters {
            nets: vec![
                (
                    "eth0".into(),
                    vec![("rx_bytes_count", 100), ("tx_packets_count", 2)],
                ),
                (
                    "eth1".into(),
                    vec![("rx_bytes_count", 50), ("tx_packets_count", 1)],
                ),
            ],
            device_events: 9,
            ..Counters::default()
        }
        .name_nets(["a".to_string(), "b".to_string()].iter());
        let line = c.to_json();
        assert_eq!(line["net"]["rx_bytes_count"], 150);
        assert_eq!(line["net"]["tx_packets_count"], 3);
        assert_eq!(line["net_a"]["rx_bytes_count"], 100);
        assert_eq!(line["net_b"]["tx_packets_count"], 1);
        assert!(line.get("net_eth0").is_none());
        assert_eq!(line["vmm"]["device_events"], 9);
        assert_eq!(line["vmm"]["panic_count"], 0);
        // No interface: every counter is there, 0, as in Firecracker's line.
        let line = Counters::default().to_json();
        assert_eq!(line["net"]["tx_bytes_count"], 0);
        assert_eq!(line["net"]["tap_read_fails"], 0);
    }

    #[test]
    fn startup_figures_count_from_the_given_times() {
        let now = clock_us(libc::CLOCK_MONOTONIC);
        let (wall, cpu) = record_startup(Some(now - 5_000), Some(0), Some(1_000));
        assert!(wall.unwrap() >= 5_000, "{wall:?}");
        assert!(cpu.unwrap() >= 1_000, "{cpu:?}");
    }
}
