//! Many clones of one snapshot at once (the File backend: each maps the memory file private and
//! lazily, so they share its page cache): all of them run their scenario to its end, and together
//! they use far less memory than as many VMs each with its own RAM.

mod common;

use std::path::Path;

use common::*;
use kite_bench::snapshot::{self, Vmm};
use kite_bench::workloads::Ctx;

/// Clones started from one snapshot.
const CLONES: usize = 20;

/// The test guest's `tick` (a line every 200 ms: little CPU after the restore on a shared
/// machine) at 256 MiB is snapshotted (Full) just after its second tick; 20 Kites each load it
/// through `PUT /snapshot/load` (File backend, resumed), one after the other. Each clone's first
/// line must be a tick after the second (it goes on, it does not start again). Once every clone
/// has printed one, the Pss of each (`/proc/PID/smaps_rollup`: the VMM's own memory and the
/// guest pages it maps, shared pages divided among their sharers) is read; then each clone gets
/// a byte on its console, which ends the scenario, and must print its ok line. Their summed Pss
/// must stay under half of 20 times the Rss of the VM the snapshot was made in.
#[test]
fn twenty_clones_of_one_snapshot_finish_and_share_their_memory() {
    if let Some(reason) = kvm_unavailable() {
        skip("twenty clones", Need::Kvm, &reason);
        return;
    }
    let elf = testguest().unwrap_or_else(|e| panic!("{e}"));
    let dir = std::env::temp_dir().join(format!("kite-test-{}-clones", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let ctx = Ctx {
        exe: Path::new(env!("CARGO_BIN_EXE_kite")),
        guest: Some(&elf),
        linux: None,
        disk: None,
        net: None,
        vsock: None,
        tsc_hz: 1e9,
        seccomp: true,
    };
    let args = "kite_test=tick kite_tick_ms=200";
    let source =
        snapshot::clone_source(&ctx, Vmm::Kite, &dir, args).unwrap_or_else(|e| panic!("{e}"));
    let started = std::time::Instant::now();
    let figures = snapshot::run_clones(
        &ctx,
        Vmm::Kite,
        &dir,
        CLONES,
        &source,
        &|l| l.starts_with("tick "),
        Some(&|l| l.starts_with("KITE-TEST")),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let elapsed = started.elapsed();
    for (i, console) in figures.consoles.iter().enumerate() {
        let said = format!("clone {} of {CLONES}: {console:?}", i + 1);
        let [first, last] = console.as_slice() else {
            panic!("{said}");
        };
        let tick: u64 = first
            .strip_prefix("tick ")
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("{said}"));
        assert!(tick >= 3, "{said}");
        let ticks: u64 = last
            .strip_prefix("KITE-TEST tick ok ticks=")
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("{said}"));
        assert!(ticks >= tick, "{said}");
    }
    let mib = |kib: u64| kib as f64 / 1024.0;
    let pss: u64 = figures.pss_kib.iter().sum();
    let rss: u64 = figures.rss_kib.iter().sum();
    let limit = source.rss_kib * CLONES as u64 / 2;
    let said = format!(
        "{CLONES} clones: Pss {:.1} MiB in all ({:.2} MiB each), Rss {:.1} MiB in all; the VM \
         snapshotted had Rss {:.1} MiB, {CLONES} times that is {:.1} MiB; all finished {:.1} s \
         after the first load began",
        mib(pss),
        mib(pss) / CLONES as f64,
        mib(rss),
        mib(source.rss_kib),
        mib(source.rss_kib * CLONES as u64),
        elapsed.as_secs_f64()
    );
    eprintln!("{said}");
    assert!(pss < limit, "summed Pss is not below half: {said}");
    let _ = std::fs::remove_dir_all(&dir);
}
