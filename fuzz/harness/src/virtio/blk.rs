//! Fuzz target `virtio_blk`: virtio-blk requests (any type, sector, direction and split into
//! descriptors, discard and write-zeroes segments) against a small disk image in tmpfs, through
//! the queue, as the guest's driver posts them.
//!
//! Input: [`Driver::run`]'s, with no operations of the device's own.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

use virtio_bindings::virtio_blk::{
    VIRTIO_BLK_T_DISCARD, VIRTIO_BLK_T_FLUSH, VIRTIO_BLK_T_GET_ID, VIRTIO_BLK_T_IN,
    VIRTIO_BLK_T_OUT, VIRTIO_BLK_T_WRITE_ZEROES, VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP,
};

use super::{Driver, Script, Seg, Setup};
use crate::Seed;
use crate::input::Input;
use kite_vmm::harness::Block;
use kite_vmm::harness::Disk;
use kite_vmm::harness::SharedDevice;

/// The disk: 128 sectors.
pub const DISK_SIZE: u64 = 64 << 10;

/// One device for each thread's runs, on an image in tmpfs (where a flush costs nothing); each
/// run resets it through the transport, as a guest driver does. Requests change the image's
/// bytes but nothing the device decides by.
pub fn device() -> SharedDevice {
    thread_local! {
        static DEVICE: Arc<Mutex<Block>> = new_device();
    }
    DEVICE.with(|d| d.clone())
}

fn new_device() -> Arc<Mutex<Block>> {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let dir = if std::path::Path::new("/dev/shm").is_dir() {
        std::path::PathBuf::from("/dev/shm")
    } else {
        std::env::temp_dir()
    };
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let path = dir.join(format!("kite-fuzz-blk-{}-{n}.img", std::process::id()));
    std::fs::File::create(&path)
        .and_then(|f| f.set_len(DISK_SIZE))
        .expect("disk image for the fuzz target");
    let disk = Disk::open(&path, false).expect("open the disk image");
    // The open descriptor is all the device needs.
    let _ = std::fs::remove_file(&path);
    Arc::new(Mutex::new(Block::new(disk)))
}

pub fn run(data: &[u8]) {
    let mut input = Input::new(data);
    let Some(mut driver) = Driver::new(device()) else {
        return;
    };
    driver.run(&mut input, 0, |_, _, _| {});
}

/// A request header: type, reserved, sector.
pub fn header(kind: u32, sector: u64) -> Vec<u8> {
    let mut h = Vec::with_capacity(16);
    h.extend_from_slice(&kind.to_le_bytes());
    h.extend_from_slice(&0u32.to_le_bytes());
    h.extend_from_slice(&sector.to_le_bytes());
    h
}

/// A discard / write-zeroes segment.
pub fn range(sector: u64, sectors: u32, flags: u32) -> Vec<u8> {
    let mut r = Vec::with_capacity(16);
    r.extend_from_slice(&sector.to_le_bytes());
    r.extend_from_slice(&sectors.to_le_bytes());
    r.extend_from_slice(&flags.to_le_bytes());
    r
}

pub fn seeds() -> Vec<Seed> {
    let setup = Setup::all(1, 16, false);
    let status = Seg::w(1);
    let mut seeds = Vec::new();
    let mut seed = |name, build: &dyn Fn(&mut Script)| {
        let mut s = Script::new(&setup);
        build(&mut s);
        seeds.push(Seed {
            name,
            data: s.finish(),
        });
    };
    seed("read", &|s| {
        s.chain(
            0,
            &[
                Seg::r(&header(VIRTIO_BLK_T_IN, 4)),
                Seg::w(1024),
                status.clone(),
            ],
            false,
            true,
        );
    });
    seed("write-then-read-split", &|s| {
        let data: Vec<u8> = (0..512u32).map(|i| i as u8).collect();
        s.chain(
            0,
            &[
                Seg::r(&header(VIRTIO_BLK_T_OUT, 127)),
                Seg::r(&data),
                status.clone(),
            ],
            false,
            false,
        )
        .chain(
            0,
            &[
                Seg::r(&header(VIRTIO_BLK_T_IN, 126)[..8]),
                Seg::r(&header(VIRTIO_BLK_T_IN, 126)[8..]),
                Seg::w(700),
                Seg::w(324),
                status.clone(),
            ],
            true,
            true,
        );
    });
    seed("flush-get-id", &|s| {
        s.chain(
            0,
            &[Seg::r(&header(VIRTIO_BLK_T_FLUSH, 0)), status.clone()],
            false,
            false,
        )
        .chain(
            0,
            &[
                Seg::r(&header(VIRTIO_BLK_T_GET_ID, 0)),
                Seg::w(20),
                status.clone(),
            ],
            false,
            false,
        )
        .notify(0);
    });
    seed("discard-write-zeroes", &|s| {
        let mut ranges = range(0, 8, 0);
        ranges.extend(range(64, 64, 0));
        s.chain(
            0,
            &[
                Seg::r(&header(VIRTIO_BLK_T_DISCARD, 0)),
                Seg::r(&ranges),
                status.clone(),
            ],
            false,
            true,
        )
        .chain(
            0,
            &[
                Seg::r(&header(VIRTIO_BLK_T_WRITE_ZEROES, 0)),
                Seg::r(&range(8, 16, VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP)),
                status.clone(),
            ],
            false,
            true,
        );
    });
    seed("past-the-end-and-no-status", &|s| {
        s.chain(
            0,
            &[
                Seg::r(&header(VIRTIO_BLK_T_IN, 128)),
                Seg::w(512),
                status.clone(),
            ],
            false,
            true,
        )
        .chain(
            0,
            &[Seg::r(&header(VIRTIO_BLK_T_IN, 0)), Seg::w(0)],
            false,
            true,
        )
        .reset()
        .chain(0, &[Seg::r(&header(99, 0)), status.clone()], false, true);
    });
    let setup = Setup::all(1, 8, true);
    let mut s = Script::new(&setup);
    for sector in 0..12 {
        s.chain(
            0,
            &[
                Seg::r(&header(VIRTIO_BLK_T_IN, sector)),
                Seg::w(512),
                Seg::w(1),
            ],
            false,
            sector % 2 == 1,
        );
        s.used_event(0, sector as u16);
    }
    seeds.push(Seed {
        name: "event-idx-ring-wraps",
        data: s.finish(),
    });
    seeds
}
