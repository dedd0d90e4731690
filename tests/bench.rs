//! `kite bench` end to end: one run of `cpu` and `pio-rtt` on the host and in a VM, with a time
//! limit; the table must have their rows with positive figures, and the JSON and SVG must be
//! written. One run of `scale` (eight VMs of the test guest's `hello`, about 2 s): every machine
//! has its figures or says why not. One run of `concurrent` (1, 5 and 20 VMs at once). One run of `snapshot`
//! with Kite as its own peer. And a bench interrupted in the middle of a run: it must leave
//! nothing behind.

mod common;

use std::io::{BufRead, BufReader, Read};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::Child;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::*;

/// The numbers on a table line after its name and unit.
fn figures(line: &str, name: &str) -> Vec<f64> {
    line[name.len()..]
        .replace("..", " ")
        .split_whitespace()
        .filter_map(|w| w.trim_matches(['(', ')']).parse::<f64>().ok())
        .collect()
}

/// The first line of `stdout` that starts with `name`; fails the test if there is none.
fn row<'a>(stdout: &'a str, name: &str) -> &'a str {
    stdout
        .lines()
        .find(|l| l.starts_with(name))
        .unwrap_or_else(|| panic!("no {name} row in\n{stdout}"))
}

/// The figures of row `name` under a peer: Kite's median/min/max, the peer's, the ratio
/// (min..max); all nine there, positive and finite.
fn peer_row(stdout: &str, name: &str) -> Vec<f64> {
    let l = row(stdout, name);
    let f = figures(l, name);
    assert_eq!(f.len(), 9, "{l}");
    assert!(f.iter().all(|&x| x > 0.0 && x.is_finite()), "{l}");
    f
}

/// One run: median = min = max on each side, and the ratio is Kite's over the peer's.
fn assert_one_run_ratio(f: &[f64]) {
    assert!((f[6] - f[0] / f[3]).abs() < 0.01 * f[6] + 0.006, "{f:?}");
}

/// A `kite bench --runs 1` of the test guest, with a scratch directory of the test's own
/// (removed when dropped) for its JSON, its SVG and a peer link.
struct Bench {
    elf: PathBuf,
    dir: PathBuf,
    json: PathBuf,
    svg: PathBuf,
    peer: Option<PathBuf>,
}

impl Bench {
    /// None (after a skip line for `test`) where KVM is unusable; `tag` names the directory.
    fn new(test: &str, tag: &str) -> Option<Bench> {
        if let Some(reason) = kvm_unavailable() {
            skip(test, Need::Kvm, &reason);
            return None;
        }
        let elf = testguest().unwrap_or_else(|e| panic!("{e}"));
        let dir = std::env::temp_dir().join(format!("kite-test-{}-{tag}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        Some(Bench {
            elf,
            json: dir.join("out.json"),
            svg: dir.join("out.svg"),
            dir,
            peer: None,
        })
    }

    /// Kite itself as the peer (`--peer` on every run): a link named `firecracker` (as which
    /// it takes Firecracker's flags) in the scratch directory.
    fn with_kite_as_peer(mut self) -> Bench {
        let link = self.dir.join("firecracker");
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_kite"), &link).unwrap();
        self.peer = Some(link);
        self
    }

    /// `--json` and `--svg` into the scratch directory.
    fn outputs(&self) -> [&str; 4] {
        ["--json", path_str(&self.json), "--svg", path_str(&self.svg)]
    }

    /// `kite bench --runs 1 --guest ELF [--peer LINK]` with `args`, which must exit 0 within
    /// `limit`.
    fn run(&self, args: &[&str], limit: Duration) -> Outcome {
        let mut cmd = kite();
        cmd.args(["bench", "--runs", "1", "--guest", path_str(&self.elf)]);
        if let Some(link) = &self.peer {
            cmd.arg("--peer").arg(link);
        }
        cmd.args(args);
        let out = run(cmd, limit);
        assert_eq!(out.code, Some(0), "{}\n{}", out.stdout, out.stderr);
        out
    }
}

impl Drop for Bench {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[test]
fn bench_runs_cpu_and_pio_rtt_side_by_side() {
    let Some(bench) = Bench::new("bench cpu pio-rtt", "bench") else {
        return;
    };
    let args = [&bench.outputs()[..], &["cpu", "pio-rtt"]].concat();
    let out = bench.run(&args, Duration::from_secs(240));

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

    let json = std::fs::read_to_string(&bench.json).unwrap();
    assert!(json.contains("\"result_lines\"") && json.contains("KITE-TEST cpu ok"));
    let svg = std::fs::read_to_string(&bench.svg).unwrap();
    assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
}

/// `kite bench pause-resume --runs 1`: 100 pauses and resumes over the API socket, the two
/// guest-only rows with positive figures.
#[test]
fn bench_pause_resume_has_both_latencies() {
    let Some(bench) = Bench::new("bench pause-resume", "pause-resume") else {
        return;
    };
    let out = bench.run(&["pause-resume"], Duration::from_secs(120));
    for name in [
        "pause-resume: PATCH /vm Paused to all vCPUs parked (median of 100)",
        "pause-resume: PATCH /vm Resumed to all vCPUs running (median of 100)",
    ] {
        let line = row(&out.stdout, name);
        let f = figures(line, name);
        assert_eq!(f.len(), 3, "{line}");
        assert!(f.iter().all(|&x| x > 0.0), "{line}");
    }
}

/// `kite bench concurrent --runs 1`: 1, 5 and 20 machines started at once, each group with its
/// two figures (all ready, slowest VM ready), positive, the slowest never after all were ready,
/// and a result line per group in the JSON.
#[test]
fn bench_concurrent_starts_each_group() {
    let Some(bench) = Bench::new("bench concurrent", "concurrent") else {
        return;
    };
    let out = bench.run(
        &["--json", path_str(&bench.json), "concurrent"],
        Duration::from_secs(240),
    );
    for group in ["1 VM", "5 VMs", "20 VMs"] {
        let mut got = Vec::new();
        for figure in [
            "all ready (first spawn to last result line)",
            "slowest VM ready (its spawn to its result line)",
        ] {
            let row_name = format!("concurrent {group}: {figure}");
            let line = row(&out.stdout, &row_name);
            let f = figures(line, &row_name);
            assert_eq!(f.len(), 3, "{line}");
            assert!(f.iter().all(|&x| x > 0.0), "{line}");
            got.push(f[0]);
        }
        assert!(
            got[1] <= got[0] + 0.1,
            "{group}: slowest after all ready: {got:?}"
        );
    }
    let text = std::fs::read_to_string(&bench.json).unwrap();
    let doc: serde_json::Value = serde_json::from_str(&text).expect(&text);
    let rows = doc["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 6, "{text}");
    assert!(
        rows.iter()
            .all(|r| r["workload"] == "concurrent" && r["status"] == "ok")
    );
    assert_eq!(doc["result_lines"].as_array().unwrap().len(), 3, "{text}");
}

/// `kite bench scale --runs 1`: every machine has its six figures, positive and in time order,
/// or (where this host cannot hold it) one n/a row saying why; the JSON has its rows and a
/// result line per machine started, the SVG its chart.
#[test]
fn bench_scale_starts_every_machine_once() {
    let Some(bench) = Bench::new("bench scale", "scale") else {
        return;
    };
    let args = [&bench.outputs()[..], &["scale"]].concat();
    let out = bench.run(&args, Duration::from_secs(240));

    let machines = [
        "64M", "1G", "4G", "16G", "1 vCPU", "2 vCPUs", "8 vCPUs", "32 vCPUs",
    ];
    let mut started = 0;
    for machine in machines {
        let name = format!("scale {machine}");
        let na = out
            .stdout
            .lines()
            .find(|l| l.split("  ").next() == Some(name.as_str()) && l.contains("  n/a: "));
        if let Some(line) = na {
            eprintln!("{line}");
            continue;
        }
        started += 1;
        let mut previous = 0.0;
        for figure in [
            "guest RAM ready",
            "vCPUs configured",
            "first guest instruction",
            "guest ready",
            "VM stopped, process exited",
            "vmm memory overhead",
        ] {
            let row_name = format!("{name}: {figure}");
            let line = row(&out.stdout, &row_name);
            // Guest side only: median, min, max.
            let f = figures(line, &row_name);
            assert_eq!(f.len(), 3, "{line}");
            assert!(f.iter().all(|&x| x > 0.0), "{line}");
            // The milestones come in order (the memory row is in MiB).
            if figure != "vmm memory overhead" {
                assert!(f[0] >= previous, "{line} before {previous}");
                previous = f[0];
            }
        }
    }
    // 64M, 1G and 2 vCPUs fit any host that runs the other tests.
    assert!(started >= 3, "{}", out.stdout);

    let text = std::fs::read_to_string(&bench.json).unwrap();
    let doc: serde_json::Value = serde_json::from_str(&text).expect(&text);
    let rows = doc["rows"].as_array().unwrap();
    assert!(rows.iter().all(|r| r["workload"] == "scale"), "{text}");
    let ok = rows.iter().filter(|r| r["status"] == "ok").count();
    assert_eq!(ok, started * 6, "{text}");
    let lines = doc["result_lines"].as_array().unwrap();
    assert_eq!(lines.len(), started, "{text}");
    for line in lines {
        assert!(line["workload"].as_str().unwrap().starts_with("scale "));
        assert!(
            line["line"]
                .as_str()
                .unwrap()
                .starts_with("KITE-TEST hello ok ram_mib=")
        );
    }
    let svg = std::fs::read_to_string(&bench.svg).unwrap();
    assert!(svg.contains("Kite as the machine grows"), "{svg}");
}

/// `kite bench --peer`: Kite itself is the peer, through a link named `firecracker` (as which
/// it takes Firecracker's flags). `cpu` (host, Kite, peer) and `startup` (Kite, peer) once each:
/// every row has the Kite/peer columns, the cost rows are there with sane figures, and the JSON
/// and the SVG have the ratios.
#[test]
fn bench_with_kite_as_its_own_peer() {
    let Some(bench) = Bench::new("bench --peer", "bench-peer").map(Bench::with_kite_as_peer) else {
        return;
    };
    let args = [&bench.outputs()[..], &["cpu", "startup"]].concat();
    let out = bench.run(&args, Duration::from_secs(240));
    let header = out.stdout.lines().next().unwrap();
    let words: Vec<&str> = header.split_whitespace().collect();
    assert_eq!(
        words[words.len() - 6..],
        ["peer", "median", "min", "max", "kite/peer", "(min..max)"],
        "{header}"
    );
    // Kite median/min/max, the peer's, the ratio (min..max); no host side.
    let kite_and_peer = |name: &str| -> (f64, f64, f64) {
        let f = peer_row(&out.stdout, name);
        assert_one_run_ratio(&f);
        (f[0], f[3], f[6])
    };
    // The same binary on both sides: the ratios stay within what a busy machine explains.
    for row in [
        "cpu: whole run, until the VM is freed",
        "cpu: CPU, every process",
        "startup: hello line after the start",
        "startup: CPU, every process",
    ] {
        let (_, _, ratio) = kite_and_peer(row);
        assert!((0.2..5.0).contains(&ratio), "{row}: {ratio}");
    }
    let (rss, peer_rss, ratio) = kite_and_peer("startup: peak RSS of the VMM");
    assert!(
        (1.0..64.0).contains(&rss) && (1.0..64.0).contains(&peer_rss),
        "{rss} {peer_rss}"
    );
    assert!(
        (0.8..1.25).contains(&ratio),
        "same binary, same guest: {ratio}"
    );
    let (exit, _, _) = kite_and_peer("startup: whole run, the VMM's exit");
    let (freed, _, _) = kite_and_peer("startup: whole run, until the VM is freed");
    assert!(freed >= exit, "freed {freed} before the exit {exit}");
    // The guest/host row of cpu has all four groups: host, Kite, ratio, peer, ratio.
    let cpu = row(&out.stdout, "cpu: workload (TSC)");
    let f = figures(cpu, "cpu: workload (TSC)");
    assert_eq!(f.len(), 15, "{cpu}");
    assert!(
        out.stdout.contains("interleaved host/kite/peer"),
        "{}",
        out.stdout
    );
    assert!(out.stdout.contains("seccomp on on both"), "{}", out.stdout);

    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&bench.json).unwrap()).unwrap();
    assert_eq!(v["peer"], path_str(bench.peer.as_ref().unwrap()));
    assert_eq!(v["seccomp"], "on");
    let rows = v["rows"].as_array().unwrap();
    assert!(
        rows.iter()
            .all(|r| r["kite_over_peer"]["median"].as_f64().unwrap() > 0.0)
    );
    let sides: Vec<&str> = v["result_lines"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["side"].as_str().unwrap())
        .collect();
    assert_eq!(sides, ["host", "guest", "peer", "guest", "peer"]);
    let svg = std::fs::read_to_string(&bench.svg).unwrap();
    assert!(svg.contains("Kite / peer"), "{svg}");
}

/// `kite bench snapshot --runs 1` with Kite as its own peer (through a `firecracker` symlink):
/// every figure of both sizes and of the clones, Kite's and the peer's beside it with a ratio;
/// Kite's own timeline rows; clones sharing their pages (PSS per clone falls as clones are
/// added); the JSON's result lines and the SVG's Kite/peer chart.
#[test]
fn bench_snapshot_with_kite_as_its_own_peer() {
    let Some(bench) = Bench::new("bench snapshot", "bench-snap").map(Bench::with_kite_as_peer)
    else {
        return;
    };
    let args = [&bench.outputs()[..], &["snapshot"]].concat();
    let out = bench.run(&args, Duration::from_secs(400));
    // Kite's figures (and the peer's and the ratio, where it has them): positive and finite.
    let row = |name: &str| -> Vec<f64> {
        let l = crate::row(&out.stdout, name);
        let f = figures(l, name);
        assert!(f.iter().all(|&x| x > 0.0 && x.is_finite()), "{l}");
        f
    };
    for size in ["256 MiB", "2 GiB"] {
        for what in [
            "create Full (PUT /snapshot/create)",
            "create Diff (PUT /snapshot/create)",
            "load (PUT /snapshot/load, resume_vm)",
            "spawn to guest running (load answered)",
            "first touch of 64 MiB after the restore (File, lazy)",
            "first touch of 64 MiB in a fresh VM",
            "touch of 64 MiB again (warm)",
        ] {
            // Kite median/min/max, the peer's, the ratio (min..max).
            let f = peer_row(&out.stdout, &format!("snapshot {size}: {what}"));
            assert_one_run_ratio(&f);
        }
        // The load answers once the guest runs: spawn to running includes it.
        let load = row(&format!(
            "snapshot {size}: load (PUT /snapshot/load, resume_vm)"
        ));
        let spawn = row(&format!(
            "snapshot {size}: spawn to guest running (load answered)"
        ));
        assert!(
            spawn[0] >= load[0] && spawn[3] >= load[3],
            "{spawn:?} {load:?}"
        );
        for what in [
            "load: process start to first guest instruction (Kite's timeline)",
            "kite restore: process start to first guest instruction",
        ] {
            let f = row(&format!("snapshot {size}: {what}"));
            assert_eq!(f.len(), 3, "Kite only: {size}: {what}: {f:?}");
        }
    }
    let pss = |n: &str| row(&format!("snapshot clones: PSS per clone, {n}"));
    let (one, five, twenty) = (pss("1 clone"), pss("5 clones"), pss("20 clones"));
    for side in [0, 3] {
        assert!(
            twenty[side] < one[side] && five[side] < one[side],
            "clones share pages: 1 {one:?}, 5 {five:?}, 20 {twenty:?}"
        );
        assert!(one[side] < 64.0, "one clone of a 256 MiB guest: {one:?}");
    }
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&bench.json).unwrap()).unwrap();
    let lines: Vec<(&str, &str)> = v["result_lines"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| (r["workload"].as_str().unwrap(), r["side"].as_str().unwrap()))
        .collect();
    assert_eq!(
        lines,
        [
            ("snapshot 256 MiB", "guest"),
            ("snapshot 2 GiB", "guest"),
            ("snapshot clones", "guest"),
            ("snapshot 256 MiB", "peer"),
            ("snapshot 2 GiB", "peer"),
            ("snapshot clones", "peer"),
        ]
    );
    let svg = std::fs::read_to_string(&bench.svg).unwrap();
    assert!(svg.contains("Kite / peer") && svg.contains("snapshot 2 GiB: load"));
}

/// `--peer` that is not there is a usage error, before anything runs.
#[test]
fn bench_rejects_a_missing_peer() {
    let mut cmd = kite();
    cmd.args([
        "bench",
        "--runs",
        "1",
        "--peer",
        "/nonexistent/firecracker",
        "cpu",
    ]);
    let out = run(cmd, Duration::from_secs(30));
    assert_eq!(out.code, Some(2), "{}", out.stderr);
    assert_eq!(
        out.error_lines(),
        [
            "kite: error: --peer /nonexistent/firecracker: no such executable file; give the path of a Firecracker binary"
        ]
    );
}

/// `kite bench virtio-vsock --peer`: the three vsock rows (irq, irq+event_idx, poll), each a
/// 4 MiB echo through the bench's own Unix-socket echo server, under Kite and under Kite as
/// its own peer (which gets the device from the JSON file's `vsock`, as Firecracker would).
#[test]
fn bench_vsock_rows_under_kite_and_its_peer() {
    let Some(bench) =
        Bench::new("bench virtio-vsock --peer", "bench-vsock").map(Bench::with_kite_as_peer)
    else {
        return;
    };
    let out = bench.run(
        &["--peer-arg=--no-acpi", "virtio-vsock"],
        Duration::from_secs(240),
    );
    for mode in ["irq", "irq+event_idx", "poll"] {
        peer_row(&out.stdout, &format!("virtio-vsock {mode}: 4 MiB echoed"));
    }
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
            "kite: error: unknown workload \"gpu\"; choose from cpu, mem, pio-rtt, mmio-rtt, startup, scale, concurrent, linux-boot, virtio-blk, virtio-net, virtio-vsock, pause-resume, snapshot"
        ]
    );
}

fn netns_exists(name: &str) -> bool {
    let out = std::process::Command::new("ip")
        .args(["netns", "list"])
        .output()
        .expect("ip runs");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .any(|l| l.split_whitespace().next() == Some(name))
}

/// Whether any process of process group `pgid` is left.
fn group_alive(pgid: i32) -> bool {
    // SAFETY: kill() with signal 0 only checks that the processes exist; it takes no memory.
    unsafe { libc::kill(-pgid, 0) == 0 }
}

fn signal(target: i32, signal: i32) {
    // SAFETY: kill() takes no memory; the target is our child (or its process group), which has
    // not been waited for yet.
    assert_eq!(unsafe { libc::kill(target, signal) }, 0);
}

/// A bench started in a process group of its own, as a shell starts a job; killed (the whole
/// group) and its namespace and scratch directory removed when dropped, whatever the test saw.
struct Job {
    child: Child,
    pgid: i32,
    netns: String,
    scratch: PathBuf,
}

impl Drop for Job {
    fn drop(&mut self) {
        if group_alive(self.pgid) {
            // SAFETY: as in `signal`; failure only means the group is gone.
            unsafe { libc::kill(-self.pgid, libc::SIGKILL) };
        }
        let _ = self.child.wait();
        if netns_exists(&self.netns) {
            let _ = std::process::Command::new("ip")
                .args(["netns", "del", &self.netns])
                .output();
        }
        let _ = std::fs::remove_dir_all(&self.scratch);
    }
}

/// `kite bench` of virtio-net and virtio-blk gets `sig` during its first virtio-net guest run,
/// sent to its whole process group (as a terminal sends Ctrl-C) or to the bench alone (as `kill`
/// does): it must end within a time limit with 128+N and one line saying it was interrupted,
/// with no process of its group left (the VM got the signal too, or from the bench), and neither
/// its network namespace nor its scratch directory left behind.
fn interrupted_bench_cleans_up(test: &str, sig: i32, name: &str, whole_group: bool) {
    if let Some(reason) = kvm_unavailable() {
        skip(test, Need::Kvm, &reason);
        return;
    }
    // A namespace of this test's own, made and deleted at once: can it make one?
    if let Err(reason) = Netns::create(&format!("probe-{}", name.to_lowercase())) {
        skip(test, Need::Tap, &format!("needs ip netns: {reason}"));
        return;
    }
    let elf = testguest().unwrap_or_else(|e| panic!("{e}"));
    let mut cmd = kite();
    cmd.args(["bench", "--runs", "3", "--guest", path_str(&elf)])
        .args(["virtio-net", "virtio-blk"])
        .process_group(0);
    let mut child = cmd.spawn().expect("kite starts");
    let pid = child.id();
    let stderr = child.stderr.take().unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let mut job = Job {
        child,
        pgid: pid as i32,
        netns: format!("kite-bench-{pid}"),
        scratch: std::env::temp_dir().join(format!("kite-bench-{pid}")),
    };
    let (tx, lines) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let out = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stdout.read_to_string(&mut s);
        s
    });

    // Progress lines come before each run starts.
    let mut seen = Vec::new();
    let limit = Instant::now() + Duration::from_secs(120);
    while !seen
        .iter()
        .any(|l: &String| l.contains("virtio-net: guest run 1 of 3"))
    {
        let left = limit.saturating_duration_since(Instant::now());
        match lines.recv_timeout(left) {
            Ok(line) => seen.push(line),
            Err(_) => panic!("no virtio-net guest run within 120 s:\n{}", seen.join("\n")),
        }
    }
    assert!(netns_exists(&job.netns), "no namespace {}", job.netns);
    assert!(job.scratch.is_dir(), "no {}", job.scratch.display());
    signal(if whole_group { -job.pgid } else { job.pgid }, sig);
    let before_signal = seen.len();

    let limit = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = job.child.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < limit, "still running 30 s after {name}");
        std::thread::sleep(Duration::from_millis(20));
    };
    // The rest of its stderr (the pipe closes as it exits).
    while let Ok(line) = lines.recv_timeout(Duration::from_secs(10)) {
        seen.push(line);
    }
    let stderr = seen.join("\n");
    assert_eq!(status.code(), Some(128 + sig), "{stderr}");
    let errors: Vec<&String> = seen
        .iter()
        .filter(|l| l.starts_with("kite: error:"))
        .collect();
    assert_eq!(
        errors,
        [&format!(
            "kite: error: interrupted by {name}; stopped without a report"
        )],
        "{stderr}"
    );
    assert!(!group_alive(job.pgid), "a process of the bench outlived it");
    // (A guest run takes far longer than the test takes to send the signal.)
    assert!(
        !seen[before_signal..]
            .iter()
            .any(|l| l.starts_with("kite bench [")),
        "a run started after the signal:\n{stderr}"
    );
    assert_eq!(out.join().unwrap(), "", "a report after the signal");
    assert!(!netns_exists(&job.netns), "namespace {} left", job.netns);
    assert!(!job.scratch.exists(), "{} left", job.scratch.display());
}

#[test]
fn bench_interrupted_by_ctrl_c_cleans_up() {
    interrupted_bench_cleans_up("bench Ctrl-C", libc::SIGINT, "SIGINT", true);
}

#[test]
fn bench_stopped_by_sigterm_cleans_up() {
    interrupted_bench_cleans_up("bench SIGTERM", libc::SIGTERM, "SIGTERM", false);
}
