//! Micro-benchmarks of Kite's virtio code paths that run for every guest request, in process and
//! without KVM: the bench plays the guest driver in a `GuestMemoryMmap` with kite-virtio-driver,
//! as the unit tests' `testutil.rs` does.
//!
//! - `queue/pop_complete`: pop one descriptor chain off the available ring, walk and check it,
//!   put it on the used ring and signal the interrupt eventfd (`Active::drain_queue`; the queue
//!   crate signals every completion unless EVENT_IDX is negotiated).
//! - `blk/*`: a whole virtio-blk request through `Block::process_queue`: GET_ID (parsing and
//!   answering, no disk I/O) and a 4 KiB read from a page-cached image file.
//! - `mmio/*`: the register file (`MmioTransport` as a bus device) and the MMIO bus dispatch in
//!   front of it, as a vCPU thread runs them on every register access of the guest.
//!
//! `cargo bench -p kite-vmm --bench virtio`; under `cargo test` each benchmark runs once, as a smoke test.

use std::hint::black_box;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use kite_virtio_driver::{Buf, Layout, write_chain};
use kite_vmm::bus::{Bus, BusDevice};
use kite_vmm::harness::{
    Active, Block, Completion, Disk, GuestRam, Interrupt, LogLimiter, MmioTransport, VirtioDevice,
};
use kite_vmm::memory::GuestMem;
use virtio_bindings::virtio_blk::{VIRTIO_BLK_T_GET_ID, VIRTIO_BLK_T_IN};
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress};
use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};
use vmm_sys_util::tempfile::TempFile;

const QUEUE_SIZE: u16 = 256;
/// The features a driver accepts: virtio 1.x only.
const VERSION_1: u64 = 1 << virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
const DESC: u64 = 0x1_0000;
const AVAIL: u64 = 0x2_0000;
const USED: u64 = 0x3_0000;
const HEADER: u64 = 0x10_0000;
const DATA: u64 = 0x11_0000;
const STATUS: u64 = 0x12_0000;

/// Guest memory with one split queue's rings and a request's buffers, and the driver's side of
/// the queue.
struct Driver {
    mem: GuestMem,
    ring: kite_virtio_driver::Queue,
}

impl Driver {
    fn new() -> Driver {
        let mem = kite_vmm::memory::create(4 << 20).expect("guest memory");
        let layout = Layout {
            size: QUEUE_SIZE,
            desc: DESC,
            avail: AVAIL,
            used: USED,
        };
        let ring = kite_virtio_driver::Queue::new(layout, false);
        Driver { mem, ring }
    }

    /// A queue set up on the rings, as the transport hands it to a device at DRIVER_OK.
    fn queue(&self) -> Queue {
        let mut q = Queue::new(QUEUE_SIZE).expect("queue size");
        q.try_set_desc_table_address(GuestAddress(DESC))
            .expect("descriptor table");
        q.try_set_avail_ring_address(GuestAddress(AVAIL))
            .expect("available ring");
        q.try_set_used_ring_address(GuestAddress(USED))
            .expect("used ring");
        q.set_ready(true);
        q
    }

    /// Write a chain of `bufs` into descriptor slots 0.. .
    fn write_chain(&self, bufs: &[Buf]) {
        write_chain(&mut GuestRam(&self.mem), DESC, bufs, |i| i as u16);
    }

    /// Put the chain at descriptor 0 on the available ring (again).
    fn post(&mut self) {
        self.ring.publish(&mut GuestRam(&self.mem), 0);
    }
}

fn eventfd() -> EventFd {
    EventFd::new(EFD_NONBLOCK).expect("eventfd")
}

/// A block request's chain: 16-byte header, `data` device-writable bytes, the status byte.
fn blk_request(driver: &Driver, kind: u32, sector: u64, data: u32) {
    let mut header = [0u8; 16];
    header[..4].copy_from_slice(&kind.to_le_bytes());
    header[8..].copy_from_slice(&sector.to_le_bytes());
    driver
        .mem
        .write_slice(&header, GuestAddress(HEADER))
        .expect("header");
    driver.write_chain(&[Buf::r(HEADER, 16), Buf::w(DATA, data), Buf::w(STATUS, 1)]);
}

/// A raw image of `size` bytes, opened as Kite opens a disk.
fn disk(size: u64) -> (TempFile, Disk) {
    let file = TempFile::new().expect("temporary image");
    file.as_file().set_len(size).expect("image size");
    let disk = Disk::open(file.as_path(), false).expect("open image");
    (file, disk)
}

fn queue(c: &mut Criterion) {
    let mut driver = Driver::new();
    driver.write_chain(&[Buf::r(HEADER, 16), Buf::w(DATA, 4096), Buf::w(STATUS, 1)]);
    let irq = eventfd();
    let mut active = Active::new(
        driver.mem.clone(),
        vec![driver.queue()],
        Interrupt::new(irq.try_clone().expect("eventfd clone")),
        VERSION_1,
    );
    let mut log = LogLimiter::new();
    c.bench_function("queue/pop_complete", |b| {
        b.iter(|| {
            driver.post();
            active.drain_queue(0, "bench", &mut log, |_, chain| {
                Completion::Used(u32::from(black_box(chain.head())))
            })
        })
    });
    // The interrupt counter was written once per chain.
    assert!(
        irq.read().is_ok_and(|n| n > 0),
        "no interrupt was signalled"
    );
}

fn blk(c: &mut Criterion) {
    for (name, kind, data) in [
        ("blk/get_id", VIRTIO_BLK_T_GET_ID, 20),
        ("blk/read_4k", VIRTIO_BLK_T_IN, 4096),
    ] {
        let mut driver = Driver::new();
        blk_request(&driver, kind, 8, data);
        let (_file, image) = disk(1 << 20);
        let mut block = Block::new(image);
        block.activate(Active::new(
            driver.mem.clone(),
            vec![driver.queue()],
            Interrupt::new(eventfd()),
            VERSION_1,
        ));
        c.bench_function(name, |b| {
            b.iter(|| {
                driver.post();
                block.process_queue(0)
            })
        });
        let status: u8 = driver
            .mem
            .read_obj(GuestAddress(STATUS))
            .expect("status byte");
        assert_eq!(status, 0, "{name}: the request did not succeed");
    }
}

fn mmio(c: &mut Criterion) {
    let driver = Driver::new();
    let (_file, image) = disk(1 << 20);
    let device: Arc<Mutex<dyn VirtioDevice>> = Arc::new(Mutex::new(Block::new(image)));
    let mut transport = MmioTransport::new(
        device,
        driver.mem.clone(),
        Interrupt::new(eventfd()),
        vec![eventfd()],
    )
    .expect("transport");
    let mut data = [0u8; 4];
    c.bench_function("mmio/read_status", |b| {
        b.iter(|| {
            transport.read(black_box(0x70), &mut data);
            data
        })
    });
    c.bench_function("mmio/read_config", |b| {
        b.iter(|| {
            transport.read(black_box(0x100), &mut data);
            data
        })
    });
    c.bench_function("mmio/write_interrupt_ack", |b| {
        b.iter(|| transport.write(black_box(0x64), &0u32.to_le_bytes()))
    });

    // The bus in front: eight devices, as many as a VM with several disks and NICs has.
    let mut bus = Bus::new();
    let mut files = Vec::new();
    for i in 0..8u64 {
        let (file, image) = disk(1 << 20);
        files.push(file);
        let device: Arc<Mutex<dyn VirtioDevice>> = Arc::new(Mutex::new(Block::new(image)));
        let t = MmioTransport::new(
            device,
            driver.mem.clone(),
            Interrupt::new(eventfd()),
            vec![eventfd()],
        )
        .expect("transport");
        bus.insert(Arc::new(Mutex::new(t)), 0xd000_1000 + i * 0x1000, 0x1000)
            .expect("bus slot");
    }
    let addr = 0xd000_1000 + 5 * 0x1000 + 0x70;
    c.bench_function("mmio/bus_read_status", |b| {
        b.iter(|| {
            bus.read(black_box(addr), &mut data);
            data
        })
    });
}

fn config() -> Criterion {
    // Short runs: these are nanosecond-scale paths, and the whole suite should take well under a
    // minute. `cargo bench -p kite-vmm -- --measurement-time 10` asks for more.
    Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
}

criterion_group! {
    name = benches;
    config = config();
    targets = queue, blk, mmio
}
criterion_main!(benches);
