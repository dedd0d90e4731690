//! What `kite bench` found: one row per figure, with every raw sample; and its JSON form.

use std::fmt::Write;

use super::stats::{self, Summary};

/// Whether a row has figures.
#[derive(Clone, Debug, PartialEq)]
pub enum Status {
    Ok,
    /// The workload cannot run here yet (e.g. the test guest lacks the scenario); not an error.
    NotAvailable(String),
    /// The workload failed; the bench exits non-zero.
    Failed(String),
}

/// One figure of the table: samples from the host runs (empty where there is no host side) and
/// from the guest runs, in run order.
#[derive(Clone, Debug, PartialEq)]
pub struct Row {
    pub workload: String,
    pub name: String,
    pub unit: String,
    pub host: Vec<f64>,
    pub guest: Vec<f64>,
    pub status: Status,
}

impl Row {
    pub fn new(workload: &str, name: &str, unit: &str, host: Vec<f64>, guest: Vec<f64>) -> Row {
        Row {
            workload: workload.into(),
            name: name.into(),
            unit: unit.into(),
            host,
            guest,
            status: Status::Ok,
        }
    }

    /// A row standing for a whole workload that has no figures.
    pub fn without_figures(workload: &str, status: Status) -> Row {
        Row {
            workload: workload.into(),
            name: workload.into(),
            unit: String::new(),
            host: Vec::new(),
            guest: Vec::new(),
            status,
        }
    }

    pub fn host_summary(&self) -> Option<Summary> {
        Summary::of(&self.host)
    }

    pub fn guest_summary(&self) -> Option<Summary> {
        Summary::of(&self.guest)
    }

    /// guest/host: ratio of the medians, spread of the per-pair ratios.
    pub fn ratio(&self) -> Option<Summary> {
        stats::ratio(&self.host, &self.guest)
    }
}

/// One child run's result line, kept for the JSON.
#[derive(Clone, Debug, PartialEq)]
pub struct RawRun {
    pub workload: String,
    /// "host" or "guest".
    pub side: &'static str,
    /// 1-based run number.
    pub run: u32,
    pub line: String,
    pub wall_ms: f64,
}

/// Everything a bench run produced.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Report {
    /// Runs of each side of every workload but those in `other_runs`.
    pub runs: u32,
    /// Workloads that ran another number of times (`linux-boot` when `--runs` is not given).
    pub other_runs: Vec<(String, u32)>,
    /// TSC frequency measured on the host (rdtsc against CLOCK_MONOTONIC over ~100 ms).
    pub tsc_hz: f64,
    /// The test guest; empty if no workload booted it.
    pub guest_image: String,
    /// The Linux guest's kernel and initramfs, if `linux-boot` booted them.
    pub linux_images: Option<(String, String)>,
    pub rows: Vec<Row>,
    pub raw: Vec<RawRun>,
}

impl Report {
    pub fn failures(&self) -> impl Iterator<Item = &Row> {
        self.rows
            .iter()
            .filter(|r| matches!(r.status, Status::Failed(_)))
    }
}

/// A JSON string literal.
pub fn json_str(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// A JSON number; `null` for what JSON cannot hold (NaN, infinities).
pub fn json_num(x: f64) -> String {
    if x.is_finite() {
        format!("{x}")
    } else {
        "null".into()
    }
}

fn json_summary(s: Option<Summary>) -> String {
    match s {
        Some(s) => format!(
            "{{\"median\": {}, \"min\": {}, \"max\": {}}}",
            json_num(s.median),
            json_num(s.min),
            json_num(s.max)
        ),
        None => "null".into(),
    }
}

fn json_samples(v: &[f64]) -> String {
    let items: Vec<String> = v.iter().map(|&x| json_num(x)).collect();
    format!("[{}]", items.join(", "))
}

/// The report as JSON: settings, every row with its raw samples and summaries, and every run's
/// result line.
pub fn to_json(report: &Report) -> String {
    let mut out = String::from("{\n");
    let _ = writeln!(out, "  \"runs\": {},", report.runs);
    let others: Vec<String> = report
        .other_runs
        .iter()
        .map(|(w, n)| format!("{}: {n}", json_str(w)))
        .collect();
    let _ = writeln!(out, "  \"other_runs\": {{{}}},", others.join(", "));
    let _ = writeln!(out, "  \"tsc_hz\": {},", json_num(report.tsc_hz));
    let _ = writeln!(out, "  \"guest_image\": {},", json_str(&report.guest_image));
    let linux = match &report.linux_images {
        Some((kernel, initrd)) => format!(
            "{{\"kernel\": {}, \"initrd\": {}}}",
            json_str(kernel),
            json_str(initrd)
        ),
        None => "null".into(),
    };
    let _ = writeln!(out, "  \"linux_images\": {linux},");
    out.push_str("  \"rows\": [");
    for (i, row) in report.rows.iter().enumerate() {
        out.push_str(if i == 0 { "\n" } else { ",\n" });
        let (status, reason) = match &row.status {
            Status::Ok => ("ok", None),
            Status::NotAvailable(r) => ("n/a", Some(r)),
            Status::Failed(r) => ("error", Some(r)),
        };
        let _ = write!(
            out,
            "    {{\"workload\": {}, \"name\": {}, \"unit\": {}, \"status\": {}, \"reason\": {}, \
             \"host\": {{\"samples\": {}, \"summary\": {}}}, \
             \"guest\": {{\"samples\": {}, \"summary\": {}}}, \"guest_over_host\": {}}}",
            json_str(&row.workload),
            json_str(&row.name),
            json_str(&row.unit),
            json_str(status),
            reason.map_or("null".into(), |r| json_str(r)),
            json_samples(&row.host),
            json_summary(row.host_summary()),
            json_samples(&row.guest),
            json_summary(row.guest_summary()),
            json_summary(row.ratio()),
        );
    }
    out.push_str("\n  ],\n  \"result_lines\": [");
    for (i, r) in report.raw.iter().enumerate() {
        out.push_str(if i == 0 { "\n" } else { ",\n" });
        let _ = write!(
            out,
            "    {{\"workload\": {}, \"side\": {}, \"run\": {}, \"wall_ms\": {}, \"line\": {}}}",
            json_str(&r.workload),
            json_str(r.side),
            r.run,
            json_num(r.wall_ms),
            json_str(&r.line)
        );
    }
    out.push_str("\n  ]\n}\n");
    out
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A report with every kind of row, for the output tests.
    pub fn sample_report() -> Report {
        let mut failed = Row::without_figures("mem", Status::Failed("guest run 1: FAIL x".into()));
        failed.name = "mem \"quoted\" <&>".into();
        Report {
            runs: 3,
            other_runs: vec![("linux-boot".into(), 2)],
            tsc_hz: 2.6e9,
            guest_image: "/tmp/guest \"a\".elf".into(),
            linux_images: Some(("/k/vmlinux".into(), "/k/initramfs.cpio".into())),
            rows: vec![
                Row::new(
                    "cpu",
                    "cpu: workload cycles",
                    "Mcycles",
                    vec![430.0, 420.5, 450.0],
                    vec![460.0, 470.0, 800.0],
                ),
                Row::new(
                    "pio-rtt",
                    "pio-rtt: one exit",
                    "ns",
                    vec![],
                    vec![25_000.0, 26_000.0, f64::NAN],
                ),
                Row::without_figures("virtio-blk", Status::NotAvailable("no scenario yet".into())),
                failed,
            ],
            raw: vec![RawRun {
                workload: "cpu".into(),
                side: "guest",
                run: 1,
                line: "KITE-TEST cpu ok cycles=1\tx".into(),
                wall_ms: 210.5,
            }],
        }
    }

    #[test]
    fn json_is_well_formed_and_has_every_sample() {
        let text = to_json(&sample_report());
        let v: serde_json::Value = serde_json::from_str(&text).expect(&text);
        assert_eq!(v["runs"], 3);
        let rows = v["rows"].as_array().unwrap();
        assert_eq!(rows.len(), 4);
        assert_eq!(rows[0]["host"]["samples"].as_array().unwrap().len(), 3);
        assert_eq!(rows[0]["guest"]["summary"]["max"], 800.0);
        assert_eq!(rows[0]["guest"]["summary"]["median"], 470.0);
        let r = rows[0]["guest_over_host"]["median"].as_f64().unwrap();
        assert!((r - 470.0 / 430.0).abs() < 1e-9);
        assert!(rows[1]["host"]["summary"].is_null());
        assert!(rows[1]["guest"]["samples"][2].is_null());
        assert_eq!(rows[2]["status"], "n/a");
        assert_eq!(rows[3]["status"], "error");
        assert_eq!(rows[3]["name"], "mem \"quoted\" <&>");
        assert_eq!(v["result_lines"][0]["line"], "KITE-TEST cpu ok cycles=1\tx");
        assert_eq!(v["guest_image"], "/tmp/guest \"a\".elf");
        assert_eq!(v["other_runs"]["linux-boot"], 2);
        assert_eq!(v["linux_images"]["initrd"], "/k/initramfs.cpio");
    }

    #[test]
    fn json_strings_escape_control_characters() {
        assert_eq!(json_str("a\"b\\c\n\u{1}"), "\"a\\\"b\\\\c\\n\\u0001\"");
        assert_eq!(json_num(f64::INFINITY), "null");
        assert_eq!(json_num(1.5), "1.5");
    }

    #[test]
    fn empty_report_is_valid_json() {
        let text = to_json(&Report::default());
        let v: serde_json::Value = serde_json::from_str(&text).expect(&text);
        assert!(v["rows"].as_array().unwrap().is_empty());
        assert!(v["linux_images"].is_null());
    }
}
