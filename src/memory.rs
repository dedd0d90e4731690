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
    fn create_maps_the_requested_size() {
        let mem = create(64 << 20).unwrap();
        assert_eq!(mem.iter().map(|r| r.len()).sum::<u64>(), 64 << 20);
    }
}
