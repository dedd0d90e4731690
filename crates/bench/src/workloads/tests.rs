use super::*;

fn sample(line_text: &str, wall_ms: f64) -> Sample {
    let Some(TestLine::Ok { values, .. }) = line::parse(line_text) else {
        panic!("{line_text}")
    };
    Sample {
        line: line_text.into(),
        numbers: line::numbers(&values),
        values,
        wall_ms,
        line_ms: wall_ms - 1.0,
        exec_ms: Some(1.5),
        timeline: RunTimeline::default(),
        cost: None,
    }
}

/// The context of a test guest run with no devices (also for scale.rs's tests).
pub(crate) fn ctx() -> Ctx<'static> {
    Ctx {
        exe: Path::new("kite"),
        guest: Some(Path::new("guest.elf")),
        linux: None,
        disk: None,
        net: None,
        vsock: None,
        tsc_hz: 2e9,
        seccomp: true,
    }
}

#[test]
fn vsock_runs_the_echo_in_each_wait_mode_and_times_it() {
    assert_eq!(
        from_name("virtio-vsock"),
        [
            Workload::VsockIrq,
            Workload::VsockEventIdx,
            Workload::VsockPoll
        ]
    );
    let c = cmdline(Workload::VsockEventIdx);
    for word in [
        "kite_test=virtio-vsock",
        "kite_vsock_bytes=4194304",
        "kite_virtio_wait=irq",
        "kite_virtio_event_idx=1",
    ] {
        assert!(c.split(' ').any(|w| w == word), "{word} in {c}");
    }
    assert!(cmdline(Workload::VsockPoll).contains("kite_virtio_wait=poll"));
    let dir = std::env::temp_dir().join(format!("kite-bench-wl-vsock-{}", std::process::id()));
    let setup = VsockSetup::create(&dir).unwrap();
    let with_vsock = Ctx {
        vsock: Some(&setup),
        ..ctx()
    };
    let cmd = guest_command(&with_vsock, Workload::VsockIrq, GUEST_MEMORY, None);
    let args: Vec<_> = cmd.get_args().map(|a| a.to_string_lossy()).collect();
    let at = args.iter().position(|a| a == "--vsock").unwrap();
    assert_eq!(
        args[at + 1],
        format!("cid=3,socket={}", setup.socket.display())
    );
    drop(setup);
    let _ = std::fs::remove_dir_all(&dir);
    // 8e8 cycles at 2 GHz = 400 ms; an echo cut short is no figure.
    let whole = [sample(
        "KITE-TEST virtio-vsock ok bytes=4194304 echoed=4194304 cycles=800000000",
        1.0,
    )];
    let rows = rows(&ctx(), Workload::VsockPoll, &[], &whole);
    assert_eq!(rows[0].name, "virtio-vsock poll: 4 MiB echoed");
    assert_eq!(rows[0].guest, [400.0]);
    let short = [sample(
        "KITE-TEST virtio-vsock ok bytes=4194304 echoed=4096 cycles=800000000",
        1.0,
    )];
    let rows = super::rows(&ctx(), Workload::VsockPoll, &[], &short);
    assert!(matches!(rows[0].status, Status::Failed(_)));
}

#[test]
fn names_select_workloads() {
    for w in ALL {
        assert!(from_name(w.name()).contains(&w));
    }
    assert_eq!(
        from_name("virtio-blk"),
        [Workload::BlkRand, Workload::BlkSeq]
    );
    assert!(from_name("nope").is_empty());
    assert_eq!(names().len(), 13);
    assert_eq!(from_name("snapshot"), [Workload::Snapshot]);
    assert_eq!(from_name("concurrent"), [Workload::Concurrent]);
    assert_eq!(from_name("linux-boot"), [Workload::LinuxBoot]);
}

#[test]
fn linux_boot_is_guest_only_without_the_test_guest_and_three_runs() {
    let w = Workload::LinuxBoot;
    assert_eq!((w.name(), w.label()), ("linux-boot", "linux-boot"));
    assert_eq!(w.sides(), [Side::Guest]);
    assert!(!w.needs_test_guest() && w.needs_linux());
    assert_eq!(w.default_runs(), 3);
    assert_eq!(w.limit(), Duration::from_secs(180));
    assert!(Workload::Startup.needs_test_guest() && !Workload::Startup.needs_linux());
    assert_eq!(Workload::Startup.default_runs(), 5);
    // Without its images it fails rather than boot something else.
    assert!(matches!(
        run_once(&ctx(), w, Side::Guest),
        Outcome::Failed(_)
    ));
}

#[test]
fn the_guest_gets_the_net_settings_the_host_side_uses() {
    let cmd = command(&ctx(), Workload::VirtioNet, Side::Guest);
    let args: Vec<String> = cmd
        .get_args()
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    let at = args.iter().position(|a| a == "--cmdline").unwrap();
    let cmdline = &args[at + 1];
    for word in [
        "kite_test=virtio-net".to_string(),
        format!("kite_n={NET_FRAMES}"),
        "kite_net_window=1".to_string(),
        format!("kite_net_bytes={NET_BYTES}"),
        format!("kite_net_peer={}", net::PEER_IP),
    ] {
        assert!(cmdline.split(' ').any(|w| w == word), "{word} in {cmdline}");
    }
}

#[test]
fn cpu_rows_compare_cycles_and_wall_time() {
    let host = [sample(
        "KITE-TEST cpu ok cycles=400000000 checksum=0xab",
        200.0,
    )];
    let guest = [sample(
        "KITE-TEST cpu ok cycles=500000000 checksum=0xab",
        300.0,
    )];
    let rows = rows(&ctx(), Workload::Cpu, &host, &guest);
    assert_eq!(rows.len(), 2);
    assert_eq!(rows[0].host, [400.0]);
    assert!((rows[0].ratio().unwrap().median - 1.25).abs() < 1e-12);
    assert_eq!(rows[1].unit, "ms");
    assert!((rows[1].ratio().unwrap().median - 1.5).abs() < 1e-12);
}

#[test]
fn a_checksum_mismatch_is_an_error() {
    let host = [sample("KITE-TEST cpu ok cycles=4 checksum=0xab", 1.0)];
    let guest = [sample("KITE-TEST cpu ok cycles=5 checksum=0xac", 1.0)];
    let rows = rows(&ctx(), Workload::Cpu, &host, &guest);
    assert!(matches!(&rows[0].status, Status::Failed(m) if m.contains("checksums differ")));
}

#[test]
fn rtt_rows_convert_cycles_with_the_tsc_frequency() {
    let guest = [
        sample("KITE-TEST pio-rtt ok cycles_per_rtt=50000 n=20000", 600.0),
        sample("KITE-TEST pio-rtt ok cycles_per_rtt=70000 n=20000", 700.0),
    ];
    let rows = rows(&ctx(), Workload::PioRtt, &[], &guest);
    assert_eq!(rows[0].guest, [50000.0, 70000.0]);
    assert_eq!(rows[1].guest, [25000.0, 35000.0]);
    assert_eq!(rows[1].unit, "ns");
    assert!(rows[0].host.is_empty() && rows[0].ratio().is_none());
}

#[test]
fn net_rows_are_round_trips_on_both_sides() {
    let host = [sample(
        "KITE-TEST virtio-net ok frames=1000 cycles=20000000 window=1",
        1.0,
    )];
    let guest = [sample(
        "KITE-TEST virtio-net ok frames=1000 frames_per_sec=5 bytes=212000 cycles=400000000 \
         window=1 mac=52:54:00:4b:49:54 tsc_hz=2000000000",
        1.0,
    )];
    let rows = rows(&ctx(), Workload::VirtioNet, &host, &guest);
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].unit, "µs");
    // 2e7 cycles / 1000 frames at 2 GHz = 10 µs.
    assert_eq!(rows[0].host, [10.0]);
    assert_eq!(rows[0].guest, [200.0]);
    let rows = super::rows(
        &ctx(),
        Workload::VirtioNet,
        &host,
        &[sample("KITE-TEST virtio-net ok", 1.0)],
    );
    assert!(matches!(rows[0].status, Status::Failed(_)));
}

#[test]
fn blk_rows_are_times_per_request_on_both_sides() {
    let host = [sample(
        "KITE-TEST virtio-blk ok mode=rand bs=4096 depth=1 ops=100 write_cycles=2000000 \
         flush_cycles=4000000 read_cycles=1000000",
        1.0,
    )];
    let guest = [sample(
        "KITE-TEST virtio-blk ok mode=rand bs=4096 depth=1 ops=100 readonly=0 \
         write_cycles=8000000 write_iops=5 flush_cycles=6000000 read_cycles=4000000 \
         tsc_hz=2000000000 tsc_src=pit",
        1.0,
    )];
    let rows = rows(&ctx(), Workload::BlkRand, &host, &guest);
    assert_eq!(rows.len(), 3);
    assert_eq!(rows[0].name, "virtio-blk 4k-rand: write, one request");
    // 2e6 cycles / 100 requests at 2 GHz = 10 µs.
    assert_eq!(rows[0].host, [10.0]);
    assert_eq!(rows[0].guest, [40.0]);
    assert_eq!(rows[1].guest, [20.0]);
    assert_eq!(rows[2].unit, "ms");
    assert_eq!(rows[2].host, [2.0]);
    assert!((rows[2].ratio().unwrap().median - 1.5).abs() < 1e-12);
    let bad = [sample("KITE-TEST virtio-blk ok mode=rand", 1.0)];
    let rows = super::rows(&ctx(), Workload::BlkSeq, &bad, &bad);
    assert!(matches!(rows[0].status, Status::Failed(_)));
    assert_eq!(rows[0].workload, "virtio-blk 1m-seq");
}

#[test]
fn guest_command_boots_the_scenario_with_a_timeline() {
    let c = ctx();
    let cmd = command(&c, Workload::MmioRtt, Side::Guest);
    let args: Vec<_> = cmd.get_args().map(|a| a.to_string_lossy()).collect();
    assert_eq!(args[0], "run");
    assert!(args.iter().any(|a| a == "--timeline"));
    assert!(args.iter().any(|a| a == "kite_test=mmio-rtt kite_n=20000"));
    let cmd = command(&c, Workload::Cpu, Side::Host);
    let args: Vec<_> = cmd.get_args().map(|a| a.to_string_lossy()).collect();
    assert_eq!(args, ["workload", "cpu"]);
    let c = Ctx {
        disk: Some(Path::new("/tmp/d.img")),
        ..ctx()
    };
    let cmd = command(&c, Workload::BlkSeq, Side::Guest);
    let args: Vec<_> = cmd.get_args().map(|a| a.to_string_lossy()).collect();
    assert!(
        args.windows(2)
            .any(|p| p[0] == "--disk" && p[1] == "/tmp/d.img")
    );
    assert!(args.iter().any(|a| a
        == "kite_test=virtio-blk kite_blk_mode=seq kite_blk_bs=1048576 kite_blk_depth=1 kite_n=64"));
    let cmd = command(&c, Workload::BlkRand, Side::Host);
    let args: Vec<_> = cmd.get_args().map(|a| a.to_string_lossy()).collect();
    assert_eq!(
        args,
        [
            "workload",
            "virtio-blk",
            "--disk",
            "/tmp/d.img",
            "--blk-mode",
            "rand",
            "--blk-bs",
            "4096",
            "--n",
            "4096"
        ]
    );
}
