//! virtio-input: a multitouch screen and a keyboard, fed from the API through an
//! [`InputHandle`]. Build both with [`InputDevices::new`].

mod config;
mod device;
pub mod evdev;
mod handle;
mod request;

use std::sync::Arc;

pub use config::{AbsInfo, InputProfile, TOUCH_SLOTS};
pub use device::VirtioInput;
pub use handle::{InputEvent, InputHandle, MAX_PENDING_EVENTS};
pub use request::{parse_input_request, InputAction, InputError, Screen, MAX_REQUEST_BYTES};

use crate::spec::InputSpec;
use handle::EventQueue;

/// The input devices a phone gets and the handle that feeds them.
pub struct InputDevices {
    /// `virtio-touchscreen-0` (PCI 00:03.0), if `--input` includes touch.
    pub touch: Option<VirtioInput>,
    /// `virtio-keyboard-0` (PCI 00:04.0), if `--input` includes keyboard.
    pub keyboard: Option<VirtioInput>,
    /// Injects `PUT /input` requests into the devices above.
    pub handle: InputHandle,
}

impl InputDevices {
    /// Devices for `spec`; touch coordinates are pixels of `screen` (the GPU scanout size).
    pub fn new(spec: InputSpec, screen: Screen) -> std::io::Result<Self> {
        let make = |wanted: bool,
                    profile: InputProfile|
         -> std::io::Result<Option<(VirtioInput, Arc<EventQueue>)>> {
            if !wanted {
                return Ok(None);
            }
            let queue = Arc::new(EventQueue::new()?);
            Ok(Some((VirtioInput::new(profile, queue.clone()), queue)))
        };
        let touch = make(
            spec.touch,
            InputProfile::touchscreen(screen.width, screen.height),
        )?;
        let keyboard = make(spec.keyboard, InputProfile::keyboard())?;
        let handle = InputHandle::new(
            screen,
            touch.as_ref().map(|(_, q)| q.clone()),
            keyboard.as_ref().map(|(_, q)| q.clone()),
        );
        Ok(Self {
            touch: touch.map(|(d, _)| d),
            keyboard: keyboard.map(|(d, _)| d),
            handle,
        })
    }
}
