//! Micro-benchmarks of start-up work that grows with the VM's shape, in process and without KVM.
//!
//! - `acpi/write_2cpu_4dev` and `acpi/write_254cpu_19dev`: building every ACPI table (RSDP,
//!   XSDT, FADT, MADT, DSDT) and writing them into guest memory, as `Vmm::new` does before the
//!   vCPUs are configured; the second is the largest machine the CLI allows.
//!
//! `cargo bench -p kite-vmm --bench startup`; under `cargo test` each benchmark runs once, as a smoke test.

use std::hint::black_box;
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use kite_vmm::arch::x86_64::acpi::{self, VirtioWindow};
use kite_vmm::arch::x86_64::layout;

fn windows(n: u32) -> Vec<VirtioWindow> {
    (0..n)
        .map(|i| VirtioWindow {
            addr: layout::VIRTIO_MMIO_START + u64::from(i) * layout::VIRTIO_MMIO_SIZE,
            irq: layout::FIRST_DEVICE_IRQ + i,
        })
        .collect()
}

fn acpi_tables(c: &mut Criterion) {
    let mem = kite_vmm::memory::create(16 << 20).expect("guest memory");
    for (name, cpus, devices) in [
        ("acpi/write_2cpu_4dev", 2u8, 4u32),
        ("acpi/write_254cpu_19dev", 254, 19),
    ] {
        let w = windows(devices);
        c.bench_function(name, |b| {
            b.iter(|| acpi::write(&mem, black_box(cpus), black_box(&w), true).expect("tables fit"))
        });
    }
}

fn config() -> Criterion {
    Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
}

criterion_group! {
    name = benches;
    config = config();
    targets = acpi_tables
}
criterion_main!(benches);
