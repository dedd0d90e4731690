//! Guest buffers as iovecs, for system calls that move data straight between guest memory
//! and a file or socket (`preadv`/`pwritev`, `readv`/`writev`) with no copy in between.

use vm_memory::GuestMemoryBackend;
use vm_memory::bitmap::Bitmap;

use super::chain::Bufs;
use crate::memory::GuestMem;

/// The most iovecs one call takes (Linux's UIO_MAXIOV).
pub const IOV_MAX: usize = 1024;

/// The guest's buffers `bufs` as iovecs, in order; a buffer that spans two memory regions
/// becomes two. With `dirty`, their pages are marked dirty first: whatever fills them (the
/// kernel) does so behind vm-memory's back, and a Diff snapshot must still find them (a call
/// that fails half-way leaves them marked too: more than needed, never less).
///
/// The iovecs point into memory that `mem` maps; they are good while `mem` is.
pub fn iovecs(
    mem: &GuestMem,
    bufs: &Bufs,
    dirty: bool,
) -> Result<Vec<libc::iovec>, vm_memory::GuestMemoryError> {
    let mut iov = Vec::with_capacity(4);
    for buf in bufs.iter() {
        for slice in mem.get_slices(buf.addr, buf.len as usize) {
            let slice = slice?;
            if dirty {
                slice.bitmap().mark_dirty(0, slice.len());
            }
            iov.push(libc::iovec {
                iov_base: slice.ptr_guard_mut().as_ptr().cast(),
                iov_len: slice.len(),
            });
        }
    }
    Ok(iov)
}

/// Move past the first `n` bytes of `iov` (at most what it holds).
pub fn advance(iov: &mut Vec<libc::iovec>, mut n: usize) {
    let mut whole = 0;
    for v in iov.iter() {
        if v.iov_len > n {
            break;
        }
        n -= v.iov_len;
        whole += 1;
    }
    iov.drain(..whole);
    if let Some(first) = iov.first_mut() {
        // `n` is now less than this iovec's length.
        first.iov_base = first.iov_base.cast::<u8>().wrapping_add(n).cast();
        first.iov_len -= n;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::virtio::chain::Buf;
    use vm_memory::GuestAddress;

    fn iov(lens: &[usize]) -> Vec<libc::iovec> {
        let mut at = 0x1000usize;
        lens.iter()
            .map(|&len| {
                let v = libc::iovec {
                    iov_base: at as *mut libc::c_void,
                    iov_len: len,
                };
                at += 0x1000;
                v
            })
            .collect()
    }

    #[test]
    fn advance_drops_whole_iovecs_and_cuts_into_the_next() {
        let mut v = iov(&[10, 20, 30]);
        advance(&mut v, 15);
        assert_eq!(v.len(), 2);
        assert_eq!((v[0].iov_base as usize, v[0].iov_len), (0x2005, 15));
        advance(&mut v, 15);
        assert_eq!(v.len(), 1);
        assert_eq!((v[0].iov_base as usize, v[0].iov_len), (0x3000, 30));
        advance(&mut v, 30);
        assert!(v.is_empty());
    }

    #[test]
    fn buffers_become_iovecs_in_order_and_empty_ones_are_skipped() {
        let mem = crate::memory::create(1 << 20).unwrap();
        let bufs = Bufs::from(vec![
            Buf {
                addr: GuestAddress(0x3000),
                len: 100,
            },
            Buf {
                addr: GuestAddress(0x5000),
                len: 0,
            },
            Buf {
                addr: GuestAddress(0x1000),
                len: 8,
            },
        ]);
        let v = iovecs(&mem, &bufs, false).unwrap();
        assert_eq!(v.len(), 2);
        assert_eq!((v[0].iov_base as usize - v[1].iov_base as usize), 0x2000);
        assert_eq!((v[0].iov_len, v[1].iov_len), (100, 8));
        let outside = Bufs::from(vec![Buf {
            addr: GuestAddress(1 << 30),
            len: 8,
        }]);
        assert!(iovecs(&mem, &outside, false).is_err());
    }
}
