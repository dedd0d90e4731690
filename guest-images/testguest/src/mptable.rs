//! The Intel MultiProcessor Specification table: which processors (local APIC IDs) the
//! machine has. Found by its floating pointer `_MP_` in the first KiB of the EBDA, the last
//! KiB of base memory (0x9fc00) or the BIOS area 0xf0000-0xfffff.

use crate::mem::{read_u8, read_u16, read_u32};

pub const MAX_CPUS: usize = 256;

pub struct MpInfo {
    /// APIC IDs of the enabled processors, in table order.
    pub apic_ids: [u8; MAX_CPUS],
    pub count: usize,
    /// APIC ID of the processor the table marks as the boot processor, if any.
    pub bsp: Option<u8>,
}

fn checksum_ok(addr: u64, len: u64) -> bool {
    (0..len).fold(0u8, |sum, i| sum.wrapping_add(read_u8(addr + i))) == 0
}

fn find_floating_pointer() -> Option<u64> {
    let ebda = (read_u16(0x40e) as u64) << 4;
    let mut areas = [(0x9fc00u64, 0xa0000u64), (0, 0), (0xf0000, 0x100000)];
    if (0x80000..0xa0000).contains(&ebda) && ebda != 0x9fc00 {
        areas[1] = (ebda, ebda + 1024);
    }
    for (start, end) in areas {
        let mut p = start;
        while p + 16 <= end {
            if read_u32(p) == u32::from_le_bytes(*b"_MP_") {
                let len = read_u8(p + 8) as u64 * 16;
                if len >= 16 && checksum_ok(p, len) {
                    return Some(p);
                }
            }
            p += 16;
        }
    }
    None
}

/// Reads the processor entries of the MP configuration table.
pub fn read() -> Result<MpInfo, &'static str> {
    let mpf = find_floating_pointer().ok_or("no MP floating pointer (_MP_) found")?;
    let table = read_u32(mpf + 4) as u64;
    if table == 0 {
        return Err(
            "MP floating pointer has no configuration table (default configurations are not supported)",
        );
    }
    if read_u32(table) != u32::from_le_bytes(*b"PCMP") {
        return Err("MP configuration table signature is not PCMP");
    }
    let length = read_u16(table + 4) as u64;
    if !checksum_ok(table, length) {
        return Err("MP configuration table checksum is wrong");
    }
    let entries = read_u16(table + 0x22);
    let mut info = MpInfo {
        apic_ids: [0; MAX_CPUS],
        count: 0,
        bsp: None,
    };
    let mut p = table + 0x2c;
    let end = table + length;
    for _ in 0..entries {
        if p >= end {
            break;
        }
        match read_u8(p) {
            0 => {
                let apic_id = read_u8(p + 1);
                let flags = read_u8(p + 3);
                if flags & 1 != 0 && info.count < MAX_CPUS {
                    info.apic_ids[info.count] = apic_id;
                    info.count += 1;
                    if flags & 2 != 0 {
                        info.bsp = Some(apic_id);
                    }
                }
                p += 20;
            }
            1..=4 => p += 8,
            _ => return Err("MP configuration table has an unknown entry type"),
        }
    }
    Ok(info)
}
