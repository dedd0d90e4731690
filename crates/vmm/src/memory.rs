//! Guest RAM: its layout around the 32-bit MMIO gap, and its KVM memory slots.

use kvm_bindings::{KVM_MEM_LOG_DIRTY_PAGES, kvm_userspace_memory_region};
use kvm_ioctls::VmFd;
use vm_memory::bitmap::AtomicBitmap;
use vm_memory::{Address, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};

use crate::arch::x86_64::layout::{MMIO_GAP_END, MMIO_GAP_START};

/// Guest memory as Kite uses it everywhere. Each region carries a bitmap of the pages Kite
/// itself wrote through vm-memory (loaders, virtio devices): KVM's dirty log only sees the
/// guest's own writes, and a diff snapshot needs both. Marking costs one atomic OR per page
/// written by a device.
pub type GuestMem = GuestMemoryMmap<AtomicBitmap>;

/// The page size of the dirty bitmaps (Kite's and KVM's).
pub const PAGE: u64 = 4096;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("could not map {size} bytes of guest memory")]
    Mmap {
        size: u64,
        #[source]
        source: vm_memory::mmap::FromRangesError,
    },
    #[error("KVM refused memory slot {slot} at {addr:#x}")]
    Slot {
        slot: u32,
        addr: u64,
        #[source]
        source: kvm_ioctls::Error,
    },
    #[error("cannot measure memory use")]
    Usage(#[source] std::io::Error),
}

/// The RAM ranges `(start, size)` for `size` bytes of guest memory: below the gap, and the rest
/// from 4 GiB up.
pub fn ram_ranges(size: u64) -> Vec<(GuestAddress, usize)> {
    let low = size.min(MMIO_GAP_START);
    let mut ranges = vec![(GuestAddress(0), low as usize)];
    if size > MMIO_GAP_START {
        ranges.push((GuestAddress(MMIO_GAP_END), (size - MMIO_GAP_START) as usize));
    }
    ranges
}

/// Map `size` bytes of anonymous memory laid out by [`ram_ranges`]. Guest RAM is left out of
/// Kite's core dumps (MADV_DONTDUMP: a crash report should not carry the guest's memory, nor
/// gigabytes of it), which also keeps its mappings apart from Kite's own in /proc/self/smaps
/// (mappings with other flags are never merged), where the memory report finds them.
pub fn create(size: u64) -> Result<GuestMem, Error> {
    let mem = GuestMemoryMmap::from_ranges(&ram_ranges(size))
        .map_err(|source| Error::Mmap { size, source })?;
    for (start, end) in host_ranges(&mem) {
        // SAFETY: advice on a mapping `mem` owns; MADV_DONTDUMP changes no contents.
        let rc =
            unsafe { libc::madvise(start as *mut _, (end - start) as usize, libc::MADV_DONTDUMP) };
        if rc != 0 {
            log::debug!(
                "guest RAM stays in core dumps: {}",
                std::io::Error::last_os_error()
            );
        }
    }
    Ok(mem)
}

/// Give KVM one memory slot per region of `mem`; with `track_dirty`, KVM logs the pages the
/// guest writes (KVM_MEM_LOG_DIRTY_PAGES), for diff snapshots.
pub fn register(vm: &VmFd, mem: &GuestMem, track_dirty: bool) -> Result<(), Error> {
    for (slot, region) in mem.iter().enumerate() {
        let slot = slot as u32;
        let addr = region.start_addr().raw_value();
        let host = mem
            .get_host_address(region.start_addr())
            .expect("a region's own start address is always in guest memory");
        let region = kvm_userspace_memory_region {
            slot,
            flags: if track_dirty {
                KVM_MEM_LOG_DIRTY_PAGES
            } else {
                0
            },
            guest_phys_addr: addr,
            memory_size: region.len(),
            userspace_addr: host as u64,
        };
        // SAFETY: the host range is a live mapping owned by `mem`, which the caller keeps alive
        // for as long as the VM runs (the Vmm holds both), and slots do not overlap.
        unsafe { vm.set_user_memory_region(region) }.map_err(|source| Error::Slot {
            slot,
            addr,
            source,
        })?;
    }
    Ok(())
}

/// The pages written since the last call, one bitmap per region of `mem` (bit `i` of word
/// `i / 64`: the region's page `i`), and both logs cleared: KVM's dirty log of each slot (when
/// `vm` is given: the slots were registered with `track_dirty`) ORed with the pages Kite's own
/// devices wrote. Call it with the vCPUs parked.
pub fn take_dirty(vm: Option<&VmFd>, mem: &GuestMem) -> Result<Vec<Vec<u64>>, String> {
    let mut out = Vec::new();
    for (slot, region) in mem.iter().enumerate() {
        let len = region.len() as usize;
        let words = len.div_ceil(PAGE as usize).div_ceil(64);
        let mut map = match vm {
            Some(vm) => vm
                .get_dirty_log(slot as u32, len)
                .map_err(|e| format!("KVM_GET_DIRTY_LOG of slot {slot}: {e}"))?,
            None => vec![0; words],
        };
        map.resize(words, 0);
        // The region's own bitmap, not the trait's slice of it.
        let ours = std::ops::Deref::deref(region).bitmap().get_and_reset();
        for (w, o) in map.iter_mut().zip(ours) {
            *w |= o;
        }
        out.push(map);
    }
    Ok(out)
}

/// Mark the pages of `dirty` (as [`take_dirty`] gave them) dirty again in Kite's bitmaps: a
/// diff snapshot that failed hands its pages back to the next one.
pub fn give_back_dirty(mem: &GuestMem, dirty: &[Vec<u64>]) {
    for (region, map) in mem.iter().zip(dirty) {
        let bitmap = std::ops::Deref::deref(region).bitmap();
        for (i, &word) in map.iter().enumerate() {
            for bit in (0..64).filter(|b| word & (1 << b) != 0) {
                let page = (i * 64 + bit) as u64;
                if page * PAGE < region.len() {
                    bitmap.set_addr_range((page * PAGE) as usize, PAGE as usize);
                }
            }
        }
    }
}

/// What the Kite process holds in memory, for telling the VMM's own cost apart from the guest's.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MemoryUsage {
    /// Peak resident set size of the whole process (VmHWM), bytes.
    pub peak_rss: u64,
    /// Guest RAM pages resident in this process, bytes: what the guest (and the loader) touched.
    pub guest_resident: u64,
}

impl MemoryUsage {
    /// The VMM's own share: peak RSS less the guest RAM that is resident.
    pub fn overhead(&self) -> u64 {
        self.peak_rss.saturating_sub(self.guest_resident)
    }
}

/// Measures [`MemoryUsage`]. Opens /proc/self/status and /proc/self/smaps when made, so that
/// measuring later needs no open(2) (the main thread's seccomp filter allows none).
#[derive(Debug)]
pub struct UsageProbe {
    status: std::fs::File,
    smaps: std::fs::File,
}

impl UsageProbe {
    pub fn new() -> Result<Self, Error> {
        let open = |path| std::fs::File::open(path).map_err(Error::Usage);
        Ok(Self {
            status: open("/proc/self/status")?,
            smaps: open("/proc/self/smaps")?,
        })
    }

    /// Measure now; call it when the guest has stopped (the figures only grow until then).
    pub fn usage(&self, mem: &GuestMem) -> Result<MemoryUsage, Error> {
        let mut peak_rss = None;
        for_each_line(&self.status, |line| {
            peak_rss = peak_rss.or_else(|| vm_hwm(line));
        })
        .map_err(Error::Usage)?;
        let peak_rss = peak_rss.ok_or_else(|| {
            Error::Usage(std::io::Error::other("no VmHWM line in /proc/self/status"))
        })?;
        let ranges = host_ranges(mem);
        let mut resident = Resident::new(&ranges, mincore_bytes);
        for_each_line(&self.smaps, |line| resident.line(line)).map_err(Error::Usage)?;
        Ok(MemoryUsage {
            peak_rss,
            guest_resident: resident.total,
        })
    }
}

/// Each line of a /proc file from its start, read with pread(2) (procfs makes the text afresh
/// for a read at offset 0) through one page-sized buffer: /proc/self/smaps is tens of KiB,
/// which a copy of the whole text would add to the heap's peak (and so to the VMM's resident
/// set) at the end of every run.
fn for_each_line(file: &std::fs::File, mut each: impl FnMut(&str)) -> std::io::Result<()> {
    use std::os::unix::fs::FileExt;
    let mut buf = vec![0u8; 4096];
    // `buf[..held]`: the start of a line not yet ended; `offset`: where the next read starts.
    let (mut held, mut offset) = (0, 0u64);
    loop {
        if held == buf.len() {
            buf.resize(buf.len() * 2, 0); // one line longer than the buffer
        }
        let n = file.read_at(&mut buf[held..], offset)?;
        offset += n as u64;
        let end = held + n;
        let mut start = 0;
        while let Some(i) = buf[start..end].iter().position(|&b| b == b'\n') {
            each(&String::from_utf8_lossy(&buf[start..start + i]));
            start += i + 1;
        }
        if n == 0 {
            if start < end {
                each(&String::from_utf8_lossy(&buf[start..end]));
            }
            return Ok(());
        }
        buf.copy_within(start..end, 0);
        held = end - start;
    }
}

/// The `VmHWM:` figure of a /proc/<pid>/status line, in bytes; `None` for any other line.
fn vm_hwm(line: &str) -> Option<u64> {
    let mut words = line.strip_prefix("VmHWM:")?.split_whitespace();
    let kib: u64 = words.next()?.parse().ok()?;
    (words.next() == Some("kB")).then_some(kib * 1024)
}

/// The host address ranges `[start, end)` of guest RAM, sorted, adjacent ones joined (the
/// kernel may merge their mappings into one).
fn host_ranges(mem: &GuestMem) -> Vec<(u64, u64)> {
    let mut ranges: Vec<(u64, u64)> = mem
        .iter()
        .filter_map(|region| {
            let host = mem.get_host_address(region.start_addr()).ok()? as u64;
            Some((host, host + region.len()))
        })
        .collect();
    ranges.sort_unstable();
    let mut joined: Vec<(u64, u64)> = Vec::with_capacity(ranges.len());
    for (start, end) in ranges {
        match joined.last_mut() {
            Some(last) if last.1 == start => last.1 = end,
            _ => joined.push((start, end)),
        }
    }
    joined
}

/// Counts the bytes of guest RAM resident from the `Rss:` of the /proc/self/smaps mappings inside
/// `ranges`. The kernel makes that text by walking only the page tables that exist, so its
/// cost follows the pages touched and the number of mappings, not guest RAM's size (mincore
/// over all of guest RAM filled a byte per page: 2.5 ms at 16 GiB). Pages a guest only read,
/// backed by the shared zero page, are not counted, as VmHWM does not count them either.
///
/// A mapping that reaches outside `ranges` (guest RAM merged with a neighbour of the same
/// flags: in Kite only another guest's RAM, as in a test process holding several) has the part
/// inside counted by `partial(start, end)` instead ([`mincore_bytes`]).
/// Feed it the lines of the text one by one ([`Resident::line`]); the sum is `total`.
struct Resident<'a, F> {
    ranges: &'a [(u64, u64)],
    partial: F,
    /// Whether the mapping of the lines now being fed lies inside `ranges`.
    inside: bool,
    total: u64,
}

impl<'a, F: Fn(u64, u64) -> u64> Resident<'a, F> {
    fn new(ranges: &'a [(u64, u64)], partial: F) -> Self {
        Self {
            ranges,
            partial,
            inside: false,
            total: 0,
        }
    }

    fn line(&mut self, line: &str) {
        if let Some(rss) = line.strip_prefix("Rss:") {
            if self.inside {
                let mut words = rss.split_whitespace();
                if let (Some(Ok(kib)), Some("kB")) =
                    (words.next().map(str::parse::<u64>), words.next())
                {
                    self.total += kib * 1024;
                }
            }
        } else if let Some((start, end)) = mapping_range(line) {
            self.inside = self.ranges.iter().any(|&(lo, hi)| lo <= start && end <= hi);
            if !self.inside {
                for &(lo, hi) in self.ranges {
                    if lo.max(start) < hi.min(end) {
                        self.total += (self.partial)(lo.max(start), hi.min(end));
                    }
                }
            }
        }
    }
}

/// Bytes resident in `[start, end)` (page-aligned, inside guest RAM), page by page with
/// mincore(2) through one fixed buffer: nothing allocated in proportion to the range. 0 if
/// mincore fails. Never inlined: its buffer would otherwise be in its caller's stack frame
/// (and resident) on every run, though it is needed only for a mapping guest RAM shares.
#[inline(never)]
fn mincore_bytes(start: u64, end: u64) -> u64 {
    const PAGE: u64 = 4096;
    let mut vec = [0u8; 16 * 1024];
    let chunk = vec.len() as u64 * PAGE;
    let mut total = 0;
    let mut at = start;
    while at < end {
        let n = chunk.min(end - at);
        // SAFETY: `[at, at + n)` is page-aligned and lies in guest RAM, a live mapping, and
        // `vec` has room for one byte per page of it (`n <= vec.len() * PAGE`), which is all
        // mincore writes.
        if unsafe { libc::mincore(at as *mut libc::c_void, n as usize, vec.as_mut_ptr()) } != 0 {
            return 0;
        }
        let pages = vec[..n.div_ceil(PAGE) as usize]
            .iter()
            .filter(|&&b| b & 1 != 0)
            .count() as u64;
        total += pages * PAGE;
        at += n;
    }
    total
}

/// `start-end` of a smaps header line (`7f12...-7f13... rw-p 00000000 00:00 0   [path]`).
fn mapping_range(line: &str) -> Option<(u64, u64)> {
    let range = line.split_whitespace().next()?;
    let (start, end) = range.split_once('-')?;
    Some((
        u64::from_str_radix(start, 16).ok()?,
        u64::from_str_radix(end, 16).ok()?,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A whole smaps text through [`Resident`].
    fn resident_bytes(
        smaps: &str,
        ranges: &[(u64, u64)],
        partial: impl Fn(u64, u64) -> u64,
    ) -> u64 {
        let mut r = Resident::new(ranges, partial);
        smaps.lines().for_each(|l| r.line(l));
        r.total
    }

    #[test]
    fn small_memory_is_one_region() {
        assert_eq!(ram_ranges(256 << 20), vec![(GuestAddress(0), 256 << 20)]);
    }

    #[test]
    fn memory_at_the_gap_is_split_around_it() {
        let r = ram_ranges(4 << 30);
        assert_eq!(
            r,
            vec![
                (GuestAddress(0), MMIO_GAP_START as usize),
                (
                    GuestAddress(1 << 32),
                    (4usize << 30) - MMIO_GAP_START as usize
                )
            ]
        );
        assert_eq!(ram_ranges(MMIO_GAP_START).len(), 1);
    }

    /// Guest RAM resident, as the probe measures it, for `mem`.
    fn resident(mem: &GuestMem) -> u64 {
        let smaps = std::fs::read_to_string("/proc/self/smaps").unwrap();
        resident_bytes(&smaps, &host_ranges(mem), mincore_bytes)
    }

    #[test]
    fn resident_bytes_counts_the_pages_touched() {
        use vm_memory::Bytes;
        let mem = create(16 << 20).unwrap();
        let before = resident(&mem);
        for i in 0..64u64 {
            mem.write_obj(1u8, GuestAddress(i * 4096 + (1 << 20)))
                .unwrap();
        }
        let after = resident(&mem);
        assert_eq!(after - before, 64 * 4096, "{before} -> {after}");
    }

    #[test]
    fn resident_bytes_counts_pages_on_both_sides_of_the_gap() {
        use vm_memory::Bytes;
        // 4 GiB + 64 MiB of address space (not touched but for the spots): two regions.
        let mem = create(MMIO_GAP_START + (64 << 20)).unwrap();
        let before = resident(&mem);
        let spots = [
            0u64,
            MMIO_GAP_START - 4096,
            MMIO_GAP_END,
            MMIO_GAP_END + (64 << 20) - 4096,
        ];
        for at in spots {
            mem.write_obj(1u8, GuestAddress(at)).unwrap();
        }
        let after = resident(&mem);
        assert_eq!(
            after - before,
            spots.len() as u64 * 4096,
            "{before} -> {after}"
        );
    }

    #[test]
    fn smaps_text_is_read_mapping_by_mapping() {
        let smaps = "\
1000-3000 rw-p 00000000 00:00 0
Size:                  8 kB
Rss:                   8 kB
3000-4000 r--p 00000000 08:01 42   /usr/bin/kite
Rss:                   4 kB
10000-20000 rw-p 00000000 00:00 0
Rss:                  12 kB
";
        // Mappings wholly inside a range count by their Rss; the part inside of one that
        // reaches outside goes to `partial` (here: nothing, or all of it resident).
        let none = |_: u64, _: u64| 0;
        let all = |start: u64, end: u64| end - start;
        assert_eq!(resident_bytes(smaps, &[(0x1000, 0x3000)], none), 8 << 10);
        assert_eq!(
            resident_bytes(smaps, &[(0x1000, 0x3000), (0x10000, 0x20000)], none),
            20 << 10
        );
        assert_eq!(resident_bytes(smaps, &[(0x2000, 0x20000)], none), 16 << 10);
        // 0x1000-0x3000 reaches below 0x2000: its 4 KiB inside by `partial`.
        assert_eq!(
            resident_bytes(smaps, &[(0x2000, 0x20000)], all),
            (4 << 10) + (16 << 10)
        );
        assert_eq!(resident_bytes(smaps, &[], all), 0);
        assert_eq!(mapping_range("VmFlags: rd wr mr"), None);
    }

    #[test]
    fn usage_reads_the_peak_rss() {
        let mem = create(4 << 20).unwrap();
        let probe = UsageProbe::new().unwrap();
        let u = probe.usage(&mem).unwrap();
        assert!(u.peak_rss > 0);
        // Read again through the same descriptor: the text is made afresh.
        let again = probe.usage(&mem).unwrap();
        assert!(again.peak_rss >= u.peak_rss);
        assert_eq!(u.overhead(), u.peak_rss.saturating_sub(u.guest_resident));
        // The guest RAM a test touched is counted through the streamed smaps text too.
        {
            use vm_memory::Bytes;
            mem.write_obj(1u8, GuestAddress(4096)).unwrap();
        }
        assert!(probe.usage(&mem).unwrap().guest_resident >= 4096);
        assert_eq!(vm_hwm("VmHWM:\t    2048 kB"), Some(2 << 20));
        assert_eq!(vm_hwm("VmPeak:\t  100 kB"), None);
        assert_eq!(vm_hwm("VmHWM: lots"), None);
    }

    #[test]
    fn a_file_is_read_line_by_line_across_buffer_ends() {
        let long = "x".repeat(10_000);
        let text = format!("first\n{long}\n\nlast, with no newline");
        let path = std::env::temp_dir().join(format!("kite-lines-{}", std::process::id()));
        std::fs::write(&path, &text).unwrap();
        let file = std::fs::File::open(&path).unwrap();
        let mut lines = Vec::new();
        for_each_line(&file, |l| lines.push(l.to_owned())).unwrap();
        std::fs::remove_file(&path).unwrap();
        assert_eq!(lines, text.lines().collect::<Vec<_>>());
    }

    #[test]
    fn pages_kite_writes_are_taken_once() {
        use vm_memory::Bytes;
        let mem = create(8 << 20).unwrap();
        take_dirty(None, &mem).unwrap();
        mem.write_slice(&[1, 2, 3], GuestAddress(5 * PAGE + 10))
            .unwrap();
        // Across a page boundary: both pages.
        mem.write_obj(7u64, GuestAddress(9 * PAGE - 4)).unwrap();
        let maps = take_dirty(None, &mem).unwrap();
        assert_eq!(maps.len(), 1);
        assert_eq!(maps[0].len(), 32);
        assert_eq!(maps[0][0], (1 << 5) | (1 << 8) | (1 << 9));
        assert!(maps[0][1..].iter().all(|&w| w == 0));
        let again = take_dirty(None, &mem).unwrap();
        assert!(
            again[0].iter().all(|&w| w == 0),
            "cleared by the first take"
        );
    }

    #[test]
    fn create_maps_the_requested_size() {
        let mem = create(64 << 20).unwrap();
        assert_eq!(mem.iter().map(|r| r.len()).sum::<u64>(), 64 << 20);
    }
}
