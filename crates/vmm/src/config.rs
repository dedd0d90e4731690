//! The VM's configuration as plain, validated data. The CLI builds it; the boot recipe reads it.

use std::path::PathBuf;
use std::time::Duration;

pub use crate::devices::virtio::{DiskConfig, IoEngine, NetConfig, VsockConfig};

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
    /// Network interfaces, each on a host tap.
    pub nets: Vec<NetConfig>,
    /// A vsock device (one guest CID).
    pub vsock: Option<VsockConfig>,
    /// Two threads per core in the guest's CPU topology (Firecracker's `smt`).
    pub smt: bool,
    /// Attach a virtio-rng device.
    pub rng: bool,
    /// The entropy device's `rate_limiter` (none: no limit).
    pub rng_rate_limit: crate::devices::virtio::RateLimit,
    /// Log the guest's boot time when it writes the boot-timer register.
    pub boot_timer: bool,
    /// Stop the VM after this long.
    pub timeout: Option<Duration>,
    /// When to apply the workarounds for a host whose KVM emulates guest ring 0.
    pub ring0_workarounds: crate::arch::x86_64::emulated_ring0::Mode,
    /// Describe the machine with ACPI tables too (the devices then only there).
    pub acpi: bool,
    /// Whether the per-thread seccomp filters are enforced.
    pub seccomp: crate::seccomp::Mode,
    /// Log the pages the guest writes (machine-config `track_dirty_pages`), for diff
    /// snapshots.
    pub track_dirty_pages: bool,
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
    #[error("invalid --disk '{0}': use PATH[,readonly][,io=uring|io=sync]")]
    DiskSyntax(String),
    #[error("invalid --net '{0}': use tap=NAME or tap=NAME,mac=02:00:00:00:00:01")]
    NetSyntax(String),
    #[error("invalid MAC address '{0}' in --net: use six hex bytes, unicast (even first byte)")]
    Mac(String),
    #[error("invalid --vsock '{0}': use cid=N,socket=PATH")]
    VsockSyntax(String),
    #[error("--vsock cid={0} is reserved: use 3 or more (below 4294967295)")]
    VsockCid(u32),
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

/// Parse `PATH[,readonly][,io=uring|io=sync]` (the options in any order, each at most once).
pub fn parse_disk(text: &str) -> Result<DiskConfig, Error> {
    let bad = || Error::DiskSyntax(text.to_string());
    let mut path = text;
    let mut readonly = None;
    let mut io_engine = None;
    while let Some((rest, option)) = path.rsplit_once(',') {
        match option {
            "readonly" | "ro" if readonly.is_none() => readonly = Some(true),
            "io=uring" if io_engine.is_none() => io_engine = Some(IoEngine::Async),
            "io=sync" if io_engine.is_none() => io_engine = Some(IoEngine::Sync),
            _ => return Err(bad()),
        }
        path = rest;
    }
    if path.is_empty() {
        return Err(bad());
    }
    Ok(DiskConfig {
        path: PathBuf::from(path),
        readonly: readonly.unwrap_or(false),
        rate_limit: Default::default(),
        io_engine: io_engine.unwrap_or_default(),
    })
}

/// Split `key=value,key=value`; `None` if a part has no `=` or a key repeats.
fn options(text: &str) -> Option<Vec<(&str, &str)>> {
    let mut out: Vec<(&str, &str)> = Vec::new();
    for part in text.split(',') {
        let (key, value) = part.split_once('=')?;
        if out.iter().any(|&(k, _)| k == key) {
            return None;
        }
        out.push((key, value));
    }
    Some(out)
}

/// Parse `tap=NAME[,mac=MAC]`; without a MAC, a locally administered one is made up.
pub fn parse_net(text: &str) -> Result<NetConfig, Error> {
    let syntax = || Error::NetSyntax(text.to_string());
    let (mut tap, mut mac) = (None, None);
    for (key, value) in options(text).ok_or_else(syntax)? {
        match key {
            "tap" if !value.is_empty() => tap = Some(value.to_string()),
            "mac" => mac = Some(parse_mac(value)?),
            _ => return Err(syntax()),
        }
    }
    let tap = tap.ok_or_else(syntax)?;
    let mac = mac.unwrap_or_else(|| random_mac(&tap));
    Ok(NetConfig {
        tap,
        mac,
        rx_rate_limit: Default::default(),
        tx_rate_limit: Default::default(),
    })
}

/// Parse `aa:bb:cc:dd:ee:ff` (or with `-`), a unicast address.
pub fn parse_mac(text: &str) -> Result<[u8; 6], Error> {
    let bad = || Error::Mac(text.to_string());
    let mut mac = [0u8; 6];
    let mut parts = text.split([':', '-']);
    for byte in &mut mac {
        let part = parts.next().filter(|p| p.len() == 2).ok_or_else(bad)?;
        *byte = u8::from_str_radix(part, 16).map_err(|_| bad())?;
    }
    if parts.next().is_some() || mac[0] & 1 != 0 || mac == [0; 6] {
        return Err(bad());
    }
    Ok(mac)
}

/// A random, locally administered, unicast MAC address.
pub(crate) fn random_mac(tap: &str) -> [u8; 6] {
    use std::hash::{BuildHasher, Hasher};
    // RandomState is seeded from the host's randomness, differently in each process.
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write(tap.as_bytes());
    let bits = hasher.finish().to_le_bytes();
    let mut mac = [0u8; 6];
    mac.copy_from_slice(&bits[..6]);
    mac[0] = (mac[0] & 0xfc) | 0x02;
    mac
}

/// Parse `cid=N,socket=PATH`.
pub fn parse_vsock(text: &str) -> Result<VsockConfig, Error> {
    let syntax = || Error::VsockSyntax(text.to_string());
    let (mut cid, mut socket) = (None, None);
    for (key, value) in options(text).ok_or_else(syntax)? {
        match key {
            "cid" => cid = Some(value.parse::<u32>().map_err(|_| syntax())?),
            "socket" if !value.is_empty() => socket = Some(PathBuf::from(value)),
            _ => return Err(syntax()),
        }
    }
    let (cid, socket) = cid.zip(socket).ok_or_else(syntax)?;
    if cid < 3 || cid == u32::MAX {
        return Err(Error::VsockCid(cid));
    }
    Ok(VsockConfig { cid, socket })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nets() {
        assert_eq!(
            parse_net("tap=tap0,mac=02:aB:00:00:00:01"),
            Ok(NetConfig {
                tap: "tap0".into(),
                mac: [2, 0xab, 0, 0, 0, 1],
                rx_rate_limit: Default::default(),
                tx_rate_limit: Default::default(),
            })
        );
        assert_eq!(
            parse_net("mac=02-00-00-00-00-09,tap=t").unwrap().mac,
            [2, 0, 0, 0, 0, 9]
        );
        let a = parse_net("tap=tap0").unwrap();
        assert_eq!(a.tap, "tap0");
        assert_eq!(a.mac[0] & 3, 2, "made-up MAC is not local unicast");
        for bad in [
            "",
            "tap0",
            "tap=",
            "mac=02:00:00:00:00:01",
            "tap=a,tap=b",
            "tap=a,x=1",
            "tap=a,",
        ] {
            assert_eq!(parse_net(bad), Err(Error::NetSyntax(bad.into())), "{bad:?}");
        }
        for bad in [
            "01:00:00:00:00:01",
            "00:00:00:00:00:00",
            "02:00:00:00:00",
            "02:00:00:00:00:01:02",
            "02:00:00:00:00:1",
            "02:00:00:00:00:zz",
        ] {
            assert_eq!(
                parse_net(&format!("tap=t,mac={bad}")),
                Err(Error::Mac(bad.into()))
            );
        }
    }

    #[test]
    fn vsocks() {
        assert_eq!(
            parse_vsock("cid=3,socket=/tmp/v.sock"),
            Ok(VsockConfig {
                cid: 3,
                socket: "/tmp/v.sock".into()
            })
        );
        assert_eq!(parse_vsock("socket=v,cid=42").unwrap().cid, 42);
        assert_eq!(parse_vsock("cid=2,socket=v"), Err(Error::VsockCid(2)));
        assert_eq!(
            parse_vsock("cid=4294967295,socket=v"),
            Err(Error::VsockCid(u32::MAX))
        );
        for bad in [
            "",
            "cid=3",
            "socket=v",
            "cid=x,socket=v",
            "cid=3,socket=",
            "cid=3,socket=v,y=1",
        ] {
            assert_eq!(
                parse_vsock(bad),
                Err(Error::VsockSyntax(bad.into())),
                "{bad:?}"
            );
        }
    }

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
                readonly: false,
                rate_limit: Default::default(),
                io_engine: IoEngine::Sync,
            })
        );
        assert_eq!(
            parse_disk("d/b.img,readonly"),
            Ok(DiskConfig {
                path: "d/b.img".into(),
                readonly: true,
                rate_limit: Default::default(),
                io_engine: IoEngine::Sync,
            })
        );
        for text in ["c.img,io=uring,readonly", "c.img,ro,io=uring"] {
            let d = parse_disk(text).unwrap();
            assert_eq!((d.path.to_str(), d.readonly), (Some("c.img"), true));
            assert_eq!(d.io_engine, IoEngine::Async);
        }
        assert_eq!(
            parse_disk("c.img,io=sync").unwrap().io_engine,
            IoEngine::Sync
        );
        assert!(parse_disk("b.img,rw").is_err());
        assert!(parse_disk(",readonly").is_err());
        assert!(parse_disk("b.img,io=aio").is_err());
        assert!(parse_disk("b.img,io=uring,io=sync").is_err());
        assert!(parse_disk("b.img,ro,readonly").is_err());
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
