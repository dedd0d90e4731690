//! Merging a diff snapshot's memory file over the full one (`kite rebase-snap`, after
//! Firecracker's `rebase-snap` tool, with the same flags): every data range of the diff (the
//! pages it wrote; its holes are pages that did not change) is copied over the base at the
//! same offset. The merged file is written under a temporary name next to the base and renamed
//! over it, so that an interrupted merge leaves the base as it was, and VMs still running from
//! the old base (mapped private and lazily) keep reading the file they started from.

use std::fs::File;
use std::os::unix::fs::{FileExt, PermissionsExt};
use std::os::unix::io::AsRawFd;
use std::path::Path;

/// The data ranges `[start, end)` of `file` (of `len` bytes), by SEEK_DATA and SEEK_HOLE.
fn data_ranges(file: &File, len: u64) -> std::io::Result<Vec<(u64, u64)>> {
    let fd = file.as_raw_fd();
    let seek = |at: u64, whence| {
        // SAFETY: lseek on a descriptor `file` owns; it only moves the file offset.
        let r = unsafe { libc::lseek(fd, at as libc::off_t, whence) };
        if r < 0 {
            let e = std::io::Error::last_os_error();
            // ENXIO: no data at or after `at`.
            if e.raw_os_error() == Some(libc::ENXIO) {
                return Ok(None);
            }
            return Err(e);
        }
        Ok(Some(r as u64))
    };
    let mut ranges = Vec::new();
    let mut at = 0;
    while at < len {
        let Some(start) = seek(at, libc::SEEK_DATA)? else {
            break;
        };
        let end = seek(start, libc::SEEK_HOLE)?.unwrap_or(len).min(len);
        if end > start {
            ranges.push((start, end));
        }
        at = end.max(start + 1);
    }
    Ok(ranges)
}

/// Copy `ranges` of `from` into `to` at the same offsets; returns the bytes copied.
fn copy_ranges(from: &File, to: &File, ranges: &[(u64, u64)]) -> std::io::Result<u64> {
    let mut buf = vec![0u8; 1 << 20];
    let mut copied = 0;
    for &(start, end) in ranges {
        let mut at = start;
        while at < end {
            let n = ((end - at) as usize).min(buf.len());
            from.read_exact_at(&mut buf[..n], at)?;
            to.write_all_at(&buf[..n], at)?;
            at += n as u64;
            copied += n as u64;
        }
    }
    Ok(copied)
}

/// What a merge did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Merged {
    /// Bytes of the diff written over the base.
    pub diff_bytes: u64,
}

/// Merge the diff memory file `diff` over the full memory file `base` (see the module's
/// words). `Err` is one line naming the file and what is wrong with it.
pub fn rebase(base: &Path, diff: &Path) -> Result<Merged, String> {
    let open = |p: &Path, what: &str| {
        File::open(p).map_err(|e| format!("cannot open the {what} {}: {e}", p.display()))
    };
    let base_file = open(base, "base memory file")?;
    let diff_file = open(diff, "diff memory file")?;
    let meta = |f: &File, p: &Path| {
        f.metadata()
            .map_err(|e| format!("cannot read {}: {e}", p.display()))
    };
    let (base_meta, diff_meta) = (meta(&base_file, base)?, meta(&diff_file, diff)?);
    if !base_meta.is_file() || !diff_meta.is_file() {
        return Err("--base-file and --diff-file must both be regular files".into());
    }
    if base_meta.len() != diff_meta.len() {
        return Err(format!(
            "the diff {} has {} bytes, the base {} has {}: they are not of the same VM's memory (a diff is as long as guest RAM)",
            diff.display(),
            diff_meta.len(),
            base.display(),
            base_meta.len()
        ));
    }
    let name = base
        .file_name()
        .ok_or_else(|| format!("{} is not a file name", base.display()))?;
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(name);
    tmp_name.push(format!(".rebase-{}", std::process::id()));
    let tmp = base.with_file_name(tmp_name);
    let result = (|| -> std::io::Result<u64> {
        let out = File::create(&tmp)?;
        out.set_permissions(std::fs::Permissions::from_mode(
            base_meta.permissions().mode(),
        ))?;
        out.set_len(base_meta.len())?;
        copy_ranges(&base_file, &out, &data_ranges(&base_file, base_meta.len())?)?;
        let n = copy_ranges(&diff_file, &out, &data_ranges(&diff_file, diff_meta.len())?)?;
        out.sync_all()?;
        std::fs::rename(&tmp, base)?;
        Ok(n)
    })();
    match result {
        Ok(diff_bytes) => Ok(Merged { diff_bytes }),
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            Err(format!(
                "cannot merge {} over {} (the base is unchanged): {e}",
                diff.display(),
                base.display()
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PAGE: usize = 4096;

    fn dir(name: &str) -> std::path::PathBuf {
        let d = std::env::temp_dir().join(format!("kite-rebase-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn the_diff_pages_land_on_the_base_and_the_rest_stays() {
        let d = dir("merge");
        let (base, diff) = (d.join("base"), d.join("diff"));
        let pages = 64;
        let mut want = vec![0u8; pages * PAGE];
        // The base: pages 1..10 of 0x11, page 40 of 0x22, the rest holes.
        let b = File::create(&base).unwrap();
        b.set_len((pages * PAGE) as u64).unwrap();
        want[PAGE..10 * PAGE].fill(0x11);
        b.write_all_at(&want[PAGE..10 * PAGE], PAGE as u64).unwrap();
        want[40 * PAGE..41 * PAGE].fill(0x22);
        b.write_all_at(&want[40 * PAGE..41 * PAGE], (40 * PAGE) as u64)
            .unwrap();
        // The diff: page 3 zeroed (a written page of zeroes is data, not a hole), page 50
        // new; page 40 not in it.
        let f = File::create(&diff).unwrap();
        f.set_len((pages * PAGE) as u64).unwrap();
        f.write_all_at(&[0u8; PAGE], (3 * PAGE) as u64).unwrap();
        want[3 * PAGE..4 * PAGE].fill(0);
        f.write_all_at(&[0x33u8; PAGE], (50 * PAGE) as u64).unwrap();
        want[50 * PAGE..51 * PAGE].fill(0x33);
        drop((b, f));

        let merged = rebase(&base, &diff).unwrap();
        assert_eq!(merged.diff_bytes, 2 * PAGE as u64);
        assert!(std::fs::read(&base).unwrap() == want, "merged bytes differ");
        let leftovers = std::fs::read_dir(&d).unwrap().count();
        assert_eq!(leftovers, 2, "no temporary file is left");
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn files_of_other_sizes_are_refused_and_the_base_is_unchanged() {
        let d = dir("sizes");
        let (base, diff) = (d.join("base"), d.join("diff"));
        std::fs::write(&base, vec![7u8; 2 * PAGE]).unwrap();
        std::fs::write(&diff, vec![9u8; PAGE]).unwrap();
        let e = rebase(&base, &diff).unwrap_err();
        assert!(e.contains("not of the same VM"), "{e}");
        assert!(!e.contains('\n'));
        assert_eq!(std::fs::read(&base).unwrap(), vec![7u8; 2 * PAGE]);
        let e = rebase(&base, &d.join("missing")).unwrap_err();
        assert!(e.contains("cannot open the diff memory file"), "{e}");
        std::fs::remove_dir_all(&d).unwrap();
    }
}
