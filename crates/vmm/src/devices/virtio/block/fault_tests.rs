//! The host's I/O failing under the device: a full file system, an image shrunk under the VM,
//! a failed fdatasync. The guest gets IOERR for the request, the next flush reports it, and
//! nothing the guest flushed before is touched.

use std::fs::{File, OpenOptions};
use std::os::fd::FromRawFd;

use virtio_bindings::virtio_blk::{VIRTIO_BLK_T_FLUSH, VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT};

use super::error::{HostErrorLog, Op, RequestError, short_error};
use super::sync_io::Short;
use super::tests::{IOERR, OK, SECTORS, attach, image, request, sector};
use crate::devices::virtio::testutil::Desc;

/// Replace the image's file under a running device.
fn swap_file(block: &std::sync::Mutex<super::Block>, file: File) {
    block.lock().unwrap().requests.disk.file = file;
}

#[test]
fn a_full_file_system_fails_the_write_and_the_next_flush_only() {
    let f = image();
    let (mut g, block) = attach(&f, false);
    let d = g.buf(&[0xab; 512]);
    assert_eq!(
        request(&mut g, VIRTIO_BLK_T_OUT, 1, Some(Desc::r(d, 512))).0,
        OK
    );
    assert_eq!(request(&mut g, VIRTIO_BLK_T_FLUSH, 0, None).0, OK);
    // /dev/full: every write fails with ENOSPC, as on a file system with no space left.
    let real = std::mem::replace(
        &mut block.lock().unwrap().requests.disk.file,
        OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/full")
            .unwrap(),
    );
    let d = g.buf(&[0xcd; 1024]);
    assert_eq!(
        request(&mut g, VIRTIO_BLK_T_OUT, 2, Some(Desc::r(d, 1024))).0,
        IOERR
    );
    // Space comes back (the image file again). The flush after the failed write says so,
    // like fsync after a failed write-back; the one after that has nothing more to report.
    swap_file(&block, real);
    assert_eq!(request(&mut g, VIRTIO_BLK_T_FLUSH, 0, None).0, IOERR);
    assert_eq!(request(&mut g, VIRTIO_BLK_T_FLUSH, 0, None).0, OK);
    // What was flushed before is intact; the failed write changed nothing on the image.
    assert_eq!(sector(&f, 1), vec![0xab; 512]);
    assert_eq!(sector(&f, 2), vec![2u8; 512]);
    assert_eq!(sector(&f, 3), vec![3u8; 512]);
}

#[test]
fn a_bad_request_does_not_fail_the_next_flush() {
    let f = image();
    let (mut g, _) = attach(&f, false);
    let d = g.alloc(512);
    // Past the end of the disk: the guest's mistake, nothing was written.
    assert_eq!(
        request(&mut g, VIRTIO_BLK_T_OUT, SECTORS, Some(Desc::r(d, 512))).0,
        IOERR
    );
    assert_eq!(request(&mut g, VIRTIO_BLK_T_FLUSH, 0, None).0, OK);
}

#[test]
fn reads_past_the_end_of_a_shrunk_image_fail_and_the_rest_still_reads() {
    let f = image();
    let (mut g, _) = attach(&f, false);
    f.as_file().set_len(SECTORS / 2 * 512).unwrap();
    let d = g.alloc(1024);
    let past = SECTORS / 2 + 3;
    assert_eq!(
        request(&mut g, VIRTIO_BLK_T_IN, past, Some(Desc::w(d, 1024))).0,
        IOERR
    );
    // A read across the new end fails whole.
    let across = SECTORS / 2 - 1;
    assert_eq!(
        request(&mut g, VIRTIO_BLK_T_IN, across, Some(Desc::w(d, 1024))).0,
        IOERR
    );
    let d = g.alloc(512);
    assert_eq!(
        request(&mut g, VIRTIO_BLK_T_IN, 5, Some(Desc::w(d, 512))).0,
        OK
    );
    assert_eq!(g.bytes(d, 512), vec![5u8; 512]);
    // Reads are not a write failure: flushing still works.
    assert_eq!(request(&mut g, VIRTIO_BLK_T_FLUSH, 0, None).0, OK);
}

#[test]
fn after_a_failed_sync_every_flush_fails() {
    let f = image();
    let (mut g, block) = attach(&f, false);
    let mut fds = [0; 2];
    // SAFETY: pipe writes two descriptors into the array we own.
    assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
    // SAFETY: both descriptors were just made and nothing else owns them.
    let (rd, wr) = unsafe { (File::from_raw_fd(fds[0]), File::from_raw_fd(fds[1])) };
    drop(rd);
    // fdatasync on a pipe fails (EINVAL), standing in for a device that lost the data.
    let real = std::mem::replace(&mut block.lock().unwrap().requests.disk.file, wr);
    assert_eq!(request(&mut g, VIRTIO_BLK_T_FLUSH, 0, None).0, IOERR);
    swap_file(&block, real);
    // The file syncs again, but what the failed sync dropped is gone: keep saying so.
    assert_eq!(request(&mut g, VIRTIO_BLK_T_FLUSH, 0, None).0, IOERR);
    assert_eq!(request(&mut g, VIRTIO_BLK_T_FLUSH, 0, None).0, IOERR);
}

#[test]
fn the_hosts_error_is_named_not_guest_memory() {
    // ENOSPC 8 sectors into a write of 69632 bytes at sector 4088: named where it happened.
    let enospc = std::io::Error::from_raw_os_error(libc::ENOSPC);
    let e = short_error(Short::Io(4096, enospc), Op::Write, 4088, 69632, 1 << 20);
    assert!(e.is_host());
    assert_eq!(
        e.to_string(),
        "write of 65536 bytes at sector 4096 failed on the host: No space left on device (os error 28)"
    );
    let e = short_error(Short::Eof(1024), Op::Read, 60, 4096, 62);
    assert!(matches!(
        e,
        RequestError::ImageShrunk {
            sector: 62,
            capacity: 62
        }
    ));
    let e = short_error(
        Short::Memory(vm_memory::GuestMemoryError::InvalidGuestAddress(
            vm_memory::GuestAddress(1 << 40),
        )),
        Op::Read,
        0,
        512,
        64,
    );
    assert!(matches!(e, RequestError::Memory(_)));
    assert!(!e.is_host());
}

#[test]
fn host_errors_are_logged_once_a_minute() {
    let mut log = HostErrorLog::new();
    let e = RequestError::ImageShrunk {
        sector: 9,
        capacity: 64,
    };
    assert!(log.report("virtio-blk x", &e));
    for _ in 0..100 {
        assert!(!log.report("virtio-blk x", &e));
    }
    log.finish("virtio-blk x");
}

#[test]
fn a_write_of_a_large_buffer_to_a_full_disk_names_the_sector() {
    let f = image();
    let (mut g, block) = attach(&f, false);
    swap_file(
        &block,
        OpenOptions::new().write(true).open("/dev/full").unwrap(),
    );
    let d = g.buf(&vec![1u8; 4096]);
    assert_eq!(
        request(&mut g, VIRTIO_BLK_T_OUT, 8, Some(Desc::r(d, 4096))).0,
        IOERR
    );
    let failed = block.lock().unwrap().requests.failed_write.clone();
    let (op, why) = failed.expect("the failed write is remembered for the next flush");
    assert_eq!(op, Op::Write);
    assert!(why.contains("No space left on device"), "{why}");
}
