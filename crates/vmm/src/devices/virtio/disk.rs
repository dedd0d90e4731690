//! A raw disk image file: opened with a clear error for each way it can be wrong, locked so that
//! two VMs cannot write it at once, and synced when it goes away.

use std::fs::FileType;
use std::fs::{File, OpenOptions};
use std::io::{self, Seek, SeekFrom};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use log::error;

pub const SECTOR_SIZE: u64 = 512;
/// Length of the GET_ID serial.
pub const ID_LEN: usize = 20;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("disk image {} does not exist; check the path or create the image first", .0.display())]
    NotFound(PathBuf),
    #[error("no permission to open disk image {} {}; fix its permissions{}", .path.display(),
        if *.readonly { "for reading" } else { "for writing" },
        if *.readonly { "" } else { " or attach it readonly" })]
    PermissionDenied { path: PathBuf, readonly: bool },
    #[error("disk image {} is a directory; give the path of an image file", .0.display())]
    IsDirectory(PathBuf),
    #[error("disk image {} is {kind}, not an image; give a regular file or a block device",
        .path.display())]
    NotAnImage { path: PathBuf, kind: &'static str },
    #[error("block device {} is in use on this host (mounted, or held by another program); \
             unmount or release it first, or attach it readonly", .0.display())]
    DeviceBusy(PathBuf),
    #[error("block device {} has no medium (an empty drive, or a loop device with no backing \
             file); attach one (losetup) or give another path", .0.display())]
    NoMedium(PathBuf),
    #[error("disk image {} is in use by another process (it is locked); stop that VM first, \
             or attach the image readonly in every VM", .0.display())]
    Locked(PathBuf),
    #[error("disk image {} is {size} bytes, not a multiple of 512; resize it (truncate -s) \
             to whole 512-byte sectors", .path.display())]
    UnalignedSize { path: PathBuf, size: u64 },
    #[error("cannot open disk image {}", .path.display())]
    Open {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot lock disk image {}", .path.display())]
    Lock {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot find the size of disk image {}", .path.display())]
    Size {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// An open, locked disk image.
pub struct Disk {
    pub file: File,
    pub path: PathBuf,
    pub readonly: bool,
    /// Size in 512-byte sectors.
    pub sectors: u64,
    /// The file system can punch holes (discard).
    pub punch_hole: bool,
    /// The file system can zero ranges in place (write zeroes).
    pub zero_range: bool,
    pub id: [u8; ID_LEN],
}

fn open_error(path: &Path, readonly: bool, source: io::Error) -> Error {
    let path = path.to_path_buf();
    match source.raw_os_error() {
        Some(libc::ENOENT) => Error::NotFound(path),
        Some(libc::EACCES | libc::EPERM | libc::EROFS) => {
            Error::PermissionDenied { path, readonly }
        }
        Some(libc::EISDIR) => Error::IsDirectory(path),
        Some(libc::ENXIO | libc::ENOMEDIUM) => Error::NoMedium(path),
        _ => Error::Open { path, source },
    }
}

/// What a path that is neither a regular file nor a block device is, for the error line.
fn kind_name(t: FileType) -> &'static str {
    if t.is_fifo() {
        "a FIFO (named pipe)"
    } else if t.is_socket() {
        "a Unix socket"
    } else if t.is_char_device() {
        "a character device"
    } else {
        "not a regular file"
    }
}

/// Only regular files and block devices hold a disk.
fn check_kind(path: &Path, t: FileType) -> Result<(), Error> {
    if t.is_dir() {
        return Err(Error::IsDirectory(path.to_path_buf()));
    }
    if !t.is_file() && !t.is_block_device() {
        return Err(Error::NotAnImage {
            path: path.to_path_buf(),
            kind: kind_name(t),
        });
    }
    Ok(())
}

/// Back to blocking I/O once the file is known to be an image (the flag was only for the open).
fn clear_nonblock(file: &File) -> io::Result<()> {
    let fd = file.as_raw_fd();
    // SAFETY: fcntl on a descriptor we own; F_GETFL/F_SETFL take no memory.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    // SAFETY: as above.
    if flags < 0 || unsafe { libc::fcntl(fd, libc::F_SETFL, flags & !libc::O_NONBLOCK) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Try `fallocate(mode)` past the end of the file, where nothing the guest can see changes.
fn fallocate_works(file: &File, size: u64, mode: libc::c_int) -> bool {
    let Ok(offset) = libc::off64_t::try_from(size) else {
        return false;
    };
    // SAFETY: fallocate only acts on the file behind a descriptor we own; no memory is passed.
    let r = unsafe {
        libc::fallocate64(
            file.as_raw_fd(),
            mode | libc::FALLOC_FL_KEEP_SIZE,
            offset,
            4096,
        )
    };
    r == 0
}

impl Disk {
    pub fn open(path: &Path, readonly: bool) -> Result<Self, Error> {
        // Look before opening: opening a FIFO for reading would wait for a writer forever.
        let before = std::fs::metadata(path).map_err(|e| open_error(path, readonly, e))?;
        check_kind(path, before.file_type())?;
        let block_device = before.file_type().is_block_device();
        // O_NONBLOCK: should the path be swapped for a FIFO after the look, the open still
        // returns (it is cleared below). O_EXCL on a block device we write: the kernel refuses
        // it while the device is mounted or claimed, where our writes would corrupt a live file
        // system.
        let mut flags = libc::O_NONBLOCK | libc::O_NOCTTY;
        if block_device && !readonly {
            flags |= libc::O_EXCL;
        }
        let file = OpenOptions::new()
            .read(true)
            .write(!readonly)
            .custom_flags(flags)
            .open(path)
            .map_err(|e| match e.raw_os_error() {
                Some(libc::EBUSY) if block_device => Error::DeviceBusy(path.to_path_buf()),
                _ => open_error(path, readonly, e),
            })?;
        let meta = file.metadata().map_err(|e| open_error(path, readonly, e))?;
        check_kind(path, meta.file_type())?;
        clear_nonblock(&file).map_err(|source| Error::Open {
            path: path.to_path_buf(),
            source,
        })?;
        let how = if readonly {
            libc::LOCK_SH
        } else {
            libc::LOCK_EX
        };
        // SAFETY: flock only acts on the descriptor we own; no memory is passed.
        if unsafe { libc::flock(file.as_raw_fd(), how | libc::LOCK_NB) } != 0 {
            let source = io::Error::last_os_error();
            return Err(match source.raw_os_error() {
                Some(libc::EWOULDBLOCK) => Error::Locked(path.to_path_buf()),
                _ => Error::Lock {
                    path: path.to_path_buf(),
                    source,
                },
            });
        }
        // Seeking to the end also gives the size of a block device, whose metadata says 0.
        let size = (&file)
            .seek(SeekFrom::End(0))
            .map_err(|source| Error::Size {
                path: path.to_path_buf(),
                source,
            })?;
        if size == 0 && block_device {
            return Err(Error::NoMedium(path.to_path_buf()));
        }
        if size == 0 {
            // Kata and firecracker-containerd attach 0-byte placeholders and swap the real
            // image in later (PATCH /drives); Firecracker takes them as 0-sector disks.
            log::info!(
                "disk image {} is empty: the guest sees a disk of 0 sectors until PATCH /drives gives it another file",
                path.display()
            );
        }
        if !size.is_multiple_of(SECTOR_SIZE) {
            return Err(Error::UnalignedSize {
                path: path.to_path_buf(),
                size,
            });
        }
        let (punch_hole, zero_range) = if readonly {
            (false, false)
        } else {
            let zero_range = fallocate_works(&file, size, libc::FALLOC_FL_ZERO_RANGE);
            let punch_hole = fallocate_works(&file, size, libc::FALLOC_FL_PUNCH_HOLE);
            // The zero-range probe may have allocated a block past the end, which a punched
            // hole there does not give back; truncating to the same size does.
            if zero_range && meta.is_file() {
                let _ = file.set_len(size);
            }
            (punch_hole, zero_range)
        };
        let mut id = [0u8; ID_LEN];
        let serial = format!("kite{:x}-{:x}", meta.dev(), meta.ino());
        let n = serial.len().min(ID_LEN);
        id[..n].copy_from_slice(&serial.as_bytes()[..n]);
        Ok(Self {
            file,
            path: path.to_path_buf(),
            readonly,
            sectors: size / SECTOR_SIZE,
            punch_hole,
            zero_range,
            id,
        })
    }

    /// Deallocate (`punch`) or zero `len` bytes at `offset`.
    pub fn fallocate(&self, offset: u64, len: u64, punch: bool) -> io::Result<()> {
        let mode = if punch {
            libc::FALLOC_FL_PUNCH_HOLE
        } else {
            libc::FALLOC_FL_ZERO_RANGE
        };
        let (Ok(offset), Ok(len)) = (i64::try_from(offset), i64::try_from(len)) else {
            return Err(io::Error::from_raw_os_error(libc::EINVAL));
        };
        // SAFETY: fallocate only acts on the file behind a descriptor we own; no memory is passed.
        let r = unsafe {
            libc::fallocate64(
                self.file.as_raw_fd(),
                mode | libc::FALLOC_FL_KEEP_SIZE,
                offset,
                len,
            )
        };
        if r == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        }
    }

    /// Make everything written so far durable.
    pub fn sync(&self) -> io::Result<()> {
        self.file.sync_data()
    }

    /// Release the image's lock (before the same image is opened again for `PATCH /drives`:
    /// our own lock would refuse it).
    pub fn unlock(&self) {
        // SAFETY: flock only acts on the descriptor we own; no memory is passed.
        unsafe { libc::flock(self.file.as_raw_fd(), libc::LOCK_UN) };
    }

    /// Take the lock back after [`Self::unlock`]; false if another process took it meanwhile.
    pub fn relock(&self) -> bool {
        let how = if self.readonly {
            libc::LOCK_SH
        } else {
            libc::LOCK_EX
        };
        // SAFETY: flock only acts on the descriptor we own; no memory is passed.
        unsafe { libc::flock(self.file.as_raw_fd(), how | libc::LOCK_NB) == 0 }
    }
}

impl Drop for Disk {
    fn drop(&mut self) {
        if !self.readonly
            && let Err(e) = self.sync()
        {
            error!("cannot sync disk image {}: {e}", self.path.display());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vmm_sys_util::tempfile::TempFile;

    fn image(size: u64) -> TempFile {
        let f = TempFile::new().unwrap();
        f.as_file().set_len(size).unwrap();
        f
    }

    #[test]
    fn capacity_is_counted_in_sectors() {
        let f = image(1 << 20);
        let disk = Disk::open(f.as_path(), false).unwrap();
        assert_eq!(disk.sectors, 2048);
        assert!(disk.id.starts_with(b"kite"));
    }

    #[test]
    fn a_second_writer_is_refused_with_a_clear_error() {
        let f = image(4096);
        let _first = Disk::open(f.as_path(), false).unwrap();
        let err = Disk::open(f.as_path(), false).err().unwrap();
        assert!(matches!(err, Error::Locked(_)));
        let msg = err.to_string();
        assert!(msg.contains(&f.as_path().display().to_string()), "{msg}");
        assert!(msg.contains("in use by another process"), "{msg}");
        // Nor may a reader share an image that someone writes.
        assert!(matches!(
            Disk::open(f.as_path(), true),
            Err(Error::Locked(_))
        ));
    }

    #[test]
    fn readers_share_an_image_but_keep_writers_out() {
        let f = image(4096);
        let _a = Disk::open(f.as_path(), true).unwrap();
        let _b = Disk::open(f.as_path(), true).unwrap();
        assert!(matches!(
            Disk::open(f.as_path(), false),
            Err(Error::Locked(_))
        ));
    }

    #[test]
    fn the_lock_goes_with_the_disk() {
        let f = image(4096);
        drop(Disk::open(f.as_path(), false).unwrap());
        assert!(Disk::open(f.as_path(), false).is_ok());
    }

    #[test]
    fn a_missing_file_is_named() {
        let err = Disk::open(Path::new("/nonexistent/kite.img"), false)
            .err()
            .unwrap();
        assert!(matches!(err, Error::NotFound(_)));
        assert_eq!(
            err.to_string(),
            "disk image /nonexistent/kite.img does not exist; check the path or create the image first"
        );
    }

    #[test]
    fn a_directory_is_refused_readonly_or_not() {
        let dir = std::env::temp_dir();
        assert!(matches!(
            Disk::open(&dir, false),
            Err(Error::IsDirectory(_))
        ));
        assert!(matches!(Disk::open(&dir, true), Err(Error::IsDirectory(_))));
    }

    #[test]
    fn a_character_device_is_refused() {
        let err = Disk::open(Path::new("/dev/null"), true).err().unwrap();
        assert_eq!(
            err.to_string(),
            "disk image /dev/null is a character device, not an image; give a regular file or a block device"
        );
    }

    #[test]
    fn a_fifo_is_refused_without_waiting_for_a_writer() {
        let fifo = std::env::temp_dir().join(format!("kite-disk-fifo-{}", std::process::id()));
        let _ = std::fs::remove_file(&fifo);
        let c = std::ffi::CString::new(fifo.as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: mkfifo reads the NUL-terminated path we own.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        // Readonly is the case that used to block in open(2) until a writer came.
        for readonly in [true, false] {
            let err = Disk::open(&fifo, readonly).err().unwrap();
            assert!(matches!(err, Error::NotAnImage { .. }), "{err}");
            assert_eq!(
                err.to_string(),
                format!(
                    "disk image {} is a FIFO (named pipe), not an image; give a regular file or a block device",
                    fifo.display()
                )
            );
        }
        std::fs::remove_file(&fifo).unwrap();
    }

    #[test]
    fn an_empty_image_is_a_disk_of_no_sectors() {
        let f = image(0);
        let disk = Disk::open(f.as_path(), false).unwrap();
        assert_eq!(disk.sectors, 0);
    }

    #[test]
    fn the_image_is_opened_for_blocking_io() {
        let f = image(4096);
        let disk = Disk::open(f.as_path(), false).unwrap();
        // SAFETY: F_GETFL on a descriptor the disk owns.
        let flags = unsafe { libc::fcntl(disk.file.as_raw_fd(), libc::F_GETFL) };
        assert_eq!(flags & libc::O_NONBLOCK, 0);
    }

    #[test]
    fn no_medium_says_what_to_do() {
        let err = open_error(
            Path::new("/dev/loop7"),
            false,
            io::Error::from_raw_os_error(libc::ENXIO),
        );
        assert_eq!(
            err.to_string(),
            "block device /dev/loop7 has no medium (an empty drive, or a loop device with no backing file); attach one (losetup) or give another path"
        );
    }

    #[test]
    fn a_size_that_is_not_whole_sectors_is_refused() {
        let f = image(1000);
        let err = Disk::open(f.as_path(), false).err().unwrap();
        assert!(matches!(err, Error::UnalignedSize { size: 1000, .. }));
        assert!(err.to_string().contains("not a multiple of 512"));
    }

    #[test]
    fn no_permission_says_what_to_do() {
        let err = open_error(
            Path::new("/img"),
            false,
            io::Error::from_raw_os_error(libc::EACCES),
        );
        assert_eq!(
            err.to_string(),
            "no permission to open disk image /img for writing; fix its permissions or attach it readonly"
        );
        // Only testable for real when not running as root, which bypasses file modes.
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            use std::os::unix::fs::PermissionsExt;
            let f = image(4096);
            std::fs::set_permissions(f.as_path(), std::fs::Permissions::from_mode(0o444)).unwrap();
            assert!(matches!(
                Disk::open(f.as_path(), false),
                Err(Error::PermissionDenied { .. })
            ));
        }
    }

    #[test]
    fn probes_leave_the_image_as_it_was() {
        let f = image(8192);
        let disk = Disk::open(f.as_path(), false).unwrap();
        let meta = f.as_file().metadata().unwrap();
        assert_eq!(meta.len(), 8192);
        assert_eq!(meta.blocks(), 0, "nothing allocated, not even past the end");
        // On the ext4 or tmpfs these tests run on, holes can be punched.
        assert!(disk.punch_hole);
    }
}
