//! Why a virtio-blk request failed, and how the host's own I/O errors are logged.
//!
//! A request the guest got wrong is a "bad request" (its fault; the log line says what was
//! wrong with it). An error of the host's file or file system (a full disk, an image shrunk
//! under the VM, a failing device) is logged with the host's own words, at most one line per
//! device a minute, since a guest retrying a full disk would otherwise flood the log.

use std::io;
use std::time::{Duration, Instant};

use log::{error, warn};
use virtio_bindings::virtio_blk::{VIRTIO_BLK_S_IOERR, VIRTIO_BLK_S_UNSUPP};

use super::MAX_RANGE_SEGMENTS;
use super::sync_io::Short;
use crate::devices::virtio::chain::LayoutError;

/// What the host was doing when its I/O failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    Read,
    Write,
    Discard,
    WriteZeroes,
}

impl std::fmt::Display for Op {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Op::Read => "read",
            Op::Write => "write",
            Op::Discard => "discard",
            Op::WriteZeroes => "write-zeroes",
        })
    }
}

/// Why a request failed; its status byte says IOERR or UNSUPP.
#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    #[error(transparent)]
    Layout(#[from] LayoutError),
    #[error("request header is {0} bytes, not 16")]
    ShortHeader(u64),
    #[error("request type {0} is not supported")]
    Unsupported(u32),
    #[error("write to a readonly disk")]
    ReadOnly,
    #[error(
        "request type {kind} carries {readable} device-readable and {writable} device-writable data bytes"
    )]
    Direction {
        kind: u32,
        readable: u64,
        writable: u64,
    },
    #[error("data length {0} is not a whole number of sectors")]
    PartialSector(u64),
    #[error("sectors {sector}+{count} are past the end of the disk ({capacity} sectors)")]
    OutOfRange {
        sector: u64,
        count: u64,
        capacity: u64,
    },
    #[error("{0} range segments (1 to {MAX_RANGE_SEGMENTS} of 16 bytes each are allowed)")]
    Segments(u64),
    #[error("range flags {0:#x} are not supported")]
    Flags(u32),
    #[error("guest memory access failed")]
    Memory(#[from] vm_memory::GuestMemoryError),
    /// The host's file or file system failed: not the guest's doing.
    #[error("{op} of {bytes} bytes at sector {sector} failed on the host: {source}")]
    Host {
        op: Op,
        sector: u64,
        bytes: u64,
        #[source]
        source: io::Error,
    },
    /// A read found the image file shorter than the disk the guest was given.
    #[error(
        "read at sector {sector} is past the end of the image file, which is shorter than the \
         {capacity} sectors the guest was given (was it truncated while the VM ran?)"
    )]
    ImageShrunk { sector: u64, capacity: u64 },
    /// fdatasync failed: what was written since the last good flush may not be on the image.
    #[error("flush failed on the host: {0}; writes since the last good flush may be lost")]
    Sync(#[source] io::Error),
    /// A flush after a failed write (like fsync after a failed write-back).
    #[error("flush reports an earlier failed {op}: {error}")]
    EarlierWrite { op: Op, error: String },
    /// Every flush after a failed fdatasync fails: the kernel may have dropped the data.
    #[error(
        "flush refused: an earlier flush failed ({0}), so the image may lack data the guest \
             wrote; restart the VM and check the guest's file system"
    )]
    SyncFailedBefore(String),
}

impl RequestError {
    pub fn status(&self) -> u8 {
        match self {
            Self::Unsupported(_) | Self::Flags(_) => VIRTIO_BLK_S_UNSUPP as u8,
            _ => VIRTIO_BLK_S_IOERR as u8,
        }
    }

    /// An error of the host's I/O rather than of the guest's request.
    pub fn is_host(&self) -> bool {
        matches!(
            self,
            Self::Host { .. }
                | Self::ImageShrunk { .. }
                | Self::Sync(_)
                | Self::EarlierWrite { .. }
                | Self::SyncFailedBefore(_)
        )
    }
}

/// What a read or write of `bytes` at `sector` that ended short ([`Short`]) means: the end of
/// the image (shorter than the disk of `capacity` sectors) or the host's I/O error, each named
/// at the sector where it happened; anything else is guest memory.
pub fn short_error(e: Short, op: Op, sector: u64, bytes: u64, capacity: u64) -> RequestError {
    let at = |done: u64| sector + done / super::SECTOR_SIZE;
    match e {
        Short::Eof(done) => RequestError::ImageShrunk {
            sector: at(done),
            capacity,
        },
        Short::Io(done, source) => RequestError::Host {
            op,
            sector: at(done),
            bytes: bytes.saturating_sub(done),
            source,
        },
        Short::Memory(e) => RequestError::Memory(e),
    }
}

/// Logs host I/O errors: the first at once, then at most one line per [`HostErrorLog::WINDOW`],
/// which says how many were not logged in between.
pub struct HostErrorLog {
    last_line: Option<Instant>,
    unlogged: u64,
    last_unlogged: String,
}

impl HostErrorLog {
    pub const WINDOW: Duration = Duration::from_secs(60);

    pub const fn new() -> Self {
        Self {
            last_line: None,
            unlogged: 0,
            last_unlogged: String::new(),
        }
    }

    /// Logs `e` for device `name`, or counts it; returns whether a line was written.
    pub fn report(&mut self, name: &str, e: &RequestError) -> bool {
        let now = Instant::now();
        if self
            .last_line
            .is_some_and(|t| now.duration_since(t) < Self::WINDOW)
        {
            self.unlogged += 1;
            self.last_unlogged = e.to_string();
            return false;
        }
        self.last_line = Some(now);
        let more = std::mem::take(&mut self.unlogged);
        self.last_unlogged.clear();
        if more > 0 {
            error!(
                "{name}: {e}; the guest gets an I/O error ({more} more host I/O errors in the last minute were not logged)"
            );
        } else {
            error!(
                "{name}: {e}; the guest gets an I/O error (further ones are logged at most once a minute)"
            );
        }
        true
    }

    /// At the end of the run: the errors that were counted but never logged.
    pub fn finish(&mut self, name: &str) {
        let more = std::mem::take(&mut self.unlogged);
        if more > 0 {
            warn!(
                "{name}: {more} more host I/O errors were not logged; the last: {}",
                self.last_unlogged
            );
        }
    }
}
