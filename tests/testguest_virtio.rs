//! The test guest's virtio scenarios under Kite: its own virtio-mmio driver against Kite's
//! devices. virtio-blk writes a pattern the host then finds byte for byte in the image
//! (`kite_workloads::disk_pattern_fill`, the same code the guest runs); a readonly disk refuses
//! the write, stays as it was and reads back with the checksum the host computes; virtio-rng
//! gives varying bytes; virtio-net resolves and talks to a UDP echo server on the host side of a
//! tap in a network namespace the test makes; virtio-vsock connects to a Unix-socket echo server
//! on `<socket>_<port>`. Every run has a time limit; what the machine does not allow (KVM,
//! network namespaces) is skipped with a one-line reason.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::*;

const LIMIT: Duration = Duration::from_secs(60);

/// A zero-filled image of `bytes` in the test's temporary directory.
fn image(test: &str, bytes: usize) -> std::path::PathBuf {
    temp_file(test, "disk.img", &vec![0u8; bytes])
}

fn disk_arg(path: &Path, readonly: bool) -> String {
    if readonly {
        format!("{},readonly", path_str(path))
    } else {
        path_str(path).to_string()
    }
}

/// Where `data` (the image from sector `first`) differs from the pattern for `seed`.
fn pattern_mismatch(seed: u64, first: u64, data: &[u8]) -> Option<String> {
    kite_workloads::disk_pattern_check(seed, first, data).map(|off| {
        format!(
            "image differs from the pattern (seed {seed}) at byte {} (sector {})",
            off as u64 + first * 512,
            first + off as u64 / 512
        )
    })
}

#[test]
fn virtio_blk_pattern_reaches_the_image() {
    const TEST: &str = "virtio_blk_pattern_reaches_the_image";
    let img = image(TEST, 8 << 20);
    let disk = disk_arg(&img, false);
    let Some(r) = scenario(TEST, "virtio-blk", &["--disk", &disk], "kite_seed=5") else {
        return;
    };
    r.expect_ok();
    assert_eq!(r.num("sectors"), 16384, "{}", r.result);
    assert_eq!(r.get("flushed"), "1", "{}", r.result);
    assert_eq!(r.get("wait"), "irq", "{}", r.result);
    assert!(
        r.num("irqs") > 0,
        "irq mode took no interrupt: {}",
        r.result
    );
    for key in ["write_cycles", "read_cycles"] {
        assert!(r.num(key) > 0, "{}", r.result);
    }
    if r.num("tsc_hz") > 0 {
        assert!(r.num("write_bytes_per_sec") > 0, "{}", r.result);
        assert!(r.num("read_bytes_per_sec") > 0, "{}", r.result);
    }
    let data = std::fs::read(&img).unwrap();
    assert_eq!(data.len(), 8 << 20);
    if let Some(e) = pattern_mismatch(5, 0, &data) {
        panic!("{e}");
    }
}

#[test]
fn virtio_blk_polled_on_part_of_the_disk() {
    const TEST: &str = "virtio_blk_polled_on_part_of_the_disk";
    let img = image(TEST, 8 << 20);
    let disk = disk_arg(&img, false);
    let words =
        "kite_seed=77 kite_blk_mib=3 kite_virtio_wait=poll kite_blk_req=12K kite_blk_depth=7";
    let Some(r) = scenario(TEST, "virtio-blk", &["--disk", &disk], words) else {
        return;
    };
    r.expect_ok();
    assert_eq!(r.num("sectors"), 3 * 2048, "{}", r.result);
    assert_eq!(r.get("wait"), "poll", "{}", r.result);
    assert_eq!(r.num("irqs"), 0, "{}", r.result);
    assert_eq!(r.num("req_bytes"), 12 << 10, "{}", r.result);
    let data = std::fs::read(&img).unwrap();
    let (written, rest) = data.split_at(3 << 20);
    if let Some(e) = pattern_mismatch(77, 0, written) {
        panic!("{e}");
    }
    assert!(
        rest.iter().all(|&b| b == 0),
        "the guest wrote past kite_blk_mib=3"
    );
}

#[test]
fn virtio_blk_readonly_refuses_writes() {
    const TEST: &str = "virtio_blk_readonly_refuses_writes";
    // Content the guest's write (the pattern for its seed) would change.
    let mut content = vec![0u8; 4 << 20];
    kite_workloads::disk_pattern_fill(42, 0, &mut content);
    let img = temp_file(TEST, "ro.img", &content);
    let disk = disk_arg(&img, true);
    let Some(r) = scenario(TEST, "virtio-blk", &["--disk", &disk], "kite_seed=1") else {
        return;
    };
    r.expect_ok();
    assert_eq!(r.get("readonly"), "1", "{}", r.result);
    assert_eq!(r.num("write_status"), 1, "VIRTIO_BLK_S_IOERR: {}", r.result);
    assert_eq!(r.num("sectors"), 8192, "{}", r.result);
    let host_sum = format!("{:#018x}", kite_workloads::disk_checksum(0, &content));
    assert_eq!(
        r.get("read_sum"),
        host_sum,
        "what the guest read is not the image"
    );
    assert!(
        std::fs::read(&img).unwrap() == content,
        "the readonly image changed"
    );
}

#[test]
fn virtio_blk_throughput_modes() {
    const TEST: &str = "virtio_blk_throughput_modes";
    let img = image(TEST, 8 << 20);
    let disk = disk_arg(&img, false);
    for (mode, words, bs, ops) in [
        ("seq", "kite_blk_mode=seq", 1 << 20, 8),
        ("rand", "kite_blk_mode=rand kite_n=300", 4096, 300),
        (
            "rand",
            "kite_blk_mode=rand kite_blk_bs=64K kite_blk_depth=1",
            65536,
            128,
        ),
    ] {
        let Some(r) = scenario(TEST, "virtio-blk", &["--disk", &disk], words) else {
            return;
        };
        r.expect_ok();
        assert_eq!(r.get("mode"), mode, "{}", r.result);
        assert_eq!(r.num("bs"), bs, "{}", r.result);
        assert_eq!(r.num("ops"), ops, "{}", r.result);
        assert_eq!(r.num("write_bytes"), ops * bs, "{}", r.result);
        assert_eq!(r.num("read_bytes"), ops * bs, "{}", r.result);
        for key in [
            "write_cycles",
            "read_cycles",
            "depth",
            "write_bytes_per_sec",
            "read_bytes_per_sec",
            "write_iops",
            "read_iops",
            "tsc_hz",
            "flush_cycles",
        ] {
            let _ = r.num(key);
        }
    }
}

#[test]
fn virtio_blk_without_a_disk_fails_cleanly() {
    const TEST: &str = "virtio_blk_without_a_disk_fails_cleanly";
    let Some(r) = scenario(TEST, "virtio-blk", &[], "") else {
        return;
    };
    assert!(
        r.result
            .starts_with("FAIL no virtio-mmio device with DeviceID 2"),
        "{}",
        r.result
    );
}

#[test]
fn virtio_rng_gives_varying_bytes() {
    const TEST: &str = "virtio_rng_gives_varying_bytes";
    for (wait, irqs_expected) in [("irq", true), ("poll", false)] {
        let words = format!("kite_virtio_wait={wait}");
        let Some(r) = scenario(TEST, "virtio-rng", &[], &words) else {
            return;
        };
        r.expect_ok();
        assert_eq!(r.num("bytes"), 4096, "{}", r.result);
        assert!(r.num("requests") >= 4, "{}", r.result);
        assert_eq!(r.get("wait"), wait, "{}", r.result);
        assert_eq!(r.num("irqs") > 0, irqs_expected, "{}", r.result);
    }
}

#[test]
fn virtio_rng_absent_with_no_rng() {
    const TEST: &str = "virtio_rng_absent_with_no_rng";
    let Some(r) = scenario(TEST, "virtio-rng", &["--no-rng"], "") else {
        return;
    };
    assert!(
        r.result
            .starts_with("FAIL no virtio-mmio device with DeviceID 4"),
        "{}",
        r.result
    );
}

#[test]
fn virtio_net_echoes_udp_through_a_tap() {
    const TEST: &str = "virtio_net_echoes_udp_through_a_tap";
    if let Some(reason) = kvm_unavailable() {
        return skip(TEST, Need::Kvm, &reason);
    }
    let tap = "ktap0";
    let ns = match Netns::with_tap("net", tap) {
        Ok(ns) => ns,
        Err(reason) => return skip(TEST, Need::Tap, &reason),
    };
    // Fewer unrelated frames (router solicitations and the like) on the link.
    let _ = ns.exec(&[
        "sysctl",
        "-qw",
        &format!("net.ipv6.conf.{tap}.disable_ipv6=1"),
    ]);
    let tap_mac = ns
        .exec(&["cat", &format!("/sys/class/net/{tap}/address")])
        .unwrap()
        .trim()
        .to_string();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let echo = ns.udp_echo("10.0.2.2:7777", stop.clone());

    let elf = testguest().unwrap_or_else(|e| panic!("{e}"));
    let guest_mac = "52:54:00:4b:49:54";
    let net = format!("tap={tap},mac={guest_mac}");
    let frames = 300;
    let mut runs = Vec::new();
    // Interrupts and polling, then interrupts with VIRTIO_RING_F_EVENT_IDX negotiated.
    let modes = [("irq", "0"), ("poll", "0"), ("irq", "1")];
    for (wait, event_idx) in modes {
        let cmdline = format!(
            "kite_test=virtio-net kite_n={frames} kite_virtio_wait={wait} kite_virtio_event_idx={event_idx} kite_net_ip=10.0.2.15 kite_net_peer=10.0.2.2 kite_net_port=7777"
        );
        let cmd = ns.kite(&[
            "run",
            "--kernel",
            path_str(&elf),
            "--no-acpi",
            "--memory",
            "256M",
            "--no-rng",
            "--net",
            &net,
            "--cmdline",
            &cmdline,
        ]);
        let r = Run::parse("virtio-net", run(cmd, LIMIT));
        r.expect_ok();
        assert_eq!(r.num("frames"), frames, "{}", r.result);
        assert_eq!(r.get("mac"), guest_mac, "{}", r.result);
        assert_eq!(r.get("peer_mac"), tap_mac, "{}", r.result);
        assert_eq!(r.get("wait"), wait, "{}", r.result);
        assert_eq!(r.get("event_idx"), event_idx, "{}", r.result);
        assert!(r.num("bytes") > 0 && r.num("cycles") > 0, "{}", r.result);
        runs.push(r);
    }
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let echoed = echo.join().unwrap().unwrap_or_else(|e| panic!("{e}"));
    let all = modes.len() as u64 * frames;
    assert_eq!(
        echoed,
        all,
        "the host echoed {echoed} datagrams for {} runs of {frames}",
        modes.len()
    );
}

/// A Unix-socket echo server at `path`: serves connections one after another, echoing every
/// byte until the client closes, until `stop` is set. The thread returns the bytes echoed.
fn unix_echo(
    path: &Path,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> std::thread::JoinHandle<Result<u64, String>> {
    use std::io::{Read, Write};
    use std::sync::atomic::Ordering;
    let listener = std::os::unix::net::UnixListener::bind(path)
        .unwrap_or_else(|e| panic!("cannot listen at {}: {e}", path.display()));
    listener.set_nonblocking(true).unwrap();
    std::thread::spawn(move || {
        let mut echoed = 0u64;
        while !stop.load(Ordering::SeqCst) {
            let mut conn = match listener.accept() {
                Ok((conn, _)) => conn,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    std::thread::sleep(Duration::from_millis(10));
                    continue;
                }
                Err(e) => return Err(format!("accept: {e}")),
            };
            conn.set_nonblocking(false).map_err(|e| e.to_string())?;
            conn.set_read_timeout(Some(Duration::from_millis(100)))
                .map_err(|e| e.to_string())?;
            let mut buf = [0u8; 65536];
            loop {
                match conn.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => {
                        conn.write_all(&buf[..n])
                            .map_err(|e| format!("echo write: {e}"))?;
                        echoed += n as u64;
                    }
                    Err(e)
                        if e.kind() == std::io::ErrorKind::WouldBlock
                            || e.kind() == std::io::ErrorKind::TimedOut =>
                    {
                        if stop.load(Ordering::SeqCst) {
                            break;
                        }
                    }
                    Err(e) => return Err(format!("echo read: {e}")),
                }
            }
        }
        Ok(echoed)
    })
}

#[test]
fn virtio_vsock_echoes_through_a_unix_socket() {
    const TEST: &str = "virtio_vsock_echoes_through_a_unix_socket";
    if let Some(reason) = kvm_unavailable() {
        return skip(TEST, Need::Kvm, &reason);
    }
    let elf = testguest().unwrap_or_else(|e| panic!("{e}"));
    let dir = temp_file(TEST, "placeholder", b"");
    let socket = dir.with_file_name("v.sock");
    let port = 5201;
    let listen = PathBuf::from(format!("{}_{port}", path_str(&socket)));
    let _ = std::fs::remove_file(&listen);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let echo = unix_echo(&listen, stop.clone());
    let vsock = format!("cid=7,socket={}", path_str(&socket));
    let mut total = 0;
    // Interrupts and polling, then interrupts with VIRTIO_RING_F_EVENT_IDX negotiated.
    let modes = [
        ("irq", 300_000u64, 4096, "0", 3),
        ("poll", 100_000, 1000, "0", 3),
        ("irq", 300_000, 4096, "1", 4),
    ];
    for (wait, bytes, chunk, event_idx, seed) in modes {
        let cmdline = format!(
            "kite_test=virtio-vsock kite_vsock_port={port} kite_vsock_bytes={bytes} kite_vsock_chunk={chunk} kite_virtio_wait={wait} kite_virtio_event_idx={event_idx} kite_seed={seed}"
        );
        let mut cmd = kite();
        cmd.args([
            "run",
            "--kernel",
            path_str(&elf),
            "--no-acpi",
            "--memory",
            "256M",
            "--no-rng",
            "--vsock",
            &vsock,
            "--cmdline",
            &cmdline,
        ]);
        let r = Run::parse("virtio-vsock", run(cmd, LIMIT));
        r.expect_ok();
        assert_eq!(r.num("bytes"), bytes, "{}", r.result);
        assert_eq!(r.num("echoed"), bytes, "{}", r.result);
        assert_eq!(r.num("guest_cid"), 7, "{}", r.result);
        assert_eq!(r.get("wait"), wait, "{}", r.result);
        assert_eq!(r.get("event_idx"), event_idx, "{}", r.result);
        total += bytes;
    }
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let echoed = echo.join().unwrap().unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(echoed, total, "bytes the host echoed");
}

// With `kite_virtio_event_idx=1` the guest's driver negotiates VIRTIO_RING_F_EVENT_IDX: it asks
// for an interrupt (used_event) only for the completion it waits for and notifies only when the
// device's avail_event asks for it. Each device must still complete every request.
// (virtio-net and virtio-vsock run it as one more mode of their tests above.)

#[test]
fn virtio_blk_pattern_with_event_idx() {
    const TEST: &str = "virtio_blk_pattern_with_event_idx";
    let img = image(TEST, 8 << 20);
    let disk = disk_arg(&img, false);
    let words = "kite_seed=11 kite_virtio_wait=irq kite_virtio_event_idx=1";
    let Some(r) = scenario(TEST, "virtio-blk", &["--disk", &disk], words) else {
        return;
    };
    r.expect_ok();
    assert_eq!(r.get("event_idx"), "1", "{}", r.result);
    assert_eq!(r.get("wait"), "irq", "{}", r.result);
    assert_eq!(r.num("sectors"), 16384, "{}", r.result);
    assert_eq!(r.get("flushed"), "1", "{}", r.result);
    // 32 writes and 32 reads of 256 KiB and a flush: at most one interrupt per request.
    assert!(r.num("irqs") <= 65, "{}", r.result);
    let data = std::fs::read(&img).unwrap();
    assert_eq!(data.len(), 8 << 20);
    if let Some(e) = pattern_mismatch(11, 0, &data) {
        panic!("{e}");
    }
}

#[test]
fn virtio_rng_with_event_idx() {
    const TEST: &str = "virtio_rng_with_event_idx";
    for wait in ["irq", "poll"] {
        let words = format!("kite_n=16384 kite_virtio_wait={wait} kite_virtio_event_idx=1");
        let Some(r) = scenario(TEST, "virtio-rng", &[], &words) else {
            return;
        };
        r.expect_ok();
        assert_eq!(r.get("event_idx"), "1", "{}", r.result);
        assert_eq!(r.get("wait"), wait, "{}", r.result);
        assert_eq!(r.num("bytes"), 16384, "{}", r.result);
        // One request at a time: at most one interrupt each (none when polling).
        assert!(r.num("irqs") <= r.num("requests"), "{}", r.result);
        if wait == "poll" {
            assert_eq!(r.num("irqs"), 0, "{}", r.result);
        }
    }
}

// ---- The io_uring engine (`--disk PATH,io=uring`, `io_engine: "Async"`).

/// `--disk` for an io_uring disk at `img`, or `None` (the test skips, saying why) where this
/// host refuses io_uring.
fn uring_disk(test: &str, img: &Path) -> Option<String> {
    if io_uring_unavailable(test) {
        return None;
    }
    Some(format!("{},io=uring", path_str(img)))
}

#[test]
fn virtio_blk_pattern_on_an_io_uring_disk() {
    const TEST: &str = "virtio_blk_pattern_on_an_io_uring_disk";
    let img = image(TEST, 8 << 20);
    let Some(disk) = uring_disk(TEST, &img) else {
        return;
    };
    let Some(r) = scenario(TEST, "virtio-blk", &["--disk", &disk], "kite_seed=23") else {
        return;
    };
    r.expect_ok();
    assert_eq!(r.num("sectors"), 16384, "{}", r.result);
    assert_eq!(r.get("flushed"), "1", "{}", r.result);
    assert_eq!(r.get("wait"), "irq", "{}", r.result);
    let data = std::fs::read(&img).unwrap();
    assert_eq!(data.len(), 8 << 20);
    if let Some(e) = pattern_mismatch(23, 0, &data) {
        panic!("{e}");
    }
}

/// 32 requests on the queue at once, completed in whatever order the kernel finishes them,
/// with EVENT_IDX, on part of the disk: the pattern lands where it should and nowhere else.
#[test]
fn virtio_blk_io_uring_depth_32_with_event_idx() {
    const TEST: &str = "virtio_blk_io_uring_depth_32_with_event_idx";
    let img = image(TEST, 8 << 20);
    let Some(disk) = uring_disk(TEST, &img) else {
        return;
    };
    let words = "kite_seed=31 kite_blk_mib=6 kite_blk_req=12K kite_blk_depth=32 \
                 kite_virtio_wait=irq kite_virtio_event_idx=1";
    let Some(r) = scenario(TEST, "virtio-blk", &["--disk", &disk], words) else {
        return;
    };
    r.expect_ok();
    assert_eq!(r.get("event_idx"), "1", "{}", r.result);
    assert_eq!(r.num("depth"), 32, "{}", r.result);
    assert_eq!(r.num("sectors"), 6 * 2048, "{}", r.result);
    assert_eq!(r.get("flushed"), "1", "{}", r.result);
    let data = std::fs::read(&img).unwrap();
    let (written, rest) = data.split_at(6 << 20);
    if let Some(e) = pattern_mismatch(31, 0, written) {
        panic!("{e}");
    }
    assert!(
        rest.iter().all(|&b| b == 0),
        "the guest wrote past kite_blk_mib=6"
    );
}
