//! The io_uring engine (`io_engine: "Async"`): requests in flight, completions in any order,
//! flush after the writes before it, the drain, the event loop's wake-up, the rate limiter.

use std::os::fd::RawFd;
use std::sync::{Arc, Mutex};

use vm_memory::{Bytes, GuestAddress};
use vmm_sys_util::tempfile::TempFile;

use super::tests::{OK, SECTORS, header, image, sector};
use super::*;
use crate::devices::virtio::testutil::{Desc, Guest};
use crate::devices::virtio::{Bucket, RateLimitUpdate};

/// Room for 21 three-descriptor chains.
const QSIZE: u16 = 64;

/// A device on the io_uring engine, or `None` (the test skips, saying why) where this host
/// gives no io_uring.
fn attach_uring(f: &TempFile, test: &str) -> Option<(Guest, Arc<Mutex<Block>>)> {
    let disk = Disk::open(f.as_path(), false).unwrap();
    let block = match Block::with_uring(disk) {
        Ok(b) => Arc::new(Mutex::new(b)),
        Err(e) => {
            let why = format!("this host refuses io_uring: {e}");
            kite_testkit::skip(test, kite_testkit::Need::IoUring, &why);
            return None;
        }
    };
    let mut g = Guest::new(block.clone());
    g.start(QSIZE);
    Some((g, block))
}

/// Post a request of `kind` at `sector` with one data buffer of `len` bytes (device-writable
/// for a read, holding `fill` for a write; none for 0). Returns (head, data, status addresses).
fn post(g: &mut Guest, kind: u32, sector: u64, len: u32, fill: u8) -> (u16, u64, u64) {
    let h = header(g, kind, sector);
    let status = g.alloc(1);
    g.mem.write_obj(0xffu8, GuestAddress(status)).unwrap();
    let mut descs = vec![Desc::r(h, 16)];
    let data = if len == 0 {
        0
    } else if kind == VIRTIO_BLK_T_IN {
        let d = g.alloc(len);
        descs.push(Desc::w(d, len));
        d
    } else {
        let d = g.buf(&vec![fill; len as usize]);
        descs.push(Desc::r(d, len));
        d
    };
    descs.push(Desc::w(status, 1));
    (g.push(0, &descs), data, status)
}

/// The used ring's entries from `from` on, as (head, length).
fn used_since(g: &Guest, from: u16) -> Vec<(u32, u32)> {
    let to = g.used_idx(0);
    (0..to.wrapping_sub(from))
        .map(|i| g.used(0, from.wrapping_add(i)))
        .collect()
}

fn wait_readable(fd: RawFd) -> bool {
    let mut p = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one pollfd, valid for the call.
    unsafe { libc::poll(&mut p, 1, 5000) == 1 }
}

#[test]
fn completions_in_any_order_answer_their_own_chains() {
    let f = image();
    let Some((mut g, block)) = attach_uring(&f, "completions_in_any_order_answer_their_own_chains")
    else {
        return;
    };
    let before = g.used_idx(0);
    // Reads of sectors 3, 5, 7, 9 (one sector each, filled with its number) and a write.
    let reads: Vec<_> = [3u64, 5, 7, 9]
        .iter()
        .map(|&s| (s, post(&mut g, VIRTIO_BLK_T_IN, s, 512, 0)))
        .collect();
    let (write_head, _, write_status) = post(&mut g, VIRTIO_BLK_T_OUT, 20, 1024, 0xab);
    g.kick(0);
    let mut b = block.lock().unwrap();
    assert_eq!(
        b.in_flight(),
        5,
        "all five requests go to the kernel at once"
    );
    assert_eq!(
        g.used_idx(0),
        before,
        "nothing is answered before it completes"
    );
    // Answer them in the reverse of the order the kernel finished them.
    let mut done = b.requests.uring.as_mut().unwrap().drain().unwrap();
    assert_eq!(done.len(), 5);
    done.reverse();
    let order: Vec<u16> = done.iter().map(|d| d.pending.head).collect();
    b.complete(done);
    drop(b);
    let used = used_since(&g, before);
    assert_eq!(
        used.iter().map(|&(h, _)| h as u16).collect::<Vec<_>>(),
        order,
        "the used ring holds the chains in completion order"
    );
    for &(s, (head, data, status)) in &reads {
        let entry = used.iter().find(|&&(h, _)| h == u32::from(head)).unwrap();
        assert_eq!(
            entry.1, 513,
            "a read's used length is its data and the status byte"
        );
        assert_eq!(g.bytes(status, 1)[0], OK);
        assert_eq!(g.bytes(data, 512), vec![s as u8; 512]);
    }
    let entry = used.iter().find(|&&(h, _)| h == u32::from(write_head));
    assert_eq!(
        entry.unwrap().1,
        1,
        "a write's used length is the status byte"
    );
    assert_eq!(g.bytes(write_status, 1)[0], OK);
    assert_eq!(sector(&f, 20), vec![0xab; 512]);
    assert_eq!(sector(&f, 21), vec![0xab; 512]);
    assert!(g.irq_fired());
}

#[test]
fn the_event_loop_is_woken_by_completions() {
    let f = image();
    let Some((mut g, block)) = attach_uring(&f, "the_event_loop_is_woken_by_completions") else {
        return;
    };
    let before = g.used_idx(0);
    let (_, data, status) = post(&mut g, VIRTIO_BLK_T_IN, 11, 4096, 0);
    g.kick(0);
    let fd = block.lock().unwrap().backend_fd().unwrap();
    // Completions arrive on the backend descriptor: wait for it, never poll the ring.
    while g.used_idx(0) == before {
        assert!(
            wait_readable(fd),
            "the completion never woke the event loop"
        );
        block.lock().unwrap().process_backend();
    }
    assert_eq!(g.bytes(status, 1)[0], OK);
    let want: Vec<u8> = (11..19u8).flat_map(|s| [s; 512]).collect();
    assert_eq!(g.bytes(data, 4096), want);
    assert_eq!(block.lock().unwrap().in_flight(), 0);
}

#[test]
fn a_flush_completes_after_the_writes_before_it() {
    let f = image();
    let Some((mut g, block)) = attach_uring(&f, "a_flush_completes_after_the_writes_before_it")
    else {
        return;
    };
    let before = g.used_idx(0);
    let writes: Vec<u16> = (0..8u64)
        .map(|i| post(&mut g, VIRTIO_BLK_T_OUT, 32 + 2 * i, 1024, 0x10 + i as u8).0)
        .collect();
    let (flush, _, flush_status) = post(&mut g, VIRTIO_BLK_T_FLUSH, 0, 0, 0);
    g.kick(0);
    let done = block
        .lock()
        .unwrap()
        .requests
        .uring
        .as_mut()
        .unwrap()
        .drain()
        .unwrap();
    let order: Vec<u16> = done.iter().map(|d| d.pending.head).collect();
    assert_eq!(order.len(), 9);
    assert_eq!(
        *order.last().unwrap(),
        flush,
        "the flush waits for every earlier write"
    );
    for w in &writes {
        assert!(order.contains(w));
    }
    block.lock().unwrap().complete(done);
    assert_eq!(used_since(&g, before).len(), 9);
    assert_eq!(g.bytes(flush_status, 1)[0], OK);
    for i in 0..8u64 {
        assert_eq!(sector(&f, 32 + 2 * i), vec![0x10 + i as u8; 512]);
    }
}

#[test]
fn drain_answers_every_request_in_flight() {
    let f = image();
    let Some((mut g, block)) = attach_uring(&f, "drain_answers_every_request_in_flight") else {
        return;
    };
    let before = g.used_idx(0);
    let statuses: Vec<u64> = (0..12u64)
        .map(|i| post(&mut g, VIRTIO_BLK_T_OUT, i, 512, 0xc0 + i as u8).2)
        .collect();
    g.kick(0);
    assert_eq!(block.lock().unwrap().in_flight(), 12);
    // What pause, snapshot, PATCH /drives and shutdown call.
    block.lock().unwrap().drain();
    assert_eq!(block.lock().unwrap().in_flight(), 0);
    assert_eq!(used_since(&g, before).len(), 12);
    assert!(g.irq_fired());
    for (i, s) in statuses.iter().enumerate() {
        assert_eq!(g.bytes(*s, 1)[0], OK);
        assert_eq!(sector(&f, i as u64), vec![0xc0 + i as u8; 512]);
    }
    // Sectors past the writes are untouched.
    assert_eq!(sector(&f, SECTORS - 1), vec![(SECTORS - 1) as u8; 512]);
}

#[test]
fn the_rate_limiter_still_holds_requests_back() {
    let f = image();
    let Some((mut g, block)) = attach_uring(&f, "the_rate_limiter_still_holds_requests_back")
    else {
        return;
    };
    // Two operations, then one a minute.
    block.lock().unwrap().update_rate_limit(RateLimitUpdate {
        bandwidth: None,
        ops: Some(Some(Bucket {
            size: 2,
            one_time_burst: 0,
            refill_time_ms: 60_000,
        })),
    });
    let before = g.used_idx(0);
    for i in 0..4 {
        post(&mut g, VIRTIO_BLK_T_IN, i, 512, 0);
    }
    g.kick(0);
    assert_eq!(block.lock().unwrap().in_flight(), 2, "only two may start");
    block.lock().unwrap().drain();
    assert_eq!(used_since(&g, before).len(), 2);
    assert_eq!(g.avail_idx(0).wrapping_sub(before), 4);
}

#[test]
fn a_read_past_the_image_end_is_an_io_error() {
    let f = image();
    let Some((mut g, block)) = attach_uring(&f, "a_read_past_the_image_end_is_an_io_error") else {
        return;
    };
    // The image shrinks under the VM: the kernel's read comes back short.
    f.as_file().set_len(8 * SECTOR_SIZE).unwrap();
    let (_, _, status) = post(&mut g, VIRTIO_BLK_T_IN, 7, 1024, 0);
    g.kick(0);
    block.lock().unwrap().drain();
    assert_eq!(g.bytes(status, 1)[0], super::tests::IOERR);
    assert_eq!(block.lock().unwrap().stats().snapshot()[2], ("errors", 1));
}

#[test]
fn a_host_without_io_uring_gets_one_line_naming_the_drive() {
    let e = crate::devices::virtio::Error::NoUring {
        path: "/vm/data.img".into(),
        source: std::io::Error::from_raw_os_error(libc::ENOSYS),
    };
    let line = e.to_string();
    assert!(!line.contains('\n'), "{line}");
    assert!(line.contains("drive /vm/data.img"), "{line}");
    assert!(line.contains("use io_engine Sync"), "{line}");
}

#[test]
fn a_read_marks_the_guest_pages_it_fills_dirty() {
    let f = image();
    let Some((mut g, block)) = attach_uring(&f, "a_read_marks_the_guest_pages_it_fills_dirty")
    else {
        return;
    };
    let (_, data, status) = post(&mut g, VIRTIO_BLK_T_IN, 4, 8192, 0);
    // Forget what setting the request up wrote; only the kernel's read may mark pages now.
    crate::memory::take_dirty(None, &g.mem).unwrap();
    g.kick(0);
    block.lock().unwrap().drain();
    assert_eq!(g.bytes(status, 1)[0], OK);
    let dirty = crate::memory::take_dirty(None, &g.mem).unwrap();
    let is_dirty = |addr: u64| {
        let page = (addr / 4096) as usize;
        dirty[0][page / 64] & (1 << (page % 64)) != 0
    };
    for addr in [data, data + 4096, data + 8191] {
        assert!(is_dirty(addr), "page of {addr:#x} not marked dirty");
    }
}
