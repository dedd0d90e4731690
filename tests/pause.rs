//! `PATCH /vm` Paused/Resumed: a paused guest makes no progress and a resumed one goes on,
//! ten times in a row; pausing and resuming while virtio-blk requests are in flight loses and
//! corrupts nothing.

mod common;

use std::time::{Duration, Instant};

use common::api::*;
use common::*;

const LIMIT: Duration = Duration::from_secs(60);
const PAUSE: &str = r#"{"state": "Paused"}"#;
const RESUME: &str = r#"{"state": "Resumed"}"#;

#[test]
fn a_paused_guest_makes_no_progress_and_a_resumed_one_goes_on() {
    let test = "a_paused_guest_makes_no_progress_and_a_resumed_one_goes_on";
    if let Some(reason) = kvm_unavailable() {
        return skip(test, Need::Kvm, &reason);
    }
    let kernel = testguest().unwrap_or_else(|e| panic!("{e}"));
    let mut vm = ApiVm::start(
        test,
        &[
            "--no-acpi",
            "--kernel",
            path_str(&kernel),
            "--memory",
            "64M",
            "--cpus",
            "2",
            "--cmdline",
            "kite_test=tick kite_tick_ms=2",
        ],
    );
    vm.wait_stdout(LIMIT, |out| last_tick(out) >= 5);
    vm.bad("PATCH", "/vm", Some(RESUME), "not paused");
    for cycle in 0..10 {
        vm.ok("PATCH", "/vm", PAUSE);
        let (_, info) = vm.call("GET", "/", None);
        assert!(info.contains(r#""state":"Paused""#), "{info}");
        vm.bad("PATCH", "/vm", Some(PAUSE), "already paused");
        // Every line the guest printed before it parked reached the pipe before the pause
        // was answered; give the reader a moment to take them, then watch for more.
        std::thread::sleep(Duration::from_millis(50));
        let paused_at = last_tick(&vm.stdout());
        std::thread::sleep(Duration::from_millis(300));
        assert_eq!(
            last_tick(&vm.stdout()),
            paused_at,
            "cycle {cycle}: the guest ticked while paused"
        );
        vm.ok("PATCH", "/vm", RESUME);
        let (_, info) = vm.call("GET", "/", None);
        assert!(info.contains(r#""state":"Running""#), "{info}");
        vm.wait_stdout(LIMIT, |out| last_tick(out) > paused_at + 2);
    }
    // Console input still reaches the guest: it ends the scenario.
    vm.type_text("q");
    assert_eq!(vm.wait(LIMIT), Some(0), "{}", vm.stderr());
    assert!(vm.stdout().contains("KITE-TEST tick ok"), "{}", vm.stdout());
}

#[test]
fn pausing_during_disk_io_loses_and_corrupts_nothing() {
    pause_during_disk_io("pausing_during_disk_io_loses_and_corrupts_nothing", "");
}

/// The same on an io_uring disk (`io=uring`): a pause waits for the requests in flight.
#[test]
fn pausing_during_io_uring_disk_io_loses_and_corrupts_nothing() {
    let test = "pausing_during_io_uring_disk_io_loses_and_corrupts_nothing";
    if io_uring_unavailable(test) {
        return;
    }
    pause_during_disk_io(test, ",io=uring");
}

/// Pause and resume over and over while the virtio-blk check runs on `--disk PATH{options}`.
fn pause_during_disk_io(test: &str, options: &str) {
    if let Some(reason) = kvm_unavailable() {
        return skip(test, Need::Kvm, &reason);
    }
    let kernel = testguest().unwrap_or_else(|e| panic!("{e}"));
    let disk = temp_file(test, "disk.img", b"");
    std::fs::File::options()
        .write(true)
        .open(&disk)
        .unwrap()
        .set_len(16 << 20)
        .unwrap();
    let mut vm = ApiVm::start(
        test,
        &[
            "--no-acpi",
            "--kernel",
            path_str(&kernel),
            "--memory",
            "64M",
            "--disk",
            &format!("{}{options}", path_str(&disk)),
            "--cmdline",
            "kite_test=virtio-blk kite_blk_req=4096 kite_blk_depth=4 kite_seed=7",
        ],
    );
    let mut cycles = 0;
    let start = Instant::now();
    let code = loop {
        if let Ok((204, _)) = try_call(&vm.sock, "PATCH", "/vm", Some(PAUSE)) {
            std::thread::sleep(Duration::from_millis(5));
            let (status, body) = try_call(&vm.sock, "PATCH", "/vm", Some(RESUME))
                .unwrap_or_else(|e| panic!("resume: {e}\n{}", vm.stderr()));
            assert_eq!(status, 204, "{body}");
            cycles += 1;
        }
        std::thread::sleep(Duration::from_millis(10));
        if !vm.stdout().is_empty() || start.elapsed() > LIMIT {
            break vm.wait(LIMIT);
        }
    };
    assert_eq!(code, Some(0), "{}", vm.stderr());
    let out = vm.stdout();
    assert!(
        out.contains("KITE-TEST virtio-blk ok"),
        "the guest's read-back check failed:\n{out}"
    );
    assert!(
        cycles >= 10,
        "only {cycles} pause/resume cycles happened during the I/O: the test proves nothing"
    );
    let image = std::fs::read(&disk).unwrap();
    assert_eq!(
        kite_workloads::disk_pattern_check(7, 0, &image),
        None,
        "the image differs from what the guest wrote"
    );
    eprintln!("{cycles} pause/resume cycles during the disk check");
}
