//! Rate limiters on drives (Firecracker's token buckets): a 10 MB/s bandwidth bucket against
//! the throughput the test guest measures reading the disk (within 5 %), and bad values.

mod common;

use std::time::Duration;

use common::api::*;
use common::*;

const LIMIT: Duration = Duration::from_secs(120);

/// `key=<n>` from a result line.
fn key(line: &str, k: &str) -> u64 {
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(&format!("{k}=")))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {k} in {line}"))
}

/// The host's TSC rate, measured over 200 ms.
fn host_tsc_hz() -> f64 {
    // SAFETY: rdtsc only reads the time-stamp counter.
    let tsc = || unsafe { core::arch::x86_64::_rdtsc() };
    let (t0, c0) = (std::time::Instant::now(), tsc());
    std::thread::sleep(Duration::from_millis(200));
    let (c1, t1) = (tsc(), std::time::Instant::now());
    (c1 - c0) as f64 / (t1 - t0).as_secs_f64()
}

#[test]
fn a_10_mb_per_s_bucket_gives_the_guest_10_mb_per_s() {
    bandwidth_bucket("a_10_mb_per_s_bucket_gives_the_guest_10_mb_per_s", "Sync");
}

/// The same through the API on a drive with `"io_engine": "Async"` (io_uring): the bucket
/// gates each request before it is submitted.
#[test]
fn a_10_mb_per_s_bucket_holds_on_an_async_drive() {
    let test = "a_10_mb_per_s_bucket_holds_on_an_async_drive";
    if let Err(e) = kite_vmm::devices::virtio::io_uring_probe() {
        return skip(
            test,
            Need::IoUring,
            &format!("this host refuses io_uring: {e}"),
        );
    }
    bandwidth_bucket(test, "Async");
}

/// A 10 MB/s bandwidth bucket on a drive with `io_engine`: the guest's reads run at 10 MB/s.
fn bandwidth_bucket(test: &str, io_engine: &str) {
    if let Some(reason) = kvm_unavailable() {
        return skip(test, Need::Kvm, &reason);
    }
    let kernel = testguest().unwrap_or_else(|e| panic!("{e}"));
    let mut vm = ApiVm::start(test, &["--no-acpi"]);
    let disk = vm.dir.join("disk.img");
    std::fs::write(&disk, vec![0u8; 32 << 20]).unwrap();
    vm.ok(
        "PUT",
        "/boot-source",
        &serde_json::json!({"kernel_image_path": kernel, "boot_args":
            "kite_test=virtio-blk kite_blk_mode=seq kite_blk_bs=65536 kite_virtio_wait=poll"})
        .to_string(),
    );
    // Overflowing values: 400, one line naming the field.
    vm.bad(
        "PUT",
        "/drives/data",
        Some(
            &serde_json::json!({"drive_id": "data", "path_on_host": disk, "is_root_device": false,
                "rate_limiter": {"bandwidth": {"size": u64::MAX, "refill_time": 100}}})
            .to_string(),
        ),
        "drives[data].rate_limiter.bandwidth: values overflow",
    );
    // 100 kB every 10 ms: 10 MB/s, with little to start from.
    vm.ok(
        "PUT",
        "/drives/data",
        &serde_json::json!({"drive_id": "data", "path_on_host": disk, "is_root_device": false,
            "is_read_only": true, "io_engine": io_engine,
            "rate_limiter": {"bandwidth": {"size": 100_000, "refill_time": 10}}})
        .to_string(),
    );
    vm.ok("PUT", "/actions", r#"{"action_type": "InstanceStart"}"#);
    let out = vm.wait_stdout(LIMIT, |out| {
        out.split("virtio-blk ok")
            .nth(1)
            .is_some_and(|rest| rest.contains('\n'))
    });
    let line = out.lines().find(|l| l.contains("virtio-blk ok")).unwrap();
    // The guest's TSC runs at the host's; the guest's own calibration (against the emulated
    // PIT) can be off under load, so the read time is the guest's cycles at the host's rate.
    let seconds = key(line, "read_cycles") as f64 / host_tsc_hz();
    let rate = key(line, "read_bytes") as f64 / seconds;
    eprintln!(
        "10 MB/s bandwidth bucket: the guest read {} bytes at {:.3} MB/s ({:+.1} %)",
        key(line, "read_bytes"),
        rate / 1e6,
        (rate / 1e7 - 1.0) * 100.0
    );
    assert!((rate / 1e7 - 1.0).abs() <= 0.05, "{line}");
    assert_eq!(vm.wait(LIMIT), Some(0), "{}", vm.stderr());
}

#[test]
fn an_ops_bucket_on_the_entropy_device_spaces_its_requests() {
    let test = "an_ops_bucket_on_the_entropy_device_spaces_its_requests";
    if let Some(reason) = kvm_unavailable() {
        return skip(test, Need::Kvm, &reason);
    }
    let kernel = testguest().unwrap_or_else(|e| panic!("{e}"));
    let mut vm = ApiVm::start(test, &["--no-acpi"]);
    vm.ok(
        "PUT",
        "/boot-source",
        &serde_json::json!({"kernel_image_path": kernel,
            "boot_args": "kite_test=virtio-rng kite_n=20480"})
        .to_string(),
    );
    vm.bad(
        "PUT",
        "/entropy",
        Some(r#"{"rate_limiter": {"ops": {"size": 1, "refill_time": 18446744073709551615}}}"#),
        "entropy.rate_limiter.ops: values overflow",
    );
    // 10 requests at once, then 10 a second: the guest's 20 requests of 1 KiB take ~1 s.
    vm.ok(
        "PUT",
        "/entropy",
        r#"{"rate_limiter": {"ops": {"size": 10, "refill_time": 1000}}}"#,
    );
    let start = std::time::Instant::now();
    vm.ok("PUT", "/actions", r#"{"action_type": "InstanceStart"}"#);
    assert_eq!(vm.wait(LIMIT), Some(0), "{}", vm.stderr());
    let took = start.elapsed();
    let out = vm.stdout();
    let line = out
        .lines()
        .find(|l| l.contains("virtio-rng ok"))
        .unwrap_or_else(|| panic!("{out}"));
    assert_eq!(key(line, "bytes"), 20480, "{line}");
    eprintln!("20 entropy requests under a 10-per-second ops bucket: {took:?}");
    assert!(
        took >= Duration::from_millis(900),
        "{took:?}: the bucket did not hold requests back"
    );
}
