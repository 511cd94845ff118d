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
pub use backend2d::{Backend2d, CursorState, Gpu2dState, GpuLimits, ResourceState};
pub use device::{GpuState, VirtioGpu};
#[cfg(test)]
mod tests;
