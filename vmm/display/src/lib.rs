//! The phone's screen and touch: a virtio-gpu (2D) device whose scanout lives in host shared
//! memory ([`FramebufferExport`]), and virtio-input touchscreen/keyboard devices fed through an
//! [`InputHandle`].
//!
//! Everything here is guest- or user-facing input: the GPU command parser, the input JSON parser
//! and the config-space accessors validate every field and answer with the virtio spec's error
//! responses (or an [`InputError`]) instead of panicking.
//!
//! # Wiring in the VMM
//! ```ignore
//! let gpu_spec: GpuSpec = "width=720,height=1280,dpi=320".parse()?;      // --gpu
//! let (gpu, fb) = VirtioGpu::new_2d(gpu_spec, GpuLimits::default(),
//!                                   &ExportDir::default())?; // or the jail's shm dir
//! // gpu: Box<dyn VirtioDevice> at PCI 00:02.0
//! let screen = Screen { width: gpu_spec.width, height: gpu_spec.height };
//! let input = InputDevices::new("touch,keyboard".parse()?, screen)?;   // --input
//! // input.touch at 00:03.0, input.keyboard at 00:04.0 (each Option<VirtioInput>)
//! // API routes:
//! //   PUT /input              -> input.handle.inject_json(body), Err(e) -> e.http_status()
//! //   GET /framebuffer        -> serde_json::to_string(&fb.info())
//! //   GET /framebuffer/events -> let rx = fb.subscribe(); loop { rx.recv_timeout(..) -> JSON line }
//! //   GET /screenshot         -> screenshot_png(&fb)
//! ```

pub mod framebuffer;
pub mod gpu;
pub mod input;
pub mod spec;

pub use framebuffer::{
    encode_png, screenshot_png, screenshot_png_from_file, Damage, DamageReceiver, ExportDir,
    FramebufferExport, FramebufferInfo, MappedFramebuffer, PixelFormat, ScreenshotError,
};
pub use gpu::{Backend2d, GpuBackend, GpuLimits, VirtioGpu};
pub use input::{
    parse_input_request, InputAction, InputDevices, InputError, InputHandle, Screen, VirtioInput,
};
pub use spec::{GpuSpec, InputSpec, SpecError};
