//! The `snapshot` workload: what snapshots cost, through Firecracker's API, so that a
//! Firecracker binary (`--peer`) runs the very same steps beside Kite. Guest side only. Each run,
//! for each side (Kite, then the peer) and each machine size in [`SIZES_MIB`]:
//!
//! - a VMM serving the API boots the test guest's `touch` scenario from a configuration file
//!   (`--api-sock S --config-file F`, `track_dirty_pages` on): it writes one byte to each page of
//!   [`TOUCH_MIB`] MiB round after round. Its first round is the **first touch in a fresh VM**,
//!   its second a **warm** touch;
//! - after the second round: `PATCH /vm` Paused, `PUT /snapshot/create` **Full** (the call's
//!   time), Resumed, a short run, Paused, **Diff**; then the VMM is ended;
//! - a new VMM (`--api-sock` only) gets `PUT /snapshot/load` of the Full snapshot (File backend,
//!   `resume_vm`): the call's time, and **spawn to guest running** (the VMM's spawn to the load's
//!   answer, the wait for its API socket included). The restored guest's next round is the **first
//!   touch after a lazy restore** (the memory file mapped private, each page read in on its first
//!   touch). Kite's `--timeline` gives its **process start to first guest instruction** too, and
//!   so does `kite restore DIR` on the same snapshot (Kite only: Firecracker restores only through
//!   its API).
//!
//! Then, per side, **clones** at [`CLONE_MIB`]: one Full snapshot of the `tick` scenario, loaded
//! by 1, 5 and 20 VMMs at once ([`CLONES`]); once each has printed a tick after its load, the
//! proportional set size (Pss of `/proc/PID/smaps_rollup`: the VMM's own memory and the guest
//! pages it maps, each shared page divided among its sharers) of every clone is summed and given
//! per clone.
//!
//! Each side restores its own snapshot: the file formats differ.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use super::interrupt;
use super::peer::Peer;
use super::report::{RawRun, Row, Status};
use super::timeline::{self, monotonic_ns};
use super::vmm_child::VmmChild;
use super::workloads::Ctx;

/// The workload of every row.
pub const WORKLOAD: &str = "snapshot";
/// Guest RAM of the create/load machines, MiB.
pub const SIZES_MIB: [u64; 2] = [256, 2048];
/// RAM the `touch` scenario writes each round, MiB.
pub const TOUCH_MIB: u64 = 64;
/// Clones started from one snapshot at once, one group per entry.
pub const CLONES: [usize; 3] = [1, 5, 20];
/// Guest RAM of the clones, MiB.
pub const CLONE_MIB: u64 = 256;
/// Steps of one side in one run (for the progress line): one per size, one per clone group.
pub const STEPS: usize = SIZES_MIB.len() + CLONES.len();

/// Which VMM runs a step.
#[derive(Clone, Copy)]
pub enum Vmm<'a> {
    Kite,
    Peer(&'a Peer),
}

impl Vmm<'_> {
    fn name(self) -> &'static str {
        match self {
            Vmm::Kite => "kite",
            Vmm::Peer(_) => "peer",
        }
    }

    /// The side of its result lines in the JSON: "guest" (Kite's, as for every workload) or
    /// "peer".
    fn side(self) -> &'static str {
        match self {
            Vmm::Kite => "guest",
            Vmm::Peer(_) => "peer",
        }
    }

    /// The VMM serving its API on `sock`, booting from `config` if given.
    fn command(self, ctx: &Ctx, sock: &Path, config: Option<&Path>) -> Command {
        let mut cmd = match self {
            Vmm::Kite => {
                let mut cmd = Command::new(ctx.exe);
                // The test guest finds its devices on the command line, not in ACPI tables.
                cmd.args(["run", "--no-acpi", "--timeline"]);
                if !ctx.seccomp {
                    cmd.args(["--seccomp", "off"]);
                }
                cmd
            }
            Vmm::Peer(p) => {
                let mut cmd = Command::new(&p.path);
                cmd.args(&p.args);
                if !ctx.seccomp {
                    cmd.arg("--no-seccomp");
                }
                cmd
            }
        };
        cmd.arg("--api-sock").arg(sock);
        if let Some(file) = config {
            cmd.arg("--config-file").arg(file);
        }
        cmd
    }
}

/// The Firecracker configuration of a test guest machine: `boot_args`, `mib` MiB, one vCPU,
/// dirty page tracking on, the log to `log`.
fn config(ctx: &Ctx, boot_args: &str, mib: u64, log: &Path) -> serde_json::Value {
    serde_json::json!({
        "boot-source": {
            "kernel_image_path": ctx.guest.map(|g| g.display().to_string()).unwrap_or_default(),
            "boot_args": boot_args,
        },
        "machine-config": {
            "vcpu_count": 1,
            "mem_size_mib": mib,
            "track_dirty_pages": true,
        },
        "drives": [],
        "logger": { "log_path": log.display().to_string(), "level": "Info" },
    })
}

/// Write the configuration `name`.json (and its empty log file: Firecracker opens it but does
/// not make it) in `dir`.
fn write_config(
    ctx: &Ctx,
    dir: &Path,
    name: &str,
    boot_args: &str,
    mib: u64,
) -> Result<PathBuf, String> {
    let err = |e: std::io::Error| {
        format!(
            "cannot write a configuration file in {}: {e}",
            dir.display()
        )
    };
    std::fs::create_dir_all(dir).map_err(err)?;
    let log = dir.join(format!("{name}.log"));
    std::fs::File::create(&log).map_err(err)?;
    let path = dir.join(format!("{name}.json"));
    let text = serde_json::to_string_pretty(&config(ctx, boot_args, mib, &log))
        .map_err(|e| e.to_string())?;
    std::fs::write(&path, text).map_err(err)?;
    Ok(path)
}

/// The body of `PUT /snapshot/create`.
fn create_body(kind: &str, state: &Path, mem: &Path) -> String {
    serde_json::json!({
        "snapshot_type": kind,
        "snapshot_path": state.display().to_string(),
        "mem_file_path": mem.display().to_string(),
    })
    .to_string()
}

/// The body of `PUT /snapshot/load`: the File backend, resumed at once.
fn load_body(state: &Path, mem: &Path) -> String {
    serde_json::json!({
        "snapshot_path": state.display().to_string(),
        "mem_backend": { "backend_type": "File", "backend_path": mem.display().to_string() },
        "resume_vm": true,
    })
    .to_string()
}

/// The `cycles=` of a `touch <round> cycles=<n>` line whose round is at least `from`.
fn touch_cycles(line: &str, from: u64) -> Option<f64> {
    let rest = line.strip_prefix("touch ")?;
    let (round, cycles) = rest.split_once(" cycles=")?;
    (round.parse::<u64>().ok()? >= from).then_some(())?;
    cycles.trim().parse().ok()
}

/// One run's figures of one side, by row (in the order they were measured).
pub type Figures = Vec<(String, &'static str, f64)>;

fn ms_of_cycles(ctx: &Ctx, cycles: f64) -> f64 {
    cycles / ctx.tsc_hz * 1e3
}

/// The size's rows' name prefix: `snapshot 256 MiB`.
fn size_name(mib: u64) -> String {
    match mib {
        m if m >= 1024 && m % 1024 == 0 => format!("{WORKLOAD} {} GiB", m / 1024),
        m => format!("{WORKLOAD} {m} MiB"),
    }
}

/// Create and load at `mib` MiB under `vmm`, in `dir` (emptied first); its figures.
pub fn measure_size(ctx: &Ctx, vmm: Vmm, mib: u64, dir: &Path) -> Result<Figures, String> {
    let _ = std::fs::remove_dir_all(dir);
    let name = size_name(mib);
    let args = format!("kite_test=touch kite_touch_mib={TOUCH_MIB} kite_tick_ms=300");
    let file = write_config(ctx, dir, "source", &args, mib)?;
    let mut figures: Figures = Vec::new();
    let mut push = |what: &str, unit, value| figures.push((format!("{name}: {what}"), unit, value));

    let sock = dir.join("source.sock");
    let mut source = VmmChild::spawn(vmm.command(ctx, &sock, Some(&file)), Some(&sock))?;
    source.wait_for_api()?;
    let (_, first) = source.wait_line("the first touch round", |l| touch_cycles(l, 1).is_some())?;
    let (_, warm) = source.wait_line("the second touch round", |l| touch_cycles(l, 2).is_some())?;
    let fresh = touch_cycles(&first, 1).unwrap_or(f64::NAN);
    let warm = touch_cycles(&warm, 2).unwrap_or(f64::NAN);
    let full = (
        dir.join("full"),
        dir.join("full").join("vmstate"),
        dir.join("full").join("memory"),
    );
    let diff = (dir.join("diff.state"), dir.join("diff.mem"));
    std::fs::create_dir_all(&full.0)
        .map_err(|e| format!("cannot make {}: {e}", full.0.display()))?;
    source.call("PATCH", "/vm", r#"{"state": "Paused"}"#)?;
    let full_ms = source.call(
        "PUT",
        "/snapshot/create",
        &create_body("Full", &full.1, &full.2),
    )?;
    source.call("PATCH", "/vm", r#"{"state": "Resumed"}"#)?;
    std::thread::sleep(Duration::from_millis(20));
    source.call("PATCH", "/vm", r#"{"state": "Paused"}"#)?;
    let diff_ms = source.call(
        "PUT",
        "/snapshot/create",
        &create_body("Diff", &diff.0, &diff.1),
    )?;
    drop(source);
    push("create Full (PUT /snapshot/create)", "ms", full_ms);
    push("create Diff (PUT /snapshot/create)", "ms", diff_ms);

    let sock = dir.join("load.sock");
    let mut clone = VmmChild::spawn(vmm.command(ctx, &sock, None), Some(&sock))?;
    clone.wait_for_api()?;
    let load_ms = clone.call("PUT", "/snapshot/load", &load_body(&full.1, &full.2))?;
    let running_ns = monotonic_ns();
    let (_, after) = clone.wait_line("a touch round after the restore", |l| {
        touch_cycles(l, 3).is_some()
    })?;
    let stderr = clone.end();
    push("load (PUT /snapshot/load, resume_vm)", "ms", load_ms);
    push(
        "spawn to guest running (load answered)",
        "ms",
        running_ns.saturating_sub(clone.spawned_ns) as f64 / 1e6,
    );
    push(
        &format!("first touch of {TOUCH_MIB} MiB after the restore (File, lazy)"),
        "ms",
        ms_of_cycles(ctx, touch_cycles(&after, 3).unwrap_or(f64::NAN)),
    );
    push(
        &format!("first touch of {TOUCH_MIB} MiB in a fresh VM"),
        "ms",
        ms_of_cycles(ctx, fresh),
    );
    push(
        &format!("touch of {TOUCH_MIB} MiB again (warm)"),
        "ms",
        ms_of_cycles(ctx, warm),
    );
    if let Vmm::Kite = vmm {
        let t = timeline::parse(&stderr);
        let first = t.mark("first guest instruction").ok_or_else(|| {
            "Kite's --timeline has no \"first guest instruction\" after the load".to_string()
        })?;
        push(
            "load: process start to first guest instruction (Kite's timeline)",
            "ms",
            first,
        );
        push(
            "kite restore: process start to first guest instruction",
            "ms",
            kite_restore(ctx, &full.0)?,
        );
    }
    let _ = std::fs::remove_dir_all(dir);
    Ok(figures)
}

/// `kite restore DIR --timeline`: process start to the first guest instruction, ms.
fn kite_restore(ctx: &Ctx, dir: &Path) -> Result<f64, String> {
    let mut cmd = Command::new(ctx.exe);
    cmd.args(["restore", "--timeline"]).arg(dir);
    let mut child = VmmChild::spawn(cmd, None)?;
    child.wait_line("a touch round after kite restore", |l| {
        touch_cycles(l, 3).is_some()
    })?;
    let stderr = child.end();
    timeline::parse(&stderr)
        .mark("first guest instruction")
        .ok_or_else(|| "kite restore --timeline printed no \"first guest instruction\"".into())
}

/// Pss and Rss of `pid` from /proc/PID/smaps_rollup, KiB.
pub fn pss_rss_kib(pid: u32) -> Result<(u64, u64), String> {
    let path = format!("/proc/{pid}/smaps_rollup");
    let text = std::fs::read_to_string(&path).map_err(|e| format!("cannot read {path}: {e}"))?;
    let field = |name: &str| {
        text.lines().find_map(|l| {
            l.strip_prefix(name)?
                .trim()
                .strip_suffix("kB")?
                .trim()
                .parse()
                .ok()
        })
    };
    match (field("Pss:"), field("Rss:")) {
        (Some(pss), Some(rss)) => Ok((pss, rss)),
        _ => Err(format!("{path} has no Pss or Rss line")),
    }
}

/// A snapshot clones start from, and what the VM it was made of used.
#[derive(Clone, Debug)]
pub struct CloneSource {
    pub state: PathBuf,
    pub mem: PathBuf,
    /// Rss of the VMM the snapshot was made in, KiB, read just before the pause.
    pub rss_kib: u64,
}

/// A Full snapshot of a test guest at [`CLONE_MIB`] booted with `args` (a scenario that prints
/// `tick 2` on its way, as `tick` does) under `vmm`, in `dir`, made just after it printed
/// `tick 2`.
pub fn clone_source(ctx: &Ctx, vmm: Vmm, dir: &Path, args: &str) -> Result<CloneSource, String> {
    let file = write_config(ctx, dir, "clones", args, CLONE_MIB)?;
    let sock = dir.join("clones.sock");
    let mut source = VmmChild::spawn(vmm.command(ctx, &sock, Some(&file)), Some(&sock))?;
    source.wait_for_api()?;
    source.wait_line("tick 2", |l| l == "tick 2")?;
    let (_, rss_kib) = pss_rss_kib(source.pid())?;
    let (state, mem) = (dir.join("clones.state"), dir.join("clones.mem"));
    source.call("PATCH", "/vm", r#"{"state": "Paused"}"#)?;
    source.call(
        "PUT",
        "/snapshot/create",
        &create_body("Full", &state, &mem),
    )?;
    Ok(CloneSource {
        state,
        mem,
        rss_kib,
    })
}

/// What `n` clones of one snapshot used, all running at once.
#[derive(Clone, Debug, Default)]
pub struct CloneFigures {
    /// Pss of every clone, KiB.
    pub pss_kib: Vec<u64>,
    /// Rss of every clone, KiB.
    pub rss_kib: Vec<u64>,
    /// Every clone's console after its load, to its end.
    pub consoles: Vec<Vec<String>>,
}

/// Load `n` clones of `snapshot` under `vmm`, one after the other, each as soon as its API is
/// up; once every one has printed a line `running` takes, read their memory; then end each
/// scenario by a byte on its console and, if `finish` is given, wait for a line it takes (the
/// scenario's result line).
pub fn run_clones(
    ctx: &Ctx,
    vmm: Vmm,
    dir: &Path,
    n: usize,
    snapshot: &CloneSource,
    running: &dyn Fn(&str) -> bool,
    finish: Option<&dyn Fn(&str) -> bool>,
) -> Result<CloneFigures, String> {
    let mut clones = Vec::with_capacity(n);
    for i in 0..n {
        let sock = dir.join(format!("clone{i}.sock"));
        let mut c = VmmChild::spawn(vmm.command(ctx, &sock, None), Some(&sock))?;
        let tag = |e: String| format!("clone {} of {n}: {e}", i + 1);
        c.wait_for_api().map_err(tag)?;
        c.call(
            "PUT",
            "/snapshot/load",
            &load_body(&snapshot.state, &snapshot.mem),
        )
        .map_err(tag)?;
        clones.push(c);
    }
    let mut figures = CloneFigures::default();
    let mut consoles = vec![Vec::new(); n];
    for (i, c) in clones.iter_mut().enumerate() {
        let (_, line) = c
            .wait_line("a console line after the load", running)
            .map_err(|e| format!("clone {} of {n}: {e}", i + 1))?;
        consoles[i].push(line);
    }
    for (i, c) in clones.iter().enumerate() {
        let (pss, rss) =
            pss_rss_kib(c.pid()).map_err(|e| format!("clone {} of {n}: {e}", i + 1))?;
        figures.pss_kib.push(pss);
        figures.rss_kib.push(rss);
    }
    for c in clones.iter_mut() {
        c.type_byte();
    }
    for (i, c) in clones.iter_mut().enumerate() {
        if let Some(finish) = finish {
            let (_, line) = c
                .wait_line("the scenario's result line", finish)
                .map_err(|e| format!("clone {} of {n}: {e}", i + 1))?;
            consoles[i].push(line);
        }
        c.end();
    }
    figures.consoles = consoles;
    Ok(figures)
}

/// The clone groups under `vmm`, in `dir` (emptied first): PSS per clone of each group.
pub fn measure_clones(
    ctx: &Ctx,
    vmm: Vmm,
    dir: &Path,
    progress: &mut dyn FnMut(usize),
) -> Result<Figures, String> {
    let _ = std::fs::remove_dir_all(dir);
    let snapshot = clone_source(ctx, vmm, dir, "kite_test=tick kite_tick_ms=100")?;
    let mut figures: Figures = Vec::new();
    for n in CLONES {
        progress(n);
        let f = run_clones(
            ctx,
            vmm,
            dir,
            n,
            &snapshot,
            &|l| l.starts_with("tick "),
            None,
        )?;
        let pss: u64 = f.pss_kib.iter().sum();
        let name = match n {
            1 => format!("{WORKLOAD} clones: PSS per clone, 1 clone"),
            n => format!("{WORKLOAD} clones: PSS per clone, {n} clones"),
        };
        figures.push((name, "MiB", pss as f64 / 1024.0 / n as f64));
    }
    let _ = std::fs::remove_dir_all(dir);
    Ok(figures)
}

/// `kite bench snapshot`: `runs` runs, each Kite then (with `--peer`) the peer. A peer that fails
/// is not started again and its figures are left out (a row says why); Kite's stay.
pub(crate) fn bench(
    ctx: &Ctx,
    runs: u32,
    peer: Option<&Peer>,
    scratch: &Path,
    progress: &mut super::Progress,
    raw: &mut Vec<RawRun>,
) -> Vec<Row> {
    if peer.is_some() {
        progress.total += STEPS * runs as usize;
    }
    let mut kite: Vec<Figures> = Vec::new();
    let mut theirs: Vec<Figures> = Vec::new();
    let mut peer_failed: Option<String> = None;
    for run in 1..=runs {
        let mut sides = vec![Vmm::Kite];
        sides.extend(peer.map(Vmm::Peer));
        for vmm in sides {
            let skip = matches!(vmm, Vmm::Peer(_)) && peer_failed.is_some();
            if skip {
                progress.done += STEPS;
                continue;
            }
            match one_side(ctx, vmm, run, runs, scratch, progress, raw) {
                Ok(f) if matches!(vmm, Vmm::Kite) => kite.push(f),
                Ok(f) => theirs.push(f),
                Err(why) if interrupt::received().is_some() => {
                    let _ = why;
                    return Vec::new();
                }
                Err(why) if matches!(vmm, Vmm::Kite) => {
                    let why = format!("kite run {run}: {why}");
                    return vec![Row::without_figures(WORKLOAD, Status::Failed(why))];
                }
                Err(why) => {
                    peer_failed = Some(format!("peer run {run}: {why}"));
                    theirs.clear();
                }
            }
        }
    }
    let mut rows = rows(&kite, &theirs);
    if let Some(why) = peer_failed {
        let mut row = Row::without_figures(WORKLOAD, Status::NotAvailable(why));
        row.name = format!("{WORKLOAD}: peer");
        rows.push(row);
    }
    rows
}

/// One run of one side: every size, then the clones.
fn one_side(
    ctx: &Ctx,
    vmm: Vmm,
    run: u32,
    runs: u32,
    scratch: &Path,
    progress: &mut super::Progress,
    raw: &mut Vec<RawRun>,
) -> Result<Figures, String> {
    let side = vmm.name();
    let dir = scratch.join(format!("snapshot-{side}"));
    let mut all = Figures::new();
    for mib in SIZES_MIB {
        progress.show(&format!("{}: {side} run {run} of {runs}", size_name(mib)));
        let start = Instant::now();
        let f = measure_size(ctx, vmm, mib, &dir)?;
        raw.push(RawRun {
            workload: size_name(mib),
            side: vmm.side(),
            run,
            wall_ms: start.elapsed().as_secs_f64() * 1e3,
            line: line_of(&f),
        });
        all.extend(f);
    }
    let start = Instant::now();
    let mut show = |n: usize| {
        progress.show(&format!(
            "{WORKLOAD} {n} clones: {side} run {run} of {runs}"
        ));
    };
    let f = measure_clones(ctx, vmm, &dir.join("clones"), &mut show)?;
    raw.push(RawRun {
        workload: format!("{WORKLOAD} clones"),
        side: vmm.side(),
        run,
        wall_ms: start.elapsed().as_secs_f64() * 1e3,
        line: line_of(&f),
    });
    all.extend(f);
    let _ = std::fs::remove_dir_all(&dir);
    Ok(all)
}

/// The figures as `name=value unit; ...`, for the JSON's raw lines.
fn line_of(f: &Figures) -> String {
    f.iter()
        .map(|(name, unit, v)| format!("{name}={v:.3} {unit}"))
        .collect::<Vec<_>>()
        .join("; ")
}

/// One row per figure, in the order measured: Kite's samples, and the peer's beside them where
/// it has the figure.
pub fn rows(kite: &[Figures], peer: &[Figures]) -> Vec<Row> {
    let mut order: Vec<(String, &'static str)> = Vec::new();
    let mut by: BTreeMap<String, (Vec<f64>, Vec<f64>)> = BTreeMap::new();
    for (runs, is_peer) in [(kite, false), (peer, true)] {
        for figures in runs {
            for (name, unit, v) in figures {
                if !by.contains_key(name) {
                    order.push((name.clone(), unit));
                }
                let e = by.entry(name.clone()).or_default();
                match is_peer {
                    false => e.0.push(*v),
                    true => e.1.push(*v),
                }
            }
        }
    }
    order
        .into_iter()
        .map(|(name, unit)| {
            let (k, p) = by.remove(&name).unwrap_or_default();
            let mut row = Row::new(WORKLOAD, &name, unit, Vec::new(), k);
            row.peer = p;
            row
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn touch_lines_parse_from_their_round_on() {
        assert_eq!(
            touch_cycles("touch 1 cycles=2468735906", 1),
            Some(2468735906.0)
        );
        assert_eq!(touch_cycles("touch 1 cycles=5", 2), None);
        assert_eq!(touch_cycles("touch 7 cycles=5", 3), Some(5.0));
        assert_eq!(touch_cycles("tick 3", 1), None);
        assert_eq!(touch_cycles("touch x cycles=5", 1), None);
        assert_eq!(touch_cycles("touch 3 cycles=", 1), None);
    }

    #[test]
    fn sizes_are_named_in_mib_or_gib() {
        assert_eq!(size_name(256), "snapshot 256 MiB");
        assert_eq!(size_name(2048), "snapshot 2 GiB");
        assert_eq!(size_name(1536), "snapshot 1536 MiB");
    }

    #[test]
    fn rows_keep_the_order_and_put_the_peer_beside_kite() {
        let f = |v: f64| -> Figures {
            vec![
                ("a".into(), "ms", v),
                ("kite only".into(), "ms", v + 1.0),
                ("b".into(), "MiB", v + 2.0),
            ]
        };
        let peer =
            |v: f64| -> Figures { vec![("a".into(), "ms", v), ("b".into(), "MiB", v + 2.0)] };
        let made = rows(&[f(1.0), f(2.0)], &[peer(10.0), peer(20.0)]);
        let names: Vec<&str> = made.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(names, ["a", "kite only", "b"]);
        assert_eq!(made[0].guest, [1.0, 2.0]);
        assert_eq!(made[0].peer, [10.0, 20.0]);
        assert!(made[1].peer.is_empty());
        assert_eq!(made[2].unit, "MiB");
        assert!(made[0].host.is_empty());
        let ratio = made[0].peer_ratio().unwrap();
        assert!((ratio.median - 0.1).abs() < 1e-9, "{ratio:?}");
        assert!(rows(&[], &[]).is_empty());
    }

    #[test]
    fn load_and_create_bodies_are_firecrackers() {
        let v: serde_json::Value =
            serde_json::from_str(&load_body(Path::new("/s/state"), Path::new("/s/mem"))).unwrap();
        assert_eq!(v["mem_backend"]["backend_type"], "File");
        assert_eq!(v["mem_backend"]["backend_path"], "/s/mem");
        assert_eq!(v["snapshot_path"], "/s/state");
        assert_eq!(v["resume_vm"], true);
        let v: serde_json::Value =
            serde_json::from_str(&create_body("Diff", Path::new("/a"), Path::new("/b"))).unwrap();
        assert_eq!(v["snapshot_type"], "Diff");
        assert_eq!(v["mem_file_path"], "/b");
    }

    #[test]
    fn smaps_rollup_of_this_process_has_pss_and_rss() {
        let (pss, rss) = pss_rss_kib(std::process::id()).unwrap();
        assert!(pss > 0 && rss >= pss, "{pss} {rss}");
        assert!(pss_rss_kib(u32::MAX).unwrap_err().contains("smaps_rollup"));
    }
}
