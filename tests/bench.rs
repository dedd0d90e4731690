//! `kite bench` end to end: one run of `cpu` and `pio-rtt` on the host and in a VM, with a time
//! limit; the table must have their rows with positive figures, and the JSON and SVG must be
//! written.

mod common;

use std::time::Duration;

use common::*;

/// The numbers on a table line after its name and unit.
fn figures(line: &str, name: &str) -> Vec<f64> {
    line[name.len()..]
        .replace("..", " ")
        .split_whitespace()
        .filter_map(|w| w.trim_matches(['(', ')']).parse::<f64>().ok())
        .collect()
}

#[test]
fn bench_runs_cpu_and_pio_rtt_side_by_side() {
    if let Some(reason) = kvm_unavailable() {
        skip("bench cpu pio-rtt", &reason);
        return;
    }
    let elf = testguest().unwrap_or_else(|e| panic!("{e}"));
    let dir = std::env::temp_dir().join(format!("kite-test-{}-bench", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (json, svg) = (dir.join("out.json"), dir.join("out.svg"));
    let mut cmd = kite();
    cmd.args(["bench", "--runs", "1", "--guest", path_str(&elf)])
        .args(["--json", path_str(&json), "--svg", path_str(&svg)])
        .args(["cpu", "pio-rtt"]);
    let out = run(cmd, Duration::from_secs(240));
    assert_eq!(out.code, Some(0), "{}\n{}", out.stdout, out.stderr);

    let line = |name: &str, unit: &str| {
        out.stdout
            .lines()
            .find(|l| l.starts_with(name) && l[name.len()..].trim_start().starts_with(unit))
            .unwrap_or_else(|| panic!("no {name} ({unit}) row in\n{}", out.stdout))
            .to_string()
    };
    // cpu: host median/min/max, guest median/min/max, ratio (min..max), all positive.
    let cpu = line("cpu: workload (TSC)", "Mcycles");
    let f = figures(&cpu, "cpu: workload (TSC)");
    assert_eq!(f.len(), 9, "{cpu}");
    assert!(f.iter().all(|&x| x > 0.0), "{cpu}");
    // With one run, median = min = max on each side.
    assert_eq!(f[0], f[1], "{cpu}");
    // pio-rtt: guest side only, in cycles and in ns.
    for unit in ["cycles", "ns"] {
        let pio = line("pio-rtt: one exit", unit);
        let f = figures(&pio, "pio-rtt: one exit");
        assert_eq!(f.len(), 3, "{pio}");
        assert!(f.iter().all(|&x| x > 0.0), "{pio}");
    }
    assert!(
        !out.stdout.contains("mem:"),
        "only the chosen workloads run"
    );

    let json = std::fs::read_to_string(&json).unwrap();
    assert!(json.contains("\"result_lines\"") && json.contains("KITE-TEST cpu ok"));
    let svg = std::fs::read_to_string(&svg).unwrap();
    assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn bench_rejects_an_unknown_workload() {
    let mut cmd = kite();
    cmd.args(["bench", "--runs", "1", "gpu"]);
    let out = run(cmd, Duration::from_secs(30));
    assert_eq!(out.code, Some(2));
    assert_eq!(
        out.error_lines(),
        [
            "kite: error: unknown workload \"gpu\"; choose from cpu, mem, pio-rtt, mmio-rtt, startup, virtio-blk, virtio-net"
        ]
    );
}
