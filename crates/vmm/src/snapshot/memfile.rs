//! Guest memory in its own file: written sparse (a page of zeroes, which includes every page
//! the guest never touched, is a hole), and mapped back private and lazily, so that pages are
//! read from the file (the page cache, shared by every clone of one snapshot) only when the
//! guest touches them, and the guest's writes stay in the process that made them.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;

use vm_memory::bitmap::AtomicBitmap;
use vm_memory::bitmap::NewBitmap;
use vm_memory::mmap::MmapRegionBuilder;
use vm_memory::{
    FileOffset, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion, GuestRegionMmap,
};

use crate::memory::{GuestMem, ram_ranges};

/// Pages are compared in blocks of this size: a block that is all zeroes is left as a hole.
const BLOCK: usize = 4096;

/// Which pages of `len` bytes at `host` are resident (mincore): in anonymous memory with
/// nothing in swap, a page that is not resident was never written.
fn resident(host: *const u8, len: usize) -> Option<Vec<u8>> {
    let pages = len.div_ceil(BLOCK);
    let mut vec = vec![0u8; pages];
    // SAFETY: `host` is page-aligned and the start of a live mapping of `len` bytes; `vec`
    // has one byte per page of it, as mincore writes.
    let rc = unsafe { libc::mincore(host as *mut libc::c_void, len, vec.as_mut_ptr()) };
    (rc == 0).then_some(vec)
}

/// Write guest RAM to `file` (already empty), regions one after another, skipping zero blocks;
/// returns the bytes written. The file's length is the size of RAM. With `anonymous` (RAM that
/// is not a mapping of a memory file), pages never touched are skipped without reading them.
/// `status`: /proc/self/status, opened beforehand (the main thread may not open files), to
/// tell whether any page is in swap; `None` reads every page.
pub fn write_sparse(
    mem: &GuestMem,
    file: &File,
    anonymous: bool,
    status: Option<&File>,
) -> std::io::Result<u64> {
    let trust_mincore = anonymous && status.is_some_and(|s| !swapped(s));
    let total: u64 = mem.iter().map(|r| r.len()).sum();
    file.set_len(total)?;
    let mut offset = 0u64;
    let mut written = 0u64;
    for region in mem.iter() {
        let len = region.len() as usize;
        let host = mem
            .get_host_address(region.start_addr())
            .map_err(|e| std::io::Error::other(e.to_string()))?;
        // SAFETY: `host` is the start of this region's live mapping of `len` bytes, owned by
        // `mem` for the duration of this call. The vCPUs are parked, so nothing writes to it
        // while it is read; the bytes are only copied out.
        let bytes = unsafe { std::slice::from_raw_parts(host as *const u8, len) };
        // Swapped-out pages also read as not resident: only trust mincore when nothing of
        // this process is in swap.
        let map = trust_mincore
            .then(|| resident(host as *const u8, len))
            .flatten();
        let blank = |at: usize| {
            map.as_ref().is_some_and(|m| m[at / BLOCK] & 1 == 0)
                || bytes[at..(at + BLOCK).min(len)].iter().all(|&x| x == 0)
        };
        let mut at = 0;
        while at < len {
            // One run of non-zero blocks, written at once.
            while at < len && blank(at) {
                at += BLOCK;
            }
            let start = at;
            while at < len && !blank(at) {
                at += BLOCK;
            }
            let end = at.min(len);
            if end > start {
                file.write_all_at(&bytes[start..end], offset + start as u64)?;
                written += (end - start) as u64;
            }
        }
        offset += len as u64;
    }
    Ok(written)
}

/// Write the pages marked in `dirty` (one bitmap per region, as
/// [`crate::memory::take_dirty`] gives) to `file` (already empty) at their offsets in the
/// memory file's layout, each one whole even if it is all zeroes (a page the guest zeroed must
/// reach the merged file); every other page is a hole. The file's length is the size of RAM,
/// so that it lines up with the full memory file it is merged over. Returns the bytes written.
pub fn write_dirty(mem: &GuestMem, dirty: &[Vec<u64>], file: &File) -> std::io::Result<u64> {
    let total: u64 = mem.iter().map(|r| r.len()).sum();
    file.set_len(total)?;
    let mut offset = 0u64;
    let mut written = 0u64;
    for (region, map) in mem.iter().zip(dirty) {
        let len = region.len() as usize;
        let host = mem
            .get_host_address(region.start_addr())
            .map_err(|e| std::io::Error::other(e.to_string()))?;
        // SAFETY: as in `write_sparse`: this region's live mapping of `len` bytes, only read,
        // with the vCPUs parked.
        let bytes = unsafe { std::slice::from_raw_parts(host as *const u8, len) };
        let pages = len.div_ceil(BLOCK);
        let is_dirty = |p: usize| map.get(p / 64).is_some_and(|w| w & (1 << (p % 64)) != 0);
        let mut p = 0;
        while p < pages {
            while p < pages && !is_dirty(p) {
                p += 1;
            }
            let start = p;
            while p < pages && is_dirty(p) {
                p += 1;
            }
            if p > start {
                let (from, to) = (start * BLOCK, (p * BLOCK).min(len));
                file.write_all_at(&bytes[from..to], offset + from as u64)?;
                written += (to - from) as u64;
            }
        }
        offset += len as u64;
    }
    Ok(written)
}

/// Whether any of this process's memory is in swap (VmSwap in /proc/self/status), or that
/// cannot be told.
fn swapped(status: &File) -> bool {
    let mut text = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match status.read_at(&mut buf, text.len() as u64) {
            Ok(0) => break,
            Ok(n) => text.extend_from_slice(&buf[..n]),
            Err(_) => return true,
        }
    }
    String::from_utf8_lossy(&text)
        .lines()
        .find_map(|l| l.strip_prefix("VmSwap:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        .is_none_or(|kib| kib > 0)
}

/// Map `size` bytes of guest RAM from `file`, MAP_PRIVATE (copy on write) and lazily, laid out
/// as [`crate::memory::create`] lays out fresh RAM. `Err` names what is wrong in one line.
pub fn map_private(path: &Path, size: u64) -> Result<GuestMem, String> {
    let file = File::open(path)
        .map_err(|e| format!("cannot open the memory file {}: {e}", path.display()))?;
    let len = file
        .metadata()
        .map_err(|e| format!("cannot read the memory file {}: {e}", path.display()))?
        .len();
    if len < size {
        return Err(format!(
            "the memory file {} has {len} bytes, the snapshot's guest RAM {size}: wrong or truncated memory file",
            path.display()
        ));
    }
    let mut regions = Vec::new();
    let mut offset = 0u64;
    for (start, len) in ram_ranges(size) {
        let fd = file
            .try_clone()
            .map_err(|e| format!("cannot reuse the memory file descriptor: {e}"))?;
        let region = MmapRegionBuilder::new_with_bitmap(len, AtomicBitmap::with_len(len))
            .with_file_offset(FileOffset::new(fd, offset))
            .with_mmap_prot(libc::PROT_READ | libc::PROT_WRITE)
            .with_mmap_flags(libc::MAP_PRIVATE | libc::MAP_NORESERVE)
            .build()
            .map_err(|e| format!("cannot map the memory file {}: {e}", path.display()))?;
        let region = GuestRegionMmap::new(region, start)
            .ok_or_else(|| format!("guest RAM at {:#x} does not fit", start.0))?;
        regions.push(region);
        offset += len as u64;
    }
    GuestMemoryMmap::from_regions(regions).map_err(|e| format!("guest RAM layout: {e}"))
}
