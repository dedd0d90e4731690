//! The sync engine's reads and writes: one `preadv`/`pwritev` per request, straight between
//! the image and the guest's buffers (no seek, no bounce buffer). A transfer the kernel cuts
//! short goes on from where it stopped; a read that meets the end of the file says where.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;

use crate::devices::virtio::chain::Bufs;
use crate::devices::virtio::iov::{IOV_MAX, advance, iovecs};
use crate::memory::GuestMem;

/// How a transfer ended short of its length.
#[derive(Debug)]
pub enum Short {
    /// The file ended this many bytes into the transfer.
    Eof(u64),
    /// The host failed this many bytes into the transfer.
    Io(u64, io::Error),
    /// A buffer is not in guest memory (the chain was checked, so this is not expected).
    Memory(vm_memory::GuestMemoryError),
}

/// Read `bufs.len()` bytes at `offset` of `file` into the guest's buffers.
pub fn read(mem: &GuestMem, bufs: &Bufs, file: &File, offset: u64) -> Result<(), Short> {
    transfer(mem, bufs, file, offset, true)
}

/// Write the guest's buffers to `file` at `offset`.
pub fn write(mem: &GuestMem, bufs: &Bufs, file: &File, offset: u64) -> Result<(), Short> {
    transfer(mem, bufs, file, offset, false)
}

fn transfer(
    mem: &GuestMem,
    bufs: &Bufs,
    file: &File,
    offset: u64,
    read: bool,
) -> Result<(), Short> {
    let mut iov = iovecs(mem, bufs, read).map_err(Short::Memory)?;
    let fd = file.as_raw_fd();
    let mut done: u64 = 0;
    while !iov.is_empty() {
        let count = iov.len().min(IOV_MAX) as libc::c_int;
        let at = offset.saturating_add(done) as libc::off_t;
        // SAFETY: every iovec points into guest memory that `mem` maps for the whole call
        // (checked by `get_slices`, advanced only within its own length); the kernel reads or
        // writes only those bytes. The guest may touch the same memory at the same time, as
        // it may during any device's volatile access.
        let n = unsafe {
            if read {
                libc::preadv(fd, iov.as_ptr(), count, at)
            } else {
                libc::pwritev(fd, iov.as_ptr(), count, at)
            }
        };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(Short::Io(done, e));
        }
        if n == 0 {
            return Err(if read {
                Short::Eof(done)
            } else {
                Short::Io(done, io::ErrorKind::WriteZero.into())
            });
        }
        // n > 0 here, and at most what the iovecs hold.
        let n = n as usize;
        done += n as u64;
        advance(&mut iov, n);
    }
    Ok(())
}
