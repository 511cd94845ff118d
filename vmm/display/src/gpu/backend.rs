//! The seam between the virtio-gpu device (queues, wire format) and what executes commands.
//! [`Backend2d`](super::Backend2d) implements 2D in host memory; a 3D backend
//! (virglrenderer/rutabaga behind a cargo feature) would implement the same trait, offer
//! `VIRTIO_GPU_F_VIRGL`/capsets, and add its command variants to [`GpuCommand`].

use cloudphone_virtio::GuestMemory;

use super::protocol::resp;

/// A rectangle in resource pixels, as the driver sent it (unvalidated).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Rect {
    pub x: u32,
    pub y: u32,
    pub width: u32,
    pub height: u32,
}

impl Rect {
    /// Whether the rectangle lies inside a `width`×`height` area (overflow-safe).
    pub fn fits_in(&self, width: u32, height: u32) -> bool {
        self.x.checked_add(self.width).is_some_and(|r| r <= width)
            && self.y.checked_add(self.height).is_some_and(|b| b <= height)
    }

    /// Whether it covers no pixels.
    pub fn is_empty(&self) -> bool {
        self.width == 0 || self.height == 0
    }
}

/// One element of a backing scatter list: guest-physical address and length.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct BackingEntry {
    pub addr: u64,
    pub len: u32,
}

/// A decoded control- or cursor-queue command (fields still unvalidated).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GpuCommand {
    GetDisplayInfo,
    GetEdid {
        scanout_id: u32,
    },
    ResourceCreate2d {
        resource_id: u32,
        format: u32,
        width: u32,
        height: u32,
    },
    ResourceUnref {
        resource_id: u32,
    },
    SetScanout {
        scanout_id: u32,
        resource_id: u32,
        rect: Rect,
    },
    ResourceFlush {
        resource_id: u32,
        rect: Rect,
    },
    TransferToHost2d {
        resource_id: u32,
        rect: Rect,
        offset: u64,
    },
    AttachBacking {
        resource_id: u32,
        entries: Vec<BackingEntry>,
    },
    DetachBacking {
        resource_id: u32,
    },
    UpdateCursor {
        scanout_id: u32,
        x: u32,
        y: u32,
        resource_id: u32,
        hot_x: u32,
        hot_y: u32,
    },
    MoveCursor {
        scanout_id: u32,
        x: u32,
        y: u32,
    },
    /// A command type the 2D decoder does not know (3D, blob, capsets, garbage).
    Unsupported {
        cmd_type: u32,
    },
}

/// A successful command's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GpuResponse {
    NoData,
    /// Rectangles of the enabled scanouts, index = scanout id.
    DisplayInfo(Vec<Rect>),
    /// An EDID blob (at most 1024 bytes).
    Edid(Vec<u8>),
}

/// A command failed; each maps to the spec's error response type.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GpuError {
    /// ERR_INVALID_RESOURCE_ID.
    #[error("resource id {0} is not valid here")]
    InvalidResourceId(u32),
    /// ERR_INVALID_SCANOUT_ID.
    #[error("scanout id {0} does not exist (the device has one scanout, id 0)")]
    InvalidScanoutId(u32),
    /// ERR_INVALID_PARAMETER.
    #[error("invalid parameter: {0}")]
    InvalidParameter(String),
    /// ERR_OUT_OF_MEMORY.
    #[error("out of device memory: {0}")]
    OutOfMemory(String),
    /// ERR_UNSPEC.
    #[error("command failed: {0}")]
    Unspec(String),
}

impl GpuError {
    /// The response type the driver sees.
    pub fn response_type(&self) -> u32 {
        match self {
            GpuError::InvalidResourceId(_) => resp::ERR_INVALID_RESOURCE_ID,
            GpuError::InvalidScanoutId(_) => resp::ERR_INVALID_SCANOUT_ID,
            GpuError::InvalidParameter(_) => resp::ERR_INVALID_PARAMETER,
            GpuError::OutOfMemory(_) => resp::ERR_OUT_OF_MEMORY,
            GpuError::Unspec(_) => resp::ERR_UNSPEC,
        }
    }
}

/// Executes virtio-gpu commands for the device. Called from the device's worker thread, one
/// command at a time.
pub trait GpuBackend: Send {
    /// Feature bits beyond `VIRTIO_F_VERSION_1` and `VIRTIO_GPU_F_EDID` (a 3D backend adds
    /// `VIRTIO_GPU_F_VIRGL`, ...).
    fn extra_features(&self) -> u64 {
        0
    }
    /// Capability sets advertised in config space (`num_capsets`); 0 without 3D.
    fn num_capsets(&self) -> u32 {
        0
    }
    /// Run one command against guest memory `mem`.
    fn execute(&mut self, mem: &GuestMemory, cmd: GpuCommand) -> Result<GpuResponse, GpuError>;
    /// Drop every resource, the scanout binding and cursor state (device reset / reboot).
    fn reset(&mut self);
    /// What the guest built (resources, backing, scanout, cursor) for a snapshot. Backends
    /// that cannot say refuse, so a snapshot never silently drops the display.
    fn save_state(&self) -> Result<serde_json::Value, GpuError> {
        Err(GpuError::Unspec(
            "this GPU backend does not support snapshots yet".into(),
        ))
    }
    /// Rebuild [`save_state`](Self::save_state)'s state in a reset backend, against the
    /// restored guest memory `mem`.
    fn restore_state(
        &mut self,
        _mem: &GuestMemory,
        _state: &serde_json::Value,
    ) -> Result<(), GpuError> {
        Err(GpuError::Unspec(
            "this GPU backend does not support snapshots yet".into(),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rect_fits_is_overflow_safe() {
        let r = |x, y, width, height| Rect {
            x,
            y,
            width,
            height,
        };
        assert!(r(0, 0, 10, 10).fits_in(10, 10));
        assert!(!r(1, 0, 10, 10).fits_in(10, 10));
        assert!(!r(u32::MAX, 0, 2, 1).fits_in(u32::MAX, 1));
        assert!(!r(0, u32::MAX, 1, u32::MAX).fits_in(10, u32::MAX));
        assert!(r(10, 10, 0, 0).fits_in(10, 10));
    }
}
