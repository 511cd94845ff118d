//! The phone's screen and touch: a virtio-gpu (2D) device whose scanout lives in host shared
//! memory ([`FramebufferExport`]), and virtio-input touchscreen/keyboard devices fed through an
//! [`InputHandle`].
//!
//! Everything here is guest- or user-facing input: the GPU command parser, the input JSON parser
//! and the config-space accessors validate every field and answer with the virtio spec's error
//! responses (or an [`InputError`]) instead of panicking.

pub mod framebuffer;
pub mod gpu;
pub mod input;
mod queue;
pub mod spec;

pub use framebuffer::{
    encode_png, screenshot_png, Damage, DamageReceiver, FramebufferExport, FramebufferInfo,
    MappedFramebuffer, PixelFormat, ScreenshotError,
};
pub use gpu::{Backend2d, GpuBackend, GpuLimits, VirtioGpu};
pub use input::{
    parse_input_request, InputAction, InputDevices, InputError, InputHandle, Screen, VirtioInput,
};
pub use spec::{GpuSpec, InputSpec, SpecError};
