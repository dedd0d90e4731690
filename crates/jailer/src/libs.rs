//! A dynamically linked exec file needs its loader and libraries inside the jail. Firecracker's
//! jailer requires a static binary; `cargo build` makes Kite dynamic (glibc; `scripts/install.sh`
//! links it statically), so Kite's jailer copies what the loader lists (`ld.so --list`, what ldd runs) into the jail at the same
//! paths. A static exec file needs nothing.

use std::path::{Path, PathBuf};

use crate::Error;

const PT_INTERP: u32 = 3;

/// The ELF interpreter (PT_INTERP) of `exe`, if it has one.
pub fn interpreter(exe: &Path) -> Result<Option<PathBuf>, Error> {
    let bytes = std::fs::read(exe).map_err(Error::step("read the exec file", exe))?;
    let u16_at = |o: usize| {
        bytes
            .get(o..o + 2)
            .map(|b| u16::from_le_bytes([b[0], b[1]]))
    };
    let u32_at = |o: usize| {
        bytes
            .get(o..o + 4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    };
    let u64_at = |o: usize| {
        bytes
            .get(o..o + 8)
            .and_then(|b| b.try_into().ok())
            .map(u64::from_le_bytes)
    };
    // A 64-bit little-endian ELF file; anything else is left alone.
    if bytes.get(..6) != Some(&[0x7f, b'E', b'L', b'F', 2, 1][..]) {
        return Ok(None);
    }
    let (Some(phoff), Some(phentsize), Some(phnum)) = (u64_at(0x20), u16_at(0x36), u16_at(0x38))
    else {
        return Ok(None);
    };
    for i in 0..usize::from(phnum) {
        let ph = phoff as usize + i * usize::from(phentsize);
        if u32_at(ph) != Some(PT_INTERP) {
            continue;
        }
        let (Some(off), Some(size)) = (u64_at(ph + 8), u64_at(ph + 32)) else {
            return Ok(None);
        };
        let Some(raw) = bytes.get(off as usize..(off + size) as usize) else {
            return Ok(None);
        };
        let name = raw.split(|&b| b == 0).next().unwrap_or_default();
        return Ok(Some(PathBuf::from(
            String::from_utf8_lossy(name).into_owned(),
        )));
    }
    Ok(None)
}

/// The files the loader maps for `exe`: the loader itself and each library's path.
pub fn needed(exe: &Path) -> Result<Vec<PathBuf>, Error> {
    let Some(interp) = interpreter(exe)? else {
        return Ok(Vec::new());
    };
    let out = std::process::Command::new(&interp)
        .arg("--list")
        .arg(exe)
        .output()
        .map_err(Error::step(
            "list the libraries of the exec file with",
            &interp,
        ))?;
    if !out.status.success() {
        return Err(Error::Step {
            step: "list the libraries of the exec file with",
            path: interp.display().to_string(),
            source: std::io::Error::other(String::from_utf8_lossy(&out.stderr).trim().to_string()),
        });
    }
    let mut files = vec![interp];
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let path = match line.split_once("=>") {
            Some((_, rest)) => rest.split_whitespace().next(),
            None => line.split_whitespace().next(),
        };
        if let Some(p) = path.filter(|p| p.starts_with('/')) {
            let p = PathBuf::from(p);
            if !files.contains(&p) {
                files.push(p);
            }
        }
    }
    Ok(files)
}

/// Copy each of `files` into `root` at the same path (directories 0755, files with their own
/// mode), for the VMM's loader.
pub fn copy_into(
    undo: &mut crate::jail::Undo,
    root: &Path,
    files: &[PathBuf],
) -> Result<(), Error> {
    for f in files {
        let rel = f.strip_prefix("/").unwrap_or(f);
        let to = root.join(rel);
        if let Some(dir) = to.parent() {
            undo.mkdirs(dir, 0o755)?;
        }
        if !to.exists() {
            undo.made(&to);
        }
        std::fs::copy(f, &to).map_err(Error::step("copy a library into the jail:", &to))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_test_binarys_loader_and_libraries_are_found() {
        let exe = std::env::current_exe().unwrap();
        match interpreter(&exe).unwrap() {
            Some(interp) => {
                let files = needed(&exe).unwrap();
                assert_eq!(files[0], interp);
                assert!(
                    files
                        .iter()
                        .any(|f| f.to_string_lossy().contains("libc.so")),
                    "{files:?}"
                );
            }
            None => assert!(needed(&exe).unwrap().is_empty()),
        }
        let not_elf = std::env::temp_dir().join(format!("kite-not-elf-{}", std::process::id()));
        std::fs::write(&not_elf, b"#!/bin/sh\n").unwrap();
        assert_eq!(interpreter(&not_elf).unwrap(), None);
        let _ = std::fs::remove_file(&not_elf);
    }
}
