//! Firecracker's configuration layout ([`FullConfig`]) to Kite's [`VmConfig`] and back. The
//! config file, the API's pre-boot calls and the command line all end in one `VmConfig`, which
//! is the only thing the boot recipe reads.

use std::path::PathBuf;
use std::time::Duration;

use super::types::{
    BootSource, Drive, Entropy, FullConfig, MachineConfig, NetworkInterface, Vsock,
};
use crate::config::{self, DEFAULT_CMDLINE, DiskConfig, NetConfig, VmConfig, VsockConfig};

/// What the command line decides that Firecracker's layout has no field for.
#[derive(Clone, Debug)]
pub struct Extras {
    pub boot_timer: bool,
    pub timeout: Option<Duration>,
    pub ring0_workarounds: crate::arch::x86_64::emulated_ring0::Mode,
    pub acpi: bool,
    pub seccomp: crate::seccomp::Mode,
}

/// The most vCPUs a configuration may ask for (see `config::parse_cpus`).
pub const MAX_VCPUS: u8 = 254;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Unsupported(#[from] super::types::Unsupported),
    #[error(
        "no kernel: give boot-source.kernel_image_path (PUT /boot-source, or the config file's boot-source)"
    )]
    NoKernel,
    #[error("machine-config.vcpu_count {0} is out of range: use 1 to {MAX_VCPUS}")]
    Vcpus(u8),
    #[error("machine-config.mem_size_mib must be more than 0")]
    MemoryZero,
    #[error(
        "machine-config.mem_size_mib {asked} is more than this host's {host} MiB of RAM: give less"
    )]
    MemoryHost { asked: u64, host: u64 },
    #[error("drives {0} and {1} are both the root device (is_root_device): only one may be")]
    TwoRoots(String, String),
    #[error("{what} {id:?} is given twice: each id may appear once")]
    DuplicateId { what: &'static str, id: String },
    #[error("{field} is empty: give a path")]
    EmptyPath { field: String },
    #[error("network-interfaces[{id}].guest_mac {mac:?}: use six hex bytes, unicast")]
    Mac { id: String, mac: String },
    #[error("{0}")]
    RateLimiter(String),
    #[error(
        "machine-config.vcpu_count {0} with smt: give 1 or an even number of vCPUs (two threads per core)"
    )]
    SmtOdd(u8),
}

/// The host's RAM in MiB (MemTotal), if it can be read.
fn host_ram_mib() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib >> 10)
}

/// Check `m`'s numbers (the parts a Firecracker client may get wrong).
pub fn check_machine(m: &MachineConfig) -> Result<(), Error> {
    m.check()?;
    if m.vcpu_count == 0 || m.vcpu_count > MAX_VCPUS {
        return Err(Error::Vcpus(m.vcpu_count));
    }
    if m.smt && m.vcpu_count > 1 && m.vcpu_count % 2 == 1 {
        return Err(Error::SmtOdd(m.vcpu_count));
    }
    if m.mem_size_mib == 0 {
        return Err(Error::MemoryZero);
    }
    if let Some(host) = host_ram_mib()
        && m.mem_size_mib > host
    {
        return Err(Error::MemoryHost {
            asked: m.mem_size_mib,
            host,
        });
    }
    Ok(())
}

fn nonempty(field: String, path: &str) -> Result<PathBuf, Error> {
    if path.is_empty() {
        return Err(Error::EmptyPath { field });
    }
    Ok(PathBuf::from(path))
}

/// The disk for `d` (checked on its own; the set of drives is checked by [`to_vm_config`]).
pub fn disk(d: &Drive) -> Result<DiskConfig, Error> {
    d.check()?;
    Ok(DiskConfig {
        path: nonempty(
            format!("drives[{}].path_on_host", d.drive_id),
            &d.path_on_host,
        )?,
        readonly: d.is_read_only,
        rate_limit: {
            let field = format!("drives[{}].rate_limiter", d.drive_id);
            let u =
                super::types::rate_limit_of(&field, &d.rate_limiter).map_err(Error::RateLimiter)?;
            crate::devices::virtio::RateLimit {
                bandwidth: u.bandwidth.flatten(),
                ops: u.ops.flatten(),
            }
        },
        io_engine: match d.io_engine.as_deref() {
            Some("Async") => crate::devices::virtio::IoEngine::Async,
            _ => crate::devices::virtio::IoEngine::Sync,
        },
    })
}

/// The drive a config file gives for disk `d`, the `i`th (`drive{i}`): [`disk`]'s inverse.
pub fn drive_of(i: usize, d: &DiskConfig) -> Drive {
    Drive {
        drive_id: format!("drive{i}"),
        path_on_host: d.path.to_string_lossy().into_owned(),
        is_root_device: false,
        is_read_only: d.readonly,
        partuuid: None,
        cache_type: None,
        io_engine: match d.io_engine {
            crate::devices::virtio::IoEngine::Sync => None,
            crate::devices::virtio::IoEngine::Async => Some("Async".to_string()),
        },
        rate_limiter: None,
        socket: None,
    }
}

/// The network interface a config file gives for `n`, the `i`th (`eth{i}`): [`net`]'s inverse.
pub fn interface_of(i: usize, n: &NetConfig) -> NetworkInterface {
    NetworkInterface {
        iface_id: format!("eth{i}"),
        host_dev_name: n.tap.clone(),
        guest_mac: Some(n.mac.map(|b| format!("{b:02x}")).join(":")),
        rx_rate_limiter: None,
        tx_rate_limiter: None,
    }
}

pub fn net(n: &NetworkInterface) -> Result<NetConfig, Error> {
    n.check()?;
    if n.host_dev_name.is_empty() {
        return Err(Error::EmptyPath {
            field: format!("network-interfaces[{}].host_dev_name", n.iface_id),
        });
    }
    let mac = match &n.guest_mac {
        Some(mac) => config::parse_mac(mac).map_err(|_| Error::Mac {
            id: n.iface_id.clone(),
            mac: mac.clone(),
        })?,
        None => config::random_mac(&n.host_dev_name),
    };
    let limit = |name: &str, v| {
        let field = format!("network-interfaces[{}].{name}", n.iface_id);
        super::types::rate_limit_of(&field, v)
            .map(|u| crate::devices::virtio::RateLimit {
                bandwidth: u.bandwidth.flatten(),
                ops: u.ops.flatten(),
            })
            .map_err(Error::RateLimiter)
    };
    Ok(NetConfig {
        tap: n.host_dev_name.clone(),
        mac,
        rx_rate_limit: limit("rx_rate_limiter", &n.rx_rate_limiter)?,
        tx_rate_limit: limit("tx_rate_limiter", &n.tx_rate_limiter)?,
    })
}

/// Any `guest_cid` is taken, as Firecracker takes it (the device logs a reserved one).
pub fn vsock(v: &Vsock) -> Result<VsockConfig, Error> {
    Ok(VsockConfig {
        cid: v.guest_cid,
        socket: nonempty("vsock.uds_path".into(), &v.uds_path)?,
    })
}

/// The whole configuration as a `VmConfig`. Unset sections take Kite's defaults (1 vCPU,
/// 256 MiB, `DEFAULT_CMDLINE`); the entropy device is there only if `entropy` is. The root
/// drive (`is_root_device`) becomes the first disk, `/dev/vda`, and `root=/dev/vda` with `ro`
/// or `rw` is added to the command line, as Firecracker does.
pub fn to_vm_config(c: &FullConfig, extras: &Extras) -> Result<VmConfig, Error> {
    c.check()?;
    let boot = c.boot_source.as_ref().ok_or(Error::NoKernel)?;
    let kernel = nonempty(
        "boot-source.kernel_image_path".into(),
        &boot.kernel_image_path,
    )?;
    let machine = c.machine_config.clone().unwrap_or_default();
    check_machine(&machine)?;
    if let Some(line) = super::cpu_template::not_applied(&machine.cpu_template) {
        log::info!("{line}");
    }
    if machine.smt && machine.vcpu_count > 1 {
        log::info!("smt: the guest's CPUID shows two threads per core");
    }
    let mut cmdline = boot
        .boot_args
        .clone()
        .unwrap_or_else(|| DEFAULT_CMDLINE.to_string());
    let roots: Vec<&Drive> = c.drives.iter().filter(|d| d.is_root_device).collect();
    if let [a, b, ..] = roots.as_slice() {
        return Err(Error::TwoRoots(a.drive_id.clone(), b.drive_id.clone()));
    }
    unique("drive_id", c.drives.iter().map(|d| &d.drive_id))?;
    unique("iface_id", c.network_interfaces.iter().map(|n| &n.iface_id))?;
    let ordered = roots
        .iter()
        .copied()
        .chain(c.drives.iter().filter(|d| !d.is_root_device));
    let disks = ordered.map(disk).collect::<Result<Vec<_>, _>>()?;
    if let Some(root) = roots.first() {
        let mode = if root.is_read_only { "ro" } else { "rw" };
        cmdline = format!("{cmdline} root=/dev/vda {mode}");
    }
    Ok(VmConfig {
        kernel,
        initrd: boot
            .initrd_path
            .as_deref()
            .map(|p| nonempty("boot-source.initrd_path".into(), p))
            .transpose()?,
        memory: machine.mem_size_bytes.unwrap_or(machine.mem_size_mib << 20),
        cpus: machine.vcpu_count,
        cmdline,
        disks,
        nets: c
            .network_interfaces
            .iter()
            .map(net)
            .collect::<Result<_, _>>()?,
        vsock: c.vsock.as_ref().map(vsock).transpose()?,
        smt: machine.smt,
        rng: c.entropy.is_some(),
        rng_rate_limit: match &c.entropy {
            Some(e) => {
                let u = super::types::rate_limit_of("entropy.rate_limiter", &e.rate_limiter)
                    .map_err(Error::RateLimiter)?;
                crate::devices::virtio::RateLimit {
                    bandwidth: u.bandwidth.flatten(),
                    ops: u.ops.flatten(),
                }
            }
            None => Default::default(),
        },
        boot_timer: extras.boot_timer,
        timeout: extras.timeout,
        ring0_workarounds: extras.ring0_workarounds,
        acpi: extras.acpi,
        seccomp: extras.seccomp,
        track_dirty_pages: machine.track_dirty_pages,
    })
}

fn unique<'a>(what: &'static str, ids: impl Iterator<Item = &'a String>) -> Result<(), Error> {
    let mut seen = std::collections::HashSet::new();
    for id in ids {
        if !seen.insert(id) {
            return Err(Error::DuplicateId {
                what,
                id: id.clone(),
            });
        }
    }
    Ok(())
}

/// A `VmConfig` made from command-line flags, in Firecracker's layout (for `GET /vm/config`):
/// drives are `drive0`, `drive1`, ..., interfaces `eth0`, ...; memory that is not a whole
/// number of MiB shows rounded up, and is kept exactly beside it.
pub fn from_vm_config(v: &VmConfig) -> FullConfig {
    let path = |p: &std::path::Path| p.to_string_lossy().into_owned();
    FullConfig {
        boot_source: Some(BootSource {
            kernel_image_path: path(&v.kernel),
            boot_args: Some(v.cmdline.clone()),
            initrd_path: v.initrd.as_deref().map(path),
        }),
        machine_config: Some(MachineConfig {
            vcpu_count: v.cpus,
            mem_size_mib: v.memory.div_ceil(1 << 20),
            mem_size_bytes: (!v.memory.is_multiple_of(1 << 20)).then_some(v.memory),
            smt: v.smt,
            ..MachineConfig::default()
        }),
        drives: v
            .disks
            .iter()
            .enumerate()
            .map(|(i, d)| drive_of(i, d))
            .collect(),
        network_interfaces: v
            .nets
            .iter()
            .enumerate()
            .map(|(i, n)| interface_of(i, n))
            .collect(),
        vsock: v.vsock.as_ref().map(|s| Vsock {
            vsock_id: None,
            guest_cid: s.cid,
            uds_path: path(&s.socket),
        }),
        entropy: v.rng.then(Entropy::default),
        ..FullConfig::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn extras() -> Extras {
        Extras {
            boot_timer: false,
            timeout: None,
            ring0_workarounds: crate::arch::x86_64::emulated_ring0::Mode::Off,
            acpi: false,
            seccomp: crate::seccomp::Mode::On,
        }
    }

    fn parse(text: &str) -> Result<VmConfig, Error> {
        to_vm_config(&serde_json::from_str(text).unwrap(), &extras())
    }

    #[test]
    fn defaults_and_fields() {
        let v = parse(r#"{"boot-source":{"kernel_image_path":"k"}}"#).unwrap();
        assert_eq!((v.cpus, v.memory, v.rng), (1, 256 << 20, false));
        assert_eq!(v.cmdline, DEFAULT_CMDLINE);
        let v = parse(
            r#"{"boot-source":{"kernel_image_path":"k","boot_args":"a=1","initrd_path":"i"},
                "machine-config":{"vcpu_count":2,"mem_size_mib":64},
                "drives":[{"drive_id":"data","path_on_host":"d.img","is_root_device":false},
                          {"drive_id":"root","path_on_host":"r.img","is_root_device":true,"is_read_only":true}],
                "network-interfaces":[{"iface_id":"eth0","host_dev_name":"tap0","guest_mac":"02:00:00:00:00:07"}],
                "vsock":{"guest_cid":5,"uds_path":"v.sock"},"entropy":{}}"#,
        )
        .unwrap();
        assert_eq!((v.cpus, v.memory, v.rng), (2, 64 << 20, true));
        assert_eq!(v.initrd, Some("i".into()));
        assert_eq!(v.disks[0].path, PathBuf::from("r.img"));
        assert!(v.disks[0].readonly);
        assert_eq!(v.disks[1].path, PathBuf::from("d.img"));
        assert_eq!(v.cmdline, "a=1 root=/dev/vda ro");
        assert_eq!(v.nets[0].mac, [2, 0, 0, 0, 0, 7]);
        assert_eq!(v.vsock.unwrap().cid, 5);
    }

    #[test]
    fn io_engine_picks_the_drive_engine_and_round_trips() {
        use crate::devices::virtio::IoEngine;
        let v = parse(
            r#"{"boot-source":{"kernel_image_path":"k"},
                "drives":[{"drive_id":"a","path_on_host":"a.img","is_root_device":false,"io_engine":"Async"},
                          {"drive_id":"s","path_on_host":"s.img","is_root_device":false,"io_engine":"Sync"},
                          {"drive_id":"n","path_on_host":"n.img","is_root_device":false}]}"#,
        )
        .unwrap();
        let engines: Vec<_> = v.disks.iter().map(|d| d.io_engine).collect();
        assert_eq!(engines, [IoEngine::Async, IoEngine::Sync, IoEngine::Sync]);
        let back = disk(&drive_of(0, &v.disks[0])).unwrap();
        assert_eq!(back.io_engine, IoEngine::Async);
        assert_eq!(drive_of(1, &v.disks[1]).io_engine, None);
    }

    #[test]
    fn bad_values_are_one_line_errors() {
        let cases = [
            (r#"{}"#, "no kernel"),
            (
                r#"{"boot-source":{"kernel_image_path":"k"},"machine-config":{"vcpu_count":0,"mem_size_mib":64}}"#,
                "vcpu_count 0 is out of range",
            ),
            (
                r#"{"boot-source":{"kernel_image_path":"k"},"machine-config":{"vcpu_count":1,"mem_size_mib":0}}"#,
                "more than 0",
            ),
            (
                r#"{"boot-source":{"kernel_image_path":"k"},"machine-config":{"vcpu_count":1,"mem_size_mib":1048576}}"#,
                "more than this host's",
            ),
            (
                r#"{"boot-source":{"kernel_image_path":"k"},"drives":[
                    {"drive_id":"a","path_on_host":"a","is_root_device":true},
                    {"drive_id":"b","path_on_host":"b","is_root_device":true}]}"#,
                "both the root device",
            ),
            (
                r#"{"boot-source":{"kernel_image_path":"k"},"drives":[
                    {"drive_id":"a","path_on_host":"a","is_root_device":false},
                    {"drive_id":"a","path_on_host":"b","is_root_device":false}]}"#,
                "given twice",
            ),
            (
                r#"{"boot-source":{"kernel_image_path":"k"},"machine-config":{"vcpu_count":3,"mem_size_mib":64,"smt":true}}"#,
                "even number",
            ),
            (
                r#"{"boot-source":{"kernel_image_path":"k"},"network-interfaces":[{"iface_id":"e","host_dev_name":"t","guest_mac":"01:00:00:00:00:00"}]}"#,
                "unicast",
            ),
            (
                r#"{"boot-source":{"kernel_image_path":"k"},"machine-config":{"vcpu_count":1,"mem_size_mib":64,"huge_pages":"2M"}}"#,
                "huge_pages",
            ),
        ];
        for (text, want) in cases {
            let e = parse(text).unwrap_err().to_string();
            assert!(e.contains(want), "{text}: {e}");
            assert!(!e.contains('\n'), "{e}");
        }
    }

    #[test]
    fn a_flag_config_round_trips_through_the_layout() {
        let v = parse(
            r#"{"boot-source":{"kernel_image_path":"k","boot_args":"x"},
                "machine-config":{"vcpu_count":3,"mem_size_mib":96},
                "drives":[{"drive_id":"d","path_on_host":"d.img","is_root_device":false,"is_read_only":true}],
                "vsock":{"guest_cid":9,"uds_path":"v"},"entropy":{}}"#,
        )
        .unwrap();
        let back = to_vm_config(&from_vm_config(&v), &extras()).unwrap();
        assert_eq!(format!("{back:?}"), format!("{v:?}"));
    }
}
