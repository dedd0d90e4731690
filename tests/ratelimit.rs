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
    if io_uring_unavailable(test) {
        return;
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

/// A 10 MB/s bandwidth bucket on a network interface's transmit, then on its receive: the
/// test guest's UDP echoes through a tap (full 1514-byte frames, 32 in flight) move 10 MB/s
/// each way, within 5 %. The bucket counts frame bytes without the virtio-net header, as the
/// guest counts Ethernet bytes. A bucket must be slower than the echoes without one, or it
/// shows nothing: where they cannot reach 12.5 MB/s (a loaded machine here: 3 MB/s under a
/// load average of 20), the bucket is 1 MB/s, which is said.
#[test]
fn a_10_mb_per_s_bucket_on_a_network_interface() {
    let test = "a_10_mb_per_s_bucket_on_a_network_interface";
    if let Some(reason) = kvm_unavailable() {
        return skip(test, Need::Kvm, &reason);
    }
    let tap = "krl0";
    let ns = match Netns::with_tap("rl", tap) {
        Ok(ns) => ns,
        Err(reason) => return skip(test, Need::Tap, &reason),
    };
    let _ = ns.exec(&[
        "sysctl",
        "-qw",
        &format!("net.ipv6.conf.{tap}.disable_ipv6=1"),
    ]);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let echo = ns.udp_echo("10.0.2.2:7777", stop.clone());
    let kernel = testguest().unwrap_or_else(|e| panic!("{e}"));
    let dir = std::env::temp_dir().join(format!("kite-netrl-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let tsc_hz = host_tsc_hz();
    // One direction's bytes per second, with `limiter` (`tx_rate_limiter`/`rx_rate_limiter`)
    // set to `rate` bytes per second (a bucket of 100 ms of it, so that the guest's pauses
    // between windows lose no tokens), or none.
    let measure = |limiter: Option<(&str, u64)>, frames: u64| -> f64 {
        let mut iface = serde_json::json!({"iface_id": "eth0", "host_dev_name": tap,
            "guest_mac": "52:54:00:4b:49:54"});
        if let Some((which, rate)) = limiter {
            iface[which] =
                serde_json::json!({"bandwidth": {"size": rate / 10, "refill_time": 100}});
        }
        let config = serde_json::json!({
            "boot-source": {"kernel_image_path": kernel, "boot_args": format!(
                "kite_test=virtio-net kite_n={frames} kite_net_bytes=1472 kite_net_window=32 kite_virtio_wait=poll kite_net_ip=10.0.2.15 kite_net_peer=10.0.2.2 kite_net_port=7777")},
            "machine-config": {"vcpu_count": 1, "mem_size_mib": 256},
            "network-interfaces": [iface],
        });
        let path = dir.join("config.json");
        std::fs::write(&path, config.to_string()).unwrap();
        let cmd = ns.kite(&["run", "--no-acpi", "--config-file", path_str(&path)]);
        let r = Run::parse("virtio-net", run(cmd, LIMIT));
        r.expect_ok();
        assert_eq!(r.num("frames"), frames, "{}", r.result);
        // Sent and received, the same frames: half each way, timed at the host's TSC rate.
        let rate = r.num("bytes") as f64 / 2.0 / (r.num("cycles") as f64 / tsc_hz);
        eprintln!(
            "virtio-net, {}: {:.3} MB/s each way",
            limiter.map_or("no limiter", |l| l.0),
            rate / 1e6
        );
        rate
    };
    let free = measure(None, 4000);
    let bucket: u64 = if free >= 1.25e7 {
        10_000_000
    } else {
        1_000_000
    };
    assert!(
        free >= 1.25 * bucket as f64,
        "unlimited echoes ran at {:.2} MB/s: too slow to show any bucket",
        free / 1e6
    );
    if bucket < 10_000_000 {
        eprintln!(
            "unlimited echoes ran at {:.2} MB/s here: the bucket is 1 MB/s, not 10",
            free / 1e6
        );
    }
    // About 2 s of full frames each way at the bucket's rate.
    let frames = bucket * 2 / 1514;
    let mut rates = Vec::new();
    for which in ["tx_rate_limiter", "rx_rate_limiter"] {
        rates.push((which, measure(Some((which, bucket)), frames)));
    }
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let echoed = echo.join().unwrap().unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(echoed, 4000 + 2 * frames);
    let _ = std::fs::remove_dir_all(&dir);
    // The bucket starts full: its first 100 ms of bytes pass at once.
    let bytes = (frames * 1514) as f64;
    let expected = bucket as f64 * bytes / (bytes - bucket as f64 / 10.0);
    for (which, rate) in rates {
        assert!(
            (rate / expected - 1.0).abs() <= 0.05,
            "{which}: {:.3} MB/s under a {} MB/s bucket (expected {:.3} with its first 100 ms at once)",
            rate / 1e6,
            bucket / 1_000_000,
            expected / 1e6
        );
    }
}
