//! virtio-gpu, 2D: see [`VirtioGpu`] (the device), [`GpuBackend`] (the command executor seam)
//! and [`Backend2d`] (the host-memory 2D implementation).

mod backend;
mod backend2d;
mod decode;
mod device;
pub mod edid;
mod protocol;
mod resource;

pub use backend::{BackingEntry, GpuBackend, GpuCommand, GpuError, GpuResponse, Rect};
pub use backend2d::{Backend2d, CursorState, GpuLimits};
pub use device::VirtioGpu;
#[cfg(test)]
mod tests;
