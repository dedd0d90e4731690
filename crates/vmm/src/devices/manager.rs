//! The device manager: the one owner of every device in the VM, with its id, kind, address
//! range and IRQ, so that the API, metrics and snapshots reach a device without going through
//! the bus (which only routes guest exits). It saves the devices' state for a snapshot and
//! gives a rebuilt machine's devices their state back.

use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

use super::acpi_pm::AcpiPm;
use super::boot_timer::BootTimer;
use super::i8042::{I8042, I8042State};
use super::serial::{SerialDevice, SerialDeviceState};
use super::virtio::{Attached, LimiterState, MmioTransport, TransportState};
use crate::arch::x86_64::layout;

/// Bytes of a virtio device's configuration space a snapshot keeps (and compares on restore:
/// a disk whose size changed shows here).
const CONFIG_BYTES: usize = 64;

/// What kind of device an entry is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum DeviceKind {
    Serial,
    I8042,
    AcpiPm,
    BootTimer,
    Virtio,
    /// The VM generation ID (`vmgenid.rs`): its bytes in guest memory, and the generic event
    /// device's IRQ.
    VmGenId,
}

/// Where a device sits: port I/O or MMIO, base and length.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Range {
    Pio {
        base: u64,
        len: u64,
    },
    Mmio {
        base: u64,
        len: u64,
    },
    /// Guest memory the guest reads (and e820 does not call RAM).
    Ram {
        base: u64,
        len: u64,
    },
}

/// A device's state in a snapshot.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum DeviceState {
    Serial(SerialDeviceState),
    I8042(I8042State),
    /// No state of its own (its registers read as constants).
    AcpiPm,
    /// Nothing to keep: it measures this process's start-up only.
    BootTimer,
    Virtio {
        transport: TransportState,
        /// The start of the device's configuration space.
        config: Vec<u8>,
        /// Its rate limiters' buckets and budgets (see `VirtioDevice::limiters`).
        limiters: Vec<LimiterState>,
    },
    /// Nothing beyond its place and IRQ: a restored machine gets a new ID.
    VmGenId,
}

/// One device as a snapshot records it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SavedDevice {
    pub id: String,
    pub kind: DeviceKind,
    pub range: Range,
    pub irq: Option<u32>,
    pub state: DeviceState,
}

enum Handle {
    Serial(Arc<Mutex<SerialDevice>>),
    I8042(Arc<Mutex<I8042>>),
    AcpiPm(#[allow(dead_code)] Arc<Mutex<AcpiPm>>),
    BootTimer(#[allow(dead_code)] Arc<Mutex<BootTimer>>),
    Virtio(Arc<Mutex<MmioTransport>>),
    VmGenId,
}

/// One device the manager holds.
pub struct Entry {
    pub id: String,
    pub kind: DeviceKind,
    pub range: Range,
    pub irq: Option<u32>,
    handle: Handle,
}

/// Every device of the VM, in the order they were attached.
#[derive(Default)]
pub struct DeviceManager {
    entries: Vec<Entry>,
}

fn lock<T: ?Sized>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl DeviceManager {
    pub fn new() -> Self {
        Self::default()
    }

    fn push(&mut self, id: &str, kind: DeviceKind, range: Range, irq: Option<u32>, h: Handle) {
        self.entries.push(Entry {
            id: id.to_string(),
            kind,
            range,
            irq,
            handle: h,
        });
    }

    pub fn add_serial(&mut self, dev: Arc<Mutex<SerialDevice>>) {
        let range = Range::Pio {
            base: layout::SERIAL_PORT,
            len: layout::SERIAL_PORT_LEN,
        };
        let irq = Some(layout::SERIAL_IRQ);
        self.push(
            "serial0",
            DeviceKind::Serial,
            range,
            irq,
            Handle::Serial(dev),
        );
    }

    pub fn add_i8042(&mut self, dev: Arc<Mutex<I8042>>) {
        let range = Range::Pio {
            base: layout::I8042_PORT,
            len: layout::I8042_PORT_LEN,
        };
        let irq = Some(layout::KEYBOARD_IRQ);
        self.push("i8042", DeviceKind::I8042, range, irq, Handle::I8042(dev));
    }

    pub fn add_acpi_pm(&mut self, dev: Arc<Mutex<AcpiPm>>) {
        let range = Range::Pio {
            base: layout::ACPI_SLEEP_CONTROL_PORT,
            len: layout::ACPI_PM_PORT_LEN,
        };
        self.push(
            "acpi-pm",
            DeviceKind::AcpiPm,
            range,
            None,
            Handle::AcpiPm(dev),
        );
    }

    pub fn add_boot_timer(&mut self, dev: Arc<Mutex<BootTimer>>) {
        let range = Range::Mmio {
            base: layout::BOOT_TIMER_ADDR,
            len: 0x1000,
        };
        let h = Handle::BootTimer(dev);
        self.push("boot-timer", DeviceKind::BootTimer, range, None, h);
    }

    pub fn add_virtio(&mut self, dev: &Attached) {
        let range = Range::Mmio {
            base: dev.placement.addr,
            len: layout::VIRTIO_MMIO_SIZE,
        };
        let h = Handle::Virtio(dev.transport.clone());
        let irq = Some(dev.placement.irq);
        self.push(&dev.name, DeviceKind::Virtio, range, irq, h);
    }

    pub fn add_vmgenid(&mut self) {
        let range = Range::Ram {
            base: layout::VMGENID_ADDR,
            len: super::vmgenid::ID_LEN as u64,
        };
        let irq = Some(layout::VMGENID_IRQ);
        self.push("vmgenid", DeviceKind::VmGenId, range, irq, Handle::VmGenId);
    }

    /// Every device, in order.
    pub fn entries(&self) -> &[Entry] {
        &self.entries
    }

    /// Every device's state. Call it with the VM paused.
    pub fn save(&self) -> Vec<SavedDevice> {
        self.entries
            .iter()
            .map(|e| SavedDevice {
                id: e.id.clone(),
                kind: e.kind,
                range: e.range,
                irq: e.irq,
                state: match &e.handle {
                    Handle::Serial(d) => DeviceState::Serial(lock(d).state()),
                    Handle::I8042(d) => DeviceState::I8042(lock(d).state()),
                    Handle::AcpiPm(_) => DeviceState::AcpiPm,
                    Handle::BootTimer(_) => DeviceState::BootTimer,
                    Handle::VmGenId => DeviceState::VmGenId,
                    Handle::Virtio(t) => {
                        let t = lock(t);
                        DeviceState::Virtio {
                            transport: t.state(),
                            config: t.config_bytes(CONFIG_BYTES),
                            limiters: t.limiters(),
                        }
                    }
                },
            })
            .collect()
    }

    /// Give each device its state from `saved`: the same devices, in the same order, at the
    /// same places, as a machine built from the snapshot's configuration has.
    pub fn restore(&self, saved: &[SavedDevice]) -> Result<(), String> {
        if saved.len() != self.entries.len() {
            return Err(format!(
                "the snapshot has {} devices, the machine rebuilt from it {}",
                saved.len(),
                self.entries.len()
            ));
        }
        for (e, s) in self.entries.iter().zip(saved) {
            if e.id != s.id || e.kind != s.kind || e.range != s.range || e.irq != s.irq {
                return Err(format!(
                    "device {} ({:?} at {:?}) in the snapshot is {} ({:?} at {:?}) here",
                    s.id, s.kind, s.range, e.id, e.kind, e.range
                ));
            }
            let id = &e.id;
            match (&e.handle, &s.state) {
                (Handle::Serial(d), DeviceState::Serial(st)) => lock(d).restore(st)?,
                (Handle::I8042(d), DeviceState::I8042(st)) => lock(d).restore(st),
                (Handle::AcpiPm(_), DeviceState::AcpiPm)
                | (Handle::BootTimer(_), DeviceState::BootTimer)
                | (Handle::VmGenId, DeviceState::VmGenId) => {}
                (
                    Handle::Virtio(t),
                    DeviceState::Virtio {
                        transport,
                        config,
                        limiters,
                    },
                ) => {
                    let mut t = lock(t);
                    if t.config_bytes(config.len().min(CONFIG_BYTES)) != *config {
                        return Err(format!(
                            "{id}: its configuration differs from the snapshot's (a disk of another size?)"
                        ));
                    }
                    t.restore_limiters(limiters)
                        .map_err(|e| format!("{id}: {e}"))?;
                    t.restore(transport).map_err(|e| format!("{id}: {e}"))?;
                }
                _ => return Err(format!("{id}: the snapshot holds another kind of state")),
            }
        }
        Ok(())
    }
}
