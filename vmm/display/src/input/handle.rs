//! Injecting input: [`InputHandle`] turns validated [`InputAction`]s into evdev event groups
//! (multitouch protocol B for the screen) and queues them for the device, which hands them to
//! the guest as buffers arrive. The queue is bounded; a full queue refuses the whole request.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};

use vmm_sys_util::eventfd::EventFd;

use super::config::TOUCH_SLOTS;
use super::evdev::*;
use super::request::{parse_input_request, InputAction, InputError, Screen};

/// Events queued per device while the guest has no free buffers (about 100 full touch frames).
pub const MAX_PENDING_EVENTS: usize = 1024;

/// `struct virtio_input_event`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct InputEvent {
    pub type_: u16,
    pub code: u16,
    pub value: i32,
}

impl InputEvent {
    pub const fn new(type_: u16, code: u16, value: i32) -> Self {
        Self { type_, code, value }
    }

    /// The 8 little-endian bytes the guest reads.
    pub fn to_bytes(self) -> [u8; 8] {
        let mut b = [0u8; 8];
        b[0..2].copy_from_slice(&self.type_.to_le_bytes());
        b[2..4].copy_from_slice(&self.code.to_le_bytes());
        b[4..8].copy_from_slice(&self.value.to_le_bytes());
        b
    }
}

const SYN: InputEvent = InputEvent::new(EV_SYN, SYN_REPORT, 0);

#[derive(Default)]
pub(crate) struct Pending {
    pub events: VecDeque<InputEvent>,
    /// Bumped on every device reset so injectors drop stale touch state.
    pub generation: u64,
}

/// Events waiting for one device, plus the eventfd that wakes its worker.
pub(crate) struct EventQueue {
    pending: Mutex<Pending>,
    pub(crate) wake: EventFd,
}

impl EventQueue {
    pub(crate) fn new() -> std::io::Result<Self> {
        Ok(Self {
            pending: Mutex::new(Pending::default()),
            wake: EventFd::new(libc::EFD_NONBLOCK)?,
        })
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, Pending> {
        self.pending.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queue all of `events` or none of them.
    fn push_all(&self, pending: &mut Pending, events: &[InputEvent]) -> Result<(), InputError> {
        if pending.events.len() + events.len() > MAX_PENDING_EVENTS {
            return Err(InputError::QueueFull);
        }
        pending.events.extend(events.iter().copied());
        // A failed wake only delays delivery until the guest's next notify.
        if let Err(e) = self.wake.write(1) {
            tracing::warn!(error = %e, "virtio-input: waking the device worker failed");
        }
        Ok(())
    }

    /// Device reset: forget queued events and invalidate touch state.
    pub(crate) fn reset(&self) {
        let mut pending = self.lock();
        pending.events.clear();
        pending.generation += 1;
    }
}

/// Which contacts are down and with which tracking ids.
#[derive(Debug, Clone, Default)]
struct TouchState {
    generation: u64,
    tracking: [Option<u16>; TOUCH_SLOTS as usize],
    next_tracking_id: u16,
}

impl TouchState {
    fn any_down(&self) -> bool {
        self.tracking.iter().any(Option::is_some)
    }

    /// The protocol-B event group for `actions` (touch actions only), updating the state.
    fn events(&mut self, actions: &[(u32, u32, u32, bool)]) -> Vec<InputEvent> {
        let was_down = self.any_down();
        let mut out = Vec::new();
        for &(id, x, y, down) in actions {
            let slot = &mut self.tracking[id as usize];
            match (down, *slot) {
                (true, None) => {
                    let tid = self.next_tracking_id;
                    self.next_tracking_id = tid.wrapping_add(1);
                    *slot = Some(tid);
                    out.push(InputEvent::new(EV_ABS, ABS_MT_SLOT, id as i32));
                    out.push(InputEvent::new(EV_ABS, ABS_MT_TRACKING_ID, i32::from(tid)));
                    out.push(InputEvent::new(EV_ABS, ABS_MT_POSITION_X, x as i32));
                    out.push(InputEvent::new(EV_ABS, ABS_MT_POSITION_Y, y as i32));
                }
                (true, Some(_)) => {
                    out.push(InputEvent::new(EV_ABS, ABS_MT_SLOT, id as i32));
                    out.push(InputEvent::new(EV_ABS, ABS_MT_POSITION_X, x as i32));
                    out.push(InputEvent::new(EV_ABS, ABS_MT_POSITION_Y, y as i32));
                }
                (false, Some(_)) => {
                    *slot = None;
                    out.push(InputEvent::new(EV_ABS, ABS_MT_SLOT, id as i32));
                    out.push(InputEvent::new(EV_ABS, ABS_MT_TRACKING_ID, -1));
                }
                (false, None) => {}
            }
        }
        if out.is_empty() {
            return out;
        }
        if self.any_down() != was_down {
            out.push(InputEvent::new(
                EV_KEY,
                BTN_TOUCH,
                i32::from(self.any_down()),
            ));
        }
        if let Some(&(_, x, y, _)) = actions.iter().find(|a| a.3) {
            out.push(InputEvent::new(EV_ABS, ABS_X, x as i32));
            out.push(InputEvent::new(EV_ABS, ABS_Y, y as i32));
        }
        out.push(SYN);
        out
    }
}

struct Inner {
    screen: Screen,
    touch: Option<Arc<EventQueue>>,
    keyboard: Option<Arc<EventQueue>>,
    touch_state: Mutex<TouchState>,
}

/// Injects touches and keys into a phone's input devices. Cheap to clone, thread-safe; the
/// VMM's API routes `PUT /input` bodies to [`inject_json`](Self::inject_json).
#[derive(Clone)]
pub struct InputHandle {
    inner: Arc<Inner>,
}

impl InputHandle {
    pub(crate) fn new(
        screen: Screen,
        touch: Option<Arc<EventQueue>>,
        keyboard: Option<Arc<EventQueue>>,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                screen,
                touch,
                keyboard,
                touch_state: Mutex::default(),
            }),
        }
    }

    /// The screen touch coordinates refer to.
    pub fn screen(&self) -> Screen {
        self.inner.screen
    }

    /// Validate and inject a `PUT /input` body; on error nothing is injected.
    pub fn inject_json(&self, body: &[u8]) -> Result<(), InputError> {
        self.inject(&parse_input_request(body, self.inner.screen)?)
    }

    /// Inject validated actions (from [`parse_input_request`]): touches as one protocol-B
    /// frame, keys as press/release + SYN each. All or nothing per device.
    pub fn inject(&self, actions: &[InputAction]) -> Result<(), InputError> {
        let touches: Vec<(u32, u32, u32, bool)> = actions
            .iter()
            .filter_map(|a| match *a {
                InputAction::Touch { id, x, y, down } => Some((id, x, y, down)),
                InputAction::Key { .. } => None,
            })
            .collect();
        let keys: Vec<InputEvent> = actions
            .iter()
            .filter_map(|a| match *a {
                InputAction::Key { code, down } => {
                    Some([InputEvent::new(EV_KEY, code, i32::from(down)), SYN])
                }
                InputAction::Touch { .. } => None,
            })
            .flatten()
            .collect();
        let touch_queue = match (&self.inner.touch, touches.is_empty()) {
            (_, true) => None,
            (Some(q), false) => Some(q),
            (None, false) => return Err(InputError::NoDevice("touchscreen")),
        };
        let key_queue = match (&self.inner.keyboard, keys.is_empty()) {
            (_, true) => None,
            (Some(q), false) => Some(q),
            (None, false) => return Err(InputError::NoDevice("keyboard")),
        };
        if let Some(queue) = touch_queue {
            let mut state = self
                .inner
                .touch_state
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            let mut pending = queue.lock();
            if state.generation != pending.generation {
                *state = TouchState {
                    generation: pending.generation,
                    ..TouchState::default()
                };
            }
            let mut next = state.clone();
            let events = next.events(&touches);
            if !events.is_empty() {
                queue.push_all(&mut pending, &events)?;
            }
            *state = next;
        }
        if let Some(queue) = key_queue {
            queue.push_all(&mut queue.lock(), &keys)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn handle() -> (InputHandle, Arc<EventQueue>, Arc<EventQueue>) {
        let (t, k) = (
            Arc::new(EventQueue::new().unwrap()),
            Arc::new(EventQueue::new().unwrap()),
        );
        (
            InputHandle::new(
                Screen {
                    width: 720,
                    height: 1280,
                },
                Some(t.clone()),
                Some(k.clone()),
            ),
            t,
            k,
        )
    }

    fn drain(q: &EventQueue) -> Vec<(u16, u16, i32)> {
        q.lock()
            .events
            .drain(..)
            .map(|e| (e.type_, e.code, e.value))
            .collect()
    }

    #[test]
    fn protocol_b_down_move_second_finger_up() {
        let (h, t, _) = handle();
        h.inject_json(br#"{"touch":[{"id":0,"x":10,"y":20,"down":true}]}"#)
            .unwrap();
        assert_eq!(
            drain(&t),
            vec![
                (EV_ABS, ABS_MT_SLOT, 0),
                (EV_ABS, ABS_MT_TRACKING_ID, 0),
                (EV_ABS, ABS_MT_POSITION_X, 10),
                (EV_ABS, ABS_MT_POSITION_Y, 20),
                (EV_KEY, BTN_TOUCH, 1),
                (EV_ABS, ABS_X, 10),
                (EV_ABS, ABS_Y, 20),
                (EV_SYN, SYN_REPORT, 0),
            ]
        );
        h.inject_json(
            br#"{"touch":[{"id":0,"x":11,"y":21,"down":true},{"id":3,"x":5,"y":6,"down":true}]}"#,
        )
        .unwrap();
        assert_eq!(
            drain(&t),
            vec![
                (EV_ABS, ABS_MT_SLOT, 0),
                (EV_ABS, ABS_MT_POSITION_X, 11),
                (EV_ABS, ABS_MT_POSITION_Y, 21),
                (EV_ABS, ABS_MT_SLOT, 3),
                (EV_ABS, ABS_MT_TRACKING_ID, 1),
                (EV_ABS, ABS_MT_POSITION_X, 5),
                (EV_ABS, ABS_MT_POSITION_Y, 6),
                (EV_ABS, ABS_X, 11),
                (EV_ABS, ABS_Y, 21),
                (EV_SYN, SYN_REPORT, 0),
            ]
        );
        h.inject_json(
            br#"{"touch":[{"id":0,"x":11,"y":21,"down":false},{"id":3,"x":5,"y":6,"down":false}]}"#,
        )
        .unwrap();
        assert_eq!(
            drain(&t),
            vec![
                (EV_ABS, ABS_MT_SLOT, 0),
                (EV_ABS, ABS_MT_TRACKING_ID, -1),
                (EV_ABS, ABS_MT_SLOT, 3),
                (EV_ABS, ABS_MT_TRACKING_ID, -1),
                (EV_KEY, BTN_TOUCH, 0),
                (EV_SYN, SYN_REPORT, 0),
            ]
        );
        // Lifting a finger that is not down produces nothing.
        h.inject_json(br#"{"touch":[{"id":5,"x":1,"y":1,"down":false}]}"#)
            .unwrap();
        assert!(drain(&t).is_empty());
    }

    #[test]
    fn keys_go_to_the_keyboard() {
        let (h, t, k) = handle();
        h.inject_json(br#"{"key":"BACK","down":true}"#).unwrap();
        assert_eq!(drain(&k), vec![(EV_KEY, 158, 1), (EV_SYN, SYN_REPORT, 0)]);
        assert!(drain(&t).is_empty());
    }

    #[test]
    fn invalid_or_full_requests_inject_nothing() {
        let (h, t, k) = handle();
        assert!(h.inject_json(br#"{"touch":[{"id":0,"x":1,"y":1,"down":true},{"id":1,"x":9999,"y":1,"down":true}]}"#).is_err());
        assert!(h.inject_json(br#"{"key":"NOPE","down":true}"#).is_err());
        assert!(drain(&t).is_empty() && drain(&k).is_empty());
        // Fill the keyboard queue; the request that does not fit is refused whole.
        for _ in 0..MAX_PENDING_EVENTS / 2 {
            h.inject_json(br#"{"key":"A","down":true}"#).unwrap();
        }
        assert_eq!(
            h.inject_json(br#"{"key":"A","down":false}"#),
            Err(InputError::QueueFull)
        );
        assert_eq!(k.lock().events.len(), MAX_PENDING_EVENTS);
        // A refused touch leaves the contact state untouched.
        t.lock()
            .events
            .extend(std::iter::repeat_n(SYN, MAX_PENDING_EVENTS - 5));
        assert_eq!(
            h.inject_json(br#"{"touch":[{"id":0,"x":1,"y":1,"down":true}]}"#),
            Err(InputError::QueueFull)
        );
        assert_eq!(t.lock().events.len(), MAX_PENDING_EVENTS - 5);
        drain(&t);
        h.inject_json(br#"{"touch":[{"id":0,"x":1,"y":1,"down":true}]}"#)
            .unwrap();
        assert_eq!(drain(&t)[1], (EV_ABS, ABS_MT_TRACKING_ID, 0));
    }

    #[test]
    fn reset_forgets_contacts() {
        let (h, t, _) = handle();
        h.inject_json(br#"{"touch":[{"id":0,"x":1,"y":1,"down":true}]}"#)
            .unwrap();
        t.reset();
        h.inject_json(br#"{"touch":[{"id":0,"x":2,"y":2,"down":true}]}"#)
            .unwrap();
        let events = drain(&t);
        assert_eq!(
            events[1],
            (EV_ABS, ABS_MT_TRACKING_ID, 0),
            "a fresh contact after reset: {events:?}"
        );
    }

    #[test]
    fn missing_device_is_reported() {
        let h = InputHandle::new(
            Screen {
                width: 10,
                height: 10,
            },
            None,
            None,
        );
        assert_eq!(
            h.inject_json(br#"{"key":"HOME","down":true}"#),
            Err(InputError::NoDevice("keyboard"))
        );
        assert_eq!(
            h.inject_json(br#"{"touch":[{"id":0,"x":1,"y":1,"down":true}]}"#),
            Err(InputError::NoDevice("touchscreen"))
        );
    }
}
