//! Damage events: one per RESOURCE_FLUSH of the scanout, fanned out to subscribers without ever
//! blocking the device. A subscriber that falls behind gets its queued events merged (the union
//! rectangle, flagged `coalesced`) instead of stalling the guest or losing changed pixels.

use std::collections::VecDeque;
use std::sync::{Arc, Condvar, Mutex, Weak};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

/// Events a subscriber may have queued before new ones are merged into the newest.
pub const SUBSCRIBER_QUEUE_LEN: usize = 64;

/// A changed rectangle of the exported framebuffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Damage {
    /// Flush sequence number (the export's `seq` after this flush).
    pub seq: u64,
    pub x: u32,
    pub y: u32,
    pub width: u32,
    pub height: u32,
    /// Several flushes were merged into this event because the subscriber was slow.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub coalesced: bool,
}

impl Damage {
    /// Merge `newer` into `self`: the bounding box of both, the newer sequence number.
    fn absorb(&mut self, newer: &Damage) {
        let x0 = self.x.min(newer.x);
        let y0 = self.y.min(newer.y);
        let x1 = (u64::from(self.x) + u64::from(self.width))
            .max(u64::from(newer.x) + u64::from(newer.width));
        let y1 = (u64::from(self.y) + u64::from(self.height))
            .max(u64::from(newer.y) + u64::from(newer.height));
        *self = Damage {
            seq: newer.seq,
            x: x0,
            y: y0,
            width: (x1 - u64::from(x0)) as u32,
            height: (y1 - u64::from(y0)) as u32,
            coalesced: true,
        };
    }
}

#[derive(Default)]
struct Pending {
    events: VecDeque<Damage>,
    closed: bool,
}

#[derive(Default)]
struct SubscriberQueue {
    pending: Mutex<Pending>,
    ready: Condvar,
}

/// Receives damage events of one [`FramebufferExport`](super::FramebufferExport) subscription.
/// Dropping it unsubscribes.
pub struct DamageReceiver {
    queue: Arc<SubscriberQueue>,
}

/// Why [`DamageReceiver::recv_timeout`] returned no event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RecvError {
    /// Nothing arrived in time.
    #[error("no damage event within the timeout")]
    Timeout,
    /// The display device is gone (VM shut down or device reset for good).
    #[error("the framebuffer export was closed")]
    Closed,
}

impl DamageReceiver {
    /// The next event, waiting up to `timeout`.
    pub fn recv_timeout(&self, timeout: Duration) -> Result<Damage, RecvError> {
        let deadline = Instant::now() + timeout;
        let mut pending = self.queue.pending.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            if let Some(event) = pending.events.pop_front() {
                return Ok(event);
            }
            if pending.closed {
                return Err(RecvError::Closed);
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(RecvError::Timeout);
            }
            pending = self
                .queue
                .ready
                .wait_timeout(pending, deadline - now)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }

    /// The next event, waiting as long as it takes; `None` once the export is closed.
    pub fn recv(&self) -> Option<Damage> {
        loop {
            match self.recv_timeout(Duration::from_secs(3600)) {
                Ok(event) => return Some(event),
                Err(RecvError::Closed) => return None,
                Err(RecvError::Timeout) => {}
            }
        }
    }

    /// An event if one is queued, without waiting.
    pub fn try_recv(&self) -> Option<Damage> {
        self.queue
            .pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .events
            .pop_front()
    }
}

/// The publishing side, owned by the export.
#[derive(Default)]
pub(crate) struct DamageHub {
    subscribers: Mutex<Vec<Weak<SubscriberQueue>>>,
}

impl DamageHub {
    pub(crate) fn subscribe(&self) -> DamageReceiver {
        let queue = Arc::new(SubscriberQueue::default());
        self.lock().push(Arc::downgrade(&queue));
        DamageReceiver { queue }
    }

    /// Deliver `event` to every live subscriber; never blocks on a slow one.
    pub(crate) fn publish(&self, event: Damage) {
        self.lock().retain(|weak| {
            let Some(queue) = weak.upgrade() else {
                return false;
            };
            let mut pending = queue.pending.lock().unwrap_or_else(|p| p.into_inner());
            let full = pending.events.len() >= SUBSCRIBER_QUEUE_LEN;
            match pending.events.back_mut() {
                Some(last) if full => last.absorb(&event),
                _ => pending.events.push_back(event),
            }
            queue.ready.notify_all();
            true
        });
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Weak<SubscriberQueue>>> {
        self.subscribers.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Drop for DamageHub {
    fn drop(&mut self) {
        for queue in self.lock().iter().filter_map(Weak::upgrade) {
            queue
                .pending
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .closed = true;
            queue.ready.notify_all();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn damage(seq: u64, x: u32, y: u32, width: u32, height: u32) -> Damage {
        Damage {
            seq,
            x,
            y,
            width,
            height,
            coalesced: false,
        }
    }

    #[test]
    fn delivers_in_order_to_every_subscriber() {
        let hub = DamageHub::default();
        let (a, b) = (hub.subscribe(), hub.subscribe());
        hub.publish(damage(1, 0, 0, 10, 10));
        hub.publish(damage(2, 5, 5, 1, 1));
        for r in [&a, &b] {
            assert_eq!(r.try_recv().unwrap().seq, 1);
            assert_eq!(r.try_recv().unwrap().seq, 2);
            assert_eq!(r.try_recv(), None);
        }
    }

    #[test]
    fn slow_subscriber_gets_coalesced_union_and_never_blocks() {
        let hub = DamageHub::default();
        let slow = hub.subscribe();
        let n = SUBSCRIBER_QUEUE_LEN as u64 + 10;
        for seq in 1..=n {
            hub.publish(damage(seq, seq as u32, 100, 1, 2));
        }
        let events: Vec<Damage> = std::iter::from_fn(|| slow.try_recv()).collect();
        assert_eq!(events.len(), SUBSCRIBER_QUEUE_LEN);
        let last = events.last().unwrap();
        assert!(last.coalesced);
        assert_eq!(last.seq, n);
        // Union of x = 64..=74 (width 1 each).
        assert_eq!(
            (last.x, last.width, last.y, last.height),
            (SUBSCRIBER_QUEUE_LEN as u32, 11, 100, 2)
        );
        assert!(!events[0].coalesced);
    }

    #[test]
    fn dropped_receivers_are_forgotten_and_close_is_seen() {
        let hub = DamageHub::default();
        drop(hub.subscribe());
        let live = hub.subscribe();
        hub.publish(damage(1, 0, 0, 1, 1));
        assert_eq!(hub.lock().len(), 1);
        drop(hub);
        assert_eq!(live.recv().map(|d| d.seq), Some(1));
        assert_eq!(live.recv(), None);
        assert_eq!(
            live.recv_timeout(Duration::from_millis(1)),
            Err(RecvError::Closed)
        );
    }

    #[test]
    fn recv_timeout_times_out() {
        let hub = DamageHub::default();
        let r = hub.subscribe();
        assert_eq!(
            r.recv_timeout(Duration::from_millis(5)),
            Err(RecvError::Timeout)
        );
    }

    #[test]
    fn json_shape_matches_the_api() {
        let json = serde_json::to_string(&damage(7, 1, 2, 3, 4)).unwrap();
        assert_eq!(json, r#"{"seq":7,"x":1,"y":2,"width":3,"height":4}"#);
    }
}
