//! The 16550 UART (vm-superio) wired to the host console: guest output goes to a writer
//! (stdout), host input is fed into the receive FIFO from the event loop.

use std::io::{self, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use event_manager::{EventOps, Events, MutEventSubscriber};
use vm_superio::serial::SerialEvents;
use vm_superio::{Serial, Trigger};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::eventfd::EventFd;

use crate::bus::BusDevice;

/// Raises the UART's interrupt line by writing its irqfd.
pub struct IrqTrigger(pub EventFd);

impl Trigger for IrqTrigger {
    type E = io::Error;
    fn trigger(&self) -> io::Result<()> {
        self.0.write(1)
    }
}

/// Signals the input subscriber when the guest has drained the receive FIFO.
pub struct InputDrained(EventFd);

impl SerialEvents for InputDrained {
    fn buffer_read(&self) {}
    fn out_byte(&self) {}
    fn tx_lost_byte(&self) {}
    fn in_buffer_empty(&self) {
        let _ = self.0.write(1);
    }
}

/// Guest console output: passes bytes on and remembers what a user would want to know at the
/// end (when the first byte came, the last line printed).
pub struct ConsoleOut {
    out: Box<dyn Write + Send>,
    first_byte: Option<Instant>,
    line: Vec<u8>,
    last_line: String,
}

impl ConsoleOut {
    pub fn new(out: Box<dyn Write + Send>) -> Self {
        Self {
            out,
            first_byte: None,
            line: Vec::new(),
            last_line: String::new(),
        }
    }

    /// When the guest wrote its first byte, if it has.
    pub fn first_byte(&self) -> Option<Instant> {
        self.first_byte
    }

    /// The last complete non-empty line, or the partial line after it if there is one.
    pub fn last_line(&self) -> String {
        let partial = String::from_utf8_lossy(&self.line).trim().to_string();
        if partial.is_empty() {
            self.last_line.clone()
        } else {
            partial
        }
    }
}

impl Write for ConsoleOut {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.first_byte.get_or_insert_with(Instant::now);
        for &b in buf {
            if b == b'\n' {
                let line = String::from_utf8_lossy(&self.line).trim().to_string();
                if !line.is_empty() {
                    self.last_line = line;
                }
                self.line.clear();
            } else if self.line.len() < 4096 {
                self.line.push(b);
            }
        }
        self.out.write_all(buf)?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}

pub type Uart = Serial<IrqTrigger, InputDrained, ConsoleOut>;

/// The UART as a port-I/O bus device.
pub struct SerialDevice {
    pub uart: Uart,
}

impl SerialDevice {
    /// A UART raising `irq_evt` and writing to `out`; also returns the eventfd that fires when
    /// the guest drained its input.
    pub fn new(irq_evt: EventFd, out: Box<dyn Write + Send>) -> io::Result<(Self, EventFd)> {
        let drained = EventFd::new(libc::EFD_NONBLOCK)?;
        let uart = Serial::with_events(
            IrqTrigger(irq_evt),
            InputDrained(drained.try_clone()?),
            ConsoleOut::new(out),
        );
        Ok((Self { uart }, drained))
    }
}

/// The 16550's registers and receive FIFO, for a snapshot (vm-superio's `SerialState`, in a
/// form serde can write).
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SerialDeviceState {
    pub baud_divisor_low: u8,
    pub baud_divisor_high: u8,
    pub interrupt_enable: u8,
    pub interrupt_identification: u8,
    pub line_control: u8,
    pub line_status: u8,
    pub modem_control: u8,
    pub modem_status: u8,
    pub scratch: u8,
    pub in_buffer: Vec<u8>,
}

impl SerialDevice {
    /// The UART's state, for a snapshot.
    pub fn state(&self) -> SerialDeviceState {
        let s = self.uart.state();
        SerialDeviceState {
            baud_divisor_low: s.baud_divisor_low,
            baud_divisor_high: s.baud_divisor_high,
            interrupt_enable: s.interrupt_enable,
            interrupt_identification: s.interrupt_identification,
            line_control: s.line_control,
            line_status: s.line_status,
            modem_control: s.modem_control,
            modem_status: s.modem_status,
            scratch: s.scratch,
            in_buffer: s.in_buffer,
        }
    }

    /// Rebuild the UART from `state`, keeping its interrupt line, events and console.
    pub fn restore(&mut self, state: &SerialDeviceState) -> Result<(), String> {
        let s = vm_superio::serial::SerialState {
            baud_divisor_low: state.baud_divisor_low,
            baud_divisor_high: state.baud_divisor_high,
            interrupt_enable: state.interrupt_enable,
            interrupt_identification: state.interrupt_identification,
            line_control: state.line_control,
            line_status: state.line_status,
            modem_control: state.modem_control,
            modem_status: state.modem_status,
            scratch: state.scratch,
            // The FIFO holds 64 bytes; a longer buffer (a damaged snapshot) is cut there.
            in_buffer: state.in_buffer.iter().copied().take(64).collect(),
        };
        let trigger = IrqTrigger(
            self.uart
                .interrupt_evt()
                .0
                .try_clone()
                .map_err(|e| e.to_string())?,
        );
        let events = InputDrained(
            self.uart
                .events()
                .0
                .try_clone()
                .map_err(|e| e.to_string())?,
        );
        let out = std::mem::replace(
            self.uart.writer_mut(),
            ConsoleOut::new(Box::new(io::sink())),
        );
        self.uart = Serial::from_state(&s, trigger, events, out)
            .map_err(|e| format!("serial port state: {e:?}"))?;
        Ok(())
    }
}

impl BusDevice for SerialDevice {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        if let (Ok(offset), Some(first)) = (u8::try_from(offset), data.first_mut()) {
            *first = self.uart.read(offset);
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if let (Ok(offset), Some(&value)) = (u8::try_from(offset), data.first()) {
            if let Err(e) = self.uart.write(offset, value) {
                log::debug!("serial write failed: {e:?}");
            }
            let _ = self.uart.writer_mut().flush();
        }
    }
}

/// Event-loop subscriber that moves host input into the UART, pausing when the FIFO is full
/// and resuming when the guest drains it, so no typed byte is dropped.
pub struct ConsoleInput {
    serial: Arc<Mutex<SerialDevice>>,
    input: RawFd,
    drained: EventFd,
    paused: bool,
    closed: bool,
}

impl ConsoleInput {
    /// `input` must stay open for the life of the subscriber (stdin does).
    pub fn new(serial: Arc<Mutex<SerialDevice>>, input: RawFd, drained: EventFd) -> Self {
        Self {
            serial,
            input,
            drained,
            paused: false,
            closed: false,
        }
    }

    fn pump(&mut self, ops: &mut EventOps) {
        let serial = self.serial.clone();
        let mut serial = serial.lock().unwrap_or_else(|e| e.into_inner());
        let room = serial.uart.fifo_capacity();
        if room == 0 {
            self.pause(ops);
            return;
        }
        let mut buf = [0u8; 64];
        let want = room.min(buf.len());
        // SAFETY: reading into a local buffer of at least `want` bytes from a valid fd.
        let n = unsafe { libc::read(self.input, buf.as_mut_ptr().cast(), want) };
        if n < 0 {
            let err = io::Error::last_os_error();
            if err.kind() != io::ErrorKind::WouldBlock && err.kind() != io::ErrorKind::Interrupted {
                log::warn!("console input closed: {err}");
                self.close(ops);
            }
            return;
        }
        if n == 0 {
            self.close(ops);
            return;
        }
        if let Err(e) = serial.uart.enqueue_raw_bytes(&buf[..n as usize]) {
            log::debug!("serial input: {e:?}");
        }
    }

    fn pause(&mut self, ops: &mut EventOps) {
        if !self.paused && !self.closed {
            let _ = ops.remove(Events::empty_raw(self.input));
            self.paused = true;
        }
    }

    fn close(&mut self, ops: &mut EventOps) {
        if !self.paused {
            let _ = ops.remove(Events::empty_raw(self.input));
        }
        self.closed = true;
    }
}

impl MutEventSubscriber for ConsoleInput {
    fn init(&mut self, ops: &mut EventOps) {
        if let Err(e) = ops.add(Events::new(&self.drained, EventSet::IN)) {
            log::warn!("serial: cannot watch the input FIFO: {e}");
        }
        // A regular file or /dev/null cannot be polled: then the guest simply gets no input.
        if ops.add(Events::new_raw(self.input, EventSet::IN)).is_err() {
            log::debug!("console input is not pollable; the guest gets no input");
            self.closed = true;
        }
    }

    fn process(&mut self, events: Events, ops: &mut EventOps) {
        if events.fd() == self.drained.as_raw_fd() {
            let _ = self.drained.read();
            if self.paused && !self.closed {
                self.paused = false;
                if ops.add(Events::new_raw(self.input, EventSet::IN)).is_err() {
                    self.closed = true;
                }
            }
            return;
        }
        if events.event_set().contains(EventSet::IN) {
            self.pump(ops);
        } else {
            // Hang-up or error with nothing to read.
            self.close(ops);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Clone, Default)]
    struct Shared(Arc<Mutex<Vec<u8>>>);
    impl Write for Shared {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn guest_output_reaches_the_writer_and_last_line_is_kept() {
        let out = Shared::default();
        let irq = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let (mut dev, _drained) = SerialDevice::new(irq, Box::new(out.clone())).unwrap();
        for &b in b"first line\r\nsecond\r\n" {
            dev.write(0, &[b]);
        }
        assert_eq!(&*out.0.lock().unwrap(), b"first line\r\nsecond\r\n");
        assert_eq!(dev.uart.writer().last_line(), "second");
        assert!(dev.uart.writer().first_byte().is_some());
        for &b in b"part" {
            dev.write(0, &[b]);
        }
        assert_eq!(dev.uart.writer().last_line(), "part");
    }

    #[test]
    fn input_is_readable_by_the_guest_and_raises_the_irq() {
        let irq = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let (mut dev, _drained) =
            SerialDevice::new(irq.try_clone().unwrap(), Box::new(io::sink())).unwrap();
        dev.write(1, &[0x01]); // IER: received-data interrupt on
        dev.uart.enqueue_raw_bytes(b"hi").unwrap();
        assert!(irq.read().unwrap() >= 1);
        let mut b = [0u8];
        dev.read(0, &mut b);
        assert_eq!(b, [b'h']);
        dev.read(0, &mut b);
        assert_eq!(b, [b'i']);
    }
}
