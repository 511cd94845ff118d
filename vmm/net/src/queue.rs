//! The queue plumbing both devices share: an activated queue, its notify eventfd and the
//! "tell the guest about used buffers" step.

use std::os::fd::AsRawFd;

use cloudphone_virtio::{ActivatedQueue, GuestMemory, InterruptCause, VirtioInterrupt};
use virtio_queue::{DescriptorChain, Queue, QueueOwnedT, QueueT};
use vmm_sys_util::epoll::EventSet;

/// One queue as a device worker owns it.
pub(crate) struct DeviceQueue {
    pub index: u16,
    pub queue: Queue,
    notify: vmm_sys_util::eventfd::EventFd,
}

impl DeviceQueue {
    /// Take over an activated queue; `event_idx` is whether VIRTIO_RING_F_EVENT_IDX was acked.
    pub fn new(activated: ActivatedQueue, event_idx: bool) -> Self {
        let mut queue = activated.queue;
        queue.set_event_idx(event_idx);
        DeviceQueue {
            index: activated.index,
            queue,
            notify: activated.notify,
        }
    }

    /// Watch this queue's notify eventfd under `token`.
    pub fn watch(&self, ctx: &cloudphone_virtio::WorkerContext, token: u64) -> std::io::Result<()> {
        ctx.add(self.notify.as_raw_fd(), EventSet::IN, token)
    }

    /// Consume a pending notification (the driver kicked the queue).
    pub fn ack_notify(&self) {
        // EAGAIN (nothing pending) is fine: we process the queue either way.
        let _ = self.notify.read();
    }

    /// The next available descriptor chain, or `None` when the driver has posted nothing more.
    /// On `None` the driver is asked to notify us when it adds buffers (with EVENT_IDX this
    /// writes `avail_event`), and the ring is re-checked to close the race with a concurrent add.
    pub fn pop_chain<'m>(
        &mut self,
        mem: &'m GuestMemory,
    ) -> Result<Option<DescriptorChain<&'m GuestMemory>>, String> {
        if let Some(chain) = self.queue.pop_descriptor_chain(mem) {
            return Ok(Some(chain));
        }
        let more = self
            .queue
            .enable_notification(mem)
            .map_err(|e| format!("queue {}: cannot enable notifications: {e}", self.index))?;
        Ok(if more {
            self.queue.pop_descriptor_chain(mem)
        } else {
            None
        })
    }

    /// Put the last `count` popped chains back, to be popped again later (the device could not
    /// use them yet).
    pub fn undo_pop(&mut self, count: usize) {
        for _ in 0..count {
            self.queue.go_to_previous_position();
        }
    }

    /// Return `head` to the driver with `len` bytes written.
    pub fn add_used(&mut self, mem: &GuestMemory, head: u16, len: u32) -> Result<(), String> {
        self.queue
            .add_used(mem, head, len)
            .map_err(|e| format!("queue {}: cannot add used buffer {head}: {e}", self.index))
    }

    /// Interrupt the guest if it asked to hear about the buffers used so far.
    pub fn signal_used(
        &mut self,
        mem: &GuestMemory,
        interrupt: &dyn VirtioInterrupt,
    ) -> Result<(), String> {
        let needed = self
            .queue
            .needs_notification(mem)
            .map_err(|e| format!("queue {}: cannot read used event: {e}", self.index))?;
        if needed {
            interrupt
                .trigger(InterruptCause::Queue(self.index))
                .map_err(|e| format!("queue {}: cannot interrupt the guest: {e}", self.index))?;
        }
        Ok(())
    }
}

/// Copy `config[offset..]` into `data`; bytes past the end of config space read as zero.
pub(crate) fn read_config_bytes(config: &[u8], offset: u64, data: &mut [u8]) {
    data.fill(0);
    let Ok(start) = usize::try_from(offset) else {
        return;
    };
    if let Some(available) = config.get(start..) {
        let n = available.len().min(data.len());
        data[..n].copy_from_slice(&available[..n]);
    }
}
