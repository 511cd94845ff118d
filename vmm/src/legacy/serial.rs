//! The COM1 8250 UART (vm-superio) at 0x3f8, IRQ 4 via an irqfd.

use std::fs::File;
use std::io::{self, LineWriter, Write};
use std::path::PathBuf;

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

impl SerialDevice {
    /// A UART writing to `output`, interrupting through `irq`.
    pub fn new(output: &SerialOutput, irq: EventFd) -> io::Result<Self> {
        let out: Box<dyn Write + Send> = match output {
            SerialOutput::Stdout => Box::new(io::stdout()),
            SerialOutput::File(p) => Box::new(LineWriter::new(
                File::options().create(true).append(true).open(p)?,
            )),
            SerialOutput::None => Box::new(io::sink()),
        };
        Ok(Self::with_writer(out, irq))
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
}
