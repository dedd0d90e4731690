//! The plain-text table `kite bench` prints on stdout.

use super::report::{Report, Status};
use super::stats::Summary;

/// A figure with about four significant digits.
pub fn num(x: f64) -> String {
    if !x.is_finite() {
        return "-".into();
    }
    let a = x.abs();
    if a >= 1000.0 {
        format!("{x:.0}")
    } else if a >= 100.0 {
        format!("{x:.1}")
    } else if a >= 10.0 {
        format!("{x:.2}")
    } else {
        format!("{x:.3}")
    }
}

fn summary_cells(s: Option<Summary>) -> [String; 3] {
    match s {
        Some(s) => [num(s.median), num(s.min), num(s.max)],
        None => ["-".into(), "-".into(), "-".into()],
    }
}

fn ratio_cell(ratio: Option<Summary>) -> String {
    match ratio {
        Some(r) => format!("{:.2} ({:.2}..{:.2})", r.median, r.min, r.max),
        None => "-".into(),
    }
}

const HEADER: [&str; 9] = [
    "row",
    "unit",
    "host median",
    "min",
    "max",
    "guest median",
    "min",
    "max",
    "guest/host (min..max)",
];
/// The columns a peer adds (`--peer`); "guest" is then Kite's side.
const PEER_HEADER: [&str; 4] = ["peer median", "min", "max", "kite/peer (min..max)"];

/// The table: one line per row; a row without figures says why after its name.
pub fn render(report: &Report) -> String {
    let with_peer = report.peer.is_some();
    let mut header: Vec<String> = HEADER.iter().map(|s| s.to_string()).collect();
    if with_peer {
        header.extend(PEER_HEADER.iter().map(|s| s.to_string()));
    }
    let columns = header.len();
    let mut cells: Vec<Vec<String>> = vec![header];
    let mut notes: Vec<Option<String>> = vec![None];
    for row in &report.rows {
        match &row.status {
            Status::Ok => {
                let mut line = vec![row.name.clone(), row.unit.clone()];
                line.extend(summary_cells(row.host_summary()));
                line.extend(summary_cells(row.guest_summary()));
                line.push(ratio_cell(row.ratio()));
                if with_peer {
                    line.extend(summary_cells(row.peer_summary()));
                    line.push(ratio_cell(row.peer_ratio()));
                }
                cells.push(line);
                notes.push(None);
            }
            Status::NotAvailable(why) => {
                cells.push(vec![row.name.clone()]);
                notes.push(Some(format!("n/a: {why}")));
            }
            Status::Failed(why) => {
                cells.push(vec![row.name.clone()]);
                notes.push(Some(format!("error: {why}")));
            }
        }
    }
    let mut widths = vec![0usize; columns];
    for line in &cells {
        for (i, c) in line.iter().enumerate() {
            widths[i] = widths[i].max(c.chars().count());
        }
    }
    let mut out = String::new();
    for (line, note) in cells.iter().zip(&notes) {
        let mut text = String::new();
        for (i, c) in line.iter().enumerate() {
            let w = widths[i];
            let cell = if i < 2 {
                format!("{c:<w$}")
            } else {
                format!("{c:>w$}")
            };
            if i > 0 {
                text.push_str("  ");
            }
            text.push_str(&cell);
        }
        if let Some(note) = note {
            text = format!("{:<w$}  {note}", line[0], w = widths[0]);
        }
        out.push_str(text.trim_end());
        out.push('\n');
    }
    if report.tsc_hz > 0.0 {
        let others: Vec<String> = report
            .other_runs
            .iter()
            .map(|(w, n)| format!("{w}: {n}"))
            .collect();
        let others = match others.is_empty() {
            true => String::new(),
            false => format!(" ({})", others.join(", ")),
        };
        let order = if with_peer {
            "host/kite/peer"
        } else {
            "host/guest"
        };
        out.push_str(&format!(
            "{} runs per side{others}, interleaved {order}; TSC {:.3} GHz (measured on the host)\n",
            report.runs,
            report.tsc_hz / 1e9
        ));
    }
    if let Some(peer) = &report.peer {
        out.push_str(&format!(
            "peer: {peer} (--config-file, the guest's configuration as Kite's; --no-api, or --api-sock for snapshot); seccomp {} on both; \
             cost rows count every process of a run, until the VM is freed\n",
            report.seccomp
        ));
    } else if !report.seccomp.is_empty() && report.seccomp != "on" {
        out.push_str(&format!(
            "seccomp {} (Kite's system-call filters)\n",
            report.seccomp
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::tests::sample_report;

    #[test]
    fn numbers_keep_about_four_digits() {
        assert_eq!(num(433337008.0), "433337008");
        assert_eq!(num(433.337), "433.3");
        assert_eq!(num(25.04), "25.04");
        assert_eq!(num(1.23456), "1.235");
        assert_eq!(num(f64::NAN), "-");
    }

    #[test]
    fn a_peer_adds_its_columns_and_says_how_it_ran() {
        let text = render(&crate::report::tests::peer_report());
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines[0].contains("peer median") && lines[0].ends_with("kite/peer (min..max)"));
        let cpu = lines.iter().find(|l| l.starts_with("cpu:")).unwrap();
        let words: Vec<&str> = cpu.split_whitespace().collect();
        assert_eq!(
            words[words.len() - 5..],
            ["470.0", "400.0", "500.0", "1.00", "(1.00..1.60)"]
        );
        let pio = lines.iter().find(|l| l.starts_with("pio-rtt")).unwrap();
        let words: Vec<&str> = pio.split_whitespace().collect();
        assert_eq!(words[words.len() - 5..], ["-", "-", "-", "-", "-"], "{pio}");
        assert!(text.contains("interleaved host/kite/peer"));
        assert!(text.contains("peer: /p/firecracker") && text.contains("seccomp on on both"));
        assert!(!render(&crate::report::tests::sample_report()).contains("peer"));
    }

    #[test]
    fn table_has_a_line_per_row_with_aligned_columns() {
        let text = render(&sample_report());
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines[0].starts_with("row"), "{text}");
        let cpu = lines
            .iter()
            .find(|l| l.starts_with("cpu: workload cycles"))
            .unwrap();
        // host 420.5 / 430 / 450, guest 460 / 470 / 800, ratio 470/430.
        for cell in [
            "Mcycles",
            "430.0",
            "420.5",
            "450.0",
            "470.0",
            "800.0",
            "1.09 (1.07..1.78)",
        ] {
            assert!(cpu.contains(cell), "{cell} in {cpu}");
        }
        let pio = lines.iter().find(|l| l.starts_with("pio-rtt")).unwrap();
        assert!(pio.contains("25500"), "{pio}");
        assert!(text.contains("virtio-blk") && text.contains("n/a: no scenario yet"));
        assert!(text.contains("error: guest run 1: FAIL x"));
        assert!(
            text.contains("3 runs per side (linux-boot: 2), interleaved"),
            "{text}"
        );
        // The unit column starts at the same place on every row with figures.
        let at = lines[0].find("unit").unwrap();
        assert_eq!(cpu.find("Mcycles"), Some(at));
        assert_eq!(pio.find("ns"), Some(at));
    }
}
