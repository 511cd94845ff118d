//! Small helpers shared by the gpu and input workers: take descriptor chains off an activated
//! queue, return them to the used ring, and interrupt the guest once per batch.

use cloudphone_virtio::{ActivatedQueue, GuestMemory, InterruptCause, VirtioInterrupt};
use virtio_queue::{DescriptorChain, QueueT};

/// An activated queue plus whether its used ring changed since the last interrupt.
pub(crate) struct DeviceQueue {
    pub(crate) inner: ActivatedQueue,
    used_since_signal: bool,
}

impl DeviceQueue {
    pub(crate) fn new(inner: ActivatedQueue) -> Self {
        Self {
            inner,
            used_since_signal: false,
        }
    }

    /// Consume the notification eventfd so epoll stops reporting it.
    pub(crate) fn ack_notify(&self) {
        // A spurious wake leaves the counter at zero (EAGAIN): nothing to do.
        let _ = self.inner.notify.read();
    }

    /// The next chain the driver made available, if any.
    pub(crate) fn pop<'m>(
        &mut self,
        mem: &'m GuestMemory,
    ) -> Option<DescriptorChain<&'m GuestMemory>> {
        self.inner.queue.pop_descriptor_chain(mem)
    }

    /// Return chain `head` to the driver with `len` bytes written.
    pub(crate) fn complete(
        &mut self,
        mem: &GuestMemory,
        head: u16,
        len: u32,
    ) -> Result<(), String> {
        self.inner
            .queue
            .add_used(mem, head, len)
            .map_err(|e| format!("queue {}: add_used failed: {e}", self.inner.index))?;
        self.used_since_signal = true;
        Ok(())
    }

    /// Interrupt the guest if chains were completed and the driver wants to hear about it.
    pub(crate) fn signal(
        &mut self,
        mem: &GuestMemory,
        interrupt: &dyn VirtioInterrupt,
    ) -> Result<(), String> {
        if !std::mem::take(&mut self.used_since_signal) {
            return Ok(());
        }
        let needed = self.inner.queue.needs_notification(mem).map_err(|e| {
            format!(
                "queue {}: reading notification state failed: {e}",
                self.inner.index
            )
        })?;
        if needed {
            interrupt
                .trigger(InterruptCause::Queue(self.inner.index))
                .map_err(|e| format!("queue {}: interrupt failed: {e}", self.inner.index))?;
        }
        Ok(())
    }
}
