//! The `concurrent` workload: what density costs at start-up. N machines of the test guest's
//! `hello` (64 MiB, 1 vCPU, as `startup` starts them) are spawned at once, for N = 1, 5 and 20
//! ([`COUNTS`]); each group runs once per run of the bench. Two figures per group:
//!
//! - **all ready**: from the first spawn to the last machine's result line, ms;
//! - **slowest VM ready**: the longest any one machine took from its own spawn to its result
//!   line, ms.
//!
//! Guest side only. With N larger than the host's CPUs the machines share them, so both grow
//! with N; how much is the cost of density.

use std::time::Instant;

use super::report::{Row, Status};
use super::workloads::{self, Ctx, Outcome, Workload};

/// The workload of every row.
pub const WORKLOAD: &str = "concurrent";
/// Machines started at once, one group per entry.
pub const COUNTS: [usize; 3] = [1, 5, 20];
/// Guest RAM of each machine.
pub const MEMORY: &str = "64M";

/// One group's figures: (all ready, slowest VM ready), ms.
pub type Figures = (f64, f64);

/// Start `n` machines at once and wait for all; the figures, or why a machine failed.
pub fn run_group(ctx: &Ctx, n: usize) -> Result<Figures, String> {
    let start = Instant::now();
    let children: Vec<_> = (0..n)
        .map(|_| {
            let cmd = workloads::guest_command(ctx, Workload::Concurrent, MEMORY, None);
            let offset_ms = start.elapsed().as_secs_f64() * 1e3;
            std::thread::spawn(move || {
                (offset_ms, workloads::run_command(Workload::Concurrent, cmd))
            })
        })
        .collect();
    let mut all_ready = 0.0f64;
    let mut slowest = 0.0f64;
    let mut failure = None;
    for (i, child) in children.into_iter().enumerate() {
        match child.join() {
            Ok((offset, Outcome::Done(s))) => {
                all_ready = all_ready.max(offset + s.line_ms);
                slowest = slowest.max(s.line_ms);
            }
            Ok((_, Outcome::Failed(why) | Outcome::NotAvailable(why))) => {
                failure.get_or_insert(format!("machine {} of {n}: {why}", i + 1));
            }
            Err(_) => {
                failure.get_or_insert(format!("machine {} of {n}: its thread panicked", i + 1));
            }
        }
    }
    match failure {
        Some(why) => Err(why),
        None => Ok((all_ready, slowest)),
    }
}

/// What came of one group's runs.
#[derive(Debug)]
pub enum GroupResult {
    Samples(Vec<Figures>),
    Failed(String),
}

/// The name of group `n`'s rows: `concurrent 20 VMs`.
pub fn group_name(n: usize) -> String {
    match n {
        1 => format!("{WORKLOAD} 1 VM"),
        n => format!("{WORKLOAD} {n} VMs"),
    }
}

/// Two rows per group (all ready, slowest VM ready), or one failed row.
pub fn rows(results: &[(usize, GroupResult)]) -> Vec<Row> {
    let mut rows = Vec::new();
    for (n, result) in results {
        let name = group_name(*n);
        match result {
            GroupResult::Samples(s) if !s.is_empty() => {
                let all: Vec<f64> = s.iter().map(|f| f.0).collect();
                let slowest: Vec<f64> = s.iter().map(|f| f.1).collect();
                rows.push(Row::new(
                    WORKLOAD,
                    &format!("{name}: all ready (first spawn to last result line)"),
                    "ms",
                    Vec::new(),
                    all,
                ));
                rows.push(Row::new(
                    WORKLOAD,
                    &format!("{name}: slowest VM ready (its spawn to its result line)"),
                    "ms",
                    Vec::new(),
                    slowest,
                ));
            }
            GroupResult::Samples(_) => {
                let mut row = Row::without_figures(WORKLOAD, Status::Failed("no runs".into()));
                row.name = name;
                rows.push(row);
            }
            GroupResult::Failed(why) => {
                let mut row = Row::without_figures(WORKLOAD, Status::Failed(why.clone()));
                row.name = name;
                rows.push(row);
            }
        }
    }
    rows
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn two_rows_per_group_in_order_and_failures_named() {
        let results = vec![
            (1, GroupResult::Samples(vec![(30.0, 29.0), (32.0, 31.0)])),
            (5, GroupResult::Samples(vec![(80.0, 70.0)])),
            (20, GroupResult::Failed("machine 3 of 20: FAIL x".into())),
        ];
        let rows = rows(&results);
        let names: Vec<&str> = rows.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "concurrent 1 VM: all ready (first spawn to last result line)",
                "concurrent 1 VM: slowest VM ready (its spawn to its result line)",
                "concurrent 5 VMs: all ready (first spawn to last result line)",
                "concurrent 5 VMs: slowest VM ready (its spawn to its result line)",
                "concurrent 20 VMs",
            ]
        );
        assert_eq!(rows[0].guest, [30.0, 32.0]);
        assert_eq!(rows[1].guest, [29.0, 31.0]);
        assert!(rows[0].host.is_empty());
        assert_eq!(
            rows[4].status,
            Status::Failed("machine 3 of 20: FAIL x".into())
        );
    }
}
