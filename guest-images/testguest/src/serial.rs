//! Polled output on the 16550 UART at 0x3f8 (COM1).

use core::fmt;

use crate::sys::{inb, outb};

pub const COM1: u16 = 0x3f8;
pub const COM1_IRQ: u8 = 4;
const THR: u16 = 0; // transmitter holding register (write)
pub const IER: u16 = 1; // interrupt enable
pub const IIR: u16 = 2; // interrupt identification (read)
const LCR: u16 = 3;
const MCR: u16 = 4;
const LSR: u16 = 5;
const LSR_THR_EMPTY: u8 = 0x20;
const LSR_DATA_READY: u8 = 0x01;
const RBR: u16 = 0; // receiver buffer register (read)
pub const IER_THR_EMPTY: u8 = 0x02;

pub fn init() {
    outb(COM1 + IER, 0);
    outb(COM1 + LCR, 0x80); // divisor latch: 115200 baud
    outb(COM1, 1);
    outb(COM1 + IER, 0);
    outb(COM1 + LCR, 0x03); // 8N1
    outb(COM1 + MCR, 0x0b); // DTR, RTS, OUT2 (the IRQ gate on PCs)
}

pub fn putb(b: u8) {
    // Bounded: a VMM whose LSR never reports an empty transmitter still gets the byte.
    let mut spins = 0u32;
    while inb(COM1 + LSR) & LSR_THR_EMPTY == 0 && spins < 100_000 {
        spins += 1;
        core::hint::spin_loop();
    }
    outb(COM1 + THR, b);
}

/// The next received byte, if one is waiting.
pub fn try_getb() -> Option<u8> {
    (inb(COM1 + LSR) & LSR_DATA_READY != 0).then(|| inb(COM1 + RBR))
}

pub fn write_bytes(s: &[u8]) {
    for &b in s {
        putb(b);
    }
}

/// `core::fmt` sink for the serial port.
#[allow(dead_code)]
pub struct Serial;

impl fmt::Write for Serial {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        write_bytes(s.as_bytes());
        Ok(())
    }
}

#[macro_export]
macro_rules! sprint {
    ($($arg:tt)*) => {{
        let _ = core::fmt::Write::write_fmt(&mut $crate::serial::Serial, format_args!($($arg)*));
    }};
}
