//! The io_uring engine of virtio-blk (`io_engine: "Async"`, `--disk PATH,io=uring`).
//!
//! Reads and writes go to the kernel as readv/writev submissions that point straight at the
//! guest's buffers; a FLUSH is an fdatasync submitted with IOSQE_IO_DRAIN, so the kernel starts
//! it only after every request submitted before it has completed. Completions come back in any
//! order, each carrying the slot of its request; the ring signals them on an eventfd that the
//! event loop watches, so nothing waits or polls. [`Uring::drain`] waits for every request in
//! flight, for pause, snapshot, `PATCH /drives` and shutdown.
//!
//! Guest memory stays mapped for the life of the VM, and the device drains its ring before it
//! lets go of the disk or is dropped, so no submission outlives the buffers it names.

use std::io;
use std::os::fd::{AsRawFd, RawFd};

use io_uring::{IoUring, opcode, squeue, types};
use vm_memory::GuestAddress;
use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};

/// What a request in flight does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Read,
    Write,
    Flush,
}

/// The guest's iovecs for one request. They point into guest memory, which is mapped for the
/// VM's life and shared by every thread.
struct Iovecs(Vec<libc::iovec>);

// SAFETY: the pointers name guest memory, mapped for the VM's whole life and meant to be
// accessed from any thread (vCPUs and the event loop do); nothing here is thread-local.
unsafe impl Send for Iovecs {}

/// A request the kernel is working on: what its completion must answer.
pub struct Pending {
    /// The chain's head, for the used ring.
    pub head: u16,
    /// Where its status byte goes.
    pub status: GuestAddress,
    pub kind: Kind,
    pub sector: u64,
    /// Data bytes it moves (0 for a flush).
    pub bytes: u64,
    /// Taken before a device reset: its completion answers nobody.
    pub orphan: bool,
    iovecs: Iovecs,
}

impl Pending {
    /// `iovecs` are `(host address, length)` of the guest's data buffers, in order.
    pub fn new(head: u16, status: GuestAddress, kind: Kind, sector: u64) -> Self {
        Self {
            head,
            status,
            kind,
            sector,
            bytes: 0,
            orphan: false,
            iovecs: Iovecs(Vec::new()),
        }
    }

    /// Add a data buffer at host address `ptr`, `len` bytes long.
    pub fn push_buffer(&mut self, ptr: *mut u8, len: usize) {
        self.iovecs.0.push(libc::iovec {
            iov_base: ptr.cast(),
            iov_len: len,
        });
        self.bytes += len as u64;
    }
}

/// A completed request and the kernel's result: bytes moved, or a negative errno.
pub struct Done {
    pub pending: Pending,
    pub result: i32,
}

impl Done {
    /// The result as the sync engine's calls would give it: the whole transfer, or an error
    /// (a short transfer is `UnexpectedEof`: the image ended before the request did).
    pub fn outcome(&self) -> io::Result<()> {
        match u64::try_from(self.result) {
            Err(_) => Err(io::Error::from_raw_os_error(-self.result)),
            Ok(n) if self.pending.kind != Kind::Flush && n != self.pending.bytes => {
                Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!("{n} of {} bytes transferred", self.pending.bytes),
                ))
            }
            Ok(_) => Ok(()),
        }
    }
}

/// One device's ring.
pub struct Uring {
    ring: IoUring,
    /// Signalled by the kernel for each completion.
    event: EventFd,
    /// Requests in flight, by the slot their submission carries as user data.
    slots: Vec<Option<Pending>>,
    free: Vec<usize>,
    in_flight: usize,
    /// Submissions pushed but not yet handed to the kernel.
    queued: usize,
}

impl Uring {
    /// A ring for up to `depth` requests in flight (the virtqueue's size bounds them).
    pub fn new(depth: u32) -> io::Result<Self> {
        let ring = IoUring::builder()
            .setup_cqsize(depth.saturating_mul(2))
            .build(depth)?;
        let event = EventFd::new(EFD_NONBLOCK | libc::EFD_CLOEXEC)?;
        ring.submitter().register_eventfd(event.as_raw_fd())?;
        Ok(Self {
            ring,
            event,
            slots: Vec::new(),
            free: Vec::new(),
            in_flight: 0,
            queued: 0,
        })
    }

    /// The eventfd that becomes readable when requests complete.
    pub fn event_fd(&self) -> RawFd {
        self.event.as_raw_fd()
    }

    /// Requests submitted (or queued) and not yet reaped.
    pub fn in_flight(&self) -> usize {
        self.in_flight
    }

    /// Queue `pending` on file `fd` at byte `offset`. The kernel sees it at the next
    /// [`Self::submit`]. Fails only if the submission ring cannot take it even after
    /// handing it what it holds.
    pub fn push(&mut self, fd: RawFd, offset: u64, pending: Pending) -> io::Result<()> {
        let slot = match self.free.pop() {
            Some(slot) => slot,
            None => {
                self.slots.push(None);
                self.slots.len() - 1
            }
        };
        let iov = &pending.iovecs.0;
        let count = u32::try_from(iov.len()).unwrap_or(u32::MAX);
        let entry = match pending.kind {
            Kind::Read => opcode::Readv::new(types::Fd(fd), iov.as_ptr(), count)
                .offset(offset)
                .build(),
            Kind::Write => opcode::Writev::new(types::Fd(fd), iov.as_ptr(), count)
                .offset(offset)
                .build(),
            // Started only once everything submitted before it has completed.
            Kind::Flush => opcode::Fsync::new(types::Fd(fd))
                .flags(types::FsyncFlags::DATASYNC)
                .build()
                .flags(squeue::Flags::IO_DRAIN),
        }
        .user_data(slot as u64);
        // SAFETY: the entry names buffers (guest memory, and the iovec array, which lives in
        // `slots` and does not move: the Vec's heap block stays put while the slot holds it)
        // that stay valid until its completion is reaped; the device drains the ring before
        // the file or the memory goes away.
        let mut pushed = unsafe { self.ring.submission().push(&entry).is_ok() };
        if !pushed {
            self.submit()?;
            // SAFETY: as above.
            pushed = unsafe { self.ring.submission().push(&entry).is_ok() };
        }
        if !pushed {
            self.free.push(slot);
            return Err(io::Error::new(
                io::ErrorKind::WouldBlock,
                "the io_uring submission ring is full",
            ));
        }
        self.slots[slot] = Some(pending);
        self.in_flight += 1;
        self.queued += 1;
        Ok(())
    }

    /// Hand the queued submissions to the kernel (one io_uring_enter), if there are any.
    pub fn submit(&mut self) -> io::Result<()> {
        while self.queued > 0 {
            match self.ring.submit() {
                Ok(n) => self.queued = self.queued.saturating_sub(n.max(1)),
                Err(e) if e.raw_os_error() == Some(libc::EINTR) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// The requests that completed, in the order the kernel finished them (not the order they
    /// were submitted in). Clears the eventfd first, so a completion posted meanwhile wakes
    /// the event loop again.
    pub fn reap(&mut self) -> Vec<Done> {
        let _ = self.event.read();
        let mut done = Vec::new();
        for cqe in self.ring.completion() {
            let slot = cqe.user_data() as usize;
            if let Some(pending) = self.slots.get_mut(slot).and_then(Option::take) {
                self.free.push(slot);
                self.in_flight -= 1;
                done.push(Done {
                    pending,
                    result: cqe.result(),
                });
            }
        }
        done
    }

    /// The driver reset the device: the requests in flight complete, but are answered to
    /// nobody (their chains belong to the old queues).
    pub fn orphan_all(&mut self) {
        for pending in self.slots.iter_mut().flatten() {
            pending.orphan = true;
        }
    }

    /// Submit what is queued and wait until every request in flight has completed; returns
    /// them all (for the caller to answer).
    pub fn drain(&mut self) -> io::Result<Vec<Done>> {
        let mut all = Vec::new();
        self.submit()?;
        while self.in_flight > 0 {
            all.extend(self.reap());
            if self.in_flight == 0 {
                break;
            }
            match self.ring.submit_and_wait(1) {
                Ok(_) => {}
                Err(e) if e.raw_os_error() == Some(libc::EINTR) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(all)
    }
}

#[cfg(test)]
mod tests {
    use std::os::fd::{FromRawFd, OwnedFd};

    use super::*;

    fn set_nonblock(fd: RawFd, on: bool) {
        // SAFETY: fcntl on a descriptor the test owns; no memory is passed.
        unsafe {
            let flags = libc::fcntl(fd, libc::F_GETFL);
            let flags = if on {
                flags | libc::O_NONBLOCK
            } else {
                flags & !libc::O_NONBLOCK
            };
            assert_eq!(libc::fcntl(fd, libc::F_SETFL, flags), 0);
        }
    }

    /// A write that cannot finish (into a full pipe) holds back the flush after it: the flush
    /// (which on a pipe would fail at once) completes only after the write has.
    #[test]
    fn a_flush_waits_for_the_writes_before_it() {
        let test = "a_flush_waits_for_the_writes_before_it";
        let mut ring = match Uring::new(8) {
            Ok(r) => r,
            Err(e) => {
                let why = format!("this host refuses io_uring: {e}");
                return kite_testkit::skip(test, kite_testkit::Need::IoUring, &why);
            }
        };
        let mut fds = [0; 2];
        // SAFETY: pipe2 fills the two descriptors, which the test then owns.
        assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
        // SAFETY: both are fresh descriptors owned by nobody else.
        let (r, w) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        // Fill the pipe, so that the ring's write must wait for a reader.
        set_nonblock(w.as_raw_fd(), true);
        let chunk = [0u8; 4096];
        // SAFETY: writes from a local buffer.
        while unsafe { libc::write(w.as_raw_fd(), chunk.as_ptr().cast(), chunk.len()) } > 0 {}
        set_nonblock(w.as_raw_fd(), false);
        let mut data = vec![7u8; 4096];
        let mut write = Pending::new(1, GuestAddress(0), Kind::Write, 0);
        write.push_buffer(data.as_mut_ptr(), data.len());
        ring.push(w.as_raw_fd(), 0, write).unwrap();
        let flush = Pending::new(2, GuestAddress(0), Kind::Flush, 0);
        ring.push(w.as_raw_fd(), 0, flush).unwrap();
        ring.submit().unwrap();
        std::thread::sleep(std::time::Duration::from_millis(100));
        assert!(
            ring.reap().is_empty(),
            "nothing may complete while the write waits"
        );
        assert_eq!(ring.in_flight(), 2);
        // A reader empties the pipe: the write goes through, then the flush runs.
        let reader = std::thread::spawn(move || {
            let mut buf = vec![0u8; 1 << 20];
            // SAFETY: reads into a local buffer, until the write end closes.
            while unsafe { libc::read(r.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) } > 0 {}
        });
        let done = ring.drain().unwrap();
        drop(w);
        reader.join().unwrap();
        let heads: Vec<u16> = done.iter().map(|d| d.pending.head).collect();
        assert_eq!(heads, [1, 2], "the write completes before the flush");
        assert!(done[0].outcome().is_ok());
        assert_eq!(ring.in_flight(), 0);
    }
}
