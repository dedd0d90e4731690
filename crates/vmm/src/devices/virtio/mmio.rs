//! The virtio-mmio transport, version 2 (virtio 1.2, section 4.2): the register file a driver
//! sees in a device's 4 KiB window. It runs on vCPU threads and only keeps registers: feature
//! negotiation, the device status state machine, queue set-up, the configuration space with its
//! generation counter, interrupt status and acknowledgement, and reset. On DRIVER_OK it hands the
//! configured queues to the device; from then on the device works on the event loop, woken by
//! ioeventfds, and interrupts by irqfd.

use log::{debug, warn};
use virtio_bindings::virtio_config::{
    VIRTIO_CONFIG_S_ACKNOWLEDGE, VIRTIO_CONFIG_S_DRIVER, VIRTIO_CONFIG_S_DRIVER_OK,
    VIRTIO_CONFIG_S_FAILED, VIRTIO_CONFIG_S_FEATURES_OK, VIRTIO_CONFIG_S_NEEDS_RESET,
    VIRTIO_F_VERSION_1,
};
use virtio_bindings::virtio_ring::{VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC};
use virtio_queue::{Queue, QueueT};
use vm_memory::{GuestAddress, GuestMemoryBackend};
use vmm_sys_util::eventfd::EventFd;

use super::device::{Active, Interrupt, InterruptSnapshot, LogLimiter, SharedDevice, lock};
use crate::bus::BusDevice;
use crate::memory::GuestMem;

/// Offset of QueueNotify: the ioeventfds are registered here, with the queue index as datamatch.
pub const QUEUE_NOTIFY: u64 = 0x50;

const MAGIC_VALUE: u64 = 0x000;
const VERSION: u64 = 0x004;
const DEVICE_ID: u64 = 0x008;
const VENDOR_ID: u64 = 0x00c;
const DEVICE_FEATURES: u64 = 0x010;
const DEVICE_FEATURES_SEL: u64 = 0x014;
const DRIVER_FEATURES: u64 = 0x020;
const DRIVER_FEATURES_SEL: u64 = 0x024;
const QUEUE_SEL: u64 = 0x030;
const QUEUE_NUM_MAX: u64 = 0x034;
const QUEUE_NUM: u64 = 0x038;
const QUEUE_READY: u64 = 0x044;
const INTERRUPT_STATUS: u64 = 0x060;
const INTERRUPT_ACK: u64 = 0x064;
const STATUS: u64 = 0x070;
const QUEUE_DESC_LOW: u64 = 0x080;
const QUEUE_DESC_HIGH: u64 = 0x084;
const QUEUE_DRIVER_LOW: u64 = 0x090;
const QUEUE_DRIVER_HIGH: u64 = 0x094;
const QUEUE_DEVICE_LOW: u64 = 0x0a0;
const QUEUE_DEVICE_HIGH: u64 = 0x0a4;
const SHM_SEL: u64 = 0x0ac;
const SHM_LEN_LOW: u64 = 0x0b0;
const SHM_BASE_HIGH: u64 = 0x0bc;
const QUEUE_RESET: u64 = 0x0c0;
const CONFIG_GENERATION: u64 = 0x0fc;
const CONFIG: u64 = 0x100;

const MAGIC: u32 = 0x7472_6976; // "virt"
/// "KITE", read as little-endian bytes.
const VENDOR: u32 = 0x4554_494b;

/// Feature bits the transport itself offers, on top of the device's. With EVENT_IDX accepted,
/// every queue runs in event-index mode ([`super::device::Active`] does the suppression).
const TRANSPORT_FEATURES: u64 =
    (1 << VIRTIO_F_VERSION_1) | (1 << VIRTIO_RING_F_INDIRECT_DESC) | (1 << VIRTIO_RING_F_EVENT_IDX);

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Error {
    #[error(
        "device queue {index} has maximum size {size}, which is not a power of two up to 32768"
    )]
    QueueMaxSize { index: usize, size: u16 },
}

/// Why the queues a driver set up cannot be used.
#[derive(Debug, thiserror::Error)]
enum QueueError {
    #[error("queue {index}: size {size} is not a power of two up to {max}")]
    Size { index: usize, size: u32, max: u16 },
    #[error("queue {index}: {what} at {addr:#x} is misaligned or outside guest memory")]
    Area {
        index: usize,
        what: &'static str,
        addr: u64,
    },
}

/// Log a driver mistake, rate-limited: a guest must not be able to flood the log.
macro_rules! guest_error {
    ($t:ident, $($arg:tt)*) => {
        if $t.log.allow() {
            warn!("virtio-mmio (device type {}): {}", $t.device_type, format_args!($($arg)*));
        }
    };
}

/// A queue's registers as the driver wrote them; checked only when the driver sets DRIVER_OK.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct QueueRegs {
    size: u32,
    ready: bool,
    desc: u64,
    driver: u64,
    device: u64,
}

fn set_low(reg: &mut u64, v: u32) {
    *reg = (*reg & !0xffff_ffff) | u64::from(v);
}

fn set_high(reg: &mut u64, v: u32) {
    *reg = (*reg & 0xffff_ffff) | (u64::from(v) << 32);
}

/// What a snapshot keeps of a transport: the registers, the interrupt state and, once the
/// driver set DRIVER_OK, where the device is in each queue.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct TransportState {
    pub device_type: u32,
    pub status: u32,
    pub device_features_sel: u32,
    pub driver_features_sel: u32,
    pub driver_features: u64,
    pub unknown_features: bool,
    pub queue_sel: u32,
    pub queues: Vec<QueueRegs>,
    pub interrupt: InterruptSnapshot,
    /// Each queue's (next available, next used) index while the device is active.
    pub positions: Option<Vec<(u16, u16)>>,
    /// The device was in the needs-reset state.
    pub broken: bool,
}

/// The register file of one virtio-mmio device.
pub struct MmioTransport {
    device: SharedDevice,
    mem: GuestMem,
    interrupt: Interrupt,
    queue_events: Vec<EventFd>,
    device_type: u32,
    max_sizes: Vec<u16>,
    device_features: u64,
    status: u32,
    device_features_sel: u32,
    driver_features_sel: u32,
    driver_features: u64,
    /// The driver set a feature bit in a word past the second (none exist).
    unknown_features: bool,
    queue_sel: u32,
    queues: Vec<QueueRegs>,
    log: LogLimiter,
}

impl MmioTransport {
    /// `queue_events[i]` is signalled when the driver notifies queue `i` through this register
    /// file (KVM's ioeventfd normally catches the write before it gets here).
    pub fn new(
        device: SharedDevice,
        mem: GuestMem,
        interrupt: Interrupt,
        queue_events: Vec<EventFd>,
    ) -> Result<Self, Error> {
        let (device_type, max_sizes, features) = {
            let d = lock(&device);
            (d.device_type(), d.queue_max_sizes().to_vec(), d.features())
        };
        for (index, &size) in max_sizes.iter().enumerate() {
            if <Queue as QueueT>::new(size).is_err() {
                return Err(Error::QueueMaxSize { index, size });
            }
        }
        let queues = vec![QueueRegs::default(); max_sizes.len()];
        let mut transport = Self {
            device,
            mem,
            interrupt,
            queue_events,
            device_type,
            max_sizes,
            device_features: features | TRANSPORT_FEATURES,
            status: 0,
            device_features_sel: 0,
            driver_features_sel: 0,
            driver_features: 0,
            unknown_features: false,
            queue_sel: 0,
            queues,
            log: LogLimiter::new(),
        };
        transport.reset_registers();
        Ok(transport)
    }

    fn reset_registers(&mut self) {
        self.status = 0;
        self.device_features_sel = 0;
        self.driver_features_sel = 0;
        self.driver_features = 0;
        self.unknown_features = false;
        self.queue_sel = 0;
        for (regs, &max) in self.queues.iter_mut().zip(&self.max_sizes) {
            *regs = QueueRegs {
                size: u32::from(max),
                ..QueueRegs::default()
            };
        }
        self.interrupt.reset();
    }

    /// Device reset (the driver wrote 0 to Status): the device drops its queues first, so a
    /// request it is working on completes before the rings go away.
    fn reset(&mut self) {
        lock(&self.device).reset();
        self.reset_registers();
    }

    fn selected_queue(&mut self) -> Option<&mut QueueRegs> {
        self.queues.get_mut(self.queue_sel as usize)
    }

    fn features_acceptable(&self) -> bool {
        !self.unknown_features
            && self.driver_features & !self.device_features == 0
            && self.driver_features & (1 << VIRTIO_F_VERSION_1) != 0
    }

    fn build_queues(&self) -> Result<Vec<Queue>, QueueError> {
        let event_idx = self.driver_features & (1 << VIRTIO_RING_F_EVENT_IDX) != 0;
        let mut queues = Vec::with_capacity(self.queues.len());
        for (index, (regs, &max)) in self.queues.iter().zip(&self.max_sizes).enumerate() {
            let mut queue = <Queue as QueueT>::new(max).map_err(|_| QueueError::Size {
                index,
                size: regs.size,
                max,
            })?;
            if regs.ready {
                let size = u16::try_from(regs.size)
                    .ok()
                    .filter(|&s| queue.try_set_size(s).is_ok())
                    .ok_or(QueueError::Size {
                        index,
                        size: regs.size,
                        max,
                    })?;
                let n = u64::from(size);
                let areas = [
                    ("descriptor table", regs.desc, 16 * n),
                    ("driver area", regs.driver, 6 + 2 * n),
                    ("device area", regs.device, 6 + 8 * n),
                ];
                let area_error = |what, addr| QueueError::Area { index, what, addr };
                for (what, addr, len) in areas {
                    if !self.mem.check_range(GuestAddress(addr), len as usize) {
                        return Err(area_error(what, addr));
                    }
                }
                queue
                    .try_set_desc_table_address(GuestAddress(regs.desc))
                    .map_err(|_| area_error("descriptor table", regs.desc))?;
                // The queue crate takes an available ring at address 0 for "not set up".
                if regs.driver == 0 {
                    return Err(area_error("driver area", 0));
                }
                queue
                    .try_set_avail_ring_address(GuestAddress(regs.driver))
                    .map_err(|_| area_error("driver area", regs.driver))?;
                queue
                    .try_set_used_ring_address(GuestAddress(regs.device))
                    .map_err(|_| area_error("device area", regs.device))?;
                // used_event and avail_event lie inside the areas checked above.
                queue.set_event_idx(event_idx);
                queue.set_ready(true);
            }
            queues.push(queue);
        }
        Ok(queues)
    }

    fn activate(&mut self) {
        match self.build_queues() {
            Ok(queues) => {
                let active = Active::new(
                    self.mem.clone(),
                    queues,
                    self.interrupt.clone(),
                    self.driver_features,
                );
                lock(&self.device).activate(active);
            }
            Err(e) => {
                guest_error!(self, "{e}; the device needs a reset");
                self.interrupt.signal_needs_reset();
            }
        }
    }

    fn write_status(&mut self, value: u32) {
        if value == 0 {
            self.reset();
            return;
        }
        // DEVICE_NEEDS_RESET belongs to the device; a driver writing back what it read may
        // carry it along.
        let value = value & !VIRTIO_CONFIG_S_NEEDS_RESET;
        let old = self.status;
        if value & old != old {
            guest_error!(
                self,
                "driver tried to clear status bits ({old:#x} -> {value:#x})"
            );
            return;
        }
        let added = value & !old;
        let mut status = old;
        if added & VIRTIO_CONFIG_S_ACKNOWLEDGE != 0 {
            status |= VIRTIO_CONFIG_S_ACKNOWLEDGE;
        }
        if added & VIRTIO_CONFIG_S_DRIVER != 0 && status & VIRTIO_CONFIG_S_ACKNOWLEDGE != 0 {
            status |= VIRTIO_CONFIG_S_DRIVER;
        }
        if added & VIRTIO_CONFIG_S_FEATURES_OK != 0 {
            // Refusing is done by leaving the bit clear; the driver reads it back.
            if status & VIRTIO_CONFIG_S_DRIVER != 0 && self.features_acceptable() {
                status |= VIRTIO_CONFIG_S_FEATURES_OK;
            } else {
                let features = self.driver_features;
                guest_error!(
                    self,
                    "refused driver features {features:#x} (offered {:#x})",
                    self.device_features
                );
            }
        }
        if added & VIRTIO_CONFIG_S_DRIVER_OK != 0 && status & VIRTIO_CONFIG_S_FEATURES_OK != 0 {
            status |= VIRTIO_CONFIG_S_DRIVER_OK;
            self.activate();
        }
        if added & VIRTIO_CONFIG_S_FAILED != 0 {
            status |= VIRTIO_CONFIG_S_FAILED;
        }
        self.status = status;
    }

    fn read_register(&mut self, offset: u64) -> u32 {
        match offset {
            MAGIC_VALUE => MAGIC,
            VERSION => 2,
            DEVICE_ID => self.device_type,
            VENDOR_ID => VENDOR,
            DEVICE_FEATURES => match self.device_features_sel {
                0 => self.device_features as u32,
                1 => (self.device_features >> 32) as u32,
                _ => 0,
            },
            QUEUE_NUM_MAX => self
                .max_sizes
                .get(self.queue_sel as usize)
                .map_or(0, |&m| u32::from(m)),
            QUEUE_READY => self.selected_queue().map_or(0, |q| u32::from(q.ready)),
            INTERRUPT_STATUS => self.interrupt.status(),
            STATUS => {
                let needs_reset = if self.interrupt.needs_reset() {
                    VIRTIO_CONFIG_S_NEEDS_RESET
                } else {
                    0
                };
                self.status | needs_reset
            }
            // No shared memory regions: their length and base read as -1.
            SHM_LEN_LOW..=SHM_BASE_HIGH => u32::MAX,
            QUEUE_RESET => 0,
            CONFIG_GENERATION => self.interrupt.config_generation(),
            _ => {
                guest_error!(self, "read of unknown register {offset:#x}");
                0
            }
        }
    }

    fn write_queue_register(&mut self, offset: u64, value: u32) {
        if self.status & VIRTIO_CONFIG_S_DRIVER_OK != 0 {
            guest_error!(self, "queue register {offset:#x} written after DRIVER_OK");
            return;
        }
        let Some(q) = self.selected_queue() else {
            let sel = self.queue_sel;
            guest_error!(self, "queue register {offset:#x} of missing queue {sel}");
            return;
        };
        match offset {
            QUEUE_NUM => q.size = value,
            QUEUE_READY => q.ready = value == 1,
            QUEUE_DESC_LOW => set_low(&mut q.desc, value),
            QUEUE_DESC_HIGH => set_high(&mut q.desc, value),
            QUEUE_DRIVER_LOW => set_low(&mut q.driver, value),
            QUEUE_DRIVER_HIGH => set_high(&mut q.driver, value),
            QUEUE_DEVICE_LOW => set_low(&mut q.device, value),
            QUEUE_DEVICE_HIGH => set_high(&mut q.device, value),
            _ => {}
        }
    }

    fn write_register(&mut self, offset: u64, value: u32) {
        match offset {
            DEVICE_FEATURES_SEL => self.device_features_sel = value,
            DRIVER_FEATURES_SEL => self.driver_features_sel = value,
            DRIVER_FEATURES => {
                let negotiating = self.status
                    & (VIRTIO_CONFIG_S_DRIVER | VIRTIO_CONFIG_S_FEATURES_OK)
                    == VIRTIO_CONFIG_S_DRIVER;
                if !negotiating {
                    guest_error!(self, "driver features written out of order");
                    return;
                }
                match self.driver_features_sel {
                    0 => set_low(&mut self.driver_features, value),
                    1 => set_high(&mut self.driver_features, value),
                    _ => self.unknown_features |= value != 0,
                }
            }
            QUEUE_SEL => self.queue_sel = value,
            QUEUE_NUM | QUEUE_READY | QUEUE_DESC_LOW..=QUEUE_DEVICE_HIGH => {
                self.write_queue_register(offset, value)
            }
            QUEUE_NOTIFY => match self.queue_events.get(value as usize) {
                Some(event) => {
                    if let Err(e) = event.write(1) {
                        debug!("virtio-mmio: cannot signal queue {value}: {e}");
                    }
                }
                None => guest_error!(self, "notify of missing queue {value}"),
            },
            INTERRUPT_ACK => self.interrupt.ack(value),
            STATUS => self.write_status(value),
            SHM_SEL | QUEUE_RESET => {}
            _ => guest_error!(self, "write to unknown register {offset:#x}"),
        }
    }
}

impl MmioTransport {
    /// The transport's state, for a snapshot (the VM is paused: no vCPU touches the registers
    /// and the event loop does no device work).
    pub fn state(&self) -> TransportState {
        let (positions, broken) = {
            let d = lock(&self.device);
            match d.active() {
                Some(a) => (Some(a.positions()), a.is_broken()),
                None => (None, false),
            }
        };
        TransportState {
            device_type: self.device_type,
            status: self.status,
            device_features_sel: self.device_features_sel,
            driver_features_sel: self.driver_features_sel,
            driver_features: self.driver_features,
            unknown_features: self.unknown_features,
            queue_sel: self.queue_sel,
            queues: self.queues.clone(),
            interrupt: self.interrupt.save(),
            positions,
            broken,
        }
    }

    /// The device's rate limiters, for a snapshot.
    pub fn limiters(&self) -> Vec<super::LimiterState> {
        lock(&self.device).limiters()
    }

    /// Give the device its rate limiters' state (before [`Self::restore`], whose first
    /// service of the queues they then limit).
    pub fn restore_limiters(&self, saved: &[super::LimiterState]) -> Result<(), String> {
        lock(&self.device).restore_limiters(saved)
    }

    /// The first `len` bytes of the device's configuration space.
    pub fn config_bytes(&self, len: usize) -> Vec<u8> {
        let mut bytes = vec![0; len];
        lock(&self.device).read_config(0, &mut bytes);
        bytes
    }

    /// Take up `state` on a freshly attached device of the same kind: the registers, and, if
    /// the driver had set DRIVER_OK, the queues, activated where the device had got to.
    pub fn restore(&mut self, state: &TransportState) -> Result<(), String> {
        if state.device_type != self.device_type || state.queues.len() != self.queues.len() {
            return Err(format!(
                "virtio device type {} with {} queues in the snapshot, type {} with {} here",
                state.device_type,
                state.queues.len(),
                self.device_type,
                self.queues.len()
            ));
        }
        self.status = state.status;
        self.device_features_sel = state.device_features_sel;
        self.driver_features_sel = state.driver_features_sel;
        self.driver_features = state.driver_features;
        self.unknown_features = state.unknown_features;
        self.queue_sel = state.queue_sel;
        self.queues = state.queues.clone();
        self.interrupt.restore(&state.interrupt);
        let Some(positions) = &state.positions else {
            return Ok(());
        };
        if self.status & VIRTIO_CONFIG_S_DRIVER_OK == 0 || positions.len() != self.queues.len() {
            return Err("virtio queue positions without DRIVER_OK, or for other queues".into());
        }
        let mut queues = self.build_queues().map_err(|e| e.to_string())?;
        for (queue, &(next_avail, next_used)) in queues.iter_mut().zip(positions) {
            queue.set_next_avail(next_avail);
            queue.set_next_used(next_used);
        }
        let mut active = Active::new(
            self.mem.clone(),
            queues,
            self.interrupt.clone(),
            self.driver_features,
        );
        if state.broken {
            active.set_broken();
        }
        let mut device = lock(&self.device);
        device.activate(active);
        device.restored();
        // A notification the driver made before the snapshot may still have been waiting in
        // its ioeventfd (a paused VM's event loop serves no queue), and eventfds are not in the
        // snapshot: serve every ready queue once, as that notification would have. A device
        // takes a notification with nothing new as a no-op.
        for (index, regs) in self.queues.iter().enumerate() {
            if regs.ready {
                while device.process_queue(index) {}
            }
        }
        Ok(())
    }
}

impl BusDevice for MmioTransport {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        if offset >= CONFIG {
            lock(&self.device).read_config(offset - CONFIG, data);
            return;
        }
        if data.len() != 4 || !offset.is_multiple_of(4) {
            guest_error!(
                self,
                "{}-byte read at {offset:#x} (registers are 32-bit)",
                data.len()
            );
            data.fill(0);
            return;
        }
        let value = self.read_register(offset);
        data.copy_from_slice(&value.to_le_bytes());
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if offset >= CONFIG {
            // No device here has a writable configuration field.
            guest_error!(self, "config write at {offset:#x} ignored");
            return;
        }
        let Ok(bytes) = <[u8; 4]>::try_from(data) else {
            guest_error!(
                self,
                "{}-byte write at {offset:#x} (registers are 32-bit)",
                data.len()
            );
            return;
        };
        if !offset.is_multiple_of(4) {
            guest_error!(self, "misaligned write at {offset:#x}");
            return;
        }
        self.write_register(offset, u32::from_le_bytes(bytes));
    }
}

#[cfg(test)]
mod tests;
