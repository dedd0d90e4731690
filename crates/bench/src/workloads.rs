//! The workloads of `kite bench`: what runs on each side, and which rows each one makes.
//!
//! The host side is `kite workload <name>` (this same executable, as a plain process); the guest
//! side is `kite run --timeline` on the test guest with `kite_test=<scenario>`. Both print a
//! `KITE-TEST` line, parsed alike. `linux-boot` boots the Linux guest instead ([`linux`]);
//! `scale` starts the test guest in machines of several sizes ([`scale`]).

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use super::line::{self, TestLine};
use super::linux::{self, Images};
use super::milestones;
use super::net::{self, NetSetup};
use super::report::{Row, Status};
use super::runner;
use super::scale;
use super::timeline::{self, RunTimeline};
use super::vsock::{self, VsockSetup};

/// Runs of each side of a workload when `--runs` is not given (but see
/// [`Workload::default_runs`]).
pub const DEFAULT_RUNS: u32 = 5;
/// Guest RAM for every guest run (the `mem` scenario needs 64 MiB free above the image).
pub const GUEST_MEMORY: &str = "256M";
/// Exits per `pio-rtt`/`mmio-rtt` run: enough to average out, short where an exit costs ~25 µs.
pub const RTT_EXITS: u64 = 20_000;
/// UDP datagrams per `virtio-net` run, one at a time, and their payload size.
pub const NET_FRAMES: u64 = 1000;
pub const NET_BYTES: u64 = 64;
/// The guest's MAC address on the bench's tap.
pub const GUEST_MAC: &str = "52:54:00:4b:49:54";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Workload {
    Cpu,
    Mem,
    PioRtt,
    MmioRtt,
    Startup,
    /// `startup`'s figures in machines from 64 MiB to 16 GiB and from 1 to 32 vCPUs.
    Scale,
    /// N test guests started at once (N = 1, 5, 20): time until all are ready.
    Concurrent,
    /// The Linux guest booted to its /init.
    LinuxBoot,
    /// virtio-blk, 4 KiB requests at random places.
    BlkRand,
    /// virtio-blk, 1 MiB requests in order.
    BlkSeq,
    VirtioNet,
    /// virtio-vsock: 4 MiB echoed through a Unix socket, the guest waiting for interrupts,
    /// for interrupts with EVENT_IDX, or polling.
    VsockIrq,
    VsockEventIdx,
    VsockPoll,
    /// `PATCH /vm` Paused and Resumed over the API socket.
    PauseResume,
    /// Snapshot create and load, first touch after a restore, memory of clones.
    Snapshot,
}

pub const ALL: [Workload; 16] = [
    Workload::Cpu,
    Workload::Mem,
    Workload::PioRtt,
    Workload::MmioRtt,
    Workload::Startup,
    Workload::Scale,
    Workload::Concurrent,
    Workload::LinuxBoot,
    Workload::BlkRand,
    Workload::BlkSeq,
    Workload::VirtioNet,
    Workload::VsockIrq,
    Workload::VsockEventIdx,
    Workload::VsockPoll,
    Workload::PauseResume,
    Workload::Snapshot,
];

/// The names `kite bench` takes, in order (`virtio-blk` stands for both of its workloads).
pub fn names() -> Vec<&'static str> {
    let mut names: Vec<&str> = ALL.iter().map(|w| w.name()).collect();
    names.dedup();
    names
}

/// The workloads a name on the command line selects.
pub fn from_name(name: &str) -> Vec<Workload> {
    ALL.into_iter().filter(|w| w.name() == name).collect()
}

/// A virtio-blk throughput run: the guest's `kite_blk_mode`, bytes per request, requests per
/// direction. One request at a time (`kite_blk_depth=1`), as the host side does.
pub struct BlkParams {
    pub mode: &'static str,
    pub bs: u64,
    pub ops: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    Host,
    Guest,
}

impl Side {
    pub fn name(self) -> &'static str {
        match self {
            Side::Host => "host",
            Side::Guest => "guest",
        }
    }
}

impl Workload {
    /// The name `kite bench` takes.
    pub fn name(self) -> &'static str {
        match self {
            Workload::Cpu => "cpu",
            Workload::Mem => "mem",
            Workload::PioRtt => "pio-rtt",
            Workload::MmioRtt => "mmio-rtt",
            Workload::Startup => "startup",
            Workload::Scale => "scale",
            Workload::Concurrent => "concurrent",
            Workload::LinuxBoot => "linux-boot",
            Workload::BlkRand | Workload::BlkSeq => "virtio-blk",
            Workload::VirtioNet => "virtio-net",
            Workload::VsockIrq | Workload::VsockEventIdx | Workload::VsockPoll => "virtio-vsock",
            Workload::PauseResume => "pause-resume",
            Workload::Snapshot => "snapshot",
        }
    }

    /// The name in the table and the progress line.
    pub fn label(self) -> &'static str {
        match self {
            Workload::BlkRand => "virtio-blk 4k-rand",
            Workload::BlkSeq => "virtio-blk 1m-seq",
            Workload::VsockIrq => "virtio-vsock irq",
            Workload::VsockEventIdx => "virtio-vsock irq+event_idx",
            Workload::VsockPoll => "virtio-vsock poll",
            w => w.name(),
        }
    }

    /// The test guest's `kite_test=` scenario.
    fn scenario(self) -> &'static str {
        match self {
            Workload::Startup | Workload::Scale | Workload::Concurrent => "hello",
            Workload::PauseResume => "tick",
            Workload::Snapshot => "touch",
            w => w.name(),
        }
    }

    pub fn blk(self) -> Option<BlkParams> {
        match self {
            Workload::BlkRand => Some(BlkParams {
                mode: "rand",
                bs: 4096,
                ops: 4096,
            }),
            Workload::BlkSeq => Some(BlkParams {
                mode: "seq",
                bs: 1 << 20,
                ops: super::DISK_BYTES >> 20,
            }),
            _ => None,
        }
    }

    pub fn sides(self) -> &'static [Side] {
        match self {
            Workload::Cpu
            | Workload::Mem
            | Workload::BlkRand
            | Workload::BlkSeq
            | Workload::VirtioNet => &[Side::Host, Side::Guest],
            _ => &[Side::Guest],
        }
    }

    /// Scenarios others may not have written yet: a guest without them makes an n/a row.
    fn optional(self) -> bool {
        matches!(
            self,
            Workload::BlkRand | Workload::BlkSeq | Workload::VirtioNet
        )
    }

    /// Runs of each side when `--runs` is not given.
    pub fn default_runs(self) -> u32 {
        match self {
            Workload::LinuxBoot => linux::DEFAULT_RUNS,
            _ => DEFAULT_RUNS,
        }
    }

    /// Children started per run: one per side, or one per machine shape for `scale`.
    pub fn children_per_run(self) -> usize {
        match self {
            Workload::Scale => scale::POINTS.len(),
            Workload::Concurrent => super::concurrent::COUNTS.iter().sum(),
            Workload::Snapshot => super::snapshot::STEPS,
            w => w.sides().len(),
        }
    }

    /// Whether it boots the test guest.
    pub fn needs_test_guest(self) -> bool {
        self != Workload::LinuxBoot && self.sides().contains(&Side::Guest)
    }

    pub fn needs_linux(self) -> bool {
        self == Workload::LinuxBoot
    }

    /// Time limit of one child run.
    pub fn limit(self) -> Duration {
        if self == Workload::LinuxBoot {
            return linux::LIMIT;
        }
        Duration::from_secs(match self {
            Workload::Startup | Workload::Scale | Workload::Concurrent => 30,
            Workload::BlkRand | Workload::BlkSeq | Workload::VirtioNet => 180,
            Workload::VsockIrq | Workload::VsockEventIdx | Workload::VsockPoll => 180,
            _ => 120,
        })
    }

    pub fn needs_disk(self) -> bool {
        self.blk().is_some()
    }

    pub fn needs_net(self) -> bool {
        self == Workload::VirtioNet
    }

    /// How the guest waits for the used ring, and whether it negotiates EVENT_IDX (vsock).
    pub fn vsock_mode(self) -> Option<(&'static str, bool)> {
        match self {
            Workload::VsockIrq => Some(("irq", false)),
            Workload::VsockEventIdx => Some(("irq", true)),
            Workload::VsockPoll => Some(("poll", false)),
            _ => None,
        }
    }

    pub fn needs_vsock(self) -> bool {
        self.vsock_mode().is_some()
    }
}

/// What one bench run needs to start children.
pub struct Ctx<'a> {
    /// Kite's own executable.
    pub exe: &'a Path,
    /// The test guest, if a chosen workload boots it.
    pub guest: Option<&'a Path>,
    /// The Linux guest, if `linux-boot` is chosen and its images are there.
    pub linux: Option<&'a Images>,
    /// The scratch disk image for virtio-blk.
    pub disk: Option<&'a Path>,
    /// The namespace, tap and echo server for virtio-net.
    pub net: Option<&'a NetSetup>,
    /// The Unix-socket echo server for virtio-vsock.
    pub vsock: Option<&'a VsockSetup>,
    pub tsc_hz: f64,
    /// Kite's system-call filters on (`--seccomp on`, the default) or off, and the peer's too.
    pub seccomp: bool,
}

/// One child run's result.
#[derive(Clone, Debug, Default)]
pub struct Sample {
    pub line: String,
    pub values: Vec<(String, String)>,
    pub numbers: BTreeMap<String, f64>,
    /// Spawn to exit, ms.
    pub wall_ms: f64,
    /// Spawn to the arrival of the result line, ms.
    pub line_ms: f64,
    /// Spawn to Kite's process start, ms (guest runs with a timeline only).
    pub exec_ms: Option<f64>,
    pub timeline: RunTimeline,
    /// The whole run's cost, for runs made through [`super::measure`] (`--peer`).
    pub cost: Option<super::measure::Cost>,
}

pub enum Outcome {
    Done(Sample),
    NotAvailable(String),
    Failed(String),
}

fn command(ctx: &Ctx, w: Workload, side: Side) -> Command {
    match side {
        Side::Host => host_command(ctx, w),
        Side::Guest => guest_command(ctx, w, GUEST_MEMORY, None),
    }
}

fn host_command(ctx: &Ctx, w: Workload) -> Command {
    let mut cmd = Command::new(ctx.exe);
    cmd.args(["workload", w.name()]);
    if let (Some(blk), Some(disk)) = (w.blk(), ctx.disk) {
        cmd.arg("--disk").arg(disk);
        cmd.args(["--blk-mode", blk.mode]);
        cmd.args(["--blk-bs", &blk.bs.to_string(), "--n", &blk.ops.to_string()]);
    }
    if w.needs_net() {
        let peer = format!("{}:{}", net::PEER_IP, net::PEER_PORT);
        cmd.args(["--n", &NET_FRAMES.to_string()]);
        cmd.args(["--net-bytes", &NET_BYTES.to_string(), "--peer", &peer]);
    }
    wrap_net(ctx, w, cmd)
}

/// `kite run --timeline` of the test guest with `w`'s scenario, `memory` of RAM (`--memory`'s
/// syntax) and, if given, `cpus` vCPUs (else Kite's default, 1).
pub fn guest_command(ctx: &Ctx, w: Workload, memory: &str, cpus: Option<u8>) -> Command {
    let mut cmd = Command::new(ctx.exe);
    let cmdline = cmdline(w);
    // The test guest finds its devices on the command line, not in ACPI tables.
    cmd.args(["run", "--no-acpi"]);
    if let Some(guest) = ctx.guest {
        cmd.arg("--kernel").arg(guest);
    }
    cmd.args(["--memory", memory]);
    if let Some(cpus) = cpus {
        cmd.args(["--cpus", &cpus.to_string()]);
    }
    if !ctx.seccomp {
        cmd.args(["--seccomp", "off"]);
    }
    cmd.args(["--timeline", "--cmdline", &cmdline]);
    if w.needs_net() {
        cmd.arg("--net")
            .arg(format!("tap={},mac={GUEST_MAC}", net::TAP));
    }
    if matches!(w, Workload::Startup | Workload::Scale) {
        cmd.arg("--boot-timer");
    }
    if let (true, Some(disk)) = (w.needs_disk(), ctx.disk) {
        cmd.arg("--disk").arg(disk);
    }
    if let (true, Some(v)) = (w.needs_vsock(), ctx.vsock) {
        cmd.arg("--vsock").arg(format!(
            "cid={},socket={}",
            vsock::GUEST_CID,
            v.socket.display()
        ));
    }
    wrap_net(ctx, w, cmd)
}

/// [`GUEST_MEMORY`] in MiB.
pub fn guest_memory_mib() -> u64 {
    GUEST_MEMORY.trim_end_matches('M').parse().unwrap_or(256)
}

/// The test guest's command line for `w`: its scenario and settings.
pub fn cmdline(w: Workload) -> String {
    let mut cmdline = format!("kite_test={}", w.scenario());
    if matches!(w, Workload::PioRtt | Workload::MmioRtt) {
        cmdline.push_str(&format!(" kite_n={RTT_EXITS}"));
    }
    if let Some(blk) = w.blk() {
        cmdline.push_str(&format!(
            " kite_blk_mode={} kite_blk_bs={} kite_blk_depth=1 kite_n={}",
            blk.mode, blk.bs, blk.ops
        ));
    }
    if let Some((wait, event_idx)) = w.vsock_mode() {
        cmdline.push_str(&format!(
            " kite_vsock_port={} kite_vsock_bytes={} kite_vsock_chunk=4096 \
             kite_virtio_wait={wait} kite_virtio_event_idx={}",
            vsock::PORT,
            vsock::BYTES,
            u8::from(event_idx)
        ));
    }
    if w.needs_net() {
        cmdline.push_str(&format!(
            " kite_n={NET_FRAMES} kite_net_window=1 kite_net_bytes={NET_BYTES} \
             kite_net_ip={} kite_net_peer={} kite_net_port={}",
            net::GUEST_IP,
            net::PEER_IP,
            net::PEER_PORT
        ));
    }
    cmdline
}

/// `cmd`, run in virtio-net's namespace if `w` is virtio-net. (Every VMM run of a workload is
/// made here just before it starts: for virtio-vsock, what an earlier run left at the device's
/// socket path goes.)
pub fn wrap_net(ctx: &Ctx, w: Workload, cmd: Command) -> Command {
    if let (true, Some(v)) = (w.needs_vsock(), ctx.vsock) {
        v.clear();
    }
    match (w.needs_net(), ctx.net) {
        (true, Some(setup)) => setup.wrap(&cmd),
        _ => cmd,
    }
}

/// Run one side of `w` once and read its result line.
pub fn run_once(ctx: &Ctx, w: Workload, side: Side) -> Outcome {
    if w.needs_linux() {
        return match ctx.linux {
            Some(images) => linux::run_once(ctx.exe, images),
            None => Outcome::Failed("no Linux guest images".into()),
        };
    }
    if w == Workload::PauseResume {
        let Some(guest) = ctx.guest else {
            return Outcome::Failed("no test guest".into());
        };
        let scratch = std::env::temp_dir().join(format!("kite-bench-pause-{}", std::process::id()));
        let outcome = super::pause::run_once(ctx.exe, guest, &scratch);
        let _ = std::fs::remove_dir_all(&scratch);
        return outcome;
    }
    run_command(w, command(ctx, w, side))
}

/// Run `cmd`, a child of `w` (either side), and read its result line.
pub fn run_command(w: Workload, cmd: Command) -> Outcome {
    match runner::run(cmd, w.limit()) {
        Ok(out) => parse_output(w, out),
        Err(e) => Outcome::Failed(e.to_string()),
    }
}

/// The result of a finished child of `w` (either side) from its output.
pub fn parse_output(w: Workload, out: runner::Output) -> Outcome {
    let found = out
        .lines
        .iter()
        .find_map(|(at, l)| Some((*at, l, line::parse(l).filter(|t| t.name() == w.scenario())?)));
    let Some((at, text, result)) = found else {
        let last = out.last_stderr_line();
        return Outcome::Failed(format!(
            "no KITE-TEST {} line; the child ended with {}{}{}",
            w.scenario(),
            out.status,
            if last.is_empty() { "" } else { ": " },
            last
        ));
    };
    let values = match result {
        TestLine::Fail { reason, .. } if reason == "unknown scenario" && w.optional() => {
            return Outcome::NotAvailable(format!(
                "the test guest has no {} scenario yet (it said: FAIL unknown scenario)",
                w.scenario()
            ));
        }
        TestLine::Fail { reason, .. } => return Outcome::Failed(format!("FAIL {reason}")),
        TestLine::Ok { values, .. } => values,
    };
    if !out.status.success() {
        return Outcome::Failed(format!(
            "it printed an ok line but ended with {}: {}",
            out.status,
            out.last_stderr_line()
        ));
    }
    let timeline = timeline::parse(&out.stderr);
    let ms_since_spawn = |ns: u64| ns.saturating_sub(out.spawned_ns) as f64 / 1e6;
    Outcome::Done(Sample {
        line: text.clone(),
        numbers: line::numbers(&values),
        values,
        wall_ms: out.wall_ms(),
        line_ms: ms_since_spawn(at),
        exec_ms: timeline.start_ns.map(ms_since_spawn),
        timeline,
        cost: None,
    })
}

/// Samples of `key`, in run order; `None` if some sample lacks it.
fn column(samples: &[Sample], key: &str) -> Option<Vec<f64>> {
    samples
        .iter()
        .map(|s| s.numbers.get(key).copied())
        .collect()
}

fn failed(w: Workload, why: String) -> Vec<Row> {
    vec![Row::without_figures(w.label(), Status::Failed(why))]
}

/// The rows of `w` from its samples (host and guest, in run order).
pub fn rows(ctx: &Ctx, w: Workload, host: &[Sample], guest: &[Sample]) -> Vec<Row> {
    let name = w.label();
    match w {
        Workload::Cpu | Workload::Mem => {
            if w == Workload::Cpu {
                let sums = host
                    .iter()
                    .chain(guest)
                    .map(|s| line::value(&s.values, "checksum"));
                let sums: Vec<_> = sums.collect();
                if sums.windows(2).any(|p| p[0] != p[1]) {
                    return failed(w, format!("the checksums differ between runs: {sums:?}"));
                }
            }
            let (Some(h), Some(g)) = (column(host, "cycles"), column(guest, "cycles")) else {
                return failed(w, "a result line has no cycles=".into());
            };
            let mcycles = |v: Vec<f64>| v.into_iter().map(|c| c / 1e6).collect();
            let wall = |s: &[Sample]| s.iter().map(|s| s.wall_ms).collect();
            vec![
                Row::new(
                    name,
                    &format!("{name}: workload (TSC)"),
                    "Mcycles",
                    mcycles(h),
                    mcycles(g),
                ),
                Row::new(
                    name,
                    &format!("{name}: whole process, wall"),
                    "ms",
                    wall(host),
                    wall(guest),
                ),
            ]
        }
        Workload::PioRtt | Workload::MmioRtt => {
            let Some(c) = column(guest, "cycles_per_rtt") else {
                return failed(w, "a result line has no cycles_per_rtt=".into());
            };
            let ns = c.iter().map(|c| c / ctx.tsc_hz * 1e9).collect();
            vec![
                Row::new(name, &format!("{name}: one exit"), "cycles", Vec::new(), c),
                Row::new(name, &format!("{name}: one exit"), "ns", Vec::new(), ns),
            ]
        }
        Workload::Startup => milestones::rows(&milestones::STARTUP, guest),
        // Its samples are kept per machine shape and its rows made by `scale::rows`.
        Workload::Scale => failed(w, "scale's rows are made per machine shape".into()),
        Workload::Concurrent => failed(w, "concurrent's rows are made per group".into()),
        Workload::Snapshot => failed(w, "snapshot's rows are made per figure".into()),
        Workload::LinuxBoot => linux::rows(guest),
        Workload::PauseResume => super::pause::rows(guest),
        Workload::BlkRand | Workload::BlkSeq => blk_rows(ctx, w, host, guest),
        Workload::VsockIrq | Workload::VsockEventIdx | Workload::VsockPoll => {
            let ms = |samples: &[Sample]| -> Option<Vec<f64>> {
                samples
                    .iter()
                    .map(|s| {
                        let echoed = s.numbers.get("echoed").copied()?;
                        (echoed == vsock::BYTES as f64)
                            .then(|| s.numbers.get("cycles").map(|c| c / ctx.tsc_hz * 1e3))?
                    })
                    .collect()
            };
            match ms(guest) {
                Some(g) => vec![Row::new(
                    name,
                    &format!("{name}: {} MiB echoed", vsock::BYTES >> 20),
                    "ms",
                    Vec::new(),
                    g,
                )],
                None => failed(
                    w,
                    "a result line has no cycles= or not all bytes echoed".into(),
                ),
            }
        }
        Workload::VirtioNet => {
            let rtt = |samples: &[Sample]| -> Option<Vec<f64>> {
                samples
                    .iter()
                    .map(|s| {
                        let frames = s.numbers.get("frames").copied().filter(|&n| n > 0.0)?;
                        Some(s.numbers.get("cycles")? / frames / ctx.tsc_hz * 1e6)
                    })
                    .collect()
            };
            match (rtt(host), rtt(guest)) {
                (Some(h), Some(g)) => vec![Row::new(
                    name,
                    &format!("{name}: UDP echo of {NET_BYTES} bytes, round trip"),
                    "µs",
                    h,
                    g,
                )],
                _ => failed(w, "a result line has no frames= or cycles=".into()),
            }
        }
    }
}

/// Per-request write and read times and the flush, on both sides.
fn blk_rows(ctx: &Ctx, w: Workload, host: &[Sample], guest: &[Sample]) -> Vec<Row> {
    let label = w.label();
    let per = |samples: &[Sample], key: &str, scale: f64| -> Option<Vec<f64>> {
        samples
            .iter()
            .map(|s| {
                let ops = s.numbers.get("ops").copied().filter(|&n| n > 0.0)?;
                let cycles = s.numbers.get(key)?;
                let per = if key == "flush_cycles" { 1.0 } else { ops };
                Some(cycles / per / ctx.tsc_hz * scale)
            })
            .collect()
    };
    let mut rows = Vec::new();
    for (key, what, unit, scale) in [
        ("write_cycles", "write, one request", "µs", 1e6),
        ("read_cycles", "read, one request", "µs", 1e6),
        ("flush_cycles", "flush after the writes", "ms", 1e3),
    ] {
        match (per(host, key, scale), per(guest, key, scale)) {
            (Some(h), Some(g)) => {
                rows.push(Row::new(label, &format!("{label}: {what}"), unit, h, g))
            }
            _ => return failed(w, format!("a result line has no ops= or {key}=")),
        }
    }
    rows
}

#[cfg(test)]
pub(crate) mod tests;
