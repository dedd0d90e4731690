//! Whether an ELF kernel can use ACPI at all, read from its symbol table.
//!
//! With ACPI tables the DSDT names the virtio devices, and without them the command line does
//! (never both: a Linux kernel with ACPI would probe each device twice and log an error for the
//! second). A kernel with no ACPI support at all (Kite's own test guest, a Linux built without
//! `CONFIG_ACPI`, most unikernels) would then find no devices unless told `--no-acpi`. An ELF
//! kernel's string table says which it is: a kernel that can read ACPI tables has symbols named
//! after it (Linux's `acpi_init`, ...). A bzImage is compressed and an ELF without a symbol
//! table says nothing; both keep ACPI.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};

const SHT_SYMTAB: u32 = 2;
/// More than any kernel's string table (Linux's is well under 10 MiB).
const STRTAB_MAX: u64 = 64 << 20;

/// True only when `kernel` is a 64-bit little-endian ELF whose symbol table has no symbol with
/// "acpi" in its name (in any case); false when it has one, or when that cannot be told. The
/// caller's open file is read from its start (the loader then reads it again, from its start:
/// the kernel is opened once).
pub fn lacks_acpi(kernel: &mut File) -> bool {
    names_acpi(kernel) == Some(false)
}

/// Whether the string table linked from the ELF's symbol table has "acpi" in it, in any case;
/// `None` if there is no such table or it cannot be read. The table is read a page at a time
/// and the search stops at the first match: a few KiB of a Linux with ACPI are read, and never
/// the whole table (0.6 MB for the guest-images vmlinux) is in memory, where it would raise
/// the VMM's peak resident set. Never inlined: its buffer stays out of `Vmm::new`'s frame.
#[inline(never)]
fn names_acpi(f: &mut File) -> Option<bool> {
    const NAME: &[u8] = b"acpi";
    let (offset, size) = strtab(f)?;
    f.seek(SeekFrom::Start(offset)).ok()?;
    // The last NAME.len() - 1 bytes of a page are kept before the next, for a name across both.
    let mut buf = [0u8; 4096 + NAME.len() - 1];
    let (mut kept, mut left) = (0, size);
    while left > 0 {
        let n = (buf.len() - kept).min(usize::try_from(left).ok()?);
        f.read_exact(&mut buf[kept..kept + n]).ok()?;
        let end = kept + n;
        if buf[..end]
            .windows(NAME.len())
            .any(|w| w.eq_ignore_ascii_case(NAME))
        {
            return Some(true);
        }
        left -= n as u64;
        kept = end.min(NAME.len() - 1);
        buf.copy_within(end - kept..end, 0);
    }
    Some(false)
}

/// The offset and size of the string table linked from the kernel's symbol table, if there is
/// one.
fn strtab(f: &mut File) -> Option<(u64, u64)> {
    f.rewind().ok()?;
    let mut eh = [0u8; 64];
    f.read_exact(&mut eh).ok()?;
    // 64-bit (class 2), little-endian (data 1).
    if eh[..4] != *b"\x7fELF" || eh[4] != 2 || eh[5] != 1 {
        return None;
    }
    let shoff = u64::from_le_bytes(eh[0x28..0x30].try_into().ok()?);
    let shentsize = u16::from_le_bytes([eh[0x3a], eh[0x3b]]) as u64;
    let shnum = u16::from_le_bytes([eh[0x3c], eh[0x3d]]) as u64;
    if shoff == 0 || shentsize < 64 || shnum == 0 {
        return None;
    }
    let mut table = vec![0u8; (shentsize * shnum) as usize];
    f.seek(SeekFrom::Start(shoff)).ok()?;
    f.read_exact(&mut table).ok()?;
    let section = |i: u64| -> Option<&[u8]> {
        let at = (i * shentsize) as usize;
        table.get(at..at + 64)
    };
    let symtab = (0..shnum)
        .filter_map(section)
        .find(|s| u32::from_le_bytes([s[4], s[5], s[6], s[7]]) == SHT_SYMTAB)?;
    let link = u32::from_le_bytes(symtab[0x28..0x2c].try_into().ok()?) as u64;
    let strtab = section(link)?;
    let offset = u64::from_le_bytes(strtab[0x18..0x20].try_into().ok()?);
    let size = u64::from_le_bytes(strtab[0x20..0x28].try_into().ok()?);
    if size == 0 || size > STRTAB_MAX {
        return None;
    }
    Some((offset, size))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A 64-bit ELF with a null section, a symbol table and its string table `names`.
    fn elf(names: &[u8], symtab: bool) -> Vec<u8> {
        let shoff = 64u64;
        let strtab_at = shoff + 3 * 64;
        let mut out = vec![0u8; strtab_at as usize];
        out[..6].copy_from_slice(b"\x7fELF\x02\x01");
        out[0x28..0x30].copy_from_slice(&shoff.to_le_bytes());
        out[0x3a..0x3c].copy_from_slice(&64u16.to_le_bytes());
        out[0x3c..0x3e].copy_from_slice(&3u16.to_le_bytes());
        let sym = (shoff + 64) as usize;
        let kind: u32 = if symtab { SHT_SYMTAB } else { 1 };
        out[sym + 4..sym + 8].copy_from_slice(&kind.to_le_bytes());
        out[sym + 0x28..sym + 0x2c].copy_from_slice(&2u32.to_le_bytes());
        let st = (shoff + 128) as usize;
        out[st + 4..st + 8].copy_from_slice(&3u32.to_le_bytes());
        out[st + 0x18..st + 0x20].copy_from_slice(&strtab_at.to_le_bytes());
        out[st + 0x20..st + 0x28].copy_from_slice(&(names.len() as u64).to_le_bytes());
        out.extend_from_slice(names);
        out
    }

    fn check(bytes: &[u8]) -> bool {
        let path = std::env::temp_dir().join(format!(
            "kite-elf-acpi-{}-{}",
            std::process::id(),
            bytes.len()
        ));
        std::fs::write(&path, bytes).unwrap();
        let mut file = File::open(&path).unwrap();
        // Wherever the caller's file stands, it is read from its start.
        file.seek(SeekFrom::End(0)).unwrap();
        let lacks = lacks_acpi(&mut file);
        std::fs::remove_file(&path).unwrap();
        lacks
    }

    #[test]
    fn only_an_elf_whose_symbols_never_name_acpi_lacks_it() {
        assert!(check(&elf(b"\0_start\0main\0virtio_probe\0", true)));
        assert!(!check(&elf(b"\0_start\0acpi_init\0", true)));
        assert!(!check(&elf(b"\0_start\0x86_ACPI_tables\0", true)));
        // No symbol table, not an ELF, or no file: cannot tell, so ACPI stays.
        assert!(!check(&elf(b"\0_start\0", false)));
        assert!(!check(
            b"MZ not an elf at all, but long enough to hold a header............"
        ));
    }

    #[test]
    fn a_long_table_is_searched_page_by_page() {
        // Many pages without the name; then one where "acpi" lies across two reads.
        let plain: Vec<u8> = b"\0"
            .iter()
            .chain(&b"x_y\0".repeat(3000))
            .copied()
            .collect();
        assert!(check(&elf(&plain, true)));
        let mut across = vec![b'x'; 4098];
        across[0] = 0;
        across.extend_from_slice(b"acpi_init\0");
        assert!(!check(&elf(&across, true)));
        // A table that says it is longer than the file: cannot tell, so ACPI stays.
        let mut cut = elf(&plain, true);
        cut.truncate(cut.len() - 100);
        assert!(!check(&cut));
    }
}
