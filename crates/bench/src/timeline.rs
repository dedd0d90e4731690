//! The end-of-run report `kite run --timeline` prints on stderr for `kite bench`, and its parser.
//!
//! ```text
//! kite: timeline: process start at 81234567890123 ns CLOCK_MONOTONIC
//! kite: timeline:    0.412 ms  KVM VM created
//! kite: timeline:    5.031 ms  guest RAM ready
//! ...
//! kite: timeline: memory: peak RSS 18874368 bytes, guest RAM resident 11010048 bytes
//! ```
//!
//! Times are from Kite's process start (the first thing `main` does). The process start itself is
//! given on the system's monotonic clock, so the parent can put the guest's console output, which
//! it timestamps as it reads it, on the same time line.

use std::io::Write;
use std::time::Instant;

use kite_vmm::vmm::RunReport;

const PREFIX: &str = "kite: timeline: ";

/// CLOCK_MONOTONIC now, in nanoseconds.
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec into the valid local `ts`.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    if rc != 0 {
        return 0;
    }
    (ts.tv_sec as u64) * 1_000_000_000 + ts.tv_nsec as u64
}

/// Format the report (see the module doc).
pub fn format(report: &RunReport, start_ns: u64) -> String {
    let mut text = format!("{PREFIX}process start at {start_ns} ns CLOCK_MONOTONIC\n");
    for (name, at) in &report.timeline.marks {
        text.push_str(&format!(
            "{PREFIX}{:>8.3} ms  {name}\n",
            at.as_secs_f64() * 1e3
        ));
    }
    if let Some(m) = &report.memory {
        text.push_str(&format!(
            "{PREFIX}memory: peak RSS {} bytes, guest RAM resident {} bytes\n",
            m.peak_rss, m.guest_resident
        ));
    }
    text
}

/// Print the report on stderr; `process_start` is the instant the timeline counts from.
pub fn print(report: &RunReport, process_start: Instant) {
    let since = process_start.elapsed().as_nanos() as u64;
    let start_ns = monotonic_ns().saturating_sub(since);
    let _ = std::io::stderr().write_all(format(report, start_ns).as_bytes());
}

/// What a `--timeline` report said.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RunTimeline {
    /// Process start on CLOCK_MONOTONIC, ns.
    pub start_ns: Option<u64>,
    /// Milestones in ms from process start, in the order printed.
    pub marks: Vec<(String, f64)>,
    /// (peak RSS, guest RAM resident), bytes.
    pub memory: Option<(u64, u64)>,
}

impl RunTimeline {
    /// The milestone called `name`, in ms from process start.
    pub fn mark(&self, name: &str) -> Option<f64> {
        self.marks.iter().find(|(n, _)| n == name).map(|&(_, t)| t)
    }
}

/// Collect the report's lines from a whole stderr text; other lines are ignored.
pub fn parse(stderr: &str) -> RunTimeline {
    let mut t = RunTimeline::default();
    for line in stderr.lines() {
        let Some(rest) = line.strip_prefix(PREFIX) else {
            continue;
        };
        if let Some(ns) = rest.strip_prefix("process start at ") {
            t.start_ns = ns.split_whitespace().next().and_then(|n| n.parse().ok());
        } else if let Some(m) = rest.strip_prefix("memory: ") {
            // peak RSS <n> bytes, guest RAM resident <n> bytes
            let mut nums = m
                .split(", ")
                .map(|part| part.split_whitespace().find_map(|w| w.parse::<u64>().ok()));
            if let (Some(Some(rss)), Some(Some(guest))) = (nums.next(), nums.next()) {
                t.memory = Some((rss, guest));
            }
        } else if let Some((ms, name)) = rest.trim_start().split_once(" ms ")
            && let Ok(ms) = ms.parse::<f64>()
        {
            t.marks.push((name.trim().to_string(), ms));
        }
    }
    t
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use kite_vmm::exit::ExitReason;
    use kite_vmm::memory::MemoryUsage;
    use kite_vmm::vmm::Timeline;

    fn report() -> RunReport {
        RunReport {
            reason: ExitReason::GuestReset,
            last_console_line: String::new(),
            timeline: Timeline {
                marks: vec![
                    ("KVM VM created", Duration::from_micros(412)),
                    ("guest RAM ready", Duration::from_micros(5031)),
                    ("guest's first serial byte", Duration::from_micros(16_400)),
                ],
            },
            boot_time: None,
            memory: Some(MemoryUsage {
                peak_rss: 18_874_368,
                guest_resident: 11_010_048,
            }),
        }
    }

    #[test]
    fn report_round_trips() {
        let text = format(&report(), 81_234_567_890_123);
        assert!(
            text.contains("kite: timeline:    0.412 ms  KVM VM created\n"),
            "{text}"
        );
        let noisy = format!("kite: 1 vCPUs, 256 MiB of RAM\n{text}kite: guest reset\n");
        let t = parse(&noisy);
        assert_eq!(t.start_ns, Some(81_234_567_890_123));
        assert_eq!(t.marks.len(), 3);
        assert_eq!(t.mark("KVM VM created"), Some(0.412));
        assert_eq!(t.mark("guest's first serial byte"), Some(16.4));
        assert_eq!(t.mark("nothing"), None);
        assert_eq!(t.memory, Some((18_874_368, 11_010_048)));
    }

    #[test]
    fn missing_report_parses_empty() {
        let t = parse("kite: error: something\nKITE-TEST cpu ok\n");
        assert_eq!(t, RunTimeline::default());
    }

    #[test]
    fn monotonic_clock_moves_forward() {
        let a = monotonic_ns();
        std::thread::sleep(Duration::from_millis(2));
        let b = monotonic_ns();
        assert!(a > 0 && b - a >= 2_000_000, "{a} {b}");
    }
}
