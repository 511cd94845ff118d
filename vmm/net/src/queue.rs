//! The queue plumbing both devices share: an activated queue, its notify eventfd and the
//! "tell the guest about used buffers" step.

use std::num::Wrapping;
use std::os::fd::AsRawFd;
use std::sync::atomic::{fence, Ordering};

use cloudphone_virtio::{ActivatedQueue, GuestMemory, InterruptCause, VirtioInterrupt};
use virtio_queue::{DescriptorChain, Queue, QueueOwnedT, QueueT};
use vm_memory::{Bytes, GuestAddress};
use vmm_sys_util::epoll::EventSet;

/// Split-ring layout (virtio 2.7.6/2.7.8): flags and idx before the ring entries.
const AVAIL_RING_HEADER_LEN: u64 = 4;
const USED_RING_HEADER_LEN: u64 = 4;
/// `struct virtq_used_elem`: id (u32) and len (u32).
const USED_ELEM_LEN: u64 = 8;

/// One queue as a device worker owns it.
pub(crate) struct DeviceQueue {
    pub index: u16,
    pub queue: Queue,
    notify: vmm_sys_util::eventfd::EventFd,
    event_idx: bool,
    /// `next_used` when the driver was last considered for an interrupt: the used entries
    /// after it are the ones EVENT_IDX's `used_event` is checked against.
    signalled_used: Wrapping<u16>,
}

impl DeviceQueue {
    /// Take over an activated queue; `event_idx` is whether VIRTIO_RING_F_EVENT_IDX was acked.
    pub fn new(activated: ActivatedQueue, event_idx: bool) -> Self {
        let mut queue = activated.queue;
        queue.set_event_idx(event_idx);
        DeviceQueue {
            index: activated.index,
            signalled_used: Wrapping(queue.next_used()),
            queue,
            notify: activated.notify,
            event_idx,
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
        self.add_used_batch(mem, &[(head, len)])
    }

    /// Return several chains `(head, bytes written)` as one used-ring update: every element is
    /// written first and the used index moves once, after them. A frame spread over several
    /// mergeable rx buffers must appear whole: a driver that reads `num_buffers` and finds
    /// fewer used buffers than that drops the frame (and TCP then backs off).
    pub fn add_used_batch(&mut self, mem: &GuestMemory, used: &[(u16, u32)]) -> Result<(), String> {
        let Some((&(last_head, last_len), rest)) = used.split_last() else {
            return Ok(());
        };
        let size = self.queue.size();
        let start = self.queue.next_used();
        for (i, &(head, len)) in rest.iter().enumerate() {
            if head >= size {
                return Err(format!(
                    "queue {}: used buffer {head} is outside the {size}-entry ring",
                    self.index
                ));
            }
            let slot = u64::from(start.wrapping_add(i as u16) % size);
            let mut elem = [0u8; USED_ELEM_LEN as usize];
            elem[..4].copy_from_slice(&u32::from(head).to_le_bytes());
            elem[4..].copy_from_slice(&len.to_le_bytes());
            self.queue
                .used_ring()
                .checked_add(USED_RING_HEADER_LEN + slot * USED_ELEM_LEN)
                .ok_or_else(|| format!("queue {}: used ring address overflows", self.index))
                .and_then(|addr| {
                    mem.write_slice(&elem, GuestAddress(addr)).map_err(|e| {
                        format!("queue {}: cannot write used element: {e}", self.index)
                    })
                })?;
        }
        // `add_used` writes the last element, then publishes the index (release ordering, so
        // after the elements written above).
        self.queue
            .set_next_used(start.wrapping_add(rest.len() as u16));
        self.queue.add_used(mem, last_head, last_len).map_err(|e| {
            format!(
                "queue {}: cannot add used buffer {last_head}: {e}",
                self.index
            )
        })
    }

    /// Interrupt the guest if it asked to hear about the buffers used since the last call
    /// (virtio 2.7.10: with EVENT_IDX, when `used_event` lies among them; else always).
    pub fn signal_used(
        &mut self,
        mem: &GuestMemory,
        interrupt: &dyn VirtioInterrupt,
    ) -> Result<(), String> {
        let new = Wrapping(self.queue.next_used());
        let old = std::mem::replace(&mut self.signalled_used, new);
        if new == old {
            return Ok(());
        }
        let needed = if self.event_idx {
            // The used elements and index must be visible before `used_event` is read.
            fence(Ordering::SeqCst);
            let used_event_addr = self
                .queue
                .avail_ring()
                .checked_add(AVAIL_RING_HEADER_LEN + 2 * u64::from(self.queue.size()))
                .ok_or_else(|| format!("queue {}: avail ring address overflows", self.index))?;
            let used_event: u16 = mem
                .read_obj(GuestAddress(used_event_addr))
                .map_err(|e| format!("queue {}: cannot read used_event: {e}", self.index))?;
            new - Wrapping(u16::from_le(used_event)) - Wrapping(1) < new - old
        } else {
            true
        };
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::{guest_memory, interrupt, poke, Buf, TestQueue};

    const SIZE: u16 = 4;

    fn buf(i: u64) -> Buf {
        Buf {
            addr: 0x10000 + i * 0x1000,
            len: 0x1000,
            write: true,
        }
    }

    /// Post `n` one-buffer chains and pop them on the device side; returns their heads.
    fn post_and_pop(
        mem: &GuestMemory,
        tq: &mut TestQueue,
        dq: &mut DeviceQueue,
        n: u64,
    ) -> Vec<u16> {
        let heads: Vec<u16> = (0..n).map(|i| tq.add(&[buf(i)])).collect();
        for &head in &heads {
            assert_eq!(dq.pop_chain(mem).unwrap().unwrap().head_index(), head);
        }
        heads
    }

    /// Where the driver's `used_event` lives for a [`TestQueue`] at address 0.
    fn used_event_addr() -> u64 {
        16 * u64::from(SIZE) + AVAIL_RING_HEADER_LEN + 2 * u64::from(SIZE)
    }

    #[test]
    fn batch_returns_every_buffer_in_order_across_ring_wraps() {
        let mem = guest_memory();
        let mut tq = TestQueue::new(&mem, 0, SIZE);
        let mut dq = DeviceQueue::new(tq.activated(0), false);
        for round in 0..3u32 {
            let heads = post_and_pop(&mem, &mut tq, &mut dq, 3);
            let used: Vec<(u16, u32)> = heads
                .iter()
                .map(|&h| (h, round * 10 + u32::from(h)))
                .collect();
            dq.add_used_batch(&mem, &used).unwrap();
            assert_eq!(tq.wait_used(3), used, "round {round}");
        }
        assert_eq!(dq.queue.next_used(), 9);
    }

    #[test]
    fn batch_with_a_bad_head_publishes_nothing() {
        let mem = guest_memory();
        let mut tq = TestQueue::new(&mem, 0, SIZE);
        let mut dq = DeviceQueue::new(tq.activated(0), false);
        let heads = post_and_pop(&mem, &mut tq, &mut dq, 2);
        for bad in [
            vec![(SIZE, 1), (heads[1], 1)],
            vec![(heads[0], 1), (SIZE, 1)],
        ] {
            assert!(dq
                .add_used_batch(&mem, &bad)
                .unwrap_err()
                .contains("buffer 4"));
            assert!(tq.wait_used_unless(1, &|| true).is_empty(), "{bad:?}");
        }
    }

    #[test]
    fn event_idx_interrupts_only_when_used_event_is_passed() {
        let mem = guest_memory();
        let mut tq = TestQueue::new(&mem, 0, SIZE);
        let mut dq = DeviceQueue::new(tq.activated(0), true);
        let (irq, dyn_irq) = interrupt();
        let count = || irq.causes.lock().unwrap().len();
        // The driver wants an interrupt once the used index passes 1.
        poke(&mem, used_event_addr(), &1u16.to_le_bytes());
        let heads = post_and_pop(&mem, &mut tq, &mut dq, 3);
        let used: Vec<(u16, u32)> = heads.iter().map(|&h| (h, 1)).collect();
        dq.add_used_batch(&mem, &used).unwrap();
        dq.signal_used(&mem, dyn_irq.as_ref()).unwrap();
        assert_eq!(count(), 1, "used_event 1 lies within the batch 0..3");
        tq.wait_used(3);
        let heads = post_and_pop(&mem, &mut tq, &mut dq, 1);
        dq.add_used(&mem, heads[0], 1).unwrap();
        dq.signal_used(&mem, dyn_irq.as_ref()).unwrap();
        assert_eq!(count(), 1, "used_event 1 was already passed");
        dq.signal_used(&mem, dyn_irq.as_ref()).unwrap();
        assert_eq!(count(), 1, "nothing new was used");
        poke(&mem, used_event_addr(), &4u16.to_le_bytes());
        tq.wait_used(1);
        let heads = post_and_pop(&mem, &mut tq, &mut dq, 1);
        dq.add_used(&mem, heads[0], 1).unwrap();
        dq.signal_used(&mem, dyn_irq.as_ref()).unwrap();
        assert_eq!(count(), 2, "used index 5 passes used_event 4");
    }

    #[test]
    fn without_event_idx_every_new_use_interrupts() {
        let mem = guest_memory();
        let mut tq = TestQueue::new(&mem, 0, SIZE);
        let mut dq = DeviceQueue::new(tq.activated(0), false);
        let (irq, dyn_irq) = interrupt();
        for round in 1..=2 {
            let heads = post_and_pop(&mem, &mut tq, &mut dq, 2);
            dq.add_used_batch(&mem, &[(heads[0], 1), (heads[1], 1)])
                .unwrap();
            dq.signal_used(&mem, dyn_irq.as_ref()).unwrap();
            dq.signal_used(&mem, dyn_irq.as_ref()).unwrap();
            assert_eq!(irq.causes.lock().unwrap().len(), round);
            tq.wait_used(2);
        }
    }
}
