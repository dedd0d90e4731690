//! A minimal i8042 keyboard controller: enough for Linux's `reboot=k` and the test guest to
//! end the VM by pulsing the reset line (command 0xFE on port 0x64).

use std::sync::Arc;

use crate::bus::BusDevice;
use crate::exit::{ExitHandle, ExitReason};

#[cfg(test)]
const DATA_OFFSET: u64 = 0;
const COMMAND_OFFSET: u64 = 4;
const CMD_RESET_CPU: u8 = 0xfe;

pub struct I8042 {
    exit: Arc<ExitHandle>,
}

impl I8042 {
    pub fn new(exit: Arc<ExitHandle>) -> Self {
        Self { exit }
    }
}

impl BusDevice for I8042 {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        // Status: output buffer empty, input buffer empty; data port: nothing pending.
        data.fill(0);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if offset == COMMAND_OFFSET && data.first() == Some(&CMD_RESET_CPU) {
            self.exit.request(ExitReason::GuestReset);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reset_command_ends_the_vm_and_nothing_else_does() {
        let exit = Arc::new(ExitHandle::new().unwrap());
        let mut dev = I8042::new(exit.clone());
        let mut status = [0xffu8];
        dev.read(COMMAND_OFFSET, &mut status);
        assert_eq!(status, [0]);
        dev.write(DATA_OFFSET, &[CMD_RESET_CPU]);
        dev.write(COMMAND_OFFSET, &[0xad]);
        assert_eq!(exit.reason(), None);
        dev.write(COMMAND_OFFSET, &[CMD_RESET_CPU]);
        assert_eq!(exit.reason(), Some(ExitReason::GuestReset));
    }
}
