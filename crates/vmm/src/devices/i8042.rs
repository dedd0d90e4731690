//! An i8042 keyboard controller with a keyboard that has no keys but Ctrl-Alt-Del: enough for
//! Linux's i8042 and atkbd drivers to find a keyboard, for the API's `SendCtrlAltDel` to reach
//! the guest as key presses (IRQ 1), and for `reboot=k` and the test guest to end the VM by
//! pulsing the reset line (command 0xFE on port 0x64).

use std::collections::VecDeque;
use std::sync::Arc;

use vmm_sys_util::eventfd::EventFd;

use crate::bus::BusDevice;
use crate::exit::{ExitHandle, ExitReason};

const DATA_OFFSET: u64 = 0;
const COMMAND_OFFSET: u64 = 4;

const CMD_READ_CTR: u8 = 0x20;
const CMD_WRITE_CTR: u8 = 0x60;
const CMD_DISABLE_AUX: u8 = 0xa7;
const CMD_ENABLE_AUX: u8 = 0xa8;
const CMD_TEST_AUX: u8 = 0xa9;
const CMD_SELF_TEST: u8 = 0xaa;
const CMD_TEST_KBD: u8 = 0xab;
const CMD_DISABLE_KBD: u8 = 0xad;
const CMD_ENABLE_KBD: u8 = 0xae;
const CMD_WRITE_OUTPUT: u8 = 0xd1;
const CMD_RESET_CPU: u8 = 0xfe;

/// Status register: output buffer full; system flag (self-test passed).
const SB_OUT_FULL: u8 = 0x01;
const SB_SYSTEM: u8 = 0x04;
/// Controller configuration: keyboard interrupt, system flag, translation to set 1.
const CTR_KBD_INT: u8 = 0x01;
const CTR_SYSTEM: u8 = 0x04;
const CTR_KBD_DISABLED: u8 = 0x10;
const CTR_XLATE: u8 = 0x40;

const KBD_ACK: u8 = 0xfa;

/// Ctrl, Alt, Delete pressed, then released: scan code set 1 (what a translating controller
/// hands on) and set 2.
const CAD_SET1: &[u8] = &[0x1d, 0x38, 0xe0, 0x53, 0xe0, 0xd3, 0xb8, 0x9d];
const CAD_SET2: &[u8] = &[
    0x14, 0x11, 0xe0, 0x71, 0xe0, 0xf0, 0x71, 0xf0, 0x11, 0xf0, 0x14,
];

/// Most bytes waiting for the guest (a real controller holds one; a keyboard a few more).
const OUT_MAX: usize = 16;

pub struct I8042 {
    exit: Arc<ExitHandle>,
    /// IRQ 1 (keyboard), if wired.
    irq: Option<EventFd>,
    ctr: u8,
    /// The command whose data byte comes next on the data port.
    pending: Option<u8>,
    out: VecDeque<u8>,
}

/// What a snapshot keeps of the controller: its command byte, a command waiting for its data
/// byte, and the bytes the guest has not read yet.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct I8042State {
    pub ctr: u8,
    pub pending: Option<u8>,
    pub out: Vec<u8>,
}

impl I8042 {
    /// The controller's state, for a snapshot.
    pub fn state(&self) -> I8042State {
        I8042State {
            ctr: self.ctr,
            pending: self.pending,
            out: self.out.iter().copied().collect(),
        }
    }

    /// Take up `state` (from a snapshot); more bytes than the controller holds are dropped.
    pub fn restore(&mut self, state: &I8042State) {
        self.ctr = state.ctr;
        self.pending = state.pending;
        self.out = state.out.iter().copied().take(OUT_MAX).collect();
    }

    pub fn new(exit: Arc<ExitHandle>, irq: Option<EventFd>) -> Self {
        Self {
            exit,
            irq,
            ctr: CTR_KBD_INT | CTR_SYSTEM | CTR_XLATE,
            pending: None,
            out: VecDeque::new(),
        }
    }

    fn push(&mut self, bytes: &[u8]) -> bool {
        if self.out.len() + bytes.len() > OUT_MAX {
            return false;
        }
        self.out.extend(bytes);
        true
    }

    fn interrupt(&self) {
        if self.ctr & CTR_KBD_INT != 0
            && !self.out.is_empty()
            && let Some(irq) = &self.irq
        {
            let _ = irq.write(1);
        }
    }

    /// Press and release Ctrl-Alt-Del (`PUT /actions SendCtrlAltDel`).
    pub fn send_ctrl_alt_del(&mut self) -> Result<(), String> {
        if self.irq.is_none() {
            return Err("this VM's keyboard has no interrupt line".into());
        }
        if self.ctr & CTR_KBD_DISABLED != 0 {
            return Err(
                "the guest has disabled its keyboard: it cannot receive Ctrl-Alt-Del".into(),
            );
        }
        let codes = if self.ctr & CTR_XLATE != 0 {
            CAD_SET1
        } else {
            CAD_SET2
        };
        if !self.push(codes) {
            return Err("the guest has not read the keys sent before: try again later".into());
        }
        self.interrupt();
        Ok(())
    }

    fn command(&mut self, cmd: u8) {
        match cmd {
            CMD_READ_CTR => {
                self.out.clear();
                self.out.push_back(self.ctr);
            }
            CMD_WRITE_CTR | CMD_WRITE_OUTPUT => self.pending = Some(cmd),
            CMD_SELF_TEST => {
                self.out.clear();
                self.out.push_back(0x55);
            }
            // No auxiliary (mouse) port: its test fails with "clock line stuck low".
            CMD_TEST_AUX => {
                self.out.clear();
                self.out.push_back(0x01);
            }
            CMD_TEST_KBD => {
                self.out.clear();
                self.out.push_back(0x00);
            }
            CMD_DISABLE_KBD => self.ctr |= CTR_KBD_DISABLED,
            CMD_ENABLE_KBD => self.ctr &= !CTR_KBD_DISABLED,
            CMD_DISABLE_AUX | CMD_ENABLE_AUX => {}
            CMD_RESET_CPU => self.exit.request(ExitReason::GuestReset),
            _ => {}
        }
    }

    /// A byte for the keyboard itself.
    fn keyboard(&mut self, byte: u8) {
        let reply: &[u8] = match byte {
            // Reset: ACK, then self-test passed.
            0xff => &[KBD_ACK, 0xaa],
            // Identify: an MF2 keyboard.
            0xf2 => &[KBD_ACK, 0xab, 0x83],
            // Echo.
            0xee => &[0xee],
            _ => &[KBD_ACK],
        };
        self.out.clear();
        self.push(reply);
        self.interrupt();
    }
}

impl BusDevice for I8042 {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        let value = match offset {
            DATA_OFFSET => self.out.pop_front().unwrap_or(0),
            COMMAND_OFFSET => {
                let full = if self.out.is_empty() { 0 } else { SB_OUT_FULL };
                full | SB_SYSTEM
            }
            _ => 0,
        };
        data.fill(0);
        if let Some(first) = data.first_mut() {
            *first = value;
        }
        if offset == DATA_OFFSET {
            // More bytes (the rest of a key sequence): another interrupt for the next.
            self.interrupt();
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let Some(&byte) = data.first() else {
            return;
        };
        match offset {
            COMMAND_OFFSET => self.command(byte),
            DATA_OFFSET => match self.pending.take() {
                Some(CMD_WRITE_CTR) => self.ctr = byte,
                Some(_) => {}
                None => self.keyboard(byte),
            },
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dev() -> (I8042, Arc<ExitHandle>, EventFd) {
        let exit = Arc::new(ExitHandle::new().unwrap());
        let irq = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let dev = I8042::new(exit.clone(), Some(irq.try_clone().unwrap()));
        (dev, exit, irq)
    }

    fn read(dev: &mut I8042, offset: u64) -> u8 {
        let mut b = [0xffu8];
        dev.read(offset, &mut b);
        b[0]
    }

    #[test]
    fn reset_command_ends_the_vm_and_nothing_else_does() {
        let (mut dev, exit, _) = dev();
        assert_eq!(read(&mut dev, COMMAND_OFFSET) & SB_OUT_FULL, 0);
        dev.write(DATA_OFFSET, &[CMD_RESET_CPU]);
        dev.write(COMMAND_OFFSET, &[CMD_DISABLE_KBD]);
        assert_eq!(exit.reason(), None);
        dev.write(COMMAND_OFFSET, &[CMD_RESET_CPU]);
        assert_eq!(exit.reason(), Some(ExitReason::GuestReset));
    }

    #[test]
    fn linux_probe_sequence() {
        let (mut dev, _, _) = dev();
        dev.write(COMMAND_OFFSET, &[CMD_SELF_TEST]);
        assert_eq!(read(&mut dev, COMMAND_OFFSET) & SB_OUT_FULL, SB_OUT_FULL);
        assert_eq!(read(&mut dev, DATA_OFFSET), 0x55);
        dev.write(COMMAND_OFFSET, &[CMD_READ_CTR]);
        let ctr = read(&mut dev, DATA_OFFSET);
        assert_eq!(ctr & CTR_XLATE, CTR_XLATE);
        dev.write(COMMAND_OFFSET, &[CMD_WRITE_CTR]);
        dev.write(DATA_OFFSET, &[ctr & !CTR_XLATE]);
        dev.write(COMMAND_OFFSET, &[CMD_READ_CTR]);
        assert_eq!(read(&mut dev, DATA_OFFSET), ctr & !CTR_XLATE);
        dev.write(DATA_OFFSET, &[0xf2]);
        let id: Vec<u8> = (0..3).map(|_| read(&mut dev, DATA_OFFSET)).collect();
        assert_eq!(id, [KBD_ACK, 0xab, 0x83]);
        assert_eq!(read(&mut dev, COMMAND_OFFSET) & SB_OUT_FULL, 0);
    }

    #[test]
    fn ctrl_alt_del_is_key_presses_with_an_interrupt() {
        let (mut dev, exit, irq) = dev();
        dev.send_ctrl_alt_del().unwrap();
        assert!(irq.read().unwrap() >= 1, "no IRQ 1");
        let keys: Vec<u8> = (0..CAD_SET1.len())
            .map(|_| read(&mut dev, DATA_OFFSET))
            .collect();
        assert_eq!(keys, CAD_SET1);
        assert_eq!(
            exit.reason(),
            None,
            "the guest decides what Ctrl-Alt-Del does"
        );
        dev.write(COMMAND_OFFSET, &[CMD_WRITE_CTR]);
        dev.write(DATA_OFFSET, &[CTR_KBD_INT | CTR_SYSTEM]);
        dev.send_ctrl_alt_del().unwrap();
        let keys: Vec<u8> = (0..CAD_SET2.len())
            .map(|_| read(&mut dev, DATA_OFFSET))
            .collect();
        assert_eq!(keys, CAD_SET2);
        dev.write(COMMAND_OFFSET, &[CMD_DISABLE_KBD]);
        assert!(dev.send_ctrl_alt_del().is_err());
    }
}
