//! virtio-blk (virtio 1.2, section 5.2) over a raw image file: read, write, flush, get-id, and
//! discard / write-zeroes where the host file system can punch holes / zero ranges.
//!
//! A request is checked whole before any byte moves: its header, the direction and size of its
//! data, its sector range and every buffer's place in guest RAM. A bad request is answered with
//! VIRTIO_BLK_S_IOERR or VIRTIO_BLK_S_UNSUPP in its status byte; a chain with no status byte to
//! answer in puts the device into the needs-reset state.
//!
//! The host's own I/O errors (a full file system, an image shrunk under the VM) answer the
//! request with IOERR and are logged in the host's words (`error.rs`). A failed write makes
//! the next flush fail too, as fsync does after a failed write-back; a failed fdatasync makes
//! every later flush fail, since the kernel may have dropped the data it could not write.

use std::os::fd::AsRawFd;

use log::warn;
use virtio_bindings::virtio_blk::{
    VIRTIO_BLK_F_DISCARD, VIRTIO_BLK_F_FLUSH, VIRTIO_BLK_F_RO, VIRTIO_BLK_F_SEG_MAX,
    VIRTIO_BLK_F_SIZE_MAX, VIRTIO_BLK_F_WRITE_ZEROES, VIRTIO_BLK_S_OK, VIRTIO_BLK_T_DISCARD,
    VIRTIO_BLK_T_FLUSH, VIRTIO_BLK_T_GET_ID, VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT,
    VIRTIO_BLK_T_WRITE_ZEROES, VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP,
};
use virtio_bindings::virtio_ids::VIRTIO_ID_BLOCK;
use vm_memory::{Bytes, GuestAddress};
use vmm_sys_util::epoll::EventSet;

use super::chain::{Bufs, Chain};
use super::device::{Active, BackendSet, Completion, LogLimiter, VirtioDevice, read_config_bytes};
use super::disk::{Disk, SECTOR_SIZE};
use crate::memory::GuestMem;
use error::{HostErrorLog, Op, RequestError};

mod error;
mod sync_io;
mod uring;
mod uring_io;

use uring::{Kind, Uring};

/// Tokens of a uring device's backend set.
const LIMITER: u64 = 0;
const RING: u64 = 1;

pub const QUEUE_SIZE: u16 = 256;
/// Largest single data buffer the driver may use (bounds the work of one read or write call).
const SIZE_MAX: u32 = 1 << 20;
/// Data buffers per request: the queue less the header and the status.
const SEG_MAX: u32 = QUEUE_SIZE as u32 - 2;
/// Segments per discard or write-zeroes request.
pub(crate) const MAX_RANGE_SEGMENTS: u32 = 16;
/// Hint for discard granularity, in sectors (4 KiB, the usual file system block).
const DISCARD_ALIGNMENT: u32 = 8;
const HEADER_LEN: u64 = 16;
const RANGE_LEN: u64 = 16;

/// A discard or write-zeroes segment, checked against the disk.
struct Range {
    offset: u64,
    len: u64,
    unmap: bool,
}

/// Requests completed, data bytes they moved (either way) and failed requests, for the
/// metrics line.
#[derive(Debug, Default)]
pub struct BlockStats {
    pub requests: std::sync::atomic::AtomicU64,
    pub bytes: std::sync::atomic::AtomicU64,
    pub errors: std::sync::atomic::AtomicU64,
    /// `PATCH /drives` that changed the backing file, and those that failed.
    pub updates: std::sync::atomic::AtomicU64,
    pub update_fails: std::sync::atomic::AtomicU64,
}

impl BlockStats {
    pub fn snapshot(&self) -> Vec<(&'static str, u64)> {
        use std::sync::atomic::Ordering::Relaxed;
        vec![
            ("requests", self.requests.load(Relaxed)),
            ("bytes", self.bytes.load(Relaxed)),
            ("errors", self.errors.load(Relaxed)),
            ("updates", self.updates.load(Relaxed)),
            ("update_fails", self.update_fails.load(Relaxed)),
        ]
    }
}

/// The request side of the device: the disk and what it logs.
struct Requests {
    disk: Disk,
    /// Bad requests (the guest's doing).
    log: LogLimiter,
    /// The host's I/O errors.
    host_log: HostErrorLog,
    /// A write (or discard, write-zeroes) failed since the last flush: the next flush says so.
    failed_write: Option<(Op, String)>,
    /// fdatasync failed once: every later flush fails.
    failed_sync: Option<String>,
    stats: std::sync::Arc<BlockStats>,
    /// `rate_limiter`: a request the buckets cannot take now waits on the queue.
    limiter: super::rate_limiter::RateLimiter,
    /// `io_engine: "Async"`: reads, writes and flushes go through io_uring.
    uring: Option<Uring>,
}

/// A virtio-blk device.
pub struct Block {
    requests: Requests,
    features: u64,
    config: Vec<u8>,
    active: Option<Active>,
    /// Names the device in log lines.
    name: String,
    /// For chains that put the device into the needs-reset state.
    chain_log: LogLimiter,
    /// With io_uring: the rate limiter's timer and the ring's eventfd, watched together.
    backend: Option<BackendSet>,
}

fn put(config: &mut [u8], offset: usize, bytes: &[u8]) {
    config[offset..offset + bytes.len()].copy_from_slice(bytes);
}

impl Block {
    pub fn new(disk: Disk) -> Self {
        let mut features =
            (1 << VIRTIO_BLK_F_FLUSH) | (1 << VIRTIO_BLK_F_SEG_MAX) | (1 << VIRTIO_BLK_F_SIZE_MAX);
        if disk.readonly {
            features |= 1 << VIRTIO_BLK_F_RO;
        }
        if disk.punch_hole {
            features |= 1 << VIRTIO_BLK_F_DISCARD;
        }
        if disk.zero_range {
            features |= 1 << VIRTIO_BLK_F_WRITE_ZEROES;
        }
        // struct virtio_blk_config up to write_zeroes_may_unmap and its padding.
        let mut config = vec![0u8; 60];
        put(&mut config, 0, &disk.sectors.to_le_bytes());
        put(&mut config, 8, &SIZE_MAX.to_le_bytes());
        put(&mut config, 12, &SEG_MAX.to_le_bytes());
        put(&mut config, 34, &1u16.to_le_bytes()); // num_queues
        put(&mut config, 36, &u32::MAX.to_le_bytes()); // max_discard_sectors
        put(&mut config, 40, &MAX_RANGE_SEGMENTS.to_le_bytes());
        put(&mut config, 44, &DISCARD_ALIGNMENT.to_le_bytes());
        put(&mut config, 48, &u32::MAX.to_le_bytes()); // max_write_zeroes_sectors
        put(&mut config, 52, &MAX_RANGE_SEGMENTS.to_le_bytes());
        config[56] = u8::from(disk.punch_hole); // write_zeroes_may_unmap
        Self {
            name: name(&disk),
            requests: Requests {
                disk,
                log: LogLimiter::new(),
                host_log: HostErrorLog::new(),
                failed_write: None,
                failed_sync: None,
                stats: Default::default(),
                limiter: super::rate_limiter::RateLimiter::new(Default::default()),
                uring: None,
            },
            features,
            config,
            active: None,
            chain_log: LogLimiter::new(),
            backend: None,
        }
    }

    /// A device whose reads, writes and flushes go through an io_uring of its own
    /// (`io_engine: "Async"`). Fails where the host gives no io_uring (an old kernel, a
    /// container's seccomp profile).
    pub fn with_uring(disk: Disk) -> std::io::Result<Self> {
        let mut block = Self::new(disk);
        let ring = Uring::new(u32::from(QUEUE_SIZE))?;
        let backend = BackendSet::new()?;
        backend.add(ring.event_fd(), EventSet::IN, RING)?;
        if let Some(fd) = block.requests.limiter.fd() {
            backend.add(fd, EventSet::IN, LIMITER)?;
        }
        block.requests.uring = Some(ring);
        block.backend = Some(backend);
        Ok(block)
    }

    /// Requests the kernel is still working on (io_uring only).
    pub fn in_flight(&self) -> usize {
        self.requests.uring.as_ref().map_or(0, Uring::in_flight)
    }

    /// Make everything the guest wrote durable (at the end of the run), and log the host I/O
    /// errors that were counted but not logged.
    pub fn sync(&mut self) -> std::io::Result<()> {
        self.drain();
        self.requests.host_log.finish(&self.name);
        self.requests.disk.sync()
    }

    pub fn path(&self) -> &std::path::Path {
        &self.requests.disk.path
    }

    /// The engine requests go through.
    pub fn io_engine(&self) -> super::IoEngine {
        match self.requests.uring {
            Some(_) => super::IoEngine::Async,
            None => super::IoEngine::Sync,
        }
    }

    pub fn readonly(&self) -> bool {
        self.requests.disk.readonly
    }

    /// Disk size in 512-byte sectors, as the guest sees it in the configuration space.
    pub fn sectors(&self) -> u64 {
        self.requests.disk.sectors
    }

    /// Back the device with `disk` from now on (`PATCH /drives`): the new capacity goes into
    /// the configuration space, and a failed write or flush of the old file is forgotten. The
    /// caller raises the configuration change interrupt. Returns the old disk.
    pub fn replace_disk(&mut self, disk: Disk) -> Disk {
        // No request may still name the old file.
        self.drain();
        put(&mut self.config, 0, &disk.sectors.to_le_bytes());
        self.requests.failed_write = None;
        self.requests.failed_sync = None;
        self.name = name(&disk);
        std::mem::replace(&mut self.requests.disk, disk)
    }

    /// `PATCH /drives` `rate_limiter`, or the drive's limits at start.
    pub fn update_rate_limit(&mut self, u: super::RateLimitUpdate) {
        self.requests.limiter.update(u);
    }

    /// Release the current file's lock (see [`Disk::unlock`]).
    pub fn unlock_disk(&self) {
        self.requests.disk.unlock();
    }

    /// Take the current file's lock back; false if another process holds it now.
    pub fn relock_disk(&self) -> bool {
        self.requests.disk.relock()
    }

    pub fn stats(&self) -> std::sync::Arc<BlockStats> {
        self.requests.stats.clone()
    }
}

impl Requests {
    /// Byte offset of `count` sectors at `sector`, if they lie on the disk.
    fn check_range(&self, sector: u64, count: u64) -> Result<u64, RequestError> {
        let capacity = self.disk.sectors;
        let fits = sector.checked_add(count).is_some_and(|end| end <= capacity);
        if !fits {
            return Err(RequestError::OutOfRange {
                sector,
                count,
                capacity,
            });
        }
        Ok(sector * SECTOR_SIZE)
    }

    /// Answer one chain: write its status byte and say how much of it was written.
    fn handle(&mut self, mem: &GuestMem, chain: &Chain) -> Completion {
        let Some(status_addr) = chain.status_addr(mem) else {
            return Completion::Fatal(format!(
                "request {} has no device-writable status byte in guest memory",
                chain.head()
            ));
        };
        use std::sync::atomic::Ordering::Relaxed;
        // The data bytes: all but the 16-byte header and the status byte.
        if !self.limiter.consume(chain.total_len().saturating_sub(17)) {
            return Completion::Later;
        }
        self.stats.requests.fetch_add(1, Relaxed);
        let result = match self.execute(mem, chain, status_addr) {
            Ok(None) => return Completion::Pending,
            Ok(Some(written)) => Ok(written),
            Err(e) => Err(e),
        };
        let (status, written) = self.answer(result);
        match mem.write_obj(status, status_addr) {
            Ok(()) => Completion::Used(written.saturating_add(1)),
            Err(e) => Completion::Fatal(format!("cannot write request status: {e}")),
        }
    }

    /// The status byte and data length of a request's answer; counts and logs a failure.
    fn answer(&mut self, result: Result<u32, RequestError>) -> (u8, u32) {
        match result {
            Ok(written) => (VIRTIO_BLK_S_OK as u8, written),
            Err(e) => {
                self.stats
                    .errors
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if e.is_host() {
                    self.host_log.report(&name(&self.disk), &e);
                } else if self.log.allow() {
                    warn!("{}: bad request: {e}", name(&self.disk));
                }
                (e.status(), 0)
            }
        }
    }

    /// Carry out a request; returns how many data bytes went to the driver, or `None` if it
    /// went to the io_uring (its completion answers it).
    fn execute(
        &mut self,
        mem: &GuestMem,
        chain: &Chain,
        status_addr: GuestAddress,
    ) -> Result<Option<u32>, RequestError> {
        let (readable, writable) = chain.split(mem)?;
        // The status byte is the last writable byte; what precedes it is data for the driver.
        let (data_in, _status) = writable
            .split_at(writable.len().saturating_sub(1))
            .unwrap_or_default();
        let Some((header, data_out)) = readable.split_at(HEADER_LEN) else {
            return Err(RequestError::ShortHeader(readable.len()));
        };
        let mut raw = [0u8; HEADER_LEN as usize];
        header.read_exact(mem, &mut raw)?;
        self.stats.bytes.fetch_add(
            data_out.len().saturating_add(data_in.len()),
            std::sync::atomic::Ordering::Relaxed,
        );
        let kind = u32::from_le_bytes([raw[0], raw[1], raw[2], raw[3]]);
        let sector = u64::from_le_bytes([
            raw[8], raw[9], raw[10], raw[11], raw[12], raw[13], raw[14], raw[15],
        ]);
        let expect = |readable: bool, writable: bool| {
            if (data_out.is_empty() || readable) && (data_in.is_empty() || writable) {
                Ok(())
            } else {
                Err(RequestError::Direction {
                    kind,
                    readable: data_out.len(),
                    writable: data_in.len(),
                })
            }
        };
        match kind {
            VIRTIO_BLK_T_IN => {
                expect(false, true)?;
                let offset = self.data_range(sector, data_in.len())?;
                if self.uring.is_some() {
                    let head = chain.head();
                    self.submit_async(
                        mem,
                        Kind::Read,
                        &data_in,
                        offset,
                        sector,
                        head,
                        status_addr,
                    )?;
                    return Ok(None);
                }
                // Reading (not mapping) the file means an image shrunk under the VM gives an
                // early end of file here, never a SIGBUS.
                sync_io::read(mem, &data_in, &self.disk.file, offset)
                    .map_err(|e| self.short(e, Op::Read, sector, data_in.len()))?;
                // The data is at most the chain's length, which the queue crate caps at u32.
                Ok(Some(u32::try_from(data_in.len()).unwrap_or(u32::MAX)))
            }
            VIRTIO_BLK_T_OUT => {
                if self.disk.readonly {
                    return Err(RequestError::ReadOnly);
                }
                expect(true, false)?;
                let offset = self.data_range(sector, data_out.len())?;
                if self.uring.is_some() {
                    let head = chain.head();
                    self.submit_async(
                        mem,
                        Kind::Write,
                        &data_out,
                        offset,
                        sector,
                        head,
                        status_addr,
                    )
                    .inspect_err(|e| self.note_failed_write(Op::Write, e))?;
                    return Ok(None);
                }
                sync_io::write(mem, &data_out, &self.disk.file, offset)
                    .map_err(|e| self.short(e, Op::Write, sector, data_out.len()))
                    .inspect_err(|e| self.note_failed_write(Op::Write, e))?;
                Ok(Some(0))
            }
            VIRTIO_BLK_T_FLUSH => {
                expect(false, false)?;
                if self.uring.is_some() {
                    if let Some(why) = &self.failed_sync {
                        return Err(RequestError::SyncFailedBefore(why.clone()));
                    }
                    // IOSQE_IO_DRAIN: after every write submitted before it.
                    let none = Bufs::default();
                    let head = chain.head();
                    self.submit_async(mem, Kind::Flush, &none, 0, 0, head, status_addr)?;
                    return Ok(None);
                }
                self.flush()?;
                Ok(Some(0))
            }
            VIRTIO_BLK_T_GET_ID => {
                expect(false, true)?;
                if data_in.is_empty() {
                    return Err(RequestError::Direction {
                        kind,
                        readable: 0,
                        writable: 0,
                    });
                }
                let n = data_in.write(mem, &self.disk.id)?;
                Ok(Some(n as u32))
            }
            VIRTIO_BLK_T_DISCARD | VIRTIO_BLK_T_WRITE_ZEROES => {
                let discard = kind == VIRTIO_BLK_T_DISCARD;
                let supported = if discard {
                    self.disk.punch_hole
                } else {
                    self.disk.zero_range
                };
                if !supported {
                    return Err(RequestError::Unsupported(kind));
                }
                expect(true, false)?;
                let ranges = self.read_ranges(mem, &data_out, discard)?;
                let op = if discard {
                    Op::Discard
                } else {
                    Op::WriteZeroes
                };
                for r in ranges {
                    // Zeroes may be written by punching a hole when the driver allows unmapping.
                    let punch = discard || (r.unmap && self.disk.punch_hole);
                    self.disk
                        .fallocate(r.offset, r.len, punch)
                        .map_err(|source| RequestError::Host {
                            op,
                            sector: r.offset / SECTOR_SIZE,
                            bytes: r.len,
                            source,
                        })
                        .inspect_err(|e| self.note_failed_write(op, e))?;
                }
                Ok(Some(0))
            }
            _ => Err(RequestError::Unsupported(kind)),
        }
    }

    /// What a read or write of `bytes` at `sector` that ended short means for the guest.
    fn short(&self, e: sync_io::Short, op: Op, sector: u64, bytes: u64) -> RequestError {
        error::short_error(e, op, sector, bytes, self.disk.sectors)
    }

    /// Remember a failed write for the next flush (only the host's failures: a bad request
    /// changed nothing).
    fn note_failed_write(&mut self, op: Op, e: &RequestError) {
        if let RequestError::Host { source, .. } = e {
            self.failed_write = Some((op, source.to_string()));
        }
    }

    /// FLUSH: make the image durable, then report what went wrong since the last flush.
    fn flush(&mut self) -> Result<(), RequestError> {
        if let Some(why) = &self.failed_sync {
            return Err(RequestError::SyncFailedBefore(why.clone()));
        }
        if let Err(e) = self.disk.sync() {
            self.failed_sync = Some(e.to_string());
            return Err(RequestError::Sync(e));
        }
        match self.failed_write.take() {
            Some((op, error)) => Err(RequestError::EarlierWrite { op, error }),
            None => Ok(()),
        }
    }

    /// Byte offset of a read or write of `len` bytes at `sector`, checked.
    fn data_range(&self, sector: u64, len: u64) -> Result<u64, RequestError> {
        if !len.is_multiple_of(SECTOR_SIZE) {
            return Err(RequestError::PartialSector(len));
        }
        self.check_range(sector, len / SECTOR_SIZE)
    }

    /// Parse and check every segment of a discard or write-zeroes request.
    fn read_ranges(
        &self,
        mem: &GuestMem,
        data: &Bufs,
        discard: bool,
    ) -> Result<Vec<Range>, RequestError> {
        let len = data.len();
        let count = len / RANGE_LEN;
        if !len.is_multiple_of(RANGE_LEN) || count == 0 || count > u64::from(MAX_RANGE_SEGMENTS) {
            return Err(RequestError::Segments(count));
        }
        let mut raw = vec![0u8; len as usize];
        data.read_exact(mem, &mut raw)?;
        let mut ranges = Vec::with_capacity(count as usize);
        for seg in raw.chunks_exact(RANGE_LEN as usize) {
            let mut sector = [0u8; 8];
            sector.copy_from_slice(&seg[0..8]);
            let sector = u64::from_le_bytes(sector);
            let sectors = u32::from_le_bytes([seg[8], seg[9], seg[10], seg[11]]);
            let flags = u32::from_le_bytes([seg[12], seg[13], seg[14], seg[15]]);
            // Discard takes no flags at all; write zeroes only "unmap".
            let allowed = if discard {
                0
            } else {
                VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP
            };
            if flags & !allowed != 0 {
                return Err(RequestError::Flags(flags));
            }
            let offset = self.check_range(sector, u64::from(sectors))?;
            ranges.push(Range {
                offset,
                len: u64::from(sectors) * SECTOR_SIZE,
                unmap: flags & VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP != 0,
            });
        }
        Ok(ranges)
    }
}

/// Set up (and drop) a small ring: whether this host allows io_uring.
pub(crate) fn probe_uring() -> std::io::Result<()> {
    Uring::new(1).map(drop)
}

/// How a disk is named in log lines.
fn name(disk: &Disk) -> String {
    format!("virtio-blk {}", disk.path.display())
}

impl VirtioDevice for Block {
    fn active(&self) -> Option<&Active> {
        self.active.as_ref()
    }

    fn limiters(&self) -> Vec<super::rate_limiter::LimiterState> {
        vec![self.requests.limiter.state()]
    }

    fn restore_limiters(
        &mut self,
        saved: &[super::rate_limiter::LimiterState],
    ) -> Result<(), String> {
        super::device::restore_each(&mut [&mut self.requests.limiter], saved)
    }

    fn device_type(&self) -> u32 {
        VIRTIO_ID_BLOCK
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE]
    }

    fn features(&self) -> u64 {
        self.features
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.config, offset, data);
    }

    fn activate(&mut self, active: Active) {
        self.active = Some(active);
    }

    fn reset(&mut self) {
        // Called on a vCPU thread: no I/O here. Requests the sync engine took from the queue
        // were completed before we got the lock; the io_uring's are left to complete, but no
        // longer answered. The disk is synced at shutdown and on drop.
        if let Some(ring) = self.requests.uring.as_mut() {
            ring.orphan_all();
        }
        self.active = None;
    }

    fn backend_fd(&self) -> Option<std::os::fd::RawFd> {
        match &self.backend {
            Some(set) => Some(set.as_raw_fd()),
            None => self.requests.limiter.fd(),
        }
    }

    /// The rate limiter's timer (the tokens a waiting request needs are there) or, with
    /// io_uring, completions.
    fn process_backend(&mut self) {
        let mut timer = self.backend.is_none();
        if let Some(set) = &self.backend {
            let mut events = [vmm_sys_util::epoll::EpollEvent::default(); 2];
            let mut ring = false;
            for event in set.ready(&mut events) {
                match event.data() {
                    LIMITER => timer = true,
                    _ => ring = true,
                }
            }
            if ring && let Some(uring) = self.requests.uring.as_mut() {
                let done = uring.reap();
                self.complete(done);
            }
        }
        if timer && self.requests.limiter.expired() && self.process_queue(0) {
            // Spent its budget with work left: come back after the other devices.
            self.requests.limiter.wake_soon();
        }
    }

    fn process_queue(&mut self, index: usize) -> bool {
        let Some(active) = self.active.as_mut() else {
            return false;
        };
        let requests = &mut self.requests;
        let more = active.drain_queue(index, &self.name, &mut self.chain_log, |mem, chain| {
            requests.handle(mem, chain)
        });
        self.submit();
        more
    }
}

impl Drop for Block {
    /// The kernel may still be writing into guest memory: wait for it.
    fn drop(&mut self) {
        self.drain();
    }
}

#[cfg(test)]
mod fault_tests;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod uring_tests;
