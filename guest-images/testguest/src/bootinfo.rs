//! What the VMM hands over in the zero page (`struct boot_params`, Linux x86 boot
//! protocol): the e820 map, the command line and the initrd location. Copied out once, so
//! the zero page and the command line may be reused afterwards.

use crate::mem::{read_u8, read_u32, read_u64};

const E820_ENTRIES: u64 = 0x1e8; // u8
const E820_TABLE: u64 = 0x2d0; // 128 x 20 bytes
const E820_MAX: usize = 128;
const EXT_CMD_LINE_PTR: u64 = 0x0c8; // u32, high half of the command-line address
const RAMDISK_IMAGE: u64 = 0x218; // u32
const RAMDISK_SIZE: u64 = 0x21c; // u32
const CMD_LINE_PTR: u64 = 0x228; // u32
const CMDLINE_SIZE: u64 = 0x238; // u32, maximum length (protocol 2.06+)
const EXT_RAMDISK_IMAGE: u64 = 0x0c0; // u32
const EXT_RAMDISK_SIZE: u64 = 0x0c4; // u32

pub const E820_RAM: u32 = 1;
/// Longest command line kept (Linux's COMMAND_LINE_SIZE is 2048).
pub const CMDLINE_MAX: usize = 4096;

#[derive(Clone, Copy, Default)]
pub struct E820Entry {
    pub addr: u64,
    pub size: u64,
    pub kind: u32,
}

pub struct BootInfo {
    pub zero_page: u64,
    pub e820: [E820Entry; E820_MAX],
    pub e820_len: usize,
    pub cmdline_addr: u64,
    cmdline: [u8; CMDLINE_MAX],
    cmdline_len: usize,
    /// Where the initrd is, if the VMM loaded one: (address, size).
    pub initrd: Option<(u64, u64)>,
}

impl BootInfo {
    /// Reads the zero page at `zero_page` (identity-mapped, user-accessible).
    pub fn read(zero_page: u64) -> BootInfo {
        let mut info = BootInfo {
            zero_page,
            e820: [E820Entry::default(); E820_MAX],
            e820_len: 0,
            cmdline_addr: 0,
            cmdline: [0; CMDLINE_MAX],
            cmdline_len: 0,
            initrd: None,
        };
        let n = (read_u8(zero_page + E820_ENTRIES) as usize).min(E820_MAX);
        for i in 0..n {
            let e = zero_page + E820_TABLE + 20 * i as u64;
            info.e820[i] = E820Entry {
                addr: read_u64(e),
                size: read_u64(e + 8),
                kind: read_u32(e + 16),
            };
        }
        info.e820_len = n;

        let cmdline = read_u32(zero_page + CMD_LINE_PTR) as u64
            | (read_u32(zero_page + EXT_CMD_LINE_PTR) as u64) << 32;
        if cmdline != 0 {
            let declared = read_u32(zero_page + CMDLINE_SIZE) as usize;
            let max = if declared == 0 {
                CMDLINE_MAX
            } else {
                declared.min(CMDLINE_MAX)
            };
            let mut len = 0;
            while len < max {
                let b = read_u8(cmdline + len as u64);
                if b == 0 {
                    break;
                }
                info.cmdline[len] = b;
                len += 1;
            }
            info.cmdline_addr = cmdline;
            info.cmdline_len = len;
        }

        let initrd = read_u32(zero_page + RAMDISK_IMAGE) as u64
            | (read_u32(zero_page + EXT_RAMDISK_IMAGE) as u64) << 32;
        let initrd_size = read_u32(zero_page + RAMDISK_SIZE) as u64
            | (read_u32(zero_page + EXT_RAMDISK_SIZE) as u64) << 32;
        if initrd != 0 && initrd_size != 0 {
            info.initrd = Some((initrd, initrd_size));
        }
        info
    }

    pub fn e820(&self) -> &[E820Entry] {
        &self.e820[..self.e820_len]
    }

    pub fn cmdline(&self) -> &[u8] {
        &self.cmdline[..self.cmdline_len]
    }

    /// Total usable RAM (e820 type 1) in bytes.
    pub fn ram_bytes(&self) -> u64 {
        self.e820()
            .iter()
            .filter(|e| e.kind == E820_RAM)
            .map(|e| e.size)
            .sum()
    }
}
