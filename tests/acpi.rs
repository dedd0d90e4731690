//! The ACPI tables as a real ACPI tool reads them: Kite's DSDT decompiles with ACPICA's
//! `iasl -d` without errors and names each device with its resources (the VM generation ID
//! and its event device too). A kernel that cannot read ACPI tables gets none, without
//! `--no-acpi`.

mod common;

use std::process::Command;

use common::*;
use kite_vmm::arch::x86_64::acpi::{self, VirtioWindow};

#[test]
fn dsdt_decompiles_and_names_every_device() {
    let test = "dsdt_decompiles_and_names_every_device";
    let windows = [
        VirtioWindow {
            addr: 0xd000_1000,
            irq: 5,
        },
        VirtioWindow {
            addr: 0xd000_2000,
            irq: 6,
        },
    ];
    let tables = acpi::build(2, &windows, true).unwrap();
    let (_, dsdt) = tables
        .blobs
        .iter()
        .find(|(_, b)| b.starts_with(b"DSDT"))
        .expect("a DSDT");
    let dir = std::env::temp_dir().join(format!("kite-dsdt-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let aml = dir.join("dsdt.aml");
    std::fs::write(&aml, dsdt).unwrap();
    let out = match Command::new("iasl").arg("-d").arg(&aml).output() {
        Ok(out) => out,
        Err(e) => {
            return skip(
                test,
                Need::Tools,
                &format!("iasl (acpica-tools) is not available: {e}"),
            );
        }
    };
    let log = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "iasl -d failed:\n{log}");
    assert!(!log.contains("Error"), "{log}");
    let dsl = std::fs::read_to_string(dir.join("dsdt.dsl")).expect("iasl wrote dsdt.dsl");
    // Comments dropped and whitespace collapsed, so the checks do not depend on iasl's layout.
    let flat = flatten(&dsl);
    for want in [
        "Name (\\_S5, Package (0x02) { 0x05, 0x05 })",
        "Device (COM1) { Name (_HID, EisaId (\"PNP0501\") )",
        "IO (Decode16, 0x03F8, 0x03F8, 0x01, 0x08, )",
        "Interrupt (ResourceConsumer, Edge, ActiveHigh, Exclusive, ,, ) { 0x00000004, }",
        "Device (V000) { Name (_HID, \"LNRO0005\")",
        "Memory32Fixed (ReadWrite, 0xD0001000, 0x00001000, )",
        "Interrupt (ResourceConsumer, Edge, ActiveHigh, Exclusive, ,, ) { 0x00000005, }",
        "Device (V001) { Name (_HID, \"LNRO0005\")",
        "Memory32Fixed (ReadWrite, 0xD0002000, 0x00001000, )",
        "Interrupt (ResourceConsumer, Edge, ActiveHigh, Exclusive, ,, ) { 0x00000006, }",
        // The VM generation ID, as Linux's vmgenid driver finds it, and the event device
        // whose interrupt notifies it.
        "Device (\\_SB.VGEN) { Name (_HID, \"KITEVGID\") Name (_CID, \"VM_GEN_COUNTER\") Name (_DDN, \"VM_GEN_COUNTER\") Name (ADDR, Package (0x02) { 0x000EF000, Zero }) }",
        "Device (\\_SB.GED) { Name (_HID, \"ACPI0013\"",
        "Interrupt (ResourceConsumer, Edge, ActiveHigh, Exclusive, ,, ) { 0x00000003, }",
        "Method (_EVT, 1, NotSerialized) { If ((Arg0 == 0x03)) { Notify (\\_SB.VGEN, 0x80)",
    ] {
        assert!(
            flat.contains(want),
            "{want:?} not in the decompiled DSDT:\n{dsl}"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// `dsl` without `//` and `/* */` comments, on one line, with single spaces.
fn flatten(dsl: &str) -> String {
    let mut text = String::new();
    let mut rest = dsl;
    while let Some(at) = rest.find("/*") {
        text.push_str(&rest[..at]);
        rest = rest[at..].split_once("*/").map_or("", |(_, after)| after);
    }
    text.push_str(rest);
    text.lines()
        .map(|l| l.split("//").next().unwrap_or(""))
        .flat_map(str::split_whitespace)
        .collect::<Vec<_>>()
        .join(" ")
}

/// A kernel that cannot read ACPI tables (the test guest: its symbol table names nothing
/// ACPI) finds its virtio devices with Kite's defaults, without `--no-acpi`: Kite names them on
/// its command line and writes no tables. The guest-images Linux (`acpi_init` and the rest in
/// its symbols) keeps its tables.
#[test]
fn a_kernel_without_acpi_finds_its_devices_without_no_acpi() {
    const TEST: &str = "a_kernel_without_acpi_finds_its_devices_without_no_acpi";
    if let Some(reason) = kvm_unavailable() {
        return skip(TEST, Need::Kvm, &reason);
    }
    let elf = testguest().unwrap_or_else(|e| panic!("{e}"));
    let lacks = |path: &std::path::Path| {
        let mut file = std::fs::File::open(path).unwrap();
        kite_vmm::arch::x86_64::elf_acpi::lacks_acpi(&mut file)
    };
    assert!(lacks(&elf));
    if let Some(vmlinux) = guest_image("vmlinux") {
        assert!(!lacks(&vmlinux));
    }
    let mut cmd = kite();
    cmd.args([
        "run",
        "--kernel",
        path_str(&elf),
        "--memory",
        "256M",
        "--cmdline",
        "kite_test=virtio-rng kite_virtio_wait=irq",
    ]);
    let out = run(cmd, std::time::Duration::from_secs(120));
    assert!(
        out.stderr
            .contains("the kernel's symbol table names nothing ACPI"),
        "{}",
        out.stderr
    );
    let r = Run::parse("virtio-rng", out);
    r.expect_ok();
    assert_eq!(r.num("bytes"), 4096, "{}", r.result);
}
