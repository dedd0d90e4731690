//! The `scale` workload: `startup`'s figures as the machine grows. The test guest's `hello`
//! scenario is started as `startup` starts it (`kite run --no-acpi --timeline --boot-timer`,
//! [`super::milestones`]) in machines of 64 MiB, 1 GiB, 4 GiB and 16 GiB of RAM (1 vCPU) and of
//! 1, 2, 8 and 32 vCPUs (256 MiB): the [`POINTS`]. Guest side only.
//!
//! The guest touches a few MiB of its RAM, whatever its size: the rest is only mapped, so a
//! 16 GiB machine fits a host with 16 GiB or more of RAM however much of it is free. Before the
//! runs, [`Host::probe`] reads what the host allows; a machine it does not allow (more RAM than
//! the host has, a mapping strict overcommit or `ulimit -v` would refuse, more vCPUs than KVM
//! takes) is n/a with the reason. The test guest starts no application processor, so 32 vCPUs
//! on a host with fewer CPUs only cost their creation, which is what is measured.
//!
//! Rows are grouped by figure, one row per machine in a row, so that the growth reads down the
//! table (`scale 64M: guest RAM ready`, `scale 1G: guest RAM ready`, ...); the SVG draws the
//! same groups as bars ([`panels`]).

use super::milestones::{self, Naming};
use super::report::{Row, Status};
use super::stats::Summary;
use super::workloads::{self, Ctx, Outcome, Sample, Workload};

/// The workload of every row.
pub const WORKLOAD: &str = "scale";

/// Which way a machine grows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Series {
    /// Guest RAM, with 1 vCPU.
    Memory,
    /// vCPUs, with 256 MiB of RAM.
    Vcpus,
}

pub const SERIES: [Series; 2] = [Series::Memory, Series::Vcpus];

impl Series {
    /// The heading of its column in the SVG.
    pub fn title(self) -> &'static str {
        match self {
            Series::Memory => "guest RAM (1 vCPU)",
            Series::Vcpus => "vCPUs (256 MiB of RAM)",
        }
    }
}

/// One machine `scale` starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Point {
    pub series: Series,
    pub memory_mib: u64,
    pub vcpus: u8,
}

const fn memory(mib: u64) -> Point {
    Point {
        series: Series::Memory,
        memory_mib: mib,
        vcpus: 1,
    }
}

const fn vcpus(n: u8) -> Point {
    Point {
        series: Series::Vcpus,
        memory_mib: 256,
        vcpus: n,
    }
}

/// The machines, in the order they run (each run of the bench starts every one once).
pub const POINTS: [Point; 8] = [
    memory(64),
    memory(1 << 10),
    memory(4 << 10),
    memory(16 << 10),
    vcpus(1),
    vcpus(2),
    vcpus(8),
    vcpus(32),
];

impl Point {
    /// The guest RAM as `kite run --memory` takes it: `64M`, `1G`, `16G`.
    pub fn memory_arg(self) -> String {
        match self.memory_mib % 1024 {
            0 => format!("{}G", self.memory_mib / 1024),
            _ => format!("{}M", self.memory_mib),
        }
    }

    pub fn memory_bytes(self) -> u64 {
        self.memory_mib << 20
    }

    /// What grows in its series: `16G`, `32 vCPUs`.
    pub fn label(self) -> String {
        match (self.series, self.vcpus) {
            (Series::Memory, _) => self.memory_arg(),
            (Series::Vcpus, 1) => "1 vCPU".into(),
            (Series::Vcpus, n) => format!("{n} vCPUs"),
        }
    }

    /// The start of its rows' names, and its name in the progress line and the JSON's result
    /// lines: `scale 16G`.
    pub fn name(self) -> String {
        format!("{WORKLOAD} {}", self.label())
    }
}

/// A figure `scale` shows of each machine: the start of the `startup` row it comes from (after
/// the row's prefix) and the start of the name it is shown under.
struct Figure {
    from: &'static str,
    shown: &'static str,
}

/// The start-up milestones that can grow with the machine, process exit and the memory
/// overhead. (The milestones before "guest RAM ready" come before the machine is built; times
/// are from the spawn of `kite run`, so what a step costs shows in the next figure shown.)
const FIGURES: [Figure; 6] = [
    Figure {
        from: "guest RAM ready",
        shown: "guest RAM ready",
    },
    Figure {
        from: "vCPUs configured",
        shown: "vCPUs configured",
    },
    Figure {
        from: "first guest instruction",
        shown: "first guest instruction",
    },
    // "guest ready (result line read)", or "(boot timer)" from a guest that writes it.
    Figure {
        from: "guest ready",
        shown: "guest ready",
    },
    Figure {
        from: "VM stopped, process exited",
        shown: "VM stopped, process exited",
    },
    Figure {
        from: "overhead (peak RSS - guest RAM touched)",
        shown: "vmm memory overhead",
    },
];

/// What the host allows, read once before the runs.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Host {
    /// MemTotal, bytes.
    pub mem_total: Option<u64>,
    /// Under strict overcommit (`vm.overcommit_memory` = 2, which ignores MAP_NORESERVE), what
    /// is left to commit: CommitLimit - Committed_AS, bytes.
    pub commit_left: Option<u64>,
    /// RLIMIT_AS (`ulimit -v`), bytes, if there is one.
    pub address_space: Option<u64>,
    /// The most vCPUs Kite can give a VM here: KVM_CAP_MAX_VCPUS, and the MP table's limit.
    /// `None` if /dev/kvm cannot be opened (the runs then fail with Kite's own error).
    pub max_vcpus: Option<usize>,
}

/// Room in the address space for Kite itself beyond the guest RAM (its code, heap and one
/// stack per vCPU thread).
const ADDRESS_SPACE_ROOM: u64 = 1 << 30;

/// `key`'s value in /proc/meminfo text (`MemTotal:  24684084 kB`), in bytes.
fn meminfo(text: &str, key: &str) -> Option<u64> {
    let rest = text
        .lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))?;
    let mut words = rest.split_whitespace();
    let n: u64 = words.next()?.parse().ok()?;
    match words.next() {
        Some("kB") => n.checked_mul(1024),
        None => Some(n),
        Some(_) => None,
    }
}

fn gib(bytes: u64) -> String {
    format!("{:.1} GiB", bytes as f64 / (1u64 << 30) as f64)
}

impl Host {
    /// Read /proc/meminfo, `vm.overcommit_memory`, RLIMIT_AS and KVM's vCPU limit.
    pub fn probe() -> Host {
        let meminfo_text = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
        let overcommit = std::fs::read_to_string("/proc/sys/vm/overcommit_memory");
        let address_space = {
            let mut limit = libc::rlimit {
                rlim_cur: 0,
                rlim_max: 0,
            };
            // SAFETY: getrlimit writes one rlimit into the valid local `limit`.
            let rc = unsafe { libc::getrlimit(libc::RLIMIT_AS, &mut limit) };
            (rc == 0 && limit.rlim_cur != libc::RLIM_INFINITY).then_some(limit.rlim_cur)
        };
        let max_vcpus = kvm_ioctls::Kvm::new().ok().map(|kvm| {
            kvm.get_max_vcpus()
                .min(kite_vmm::arch::x86_64::mptable::MAX_CPUS.into())
        });
        Host::from_parts(
            &meminfo_text,
            overcommit.ok().as_deref(),
            address_space,
            max_vcpus,
        )
    }

    /// The host from /proc/meminfo's text, `vm.overcommit_memory`'s, RLIMIT_AS and the vCPU
    /// limit.
    pub fn from_parts(
        meminfo_text: &str,
        overcommit: Option<&str>,
        address_space: Option<u64>,
        max_vcpus: Option<usize>,
    ) -> Host {
        let strict = overcommit.is_some_and(|t| t.trim() == "2");
        let commit_left = match strict {
            true => meminfo(meminfo_text, "CommitLimit").map(|limit| {
                limit.saturating_sub(meminfo(meminfo_text, "Committed_AS").unwrap_or(0))
            }),
            false => None,
        };
        Host {
            mem_total: meminfo(meminfo_text, "MemTotal"),
            commit_left,
            address_space,
            max_vcpus,
        }
    }

    /// Why machine `p` cannot be started here, if it cannot.
    pub fn unavailable(&self, p: Point) -> Option<String> {
        let need = p.memory_bytes();
        let guest = p.memory_arg();
        if let Some(total) = self.mem_total.filter(|&t| t < need) {
            return Some(format!(
                "{guest} of guest RAM is more than the host's {} (it would only be mapped, but \
                 a guest bigger than its host is not timed)",
                gib(total)
            ));
        }
        if let Some(left) = self.commit_left.filter(|&l| l < need) {
            return Some(format!(
                "vm.overcommit_memory is 2 and only {} is left to commit (CommitLimit - \
                 Committed_AS): mapping {guest} of guest RAM would fail",
                gib(left)
            ));
        }
        if let Some(limit) = self
            .address_space
            .filter(|&l| l < need.saturating_add(ADDRESS_SPACE_ROOM))
        {
            return Some(format!(
                "the address-space limit (ulimit -v) of {} leaves no room to map {guest} of guest \
                 RAM",
                gib(limit)
            ));
        }
        if let Some(max) = self.max_vcpus.filter(|&m| m < usize::from(p.vcpus)) {
            return Some(format!(
                "KVM takes at most {max} vCPUs in a VM here (KVM_CAP_MAX_VCPUS), not {}",
                p.vcpus
            ));
        }
        None
    }
}

/// Start machine `p` once, as `startup` does, and check that the guest saw its RAM.
pub fn run_once(ctx: &Ctx, p: Point) -> Outcome {
    let cmd = workloads::guest_command(ctx, Workload::Scale, &p.memory_arg(), Some(p.vcpus));
    match workloads::run_command(Workload::Scale, cmd) {
        Outcome::Done(s) => check_ram(p, s),
        other => other,
    }
}

/// `hello` says how much RAM the guest found (`ram_mib=`, its e820 RAM): a little less than the
/// machine's (the BIOS area is not RAM), never more.
fn check_ram(p: Point, s: Sample) -> Outcome {
    let given = p.memory_mib as f64;
    match s.numbers.get("ram_mib") {
        Some(&seen) if seen <= given && seen >= given * 0.9 => Outcome::Done(s),
        Some(seen) => Outcome::Failed(format!(
            "the guest found {seen} MiB of RAM in a {} machine",
            p.memory_arg()
        )),
        None => Outcome::Failed(format!("the result line has no ram_mib=: {}", s.line)),
    }
}

/// What came of one machine's runs.
#[derive(Debug)]
pub enum PointResult {
    /// One sample per run, in run order.
    Samples(Vec<Sample>),
    NotAvailable(String),
    Failed(String),
}

/// A row for machine `p` as a whole, without figures.
fn point_row(p: Point, status: Status) -> Row {
    let mut row = Row::without_figures(WORKLOAD, status);
    row.name = p.name();
    row
}

/// The [`FIGURES`] rows of one machine, in order, or why it has none.
fn point_rows(p: Point, result: &PointResult) -> Result<Vec<Row>, Status> {
    let samples = match result {
        PointResult::Samples(s) if s.is_empty() => return Err(Status::Failed("no runs".into())),
        PointResult::Samples(s) => s,
        PointResult::NotAvailable(why) => return Err(Status::NotAvailable(why.clone())),
        PointResult::Failed(why) => return Err(Status::Failed(why.clone())),
    };
    let name = p.name();
    let naming = Naming {
        workload: WORKLOAD,
        prefix: &name,
        memory: &name,
        line_fallback: true,
    };
    let all = milestones::rows(&naming, samples);
    let prefix = format!("{name}: ");
    FIGURES
        .iter()
        .map(|f| {
            let found = all.iter().find_map(|r| {
                let rest = r.name.strip_prefix(&prefix)?.strip_prefix(f.from)?;
                (r.status == Status::Ok).then_some((r, rest))
            });
            match found {
                Some((row, rest)) => Ok(Row {
                    name: format!("{prefix}{}{rest}", f.shown),
                    ..row.clone()
                }),
                // The timeline lacked it: whatever milestones said, else that.
                None => Err(all
                    .iter()
                    .map(|r| r.status.clone())
                    .find(|s| *s != Status::Ok)
                    .unwrap_or_else(|| Status::Failed(format!("no \"{}\" figure", f.from)))),
            }
        })
        .collect()
}

/// The rows of every machine: per series, per figure, one row per machine; then a row for each
/// machine of the series that has no figures, saying why.
pub fn rows(results: &[(Point, PointResult)]) -> Vec<Row> {
    let made: Vec<(Point, Result<Vec<Row>, Status>)> = results
        .iter()
        .map(|(p, r)| (*p, point_rows(*p, r)))
        .collect();
    let mut out = Vec::new();
    for series in SERIES {
        let of_series = || made.iter().filter(move |(p, _)| p.series == series);
        for i in 0..FIGURES.len() {
            for (_, r) in of_series() {
                if let Ok(rows) = r {
                    out.push(rows[i].clone());
                }
            }
        }
        for (p, r) in of_series() {
            if let Err(status) = r {
                out.push(point_row(*p, status.clone()));
            }
        }
    }
    out
}

/// One machine's bar in a panel of the SVG.
#[derive(Clone, Debug, PartialEq)]
pub struct Bar {
    /// The machine: `16G`, `32 vCPUs`.
    pub label: String,
    /// Median, min and max of the runs; else "n/a" or "error".
    pub value: Result<Summary, &'static str>,
}

/// One figure of the SVG: a column of bars per series.
#[derive(Clone, Debug, PartialEq)]
pub struct Panel {
    /// The figure, e.g. "guest ready (result line read)".
    pub figure: String,
    pub unit: String,
    pub columns: Vec<(Series, Vec<Bar>)>,
}

/// The figures of the `scale` rows among `rows`, for the SVG; empty if there are none.
pub fn panels(rows: &[Row]) -> Vec<Panel> {
    let ours: Vec<&Row> = rows.iter().filter(|r| r.workload == WORKLOAD).collect();
    if ours.is_empty() {
        return Vec::new();
    }
    let mut panels = Vec::new();
    for f in &FIGURES {
        let (mut figure, mut unit) = (String::new(), String::new());
        let mut columns = Vec::new();
        for series in SERIES {
            let mut bars = Vec::new();
            for p in POINTS.iter().filter(|p| p.series == series) {
                let name = p.name();
                let start = format!("{name}: {}", f.shown);
                let value = if let Some(row) = ours.iter().find(|r| r.name.starts_with(&start)) {
                    if figure.is_empty() {
                        figure = row.name[name.len() + 2..].to_string();
                        unit = row.unit.clone();
                    }
                    row.guest_summary().ok_or("n/a")
                } else if let Some(row) = ours.iter().find(|r| r.name == name) {
                    Err(match row.status {
                        Status::Failed(_) => "error",
                        _ => "n/a",
                    })
                } else {
                    continue;
                };
                bars.push(Bar {
                    label: p.label(),
                    value,
                });
            }
            if !bars.is_empty() {
                columns.push((series, bars));
            }
        }
        if !columns.is_empty() {
            if figure.is_empty() {
                figure = f.shown.to_string();
            }
            panels.push(Panel {
                figure,
                unit,
                columns,
            });
        }
    }
    panels
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::timeline;

    /// A run of machine `p`: the later milestones and the process exit grow with `grow`.
    fn sample(grow: f64) -> Sample {
        let stderr = format!(
            "kite: timeline: process start at 5 ns CLOCK_MONOTONIC\n\
             kite: timeline:    0.500 ms  KVM VM created\n\
             kite: timeline:    {:.3} ms  guest RAM ready\n\
             kite: timeline:    {:.3} ms  kernel loaded\n\
             kite: timeline:    {:.3} ms  vCPUs configured\n\
             kite: timeline:    {:.3} ms  first guest instruction\n\
             kite: timeline:   90.000 ms  guest's first serial byte\n\
             kite: timeline: memory: peak RSS 13631488 bytes, guest RAM resident 8388608 bytes\n",
            5.0 + grow,
            5.5 + grow,
            6.0 + 2.0 * grow,
            8.0 + 2.0 * grow
        );
        Sample {
            line: "KITE-TEST hello ok ram_mib=255".into(),
            wall_ms: 150.0 + grow,
            line_ms: 140.0 + grow,
            exec_ms: Some(1.0),
            timeline: timeline::parse(&stderr),
            ..Sample::default()
        }
    }

    /// Every machine with two runs, but 16G n/a and 8 vCPUs failed.
    pub fn results() -> Vec<(Point, PointResult)> {
        POINTS
            .iter()
            .enumerate()
            .map(|(i, &p)| {
                let r = match p.label().as_str() {
                    "16G" => PointResult::NotAvailable("too big".into()),
                    "8 vCPUs" => PointResult::Failed("guest run 1: FAIL x".into()),
                    _ => PointResult::Samples(vec![sample(i as f64), sample(i as f64 + 1.0)]),
                };
                (p, r)
            })
            .collect()
    }

    #[test]
    fn the_machines_are_the_sizes_and_counts_asked_for() {
        let labels: Vec<String> = POINTS.iter().map(|p| p.label()).collect();
        assert_eq!(
            labels,
            [
                "64M", "1G", "4G", "16G", "1 vCPU", "2 vCPUs", "8 vCPUs", "32 vCPUs"
            ]
        );
        let args: Vec<(String, u8)> = POINTS.iter().map(|p| (p.memory_arg(), p.vcpus)).collect();
        assert_eq!(
            args,
            [
                ("64M".into(), 1),
                ("1G".into(), 1),
                ("4G".into(), 1),
                ("16G".into(), 1),
                ("256M".into(), 1),
                ("256M".into(), 2),
                ("256M".into(), 8),
                ("256M".into(), 32)
            ]
        );
        assert_eq!(POINTS[3].memory_bytes(), 16 << 30);
        assert_eq!(POINTS[3].name(), "scale 16G");
    }

    #[test]
    fn the_command_is_startups_with_the_machine_size() {
        let ctx = workloads::tests::ctx();
        let cmd = workloads::guest_command(&ctx, Workload::Scale, "16G", Some(32));
        let args: Vec<_> = cmd.get_args().map(|a| a.to_string_lossy()).collect();
        assert_eq!(
            args,
            [
                "run",
                "--no-acpi",
                "--kernel",
                "guest.elf",
                "--memory",
                "16G",
                "--cpus",
                "32",
                "--timeline",
                "--cmdline",
                "kite_test=hello",
                "--boot-timer"
            ]
        );
    }

    #[test]
    fn rows_are_grouped_by_figure_so_growth_reads_down_the_table() {
        let rows = rows(&results());
        let names: Vec<&str> = rows.iter().map(|r| r.name.as_str()).collect();
        // 3 memory machines and 3 vCPU machines with figures, 6 figures each, and a row for
        // each of the other two.
        assert_eq!(rows.len(), 6 * 6 + 2, "{names:#?}");
        assert_eq!(
            &names[..4],
            [
                "scale 64M: guest RAM ready",
                "scale 1G: guest RAM ready",
                "scale 4G: guest RAM ready",
                "scale 64M: vCPUs configured",
            ]
        );
        assert!(names.contains(&"scale 4G: guest ready (result line read)"));
        assert!(names.contains(&"scale 1G: VM stopped, process exited"));
        assert_eq!(names[17], "scale 4G: vmm memory overhead");
        assert_eq!(names[18], "scale 16G");
        assert_eq!(rows[18].status, Status::NotAvailable("too big".into()));
        assert_eq!(names[19], "scale 1 vCPU: guest RAM ready");
        assert_eq!(names[37], "scale 8 vCPUs");
        assert!(matches!(rows[37].status, Status::Failed(_)));
        assert!(
            rows.iter()
                .all(|r| r.workload == "scale" && r.host.is_empty())
        );
        // Figures: ms after spawn, growing with the machine; the overhead in MiB.
        let get = |name: &str| rows.iter().find(|r| r.name == name).unwrap();
        assert_eq!(get("scale 64M: guest RAM ready").guest, [6.0, 7.0]);
        assert_eq!(get("scale 4G: guest RAM ready").guest, [8.0, 9.0]);
        assert_eq!(get("scale 1G: vCPUs configured").unit, "ms");
        assert_eq!(
            get("scale 2 vCPUs: VM stopped, process exited").guest,
            [155.0, 156.0]
        );
        let overhead = get("scale 32 vCPUs: vmm memory overhead");
        assert_eq!(
            (overhead.unit.as_str(), &overhead.guest[..]),
            ("MiB", &[5.0, 5.0][..])
        );
    }

    #[test]
    fn a_machine_without_a_timeline_is_an_error_row() {
        let mut s = sample(0.0);
        s.exec_ms = None;
        let rows = rows(&[(POINTS[0], PointResult::Samples(vec![s]))]);
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].name, "scale 64M");
        assert!(matches!(&rows[0].status, Status::Failed(m) if m.contains("timeline")));
    }

    #[test]
    fn the_guest_must_see_its_ram() {
        let mut s = sample(0.0);
        s.numbers.insert("ram_mib".into(), 16383.0);
        assert!(matches!(check_ram(POINTS[3], s.clone()), Outcome::Done(_)));
        for wrong in [255.0, 16385.0] {
            s.numbers.insert("ram_mib".into(), wrong);
            let Outcome::Failed(why) = check_ram(POINTS[3], s.clone()) else {
                panic!("{wrong} accepted")
            };
            assert!(why.contains("in a 16G machine"), "{why}");
        }
        s.numbers.clear();
        assert!(matches!(check_ram(POINTS[3], s), Outcome::Failed(_)));
    }

    const MEMINFO: &str = "MemTotal:       24684084 kB\n\
        MemFree:        20092940 kB\n\
        CommitLimit:    12342040 kB\n\
        Committed_AS:     183964 kB\n";

    #[test]
    fn the_host_must_hold_the_machine() {
        let big = POINTS[3];
        let cpus32 = POINTS[7];
        // This machine: 24 GiB, heuristic overcommit, no limits, KVM takes 1024 vCPUs.
        let host = Host::from_parts(MEMINFO, Some("0\n"), None, Some(1024));
        assert_eq!(host.mem_total, Some(24684084 * 1024));
        assert_eq!(host.commit_left, None);
        assert!(POINTS.iter().all(|&p| host.unavailable(p).is_none()));
        // 8 GiB of RAM.
        let small = Host::from_parts("MemTotal: 8000000 kB\n", Some("0"), None, None);
        let why = small.unavailable(big).unwrap();
        assert!(
            why.starts_with("16G of guest RAM is more than the host's 7.6 GiB"),
            "{why}"
        );
        assert_eq!(small.unavailable(POINTS[2]), None);
        // Strict overcommit: 11.6 GiB left to commit.
        let strict = Host::from_parts(MEMINFO, Some("2\n"), None, Some(1024));
        let why = strict.unavailable(big).unwrap();
        assert!(why.contains("only 11.6 GiB is left to commit"), "{why}");
        assert_eq!(strict.unavailable(POINTS[2]), None);
        // ulimit -v 8 GiB.
        let limited = Host::from_parts(MEMINFO, None, Some(8 << 30), None);
        assert!(limited.unavailable(big).unwrap().contains("ulimit -v"));
        assert_eq!(limited.unavailable(POINTS[1]), None);
        // KVM takes 16 vCPUs.
        let kvm16 = Host::from_parts(MEMINFO, None, None, Some(16));
        assert_eq!(
            kvm16.unavailable(cpus32).unwrap(),
            "KVM takes at most 16 vCPUs in a VM here (KVM_CAP_MAX_VCPUS), not 32"
        );
        assert_eq!(kvm16.unavailable(POINTS[6]), None);
        // Nothing known: nothing ruled out.
        assert!(
            POINTS
                .iter()
                .all(|&p| Host::default().unavailable(p).is_none())
        );
    }

    #[test]
    fn meminfo_values_are_bytes() {
        assert_eq!(meminfo(MEMINFO, "MemFree"), Some(20092940 * 1024));
        assert_eq!(meminfo(MEMINFO, "Mem"), None);
        assert_eq!(
            meminfo("HugePages_Total:       0\n", "HugePages_Total"),
            Some(0)
        );
        assert_eq!(meminfo("X: 1 MB\n", "X"), None);
    }

    #[test]
    fn panels_have_a_bar_per_machine_and_say_which_have_none() {
        let panels = panels(&rows(&results()));
        assert_eq!(panels.len(), 6);
        assert_eq!(panels[0].figure, "guest RAM ready");
        assert_eq!(panels[3].figure, "guest ready (result line read)");
        assert_eq!(panels[5].unit, "MiB");
        let (series, bars) = &panels[0].columns[0];
        assert_eq!(*series, Series::Memory);
        let labels: Vec<&str> = bars.iter().map(|b| b.label.as_str()).collect();
        assert_eq!(labels, ["64M", "1G", "4G", "16G"]);
        assert_eq!(bars[0].value.unwrap().median, 6.5);
        assert_eq!(bars[3].value, Err("n/a"));
        let (series, bars) = &panels[0].columns[1];
        assert_eq!(*series, Series::Vcpus);
        assert_eq!(bars[2].value, Err("error"));
        assert!(super::panels(&[]).is_empty());
    }
}
