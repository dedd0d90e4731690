//! Guest RAM: its layout around the 32-bit MMIO gap, and its KVM memory slots.

use kvm_bindings::kvm_userspace_memory_region;
use kvm_ioctls::VmFd;
use vm_memory::{Address, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};

use crate::arch::x86_64::layout::{MMIO_GAP_END, MMIO_GAP_START};

/// Guest memory as Kite uses it everywhere.
pub type GuestMem = GuestMemoryMmap<()>;

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

/// Map `size` bytes of anonymous memory laid out by [`ram_ranges`].
pub fn create(size: u64) -> Result<GuestMem, Error> {
    GuestMemoryMmap::from_ranges(&ram_ranges(size)).map_err(|source| Error::Mmap { size, source })
}

/// Give KVM one memory slot per region of `mem`.
pub fn register(vm: &VmFd, mem: &GuestMem) -> Result<(), Error> {
    for (slot, region) in mem.iter().enumerate() {
        let slot = slot as u32;
        let addr = region.start_addr().raw_value();
        let host = mem
            .get_host_address(region.start_addr())
            .expect("a region's own start address is always in guest memory");
        let region = kvm_userspace_memory_region {
            slot,
            flags: 0,
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

/// Measures [`MemoryUsage`]. Opens /proc/self/status when made, so that measuring later needs no
/// open(2) (the main thread's seccomp filter allows none).
#[derive(Debug)]
pub struct UsageProbe {
    status: std::fs::File,
}

impl UsageProbe {
    pub fn new() -> Result<Self, Error> {
        Ok(Self {
            status: std::fs::File::open("/proc/self/status").map_err(Error::Usage)?,
        })
    }

    /// Measure now; call it when the guest has stopped (the figures only grow until then).
    pub fn usage(&self, mem: &GuestMem) -> Result<MemoryUsage, Error> {
        let status = read_from_start(&self.status).map_err(Error::Usage)?;
        let peak_rss = vm_hwm(&status).ok_or_else(|| {
            Error::Usage(std::io::Error::other("no VmHWM line in /proc/self/status"))
        })?;
        Ok(MemoryUsage {
            peak_rss,
            guest_resident: resident_bytes(mem).map_err(Error::Usage)?,
        })
    }
}

/// The whole of a /proc file from its start, read with pread(2): procfs makes the text afresh
/// for a read at offset 0.
fn read_from_start(file: &std::fs::File) -> std::io::Result<String> {
    use std::os::unix::fs::FileExt;
    let mut text = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = file.read_at(&mut buf, text.len() as u64)?;
        if n == 0 {
            break;
        }
        text.extend_from_slice(&buf[..n]);
    }
    Ok(String::from_utf8_lossy(&text).into_owned())
}

/// The `VmHWM:` figure of a /proc/<pid>/status text, in bytes.
fn vm_hwm(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let mut words = line["VmHWM:".len()..].split_whitespace();
    let kib: u64 = words.next()?.parse().ok()?;
    (words.next() == Some("kB")).then_some(kib * 1024)
}

/// Bytes of guest RAM backed by resident pages, counted page by page with mincore(2).
pub fn resident_bytes(mem: &GuestMem) -> std::io::Result<u64> {
    // SAFETY: sysconf has no memory effects.
    let page = match unsafe { libc::sysconf(libc::_SC_PAGESIZE) } {
        n if n > 0 => n as usize,
        _ => 4096,
    };
    // A fixed buffer, reused chunk by chunk: the measurement must not allocate in proportion
    // to guest RAM (one byte per page was 4 MiB of Kite's own RSS at 16 GiB).
    let mut vec = [0u8; 16 * 1024];
    let chunk = vec.len() * page;
    let mut total = 0u64;
    for region in mem.iter() {
        let Ok(host) = mem.get_host_address(region.start_addr()) else {
            continue;
        };
        let len = region.len() as usize;
        let mut done = 0;
        while done < len {
            let n = chunk.min(len - done);
            // SAFETY: `host + done .. host + done + n` lies in one mapping owned by `mem`
            // (mmap returns page-aligned addresses, and `done` is a multiple of `chunk`, itself
            // a whole number of pages), and `vec` has room for one byte per page of it
            // (`n <= vec.len() * page`), which is all mincore writes.
            let rc = unsafe { libc::mincore(host.add(done).cast(), n, vec.as_mut_ptr()) };
            if rc != 0 {
                return Err(std::io::Error::last_os_error());
            }
            let pages = vec[..n.div_ceil(page)]
                .iter()
                .filter(|&&b| b & 1 != 0)
                .count() as u64;
            total += pages * page as u64;
            done += n;
        }
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

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

    #[test]
    fn resident_bytes_counts_the_pages_touched() {
        use vm_memory::Bytes;
        let mem = create(16 << 20).unwrap();
        let before = resident_bytes(&mem).unwrap();
        for i in 0..64u64 {
            mem.write_obj(1u8, GuestAddress(i * 4096 + (1 << 20)))
                .unwrap();
        }
        let after = resident_bytes(&mem).unwrap();
        assert!(after >= before + 64 * 4096, "{before} -> {after}");
        assert!(after <= 16 << 20);
    }

    #[test]
    fn resident_bytes_counts_pages_in_every_chunk() {
        use vm_memory::Bytes;
        // 200 MiB: more than three of resident_bytes' 64 MiB chunks (4 KiB pages).
        let mem = create(200 << 20).unwrap();
        let before = resident_bytes(&mem).unwrap();
        let spots = [
            0u64,
            (64 << 20) - 4096,
            64 << 20,
            130 << 20,
            (200 << 20) - 4096,
        ];
        for at in spots {
            mem.write_obj(1u8, GuestAddress(at)).unwrap();
        }
        let after = resident_bytes(&mem).unwrap();
        assert_eq!(
            after - before,
            spots.len() as u64 * 4096,
            "{before} -> {after}"
        );
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
        let status = "Name:\tkite\nVmPeak:\t  100 kB\nVmHWM:\t    2048 kB\nVmRSS:\t1 kB\n";
        assert_eq!(vm_hwm(status), Some(2 << 20));
        assert_eq!(vm_hwm("VmHWM: lots"), None);
    }

    #[test]
    fn create_maps_the_requested_size() {
        let mem = create(64 << 20).unwrap();
        assert_eq!(mem.iter().map(|r| r.len()).sum::<u64>(), 64 << 20);
    }
}
