//! `kite bench --peer PATH`: the same guest runs under a Firecracker-compatible binary too.
//!
//! For each workload both can run, every run is host (if the workload has a host side), Kite,
//! peer, in turn, so drift hits all alike. Kite and the peer boot from one Firecracker JSON
//! configuration file, written here per workload: Kite as `kite run --no-acpi --no-api
//! --config-file FILE`, the peer as `PATH --no-api --config-file FILE` (Firecracker's own flags;
//! `--no-seccomp` on the peer, `--seccomp off` on Kite when the bench runs with `--seccomp off`).
//! Both go through [`measure`], which counts each run's whole cost: until the VM is freed, the
//! CPU of every process, and the VMM's own peak RSS ([`cost_rows`]). The figures the guest
//! prints (cycles per workload) give the same rows as for Kite, with the peer's samples beside
//! Kite's and a Kite/peer ratio ([`add_peer_samples`]).

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::json;

use super::interrupt;
use super::measure;
use super::net;
use super::report::{RawRun, Row, Status};
use super::workloads::{self, Ctx, Outcome, Sample, Side, Workload};

/// The peer and how both sides run.
#[derive(Clone, Debug)]
pub struct Peer {
    /// The Firecracker-compatible binary.
    pub path: PathBuf,
    /// Arguments the peer gets before its own flags (`--peer-arg`).
    pub args: Vec<String>,
    /// Where the per-workload configuration files go.
    pub dir: PathBuf,
}

/// Whether the peer runs `w`: the workloads that boot the test guest from a plain configuration
/// (no API calls, no Kite-only flags, one machine at a time).
pub fn runs(w: Workload) -> bool {
    matches!(
        w,
        Workload::Cpu
            | Workload::Mem
            | Workload::PioRtt
            | Workload::MmioRtt
            | Workload::Startup
            | Workload::BlkRand
            | Workload::BlkSeq
            | Workload::VirtioNet
            | Workload::VsockIrq
            | Workload::VsockEventIdx
            | Workload::VsockPoll
    )
}

/// The Firecracker JSON configuration of `w`'s guest run: the test guest with `w`'s command
/// line, [`workloads::GUEST_MEMORY`], one vCPU, `w`'s disk or network interface, and the log
/// to the file `log` at level Info. (Firecracker logs to stdout by default, where its lines
/// could land in the middle of the guest's result line, which the serial port writes a byte at
/// a time; both sides log to the file alike.)
pub fn config(ctx: &Ctx, w: Workload, log: &Path) -> serde_json::Value {
    let guest = ctx
        .guest
        .map(|g| g.display().to_string())
        .unwrap_or_default();
    let mut doc = json!({
        "boot-source": {
            "kernel_image_path": guest,
            "boot_args": workloads::cmdline(w),
        },
        "machine-config": {
            "vcpu_count": 1,
            "mem_size_mib": workloads::guest_memory_mib(),
        },
        // Firecracker requires the list, empty or not.
        "drives": [],
        "logger": {
            "log_path": log.display().to_string(),
            "level": "Info",
        },
    });
    if let (true, Some(disk)) = (w.needs_disk(), ctx.disk) {
        doc["drives"] = json!([{
            "drive_id": "vda",
            "path_on_host": disk.display().to_string(),
            "is_root_device": false,
            "is_read_only": false,
        }]);
    }
    if let (true, Some(v)) = (w.needs_vsock(), ctx.vsock) {
        doc["vsock"] = json!({
            "guest_cid": super::vsock::GUEST_CID,
            "uds_path": v.socket.display().to_string(),
        });
    }
    if w.needs_net() {
        doc["network-interfaces"] = json!([{
            "iface_id": "eth0",
            "host_dev_name": net::TAP,
            "guest_mac": workloads::GUEST_MAC,
        }]);
    }
    doc
}

/// Write `w`'s configuration file in `dir`; its path.
pub fn write_config(ctx: &Ctx, w: Workload, dir: &Path) -> std::io::Result<PathBuf> {
    std::fs::create_dir_all(dir)?;
    let name = w.label().replace(' ', "-");
    let path = dir.join(format!("{name}.json"));
    // Firecracker opens the log file, but does not make it.
    let log = dir.join(format!("{name}.log"));
    std::fs::File::create(&log)?;
    let text =
        serde_json::to_string_pretty(&config(ctx, w, &log)).map_err(std::io::Error::other)?;
    std::fs::write(&path, text)?;
    Ok(path)
}

/// Kite's side: `kite run --no-acpi --no-api --config-file FILE`.
pub fn kite_command(ctx: &Ctx, w: Workload, file: &Path) -> Command {
    let mut cmd = Command::new(ctx.exe);
    // The test guest finds its devices on the command line, as Firecracker puts them there.
    cmd.args(["run", "--no-acpi", "--no-api", "--config-file"])
        .arg(file);
    if !ctx.seccomp {
        cmd.args(["--seccomp", "off"]);
    }
    workloads::wrap_net(ctx, w, cmd)
}

/// The peer's side: `PATH [ARGS] --no-api --config-file FILE`, as Firecracker takes them.
pub fn peer_command(ctx: &Ctx, w: Workload, peer: &Peer, file: &Path) -> Command {
    let mut cmd = Command::new(&peer.path);
    cmd.args(&peer.args);
    cmd.args(["--no-api", "--config-file"]).arg(file);
    if !ctx.seccomp {
        cmd.arg("--no-seccomp");
    }
    workloads::wrap_net(ctx, w, cmd)
}

/// Run `cmd`, one side of `w`, through [`measure`]; its result line and its cost.
pub fn run_measured(w: Workload, cmd: &Command) -> Outcome {
    match measure::run(cmd, w.limit()) {
        Ok((out, cost)) => match workloads::parse_output(w, out) {
            Outcome::Done(mut s) => {
                s.wall_ms = cost.exit_ms;
                s.cost = Some(cost);
                Outcome::Done(s)
            }
            other => other,
        },
        Err(e) => Outcome::Failed(e.to_string()),
    }
}

/// Give each of `rows` the peer's samples of the row of the same name in `peer_rows` (made from
/// the peer's runs as `rows` were from Kite's).
pub fn add_peer_samples(rows: &mut [Row], peer_rows: &[Row]) {
    for row in rows.iter_mut().filter(|r| r.status == Status::Ok) {
        if let Some(p) = peer_rows
            .iter()
            .find(|p| p.status == Status::Ok && p.name == row.name && p.unit == row.unit)
        {
            row.peer = p.guest.clone();
        }
    }
}

/// The rows `startup` makes with a peer: the guest's `hello` line after the start, on both.
/// (Kite's timeline milestones need `--timeline`, which the peer has not.)
pub fn startup_rows(kite: &[Sample], peer: &[Sample]) -> Vec<Row> {
    let line = |s: &[Sample]| s.iter().map(|s| s.line_ms).collect::<Vec<f64>>();
    let mut row = Row::new(
        "startup",
        "startup: hello line after the start",
        "ms",
        Vec::new(),
        line(kite),
    );
    row.peer = line(peer);
    vec![row]
}

/// One figure of a [`measure::Cost`].
type CostField = fn(&measure::Cost) -> f64;

/// Each side's whole cost for `label`: exit, VM freed, CPU of every process, the VMM's peak RSS.
/// `peer` is empty when the peer did not run it.
pub fn cost_rows(label: &str, kite: &[Sample], peer: &[Sample]) -> Vec<Row> {
    let costs = |s: &[Sample]| -> Option<Vec<measure::Cost>> { s.iter().map(|s| s.cost).collect() };
    let Some(k) = costs(kite) else {
        return Vec::new();
    };
    let p = costs(peer).unwrap_or_default();
    let field = |v: &[measure::Cost], f: fn(&measure::Cost) -> f64| v.iter().map(f).collect();
    let figures: [(&str, &str, CostField); 4] = [
        ("whole run, the VMM's exit", "ms", |c| c.exit_ms),
        ("whole run, until the VM is freed", "ms", |c| c.freed_ms),
        ("CPU, every process", "ms", |c| c.cpu_ms),
        ("peak RSS of the VMM", "MiB", |c| c.peak_rss_mib),
    ];
    figures
        .into_iter()
        .map(|(what, unit, f)| {
            let mut row = Row::new(
                label,
                &format!("{label}: {what}"),
                unit,
                Vec::new(),
                field(&k, f),
            );
            row.peer = field(&p, f);
            row
        })
        .collect()
}

/// Keep `s`, the result line of `side` ("host", "guest" or "peer"), in `raw`.
fn record(raw: &mut Vec<RawRun>, w: Workload, side: &'static str, run: u32, s: &Sample) {
    raw.push(RawRun {
        workload: w.label().into(),
        side,
        run,
        line: s.line.clone(),
        wall_ms: s.wall_ms,
    });
}

/// `kite bench`'s run of `w` with a peer: each run is host (if `w` has one), Kite, peer; Kite and the
/// peer boot from one configuration file through [`measure`]. A peer that fails a run is not
/// started again for `w` and its samples are left out (an n/a row says why); Kite's stay.
pub(crate) fn bench(
    ctx: &Ctx,
    w: Workload,
    runs: u32,
    p: &Peer,
    progress: &mut super::Progress,
    raw: &mut Vec<RawRun>,
) -> Vec<Row> {
    let file = match write_config(ctx, w, &p.dir) {
        Ok(file) => file,
        Err(e) => {
            let why = format!("cannot write its configuration file: {e}");
            return vec![Row::without_figures(w.label(), Status::Failed(why))];
        }
    };
    let with_host = w.sides().contains(&Side::Host);
    let (mut host, mut kite, mut peer_samples) = (Vec::new(), Vec::new(), Vec::new());
    let mut peer_failed: Option<String> = None;
    for run in 1..=runs {
        if interrupt::received().is_some() {
            return Vec::new();
        }
        let fail = |side: &str, why: String| {
            let why = format!("{side} run {run}: {why}");
            vec![Row::without_figures(w.label(), Status::Failed(why))]
        };
        if with_host {
            progress.show(&format!("{}: host run {run} of {runs}", w.label()));
            match workloads::run_once(ctx, w, Side::Host) {
                Outcome::Done(s) => {
                    record(raw, w, "host", run, &s);
                    host.push(s);
                }
                Outcome::NotAvailable(why) => {
                    return vec![Row::without_figures(w.label(), Status::NotAvailable(why))];
                }
                Outcome::Failed(why) => return fail("host", why),
            }
        }
        progress.show(&format!("{}: kite run {run} of {runs}", w.label()));
        match run_measured(w, &kite_command(ctx, w, &file)) {
            Outcome::Done(s) => {
                record(raw, w, "guest", run, &s);
                kite.push(s);
            }
            Outcome::NotAvailable(why) => {
                return vec![Row::without_figures(w.label(), Status::NotAvailable(why))];
            }
            Outcome::Failed(why) => return fail("guest", why),
        }
        if peer_failed.is_some() {
            progress.done += 1;
            continue;
        }
        if interrupt::received().is_some() {
            return Vec::new();
        }
        progress.show(&format!("{}: peer run {run} of {runs}", w.label()));
        match run_measured(w, &peer_command(ctx, w, p, &file)) {
            Outcome::Done(s) => {
                record(raw, w, "peer", run, &s);
                peer_samples.push(s);
            }
            Outcome::NotAvailable(why) | Outcome::Failed(why) => {
                peer_failed = Some(format!("peer run {run}: {why}"));
                peer_samples.clear();
            }
        }
    }
    let mut rows = match w {
        Workload::Startup => startup_rows(&kite, &peer_samples),
        _ => {
            let mut rows = workloads::rows(ctx, w, &host, &kite);
            if !peer_samples.is_empty() {
                let peer_rows = workloads::rows(ctx, w, &host, &peer_samples);
                add_peer_samples(&mut rows, &peer_rows);
            }
            rows
        }
    };
    if rows.iter().any(|r| matches!(r.status, Status::Failed(_))) {
        return rows;
    }
    rows.extend(cost_rows(w.label(), &kite, &peer_samples));
    if let Some(why) = peer_failed {
        let name = format!("{} (peer)", w.label());
        rows.push(Row::without_figures(&name, Status::NotAvailable(why)));
    }
    rows
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::measure::Cost;

    fn ctx(seccomp: bool) -> Ctx<'static> {
        Ctx {
            exe: Path::new("/k/kite"),
            guest: Some(Path::new("/g/testguest.elf")),
            linux: None,
            disk: Some(Path::new("/d/disk.img")),
            net: None,
            vsock: None,
            tsc_hz: 2e9,
            seccomp,
        }
    }

    fn args(cmd: &Command) -> Vec<String> {
        cmd.get_args()
            .map(|a| a.to_string_lossy().into_owned())
            .collect()
    }

    #[test]
    fn both_sides_boot_one_configuration_with_the_same_seccomp() {
        let c = ctx(true);
        let doc = config(&c, Workload::BlkRand, Path::new("/t/blk.log"));
        assert_eq!(doc["logger"]["log_path"], "/t/blk.log");
        assert_eq!(doc["boot-source"]["kernel_image_path"], "/g/testguest.elf");
        assert_eq!(
            doc["boot-source"]["boot_args"],
            "kite_test=virtio-blk kite_blk_mode=rand kite_blk_bs=4096 kite_blk_depth=1 kite_n=4096"
        );
        assert_eq!(doc["machine-config"]["mem_size_mib"], 256);
        assert_eq!(doc["drives"][0]["path_on_host"], "/d/disk.img");
        assert!(doc.get("network-interfaces").is_none());
        let net = config(&c, Workload::VirtioNet, Path::new("/t/net.log"));
        assert_eq!(net["network-interfaces"][0]["host_dev_name"], net::TAP);
        assert_eq!(net["drives"], json!([]));

        let file = Path::new("/t/cpu.json");
        let k = kite_command(&c, Workload::Cpu, file);
        assert_eq!(
            args(&k),
            [
                "run",
                "--no-acpi",
                "--no-api",
                "--config-file",
                "/t/cpu.json"
            ]
        );
        let fc = Peer {
            path: "/p/firecracker".into(),
            args: Vec::new(),
            dir: "/t".into(),
        };
        let p = peer_command(&c, Workload::Cpu, &fc, file);
        assert_eq!(p.get_program(), "/p/firecracker");
        assert_eq!(args(&p), ["--no-api", "--config-file", "/t/cpu.json"]);
        let old_kite = Peer {
            args: vec!["--no-acpi".into()],
            ..fc.clone()
        };
        let p = peer_command(&c, Workload::Cpu, &old_kite, file);
        assert_eq!(
            args(&p),
            ["--no-acpi", "--no-api", "--config-file", "/t/cpu.json"]
        );
        let off = ctx(false);
        assert!(
            args(&kite_command(&off, Workload::Cpu, file))
                .ends_with(&["--seccomp".into(), "off".into()])
        );
        assert!(
            args(&peer_command(&off, Workload::Cpu, &fc, file)).contains(&"--no-seccomp".into())
        );
    }

    #[test]
    fn vsock_goes_in_the_configuration_as_firecracker_takes_it() {
        let dir =
            std::env::temp_dir().join(format!("kite-bench-peer-vsock-{}", std::process::id()));
        let setup = crate::vsock::VsockSetup::create(&dir).unwrap();
        let c = Ctx {
            vsock: Some(&setup),
            ..ctx(true)
        };
        let doc = config(&c, Workload::VsockEventIdx, Path::new("/t/v.log"));
        assert_eq!(doc["vsock"]["guest_cid"], 3);
        assert_eq!(doc["vsock"]["uds_path"], setup.socket.display().to_string());
        assert!(
            config(&c, Workload::Cpu, Path::new("/t/c.log"))
                .get("vsock")
                .is_none()
        );
        assert!(runs(Workload::VsockIrq) && runs(Workload::VsockPoll));
        drop(setup);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn the_peer_runs_only_plain_configurations() {
        assert!(runs(Workload::Cpu) && runs(Workload::Startup) && runs(Workload::BlkSeq));
        for w in [
            Workload::Scale,
            Workload::Concurrent,
            Workload::LinuxBoot,
            Workload::PauseResume,
        ] {
            assert!(!runs(w), "{w:?}");
        }
    }

    fn costly(exit: f64, cpu: f64, rss: f64) -> Sample {
        Sample {
            line_ms: exit - 1.0,
            cost: Some(Cost {
                exit_ms: exit,
                freed_ms: exit + 10.0,
                cpu_ms: cpu,
                peak_rss_mib: rss,
            }),
            ..Sample::default()
        }
    }

    #[test]
    fn cost_rows_pair_kite_with_the_peer() {
        let kite = [costly(40.0, 30.0, 4.8), costly(44.0, 32.0, 4.8)];
        let peer = [costly(50.0, 20.0, 4.0), costly(50.0, 21.0, 4.4)];
        let rows = cost_rows("cpu", &kite, &peer);
        assert_eq!(rows.len(), 4);
        assert_eq!(rows[1].name, "cpu: whole run, until the VM is freed");
        assert_eq!(rows[1].guest, [50.0, 54.0]);
        assert_eq!(rows[1].peer, [60.0, 60.0]);
        let r = rows[2].peer_ratio().unwrap();
        assert!((r.median - 31.0 / 20.5).abs() < 1e-9, "{r:?}");
        assert!((r.min - 1.5).abs() < 1e-9 && (r.max - 32.0 / 21.0).abs() < 1e-9);
        assert_eq!(rows[3].unit, "MiB");
        assert!(rows.iter().all(|r| r.ratio().is_none()));
        // Without the peer's runs, Kite's own figures stay.
        let alone = cost_rows("cpu", &kite, &[]);
        assert!(alone[0].peer.is_empty() && alone[0].peer_ratio().is_none());
        assert_eq!(alone[0].guest, [40.0, 44.0]);
        assert!(cost_rows("cpu", &[Sample::default()], &peer).is_empty());

        let start = startup_rows(&kite, &peer);
        assert_eq!(start[0].guest, [39.0, 43.0]);
        assert_eq!(start[0].peer, [49.0, 49.0]);
    }

    #[test]
    fn peer_samples_go_to_the_row_of_the_same_name() {
        let mut rows = vec![
            Row::new("cpu", "cpu: a", "ms", vec![1.0], vec![2.0]),
            Row::new("cpu", "cpu: b", "ms", vec![1.0], vec![2.0]),
        ];
        let peer = vec![Row::new("cpu", "cpu: b", "ms", vec![1.0], vec![4.0])];
        add_peer_samples(&mut rows, &peer);
        assert!(rows[0].peer.is_empty());
        assert_eq!(rows[1].peer, [4.0]);
        assert!((rows[1].peer_ratio().unwrap().median - 0.5).abs() < 1e-12);
    }
}
