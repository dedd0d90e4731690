//! The registers the FADT of a hardware-reduced platform points at (arch::x86_64::acpi): the
//! sleep control register, whose write of SLP_EN with the `\_S5` sleep type is how an ACPI
//! guest powers off, its status register, and the reset register.

use std::sync::Arc;

use crate::arch::x86_64::acpi::S5_SLEEP_TYPE;
use crate::arch::x86_64::layout::{
    ACPI_RESET_PORT, ACPI_RESET_VALUE, ACPI_SLEEP_CONTROL_PORT, ACPI_SLEEP_STATUS_PORT,
};
use crate::bus::BusDevice;
use crate::exit::{ExitHandle, ExitReason};

/// Offsets from the first port.
const CONTROL: u64 = 0;
const STATUS: u64 = ACPI_SLEEP_STATUS_PORT - ACPI_SLEEP_CONTROL_PORT;
const RESET: u64 = ACPI_RESET_PORT - ACPI_SLEEP_CONTROL_PORT;

/// Sleep control register fields (ACPI 6, 4.8.3.7).
const SLP_EN: u8 = 1 << 5;
const SLP_TYP_SHIFT: u8 = 2;
const SLP_TYP_MASK: u8 = 0x7;

pub struct AcpiPm {
    exit: Arc<ExitHandle>,
}

impl AcpiPm {
    pub fn new(exit: Arc<ExitHandle>) -> Self {
        Self { exit }
    }
}

impl BusDevice for AcpiPm {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        // Sleep status: no wake event; the others read as zero.
        data.fill(0);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let Some(&value) = data.first() else {
            return;
        };
        match offset {
            CONTROL if value & SLP_EN != 0 => {
                let kind = (value >> SLP_TYP_SHIFT) & SLP_TYP_MASK;
                if kind == S5_SLEEP_TYPE {
                    self.exit.request(ExitReason::GuestPowerOff);
                } else {
                    log::debug!("guest asked for ACPI sleep type {kind}; only S5 (off) is offered");
                }
            }
            RESET if value == ACPI_RESET_VALUE => self.exit.request(ExitReason::GuestReset),
            STATUS | CONTROL | RESET => {}
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dev() -> (Arc<ExitHandle>, AcpiPm) {
        let exit = Arc::new(ExitHandle::new().unwrap());
        (exit.clone(), AcpiPm::new(exit))
    }

    #[test]
    fn s5_with_slp_en_powers_off() {
        let (exit, mut pm) = dev();
        // SLP_TYP 5 without SLP_EN, another sleep type, a status write: nothing.
        pm.write(CONTROL, &[S5_SLEEP_TYPE << SLP_TYP_SHIFT]);
        pm.write(CONTROL, &[(3 << SLP_TYP_SHIFT) | SLP_EN]);
        pm.write(STATUS, &[0xff]);
        assert_eq!(exit.reason(), None);
        pm.write(CONTROL, &[(S5_SLEEP_TYPE << SLP_TYP_SHIFT) | SLP_EN]);
        assert_eq!(exit.reason(), Some(ExitReason::GuestPowerOff));
    }

    #[test]
    fn reset_value_resets() {
        let (exit, mut pm) = dev();
        pm.write(RESET, &[ACPI_RESET_VALUE.wrapping_add(1)]);
        assert_eq!(exit.reason(), None);
        pm.write(RESET, &[ACPI_RESET_VALUE]);
        assert_eq!(exit.reason(), Some(ExitReason::GuestReset));
        let mut status = [0xffu8];
        pm.read(STATUS, &mut status);
        assert_eq!(status, [0]);
    }
}
