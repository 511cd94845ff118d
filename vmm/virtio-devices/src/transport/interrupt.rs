//! The transport's side of [`VirtioInterrupt`]: maps a cause to the queue's or config's MSI-X
//! vector, honours masks (pending bits), falls back to the ISR register when MSI-X is off,
//! and records DEVICE_NEEDS_RESET. Shared between vCPU threads (register accesses) and
//! device worker threads (interrupts).

use std::io;
use std::sync::atomic::{AtomicBool, AtomicU16, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use crate::pci::{Delivery, MsiSink, MsixTable};
use crate::{InterruptCause, VirtioInterrupt};

/// "No MSI-X vector" (virtio spec 4.1.5.1.2): the driver wants no interrupt for this source.
pub const NO_VECTOR: u16 = 0xffff;
/// ISR bit: a queue has used buffers.
pub const ISR_QUEUE: u8 = 0x1;
/// ISR bit: the device configuration changed.
pub const ISR_CONFIG: u8 = 0x2;

/// Interrupt routing state of one virtio-pci function.
pub(crate) struct InterruptState {
    msix: Mutex<MsixTable>,
    sink: Arc<dyn MsiSink>,
    isr: AtomicU8,
    config_vector: AtomicU16,
    queue_vectors: Box<[AtomicU16]>,
    needs_reset: AtomicBool,
    config_generation: AtomicU8,
}

impl InterruptState {
    pub(crate) fn new(num_queues: usize, sink: Arc<dyn MsiSink>) -> Self {
        let vectors = u16::try_from(num_queues + 1).unwrap_or(u16::MAX);
        Self {
            msix: Mutex::new(MsixTable::new(vectors)),
            sink,
            isr: AtomicU8::new(0),
            config_vector: AtomicU16::new(NO_VECTOR),
            queue_vectors: (0..num_queues).map(|_| AtomicU16::new(NO_VECTOR)).collect(),
            needs_reset: AtomicBool::new(false),
            config_generation: AtomicU8::new(0),
        }
    }

    /// The MSI-X table. A poisoned lock (a panic while held) still holds consistent plain
    /// data, so it is used as is rather than taking the vCPU thread down.
    pub(crate) fn msix(&self) -> MutexGuard<'_, MsixTable> {
        self.msix.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn sink(&self) -> &dyn MsiSink {
        self.sink.as_ref()
    }

    /// Read and clear the ISR (reading acknowledges the interrupt, virtio spec 4.1.4.5).
    pub(crate) fn take_isr(&self) -> u8 {
        self.isr.swap(0, Ordering::AcqRel)
    }

    pub(crate) fn needs_reset(&self) -> bool {
        self.needs_reset.load(Ordering::Acquire)
    }

    pub(crate) fn config_generation(&self) -> u8 {
        self.config_generation.load(Ordering::Acquire)
    }

    pub(crate) fn config_vector(&self) -> u16 {
        self.config_vector.load(Ordering::Acquire)
    }

    pub(crate) fn queue_vector(&self, queue: usize) -> u16 {
        self.queue_vectors
            .get(queue)
            .map_or(NO_VECTOR, |v| v.load(Ordering::Acquire))
    }

    /// A vector the table has, or NO_VECTOR (what the driver reads back on failure).
    fn checked_vector(&self, vector: u16) -> u16 {
        if vector != NO_VECTOR && vector >= self.msix().size() {
            crate::guest_warn!(
                vector,
                "driver chose an MSI-X vector beyond the table; NO_VECTOR"
            );
            return NO_VECTOR;
        }
        vector
    }

    pub(crate) fn set_config_vector(&self, vector: u16) {
        self.config_vector
            .store(self.checked_vector(vector), Ordering::Release);
    }

    pub(crate) fn set_queue_vector(&self, queue: usize, vector: u16) {
        if let Some(slot) = self.queue_vectors.get(queue) {
            slot.store(self.checked_vector(vector), Ordering::Release);
        }
    }

    /// Snapshot: (ISR, needs-reset, config generation); vectors are read one by one.
    pub(crate) fn flags(&self) -> (u8, bool, u8) {
        (
            self.isr.load(Ordering::Acquire),
            self.needs_reset(),
            self.config_generation(),
        )
    }

    /// Restore: put back [`flags`](Self::flags) and the vectors (checked by the caller).
    pub(crate) fn restore(
        &self,
        (isr, needs_reset, generation): (u8, bool, u8),
        config: u16,
        queues: &[u16],
    ) {
        self.isr.store(isr, Ordering::Release);
        self.needs_reset.store(needs_reset, Ordering::Release);
        self.config_generation.store(generation, Ordering::Release);
        self.config_vector.store(config, Ordering::Release);
        for (slot, v) in self.queue_vectors.iter().zip(queues) {
            slot.store(*v, Ordering::Release);
        }
    }

    /// Device reset: vectors, ISR and the needs-reset flag return to their initial values.
    /// The MSI-X table belongs to PCI, not virtio, and survives.
    pub(crate) fn reset(&self) {
        self.isr.store(0, Ordering::Release);
        self.config_vector.store(NO_VECTOR, Ordering::Release);
        for v in self.queue_vectors.iter() {
            v.store(NO_VECTOR, Ordering::Release);
        }
        self.needs_reset.store(false, Ordering::Release);
    }

    fn deliver(&self, vector: u16, isr_bit: u8) {
        let mut msix = self.msix();
        if msix.enabled() {
            if vector == NO_VECTOR {
                return;
            }
            match msix.trigger(vector, self.sink.as_ref()) {
                Ok(Delivery::Sent | Delivery::Pending) => return,
                Ok(Delivery::Disabled) => {}
                Err(e) => {
                    crate::guest_warn!(error = %e, "interrupt dropped");
                    return;
                }
            }
        }
        // MSI-X off: the driver polls or uses INTx and reads the ISR.
        self.isr.fetch_or(isr_bit, Ordering::AcqRel);
    }
}

impl VirtioInterrupt for InterruptState {
    fn trigger(&self, cause: InterruptCause) -> io::Result<()> {
        match cause {
            InterruptCause::Queue(q) => {
                if usize::from(q) >= self.queue_vectors.len() {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidInput,
                        format!("device signalled queue {q}, which does not exist"),
                    ));
                }
                self.deliver(self.queue_vector(usize::from(q)), ISR_QUEUE);
            }
            InterruptCause::Config => {
                self.config_generation.fetch_add(1, Ordering::AcqRel);
                self.deliver(self.config_vector(), ISR_CONFIG);
            }
        }
        Ok(())
    }

    fn signal_needs_reset(&self) {
        if !self.needs_reset.swap(true, Ordering::AcqRel) {
            tracing::error!("virtio device set DEVICE_NEEDS_RESET; the guest must reset it");
            self.deliver(self.config_vector(), ISR_CONFIG);
        }
    }
}
