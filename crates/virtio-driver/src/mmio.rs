//! The virtio-mmio register window (virtio 1.2, 4.2.2: register layout version 2) and the
//! driver's steps through it (3.1.1): reset, ACKNOWLEDGE, DRIVER, feature negotiation,
//! FEATURES_OK and its read-back, queue set-up, DRIVER_OK. Each step is a function, so that a
//! driver that checks more in between (the test guest), or breaks the order on purpose (the fuzz
//! harness), takes only the steps it wants.

use crate::{Layout, Registers};

pub const MAGIC_VALUE: u64 = 0x000;
pub const VERSION: u64 = 0x004;
pub const DEVICE_ID: u64 = 0x008;
pub const DEVICE_FEATURES: u64 = 0x010;
pub const DEVICE_FEATURES_SEL: u64 = 0x014;
pub const DRIVER_FEATURES: u64 = 0x020;
pub const DRIVER_FEATURES_SEL: u64 = 0x024;
pub const QUEUE_SEL: u64 = 0x030;
pub const QUEUE_NUM_MAX: u64 = 0x034;
pub const QUEUE_NUM: u64 = 0x038;
pub const QUEUE_READY: u64 = 0x044;
pub const QUEUE_NOTIFY: u64 = 0x050;
pub const INTERRUPT_STATUS: u64 = 0x060;
pub const INTERRUPT_ACK: u64 = 0x064;
pub const STATUS: u64 = 0x070;
pub const QUEUE_DESC: u64 = 0x080;
pub const QUEUE_DRIVER: u64 = 0x090;
pub const QUEUE_DEVICE: u64 = 0x0a0;
pub const CONFIG_GENERATION: u64 = 0x0fc;
/// The device-specific configuration space starts here.
pub const CONFIG: u64 = 0x100;

/// MagicValue: "virt".
pub const MAGIC: u32 = 0x7472_6976;

// Device status bits (2.1).
pub const S_ACKNOWLEDGE: u32 = 1;
pub const S_DRIVER: u32 = 2;
pub const S_DRIVER_OK: u32 = 4;
pub const S_FEATURES_OK: u32 = 8;
pub const S_NEEDS_RESET: u32 = 64;
pub const S_FAILED: u32 = 128;

// InterruptStatus bits.
pub const INT_VRING: u32 = 1;
pub const INT_CONFIG: u32 = 2;

/// Feature bits of the transport and the rings (6).
pub const F_INDIRECT_DESC_BIT: u32 = 28;
pub const F_EVENT_IDX_BIT: u32 = 29;
pub const F_VERSION_1_BIT: u32 = 32;
pub const F_INDIRECT_DESC: u64 = 1 << F_INDIRECT_DESC_BIT;
pub const F_EVENT_IDX: u64 = 1 << F_EVENT_IDX_BIT;
pub const F_VERSION_1: u64 = 1 << F_VERSION_1_BIT;

/// Set `bits` in the Status register, keeping those already set.
pub fn set_status(regs: &mut impl Registers, bits: u32) {
    let status = regs.read(STATUS);
    regs.write(STATUS, status | bits);
}

/// The 64 feature bits the device offers.
pub fn device_features(regs: &mut impl Registers) -> u64 {
    regs.write(DEVICE_FEATURES_SEL, 0);
    let low = regs.read(DEVICE_FEATURES);
    regs.write(DEVICE_FEATURES_SEL, 1);
    let high = regs.read(DEVICE_FEATURES);
    (u64::from(high) << 32) | u64::from(low)
}

/// ACKNOWLEDGE, then DRIVER (after a reset).
pub fn acknowledge(regs: &mut impl Registers) {
    set_status(regs, S_ACKNOWLEDGE);
    set_status(regs, S_DRIVER);
}

/// Write the driver's `features`, set FEATURES_OK; whether the device kept it set.
pub fn accept_features(regs: &mut impl Registers, features: u64) -> bool {
    for sel in 0..2u32 {
        regs.write(DRIVER_FEATURES_SEL, sel);
        regs.write(DRIVER_FEATURES, (features >> (32 * sel)) as u32);
    }
    set_status(regs, S_FEATURES_OK);
    regs.read(STATUS) & S_FEATURES_OK != 0
}

/// Reset, ACKNOWLEDGE, DRIVER, then accept `choose(offered features)`: the features accepted if
/// the device took them.
pub fn negotiate(regs: &mut impl Registers, choose: impl FnOnce(u64) -> u64) -> Option<u64> {
    regs.write(STATUS, 0);
    acknowledge(regs);
    let features = choose(device_features(regs));
    accept_features(regs, features).then_some(features)
}

/// Select queue `index`: whether it is already ready, and its QueueNumMax.
pub fn select_queue(regs: &mut impl Registers, index: u32) -> (bool, u32) {
    regs.write(QUEUE_SEL, index);
    (regs.read(QUEUE_READY) != 0, regs.read(QUEUE_NUM_MAX))
}

/// Write queue `index`'s registers: `size` entries, its rings at `rings`, QueueReady = `ready`.
pub fn queue_registers(
    regs: &mut impl Registers,
    index: u32,
    size: u32,
    rings: &Layout,
    ready: bool,
) {
    regs.write(QUEUE_SEL, index);
    regs.write(QUEUE_NUM, size);
    for (reg, addr) in [
        (QUEUE_DESC, rings.desc),
        (QUEUE_DRIVER, rings.avail),
        (QUEUE_DEVICE, rings.used),
    ] {
        regs.write(reg, addr as u32);
        regs.write(reg + 4, (addr >> 32) as u32);
    }
    regs.write(QUEUE_READY, u32::from(ready));
}

/// Set DRIVER_OK; the Status register after it.
pub fn driver_ok(regs: &mut impl Registers) -> u32 {
    set_status(regs, S_DRIVER_OK);
    regs.read(STATUS)
}

/// Whether a Status value is a started device: ACKNOWLEDGE, DRIVER, FEATURES_OK, DRIVER_OK, and
/// no DEVICE_NEEDS_RESET.
pub fn started(status: u32) -> bool {
    let want = S_ACKNOWLEDGE | S_DRIVER | S_FEATURES_OK | S_DRIVER_OK;
    status & (want | S_NEEDS_RESET) == want
}

/// Tell the device that queue `index` has new buffers.
pub fn notify(regs: &mut impl Registers, index: u16) {
    regs.write(QUEUE_NOTIFY, u32::from(index));
}
