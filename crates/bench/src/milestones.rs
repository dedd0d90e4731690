//! Rows from the start-up timeline `kite run --timeline` prints ([`super::timeline`]): each
//! milestone in ms after `kite run` was spawned, then Kite's memory figures. Shared by `startup`
//! (the test guest), `scale` (the test guest in machines of several sizes, [`super::scale`]) and
//! `linux-boot` (the Linux guest), which name their rows differently.

use super::report::{Row, Status};
use super::workloads::Sample;

/// The start-up milestones of `kite run`'s timeline, in order, up to the guest's first output.
pub const PHASES: [&str; 6] = [
    "KVM VM created",
    "guest RAM ready",
    "kernel loaded",
    "vCPUs configured",
    "first guest instruction",
    "guest's first serial byte",
];
/// The milestone Kite adds when the guest writes the boot-timer register.
pub const BOOT_TIMER_MARK: &str = "guest ready (boot timer)";

/// How one workload's milestone rows are named, and what stands for "guest ready".
pub struct Naming<'a> {
    /// The workload the rows belong to.
    pub workload: &'a str,
    /// Start of each milestone row's name, before ": ".
    pub prefix: &'a str,
    /// Start of each memory row's name, before ": ".
    pub memory: &'a str,
    /// Without a boot-timer mark, the arrival of the result line stands for "guest ready";
    /// if false, a run without one makes the workload an error.
    pub line_fallback: bool,
}

pub const STARTUP: Naming<'static> = Naming {
    workload: "startup",
    prefix: "start",
    memory: "vmm memory",
    line_fallback: true,
};

pub const LINUX_BOOT: Naming<'static> = Naming {
    workload: "linux-boot",
    prefix: "linux-boot",
    memory: "linux-boot memory",
    line_fallback: false,
};

fn failed(n: &Naming, why: String) -> Vec<Row> {
    vec![Row::without_figures(n.workload, Status::Failed(why))]
}

/// Start-up milestones in ms after `kite run` was spawned, then Kite's memory figures: guest
/// side only, one sample per run.
pub fn rows(n: &Naming, guest: &[Sample]) -> Vec<Row> {
    let w = n.workload;
    let row = |name: &str, unit: &str, v: Vec<f64>| {
        Row::new(w, &format!("{}: {name}", n.prefix), unit, Vec::new(), v)
    };
    let Some(exec) = guest
        .iter()
        .map(|s| s.exec_ms)
        .collect::<Option<Vec<f64>>>()
    else {
        return failed(n, "kite run --timeline printed no timeline".into());
    };
    // Milestone `mark` of every run, in ms after spawn.
    let at = |mark: &str| -> Option<Vec<f64>> {
        guest
            .iter()
            .zip(&exec)
            .map(|(s, e)| Some(e + s.timeline.mark(mark)?))
            .collect()
    };
    let mut rows = vec![row("Kite's main() runs", "ms", exec.clone())];
    for phase in PHASES {
        match at(phase) {
            Some(v) => rows.push(row(phase, "ms", v)),
            None => rows.push(Row::without_figures(
                w,
                Status::NotAvailable(format!("{}: no \"{phase}\" mark in the timeline", n.prefix)),
            )),
        }
    }
    match at(BOOT_TIMER_MARK) {
        Some(v) => rows.push(row(BOOT_TIMER_MARK, "ms", v)),
        None if n.line_fallback => rows.push(row(
            "guest ready (result line read)",
            "ms",
            guest.iter().map(|s| s.line_ms).collect(),
        )),
        None => {
            return failed(
                n,
                format!("a run has no \"{BOOT_TIMER_MARK}\" mark in its timeline"),
            );
        }
    }
    rows.push(row(
        "VM stopped, process exited",
        "ms",
        guest.iter().map(|s| s.wall_ms).collect(),
    ));
    let Some(mem) = guest
        .iter()
        .map(|s| s.timeline.memory)
        .collect::<Option<Vec<(u64, u64)>>>()
    else {
        let mut row = Row::without_figures(
            w,
            Status::Failed("kite run --timeline printed no memory figures".into()),
        );
        row.name = n.memory.into();
        rows.push(row);
        return rows;
    };
    let mib = |f: fn(&(u64, u64)) -> u64| -> Vec<f64> {
        mem.iter().map(|m| f(m) as f64 / (1 << 20) as f64).collect()
    };
    let mem_row = |name: &str, v: Vec<f64>| {
        Row::new(w, &format!("{}: {name}", n.memory), "MiB", Vec::new(), v)
    };
    rows.push(mem_row(
        "overhead (peak RSS - guest RAM touched)",
        mib(|m| m.0.saturating_sub(m.1)),
    ));
    rows.push(mem_row("peak RSS (VmHWM)", mib(|m| m.0)));
    rows.push(mem_row("guest RAM touched (smaps)", mib(|m| m.1)));
    rows
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::timeline;

    const TIMELINE: &str = "kite: timeline: process start at 5 ns CLOCK_MONOTONIC\n\
         kite: timeline:    0.500 ms  KVM VM created\n\
         kite: timeline:    5.000 ms  guest RAM ready\n\
         kite: timeline:    5.200 ms  kernel loaded\n\
         kite: timeline:    5.800 ms  vCPUs configured\n\
         kite: timeline:    6.000 ms  first guest instruction\n\
         kite: timeline:   16.000 ms  guest's first serial byte\n\
         kite: timeline: memory: peak RSS 20971520 bytes, guest RAM resident 10485760 bytes\n";

    fn sample(stderr: &str, wall_ms: f64) -> Sample {
        Sample {
            line: "KITE-TEST hello ok ram_mib=255".into(),
            wall_ms,
            line_ms: wall_ms - 1.0,
            exec_ms: Some(1.5),
            timeline: timeline::parse(stderr),
            ..Sample::default()
        }
    }

    fn get<'a>(rows: &'a [Row], name: &str) -> &'a Row {
        rows.iter()
            .find(|r| r.name == name)
            .unwrap_or_else(|| panic!("{name} in {rows:?}"))
    }

    #[test]
    fn startup_rows_follow_the_timeline() {
        let rows = rows(&STARTUP, &[sample(TIMELINE, 40.0)]);
        assert_eq!(get(&rows, "start: Kite's main() runs").guest, [1.5]);
        assert_eq!(get(&rows, "start: KVM VM created").guest, [2.0]);
        assert_eq!(get(&rows, "start: guest's first serial byte").guest, [17.5]);
        assert_eq!(
            get(&rows, "start: guest ready (result line read)").guest,
            [39.0]
        );
        assert_eq!(
            get(&rows, "start: VM stopped, process exited").guest,
            [40.0]
        );
        assert_eq!(
            get(&rows, "vmm memory: overhead (peak RSS - guest RAM touched)").guest,
            [10.0]
        );
        assert!(rows.iter().all(|r| r.status == Status::Ok));
        assert!(rows.iter().all(|r| r.workload == "startup"));
    }

    #[test]
    fn startup_without_a_timeline_is_an_error() {
        let mut s = sample(TIMELINE, 40.0);
        s.exec_ms = None;
        let rows = rows(&STARTUP, &[s]);
        assert!(matches!(rows[0].status, Status::Failed(_)));
    }

    #[test]
    fn linux_boot_rows_take_the_boot_timer_over_several_runs() {
        let with_timer = |ms: f64, wall: f64| {
            sample(
                &format!("{TIMELINE}kite: timeline: {ms:.3} ms  guest ready (boot timer)\n"),
                wall,
            )
        };
        let runs = [
            with_timer(20000.0, 21000.0),
            with_timer(18000.0, 19000.0),
            with_timer(22000.0, 23000.0),
        ];
        let rows = rows(&LINUX_BOOT, &runs);
        let ready = get(&rows, "linux-boot: guest ready (boot timer)");
        assert_eq!(ready.guest, [20001.5, 18001.5, 22001.5]);
        let s = ready.guest_summary().unwrap();
        assert_eq!((s.median, s.min, s.max), (20001.5, 18001.5, 22001.5));
        assert_eq!(ready.unit, "ms");
        assert_eq!(
            get(&rows, "linux-boot: VM stopped, process exited").guest,
            [21000.0, 19000.0, 23000.0]
        );
        assert_eq!(get(&rows, "linux-boot: kernel loaded").guest, [6.7; 3]);
        assert_eq!(
            get(&rows, "linux-boot memory: guest RAM touched (smaps)").guest,
            [10.0; 3]
        );
        assert!(rows.iter().all(|r| r.status == Status::Ok));
        assert!(rows.iter().all(|r| r.workload == "linux-boot"));
        assert!(rows.iter().all(|r| r.host.is_empty()));
    }

    #[test]
    fn linux_boot_without_the_boot_timer_is_an_error() {
        let rows = rows(&LINUX_BOOT, &[sample(TIMELINE, 40.0)]);
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].workload, "linux-boot");
        assert!(
            matches!(&rows[0].status, Status::Failed(m) if m.contains("boot timer")),
            "{rows:?}"
        );
    }
}
