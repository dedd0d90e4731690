//! Physical memory: volatile access helpers (everything is identity-mapped, so a physical
//! address is also a pointer) and a page allocator over the e820 RAM.

use crate::bootinfo::{BootInfo, E820_RAM};

/// The physical address space entry.S maps: RAM below this, except the MMIO window.
pub const MAPPED_LIMIT: u64 = 64 << 30;
/// The 32-bit MMIO window, mapped uncached and user-accessible; never RAM for us.
pub const MMIO_WINDOW: (u64, u64) = (0xc000_0000, 0x1_0000_0000);
pub const PAGE_SIZE: u64 = 4096;

#[inline(always)]
pub fn read_u8(addr: u64) -> u8 {
    // SAFETY: callers pass mapped, identity-mapped physical addresses.
    unsafe { (addr as *const u8).read_volatile() }
}

#[inline(always)]
pub fn read_u16(addr: u64) -> u16 {
    // SAFETY: as for read_u8.
    unsafe { (addr as *const u16).read_unaligned() }
}

#[inline(always)]
pub fn read_u32(addr: u64) -> u32 {
    // SAFETY: as for read_u8.
    unsafe { (addr as *const u32).read_unaligned() }
}

#[inline(always)]
pub fn read_u64(addr: u64) -> u64 {
    // SAFETY: as for read_u8.
    unsafe { (addr as *const u64).read_unaligned() }
}

/// Device registers: naturally aligned, volatile, exactly one access of the given width.
pub mod mmio {
    #[inline(always)]
    pub fn read32(addr: u64) -> u32 {
        // SAFETY: callers pass a mapped device register address (MMIO window).
        unsafe { (addr as *const u32).read_volatile() }
    }

    #[inline(always)]
    pub fn write32(addr: u64, value: u32) {
        // SAFETY: as for read32.
        unsafe { (addr as *mut u32).write_volatile(value) }
    }

    #[allow(dead_code)]
    #[inline(always)]
    pub fn read8(addr: u64) -> u8 {
        // SAFETY: as for read32.
        unsafe { (addr as *const u8).read_volatile() }
    }

    #[allow(dead_code)]
    #[inline(always)]
    pub fn write8(addr: u64, value: u8) {
        // SAFETY: as for read32.
        unsafe { (addr as *mut u8).write_volatile(value) }
    }

    #[allow(dead_code)]
    #[inline(always)]
    pub fn read16(addr: u64) -> u16 {
        // SAFETY: as for read32.
        unsafe { (addr as *const u16).read_volatile() }
    }

    #[allow(dead_code)]
    #[inline(always)]
    pub fn write16(addr: u64, value: u16) {
        // SAFETY: as for read32.
        unsafe { (addr as *mut u16).write_volatile(value) }
    }
}

unsafe extern "C" {
    static __image_start: u8;
    static __image_end: u8;
    /// entry.S: the page-directory-pointer table (entry n maps GiB n) and the pool of page
    /// directories for GiB 4 up (one 4 KiB page each, in order, not zeroed by anyone).
    static mut pdpt: [u64; 512];
    /// entry.S: the page directories of GiB 0 to 3, one 4 KiB page each, in order; zero
    /// in the image for GiB 1 and 2, which are linked from pdpt when first mapped.
    static mut pd_low: [u64; 0];
    static mut pd_pool: [u64; 0];
}

/// Identity-maps the e820 RAM from 1 GiB up (except the MMIO window) with 2 MiB user pages,
/// as entry.S does below 1 GiB in ring 0. Each GiB's page directory is filled while nothing points at it, at native speed
/// and with no trap (a live page table is write-protected by the host's shadow paging), then
/// linked with one write. Call once, before anything touches RAM above 4 GiB.
pub fn map_ram_above_1gib(boot: &BootInfo) {
    const GIB: u64 = 1 << 30;
    const LARGE: u64 = 2 << 20;
    const PTE_RAM: u64 = 0x87; // present, writable, user, 2 MiB
    const PDE_TABLE: u64 = 0x7; // present, writable, user
    for e in boot.e820().iter().filter(|e| e.kind == E820_RAM) {
        let end = e.addr.saturating_add(e.size).min(MAPPED_LIMIT);
        let mut at = e.addr.max(GIB) & !(LARGE - 1);
        while at < end {
            let gib = at / GIB;
            if gib == 3 {
                at = 4 * GIB; // the MMIO window: mapped at link time, never RAM
                continue;
            }
            // SAFETY: pdpt has 512 entries and gib < 64; pd_low holds the page directories
            // of GiB 0-3 and pd_pool those of GiB 4-63, 4 KiB each; all are identity-mapped
            // in the image. A page directory is written through a plain pointer only while
            // the pdpt entry that would make it live is zero, or (a second e820 range in the
            // same GiB) through the same trapped writes entry.S would make.
            unsafe {
                let entry = core::ptr::addr_of_mut!(pdpt)
                    .cast::<u64>()
                    .add(gib as usize);
                let pd = if gib < 4 {
                    core::ptr::addr_of_mut!(pd_low)
                        .cast::<u64>()
                        .add((gib * 512) as usize)
                } else {
                    core::ptr::addr_of_mut!(pd_pool)
                        .cast::<u64>()
                        .add(((gib - 4) * 512) as usize)
                };
                let live = entry.read_volatile() != 0;
                if !live {
                    core::ptr::write_bytes(pd, 0, 512);
                }
                let stop = end.min((gib + 1) * GIB);
                while at < stop {
                    pd.add(((at >> 21) & 511) as usize)
                        .write_volatile(at | PTE_RAM);
                    at += LARGE;
                }
                if !live {
                    entry.write_volatile(pd as u64 | PDE_TABLE);
                }
            }
        }
    }
}

#[derive(Clone, Copy, Default)]
struct Range {
    start: u64,
    end: u64,
}

const MAX_RANGES: usize = 64;

/// First-fit allocator over the free RAM: e820 RAM from 1 MiB up to [`MAPPED_LIMIT`],
/// less the MMIO window, the guest image, the zero page, the command line and the initrd.
/// Memory below 1 MiB is left alone (BIOS-era structures, the AP start-up page).
/// Nothing is ever freed: scenarios are one-shot.
pub struct PageAllocator {
    free: [Range; MAX_RANGES],
    len: usize,
}

impl PageAllocator {
    pub fn new(boot: &BootInfo) -> PageAllocator {
        let mut a = PageAllocator {
            free: [Range::default(); MAX_RANGES],
            len: 0,
        };
        for e in boot.e820().iter().filter(|e| e.kind == E820_RAM) {
            let start = e.addr.max(1 << 20);
            let end = e.addr.saturating_add(e.size).min(MAPPED_LIMIT);
            if start < end && a.len < MAX_RANGES {
                a.free[a.len] = Range { start, end };
                a.len += 1;
            }
        }
        // link.ld defines both symbols; only their addresses are used.
        let (img_start, img_end) = (
            core::ptr::addr_of!(__image_start) as u64,
            core::ptr::addr_of!(__image_end) as u64,
        );
        a.reserve(MMIO_WINDOW.0, MMIO_WINDOW.1);
        a.reserve(img_start, img_end);
        a.reserve(boot.zero_page, boot.zero_page + PAGE_SIZE);
        if boot.cmdline_addr != 0 {
            a.reserve(
                boot.cmdline_addr,
                boot.cmdline_addr + boot.cmdline().len() as u64 + 1,
            );
        }
        if let Some((addr, size)) = boot.initrd {
            a.reserve(addr, addr.saturating_add(size));
        }
        a
    }

    /// Removes [start, end) from the free ranges.
    pub fn reserve(&mut self, start: u64, end: u64) {
        let mut i = 0;
        while i < self.len {
            let r = self.free[i];
            if end <= r.start || start >= r.end {
                i += 1;
                continue;
            }
            let left = Range {
                start: r.start,
                end: start.max(r.start),
            };
            let right = Range {
                start: end.min(r.end),
                end: r.end,
            };
            let mut pieces = 0;
            if left.start < left.end {
                self.free[i] = left;
                pieces += 1;
            }
            if right.start < right.end {
                if pieces == 0 {
                    self.free[i] = right;
                } else if self.len < MAX_RANGES {
                    // Insert after i.
                    let mut j = self.len;
                    while j > i + 1 {
                        self.free[j] = self.free[j - 1];
                        j -= 1;
                    }
                    self.free[i + 1] = right;
                    self.len += 1;
                    i += 1;
                }
                pieces += 1;
            }
            if pieces == 0 {
                for j in i..self.len - 1 {
                    self.free[j] = self.free[j + 1];
                }
                self.len -= 1;
            } else {
                i += 1;
            }
        }
    }

    /// Allocates `size` bytes aligned to `align` (a power of two), lowest address first.
    /// The memory is not cleared.
    pub fn alloc(&mut self, size: u64, align: u64) -> Option<u64> {
        for i in 0..self.len {
            let r = self.free[i];
            let start = (r.start + align - 1) & !(align - 1);
            if start < r.end && r.end - start >= size {
                self.reserve(start, start + size);
                return Some(start);
            }
        }
        None
    }

    /// Allocates `pages` zeroed 4 KiB pages (for DMA rings, buffers).
    #[allow(dead_code)]
    pub fn alloc_pages_zeroed(&mut self, pages: u64) -> Option<u64> {
        let addr = self.alloc(pages * PAGE_SIZE, PAGE_SIZE)?;
        // SAFETY: freshly allocated RAM, identity-mapped, owned by the caller.
        unsafe { core::ptr::write_bytes(addr as *mut u8, 0, (pages * PAGE_SIZE) as usize) };
        Some(addr)
    }

    /// Largest contiguous free block in bytes.
    pub fn largest_free(&self) -> u64 {
        self.free[..self.len]
            .iter()
            .map(|r| r.end - r.start)
            .max()
            .unwrap_or(0)
    }
}
