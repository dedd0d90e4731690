//! A distro kernel finds every vCPU through Kite's ACPI tables: Debian 12's own cloud kernel
//! (fetched by guest-images/debian-kernel.sh) has `CONFIG_X86_MPPARSE` off, so Kite's MP table
//! means nothing to it, and only the ACPI tables (RSDP, XSDT, FADT, MADT, DSDT) can tell it
//! there are two CPUs. The same kernel with `--no-acpi` finds no RSDP, which shows it is the
//! tables that make the difference.
//!
//! Only the kernel's early log is read: where the host's KVM emulates guest ring 0 the kernel
//! prints its table list and `smpboot: Allowing 2 CPUs` about half a minute in (with
//! `earlyprintk`; README.md, "Hosts whose KVM emulates guest ring 0") and can never reach user space, so the test stops the VM
//! as soon as it has seen those lines. The two VMs run at the same time.

mod common;

use std::cell::RefCell;
use std::time::{Duration, Instant};

use common::*;

/// How long the kernel may take to print the lines, whatever the host.
const LIMIT: Duration = Duration::from_secs(180);
const CMDLINE: &str = "console=ttyS0 earlyprintk=ttyS0 reboot=k panic=1";
const IMAGE: &str = "debian-cloud-vmlinux";

/// The tables the kernel must list, each with Kite's OEM id, then the CPU count.
const ACPI_LINES: &[&str] = &[
    "ACPI: RSDP 0x00000000000E0000 ",
    "ACPI: XSDT 0x",
    "ACPI: FACP 0x",
    "ACPI: APIC 0x",
    "ACPI: DSDT 0x",
    "smpboot: Allowing 2 CPUs",
];
const NO_RSDP: &str = "A valid RSDP was not found";
const NOT_LISTED: &str = "not listed by BIOS";
/// What the kernel says when something in the tables is wrong.
const PROBLEMS: &[&str] = &[
    "ACPI Error",
    "ACPI BIOS Error",
    "ACPI Warning",
    "ACPI BIOS Warning",
    "ACPI: Unable to",
];

/// One boot, stopped once every wanted line was seen (or at the limit).
struct Boot {
    label: &'static str,
    /// For each wanted text: when (seconds after start) and on which console line it appeared.
    seen: Vec<(&'static str, Option<(f64, String)>)>,
    out: String,
    err: String,
    exit: Option<i32>,
}

impl Boot {
    fn line(&self, want: &str) -> Option<&str> {
        self.seen
            .iter()
            .find(|(w, _)| *w == want)
            .and_then(|(_, s)| s.as_ref())
            .map(|(_, l)| l.as_str())
    }

    fn context(&self) -> String {
        format!(
            "--- {} console ---\n{}\n--- {} kite ---\n{}",
            self.label, self.out, self.label, self.err
        )
    }

    fn report(&self) {
        for (want, seen) in &self.seen {
            match seen {
                Some((secs, line)) => {
                    eprintln!("distro_kernel [{}] {secs:6.1} s  {line}", self.label)
                }
                None => eprintln!("distro_kernel [{}]   never  {want:?}", self.label),
            }
        }
        eprintln!(
            "distro_kernel [{}] kite exit code after the stop: {:?}",
            self.label, self.exit
        );
    }
}

/// The console's complete lines (a line still being printed is left for the next look: a
/// check on half a line fails for nothing), without the serial port's carriage returns.
fn console_lines(out: &str) -> impl Iterator<Item = &str> {
    out.split_inclusive('\n')
        .filter(|l| l.ends_with('\n'))
        .map(|l| l.trim_end_matches(['\n', '\r']))
}

/// Boots `kernel` (with `extra` arguments) and watches the console until every text in `wanted`
/// has appeared on some line, kite exits or `LIMIT` passes; then stops the VM.
fn boot(label: &'static str, kernel: &str, extra: &[&str], wanted: &[&'static str]) -> Boot {
    let mut cmd = kite();
    cmd.args(["run", "--kernel", kernel, "--memory", "512M", "--cpus", "2"])
        .args(["--cmdline", CMDLINE])
        .args(extra);
    let start = Instant::now();
    let mut g = Guest::start(cmd);
    let seen = RefCell::new(wanted.iter().map(|w| (*w, None)).collect::<Vec<_>>());
    g.wait_for(LIMIT, |out| {
        let secs = start.elapsed().as_secs_f64();
        let mut seen = seen.borrow_mut();
        for (want, at) in seen.iter_mut().filter(|(_, at)| at.is_none()) {
            if let Some(line) = console_lines(out).find(|l| l.contains(*want)) {
                *at = Some((secs, line.to_string()));
            }
        }
        seen.iter().all(|(_, at)| at.is_some())
    });
    let exit = g.stop(Duration::from_secs(10));
    Boot {
        label,
        seen: seen.into_inner(),
        out: g.out(),
        err: g.err(),
        exit,
    }
}

#[test]
fn debian_cloud_kernel_finds_every_vcpu_through_acpi() {
    let test = "debian_cloud_kernel_finds_every_vcpu_through_acpi";
    if let Some(reason) = kvm_unavailable() {
        return skip(test, Need::Kvm, &reason);
    }
    let Some(image) = guest_image(IMAGE) else {
        return skip(
            test,
            Need::DistroKernel,
            &format!("guest-images/out has no {IMAGE}; run guest-images/debian-kernel.sh"),
        );
    };
    let kernel = path_str(&image);

    // Both at once, one core each: the second vCPU only starts after the lines we wait for.
    let (acpi, no_acpi) = std::thread::scope(|s| {
        let acpi = s.spawn(|| boot("acpi", kernel, &[], ACPI_LINES));
        let no_acpi = s.spawn(|| {
            boot(
                "no-acpi",
                kernel,
                &["--no-acpi"],
                &[NO_RSDP, "smpboot: Allowing"],
            )
        });
        (acpi.join().unwrap(), no_acpi.join().unwrap())
    });
    acpi.report();
    no_acpi.report();

    // Every ACPI line the kernel printed (and where it looked for CPUs), and any complaint
    // about the tables.
    for run in [&acpi, &no_acpi] {
        eprintln!("distro_kernel [{}] ACPI lines on the console:", run.label);
        for line in console_lines(&run.out).filter(|l| l.contains("ACPI") || l.contains(NOT_LISTED))
        {
            eprintln!("    {line}");
        }
    }
    let problems: Vec<&str> = console_lines(&acpi.out)
        .filter(|l| PROBLEMS.iter().any(|p| l.contains(p)))
        .collect();
    for line in &problems {
        eprintln!("distro_kernel [acpi] PROBLEM: {line}");
    }
    let kite_log: Vec<&str> = acpi.err.lines().collect();
    eprintln!(
        "distro_kernel [acpi] kite's log:\n    {}",
        kite_log.join("\n    ")
    );

    let missing: Vec<&str> = acpi
        .seen
        .iter()
        .filter(|(_, s)| s.is_none())
        .map(|(w, _)| *w)
        .collect();
    assert!(
        missing.is_empty(),
        "with ACPI, the kernel did not print {missing:?} within {LIMIT:?}\n{}",
        acpi.context()
    );
    for want in &ACPI_LINES[..5] {
        let line = acpi.line(want).unwrap_or_default();
        assert!(
            line.contains("KITE"),
            "the table line has no KITE OEM id: {line:?}\n{}",
            acpi.context()
        );
    }
    for bad in [NO_RSDP, NOT_LISTED] {
        assert!(
            !acpi.out.contains(bad),
            "with ACPI, the kernel printed {bad:?}\n{}",
            acpi.context()
        );
    }
    assert!(
        problems.is_empty(),
        "the kernel complained about Kite's tables: {problems:#?}\n{}",
        acpi.context()
    );

    assert!(
        no_acpi.line(NO_RSDP).is_some(),
        "with --no-acpi, the kernel did not print {NO_RSDP:?} within {LIMIT:?}\n{}",
        no_acpi.context()
    );
}
