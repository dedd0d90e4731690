//! Every test-guest scenario under Kite: the `ok` line and sane figures. Each run has a time
//! limit; a guest exception fails the test with the vector and RIP the guest printed.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::*;

/// Run scenario `name` on `cpus` vCPUs and return its key=value figures, failing with the whole
/// output if the guest did not report `ok`.
fn scenario(name: &str, cpus: &str, extra_cmdline: &str) -> Option<HashMap<String, String>> {
    let run = common::scenario(
        &format!("testguest {name}"),
        name,
        &["--cpus", cpus],
        extra_cmdline,
    )?;
    run.expect_ok();
    Some(run.figures)
}

fn num(figures: &HashMap<String, String>, key: &str) -> f64 {
    figures
        .get(key)
        .unwrap_or_else(|| panic!("missing {key} in {figures:?}"))
        .parse()
        .unwrap_or_else(|_| panic!("{key} is not a number in {figures:?}"))
}

#[test]
fn hello_sees_command_line_and_ram() {
    let Some(f) = scenario("hello", "1", "kite.extra=yes") else {
        return;
    };
    let mib = num(&f, "ram_mib");
    assert!(
        (250.0..=256.0).contains(&mib),
        "e820 RAM {mib} MiB for --memory 256M"
    );
    assert!(
        f["cmdline"].contains("kite_test=hello") && f["cmdline"].contains("kite.extra=yes"),
        "{f:?}"
    );
}

/// RAM around the 3-4 GiB hole and above 4 GiB: the guest maps GiB 0 in ring 0 and the rest
/// from ring 3 (16 GiB took ~60 ms of emulated ring 0 otherwise); `hello` reads every GiB of
/// every RAM range, so a page missing from its map is a fault, not a pass.
#[test]
fn hello_reaches_every_gib_of_ram_above_4g() {
    let test = "hello_reaches_every_gib_of_ram_above_4g";
    if let Some(reason) = kvm_unavailable() {
        return skip(test, Need::Kvm, &reason);
    }
    let elf = testguest().unwrap_or_else(|e| panic!("{e}"));
    let mut cmd = kite();
    cmd.args(["run", "--no-acpi", "--memory", "6G", "--kernel"])
        .arg(&elf)
        .args(["--cmdline", "kite_test=hello"]);
    let run = Run::parse("hello", run(cmd, Duration::from_secs(120)));
    run.expect_ok();
    let mib = run.num("ram_mib");
    assert!((6100..=6144).contains(&mib), "e820 RAM {mib} MiB for 6G");
    // Below the hole: GiB 0, 1, 2 plus last bytes; above: GiB 4, 5, 6 plus the last byte.
    assert!(run.num("ram_probes") >= 8, "{:?}", run.figures);
}

#[test]
fn pio_and_mmio_round_trips() {
    for name in ["pio-rtt", "mmio-rtt"] {
        let Some(f) = scenario(name, "1", "kite_n=2000") else {
            return;
        };
        assert_eq!(num(&f, "n"), 2000.0, "{f:?}");
        assert!(num(&f, "cycles_per_rtt") > 0.0, "{f:?}");
    }
}

#[test]
fn cpu_checksum_matches_the_host_build() {
    let Some(f) = scenario("cpu", "1", "") else {
        return;
    };
    assert!(num(&f, "cycles") > 0.0);
    let host = format!("{:#018x}", kite_workloads::cpu_workload());
    assert_eq!(f["checksum"], host, "guest and host ran the same workload");
}

#[test]
fn mem_bandwidth() {
    let Some(f) = scenario("mem", "1", "") else {
        return;
    };
    assert!(
        num(&f, "bytes") >= kite_workloads::MEM_BUF_BYTES as f64,
        "{f:?}"
    );
    assert!(
        num(&f, "cycles") > 0.0 && num(&f, "bytes_per_cycle") > 0.0,
        "{f:?}"
    );
}

#[test]
fn smp_starts_every_cpu() {
    // 64: more than the 37 the MP table had room for when it lived in the EBDA.
    for cpus in ["1", "2", "4", "64"] {
        let Some(f) = scenario("smp", cpus, "") else {
            return;
        };
        assert_eq!(f["cpus"], cpus, "{f:?}");
        assert_eq!(f["expected"], cpus, "{f:?}");
    }
}

#[test]
fn irq_through_the_ioapic() {
    let Some(f) = scenario("irq", "1", "") else {
        return;
    };
    assert!(num(&f, "irqs") > 0.0, "{f:?}");
}

#[test]
fn console_input_reaches_the_guest() {
    if kvm_unavailable().is_some() {
        return skip(
            "console_input_reaches_the_guest",
            Need::Kvm,
            "no usable /dev/kvm",
        );
    }
    let elf = testguest().unwrap_or_else(|e| panic!("{e}"));
    let mut cmd = kite();
    cmd.args([
        "run",
        "--kernel",
        path_str(&elf),
        "--no-acpi",
        "--memory",
        "64M",
        "--cmdline",
        "kite_test=echo",
    ]);
    // More than the UART's 64-byte FIFO, so Kite must hold input back until the guest reads.
    let text = "typed on the host ".repeat(8);
    let out = run_with_input(
        cmd,
        Some(format!("{text}\n").into_bytes()),
        Duration::from_secs(60),
    );
    let want = format!("KITE-TEST echo ok text={}", text.replace(' ', "+"));
    assert!(out.stdout.contains(&want), "{}\n{}", out.stdout, out.stderr);
    assert_eq!(out.code, Some(0), "{}", out.stderr);
}

#[test]
fn unknown_scenario_fails_cleanly() {
    if kvm_unavailable().is_some() {
        return skip(
            "unknown_scenario_fails_cleanly",
            Need::Kvm,
            "no usable /dev/kvm",
        );
    }
    let elf = testguest().unwrap_or_else(|e| panic!("{e}"));
    let mut cmd = kite();
    cmd.args([
        "run",
        "--kernel",
        path_str(&elf),
        "--no-acpi",
        "--memory",
        "64M",
        "--cmdline",
        "kite_test=nope",
    ]);
    let out = run(cmd, Duration::from_secs(60));
    assert!(
        out.stdout.contains("KITE-TEST nope FAIL unknown scenario"),
        "{}",
        out.stdout
    );
}

#[test]
fn guest_exceptions_report_vector_and_rip() {
    if kvm_unavailable().is_some() {
        return skip(
            "guest_exceptions_report_vector_and_rip",
            Need::Kvm,
            "no usable /dev/kvm",
        );
    }
    let elf = testguest().unwrap_or_else(|e| panic!("{e}"));
    for (kind, vector) in [("ud", 6), ("gp", 13), ("pf", 14)] {
        let mut cmd = kite();
        let cmdline = format!("kite_test=fault kite_fault={kind}");
        cmd.args([
            "run",
            "--kernel",
            path_str(&elf),
            "--no-acpi",
            "--memory",
            "64M",
            "--cmdline",
            &cmdline,
        ]);
        let out = run(cmd, Duration::from_secs(60));
        let line = out
            .stdout
            .lines()
            .find(|l| l.starts_with("KITE-TEST fault"))
            .unwrap_or_default();
        assert!(
            line.contains("FAIL exception")
                && line.contains(&format!("vector={vector} "))
                && line.contains("rip=0x"),
            "{kind}: {line}\n{}",
            out.stdout
        );
        assert_eq!(
            out.code,
            Some(0),
            "the guest still ends the VM by reset: {}",
            out.stderr
        );
    }
}

/// `int3` and `fwait` in guest ring 0, the two instructions an emulated-ring-0 host's KVM
/// cannot run: the guest's own #BP handler must see one trap from CS 0x08 with RIP just past
/// the 0xCC, and execution must go on after `fwait`. Where the host emulates ring 0 Kite
/// completes both and says so at exit; on a hardware host the CPU runs them and Kite says
/// nothing.
#[test]
fn ring0_int3_and_fwait() {
    let Some(run) = common::scenario("testguest ring0-insns", "ring0-insns", &["--cpus", "1"], "")
    else {
        return;
    };
    run.expect_ok();
    let hex = |key: &str| {
        let v = run.get(key);
        u64::from_str_radix(v.trim_start_matches("0x"), 16)
            .unwrap_or_else(|_| panic!("{key}={v} is not hex in: {}", run.result))
    };
    assert_eq!(run.num("bp_runs"), 1, "{}", run.result);
    assert_eq!(hex("bp_rip"), hex("int3_at") + 1, "{}", run.result);
    assert_eq!(run.get("bp_cs"), "0x8", "{}", run.result);
    assert_eq!(run.get("fwait"), "1", "{}", run.result);

    let stderr = &run.out.stderr;
    if host_emulates_ring0() {
        assert!(
            stderr.contains("completed 2 instructions the host's KVM could not: int3 1, fwait 1"),
            "Kite completes exactly the guest's int3 and fwait on this host\n{stderr}"
        );
    } else {
        assert!(
            !stderr.contains("the host's KVM could not"),
            "a hardware KVM runs int3 and fwait itself\n{stderr}"
        );
    }
}
