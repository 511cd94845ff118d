//! The COM1 8250 UART (vm-superio) at 0x3f8, IRQ 4 via an irqfd.

use std::fs::File;
use std::io::{self, LineWriter, Write};
use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use vm_superio::serial::SerialState;
use vm_superio::{Serial, Trigger};
use vmm_sys_util::eventfd::EventFd;

use crate::bus::BusDevice;

/// COM1 base port.
pub const COM1_PORT: u16 = 0x3f8;
/// COM1 IRQ (IOAPIC pin).
pub const COM1_IRQ: u32 = 4;

/// Where the serial console goes (`--serial`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SerialOutput {
    /// The VMM's stdout.
    Stdout,
    /// Appended to a file.
    File(PathBuf),
    /// Discarded.
    None,
}

/// Raises the serial interrupt by writing its irqfd.
pub struct IrqTrigger(pub EventFd);

impl Trigger for IrqTrigger {
    type E = io::Error;
    fn trigger(&self) -> io::Result<()> {
        self.0.write(1)
    }
}

/// The UART plus its output sink.
pub struct SerialDevice {
    uart: Serial<IrqTrigger, vm_superio::serial::NoEvents, Box<dyn Write + Send>>,
}

/// The UART's registers and unread input, for snapshots (vm-superio's `SerialState`, which
/// has no serde support of its own).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UartState {
    /// Divisor latch, low and high byte.
    pub divisor: [u8; 2],
    /// IER, IIR, LCR, LSR, MCR, MSR and the scratch register, in that order.
    pub registers: [u8; 7],
    /// Received bytes the guest has not read yet.
    pub input: Vec<u8>,
}

/// A UART after reset (transmitter empty, default baud rate), as vm-superio builds it.
impl Default for UartState {
    fn default() -> Self {
        SerialState::default().into()
    }
}

impl From<SerialState> for UartState {
    fn from(s: SerialState) -> Self {
        Self {
            divisor: [s.baud_divisor_low, s.baud_divisor_high],
            registers: [
                s.interrupt_enable,
                s.interrupt_identification,
                s.line_control,
                s.line_status,
                s.modem_control,
                s.modem_status,
                s.scratch,
            ],
            input: s.in_buffer,
        }
    }
}

impl From<&UartState> for SerialState {
    fn from(s: &UartState) -> Self {
        let [ier, iir, lcr, lsr, mcr, msr, scratch] = s.registers;
        SerialState {
            baud_divisor_low: s.divisor[0],
            baud_divisor_high: s.divisor[1],
            interrupt_enable: ier,
            interrupt_identification: iir,
            line_control: lcr,
            line_status: lsr,
            modem_control: mcr,
            modem_status: msr,
            scratch,
            in_buffer: s.input.clone(),
        }
    }
}

impl SerialDevice {
    /// A UART writing to `output`, interrupting through `irq`.
    pub fn new(output: &SerialOutput, irq: EventFd) -> io::Result<Self> {
        Self::restored(output, irq, &UartState::default())
    }

    /// A UART in `state` (from a snapshot) writing to `output`.
    pub fn restored(output: &SerialOutput, irq: EventFd, state: &UartState) -> io::Result<Self> {
        let out: Box<dyn Write + Send> = match output {
            SerialOutput::Stdout => Box::new(io::stdout()),
            SerialOutput::File(p) => Box::new(LineWriter::new(
                File::options().create(true).append(true).open(p)?,
            )),
            SerialOutput::None => Box::new(io::sink()),
        };
        let uart = Serial::from_state(
            &SerialState::from(state),
            IrqTrigger(irq),
            vm_superio::serial::NoEvents,
            out,
        )
        .map_err(|e| io::Error::other(format!("restoring the UART: {e:?}")))?;
        Ok(Self { uart })
    }

    /// The UART's registers, for a snapshot.
    pub fn state(&self) -> UartState {
        self.uart.state().into()
    }

    /// A UART writing to any sink (tests capture output this way).
    pub fn with_writer(out: Box<dyn Write + Send>, irq: EventFd) -> Self {
        Self {
            uart: Serial::new(IrqTrigger(irq), out),
        }
    }
}

impl BusDevice for SerialDevice {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        if let [b] = data {
            *b = self.uart.read(offset as u8);
        } else {
            data.fill(0xff);
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if let [b] = data {
            if let Err(e) = self.uart.write(offset as u8, *b) {
                tracing::warn!(error = ?e, "serial output failed");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    #[derive(Clone, Default)]
    pub struct Capture(pub Arc<Mutex<Vec<u8>>>);
    impl Write for Capture {
        fn write(&mut self, b: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn thr_write_reaches_output() {
        let cap = Capture::default();
        let irq = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let mut dev = SerialDevice::with_writer(Box::new(cap.clone()), irq);
        for b in b"hi\n" {
            dev.write(0, &[*b]);
        }
        // Wide accesses are not a UART access.
        dev.write(0, b"xy");
        assert_eq!(cap.0.lock().unwrap().as_slice(), b"hi\n");
        let mut lsr = [0u8];
        dev.read(5, &mut lsr);
        assert_ne!(lsr[0] & 0x20, 0, "THR empty");
    }

    #[test]
    fn a_default_uart_can_transmit() {
        let irq = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let mut dev =
            SerialDevice::restored(&SerialOutput::None, irq, &UartState::default()).unwrap();
        let mut lsr = [0u8];
        dev.read(5, &mut lsr);
        assert_ne!(lsr[0] & 0x20, 0, "THR empty after reset");
    }

    #[test]
    fn registers_survive_a_state_round_trip() {
        let irq = || EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let mut dev = SerialDevice::with_writer(Box::new(io::sink()), irq());
        dev.write(3, &[0x80]); // DLAB on
        dev.write(0, &[0x0c]); // 9600 baud
        dev.write(3, &[0x03]); // 8N1, DLAB off
        dev.write(7, &[0x42]); // scratch
        dev.write(1, &[0x01]); // IER: data available
        let state = dev.state();
        let json = serde_json::to_string(&state).unwrap();
        let back: UartState = serde_json::from_str(&json).unwrap();
        let mut restored = SerialDevice::restored(&SerialOutput::None, irq(), &back).unwrap();
        assert_eq!(restored.state(), state);
        let mut b = [0u8];
        restored.read(7, &mut b);
        assert_eq!(b[0], 0x42);
        restored.read(3, &mut b);
        assert_eq!(b[0], 0x03);
    }
}
