//! What `kite bench` found: one row per figure, with every raw sample; and its JSON form,
//! written by serde_json from typed structs that borrow from the report.

use serde::Serialize;

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
    /// Samples from the peer's runs (`--peer`), paired with `guest` (Kite's); empty without.
    pub peer: Vec<f64>,
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
            peer: Vec::new(),
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
            peer: Vec::new(),
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

    pub fn peer_summary(&self) -> Option<Summary> {
        Summary::of(&self.peer)
    }

    /// Kite/peer: ratio of the medians, spread of the per-pair ratios (each Kite run with the
    /// peer's run after it).
    pub fn peer_ratio(&self) -> Option<Summary> {
        stats::ratio(&self.peer, &self.guest)
    }
}

/// One child run's result line, kept for the JSON (its `result_lines`, fields in this order).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct RawRun {
    pub workload: String,
    /// "host" or "guest".
    pub side: &'static str,
    /// 1-based run number.
    pub run: u32,
    /// Spawn to exit, ms.
    pub wall_ms: f64,
    pub line: String,
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
    /// The peer binary (`--peer`), if one ran.
    pub peer: Option<String>,
    /// Kite's system-call filters, and the peer's: "on" or "off" (`--seccomp`).
    pub seccomp: String,
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

/// The JSON document `--json` writes: the settings, every row with its raw samples and
/// summaries, and every run's result line. Borrowed from the [`Report`]; serde_json writes it
/// (a number JSON cannot hold, NaN or an infinity, becomes `null`).
#[derive(Serialize)]
struct Document<'a> {
    runs: u32,
    /// Workload name to its run count, in the order of the report.
    #[serde(serialize_with = "as_map")]
    other_runs: &'a [(String, u32)],
    tsc_hz: f64,
    guest_image: &'a str,
    linux_images: Option<LinuxImages<'a>>,
    /// The peer binary, `null` without `--peer`.
    peer: Option<&'a str>,
    /// "on" or "off", on Kite and the peer alike.
    seccomp: &'a str,
    rows: Vec<JsonRow<'a>>,
    result_lines: &'a [RawRun],
}

#[derive(Serialize)]
struct LinuxImages<'a> {
    kernel: &'a str,
    initrd: &'a str,
}

#[derive(Serialize)]
struct JsonRow<'a> {
    workload: &'a str,
    name: &'a str,
    unit: &'a str,
    /// "ok", "n/a" or "error".
    status: &'static str,
    /// Why there are no figures; `null` for "ok".
    reason: Option<&'a str>,
    host: JsonSide<'a>,
    guest: JsonSide<'a>,
    guest_over_host: Option<Summary>,
    /// The peer's samples (empty without `--peer` or where it did not run).
    peer: JsonSide<'a>,
    kite_over_peer: Option<Summary>,
}

#[derive(Serialize)]
struct JsonSide<'a> {
    samples: &'a [f64],
    summary: Option<Summary>,
}

fn as_map<S: serde::Serializer>(pairs: &&[(String, u32)], s: S) -> Result<S::Ok, S::Error> {
    s.collect_map(pairs.iter().map(|(k, v)| (k, v)))
}

impl<'a> From<&'a Row> for JsonRow<'a> {
    fn from(row: &'a Row) -> Self {
        let (status, reason) = match &row.status {
            Status::Ok => ("ok", None),
            Status::NotAvailable(r) => ("n/a", Some(r.as_str())),
            Status::Failed(r) => ("error", Some(r.as_str())),
        };
        JsonRow {
            workload: &row.workload,
            name: &row.name,
            unit: &row.unit,
            status,
            reason,
            host: JsonSide {
                samples: &row.host,
                summary: row.host_summary(),
            },
            guest: JsonSide {
                samples: &row.guest,
                summary: row.guest_summary(),
            },
            guest_over_host: row.ratio(),
            peer: JsonSide {
                samples: &row.peer,
                summary: row.peer_summary(),
            },
            kite_over_peer: row.peer_ratio(),
        }
    }
}

/// The report as JSON (see [`Document`]), indented, with a final newline.
pub fn to_json(report: &Report) -> serde_json::Result<String> {
    let doc = Document {
        runs: report.runs,
        other_runs: &report.other_runs,
        tsc_hz: report.tsc_hz,
        guest_image: &report.guest_image,
        linux_images: report
            .linux_images
            .as_ref()
            .map(|(kernel, initrd)| LinuxImages { kernel, initrd }),
        peer: report.peer.as_deref(),
        seccomp: &report.seccomp,
        rows: report.rows.iter().map(JsonRow::from).collect(),
        result_lines: &report.raw,
    };
    let mut text = serde_json::to_string_pretty(&doc)?;
    text.push('\n');
    Ok(text)
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
            peer: None,
            seccomp: "on".into(),
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

    /// [`sample_report`] run with a peer: the cpu row has its samples.
    pub fn peer_report() -> Report {
        let mut report = sample_report();
        report.peer = Some("/p/firecracker".into());
        report.rows[0].peer = vec![400.0, 470.0, 500.0];
        report
    }

    #[test]
    fn json_has_the_peer_and_the_kite_over_peer_ratio() {
        let text = to_json(&peer_report()).unwrap();
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["peer"], "/p/firecracker");
        assert_eq!(v["seccomp"], "on");
        let cpu = &v["rows"][0];
        assert_eq!(cpu["peer"]["samples"].as_array().unwrap().len(), 3);
        assert_eq!(cpu["peer"]["summary"]["median"], 470.0);
        // Kite 470 / peer 470; pairs 460/400, 470/470, 800/500.
        assert_eq!(cpu["kite_over_peer"]["median"], 1.0);
        assert_eq!(cpu["kite_over_peer"]["max"], 1.6);
        assert!(v["rows"][1]["kite_over_peer"].is_null());
        let plain: serde_json::Value =
            serde_json::from_str(&to_json(&sample_report()).unwrap()).unwrap();
        assert!(plain["peer"].is_null());
        assert!(plain["rows"][0]["kite_over_peer"].is_null());
    }

    #[test]
    fn json_is_well_formed_and_has_every_sample() {
        let text = to_json(&sample_report()).unwrap();
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
        assert!(rows[1]["guest_over_host"].is_null());
        assert_eq!(rows[0]["status"], "ok");
        assert!(rows[0]["reason"].is_null());
        assert_eq!(rows[2]["status"], "n/a");
        assert_eq!(rows[2]["reason"], "no scenario yet");
        assert_eq!(rows[3]["status"], "error");
        assert_eq!(rows[3]["name"], "mem \"quoted\" <&>");
        assert_eq!(v["result_lines"][0]["line"], "KITE-TEST cpu ok cycles=1\tx");
        assert_eq!(v["result_lines"][0]["side"], "guest");
        assert_eq!(v["result_lines"][0]["run"], 1);
        assert_eq!(v["result_lines"][0]["wall_ms"], 210.5);
        assert_eq!(v["guest_image"], "/tmp/guest \"a\".elf");
        assert_eq!(v["other_runs"]["linux-boot"], 2);
        assert_eq!(v["linux_images"]["initrd"], "/k/initramfs.cpio");
        assert_eq!(v["tsc_hz"], 2.6e9);
        assert!(text.ends_with("}\n"));
    }

    fn keys(v: &serde_json::Value) -> Vec<&str> {
        let mut keys: Vec<&str> = v.as_object().unwrap().keys().map(|k| k.as_str()).collect();
        keys.sort();
        keys
    }

    /// The fields and their nesting, as consumers of the document know them.
    #[test]
    fn json_keeps_its_shape() {
        let text = to_json(&sample_report()).unwrap();
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(
            keys(&v),
            [
                "guest_image",
                "linux_images",
                "other_runs",
                "peer",
                "result_lines",
                "rows",
                "runs",
                "seccomp",
                "tsc_hz"
            ]
        );
        assert_eq!(keys(&v["linux_images"]), ["initrd", "kernel"]);
        let row = &v["rows"][0];
        assert_eq!(
            keys(row),
            [
                "guest",
                "guest_over_host",
                "host",
                "kite_over_peer",
                "name",
                "peer",
                "reason",
                "status",
                "unit",
                "workload"
            ]
        );
        for side in ["host", "guest"] {
            assert_eq!(keys(&row[side]), ["samples", "summary"]);
            assert_eq!(keys(&row[side]["summary"]), ["max", "median", "min"]);
        }
        assert_eq!(keys(&row["peer"]), ["samples", "summary"]);
        let v: serde_json::Value = serde_json::from_str(&to_json(&peer_report()).unwrap()).unwrap();
        assert_eq!(
            keys(&v["rows"][0]["peer"]["summary"]),
            ["max", "median", "min"]
        );
        assert_eq!(
            keys(&v["rows"][0]["kite_over_peer"]),
            ["max", "median", "min"]
        );
        assert_eq!(keys(&row["guest_over_host"]), ["max", "median", "min"]);
        assert_eq!(
            keys(&v["result_lines"][0]),
            ["line", "run", "side", "wall_ms", "workload"]
        );
    }

    #[test]
    fn json_escapes_control_characters_and_has_no_nan() {
        let mut report = sample_report();
        report.guest_image = "a\"b\\c\n\u{1}".into();
        report.tsc_hz = f64::INFINITY;
        report.other_runs.push(("x\"y".into(), 4));
        let text = to_json(&report).unwrap();
        assert!(text.contains(r#""a\"b\\c\n\u0001""#), "{text}");
        assert!(text.contains("\"tsc_hz\": null"), "{text}");
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["guest_image"], "a\"b\\c\n\u{1}");
        assert!(v["tsc_hz"].is_null());
        assert_eq!(v["other_runs"]["x\"y"], 4);
    }

    #[test]
    fn empty_report_is_valid_json() {
        let text = to_json(&Report::default()).unwrap();
        let v: serde_json::Value = serde_json::from_str(&text).expect(&text);
        assert!(v["rows"].as_array().unwrap().is_empty());
        assert!(v["result_lines"].as_array().unwrap().is_empty());
        assert!(v["other_runs"].as_object().unwrap().is_empty());
        assert!(v["linux_images"].is_null());
    }
}
