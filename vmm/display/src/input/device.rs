//! The virtio-input device (type 18): answers config queries from its [`InputProfile`] and
//! writes queued events into the guest's event-queue buffers; status-queue buffers (LEDs) are
//! consumed and ignored.

use std::io::Write;
use std::os::fd::AsRawFd;
use std::sync::Arc;

use cloudphone_virtio::{
    device_part, to_device_part, ActivateError, Activation, DeviceQueue, DeviceStateBlob,
    GuestMemory, StateError, VirtioCommon, VirtioDevice, VirtioInterrupt, WorkerContext,
    WorkerHandler,
};
use serde::{Deserialize, Serialize};
use vmm_sys_util::epoll::EventSet;

use super::config::{ConfigSpace, InputProfile};
use super::handle::{EventQueue, InputEvent, MAX_PENDING_EVENTS};

const DEVICE_TYPE_INPUT: u32 = 18;
const VIRTIO_F_VERSION_1: u64 = 1 << 32;
/// Event queue (0) and status queue (1).
const QUEUE_SIZES: [u16; 2] = [64, 64];
const EVENT_QUEUE: usize = 0;
const STATUS_QUEUE: usize = 1;
const WAKE_TOKEN: u64 = 2;
const EVENT_BYTES: usize = 8;

/// A virtio-input device's own snapshot state: the config query the driver selected and the
/// events queued for it but not yet delivered (the guest gets them after the restore).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct InputState {
    /// Config space `select` and `subsel`.
    pub selection: (u8, u8),
    /// Events waiting for guest buffers, oldest first.
    pub pending: Vec<InputEvent>,
}

/// One virtio-input device (touchscreen or keyboard).
pub struct VirtioInput {
    profile: InputProfile,
    config: ConfigSpace,
    events: Arc<EventQueue>,
    /// `virtio-input-<name>`, one worker thread per input device.
    worker_name: String,
    common: VirtioCommon,
}

impl VirtioInput {
    pub(crate) fn new(profile: InputProfile, events: Arc<EventQueue>) -> Self {
        Self {
            worker_name: format!("virtio-input-{}", profile.name),
            profile,
            config: ConfigSpace::default(),
            events,
            common: VirtioCommon::new(DEVICE_TYPE_INPUT, &QUEUE_SIZES, VIRTIO_F_VERSION_1),
        }
    }

    /// The device's name as the guest sees it (`virtio-touchscreen-0`, ...).
    pub fn name(&self) -> &str {
        &self.profile.name
    }
}

impl VirtioDevice for VirtioInput {
    cloudphone_virtio::virtio_common!(common);

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        self.config.read(&self.profile, offset, data);
    }

    fn write_config(&mut self, offset: u64, data: &[u8]) {
        self.config.write(offset, data);
    }

    fn worker_name(&self) -> &str {
        &self.worker_name
    }

    fn save_state(&self) -> Result<DeviceStateBlob, StateError> {
        let state = InputState {
            selection: self.config.selection(),
            pending: self.events.lock().events.iter().copied().collect(),
        };
        let part = to_device_part(DEVICE_TYPE_INPUT, &state)?;
        Ok(self.common.save_blob(part))
    }

    /// Refuses more pending events than the queue holds.
    fn restore_state(&mut self, blob: &DeviceStateBlob) -> Result<(), StateError> {
        let part = self.common.restore_blob(blob)?;
        let state: InputState = device_part(DEVICE_TYPE_INPUT, part)?;
        if state.pending.len() > MAX_PENDING_EVENTS {
            return Err(StateError::Malformed {
                device_type: DEVICE_TYPE_INPUT,
                reason: format!(
                    "{} pending events, at most {MAX_PENDING_EVENTS} fit",
                    state.pending.len()
                ),
            });
        }
        self.config.select(state.selection);
        self.events.lock().events = state.pending.into();
        Ok(())
    }

    fn worker(&mut self, a: Activation) -> Result<Box<dyn WorkerHandler>, ActivateError> {
        let queues: [DeviceQueue; 2] = Activation::queue_array(a.queues)?;
        Ok(Box::new(InputWorker {
            mem: a.mem,
            queues: queues.into(),
            events: self.events.clone(),
            interrupt: a.interrupt,
        }))
    }

    fn reset(&mut self) {
        self.common.reset();
        self.config.reset();
        self.events.reset();
    }
}

struct InputWorker {
    mem: GuestMemory,
    queues: Vec<DeviceQueue>,
    events: Arc<EventQueue>,
    interrupt: Arc<dyn VirtioInterrupt>,
}

impl InputWorker {
    /// Give the guest its status-queue buffers back (we have no LEDs to set).
    fn drain_status(&mut self) -> Result<(), String> {
        let q = &mut self.queues[STATUS_QUEUE];
        while let Some(chain) = q.pop(&self.mem)? {
            q.add_used(&self.mem, chain.head(), 0)?;
        }
        q.signal_used(&self.mem, self.interrupt.as_ref())?;
        Ok(())
    }

    /// Move pending events into event-queue buffers while both exist.
    fn deliver(&mut self) -> Result<(), String> {
        let q = &mut self.queues[EVENT_QUEUE];
        let mut pending = self.events.lock();
        while let Some(event) = pending.events.front().copied() {
            let Some(chain) = q.pop(&self.mem)? else {
                break;
            };
            let mut w = chain.writer(&self.mem);
            let written =
                w.available_bytes() >= EVENT_BYTES && w.write_all(&event.to_bytes()).is_ok();
            if written {
                pending.events.pop_front();
                q.add_used(&self.mem, chain.head(), EVENT_BYTES as u32)?;
            } else {
                cloudphone_virtio::guest_warn!("virtio-input: event buffer too small; skipped");
                q.add_used(&self.mem, chain.head(), 0)?;
            }
        }
        drop(pending);
        q.signal_used(&self.mem, self.interrupt.as_ref())?;
        Ok(())
    }
}

impl WorkerHandler for InputWorker {
    fn init(&mut self, ctx: &WorkerContext) -> std::io::Result<()> {
        for (token, q) in self.queues.iter().enumerate() {
            q.watch(ctx, token as u64)?;
        }
        ctx.add(self.events.wake.as_raw_fd(), EventSet::IN, WAKE_TOKEN)
    }

    fn handle(
        &mut self,
        _ctx: &WorkerContext,
        token: u64,
        _events: EventSet,
    ) -> Result<(), String> {
        match token {
            WAKE_TOKEN => {
                let _ = self.events.wake.read();
            }
            t if t as usize == STATUS_QUEUE => {
                self.queues[STATUS_QUEUE].ack_notify();
                return self.drain_status();
            }
            t if t as usize == EVENT_QUEUE => self.queues[EVENT_QUEUE].ack_notify(),
            other => return Err(format!("virtio-input: unknown worker token {other}")),
        }
        self.deliver()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::input::handle::InputEvent;
    use cloudphone_virtio::{ActivatedQueue, InterruptCause};
    use std::sync::atomic::{AtomicU32, Ordering};
    use virtio_queue::desc::{split::Descriptor as SplitDescriptor, RawDescriptor};
    use virtio_queue::mock::MockSplitQueue;
    use virtio_queue::Queue;
    use vm_memory::{Bytes, GuestAddress};
    use vmm_sys_util::eventfd::EventFd;

    #[derive(Default)]
    struct Counter(AtomicU32);

    impl VirtioInterrupt for Counter {
        fn trigger(&self, _cause: InterruptCause) -> std::io::Result<()> {
            self.0.fetch_add(1, Ordering::SeqCst);
            Ok(())
        }
        fn signal_needs_reset(&self) {}
    }

    #[test]
    fn too_small_event_buffer_is_returned_empty_and_the_event_kept() {
        let mem = GuestMemory::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
        let mock = MockSplitQueue::new(&mem, 8);
        let write = 2; // VRING_DESC_F_WRITE
        let descs = [
            RawDescriptor::from(SplitDescriptor::new(0x1_0000, 4, write, 0)),
            RawDescriptor::from(SplitDescriptor::new(0x2_0000, 8, write, 0)),
        ];
        mock.add_desc_chains(&descs, 0).unwrap();
        let queue: Queue = mock.create_queue().unwrap();
        let events = Arc::new(EventQueue::new().unwrap());
        events.lock().events.push_back(InputEvent::new(1, 172, 1));
        let irq = Arc::new(Counter::default());
        let activated = |index, queue| ActivatedQueue {
            index,
            queue,
            notify: EventFd::new(0).unwrap(),
        };
        let status: Queue = MockSplitQueue::create(&mem, GuestAddress(0x8_0000), 8)
            .create_queue()
            .unwrap();
        let mut worker = InputWorker {
            mem: mem.clone(),
            queues: vec![
                DeviceQueue::new(activated(0, queue)),
                DeviceQueue::new(activated(1, status)),
            ],
            events: events.clone(),
            interrupt: irq.clone(),
        };
        worker.deliver().unwrap();
        let used = mock.used();
        assert_eq!(used.idx().load(), 2);
        let first = used.ring().ref_at(0).unwrap().load();
        let second = used.ring().ref_at(1).unwrap().load();
        assert_eq!(
            (first.id(), first.len()),
            (0, 0),
            "4-byte buffer returned unused"
        );
        assert_eq!((second.id(), second.len()), (1, 8));
        let mut bytes = [0u8; 8];
        mem.read_slice(&mut bytes, GuestAddress(0x2_0000)).unwrap();
        assert_eq!(bytes, InputEvent::new(1, 172, 1).to_bytes());
        assert!(events.lock().events.is_empty());
        assert_eq!(irq.0.load(Ordering::SeqCst), 1, "one interrupt per batch");
    }

    /// The hostile-ring property every device passes through its `DeviceQueue`, on the event
    /// queue (with an event waiting, so chains are written) and the status queue.
    #[test]
    fn fuzz_input_hostile_rings() {
        let events = Arc::new(EventQueue::new().unwrap());
        let mut dev = VirtioInput::new(InputProfile::keyboard(), events.clone());
        cloudphone_virtio::testing::hostile::fuzz_worker("input_chains", 1000, 2, |a| {
            events.lock().events.push_back(InputEvent::new(1, 172, 1));
            dev.worker(a).unwrap()
        });
    }
}
