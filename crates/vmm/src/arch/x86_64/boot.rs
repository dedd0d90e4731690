//! Loading a Linux kernel and initrd, and building the zero page (`struct boot_params`).
//!
//! Kernels come as an ELF `vmlinux` or a `bzImage`; the format is detected from the file.
//! Both are entered through the 64-bit boot protocol (Documentation/arch/x86/boot.rst).

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use linux_loader::configurator::linux::LinuxBootConfigurator;
use linux_loader::configurator::{BootConfigurator, BootParams};
use linux_loader::loader::bootparam::{boot_e820_entry, boot_params, setup_header};
use linux_loader::loader::{BzImage, Elf, KernelLoader, KernelLoaderResult};
use vm_memory::{Address, Bytes, GuestAddress, ReadVolatile};

use super::layout::*;
use crate::memory::GuestMem;

const E820_RAM: u32 = 1;
const BOOT_FLAG_MAGIC: u16 = 0xaa55;
const HDRS_MAGIC: u32 = 0x5372_6448; // "HdrS"
const LOADER_TYPE_UNDEFINED: u8 = 0xff;
const KERNEL_ALIGNMENT: u32 = 0x0100_0000;
/// xloadflags bit: the kernel has the 64-bit entry point at `code32_start + 0x200`.
const XLF_KERNEL_64: u16 = 1;
/// loadflags bit: `heap_end_ptr` is valid.
const CAN_USE_HEAP: u8 = 0x80;
/// Offset of the 64-bit entry point in a bzImage's protected-mode code.
const BZIMAGE_64BIT_ENTRY_OFFSET: u64 = 0x200;
/// Guest RAM a kernel needs above the end of its image for early page tables, brk and stacks.
pub const KERNEL_HEADROOM: u64 = 8 << 20;
const PAGE_SIZE: u64 = 4096;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot read kernel {}", path.display())]
    KernelOpen {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("kernel {} is neither an ELF vmlinux nor a bzImage; pass an uncompressed vmlinux or a bzImage", path.display())]
    UnknownFormat { path: PathBuf },
    #[error("bzImage {} does not support the 64-bit boot protocol (needs boot protocol 2.12 or later with XLF_KERNEL_64)", path.display())]
    No64BitEntry { path: PathBuf },
    #[error("cannot load kernel {} into guest memory ({source}); it may need more --memory", path.display())]
    Load {
        path: PathBuf,
        source: linux_loader::loader::Error,
    },
    #[error("--memory {mem_mib}M is too small for this kernel: it needs at least {need_mib} MiB")]
    MemoryTooSmall { mem_mib: u64, need_mib: u64 },
    #[error("cannot read initrd {}", path.display())]
    InitrdOpen {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("initrd {} ({size_mib} MiB) does not fit in guest RAM above the kernel; increase --memory", path.display())]
    InitrdTooBig { path: PathBuf, size_mib: u64 },
    #[error("command line is {len} bytes; this kernel accepts at most {max}")]
    CmdlineTooLong { len: usize, max: usize },
    #[error("guest memory write failed while setting up boot data")]
    GuestWrite(#[from] vm_memory::GuestMemoryError),
    #[error("cannot write the zero page")]
    ZeroPage(#[source] linux_loader::configurator::Error),
}

/// How a kernel image is packaged.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KernelFormat {
    Elf,
    BzImage,
}

/// Tell an ELF from a bzImage by their magic numbers (ELF at offset 0, "HdrS" at 0x202).
pub fn detect_format(image: &mut (impl Read + Seek)) -> std::io::Result<Option<KernelFormat>> {
    let mut head = [0u8; 0x206];
    image.seek(SeekFrom::Start(0))?;
    let mut filled = 0;
    while filled < head.len() {
        match image.read(&mut head[filled..])? {
            0 => break,
            n => filled += n,
        }
    }
    image.seek(SeekFrom::Start(0))?;
    if filled >= 4 && head[..4] == *b"\x7fELF" {
        return Ok(Some(KernelFormat::Elf));
    }
    if filled >= 0x206
        && u32::from_le_bytes([head[0x202], head[0x203], head[0x204], head[0x205]]) == HDRS_MAGIC
    {
        return Ok(Some(KernelFormat::BzImage));
    }
    Ok(None)
}

/// Where a kernel went and how to enter it.
#[derive(Clone, Copy, Debug)]
pub struct LoadedKernel {
    pub format: KernelFormat,
    /// 64-bit entry point (RIP at boot).
    pub entry: GuestAddress,
    /// First byte past the loaded image.
    pub end: u64,
    /// The bzImage's setup header, to be copied into the zero page.
    pub setup_header: Option<setup_header>,
}

impl LoadedKernel {
    /// The longest command line this kernel accepts, without its NUL.
    pub fn cmdline_max(&self) -> usize {
        match self.setup_header {
            Some(h) if h.version >= 0x0206 && h.cmdline_size > 0 => {
                (h.cmdline_size as usize).min(CMDLINE_MAX_SIZE - 1)
            }
            _ => CMDLINE_MAX_SIZE - 1,
        }
    }

    /// Highest address the initrd may reach (inclusive).
    pub fn initrd_addr_max(&self) -> u64 {
        match self.setup_header {
            Some(h) if h.initrd_addr_max != 0 => u64::from(h.initrd_addr_max),
            _ => u64::from(u32::MAX),
        }
    }
}

/// Load the kernel at `path` into `mem`, from `opened` when the caller has it open already
/// (read from its start).
pub fn load_kernel(
    mem: &GuestMem,
    path: &Path,
    opened: Option<File>,
) -> Result<LoadedKernel, Error> {
    let open_err = |source| Error::KernelOpen {
        path: path.to_owned(),
        source,
    };
    let mut file = match opened {
        Some(mut file) => {
            file.rewind().map_err(open_err)?;
            file
        }
        None => File::open(path).map_err(open_err)?,
    };
    if file.metadata().map_err(open_err)?.is_dir() {
        return Err(open_err(std::io::Error::from(
            std::io::ErrorKind::IsADirectory,
        )));
    }
    load_kernel_image(mem, &mut file, path)
}

/// Load a kernel image already open (a file, or bytes in memory); `path` names it in errors.
pub fn load_kernel_image<F>(
    mem: &GuestMem,
    image: &mut F,
    path: &Path,
) -> Result<LoadedKernel, Error>
where
    F: Read + ReadVolatile + Seek,
{
    let open_err = |source| Error::KernelOpen {
        path: path.to_owned(),
        source,
    };
    let format = detect_format(image)
        .map_err(open_err)?
        .ok_or_else(|| Error::UnknownFormat {
            path: path.to_owned(),
        })?;
    let load_err = |source| Error::Load {
        path: path.to_owned(),
        source,
    };
    let himem = Some(GuestAddress(HIMEM_START));
    let result: KernelLoaderResult = match format {
        KernelFormat::Elf => Elf::load(mem, None, image, himem).map_err(load_err)?,
        KernelFormat::BzImage => BzImage::load(mem, None, image, himem).map_err(load_err)?,
    };
    let entry = match (format, result.setup_header) {
        (KernelFormat::BzImage, Some(h)) => {
            if h.version < 0x020c || h.xloadflags & XLF_KERNEL_64 == 0 {
                return Err(Error::No64BitEntry {
                    path: path.to_owned(),
                });
            }
            result.kernel_load.unchecked_add(BZIMAGE_64BIT_ENTRY_OFFSET)
        }
        _ => result.kernel_load,
    };
    let kernel = LoadedKernel {
        format,
        entry,
        end: result.kernel_end,
        setup_header: result.setup_header,
    };
    // A corrupt ELF can put its end near the top of the address space.
    let need = kernel.end.saturating_add(KERNEL_HEADROOM);
    let have = low_ram_end(mem);
    if have < need {
        return Err(Error::MemoryTooSmall {
            mem_mib: have >> 20,
            need_mib: need.div_ceil(1 << 20),
        });
    }
    Ok(kernel)
}

/// The end of RAM below the MMIO gap.
pub fn low_ram_end(mem: &GuestMem) -> u64 {
    use vm_memory::GuestMemoryBackend;
    mem.last_addr().raw_value().min(MMIO_GAP_START - 1) + 1
}

/// Load the initrd at the top of low RAM, page-aligned, above the kernel. Returns (address, size).
pub fn load_initrd(
    mem: &GuestMem,
    path: &Path,
    kernel: &LoadedKernel,
) -> Result<(GuestAddress, u64), Error> {
    let open_err = |source| Error::InitrdOpen {
        path: path.to_owned(),
        source,
    };
    let mut file = File::open(path).map_err(open_err)?;
    let meta = file.metadata().map_err(open_err)?;
    if meta.is_dir() {
        return Err(open_err(std::io::Error::from(
            std::io::ErrorKind::IsADirectory,
        )));
    }
    let size = meta.len();
    let too_big = || Error::InitrdTooBig {
        path: path.to_owned(),
        size_mib: size.div_ceil(1 << 20),
    };
    let addr = initrd_address(low_ram_end(mem), kernel.initrd_addr_max(), kernel.end, size)
        .ok_or_else(too_big)?;
    mem.read_exact_volatile_from(addr, &mut file, size as usize)
        .map_err(|e| match e {
            vm_memory::GuestMemoryError::IOError(source) => open_err(source),
            other => Error::GuestWrite(other),
        })?;
    Ok((addr, size))
}

/// Page-aligned start for an initrd of `size` bytes ending at or below `min(ram_end, addr_max+1)`
/// and starting at or above `kernel_end`.
pub fn initrd_address(
    ram_end: u64,
    addr_max: u64,
    kernel_end: u64,
    size: u64,
) -> Option<GuestAddress> {
    let top = ram_end.min(addr_max.saturating_add(1));
    let start = top.checked_sub(size)? & !(PAGE_SIZE - 1);
    (start >= kernel_end.next_multiple_of(PAGE_SIZE) && size > 0).then_some(GuestAddress(start))
}

/// The e820 map for guest RAM: low memory below the EBDA, then RAM from 1 MiB around the gap.
pub fn e820_map(mem_size: u64) -> Vec<boot_e820_entry> {
    let ram = |addr, size| boot_e820_entry {
        addr,
        size,
        r#type: E820_RAM,
    };
    let mut map = vec![ram(0, EBDA_START)];
    let low_end = mem_size.min(MMIO_GAP_START);
    if low_end > HIMEM_START {
        map.push(ram(HIMEM_START, low_end - HIMEM_START));
    }
    if mem_size > MMIO_GAP_START {
        map.push(ram(MMIO_GAP_END, mem_size - MMIO_GAP_START));
    }
    map
}

/// Build the zero page. `cmdline_len` excludes the NUL.
pub fn zero_page(
    kernel: &LoadedKernel,
    cmdline_len: usize,
    initrd: Option<(GuestAddress, u64)>,
    mem_size: u64,
) -> Result<boot_params, Error> {
    let max = kernel.cmdline_max();
    if cmdline_len > max {
        return Err(Error::CmdlineTooLong {
            len: cmdline_len,
            max,
        });
    }
    let mut params = boot_params::default();
    if let Some(h) = kernel.setup_header {
        params.hdr = h;
        params.hdr.loadflags |= CAN_USE_HEAP;
        params.hdr.heap_end_ptr = 0xfe00;
    } else {
        params.hdr.boot_flag = BOOT_FLAG_MAGIC;
        params.hdr.header = HDRS_MAGIC;
        params.hdr.kernel_alignment = KERNEL_ALIGNMENT;
    }
    params.hdr.type_of_loader = LOADER_TYPE_UNDEFINED;
    params.hdr.cmd_line_ptr = CMDLINE_ADDR as u32;
    params.hdr.cmdline_size = cmdline_len as u32;
    if let Some((addr, size)) = initrd {
        params.hdr.ramdisk_image = addr.raw_value() as u32;
        params.hdr.ramdisk_size = size as u32;
    }
    let map = e820_map(mem_size);
    for (slot, entry) in params.e820_table.iter_mut().zip(&map) {
        *slot = *entry;
    }
    params.e820_entries = map.len() as u8;
    Ok(params)
}

/// Write the command line (NUL-terminated) and the zero page into guest memory.
pub fn write_boot_data(mem: &GuestMem, cmdline: &str, params: &boot_params) -> Result<(), Error> {
    mem.write_slice(cmdline.as_bytes(), GuestAddress(CMDLINE_ADDR))?;
    mem.write_obj(0u8, GuestAddress(CMDLINE_ADDR + cmdline.len() as u64))?;
    let boot = BootParams::new(params, GuestAddress(ZERO_PAGE_ADDR));
    LinuxBootConfigurator::write_bootparams(&boot, mem).map_err(Error::ZeroPage)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;

    fn elf_kernel(end: u64) -> LoadedKernel {
        LoadedKernel {
            format: KernelFormat::Elf,
            entry: GuestAddress(0x100_0000),
            end,
            setup_header: None,
        }
    }

    #[test]
    fn detects_elf_and_bzimage_and_rejects_other_files() {
        let mut elf = b"\x7fELF\x02\x01\x01".to_vec();
        elf.resize(64, 0);
        assert_eq!(
            detect_format(&mut Cursor::new(elf)).unwrap(),
            Some(KernelFormat::Elf)
        );
        let mut bz = vec![0u8; 0x400];
        bz[0x202..0x206].copy_from_slice(b"HdrS");
        assert_eq!(
            detect_format(&mut Cursor::new(bz)).unwrap(),
            Some(KernelFormat::BzImage)
        );
        assert_eq!(
            detect_format(&mut Cursor::new(b"#!/bin/sh\n".to_vec())).unwrap(),
            None
        );
        assert_eq!(detect_format(&mut Cursor::new(Vec::new())).unwrap(), None);
    }

    /// A synthetic bzImage: `setup_sects` sectors of real-mode setup after the boot sector, then
    /// the protected-mode payload.
    fn fake_bzimage(setup_sects: u8, version: u16, xloadflags: u16, payload: &[u8]) -> Vec<u8> {
        let mut img = vec![0u8; (usize::from(setup_sects) + 1) * 512];
        img[0x1f1] = setup_sects;
        img[0x1fe..0x200].copy_from_slice(&BOOT_FLAG_MAGIC.to_le_bytes());
        img[0x202..0x206].copy_from_slice(b"HdrS");
        img[0x206..0x208].copy_from_slice(&version.to_le_bytes());
        img[0x211] = 1; // loadflags: LOADED_HIGH
        img[0x214..0x218].copy_from_slice(&(HIMEM_START as u32).to_le_bytes());
        img[0x230..0x234].copy_from_slice(&0x20_0000u32.to_le_bytes()); // kernel_alignment
        img[0x236..0x238].copy_from_slice(&xloadflags.to_le_bytes());
        img[0x238..0x23c].copy_from_slice(&255u32.to_le_bytes()); // cmdline_size
        img.extend_from_slice(payload);
        img
    }

    #[test]
    fn bzimage_payload_loads_after_setup_sectors_and_enters_at_plus_0x200() {
        let mem = crate::memory::create(64 << 20).unwrap();
        let payload: Vec<u8> = (0..4096u32).map(|i| (i * 7) as u8).collect();
        let path = std::env::temp_dir().join(format!("kite-bz-{}", std::process::id()));
        std::fs::write(&path, fake_bzimage(3, 0x020f, XLF_KERNEL_64, &payload)).unwrap();
        let k = load_kernel(&mem, &path, None).unwrap();
        std::fs::remove_file(&path).unwrap();
        assert_eq!(k.format, KernelFormat::BzImage);
        assert_eq!(k.entry, GuestAddress(HIMEM_START + 0x200));
        assert_eq!(k.end, HIMEM_START + 4096);
        let mut back = vec![0u8; 4096];
        mem.read_slice(&mut back, GuestAddress(HIMEM_START))
            .unwrap();
        assert_eq!(back, payload);
        let h = k.setup_header.unwrap();
        assert_eq!(
            ({ h.setup_sects }, { h.version }, { h.cmdline_size }),
            (3, 0x020f, 255)
        );
        assert_eq!(k.cmdline_max(), 255);
    }

    /// Found by the `loader` fuzz target (fuzz/regressions/loader/elf-memsz-overflows-headroom,
    /// without its 6-byte prefix): an ELF segment whose p_memsz runs to the top of the address
    /// space made the headroom check overflow, a panic in debug builds and a kernel accepted in
    /// release ones.
    #[test]
    fn elf_ending_at_the_top_of_the_address_space_is_refused() {
        const IMAGE: &[u8] = &[
            0x7f, 0x45, 0x4c, 0x46, 0x02, 0x01, 0x01, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
            0x00, 0x00, 0x02, 0x00, 0x3e, 0x01, 0xf0, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x01,
            0x00, 0x00, 0x00, 0x00, 0x40, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
            0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x40, 0x00, 0x38, 0x00,
            0x01, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00, 0x07, 0x45,
            0x4c, 0x5b, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x01,
            0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x03, 0x00,
            0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
            0xd9, 0xe6, 0x00, 0x56, 0x00, 0x3c, 0x00, 0x49,
        ];
        let mem = crate::memory::create(32 << 20).unwrap();
        let loaded = load_kernel_image(&mem, &mut Cursor::new(IMAGE), Path::new("vmlinux"));
        assert!(
            matches!(loaded, Err(Error::MemoryTooSmall { .. })),
            "{loaded:?}"
        );
    }

    #[test]
    fn old_bzimage_protocol_is_refused() {
        let mem = crate::memory::create(64 << 20).unwrap();
        let path = std::env::temp_dir().join(format!("kite-bz-old-{}", std::process::id()));
        for (version, xlf) in [(0x020b, XLF_KERNEL_64), (0x020f, 0)] {
            std::fs::write(&path, fake_bzimage(4, version, xlf, &[0u8; 512])).unwrap();
            assert!(
                matches!(
                    load_kernel(&mem, &path, None),
                    Err(Error::No64BitEntry { .. })
                ),
                "{version:#x}"
            );
        }
        std::fs::remove_file(&path).unwrap();
    }

    #[test]
    fn e820_below_gap() {
        let map = e820_map(256 << 20);
        let m: Vec<_> = map
            .iter()
            .map(|e| ({ e.addr }, { e.size }, { e.r#type }))
            .collect();
        assert_eq!(
            m,
            vec![
                (0, EBDA_START, 1),
                (HIMEM_START, (256 << 20) - HIMEM_START, 1)
            ]
        );
    }

    #[test]
    fn e820_splits_around_the_gap() {
        let size = 4u64 << 30;
        let map = e820_map(size);
        let m: Vec<_> = map.iter().map(|e| (e.addr, e.size)).collect();
        assert_eq!(
            m,
            vec![
                (0, EBDA_START),
                (HIMEM_START, MMIO_GAP_START - HIMEM_START),
                (MMIO_GAP_END, size - MMIO_GAP_START)
            ]
        );
        // No entry may touch the gap.
        assert!(
            map.iter()
                .all(|e| e.addr + e.size <= MMIO_GAP_START || e.addr >= MMIO_GAP_END)
        );
        assert_eq!(
            map.iter().map(|e| e.size).sum::<u64>(),
            size - (HIMEM_START - EBDA_START)
        );
    }

    #[test]
    fn zero_page_fields_for_elf() {
        let initrd = Some((GuestAddress(0x0f00_0000), 0x12345));
        let p = zero_page(&elf_kernel(0x200_0000), 40, initrd, 256 << 20).unwrap();
        let hdr = p.hdr;
        assert_eq!({ hdr.boot_flag }, BOOT_FLAG_MAGIC);
        assert_eq!({ hdr.header }, HDRS_MAGIC);
        assert_eq!({ hdr.type_of_loader }, 0xff);
        assert_eq!({ hdr.cmd_line_ptr }, CMDLINE_ADDR as u32);
        assert_eq!({ hdr.cmdline_size }, 40);
        assert_eq!({ hdr.ramdisk_image }, 0x0f00_0000);
        assert_eq!({ hdr.ramdisk_size }, 0x12345);
        assert_eq!(p.e820_entries, 2);
        let e = p.e820_table[1];
        assert_eq!(
            ({ e.addr }, { e.size }),
            (HIMEM_START, (256 << 20) - HIMEM_START)
        );
    }

    #[test]
    fn zero_page_keeps_bzimage_header_and_its_cmdline_limit() {
        let h = setup_header {
            version: 0x020f,
            cmdline_size: 100,
            xloadflags: 1,
            header: HDRS_MAGIC,
            boot_flag: BOOT_FLAG_MAGIC,
            setup_sects: 27,
            ..Default::default()
        };
        let k = LoadedKernel {
            format: KernelFormat::BzImage,
            setup_header: Some(h),
            ..elf_kernel(0x20_0000)
        };
        assert_eq!(k.cmdline_max(), 100);
        let p = zero_page(&k, 100, None, 64 << 20).unwrap();
        assert_eq!({ p.hdr.setup_sects }, 27);
        assert_eq!({ p.hdr.version }, 0x020f);
        assert_eq!({ p.hdr.type_of_loader }, 0xff);
        assert_eq!({ p.hdr.ramdisk_image }, 0);
        assert!(matches!(
            zero_page(&k, 101, None, 64 << 20),
            Err(Error::CmdlineTooLong { len: 101, max: 100 })
        ));
    }

    #[test]
    fn cmdline_limit_for_elf_is_command_line_size() {
        let k = elf_kernel(0x20_0000);
        assert!(zero_page(&k, CMDLINE_MAX_SIZE - 1, None, 64 << 20).is_ok());
        assert!(zero_page(&k, CMDLINE_MAX_SIZE, None, 64 << 20).is_err());
    }

    #[test]
    fn initrd_goes_page_aligned_at_the_top_of_low_ram() {
        let a = initrd_address(256 << 20, u32::MAX as u64, 0x200_0000, 0x1234).unwrap();
        assert_eq!(a.raw_value(), (256 << 20) - 0x2000);
        assert_eq!(a.raw_value() % 4096, 0);
        // addr_max caps the top.
        let a = initrd_address(1 << 30, 0x7fff_ffff, 0, 0x1000).unwrap();
        assert!(a.raw_value() + 0x1000 <= 0x8000_0000);
        // Does not fit above the kernel.
        assert!(initrd_address(32 << 20, u32::MAX as u64, 30 << 20, 4 << 20).is_none());
        assert!(initrd_address(32 << 20, u32::MAX as u64, 0, 64 << 20).is_none());
    }

    #[test]
    fn boot_data_lands_in_memory() {
        let mem = crate::memory::create(64 << 20).unwrap();
        let p = zero_page(&elf_kernel(0x20_0000), 12, None, 64 << 20).unwrap();
        write_boot_data(&mem, "console=ttyS0", &p).unwrap();
        let mut buf = [0u8; 14];
        mem.read_slice(&mut buf, GuestAddress(CMDLINE_ADDR))
            .unwrap();
        assert_eq!(&buf, b"console=ttyS0\0");
        let back: boot_params = mem.read_obj(GuestAddress(ZERO_PAGE_ADDR)).unwrap();
        assert_eq!({ back.hdr.cmd_line_ptr }, CMDLINE_ADDR as u32);
        assert_eq!(back.e820_entries, 2);
    }
}
