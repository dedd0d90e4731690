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

#[test]
fn a_10_mb_per_s_bucket_gives_the_guest_10_mb_per_s() {
    let test = "a_10_mb_per_s_bucket_gives_the_guest_10_mb_per_s";
    if let Some(reason) = kvm_unavailable() {
        return skip(test, &reason);
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
            "is_read_only": true,
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
    let rate = key(line, "read_bytes_per_sec") as f64;
    eprintln!(
        "10 MB/s bandwidth bucket: the guest read {} bytes at {:.3} MB/s ({:+.1} %)",
        key(line, "read_bytes"),
        rate / 1e6,
        (rate / 1e7 - 1.0) * 100.0
    );
    assert!((rate / 1e7 - 1.0).abs() <= 0.05, "{line}");
    assert_eq!(vm.wait(LIMIT), Some(0), "{}", vm.stderr());
}
