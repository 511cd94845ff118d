//! virtio-gpu wire format (virtio spec 1.2, 5.7.6): command/response codes and the little-endian
//! structures the driver places in the control and cursor queues.

use vm_memory::{ByteValued, Le32, Le64};

/// Device feature: GET_EDID is supported.
pub const VIRTIO_GPU_F_EDID: u32 = 1;
/// Header flag: the driver wants a fence signalled when the command completes.
pub const FLAG_FENCE: u32 = 1 << 0;
/// Header flag: `ring_idx` is valid (context-init rings, 3D only).
pub const FLAG_INFO_RING_IDX: u32 = 1 << 1;
/// Scanouts reported in GET_DISPLAY_INFO.
pub const MAX_SCANOUTS: usize = 16;
/// Bytes of EDID blob space in a GET_EDID response.
pub const EDID_BLOB_SIZE: usize = 1024;

/// Control and cursor command types.
pub mod cmd {
    pub const GET_DISPLAY_INFO: u32 = 0x100;
    pub const RESOURCE_CREATE_2D: u32 = 0x101;
    pub const RESOURCE_UNREF: u32 = 0x102;
    pub const SET_SCANOUT: u32 = 0x103;
    pub const RESOURCE_FLUSH: u32 = 0x104;
    pub const TRANSFER_TO_HOST_2D: u32 = 0x105;
    pub const RESOURCE_ATTACH_BACKING: u32 = 0x106;
    pub const RESOURCE_DETACH_BACKING: u32 = 0x107;
    pub const GET_EDID: u32 = 0x10a;
    pub const UPDATE_CURSOR: u32 = 0x300;
    pub const MOVE_CURSOR: u32 = 0x301;
}

/// Response types.
pub mod resp {
    pub const OK_NODATA: u32 = 0x1100;
    pub const OK_DISPLAY_INFO: u32 = 0x1101;
    pub const OK_EDID: u32 = 0x1104;
    pub const ERR_UNSPEC: u32 = 0x1200;
    pub const ERR_OUT_OF_MEMORY: u32 = 0x1201;
    pub const ERR_INVALID_SCANOUT_ID: u32 = 0x1202;
    pub const ERR_INVALID_RESOURCE_ID: u32 = 0x1203;
    pub const ERR_INVALID_PARAMETER: u32 = 0x1205;
}

/// `struct virtio_gpu_ctrl_hdr`, at the start of every command and response.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct CtrlHeader {
    pub type_: Le32,
    pub flags: Le32,
    pub fence_id: Le64,
    pub ctx_id: Le32,
    pub ring_idx: u8,
    pub padding: [u8; 3],
}

/// `struct virtio_gpu_rect`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct WireRect {
    pub x: Le32,
    pub y: Le32,
    pub width: Le32,
    pub height: Le32,
}

/// `struct virtio_gpu_display_one`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct DisplayOne {
    pub rect: WireRect,
    pub enabled: Le32,
    pub flags: Le32,
}

/// `struct virtio_gpu_resp_display_info` without its header.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct DisplayInfoBody {
    pub pmodes: [DisplayOne; MAX_SCANOUTS],
}

/// `struct virtio_gpu_get_edid` without its header.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct GetEdid {
    pub scanout: Le32,
    pub padding: Le32,
}

/// `struct virtio_gpu_resp_edid` without its header.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct EdidBody {
    pub size: Le32,
    pub padding: Le32,
    pub edid: [u8; EDID_BLOB_SIZE],
}

/// `struct virtio_gpu_resource_create_2d` without its header.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct ResourceCreate2d {
    pub resource_id: Le32,
    pub format: Le32,
    pub width: Le32,
    pub height: Le32,
}

/// `struct virtio_gpu_resource_unref` / `detach_backing` without the header.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct ResourceOnly {
    pub resource_id: Le32,
    pub padding: Le32,
}

/// `struct virtio_gpu_set_scanout` without its header.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct SetScanout {
    pub rect: WireRect,
    pub scanout_id: Le32,
    pub resource_id: Le32,
}

/// `struct virtio_gpu_resource_flush` without its header.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct ResourceFlush {
    pub rect: WireRect,
    pub resource_id: Le32,
    pub padding: Le32,
}

/// `struct virtio_gpu_transfer_to_host_2d` without its header.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct TransferToHost2d {
    pub rect: WireRect,
    pub offset: Le64,
    pub resource_id: Le32,
    pub padding: Le32,
}

/// `struct virtio_gpu_resource_attach_backing` without its header.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct AttachBacking {
    pub resource_id: Le32,
    pub nr_entries: Le32,
}

/// `struct virtio_gpu_mem_entry`, one element of a backing scatter list.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct MemEntry {
    pub addr: Le64,
    pub length: Le32,
    pub padding: Le32,
}

/// `struct virtio_gpu_cursor_pos`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct CursorPosWire {
    pub scanout_id: Le32,
    pub x: Le32,
    pub y: Le32,
    pub padding: Le32,
}

/// `struct virtio_gpu_update_cursor` without its header.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct UpdateCursor {
    pub pos: CursorPosWire,
    pub resource_id: Le32,
    pub hot_x: Le32,
    pub hot_y: Le32,
    pub padding: Le32,
}

/// `struct virtio_gpu_config`, the device config space.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct GpuConfig {
    pub events_read: Le32,
    pub events_clear: Le32,
    pub num_scanouts: Le32,
    pub num_capsets: Le32,
}

// SAFETY: all of these are repr(C) structs of little-endian integers and byte arrays with no
// implicit padding (each field list is laid out to natural alignment), so any byte pattern is a
// valid value.
unsafe impl ByteValued for CtrlHeader {}
unsafe impl ByteValued for WireRect {}
unsafe impl ByteValued for DisplayOne {}
unsafe impl ByteValued for DisplayInfoBody {}
unsafe impl ByteValued for GetEdid {}
unsafe impl ByteValued for EdidBody {}
unsafe impl ByteValued for ResourceCreate2d {}
unsafe impl ByteValued for ResourceOnly {}
unsafe impl ByteValued for SetScanout {}
unsafe impl ByteValued for ResourceFlush {}
unsafe impl ByteValued for TransferToHost2d {}
unsafe impl ByteValued for AttachBacking {}
unsafe impl ByteValued for MemEntry {}
unsafe impl ByteValued for CursorPosWire {}
unsafe impl ByteValued for UpdateCursor {}
unsafe impl ByteValued for GpuConfig {}

#[cfg(test)]
mod tests {
    use super::*;
    use std::mem::size_of;

    #[test]
    fn wire_sizes_match_the_spec() {
        assert_eq!(size_of::<CtrlHeader>(), 24);
        assert_eq!(size_of::<WireRect>(), 16);
        assert_eq!(size_of::<DisplayInfoBody>(), 16 * 24);
        assert_eq!(size_of::<EdidBody>(), 8 + 1024);
        assert_eq!(size_of::<ResourceCreate2d>(), 16);
        assert_eq!(size_of::<SetScanout>(), 24);
        assert_eq!(size_of::<ResourceFlush>(), 24);
        assert_eq!(size_of::<TransferToHost2d>(), 32);
        assert_eq!(size_of::<AttachBacking>(), 8);
        assert_eq!(size_of::<MemEntry>(), 16);
        assert_eq!(size_of::<UpdateCursor>(), 32);
        assert_eq!(size_of::<GpuConfig>(), 16);
    }
}
