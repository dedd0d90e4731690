//! `kite bench`: what a VM costs against bare metal, measured side by side.
//!
//! Each workload runs on the host as a plain process (`kite workload <name>`, see [`host`]) and
//! inside a Kite VM (the test guest, built from the same source), alternating host, guest, host,
//! guest so that drift of the machine hits both sides. The table shows median, min and max of
//! each side and the guest/host ratio; `--json` keeps every raw sample, `--svg` draws the ratios
//! (and `scale`'s figures).
//!
//! Ctrl-C, SIGTERM or SIGHUP ends it early ([`interrupt`]): the running child stops, no new
//! one starts, and the namespace and scratch directory go as on a normal end (their guards drop).
//!
//! `linux-boot` is guest only and boots the Linux guest of `guest-images/build.sh` instead
//! ([`linux`]); it runs 3 times unless `--runs` is given, as a boot can take ~20 s. `scale` is
//! guest only and starts the test guest as `startup` does in machines from 64 MiB to 16 GiB and
//! from 1 to 32 vCPUs ([`scale`]), each once per run.
//!
//! `--peer PATH` runs the workloads a Firecracker-compatible binary can run under it too, Kite
//! and the peer in turn, with Kite/peer ratios and each side's whole cost ([`peer`],
//! [`measure`]).
//!
//! `pause-resume` is guest only: [`pause::CYCLES`] pauses and resumes of the test guest over
//! the API socket per run ([`pause`]).
//!
//! `snapshot` is guest only: snapshot create and load at 256 MiB and 2 GiB, the first touch of
//! RAM after a lazy restore, and the memory of 1, 5 and 20 clones of one snapshot, under the
//! peer too with `--peer` ([`snapshot`]).
//!
//! Files: [`workloads`] (what runs, which rows), [`linux`] (the `linux-boot` workload),
//! [`scale`] (the `scale` workload), [`snapshot`] and [`vmm_child`] (the `snapshot` workload),
//! [`runner`] (children with time limits, finding the test guest), [`line`] and [`timeline`]
//! (what children print), [`milestones`] (start-up rows), [`stats`], [`report`] (rows, JSON),
//! [`table`], [`svg`].

pub mod concurrent;
pub mod host;
pub mod interrupt;
pub mod line;
pub mod linux;
pub mod measure;
pub mod milestones;
pub mod net;
pub mod pause;
pub mod peer;
pub mod report;
pub mod runner;
pub mod scale;
pub mod snapshot;
pub mod stats;
pub mod svg;
pub mod table;
pub mod timeline;
pub mod vmm_child;
pub mod vsock;
pub mod workloads;

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Args;

use report::{RawRun, Report, Row, Status};
use workloads::{Ctx, Outcome, Sample, Side, Workload};

#[derive(Args, Debug)]
pub struct BenchArgs {
    /// Workloads to run (default: all): cpu, mem, pio-rtt, mmio-rtt, startup, scale,
    /// concurrent, linux-boot, virtio-blk, virtio-net, virtio-vsock, pause-resume, snapshot.
    #[arg(value_name = "WORKLOAD")]
    pub workloads: Vec<String>,
    /// Runs of each side of each workload [default: 5, and 3 for linux-boot, whose boot takes
    /// ~20 s where KVM emulates guest ring 0; given, it holds for every workload].
    #[arg(long, value_name = "N")]
    pub runs: Option<String>,
    /// Write every raw sample and the summaries as JSON here.
    #[arg(long, value_name = "PATH")]
    pub json: Option<PathBuf>,
    /// Write a bar chart of the guest/host ratios as SVG here.
    #[arg(long, value_name = "PATH")]
    pub svg: Option<PathBuf>,
    /// The test guest ELF (default: guest-images/out/testguest.elf, built if needed).
    #[arg(long, value_name = "PATH")]
    pub guest: Option<PathBuf>,
    /// The Linux kernel linux-boot boots (default: guest-images/out/vmlinux, from
    /// guest-images/build.sh).
    #[arg(long, value_name = "PATH")]
    pub kernel: Option<PathBuf>,
    /// The initramfs linux-boot boots (default: guest-images/out/initramfs.cpio).
    #[arg(long, value_name = "PATH")]
    pub initrd: Option<PathBuf>,
    /// Also run the workloads a Firecracker-compatible binary can run (cpu, mem, pio-rtt,
    /// mmio-rtt, startup, virtio-blk, virtio-net, virtio-vsock) under this one, from the same
    /// JSON config file (`--no-api --config-file`), in turn with Kite's runs; adds Kite/peer
    /// ratios and each side's whole cost (until the VM is freed, CPU of every process, the
    /// VMM's peak RSS). `snapshot` runs its API steps under it too (each side restores its own
    /// snapshots).
    #[arg(long, value_name = "PATH")]
    pub peer: Option<PathBuf>,
    /// An argument given to the peer before its own flags; repeatable (e.g. `--peer-arg=--no-acpi`
    /// for an older Kite run as `firecracker`, to compare two builds of Kite alike).
    #[arg(
        long,
        value_name = "ARG",
        allow_hyphen_values = true,
        requires = "peer"
    )]
    pub peer_arg: Vec<String>,
    /// System-call filters of Kite and of the peer alike: `off` runs Kite with `--seccomp off`
    /// and the peer with `--no-seccomp`.
    #[arg(long, value_name = "on|off", value_enum, default_value = "on")]
    pub seccomp: SeccompArg,
}

/// `--seccomp` of `kite bench`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum SeccompArg {
    #[default]
    On,
    Off,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("unknown workload {0:?}; choose from {names}", names = workloads::names().join(", "))]
    UnknownWorkload(String),
    #[error("invalid --runs {0:?}: give a whole number from 1 to 1000")]
    Runs(String),
    #[error("cannot find Kite's own executable")]
    Exe(#[source] std::io::Error),
    #[error("cannot catch SIGINT, SIGTERM and SIGHUP")]
    Signals(#[source] std::io::Error),
    #[error("interrupted by {}; stopped without a report", interrupt::name(*.0))]
    Interrupted(i32),
    #[error(transparent)]
    Runner(runner::Error),
    #[error(transparent)]
    Linux(linux::Error),
    #[error("cannot create the scratch disk image {}", .path.display())]
    Disk {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot write {}", .path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot encode the report as JSON")]
    Json(#[source] serde_json::Error),
    #[error("{0} failed (see the table)")]
    Failed(String),
    #[error("cannot start virtio-vsock's Unix-socket echo server")]
    Vsock(#[source] std::io::Error),
    #[error("--peer {}: no such executable file; give the path of a Firecracker binary", .0.display())]
    NoPeer(PathBuf),
}

impl Error {
    /// 2 for what the user gave, 128+N after signal N, 1 for a failed bench.
    pub fn exit_code(&self) -> i32 {
        match self {
            Error::UnknownWorkload(_) | Error::Runs(_) | Error::NoPeer(_) => 2,
            Error::Runner(runner::Error::GuestMissing(_) | runner::Error::NoGuest) => 2,
            Error::Linux(linux::Error::Given { .. }) => 2,
            Error::Interrupted(signal) => 128 + signal,
            _ => 1,
        }
    }
}

impl From<runner::Error> for Error {
    fn from(e: runner::Error) -> Self {
        match e {
            runner::Error::Interrupted(signal) => Error::Interrupted(signal),
            e => Error::Runner(e),
        }
    }
}

/// Err once the bench was interrupted.
fn stop_if_interrupted() -> Result<(), Error> {
    interrupt::received().map_or(Ok(()), |signal| Err(Error::Interrupted(signal)))
}

/// Size of the scratch disk image virtio-blk reads and writes on both sides.
pub const DISK_BYTES: u64 = 64 << 20;

/// TSC ticks per second: rdtsc against CLOCK_MONOTONIC over about 100 ms.
pub fn measure_tsc_hz() -> f64 {
    let (t0, c0) = (timeline::monotonic_ns(), host::rdtsc());
    std::thread::sleep(Duration::from_millis(100));
    let (t1, c1) = (timeline::monotonic_ns(), host::rdtsc());
    let ns = t1.saturating_sub(t0).max(1);
    c1.wrapping_sub(c0) as f64 * 1e9 / ns as f64
}

/// The progress line on stderr: rewritten in place on a terminal, one line per run otherwise.
pub(crate) struct Progress {
    tty: bool,
    total: usize,
    pub(crate) done: usize,
}

impl Progress {
    pub(crate) fn show(&mut self, text: &str) {
        self.done += 1;
        let line = format!("kite bench [{}/{}] {text}", self.done, self.total);
        let mut err = std::io::stderr().lock();
        let _ = if self.tty {
            write!(err, "\r\x1b[K{line}")
        } else {
            writeln!(err, "{line}")
        };
        let _ = err.flush();
    }
}

impl Drop for Progress {
    /// Clear the progress line on a terminal, however the bench ends.
    fn drop(&mut self) {
        if self.tty {
            let _ = write!(std::io::stderr(), "\r\x1b[K");
        }
    }
}

/// A scratch directory, removed with everything in it when dropped.
struct Scratch(PathBuf);

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A fresh disk image of [`DISK_BYTES`] filled with non-zero data (no holes), in `dir`.
fn make_disk(dir: &Path) -> Result<PathBuf, Error> {
    let path = dir.join("disk.img");
    let err = |source| Error::Disk {
        path: path.clone(),
        source,
    };
    std::fs::create_dir_all(dir).map_err(err)?;
    let mut file = std::fs::File::create(&path).map_err(err)?;
    let mut chunk = vec![0u8; 1 << 20];
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    for _ in 0..DISK_BYTES / chunk.len() as u64 {
        for word in chunk.chunks_exact_mut(8) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            word.copy_from_slice(&x.to_le_bytes());
        }
        file.write_all(&chunk).map_err(err)?;
    }
    Ok(path)
}

/// The chosen workloads, in order, and `--runs` if given.
fn parse_args(args: &BenchArgs) -> Result<(Vec<Workload>, Option<u32>), Error> {
    let runs = match &args.runs {
        None => None,
        Some(text) => Some(
            text.parse::<u32>()
                .ok()
                .filter(|n| (1..=1000).contains(n))
                .ok_or_else(|| Error::Runs(text.clone()))?,
        ),
    };
    let mut chosen = Vec::new();
    for name in &args.workloads {
        let selected = workloads::from_name(name);
        if selected.is_empty() {
            return Err(Error::UnknownWorkload(name.clone()));
        }
        for w in selected {
            if !chosen.contains(&w) {
                chosen.push(w);
            }
        }
    }
    if chosen.is_empty() {
        chosen = workloads::ALL.to_vec();
    }
    Ok((chosen, runs))
}

/// How many times each side of `w` runs: `--runs` if given, else its default.
fn runs_of(w: Workload, given: Option<u32>) -> u32 {
    given.unwrap_or(w.default_runs())
}

/// The run count the table states, and the workloads that ran another number of times: all of
/// them ran `runs` times but those.
fn run_counts(chosen: &[Workload], given: Option<u32>) -> (u32, Vec<(String, u32)>) {
    let counts: Vec<u32> = chosen.iter().map(|&w| runs_of(w, given)).collect();
    let runs = match counts.windows(2).all(|p| p[0] == p[1]) {
        true => counts.first().copied(),
        false => None,
    }
    .unwrap_or(given.unwrap_or(workloads::DEFAULT_RUNS));
    let mut others: Vec<(String, u32)> = Vec::new();
    for (w, n) in chosen.iter().zip(counts) {
        if n != runs && !others.iter().any(|(name, _)| name == w.name()) {
            others.push((w.name().into(), n));
        }
    }
    (runs, others)
}

/// Run every side of `w` `runs` times, interleaved, and make its rows.
fn bench_workload(
    ctx: &Ctx,
    w: Workload,
    runs: u32,
    progress: &mut Progress,
    raw: &mut Vec<RawRun>,
    peer: Option<&peer::Peer>,
    scratch: &Path,
) -> Vec<Row> {
    if w == Workload::Snapshot {
        return snapshot::bench(ctx, runs, peer, scratch, progress, raw);
    }
    if let (Some(p), true) = (peer, peer::runs(w)) {
        return peer::bench(ctx, w, runs, p, progress, raw);
    }
    if w == Workload::Scale {
        return bench_scale(ctx, runs, progress, raw);
    }
    if w == Workload::Concurrent {
        return bench_concurrent(ctx, runs, progress, raw);
    }
    let mut host: Vec<Sample> = Vec::new();
    let mut guest: Vec<Sample> = Vec::new();
    for run in 1..=runs {
        for &side in w.sides() {
            if interrupt::received().is_some() {
                return Vec::new();
            }
            progress.show(&format!(
                "{}: {} run {run} of {runs}",
                w.label(),
                side.name()
            ));
            match workloads::run_once(ctx, w, side) {
                Outcome::Done(s) => {
                    raw.push(RawRun {
                        workload: w.label().into(),
                        side: side.name(),
                        run,
                        line: s.line.clone(),
                        wall_ms: s.wall_ms,
                    });
                    match side {
                        Side::Host => host.push(s),
                        Side::Guest => guest.push(s),
                    }
                }
                Outcome::NotAvailable(why) => {
                    return vec![Row::without_figures(w.label(), Status::NotAvailable(why))];
                }
                Outcome::Failed(why) => {
                    let why = format!("{} run {run}: {why}", side.name());
                    return vec![Row::without_figures(w.label(), Status::Failed(why))];
                }
            }
        }
    }
    workloads::rows(ctx, w, &host, &guest)
}

/// Run every machine of `scale` `runs` times, one after the other in each run, and make its
/// rows. A machine the host cannot hold is not started; one whose run fails is not started
/// again.
fn bench_scale(ctx: &Ctx, runs: u32, progress: &mut Progress, raw: &mut Vec<RawRun>) -> Vec<Row> {
    use scale::PointResult;
    let host = scale::Host::probe();
    let mut results: Vec<(scale::Point, PointResult)> = scale::POINTS
        .iter()
        .map(|&p| match host.unavailable(p) {
            Some(why) => {
                progress.total -= runs as usize;
                (p, PointResult::NotAvailable(why))
            }
            None => (p, PointResult::Samples(Vec::new())),
        })
        .collect();
    for run in 1..=runs {
        for (p, result) in results.iter_mut() {
            let PointResult::Samples(samples) = result else {
                continue;
            };
            if interrupt::received().is_some() {
                return Vec::new();
            }
            let name = p.name();
            progress.show(&format!("{name}: guest run {run} of {runs}"));
            let outcome = scale::run_once(ctx, *p);
            let left = (runs - run) as usize;
            match outcome {
                Outcome::Done(s) => {
                    raw.push(RawRun {
                        workload: name,
                        side: Side::Guest.name(),
                        run,
                        line: s.line.clone(),
                        wall_ms: s.wall_ms,
                    });
                    samples.push(s);
                }
                Outcome::NotAvailable(why) => {
                    progress.total -= left;
                    *result = PointResult::NotAvailable(why);
                }
                Outcome::Failed(why) => {
                    progress.total -= left;
                    *result = PointResult::Failed(format!("guest run {run}: {why}"));
                }
            }
        }
    }
    scale::rows(&results)
}

/// Start each group of `concurrent` `runs` times (1 VM, 5, 20, then again) and make its rows. A
/// group that fails is not started again.
fn bench_concurrent(
    ctx: &Ctx,
    runs: u32,
    progress: &mut Progress,
    raw: &mut Vec<RawRun>,
) -> Vec<Row> {
    use concurrent::GroupResult;
    let mut results: Vec<(usize, GroupResult)> = concurrent::COUNTS
        .iter()
        .map(|&n| (n, GroupResult::Samples(Vec::new())))
        .collect();
    for run in 1..=runs {
        for (n, result) in results.iter_mut() {
            let GroupResult::Samples(samples) = result else {
                continue;
            };
            if interrupt::received().is_some() {
                return Vec::new();
            }
            let name = concurrent::group_name(*n);
            progress.done += *n - 1;
            progress.show(&format!("{name}: guest run {run} of {runs}"));
            match concurrent::run_group(ctx, *n) {
                Ok(figures) => {
                    raw.push(RawRun {
                        workload: name,
                        side: Side::Guest.name(),
                        run,
                        line: format!("all_ready_ms={:.1} slowest_ms={:.1}", figures.0, figures.1),
                        wall_ms: figures.0,
                    });
                    samples.push(figures);
                }
                Err(why) => {
                    progress.total -= (runs - run) as usize * *n;
                    *result = GroupResult::Failed(format!("guest run {run}: {why}"));
                }
            }
        }
    }
    concurrent::rows(&results)
}

/// The whole `kite bench`: runs, then the table on stdout and the files asked for.
pub fn run(args: &BenchArgs) -> Result<Report, Error> {
    let (chosen, given_runs) = parse_args(args)?;
    if let Some(path) = &args.peer {
        use std::os::unix::fs::PermissionsExt;
        let runnable = std::fs::metadata(path)
            .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
            .unwrap_or(false);
        if !runnable {
            return Err(Error::NoPeer(path.clone()));
        }
    }
    interrupt::catch().map_err(Error::Signals)?;
    let exe = std::env::current_exe().map_err(Error::Exe)?;
    let guest = match chosen.iter().any(|w| w.needs_test_guest()) {
        true => Some(runner::find_guest(args.guest.as_deref())?),
        false => None,
    };
    // linux-boot's images; without them (not built) its row is n/a, saying how to build them.
    let linux = match chosen.iter().any(|w| w.needs_linux()) {
        true => match linux::find_images(args.kernel.as_deref(), args.initrd.as_deref()) {
            Err(e @ linux::Error::Given { .. }) => return Err(Error::Linux(e)),
            found => Some(found),
        },
        false => None,
    };
    // From here on, however this returns, the guards remove the namespace and the scratch
    // directory.
    let scratch = Scratch(std::env::temp_dir().join(format!("kite-bench-{}", std::process::id())));
    let disk = if chosen.iter().any(|w| w.needs_disk()) {
        Some(make_disk(&scratch.0)?)
    } else {
        None
    };
    // virtio-net's namespace, tap and echo server; without them its row is n/a, saying why.
    let net = match chosen.iter().find(|w| w.needs_net()) {
        Some(_) => Some(net::NetSetup::create()),
        _ => None,
    };
    // virtio-vsock's echo server.
    let vsock = match chosen.iter().any(|w| w.needs_vsock()) {
        true => Some(vsock::VsockSetup::create(&scratch.0.join("vsock")).map_err(Error::Vsock)?),
        false => None,
    };
    let ctx = Ctx {
        exe: &exe,
        guest: guest.as_deref(),
        linux: linux.as_ref().and_then(|l| l.as_ref().ok()),
        disk: disk.as_deref(),
        net: net.as_ref().and_then(|n| n.as_ref().ok()),
        vsock: vsock.as_ref(),
        tsc_hz: measure_tsc_hz(),
        seccomp: args.seccomp == SeccompArg::On,
    };
    // The peer is run by its path as given, made absolute (the runs' directory is the bench's).
    let peer = args.peer.as_ref().map(|path| peer::Peer {
        path: std::path::absolute(path).unwrap_or_else(|_| path.clone()),
        args: args.peer_arg.clone(),
        dir: scratch.0.join("peer"),
    });
    let mut progress = Progress {
        tty: std::io::stderr().is_terminal(),
        total: chosen
            .iter()
            .map(|&w| {
                let extra = usize::from(peer.is_some() && peer::runs(w));
                (w.children_per_run() + extra) * runs_of(w, given_runs) as usize
            })
            .sum(),
        done: 0,
    };
    let (runs, other_runs) = run_counts(&chosen, given_runs);
    let mut report = Report {
        runs,
        other_runs,
        tsc_hz: ctx.tsc_hz,
        guest_image: guest
            .as_ref()
            .map_or(String::new(), |g| g.display().to_string()),
        linux_images: ctx.linux.map(|l| {
            (
                l.kernel.display().to_string(),
                l.initrd.display().to_string(),
            )
        }),
        peer: peer.as_ref().map(|p| {
            let mut words = vec![p.path.display().to_string()];
            words.extend(p.args.iter().cloned());
            words.join(" ")
        }),
        seccomp: match args.seccomp {
            SeccompArg::On => "on",
            SeccompArg::Off => "off",
        }
        .into(),
        ..Report::default()
    };
    for &w in &chosen {
        stop_if_interrupted()?;
        let runs = runs_of(w, given_runs);
        if let (true, Some(Err(why))) = (w.needs_linux(), &linux) {
            progress.total -= w.children_per_run() * runs as usize;
            report.rows.push(Row::without_figures(
                w.label(),
                Status::NotAvailable(why.to_string()),
            ));
            continue;
        }
        if let (true, Some(Err(why))) = (w.needs_net(), &net) {
            progress.total -= w.children_per_run() * runs as usize;
            let why = format!(
                "cannot set up its network (needs root and ip): {}",
                kite_vmm::error_chain(why)
            );
            report
                .rows
                .push(Row::without_figures(w.label(), Status::NotAvailable(why)));
            continue;
        }
        let rows = bench_workload(
            &ctx,
            w,
            runs,
            &mut progress,
            &mut report.raw,
            peer.as_ref(),
            &scratch.0,
        );
        report.rows.extend(rows);
    }
    // A run cut short by the signal is no result.
    stop_if_interrupted()?;
    drop(progress);
    drop(vsock);
    drop(scratch);
    drop(net);

    print!("{}", table::render(&report));
    let _ = std::io::stdout().flush();
    let write = |path: &PathBuf, text: String| {
        std::fs::write(path, text).map_err(|source| Error::Write {
            path: path.clone(),
            source,
        })
    };
    if let Some(path) = &args.json {
        write(path, report::to_json(&report).map_err(Error::Json)?)?;
    }
    if let Some(path) = &args.svg {
        write(path, svg::render(&report))?;
    }
    let failed: Vec<&str> = report.failures().map(|r| r.workload.as_str()).collect();
    if !failed.is_empty() {
        return Err(Error::Failed(failed.join(", ")));
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(workloads: &[&str], runs: &str) -> BenchArgs {
        BenchArgs {
            workloads: workloads.iter().map(|s| s.to_string()).collect(),
            runs: (!runs.is_empty()).then(|| runs.into()),
            json: None,
            svg: None,
            guest: None,
            kernel: None,
            initrd: None,
            peer: None,
            peer_arg: Vec::new(),
            seccomp: SeccompArg::On,
        }
    }

    #[test]
    fn workloads_default_to_all_and_are_checked() {
        let (w, runs) = parse_args(&args(&[], "5")).unwrap();
        assert_eq!(w, workloads::ALL);
        assert!(w.contains(&Workload::LinuxBoot));
        // No name runs every workload, scale too.
        assert!(w.contains(&Workload::Scale));
        assert_eq!(runs, Some(5));
        let (_, runs) = parse_args(&args(&[], "")).unwrap();
        assert_eq!(runs, None);
        let (w, _) = parse_args(&args(&["cpu", "pio-rtt", "cpu", "virtio-blk"], "1")).unwrap();
        assert_eq!(
            w,
            [
                Workload::Cpu,
                Workload::PioRtt,
                Workload::BlkRand,
                Workload::BlkSeq
            ]
        );
        let e = parse_args(&args(&["gpu"], "1")).unwrap_err();
        assert_eq!(
            e.to_string(),
            "unknown workload \"gpu\"; choose from cpu, mem, pio-rtt, mmio-rtt, startup, scale, concurrent, linux-boot, virtio-blk, virtio-net, virtio-vsock, pause-resume, snapshot"
        );
        assert_eq!(e.exit_code(), 2);
        for bad in ["0", "-1", "x", "1001"] {
            assert!(matches!(parse_args(&args(&[], bad)), Err(Error::Runs(_))));
        }
    }

    #[test]
    fn linux_boot_runs_three_times_unless_runs_is_given() {
        let all = workloads::ALL;
        assert_eq!(runs_of(Workload::LinuxBoot, None), 3);
        assert_eq!(runs_of(Workload::LinuxBoot, Some(7)), 7);
        assert_eq!(runs_of(Workload::Cpu, None), 5);
        assert_eq!(run_counts(&all, None), (5, vec![("linux-boot".into(), 3)]));
        assert_eq!(run_counts(&all, Some(2)), (2, vec![]));
        assert_eq!(run_counts(&[Workload::LinuxBoot], None), (3, vec![]));
        assert_eq!(
            run_counts(&[Workload::LinuxBoot, Workload::Cpu], None),
            (5, vec![("linux-boot".into(), 3)])
        );
        assert_eq!(run_counts(&[], None), (5, vec![]));
    }

    #[test]
    fn a_missing_kernel_given_is_a_usage_error() {
        let given = linux::find_images(Some(Path::new("/nonexistent/vmlinux")), None);
        let e = Error::Linux(given.unwrap_err());
        assert_eq!(e.exit_code(), 2, "{e}");
        assert_eq!(e.to_string(), "--kernel /nonexistent/vmlinux: no such file");
    }

    #[test]
    fn tsc_frequency_is_plausible() {
        let hz = measure_tsc_hz();
        assert!((1e8..1e10).contains(&hz), "{hz}");
    }

    #[test]
    fn scratch_disk_has_the_size_and_goes_away() {
        let dir = std::env::temp_dir().join(format!("kite-bench-test-{}", std::process::id()));
        let scratch = Scratch(dir.clone());
        let disk = make_disk(&dir).unwrap();
        assert_eq!(std::fs::metadata(&disk).unwrap().len(), DISK_BYTES);
        drop(scratch);
        assert!(!dir.exists());
    }
}
