use std::os::unix::fs::FileExt;
use std::sync::{Arc, Mutex};

use virtio_bindings::virtio_blk::{VIRTIO_BLK_S_IOERR, VIRTIO_BLK_S_UNSUPP};
use virtio_bindings::virtio_mmio::{VIRTIO_MMIO_INT_CONFIG, VIRTIO_MMIO_INT_VRING};
use virtio_bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use vmm_sys_util::tempfile::TempFile;

use super::*;
use crate::devices::virtio::testutil::{Desc, Guest, MEM_SIZE};

pub(super) const OK: u8 = VIRTIO_BLK_S_OK as u8;
pub(super) const IOERR: u8 = VIRTIO_BLK_S_IOERR as u8;
const UNSUPP: u8 = VIRTIO_BLK_S_UNSUPP as u8;
pub(super) const SECTORS: u64 = 64;
/// Queue size the tests' driver uses.
const QSIZE: u16 = 16;
const NEXT: u16 = VRING_DESC_F_NEXT as u16;
const WRITE: u16 = VRING_DESC_F_WRITE as u16;

/// An image whose sector `i` is filled with the byte `i`.
pub(super) fn image() -> TempFile {
    let f = TempFile::new().unwrap();
    for i in 0..SECTORS {
        f.as_file()
            .write_all_at(&[i as u8; 512], i * SECTOR_SIZE)
            .unwrap();
    }
    f
}

pub(super) fn sector(f: &TempFile, i: u64) -> Vec<u8> {
    let mut buf = vec![0u8; 512];
    f.as_file()
        .read_exact_at(&mut buf, i * SECTOR_SIZE)
        .unwrap();
    buf
}

fn whole(f: &TempFile) -> Vec<u8> {
    std::fs::read(f.as_path()).unwrap()
}

pub(super) fn attach(f: &TempFile, readonly: bool) -> (Guest, Arc<Mutex<Block>>) {
    let disk = Disk::open(f.as_path(), readonly).unwrap();
    let block = Arc::new(Mutex::new(Block::new(disk)));
    let mut g = Guest::new(block.clone());
    g.start(QSIZE);
    (g, block)
}

pub(super) fn header(g: &mut Guest, kind: u32, sector: u64) -> u64 {
    let mut h = [0u8; 16];
    h[0..4].copy_from_slice(&kind.to_le_bytes());
    h[8..16].copy_from_slice(&sector.to_le_bytes());
    g.buf(&h)
}

/// Post `descs`, ring the doorbell, and return the byte at `status` and the used length.
pub(super) fn run(g: &mut Guest, descs: &[Desc], status: u64) -> (u8, u32) {
    let before = g.used_idx(0);
    let head = g.push(0, descs);
    g.kick(0);
    assert_eq!(
        g.used_idx(0),
        before.wrapping_add(1),
        "request not completed"
    );
    let (id, len) = g.used(0, before);
    assert_eq!(id, u32::from(head));
    (g.bytes(status, 1)[0], len)
}

/// A request of `kind` at `sector` with one data buffer `data` (if any).
pub(super) fn request(g: &mut Guest, kind: u32, sector: u64, data: Option<Desc>) -> (u8, u32) {
    let h = header(g, kind, sector);
    let s = g.alloc(1);
    g.mem.write_obj(0xffu8, vm_memory::GuestAddress(s)).unwrap();
    let mut descs = vec![Desc::r(h, 16)];
    descs.extend(data);
    descs.push(Desc::w(s, 1));
    run(g, &descs, s)
}

fn range(g: &mut Guest, segments: &[(u64, u32, u32)]) -> Desc {
    let mut raw = Vec::new();
    for &(sector, count, flags) in segments {
        raw.extend_from_slice(&sector.to_le_bytes());
        raw.extend_from_slice(&count.to_le_bytes());
        raw.extend_from_slice(&flags.to_le_bytes());
    }
    let addr = g.buf(&raw);
    Desc::r(addr, raw.len() as u32)
}

/// The device gave up on the queue: DEVICE_NEEDS_RESET, a config interrupt, nothing used.
fn assert_needs_reset(g: &mut Guest, used_before: u16) {
    assert!(g.needs_reset(), "device should need a reset");
    assert_ne!(g.read(0x60) & VIRTIO_MMIO_INT_CONFIG, 0);
    assert!(g.irq_fired());
    assert_eq!(
        g.used_idx(0),
        used_before,
        "nothing may be put on the used ring"
    );
}

#[test]
fn config_space_describes_the_disk() {
    let f = image();
    let (mut g, _) = attach(&f, false);
    let capacity = u64::from(g.read(0x100)) | u64::from(g.read(0x104)) << 32;
    assert_eq!(capacity, SECTORS);
    assert_eq!(g.read(0x108), SIZE_MAX);
    assert_eq!(g.read(0x10c), SEG_MAX);
    let features = g.device_features();
    for bit in [
        VIRTIO_BLK_F_FLUSH,
        VIRTIO_BLK_F_SEG_MAX,
        VIRTIO_BLK_F_SIZE_MAX,
        32,
    ] {
        assert_ne!(features & (1 << bit), 0, "feature {bit}");
    }
    assert_eq!(features & (1 << VIRTIO_BLK_F_RO), 0);
}

#[test]
fn read_returns_the_image_data() {
    let f = image();
    let (mut g, _) = attach(&f, false);
    let data = g.alloc(1024);
    let (status, len) = request(&mut g, VIRTIO_BLK_T_IN, 3, Some(Desc::w(data, 1024)));
    assert_eq!(status, OK);
    assert_eq!(len, 1025);
    assert_eq!(g.bytes(data, 1024), [sector(&f, 3), sector(&f, 4)].concat());
    assert!(g.irq_fired());
    assert_eq!(g.read(0x60), VIRTIO_MMIO_INT_VRING);
}

#[test]
fn one_request_over_many_buffers_reads_and_writes_in_order_and_marks_pages_dirty() {
    let f = image();
    let (mut g, _) = attach(&f, false);
    // Three data buffers of 512, 1024 and 512 bytes, apart in guest memory: one preadv.
    let bufs = [g.alloc(8192), g.alloc(8192), g.alloc(8192)];
    let lens = [512u32, 1024, 512];
    crate::memory::take_dirty(None, &g.mem).unwrap();
    let h = header(&mut g, VIRTIO_BLK_T_IN, 10);
    let s = g.alloc(1);
    let mut descs = vec![Desc::r(h, 16)];
    descs.extend(bufs.iter().zip(lens).map(|(&b, l)| Desc::w(b, l)));
    descs.push(Desc::w(s, 1));
    assert_eq!(run(&mut g, &descs, s), (OK, 2049));
    assert_eq!(g.bytes(bufs[0], 512), sector(&f, 10));
    assert_eq!(
        g.bytes(bufs[1], 1024),
        [sector(&f, 11), sector(&f, 12)].concat()
    );
    assert_eq!(g.bytes(bufs[2], 512), sector(&f, 13));
    // The kernel filled them, not vm-memory: a Diff snapshot must still see them dirty.
    let dirty = crate::memory::take_dirty(None, &g.mem).unwrap();
    for b in bufs {
        let page = (b / 4096) as usize;
        assert!(
            dirty[0][page / 64] & (1 << (page % 64)) != 0,
            "page of {b:#x} not dirty"
        );
    }
    // And back, one pwritev: sectors 20..24 get 10, 11, 12, 13.
    let h = header(&mut g, VIRTIO_BLK_T_OUT, 20);
    let mut descs = vec![Desc::r(h, 16)];
    descs.extend(bufs.iter().zip(lens).map(|(&b, l)| Desc::r(b, l)));
    descs.push(Desc::w(s, 1));
    assert_eq!(run(&mut g, &descs, s), (OK, 1));
    for i in 0..4 {
        assert_eq!(sector(&f, 20 + i), vec![10 + i as u8; 512]);
    }
}

#[test]
fn event_idx_read_and_write_requests_complete() {
    let f = image();
    let disk = Disk::open(f.as_path(), false).unwrap();
    let mut g = Guest::new(Arc::new(Mutex::new(Block::new(disk))));
    g.start_event_idx(QSIZE);
    // A write, then a read of the same sector, each posted and notified as the device asks.
    let h = header(&mut g, VIRTIO_BLK_T_OUT, 5);
    let d = g.buf(&[0x5a; 512]);
    let s = g.alloc(1);
    let (head, kicked) = g.post(0, &[Desc::r(h, 16), Desc::r(d, 512), Desc::w(s, 1)]);
    assert!(kicked);
    assert_eq!(g.used_idx(0), 1);
    assert_eq!(g.used(0, 0), (u32::from(head), 1));
    assert_eq!(g.bytes(s, 1)[0], OK);
    assert_eq!(sector(&f, 5), [0x5a; 512]);
    assert!(g.irq_fired());
    assert_eq!(g.avail_event(0), 1);

    let h = header(&mut g, VIRTIO_BLK_T_IN, 5);
    let d = g.alloc(512);
    let s = g.alloc(1);
    g.set_used_event(0, 1);
    let (head, kicked) = g.post(0, &[Desc::r(h, 16), Desc::w(d, 512), Desc::w(s, 1)]);
    assert!(kicked);
    assert_eq!(g.used(0, 1), (u32::from(head), 513));
    assert_eq!(g.bytes(s, 1)[0], OK);
    assert_eq!(g.bytes(d, 512), [0x5a; 512]);
    assert!(g.irq_fired());
    assert!(!g.needs_reset());
}

#[test]
fn write_reaches_only_its_own_sectors() {
    let f = image();
    let before = whole(&f);
    let (mut g, _) = attach(&f, false);
    let h = header(&mut g, VIRTIO_BLK_T_OUT, 2);
    let a = g.buf(&[0xab; 200]);
    let b = g.buf(&[0xab; 312]);
    let s = g.alloc(1);
    let descs = [
        Desc::r(h, 16),
        Desc::r(a, 200),
        Desc::r(b, 312),
        Desc::w(s, 1),
    ];
    assert_eq!(run(&mut g, &descs, s), (OK, 1));
    let after = whole(&f);
    assert_eq!(after[1024..1536], [0xab; 512]);
    assert_eq!(after[..1024], before[..1024]);
    assert_eq!(after[1536..], before[1536..]);
}

#[test]
fn any_descriptor_layout_is_accepted() {
    let f = image();
    let (mut g, _) = attach(&f, false);
    // Header and data in one buffer; status in its own.
    let mut req = vec![0u8; 16 + 512];
    req[0..4].copy_from_slice(&VIRTIO_BLK_T_OUT.to_le_bytes());
    req[8..16].copy_from_slice(&5u64.to_le_bytes());
    req[16..].fill(0xcd);
    let r = g.buf(&req);
    let s = g.alloc(1);
    assert_eq!(run(&mut g, &[Desc::r(r, 528), Desc::w(s, 1)], s).0, OK);
    assert_eq!(sector(&f, 5), [0xcd; 512]);
    // Data and status in one writable buffer.
    let h = header(&mut g, VIRTIO_BLK_T_IN, 5);
    let d = g.alloc(513);
    assert_eq!(
        run(&mut g, &[Desc::r(h, 16), Desc::w(d, 513)], d + 512),
        (OK, 513)
    );
    assert_eq!(g.bytes(d, 512), [0xcd; 512]);
}

#[test]
fn indirect_descriptors_are_followed() {
    let f = image();
    let (mut g, _) = attach(&f, false);
    let h = header(&mut g, VIRTIO_BLK_T_IN, 7);
    let d = g.alloc(512);
    let s = g.alloc(1);
    let head = g.push_indirect(0, &[Desc::r(h, 16), Desc::w(d, 512), Desc::w(s, 1)]);
    g.kick(0);
    assert_eq!(g.used(0, 0), (u32::from(head), 513));
    assert_eq!(g.bytes(s, 1), [OK]);
    assert_eq!(g.bytes(d, 512), sector(&f, 7));
}

#[test]
fn many_requests_complete_with_one_interrupt() {
    let f = image();
    let (mut g, _) = attach(&f, false);
    let mut statuses = Vec::new();
    for i in 0..5 {
        let h = header(&mut g, VIRTIO_BLK_T_IN, i);
        let d = g.alloc(512);
        let s = g.alloc(1);
        g.push(0, &[Desc::r(h, 16), Desc::w(d, 512), Desc::w(s, 1)]);
        statuses.push(s);
    }
    g.kick(0);
    assert_eq!(g.used_idx(0), 5);
    for s in statuses {
        assert_eq!(g.bytes(s, 1), [OK]);
    }
    assert_eq!(g.irq.read().unwrap(), 1);
}

#[test]
fn a_full_ring_is_served_in_turns() {
    let f = image();
    let (mut g, _) = attach(&f, false);
    // Indirect chains take one table slot each, so a whole ring's worth fits.
    let flush = |g: &mut Guest| {
        let h = header(g, VIRTIO_BLK_T_FLUSH, 0);
        let s = g.alloc(1);
        g.push_indirect(0, &[Desc::r(h, 16), Desc::w(s, 1)]);
    };
    for _ in 0..QSIZE {
        flush(&mut g);
    }
    g.kick(0);
    assert_eq!(g.used_idx(0), QSIZE);
    // The device stopped after a queue's worth and asked to be woken again; what the driver
    // added since is served on that next turn, with no new notification.
    for _ in 0..3 {
        flush(&mut g);
    }
    assert_eq!(g.run_events(), 1);
    assert_eq!(g.used_idx(0), QSIZE + 3);
    assert_eq!(g.run_events(), 0, "nothing left to do");
}

#[test]
fn flush_syncs_and_takes_no_data() {
    let f = image();
    let (mut g, block) = attach(&f, false);
    assert_eq!(request(&mut g, VIRTIO_BLK_T_FLUSH, 0, None), (OK, 1));
    let d = g.alloc(512);
    assert_eq!(
        request(&mut g, VIRTIO_BLK_T_FLUSH, 0, Some(Desc::r(d, 512))).0,
        IOERR
    );
    assert!(block.lock().unwrap().sync().is_ok());
}

#[test]
fn get_id_returns_a_20_byte_serial() {
    let f = image();
    let (mut g, _) = attach(&f, false);
    let d = g.alloc(20);
    let (status, len) = request(&mut g, VIRTIO_BLK_T_GET_ID, 0, Some(Desc::w(d, 20)));
    assert_eq!((status, len), (OK, 21));
    let id = g.bytes(d, 20);
    assert!(id.starts_with(b"kite"), "{id:?}");
    // Without a buffer for the id there is nothing to answer with.
    assert_eq!(request(&mut g, VIRTIO_BLK_T_GET_ID, 0, None).0, IOERR);
}

#[test]
fn a_readonly_disk_refuses_writes_and_says_so() {
    let f = image();
    let before = whole(&f);
    let (mut g, _) = attach(&f, true);
    let features = g.device_features();
    assert_ne!(features & (1 << VIRTIO_BLK_F_RO), 0);
    assert_eq!(features & (1 << VIRTIO_BLK_F_DISCARD), 0);
    assert_eq!(features & (1 << VIRTIO_BLK_F_WRITE_ZEROES), 0);
    let d = g.buf(&[0xee; 512]);
    assert_eq!(
        request(&mut g, VIRTIO_BLK_T_OUT, 0, Some(Desc::r(d, 512))),
        (IOERR, 1)
    );
    let seg = range(&mut g, &[(0, 1, 0)]);
    assert_eq!(
        request(&mut g, VIRTIO_BLK_T_DISCARD, 0, Some(seg)).0,
        UNSUPP
    );
    assert_eq!(
        request(&mut g, VIRTIO_BLK_T_WRITE_ZEROES, 0, Some(seg)).0,
        UNSUPP
    );
    assert_eq!(whole(&f), before);
    // Reads still work.
    let d = g.alloc(512);
    assert_eq!(
        request(&mut g, VIRTIO_BLK_T_IN, 9, Some(Desc::w(d, 512))).0,
        OK
    );
    assert_eq!(g.bytes(d, 512), sector(&f, 9));
}

#[test]
fn discard_and_write_zeroes_clear_their_ranges() {
    let f = image();
    let (mut g, block) = attach(&f, false);
    let (discard, zeroes) = {
        let b = block.lock().unwrap();
        (b.requests.disk.punch_hole, b.requests.disk.zero_range)
    };
    let features = g.device_features();
    assert_eq!(features & (1 << VIRTIO_BLK_F_DISCARD) != 0, discard);
    assert_eq!(features & (1 << VIRTIO_BLK_F_WRITE_ZEROES) != 0, zeroes);
    let unmap = VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP;

    let seg = range(&mut g, &[(8, 8, 0), (20, 1, 0)]);
    let status = request(&mut g, VIRTIO_BLK_T_DISCARD, 0, Some(seg)).0;
    if discard {
        assert_eq!(status, OK);
        assert_eq!(sector(&f, 8), [0; 512]);
        assert_eq!(sector(&f, 15), [0; 512]);
        assert_eq!(sector(&f, 20), [0; 512]);
        assert_eq!(sector(&f, 16), [16; 512]);
        assert_eq!(whole(&f).len() as u64, SECTORS * SECTOR_SIZE);
    } else {
        assert_eq!(status, UNSUPP);
    }

    for (sector_no, flags) in [(30, 0), (31, unmap)] {
        let seg = range(&mut g, &[(sector_no, 1, flags)]);
        let status = request(&mut g, VIRTIO_BLK_T_WRITE_ZEROES, 0, Some(seg)).0;
        if zeroes {
            assert_eq!(status, OK);
            assert_eq!(sector(&f, sector_no), [0; 512]);
        } else {
            assert_eq!(status, UNSUPP);
        }
    }
    if zeroes {
        assert_eq!(sector(&f, 29), [29; 512]);
        assert_eq!(sector(&f, 32), [32; 512]);
    }
}

#[test]
fn bad_discard_and_write_zeroes_requests_change_nothing() {
    let f = image();
    let (mut g, block) = attach(&f, false);
    let (discard, zeroes) = {
        let b = block.lock().unwrap();
        (b.requests.disk.punch_hole, b.requests.disk.zero_range)
    };
    assert!(discard && zeroes, "the test file system supports both");
    let before = whole(&f);
    let unmap = VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP;
    type Segments<'a> = &'a [(u64, u32, u32)];
    let cases: &[(u32, Segments, u8)] = &[
        // The unmap flag is only for write zeroes.
        (VIRTIO_BLK_T_DISCARD, &[(0, 1, unmap)], UNSUPP),
        // Unknown flags.
        (VIRTIO_BLK_T_WRITE_ZEROES, &[(0, 1, 2)], UNSUPP),
        // A good segment and one past the end: checked whole, nothing done.
        (VIRTIO_BLK_T_DISCARD, &[(0, 1, 0), (SECTORS, 1, 0)], IOERR),
        (
            VIRTIO_BLK_T_WRITE_ZEROES,
            &[(0, 1, 0), (SECTORS - 1, 2, 0)],
            IOERR,
        ),
        (VIRTIO_BLK_T_DISCARD, &[(u64::MAX, 2, 0)], IOERR),
        // No segment at all, and too many.
        (VIRTIO_BLK_T_DISCARD, &[], IOERR),
        (VIRTIO_BLK_T_DISCARD, &[(0, 1, 0); 17], IOERR),
    ];
    for &(kind, segments, expected) in cases {
        let data = (!segments.is_empty()).then(|| range(&mut g, segments));
        let (status, _) = request(&mut g, kind, 0, data);
        assert_eq!(status, expected, "{kind} {segments:?}");
        assert_eq!(whole(&f), before, "{kind} {segments:?}");
    }
    // A segment not a whole 16 bytes long.
    let odd = g.buf(&[0; 12]);
    let status = request(&mut g, VIRTIO_BLK_T_DISCARD, 0, Some(Desc::r(odd, 12))).0;
    assert_eq!(status, IOERR);
    assert_eq!(whole(&f), before);
}

#[test]
fn an_unknown_request_type_is_unsupported() {
    let f = image();
    let (mut g, _) = attach(&f, false);
    for kind in [2, 3, 5, 10, 14, 15, 16, 0x8000_0000] {
        assert_eq!(request(&mut g, kind, 0, None), (UNSUPP, 1), "type {kind}");
    }
}

#[test]
fn a_device_writable_header_is_an_io_error() {
    let f = image();
    let (mut g, _) = attach(&f, false);
    let h = header(&mut g, VIRTIO_BLK_T_IN, 0);
    let s = g.alloc(1);
    assert_eq!(run(&mut g, &[Desc::w(h, 16), Desc::w(s, 1)], s), (IOERR, 1));
}

#[test]
fn a_short_header_is_an_io_error() {
    let f = image();
    let (mut g, _) = attach(&f, false);
    let h = header(&mut g, VIRTIO_BLK_T_IN, 0);
    let s = g.alloc(1);
    assert_eq!(run(&mut g, &[Desc::r(h, 8), Desc::w(s, 1)], s).0, IOERR);
}

#[test]
fn read_into_a_device_readable_buffer_is_refused() {
    let f = image();
    let (mut g, _) = attach(&f, false);
    let d = g.buf(&[0x5a; 512]);
    assert_eq!(
        request(&mut g, VIRTIO_BLK_T_IN, 1, Some(Desc::r(d, 512))),
        (IOERR, 1)
    );
    assert_eq!(g.bytes(d, 512), [0x5a; 512], "the buffer is left alone");
}

#[test]
fn write_from_a_device_writable_buffer_is_refused() {
    let f = image();
    let before = whole(&f);
    let (mut g, _) = attach(&f, false);
    let d = g.buf(&[0x5a; 512]);
    assert_eq!(
        request(&mut g, VIRTIO_BLK_T_OUT, 1, Some(Desc::w(d, 512))).0,
        IOERR
    );
    assert_eq!(whole(&f), before);
}

#[test]
fn a_readable_buffer_after_a_writable_one_is_refused() {
    let f = image();
    let before = whole(&f);
    let (mut g, _) = attach(&f, false);
    let h = header(&mut g, VIRTIO_BLK_T_OUT, 1);
    let w = g.alloc(512);
    let d = g.buf(&[0x5a; 512]);
    let s = g.alloc(1);
    let descs = [
        Desc::r(h, 16),
        Desc::w(w, 512),
        Desc::r(d, 512),
        Desc::w(s, 1),
    ];
    assert_eq!(run(&mut g, &descs, s).0, IOERR);
    assert_eq!(whole(&f), before);
}

#[test]
fn data_that_is_not_whole_sectors_is_refused() {
    let f = image();
    let before = whole(&f);
    let (mut g, _) = attach(&f, false);
    let d = g.buf(&[0x5a; 700]);
    assert_eq!(
        request(&mut g, VIRTIO_BLK_T_OUT, 1, Some(Desc::r(d, 700))).0,
        IOERR
    );
    assert_eq!(
        request(&mut g, VIRTIO_BLK_T_IN, 1, Some(Desc::w(d, 700))).0,
        IOERR
    );
    assert_eq!(g.bytes(d, 700), [0x5a; 700]);
    assert_eq!(whole(&f), before);
}

#[test]
fn sectors_past_the_end_are_refused_whole() {
    let f = image();
    let before = whole(&f);
    let (mut g, _) = attach(&f, false);
    let d = g.buf(&[0x5a; 1024]);
    for sector in [SECTORS, SECTORS - 1, u64::MAX, u64::MAX / 512] {
        let (status, _) = request(&mut g, VIRTIO_BLK_T_OUT, sector, Some(Desc::r(d, 1024)));
        assert_eq!(status, IOERR, "write at {sector}");
        let (status, _) = request(&mut g, VIRTIO_BLK_T_IN, sector, Some(Desc::w(d, 1024)));
        assert_eq!(status, IOERR, "read at {sector}");
    }
    assert_eq!(
        whole(&f),
        before,
        "not even the sector inside the disk was written"
    );
    assert_eq!(g.bytes(d, 1024), [0x5a; 1024]);
    // The last sector itself is fine.
    assert_eq!(
        request(&mut g, VIRTIO_BLK_T_IN, SECTORS - 1, Some(Desc::w(d, 512))).0,
        OK
    );
}

#[test]
fn a_buffer_outside_guest_ram_is_refused_before_any_write() {
    let f = image();
    let before = whole(&f);
    let (mut g, _) = attach(&f, false);
    let h = header(&mut g, VIRTIO_BLK_T_OUT, 0);
    let good = g.buf(&[0x5a; 512]);
    let s = g.alloc(1);
    let outside = MEM_SIZE - 256;
    let descs = [
        Desc::r(h, 16),
        Desc::r(good, 512),
        Desc::r(outside, 512),
        Desc::w(s, 1),
    ];
    assert_eq!(run(&mut g, &descs, s).0, IOERR);
    assert_eq!(whole(&f), before);
    // A read into RAM the guest does not have writes nothing either.
    let h = header(&mut g, VIRTIO_BLK_T_IN, 0);
    let descs = [
        Desc::r(h, 16),
        Desc::w(good, 512),
        Desc::w(0xffff_ffff_0000, 512),
        Desc::w(s, 1),
    ];
    assert_eq!(run(&mut g, &descs, s).0, IOERR);
    assert_eq!(g.bytes(good, 512), [0x5a; 512]);
    // The device keeps working.
    assert_eq!(request(&mut g, VIRTIO_BLK_T_FLUSH, 0, None).0, OK);
}

#[test]
fn a_status_buffer_of_the_wrong_size_is_an_io_error() {
    let f = image();
    let before = whole(&f);
    let (mut g, _) = attach(&f, false);
    let h = header(&mut g, VIRTIO_BLK_T_OUT, 0);
    let d = g.buf(&[0x5a; 512]);
    let s = g.alloc(4);
    // The status byte is the last of the 4; the 3 before it would be read data, which a write
    // does not have.
    assert_eq!(
        run(
            &mut g,
            &[Desc::r(h, 16), Desc::r(d, 512), Desc::w(s, 4)],
            s + 3
        )
        .0,
        IOERR
    );
    assert_eq!(whole(&f), before);
}

#[test]
fn no_status_byte_makes_the_device_need_a_reset() {
    let f = image();
    type Layout = fn(u64, u64) -> Vec<Desc>;
    let cases: [(&str, Layout); 4] = [
        ("status device-readable", |h, s| {
            vec![Desc::r(h, 16), Desc::r(s, 1)]
        }),
        ("status empty", |h, s| vec![Desc::r(h, 16), Desc::w(s, 0)]),
        ("status outside RAM", |h, _| {
            vec![Desc::r(h, 16), Desc::w(MEM_SIZE, 1)]
        }),
        ("no status at all", |h, _| vec![Desc::r(h, 16)]),
    ];
    for (what, descs) in cases {
        let (mut g, _) = attach(&f, false);
        let h = header(&mut g, VIRTIO_BLK_T_FLUSH, 0);
        let s = g.buf(&[0x77]);
        g.push(0, &descs(h, s));
        g.kick(0);
        assert_needs_reset(&mut g, 0);
        assert_eq!(g.bytes(s, 1), [0x77], "{what}");
    }
}

#[test]
fn a_descriptor_loop_makes_the_device_need_a_reset_and_a_reset_recovers() {
    let f = image();
    let (mut g, _) = attach(&f, false);
    let h = header(&mut g, VIRTIO_BLK_T_IN, 0);
    let d = g.alloc(512);
    // 0 -> 1 -> 0 -> ...
    g.push_raw(0, &[(h, 16, NEXT, 1), (d, 512, WRITE | NEXT, 0)]);
    g.kick(0);
    assert_needs_reset(&mut g, 0);
    // Until the driver resets it, the device leaves the queue alone.
    let s = g.alloc(1);
    g.push(0, &[Desc::r(h, 16), Desc::w(s, 1)]);
    g.kick(0);
    assert_eq!(g.used_idx(0), 0);
    // After a reset the device works again.
    g.start(QSIZE);
    assert!(!g.needs_reset());
    assert_eq!(
        request(&mut g, VIRTIO_BLK_T_IN, 2, Some(Desc::w(d, 512))).0,
        OK
    );
    assert_eq!(g.bytes(d, 512), sector(&f, 2));
}

#[test]
fn a_next_index_past_the_table_makes_the_device_need_a_reset() {
    let f = image();
    let (mut g, _) = attach(&f, false);
    let h = header(&mut g, VIRTIO_BLK_T_FLUSH, 0);
    g.push_raw(0, &[(h, 16, NEXT, QSIZE)]);
    g.kick(0);
    assert_needs_reset(&mut g, 0);
}

#[test]
fn a_head_index_past_the_table_makes_the_device_need_a_reset() {
    let f = image();
    let (mut g, _) = attach(&f, false);
    g.make_available(0, QSIZE + 3);
    g.kick(0);
    assert_needs_reset(&mut g, 0);
}

#[test]
fn a_chain_longer_than_the_queue_makes_the_device_need_a_reset() {
    let f = image();
    let (mut g, _) = attach(&f, false);
    let h = header(&mut g, VIRTIO_BLK_T_IN, 0);
    let d = g.alloc(512 * u32::from(QSIZE));
    let s = g.alloc(1);
    let mut descs = vec![Desc::r(h, 16)];
    descs.extend((0..u64::from(QSIZE)).map(|i| Desc::w(d + 512 * i, 512)));
    descs.push(Desc::w(s, 1));
    g.push_indirect(0, &descs);
    g.kick(0);
    assert_needs_reset(&mut g, 0);
    assert_eq!(g.bytes(s, 1), [0]);
}

#[test]
fn an_available_index_too_far_ahead_makes_the_device_need_a_reset() {
    let f = image();
    let (mut g, _) = attach(&f, false);
    g.set_avail_idx(0, QSIZE + 1);
    g.kick(0);
    assert_needs_reset(&mut g, 0);
}

#[test]
fn a_broken_queue_floods_no_log() {
    let f = image();
    let (mut g, block) = attach(&f, false);
    for _ in 0..100 {
        g.set_avail_idx(0, QSIZE + 1);
        g.kick(0);
        g.start(QSIZE);
    }
    let b = block.lock().unwrap();
    assert_eq!(b.chain_log.suppressed(), 90, "ten lines, then silence");
}
