//! The io_uring side of the device (`io_engine: "Async"`): handing reads, writes and flushes to
//! the ring straight from and into the guest's buffers, and answering their completions on the
//! used ring in whatever order they come.

use std::os::fd::AsRawFd;

use vm_memory::bitmap::Bitmap;
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend};

use super::uring::{Done, Kind, Pending};
use super::{Block, Requests};
use crate::devices::virtio::block::error::{Op, RequestError};
use crate::devices::virtio::chain::Bufs;
use crate::memory::GuestMem;

impl Block {
    /// Wait for every request in flight and answer it on the used ring (io_uring only; the
    /// sync engine never leaves one). Pause, snapshot, `PATCH /drives` and shutdown call it.
    pub fn drain(&mut self) {
        let Some(ring) = self.requests.uring.as_mut() else {
            return;
        };
        match ring.drain() {
            Ok(done) => self.complete(done),
            Err(e) => log::error!(
                "{}: cannot wait for the io_uring requests in flight: {e}",
                self.name
            ),
        }
    }

    /// Answer completed io_uring requests: status byte, used ring, one interrupt.
    pub(super) fn complete(&mut self, done: Vec<Done>) {
        if done.is_empty() {
            return;
        }
        for d in done {
            let head = d.pending.head;
            let status_addr = d.pending.status;
            let orphan = d.pending.orphan;
            let result = self.requests.finish(&d);
            let (status, written) = self.requests.answer(result);
            let Some(active) = self.active.as_mut().filter(|a| !orphan && !a.is_broken()) else {
                // Taken before a reset (the driver no longer waits for it), or the device
                // needs a reset and leaves its queues alone.
                continue;
            };
            match active.mem.write_obj(status, status_addr) {
                Ok(()) => active.add_used(
                    0,
                    head,
                    written.saturating_add(1),
                    &self.name,
                    &mut self.chain_log,
                ),
                Err(e) => log::warn!("{}: cannot write request status: {e}", self.name),
            }
        }
        if let Some(active) = self.active.as_mut() {
            active.notify_used(0);
        }
    }

    /// Hand what `process_queue` queued to the kernel.
    pub(super) fn submit(&mut self) {
        if let Some(ring) = self.requests.uring.as_mut()
            && let Err(e) = ring.submit()
            && self.requests.log.allow()
        {
            log::warn!("{}: io_uring submission failed: {e}", self.name);
        }
    }
}

impl Requests {
    /// What a completed io_uring request means, as the sync engine would have found it.
    pub(super) fn finish(&mut self, done: &Done) -> Result<u32, RequestError> {
        let p = &done.pending;
        let outcome = done.outcome();
        match p.kind {
            Kind::Read => match outcome {
                Ok(()) => Ok(u32::try_from(p.bytes).unwrap_or(u32::MAX)),
                Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                    Err(RequestError::ImageShrunk {
                        sector: p.sector,
                        capacity: self.disk.sectors,
                    })
                }
                Err(source) => Err(RequestError::Host {
                    op: Op::Read,
                    sector: p.sector,
                    bytes: p.bytes,
                    source,
                }),
            },
            Kind::Write => outcome
                .map(|()| 0)
                .map_err(|source| RequestError::Host {
                    op: Op::Write,
                    sector: p.sector,
                    bytes: p.bytes,
                    source,
                })
                .inspect_err(|e| self.note_failed_write(Op::Write, e)),
            Kind::Flush => {
                if let Err(e) = outcome {
                    self.failed_sync = Some(e.to_string());
                    return Err(RequestError::Sync(e));
                }
                match self.failed_write.take() {
                    Some((op, error)) => Err(RequestError::EarlierWrite { op, error }),
                    None => Ok(0),
                }
            }
        }
    }

    /// Queue a read, write or flush on the io_uring, straight from and into the guest's
    /// buffers; its completion answers the chain.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn submit_async(
        &mut self,
        mem: &GuestMem,
        kind: Kind,
        bufs: &Bufs,
        offset: u64,
        sector: u64,
        head: u16,
        status: GuestAddress,
    ) -> Result<(), RequestError> {
        let mut pending = Pending::new(head, status, kind, sector);
        for buf in bufs.iter() {
            let slice = mem.get_slice(buf.addr, buf.len as usize)?;
            if kind == Kind::Read {
                // The kernel writes these pages behind vm-memory's back: a Diff snapshot (taken
                // only after the ring is drained) must find them dirty.
                slice.bitmap().mark_dirty(0, slice.len());
            }
            pending.push_buffer(slice.ptr_guard_mut().as_ptr(), slice.len());
        }
        let bytes = pending.bytes;
        let fd = self.disk.file.as_raw_fd();
        let Some(ring) = self.uring.as_mut() else {
            return Ok(());
        };
        ring.push(fd, offset, pending)
            .map_err(|source| RequestError::Host {
                op: if kind == Kind::Read {
                    Op::Read
                } else {
                    Op::Write
                },
                sector,
                bytes,
                source,
            })
    }
}
