//! The VM's configuration as plain, validated data. The CLI builds it; the boot recipe reads it.

use std::path::PathBuf;
use std::time::Duration;

pub use crate::devices::virtio::DiskConfig;

/// Default kernel command line.
pub const DEFAULT_CMDLINE: &str = "console=ttyS0 reboot=k panic=1";

#[derive(Clone, Debug)]
pub struct VmConfig {
    pub kernel: PathBuf,
    pub initrd: Option<PathBuf>,
    /// Guest RAM in bytes, a multiple of 4 KiB.
    pub memory: u64,
    pub cpus: u8,
    pub cmdline: String,
    pub disks: Vec<DiskConfig>,
    /// Attach a virtio-rng device.
    pub rng: bool,
    /// Log the guest's boot time when it writes the boot-timer register.
    pub boot_timer: bool,
    /// Stop the VM after this long.
    pub timeout: Option<Duration>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Error {
    #[error("invalid --memory '{0}': use a size such as 256M, 1536M or 1G")]
    MemorySyntax(String),
    #[error("--memory must be more than 0")]
    MemoryZero,
    #[error("--memory {0} is not a multiple of 4 KiB")]
    MemoryAlign(String),
    #[error("invalid --cpus '{0}': use a whole number from 1 to 254")]
    CpusSyntax(String),
    #[error("invalid --disk '{0}': use PATH or PATH,readonly")]
    DiskSyntax(String),
}

/// Parse a memory size: a number with an optional K, M, G or T suffix (optionally followed by
/// "iB" or "B"); a bare number means MiB, as with other VMMs' `-m`.
pub fn parse_memory(text: &str) -> Result<u64, Error> {
    let t = text.trim();
    let digits = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, suffix) = t.split_at(digits);
    let num: u64 = num
        .parse()
        .map_err(|_| Error::MemorySyntax(text.to_string()))?;
    let shift = match suffix.to_ascii_uppercase().as_str() {
        "" | "M" | "MB" | "MIB" => 20,
        "K" | "KB" | "KIB" => 10,
        "G" | "GB" | "GIB" => 30,
        "T" | "TB" | "TIB" => 40,
        _ => return Err(Error::MemorySyntax(text.to_string())),
    };
    let bytes = num
        .checked_mul(1 << shift)
        .ok_or_else(|| Error::MemorySyntax(text.to_string()))?;
    if bytes == 0 {
        return Err(Error::MemoryZero);
    }
    if bytes % 4096 != 0 {
        return Err(Error::MemoryAlign(text.to_string()));
    }
    Ok(bytes)
}

/// Parse a vCPU count (1..=254; KVM's own limit is checked when the VM is built).
pub fn parse_cpus(text: &str) -> Result<u8, Error> {
    match text.trim().parse::<u8>() {
        Ok(n) if (1..=254).contains(&n) => Ok(n),
        _ => Err(Error::CpusSyntax(text.to_string())),
    }
}

/// Parse `PATH[,readonly]`.
pub fn parse_disk(text: &str) -> Result<DiskConfig, Error> {
    let (path, readonly) = match text.rsplit_once(',') {
        Some((path, "readonly" | "ro")) => (path, true),
        Some(_) => return Err(Error::DiskSyntax(text.to_string())),
        None => (text, false),
    };
    if path.is_empty() {
        return Err(Error::DiskSyntax(text.to_string()));
    }
    Ok(DiskConfig {
        path: PathBuf::from(path),
        readonly,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_sizes() {
        assert_eq!(parse_memory("256M"), Ok(256 << 20));
        assert_eq!(parse_memory("1G"), Ok(1 << 30));
        assert_eq!(parse_memory("1536M"), Ok(1536 << 20));
        assert_eq!(parse_memory("512"), Ok(512 << 20));
        assert_eq!(parse_memory("2GiB"), Ok(2 << 30));
        assert_eq!(parse_memory("65536k"), Ok(64 << 20));
        assert_eq!(parse_memory("0"), Err(Error::MemoryZero));
        assert_eq!(parse_memory("0M"), Err(Error::MemoryZero));
        assert_eq!(parse_memory("12Q"), Err(Error::MemorySyntax("12Q".into())));
        assert_eq!(parse_memory("M"), Err(Error::MemorySyntax("M".into())));
        assert_eq!(parse_memory("-1G"), Err(Error::MemorySyntax("-1G".into())));
        assert_eq!(
            parse_memory("99999999999999T"),
            Err(Error::MemorySyntax("99999999999999T".into()))
        );
        assert_eq!(parse_memory("5K"), Err(Error::MemoryAlign("5K".into())));
    }

    #[test]
    fn disks() {
        assert_eq!(
            parse_disk("a.img"),
            Ok(DiskConfig {
                path: "a.img".into(),
                readonly: false
            })
        );
        assert_eq!(
            parse_disk("d/b.img,readonly"),
            Ok(DiskConfig {
                path: "d/b.img".into(),
                readonly: true
            })
        );
        assert!(parse_disk("b.img,rw").is_err());
        assert!(parse_disk(",readonly").is_err());
    }

    #[test]
    fn cpu_counts() {
        assert_eq!(parse_cpus("2"), Ok(2));
        assert_eq!(parse_cpus("254"), Ok(254));
        assert!(parse_cpus("0").is_err());
        assert!(parse_cpus("255").is_err());
        assert!(parse_cpus("two").is_err());
    }
}
