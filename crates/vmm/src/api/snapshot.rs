//! `PUT /snapshot/create` and `PUT /snapshot/load`: Firecracker's bodies, checked, and a load
//! carried out on a Kite that has not started a VM.

use std::path::PathBuf;
use std::time::Instant;

use serde::Deserialize;

use super::types::{FullConfig, MachineConfig};
use crate::snapshot::{self, Kind, MemBackend as Backend, Overrides, SnapshotState};
use crate::vmm::Vmm;

/// `PUT /snapshot/create`.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SnapshotCreate {
    #[serde(default)]
    pub snapshot_type: Option<String>,
    pub snapshot_path: String,
    pub mem_file_path: String,
    /// Firecracker's old field (the format version to write); only Kite's own is written.
    #[serde(default)]
    pub version: Option<String>,
}

/// `mem_backend` of `PUT /snapshot/load`.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MemBackend {
    pub backend_type: String,
    pub backend_path: String,
}

/// One entry of `network_overrides`.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetworkOverride {
    pub iface_id: String,
    pub host_dev_name: String,
}

/// `vsock_override`.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VsockOverride {
    pub uds_path: String,
}

/// `PUT /snapshot/load`.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SnapshotLoad {
    pub snapshot_path: String,
    #[serde(default)]
    pub mem_backend: Option<MemBackend>,
    /// Deprecated in Firecracker: the memory file, without `mem_backend`.
    #[serde(default)]
    pub mem_file_path: Option<String>,
    #[serde(default)]
    pub track_dirty_pages: Option<bool>,
    /// Deprecated in Firecracker: `track_dirty_pages`.
    #[serde(default)]
    pub enable_diff_snapshots: Option<bool>,
    #[serde(default)]
    pub resume_vm: Option<bool>,
    #[serde(default)]
    pub network_overrides: Vec<NetworkOverride>,
    #[serde(default)]
    pub vsock_override: Option<VsockOverride>,
}

/// The kind and the two paths of a create, checked. (Whether a Diff can be made, the VM
/// knows: [`crate::snapshot::create`] says.)
pub fn create_paths(c: &SnapshotCreate) -> Result<(Kind, PathBuf, PathBuf), String> {
    let kind = match c.snapshot_type.as_deref() {
        None | Some("Full") => Kind::Full,
        Some("Diff") => Kind::Diff,
        Some(other) => {
            return Err(format!("unknown snapshot_type {other:?}: use Full or Diff"));
        }
    };
    if c.snapshot_path.is_empty() || c.mem_file_path.is_empty() {
        return Err("snapshot_path and mem_file_path must both be given".into());
    }
    let (state, mem) = (
        PathBuf::from(&c.snapshot_path),
        PathBuf::from(&c.mem_file_path),
    );
    if state == mem {
        return Err("snapshot_path and mem_file_path are the same file: give two paths".into());
    }
    // A missing directory shows when the files are created (the main thread, which does
    // this, may not stat(2) paths).
    Ok((kind, state, mem))
}

/// What a load asks for, checked: (snapshot file, guest RAM's backend, overrides, resume).
pub fn load_request(l: &SnapshotLoad) -> Result<(PathBuf, Backend, Overrides, bool), String> {
    let (mem, path) = match (&l.mem_backend, &l.mem_file_path) {
        (Some(_), Some(_)) => {
            return Err("give mem_backend or the deprecated mem_file_path, not both".into());
        }
        (None, None) => return Err("mem_backend is missing: say where the memory file is".into()),
        (None, Some(path)) => (Backend::File(path.into()), path),
        (Some(b), None) => match b.backend_type.as_str() {
            "File" => (Backend::File((&b.backend_path).into()), &b.backend_path),
            "Uffd" => (Backend::Uffd((&b.backend_path).into()), &b.backend_path),
            other => return Err(format!("unknown backend_type {other:?}: use File or Uffd")),
        },
    };
    if l.snapshot_path.is_empty() || path.is_empty() {
        return Err(match mem {
            Backend::Uffd(_) => "snapshot_path and backend_path (the page-fault handler's socket) must both be given".into(),
            Backend::File(_) => "snapshot_path and the memory file path must both be given".into(),
        });
    }
    let overrides = Overrides {
        taps: l
            .network_overrides
            .iter()
            .map(|o| (o.iface_id.clone(), o.host_dev_name.clone()))
            .collect(),
        vsock_socket: l
            .vsock_override
            .as_ref()
            .map(|v| PathBuf::from(&v.uds_path)),
        // Either name turns tracking on (Firecracker takes the deprecated one too).
        track_dirty_pages: l.track_dirty_pages == Some(true)
            || l.enable_diff_snapshots == Some(true),
    };
    Ok((
        PathBuf::from(&l.snapshot_path),
        mem,
        overrides,
        l.resume_vm.unwrap_or(false),
    ))
}

/// What `GET /vm/config` shows for a VM restored from `state` with `overrides`, as Firecracker
/// shows it: the snapshot's machine-config, boot source and devices (rate limiters and engines
/// as they were), with the load's tap names, vsock socket and `track_dirty_pages`. A snapshot
/// made without the API gives the devices under Kite's own names (`drive0`, `eth0`, ...).
pub fn restored_layout(state: &SnapshotState, overrides: &Overrides) -> Result<FullConfig, String> {
    let m = &state.machine;
    let mut layout = match &m.layout {
        Some(json) => serde_json::from_str(json)
            .map_err(|e| format!("the snapshot's configuration cannot be read: {e}"))?,
        None => {
            let mut layout = super::convert::from_vm_config(&m.config(overrides)?);
            // No kernel: the VM was not booted from one here.
            layout.boot_source = None;
            for (n, (id, _, _)) in layout.network_interfaces.iter_mut().zip(&m.nets) {
                n.iface_id = id.clone();
            }
            layout
        }
    };
    let FullConfig {
        machine_config,
        network_interfaces,
        vsock,
        ..
    } = &mut layout;
    let machine = machine_config.get_or_insert_with(MachineConfig::default);
    machine.vcpu_count = m.cpus;
    machine.mem_size_mib = m.memory.div_ceil(1 << 20);
    machine.mem_size_bytes = (!m.memory.is_multiple_of(1 << 20)).then_some(m.memory);
    machine.track_dirty_pages = overrides.track_dirty_pages;
    for n in network_interfaces {
        if let Some((_, tap)) = overrides.taps.iter().find(|(id, _)| *id == n.iface_id) {
            n.host_dev_name = tap.clone();
        }
    }
    if let (Some(v), Some(socket)) = (vsock, &overrides.vsock_socket) {
        v.uds_path = socket.to_string_lossy().into_owned();
    }
    Ok(layout)
}

/// Carry out a load: read and check the snapshot, check it against a machine-config given
/// before (if any), and build the VM from it. With the VM comes what `GET /vm/config` shows
/// for it ([`restored_layout`]).
pub fn load(
    l: &SnapshotLoad,
    machine: Option<&MachineConfig>,
    process_start: Instant,
) -> Result<(Vmm, FullConfig), String> {
    let (state_path, mem, overrides, resume) = load_request(l)?;
    let state = snapshot::read(&state_path).map_err(|e| crate::error_chain(&e))?;
    if let Some(m) = machine {
        let (cpus, mib) = (state.machine.cpus, state.machine.memory >> 20);
        if m.vcpu_count != cpus || m.mem_size_mib != mib {
            return Err(format!(
                "the snapshot is of a VM with {cpus} vCPUs and {mib} MiB, the machine-config given says {} vCPUs and {} MiB: leave machine-config out when loading a snapshot",
                m.vcpu_count, m.mem_size_mib
            ));
        }
    }
    let layout = restored_layout(&state, &overrides)?;
    let vmm = Vmm::restore(&state, &mem, &overrides, resume, process_start)
        .map_err(|e| crate::error_chain(&e))?;
    Ok((vmm, layout))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::snapshot::file::example_state;

    #[test]
    fn a_restored_layout_is_the_snapshots_with_the_loads_overrides() {
        let mut state = example_state(2);
        state.machine.layout = Some(
            r#"{"boot-source":{"kernel_image_path":"/k","boot_args":"console=ttyS0"},
                "machine-config":{"vcpu_count":2,"mem_size_mib":64,"smt":true},
                "drives":[{"drive_id":"root","path_on_host":"/tmp/disk.img","is_root_device":true,
                           "is_read_only":false,"io_engine":"Async",
                           "rate_limiter":{"ops":{"size":100,"refill_time":1000}}}],
                "network-interfaces":[{"iface_id":"eth0","host_dev_name":"tap0"}],
                "vsock":{"guest_cid":3,"uds_path":"/tmp/v.sock"},
                "entropy":{}}"#
                .into(),
        );
        let overrides = Overrides {
            taps: vec![("eth0".into(), "tap7".into())],
            vsock_socket: Some("/tmp/clone.sock".into()),
            track_dirty_pages: true,
        };
        let l = restored_layout(&state, &overrides).unwrap();
        let json = serde_json::to_value(&l).unwrap();
        assert_eq!(json["boot-source"]["kernel_image_path"], "/k");
        assert_eq!(json["machine-config"]["vcpu_count"], 2);
        assert_eq!(json["machine-config"]["mem_size_mib"], 64);
        assert_eq!(json["machine-config"]["smt"], true);
        assert_eq!(json["machine-config"]["track_dirty_pages"], true);
        assert_eq!(json["drives"][0]["drive_id"], "root");
        assert_eq!(json["drives"][0]["io_engine"], "Async");
        assert_eq!(json["drives"][0]["rate_limiter"]["ops"]["size"], 100);
        assert_eq!(json["network-interfaces"][0]["host_dev_name"], "tap7");
        assert_eq!(json["vsock"]["uds_path"], "/tmp/clone.sock");
        assert!(json.get("entropy").is_some());

        // Without the API's layout: Kite's names, the snapshot's machine, no boot source.
        state.machine.layout = None;
        let l = restored_layout(&state, &Overrides::default()).unwrap();
        let json = serde_json::to_value(&l).unwrap();
        assert!(json.get("boot-source").is_none(), "{json}");
        assert_eq!(json["machine-config"]["vcpu_count"], 2);
        assert_eq!(json["drives"][0]["path_on_host"], "/tmp/disk.img");
        assert_eq!(json["drives"][0]["io_engine"], "Async");
        assert_eq!(json["network-interfaces"][0]["iface_id"], "eth0");
        assert_eq!(json["network-interfaces"][0]["host_dev_name"], "tap0");

        state.machine.layout = Some("{not json".into());
        let e = restored_layout(&state, &Overrides::default()).unwrap_err();
        assert!(e.contains("configuration cannot be read"), "{e}");
    }

    fn load(body: &str) -> Result<(PathBuf, Backend, Overrides, bool), String> {
        load_request(&serde_json::from_str(body).unwrap())
    }

    #[test]
    fn a_load_names_its_memory_backend() {
        let (state, mem, _, resume) = load(
            r#"{"snapshot_path": "s", "mem_backend": {"backend_type": "Uffd", "backend_path": "/run/h.sock"}, "resume_vm": true}"#,
        )
        .unwrap();
        assert_eq!(state, PathBuf::from("s"));
        assert_eq!(mem, Backend::Uffd("/run/h.sock".into()));
        assert!(resume);
        let (_, mem, _, _) = load(
            r#"{"snapshot_path": "s", "mem_backend": {"backend_type": "File", "backend_path": "m"}}"#,
        )
        .unwrap();
        assert_eq!(mem, Backend::File("m".into()));
        let (_, mem, _, _) = load(r#"{"snapshot_path": "s", "mem_file_path": "m"}"#).unwrap();
        assert_eq!(mem, Backend::File("m".into()));
        let e = load(
            r#"{"snapshot_path": "s", "mem_backend": {"backend_type": "Tape", "backend_path": "m"}}"#,
        )
        .unwrap_err();
        assert!(e.contains("use File or Uffd"), "{e}");
        let e = load(
            r#"{"snapshot_path": "s", "mem_backend": {"backend_type": "Uffd", "backend_path": ""}}"#,
        )
        .unwrap_err();
        assert!(e.contains("page-fault handler's socket"), "{e}");
    }
}
