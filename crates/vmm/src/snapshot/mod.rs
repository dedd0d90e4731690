//! Snapshots: the state of a paused VM in a file, its guest RAM in another, and a VM rebuilt
//! from the two in a new process.
//!
//! - [`SnapshotState`]: the machine's shape ([`MachineState`], from which restore builds the
//!   same machine), the VM's irqchip, PIT and clock ([`VmState`]), each vCPU's
//!   ([`crate::vcpu::state::VcpuState`]) and each device's (the device manager's).
//! - [`file`]: the file format (magic, version, CRC, postcard); [`memfile`]: guest RAM, sparse
//!   (all of it, or a diff's dirty pages); [`rebase`]: a diff merged over the full memory file;
//!   [`uffd`]: guest RAM served by a page-fault handler process (the `Uffd` backend).
//! - [`create`]: save a paused VM; the VMM's restore (`Vmm::restore`) reads with [`read`].

pub mod file;
pub mod memfile;
pub mod rebase;
pub mod uffd;

use std::path::{Path, PathBuf};
use std::sync::mpsc::RecvTimeoutError;
use std::time::{Duration, Instant};

use kvm_bindings::{
    KVM_IRQCHIP_IOAPIC, KVM_IRQCHIP_PIC_MASTER, KVM_IRQCHIP_PIC_SLAVE, kvm_clock_data, kvm_irqchip,
    kvm_pit_state2,
};
use kvm_ioctls::VmFd;
use serde::{Deserialize, Serialize};

use crate::config::{DiskConfig, IoEngine, NetConfig, VmConfig, VsockConfig};
use crate::devices::manager::{DeviceManager, SavedDevice};
use crate::memory::GuestMem;
use crate::vcpu::VcpuThread;
use crate::vcpu::pause::PauseControl;
use crate::vcpu::state::VcpuState;

/// The machine a snapshot was taken of: what restore needs to build the same one.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MachineState {
    pub memory: u64,
    pub cpus: u8,
    /// Each disk, in order.
    pub disks: Vec<DiskShape>,
    /// (iface id, tap, MAC) of each network interface, in order.
    pub nets: Vec<(String, String, [u8; 6])>,
    /// (CID, socket path).
    pub vsock: Option<(u32, PathBuf)>,
    pub rng: bool,
    pub boot_timer: bool,
    pub acpi: bool,
    /// The configuration in Firecracker's layout (what `GET /vm/config` answered when the
    /// snapshot was made, as JSON), for `GET /vm/config` of the restored VM; None if the VM
    /// had no API.
    pub layout: Option<String>,
}

/// A disk as restore opens it again (its rate limiter is in the device's state).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiskShape {
    pub path: PathBuf,
    pub readonly: bool,
    pub io_engine: IoEngine,
}

/// Where a restored VM's guest RAM comes from (`mem_backend` of `PUT /snapshot/load`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MemBackend {
    /// The memory file, mapped private and lazily.
    File(PathBuf),
    /// A page-fault handler listening on this Unix socket ([`uffd`]).
    Uffd(PathBuf),
}

impl std::fmt::Display for MemBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            MemBackend::File(p) => write!(f, "{}", p.display()),
            MemBackend::Uffd(p) => write!(f, "the page-fault handler at {}", p.display()),
        }
    }
}

/// What `PUT /snapshot/load` may change for a clone.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Overrides {
    /// (iface id, host tap name).
    pub taps: Vec<(String, String)>,
    /// The vsock device's socket path.
    pub vsock_socket: Option<PathBuf>,
    /// Log the pages the guest writes from the restore on (`track_dirty_pages`), so that
    /// diff snapshots of the restored VM can be made.
    pub track_dirty_pages: bool,
}

impl MachineState {
    /// The machine `config` describes; `net_ids` names its network interfaces (the API's
    /// iface_id; `net0`, `net1`, ... where there are none).
    pub fn of(config: &VmConfig, net_ids: &[String]) -> Self {
        Self {
            memory: config.memory,
            cpus: config.cpus,
            disks: config
                .disks
                .iter()
                .map(|d| DiskShape {
                    path: d.path.clone(),
                    readonly: d.readonly,
                    io_engine: d.io_engine,
                })
                .collect(),
            nets: config
                .nets
                .iter()
                .enumerate()
                .map(|(i, n)| {
                    let id = net_ids.get(i).cloned().unwrap_or_else(|| format!("net{i}"));
                    (id, n.tap.clone(), n.mac)
                })
                .collect(),
            vsock: config.vsock.as_ref().map(|v| (v.cid, v.socket.clone())),
            rng: config.rng,
            boot_timer: config.boot_timer,
            // What the machine was built with: `acpi=off` on its command line meant no ACPI
            // devices, and the restored machine has no command line to say so.
            acpi: crate::arch::x86_64::acpi::wanted(config.acpi, &config.cmdline),
            layout: None,
        }
    }

    /// The configuration that builds this machine again (no kernel: restore loads state
    /// instead), with `overrides` applied. `Err` names an override for an interface the
    /// snapshot does not have.
    pub fn config(&self, overrides: &Overrides) -> Result<VmConfig, String> {
        for (id, _) in &overrides.taps {
            if !self.nets.iter().any(|(i, _, _)| i == id) {
                return Err(format!(
                    "network_overrides names iface_id {id:?}, which the snapshot does not have"
                ));
            }
        }
        if overrides.vsock_socket.is_some() && self.vsock.is_none() {
            return Err("vsock_override given, but the snapshot has no vsock device".into());
        }
        Ok(VmConfig {
            kernel: PathBuf::new(),
            initrd: None,
            memory: self.memory,
            cpus: self.cpus,
            cmdline: String::new(),
            disks: self
                .disks
                .iter()
                .map(|d| DiskConfig {
                    path: d.path.clone(),
                    readonly: d.readonly,
                    // The rate limiters, with their budgets, come with the devices' state.
                    rate_limit: Default::default(),
                    io_engine: d.io_engine,
                })
                .collect(),
            nets: self
                .nets
                .iter()
                .map(|(id, tap, mac)| NetConfig {
                    tap: overrides
                        .taps
                        .iter()
                        .find(|(i, _)| i == id)
                        .map_or_else(|| tap.clone(), |(_, t)| t.clone()),
                    mac: *mac,
                    rx_rate_limit: Default::default(),
                    tx_rate_limit: Default::default(),
                })
                .collect(),
            vsock: self.vsock.as_ref().map(|(cid, socket)| VsockConfig {
                cid: *cid,
                socket: overrides
                    .vsock_socket
                    .clone()
                    .unwrap_or_else(|| socket.clone()),
            }),
            rng: self.rng,
            rng_rate_limit: Default::default(),
            // The vCPUs' CPUID tables (where SMT shows) come from the snapshot.
            smt: false,
            boot_timer: self.boot_timer,
            timeout: None,
            ring0_workarounds: crate::arch::x86_64::emulated_ring0::Mode::Auto,
            acpi: self.acpi,
            seccomp: crate::seccomp::Mode::On,
            // Set by the load, not by the snapshot (as in Firecracker).
            track_dirty_pages: overrides.track_dirty_pages,
        })
    }
}

/// The VM's in-kernel devices and clock.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct VmState {
    pub pic_master: kvm_irqchip,
    pub pic_slave: kvm_irqchip,
    pub ioapic: kvm_irqchip,
    pub pit: kvm_pit_state2,
    pub clock: kvm_clock_data,
}

impl VmState {
    pub fn save(vm: &VmFd) -> Result<Self, String> {
        let chip = |id| {
            let mut c = kvm_irqchip {
                chip_id: id,
                ..Default::default()
            };
            vm.get_irqchip(&mut c)
                .map(|()| c)
                .map_err(|e| format!("KVM_GET_IRQCHIP {id}: {e}"))
        };
        Ok(Self {
            pic_master: chip(KVM_IRQCHIP_PIC_MASTER)?,
            pic_slave: chip(KVM_IRQCHIP_PIC_SLAVE)?,
            ioapic: chip(KVM_IRQCHIP_IOAPIC)?,
            pit: vm.get_pit2().map_err(|e| format!("KVM_GET_PIT2: {e}"))?,
            clock: vm.get_clock().map_err(|e| format!("KVM_GET_CLOCK: {e}"))?,
        })
    }

    /// kvmclock goes on from the value saved (the guest does not see the time the snapshot
    /// spent on disk); the flags KVM reported are not handed back.
    pub fn restore(&self, vm: &VmFd) -> Result<(), String> {
        for chip in [&self.pic_master, &self.pic_slave, &self.ioapic] {
            vm.set_irqchip(chip)
                .map_err(|e| format!("KVM_SET_IRQCHIP {}: {e}", chip.chip_id))?;
        }
        vm.set_pit2(&self.pit)
            .map_err(|e| format!("KVM_SET_PIT2: {e}"))?;
        let clock = kvm_clock_data {
            clock: self.clock.clock,
            ..Default::default()
        };
        vm.set_clock(&clock)
            .map_err(|e| format!("KVM_SET_CLOCK: {e}"))
    }
}

/// Everything in a snapshot file.
#[derive(Debug, Serialize, Deserialize)]
pub struct SnapshotState {
    pub machine: MachineState,
    pub vm: VmState,
    pub vcpus: Vec<VcpuState>,
    pub devices: Vec<SavedDevice>,
}

impl SnapshotState {
    /// What a decoded state must hold to be worth building a machine for.
    pub fn check(&self) -> Result<(), String> {
        let m = &self.machine;
        if m.cpus == 0 || usize::from(m.cpus) != self.vcpus.len() {
            return Err(format!(
                "{} vCPUs in the machine, {} vCPU states",
                m.cpus,
                self.vcpus.len()
            ));
        }
        if m.memory == 0 || !m.memory.is_multiple_of(4096) || m.memory > 1 << 46 {
            return Err(format!("guest RAM of {} bytes", m.memory));
        }
        Ok(())
    }
}

/// Why a snapshot could not be made or read.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{what} {}: {source}", path.display())]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("snapshot file {}: {source}", path.display())]
    Parse {
        path: PathBuf,
        #[source]
        source: file::ParseError,
    },
    #[error("{0}")]
    State(String),
}

/// Read and check the snapshot file at `path`.
pub fn read(path: &Path) -> Result<SnapshotState, Error> {
    let bytes = std::fs::read(path).map_err(|source| Error::Io {
        what: "cannot read the snapshot file",
        path: path.to_owned(),
        source,
    })?;
    file::parse(&bytes).map_err(|source| Error::Parse {
        path: path.to_owned(),
        source,
    })
}

/// How long `create` took, by part.
#[derive(Clone, Copy, Debug, Default)]
pub struct CreateReport {
    pub state: Duration,
    pub memory: Duration,
    pub memory_written: u64,
}

/// A file written under a temporary name in the target's directory, renamed over the target
/// by [`Pending::commit`]; dropped uncommitted, it is removed.
struct Pending {
    tmp: PathBuf,
    target: PathBuf,
    file: Option<std::fs::File>,
}

impl Pending {
    fn create(target: &Path, what: &'static str) -> Result<Self, Error> {
        let name = target.file_name().ok_or_else(|| Error::Io {
            what,
            path: target.to_owned(),
            source: std::io::Error::other("not a file name"),
        })?;
        let mut tmp_name = std::ffi::OsString::from(".");
        tmp_name.push(name);
        tmp_name.push(format!(".tmp-{}", std::process::id()));
        let tmp = target.with_file_name(tmp_name);
        let file = std::fs::File::create(&tmp).map_err(|source| Error::Io {
            what,
            path: target.to_owned(),
            source,
        })?;
        Ok(Self {
            tmp,
            target: target.to_owned(),
            file: Some(file),
        })
    }

    fn file(&self) -> &std::fs::File {
        self.file.as_ref().expect("the file is open until commit")
    }

    fn commit(mut self, what: &'static str) -> Result<(), Error> {
        let io = |source| Error::Io {
            what,
            path: self.target.clone(),
            source,
        };
        self.file().sync_all().map_err(io)?;
        self.file = None;
        std::fs::rename(&self.tmp, &self.target).map_err(|source| Error::Io {
            what,
            path: self.target.clone(),
            source,
        })?;
        self.tmp.clear();
        Ok(())
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        if !self.tmp.as_os_str().is_empty() {
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}

/// What a snapshot's memory file holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// All of guest RAM (pages never touched are holes).
    Full,
    /// Only the pages written since the last snapshot (or since the VM started), at their
    /// offsets; every other page is a hole. Merged over the full memory file
    /// (`kite rebase-snap`), it gives the memory of this snapshot.
    Diff,
}

/// What `create` works on: a paused VM's parts.
pub struct Parts<'a> {
    pub vm: &'a VmFd,
    pub mem: &'a GuestMem,
    pub pause: &'a PauseControl,
    pub threads: &'a [VcpuThread],
    pub devices: &'a DeviceManager,
    pub machine: MachineState,
    /// Guest RAM is anonymous memory (a booted VM), not a memory file's mapping.
    pub anonymous: bool,
    /// /proc/self/status, opened before the seccomp filters (see [`memfile::write_sparse`]).
    pub status: Option<&'a std::fs::File>,
    /// KVM logs the guest's writes (the slots have KVM_MEM_LOG_DIRTY_PAGES): diff snapshots
    /// can be made, and every snapshot starts a new diff.
    pub track_dirty: bool,
}

/// Save the paused VM of `parts`: the state to `snapshot_path`, guest RAM (all of it, or with
/// [`Kind::Diff`] the pages written since the last snapshot) to `mem_path`, each under a
/// temporary name renamed into place only when whole (the memory file first). The VM stays
/// paused, and an error leaves neither file behind (and a diff's pages go to the next one).
pub fn create(
    parts: &Parts,
    kind: Kind,
    snapshot_path: &Path,
    mem_path: &Path,
) -> Result<CreateReport, Error> {
    if kind == Kind::Diff && !parts.track_dirty {
        return Err(Error::State(
            "a Diff snapshot needs dirty page tracking: start the VM with track_dirty_pages in machine-config (kite run --track-dirty-pages) or load it with track_dirty_pages, take a Full snapshot, then Diffs".into(),
        ));
    }
    let started = Instant::now();
    let n = parts.threads.len();
    parts.pause.wait_parked(n).map_err(Error::State)?;
    let replies: Vec<_> = parts
        .threads
        .iter()
        .map(VcpuThread::request_state)
        .collect();
    parts.pause.post();
    let mut vcpus = Vec::with_capacity(n);
    for (i, rx) in replies.into_iter().enumerate() {
        match rx.recv_timeout(Duration::from_secs(2)) {
            Ok(Ok(s)) => vcpus.push(s),
            Ok(Err(e)) => return Err(Error::State(format!("vCPU {i}: {e}"))),
            Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => {
                return Err(Error::State(format!("vCPU {i} did not send its state")));
            }
        }
    }
    let state = SnapshotState {
        machine: parts.machine.clone(),
        vm: VmState::save(parts.vm).map_err(Error::State)?,
        vcpus,
        devices: parts.devices.save(),
    };
    let bytes = file::encode(&state).map_err(Error::State)?;
    let state_time = started.elapsed();

    // The pages written since the last snapshot, and both logs cleared: a new diff starts
    // from this snapshot (given back if it fails).
    let dirty = if parts.track_dirty {
        Some(crate::memory::take_dirty(Some(parts.vm), parts.mem).map_err(Error::State)?)
    } else {
        None
    };
    let result = write_files(
        parts,
        kind,
        dirty.as_deref(),
        &bytes,
        snapshot_path,
        mem_path,
    );
    if let (Err(_), Some(d)) = (&result, &dirty) {
        crate::memory::give_back_dirty(parts.mem, d);
    }
    let written = result?;
    Ok(CreateReport {
        state: state_time,
        memory: started.elapsed() - state_time,
        memory_written: written,
    })
}

/// The memory file, then the snapshot file, of [`create`]; returns the memory bytes written.
fn write_files(
    parts: &Parts,
    kind: Kind,
    dirty: Option<&[Vec<u64>]>,
    bytes: &[u8],
    snapshot_path: &Path,
    mem_path: &Path,
) -> Result<u64, Error> {
    let what = "cannot write the memory file";
    let mem_file = Pending::create(mem_path, what)?;
    let written = match (kind, dirty) {
        (Kind::Diff, Some(dirty)) => memfile::write_dirty(parts.mem, dirty, mem_file.file()),
        _ => memfile::write_sparse(parts.mem, mem_file.file(), parts.anonymous, parts.status),
    }
    .map_err(|source| Error::Io {
        what,
        path: mem_path.to_owned(),
        source,
    })?;
    let what = "cannot write the snapshot file";
    let snap_file = Pending::create(snapshot_path, what)?;
    {
        use std::io::Write;
        let mut f = snap_file.file();
        f.write_all(bytes).map_err(|source| Error::Io {
            what,
            path: snapshot_path.to_owned(),
            source,
        })?;
    }
    mem_file.commit("cannot write the memory file")?;
    snap_file.commit(what)?;
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overrides_give_a_clone_its_own_tap_and_vsock_socket() {
        let machine = file::example_state(1).machine;
        let same = machine.config(&Overrides::default()).unwrap();
        assert_eq!(same.nets[0].tap, "tap0");
        assert_eq!(
            same.vsock.as_ref().unwrap().socket,
            PathBuf::from("/tmp/v.sock")
        );
        assert_eq!((same.memory, same.cpus), (64 << 20, 1));
        let clone = machine
            .config(&Overrides {
                taps: vec![("eth0".into(), "tap7".into())],
                vsock_socket: Some("/tmp/clone.sock".into()),
                track_dirty_pages: true,
            })
            .unwrap();
        assert_eq!(clone.nets[0].tap, "tap7");
        assert!(clone.track_dirty_pages && !same.track_dirty_pages);
        assert_eq!(clone.nets[0].mac, machine.nets[0].2);
        assert_eq!(
            clone.vsock.unwrap().socket,
            PathBuf::from("/tmp/clone.sock")
        );
        let e = machine
            .config(&Overrides {
                taps: vec![("eth9".into(), "tap7".into())],
                ..Default::default()
            })
            .unwrap_err();
        assert!(e.contains("\"eth9\""), "{e}");
    }

    #[test]
    fn a_machine_reads_back_as_its_config() {
        let machine = file::example_state(2).machine;
        let config = machine.config(&Overrides::default()).unwrap();
        let ids: Vec<String> = machine.nets.iter().map(|n| n.0.clone()).collect();
        // The layout is the API's, added when a snapshot is made.
        let machine = MachineState {
            layout: None,
            ..machine
        };
        assert_eq!(MachineState::of(&config, &ids), machine);
    }
}
