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
use std::path::Path;

const SHT_SYMTAB: u32 = 2;
/// More than any kernel's string table (Linux's is well under 10 MiB).
const STRTAB_MAX: u64 = 64 << 20;

/// True only when `path` is a 64-bit little-endian ELF whose symbol table has no symbol with
/// "acpi" in its name (in any case); false when it has one, or when that cannot be told.
pub fn lacks_acpi(path: &Path) -> bool {
    read_strtab(path)
        .is_some_and(|names| !names.windows(4).any(|w| w.eq_ignore_ascii_case(b"acpi")))
}

/// The string table linked from the ELF's symbol table, if there is one.
fn read_strtab(path: &Path) -> Option<Vec<u8>> {
    let mut f = File::open(path).ok()?;
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
    let mut names = vec![0u8; size as usize];
    f.seek(SeekFrom::Start(offset)).ok()?;
    f.read_exact(&mut names).ok()?;
    Some(names)
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
        let lacks = lacks_acpi(&path);
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
        assert!(!lacks_acpi(Path::new("/nonexistent/kernel")));
    }
}
