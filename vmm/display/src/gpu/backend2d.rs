//! 2D virtio-gpu in host memory: resources, backing, transfers, one scanout exported through
//! [`FramebufferExport`], and a hardware cursor whose state is kept (not composited).
//!
//! The scanned-out resource's pixels live in the export's shared memory, so TRANSFER_TO_HOST_2D
//! to it writes straight into what consumers map; switching the scanout to another resource
//! moves pixels once (a page flip), never per frame.

use std::collections::HashMap;

use serde::Deserialize;

use cloudphone_virtio::GuestMemory;
use vm_memory::VolatileSlice;

use super::backend::{BackingEntry, GpuBackend, GpuCommand, GpuError, GpuResponse, Rect};
use super::edid;
use super::resource::{Backing, Resource, Storage};
use crate::framebuffer::{FramebufferExport, Geometry, PixelFormat};
use crate::spec::GpuSpec;

/// Limits on what a guest may make the host allocate. The guest is not trusted: without them a
/// driver could ask for a 4 GiB resource or a billion backing entries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GpuLimits {
    /// Largest resource width or height (Linux's virtio_gpu uses at most 8192).
    pub max_resource_edge: u32,
    /// Host bytes all resources and their scatter lists may use together.
    pub max_host_memory: u64,
    /// Most entries in one ATTACH_BACKING (64 MiB of scattered 4 KiB pages).
    pub max_backing_entries: u32,
    /// Most live resources.
    pub max_resources: usize,
}

impl Default for GpuLimits {
    fn default() -> Self {
        Self {
            max_resource_edge: 8192,
            max_host_memory: 256 << 20,
            max_backing_entries: 16384,
            max_resources: 1024,
        }
    }
}

/// Largest cursor image kept (virtio cursors are 64×64).
const MAX_CURSOR_EDGE: u32 = 64;
/// Host bytes charged per backing entry (entry + offset table).
const BACKING_ENTRY_COST: u64 = 24;

/// The guest's hardware cursor as last set on the cursor queue.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CursorState {
    /// Resource whose image is the cursor; 0 = hidden.
    pub resource_id: u32,
    pub x: u32,
    pub y: u32,
    pub hot_x: u32,
    pub hot_y: u32,
    /// Cursor image copied at UPDATE_CURSOR time (`width * height * 4` bytes, resource format).
    pub image: Vec<u8>,
    pub width: u32,
    pub height: u32,
}

/// One resource in a snapshot: what CREATE_2D and ATTACH_BACKING said. Its pixels are not
/// saved: they are copied from the guest backing again on restore (see [`Gpu2dState`]).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ResourceState {
    /// Resource id.
    pub id: u32,
    /// `virtio_gpu_formats` code.
    pub format: u32,
    /// Width in pixels.
    pub width: u32,
    /// Height in pixels.
    pub height: u32,
    /// The guest pages backing it, if attached.
    pub backing: Option<Vec<BackingEntry>>,
}

/// The 2D backend's snapshot state. Host-side pixel copies are not saved: a restore replays
/// the guest's commands (create, attach backing, a full transfer from the backing, set
/// scanout, flush, update cursor), so each resource shows what its guest backing holds at
/// snapshot time. That equals the saved pixels for the usual driver pattern (draw into the
/// backing, transfer, flush); content drawn into the backing but not yet transferred appears
/// early, which the next transfer would have shown anyway. The cursor image is taken from
/// its resource again the same way.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Gpu2dState {
    /// Every live resource, by id.
    pub resources: Vec<ResourceState>,
    /// The resource on scanout 0.
    pub scanout: Option<u32>,
    /// Cursor resource (0 hidden), position and hotspot.
    pub cursor: [u32; 5],
}

/// The 2D backend: see the module docs.
pub struct Backend2d {
    spec: GpuSpec,
    limits: GpuLimits,
    export: FramebufferExport,
    resources: HashMap<u32, Resource>,
    host_bytes: u64,
    scanout: Option<u32>,
    cursor: CursorState,
}

impl Backend2d {
    /// A backend for one `spec.width`×`spec.height` scanout exported through `export` (which
    /// must hold at least one frame of that size).
    pub fn new(spec: GpuSpec, limits: GpuLimits, export: FramebufferExport) -> Self {
        Self {
            spec,
            limits,
            export,
            resources: HashMap::new(),
            host_bytes: 0,
            scanout: None,
            cursor: CursorState::default(),
        }
    }

    /// The cursor as the guest last set it.
    pub fn cursor(&self) -> &CursorState {
        &self.cursor
    }

    /// Host bytes charged for resources and scatter lists (checked by the fuzz test).
    #[cfg(test)]
    pub(crate) fn host_bytes(&self) -> u64 {
        self.host_bytes
    }

    fn resource(&mut self, id: u32) -> Result<&mut Resource, GpuError> {
        self.resources
            .get_mut(&id)
            .ok_or(GpuError::InvalidResourceId(id))
    }

    fn create(&mut self, id: u32, format: u32, width: u32, height: u32) -> Result<(), GpuError> {
        if id == 0 || self.resources.contains_key(&id) {
            return Err(GpuError::InvalidResourceId(id));
        }
        let format = PixelFormat::from_virtio(format).ok_or_else(|| {
            GpuError::InvalidParameter(format!("unsupported pixel format {format}"))
        })?;
        let edge = 1..=self.limits.max_resource_edge;
        if !edge.contains(&width) || !edge.contains(&height) {
            return Err(GpuError::InvalidParameter(format!(
                "resource size {width}x{height} outside 1..={} per edge",
                self.limits.max_resource_edge
            )));
        }
        let bytes = u64::from(width) * u64::from(height) * u64::from(PixelFormat::BYTES_PER_PIXEL);
        self.charge(bytes)?;
        if self.resources.len() >= self.limits.max_resources {
            self.host_bytes -= bytes;
            return Err(GpuError::OutOfMemory(format!(
                "already {} resources",
                self.resources.len()
            )));
        }
        let storage = Storage::Host(vec![0u8; bytes as usize]);
        self.resources.insert(
            id,
            Resource {
                format,
                width,
                height,
                backing: None,
                storage,
            },
        );
        Ok(())
    }

    /// Account `bytes` more host memory, refusing past the limit.
    fn charge(&mut self, bytes: u64) -> Result<(), GpuError> {
        let total = self.host_bytes.saturating_add(bytes);
        if total > self.limits.max_host_memory {
            return Err(GpuError::OutOfMemory(format!(
                "{bytes} more bytes would exceed the device's {} byte limit",
                self.limits.max_host_memory
            )));
        }
        self.host_bytes = total;
        Ok(())
    }

    fn unref(&mut self, id: u32) -> Result<(), GpuError> {
        let res = self
            .resources
            .remove(&id)
            .ok_or(GpuError::InvalidResourceId(id))?;
        if self.scanout == Some(id) {
            self.scanout = None;
        }
        if self.cursor.resource_id == id {
            self.cursor.resource_id = 0;
        }
        self.host_bytes -= res.bytes() + backing_cost(res.backing.as_ref());
        Ok(())
    }

    fn attach(
        &mut self,
        mem: &GuestMemory,
        id: u32,
        entries: Vec<BackingEntry>,
    ) -> Result<(), GpuError> {
        if self.resource(id)?.backing.is_some() {
            return Err(GpuError::Unspec(format!(
                "resource {id} already has backing"
            )));
        }
        let backing = Backing::new(mem, entries)?;
        self.charge(backing_cost(Some(&backing)))?;
        self.resource(id)?.backing = Some(backing);
        Ok(())
    }

    fn detach(&mut self, id: u32) -> Result<(), GpuError> {
        let backing =
            self.resource(id)?.backing.take().ok_or_else(|| {
                GpuError::Unspec(format!("resource {id} has no backing to detach"))
            })?;
        self.host_bytes -= backing_cost(Some(&backing));
        Ok(())
    }

    fn transfer(
        &mut self,
        mem: &GuestMemory,
        id: u32,
        rect: Rect,
        offset: u64,
    ) -> Result<(), GpuError> {
        let export = self.export.clone();
        let res = self.resource(id)?;
        if !rect.fits_in(res.width, res.height) {
            return Err(GpuError::InvalidParameter(format!(
                "transfer rect {rect:?} outside resource {id} ({}x{})",
                res.width, res.height
            )));
        }
        if rect.is_empty() {
            return Ok(());
        }
        let backing = res.backing.as_ref().ok_or_else(|| {
            GpuError::Unspec(format!("transfer to resource {id} without backing"))
        })?;
        let stride = u64::from(res.stride());
        let row_bytes = u64::from(rect.width) * u64::from(PixelFormat::BYTES_PER_PIXEL);
        // Last byte read: offset + (height-1)*stride + row_bytes. All terms are < 2^45 except
        // `offset`, hence checked.
        let end = offset
            .checked_add(u64::from(rect.height - 1) * stride + row_bytes)
            .filter(|&end| end <= backing.len())
            .ok_or_else(|| {
                GpuError::InvalidParameter(format!(
                    "transfer at offset {offset} of {rect:?} needs more than the {} bytes of backing",
                    backing.len()
                ))
            })?;
        let full_rows = rect.x == 0 && rect.width == res.width;
        let dst_start = u64::from(rect.y) * stride
            + u64::from(rect.x) * u64::from(PixelFormat::BYTES_PER_PIXEL);
        // (destination offset, source offset, length) per copy: one for whole rows, else per row.
        let copies: Box<dyn Iterator<Item = (u64, u64, u64)>> = if full_rows {
            Box::new(std::iter::once((dst_start, offset, end - offset)))
        } else {
            Box::new(
                (0..u64::from(rect.height))
                    .map(move |row| (dst_start + row * stride, offset + row * stride, row_bytes)),
            )
        };
        match &mut res.storage {
            Storage::Host(pixels) => {
                let dst = VolatileSlice::from(&mut pixels[..]);
                for (d, s, n) in copies {
                    let out = dst
                        .subslice(d as usize, n as usize)
                        .map_err(|e| GpuError::Unspec(e.to_string()))?;
                    backing.copy_to(mem, s, &out)?;
                }
            }
            Storage::Scanout => {
                for (d, s, n) in copies {
                    let out = export.pixels(d as usize, n as usize).ok_or_else(|| {
                        GpuError::Unspec("scanout resource larger than the export".into())
                    })?;
                    backing.copy_to(mem, s, &out)?;
                }
            }
        }
        Ok(())
    }

    fn set_scanout(&mut self, scanout_id: u32, id: u32, rect: Rect) -> Result<(), GpuError> {
        if scanout_id != 0 {
            return Err(GpuError::InvalidScanoutId(scanout_id));
        }
        if id == 0 {
            self.retire_scanout()?;
            return Ok(());
        }
        let capacity = self.export.capacity() as u64;
        let display = (self.spec.width, self.spec.height);
        let res = self.resource(id)?;
        if !rect.fits_in(res.width, res.height) || rect.is_empty() {
            return Err(GpuError::InvalidParameter(format!(
                "scanout rect {rect:?} outside resource {id} ({}x{})",
                res.width, res.height
            )));
        }
        if res.bytes() > capacity {
            return Err(GpuError::InvalidParameter(format!(
                "resource {id} ({}x{}) is larger than the {}x{} display",
                res.width, res.height, display.0, display.1
            )));
        }
        if self.scanout == Some(id) {
            return Ok(());
        }
        self.retire_scanout()?;
        let export = self.export.clone();
        let res = self.resource(id)?;
        let Storage::Host(pixels) = std::mem::replace(&mut res.storage, Storage::Scanout) else {
            return Err(GpuError::Unspec(format!(
                "resource {id} already on the scanout"
            )));
        };
        let dst = export
            .pixels(0, pixels.len())
            .ok_or_else(|| GpuError::Unspec("export too small".into()))?;
        dst.copy_from(&pixels[..]);
        export.set_geometry(Geometry {
            width: res.width,
            height: res.height,
            format: res.format,
        });
        self.scanout = Some(id);
        Ok(())
    }

    /// Take the current scanout resource off the display, moving its pixels back to host memory.
    fn retire_scanout(&mut self) -> Result<(), GpuError> {
        let Some(id) = self.scanout.take() else {
            return Ok(());
        };
        let export = self.export.clone();
        let res = self.resource(id)?;
        let mut pixels = vec![0u8; res.bytes() as usize];
        if let Some(src) = export.pixels(0, pixels.len()) {
            src.copy_to(&mut pixels[..]);
        }
        res.storage = Storage::Host(pixels);
        Ok(())
    }

    fn flush(&mut self, id: u32, rect: Rect) -> Result<(), GpuError> {
        let res = self.resource(id)?;
        if !rect.fits_in(res.width, res.height) {
            return Err(GpuError::InvalidParameter(format!(
                "flush rect {rect:?} outside resource {id} ({}x{})",
                res.width, res.height
            )));
        }
        if self.scanout == Some(id) && !rect.is_empty() {
            self.export.publish(rect.x, rect.y, rect.width, rect.height);
        }
        Ok(())
    }

    fn update_cursor(
        &mut self,
        scanout_id: u32,
        x: u32,
        y: u32,
        id: u32,
        hot: (u32, u32),
    ) -> Result<(), GpuError> {
        if scanout_id != 0 {
            return Err(GpuError::InvalidScanoutId(scanout_id));
        }
        // Validate and copy the image first so a rejected update changes nothing.
        let (image, width, height) = if id == 0 {
            (Vec::new(), 0, 0)
        } else {
            self.cursor_image(id)?
        };
        self.cursor = CursorState {
            resource_id: id,
            x,
            y,
            hot_x: hot.0,
            hot_y: hot.1,
            image,
            width,
            height,
        };
        Ok(())
    }

    /// A copy of cursor resource `id`'s pixels with its size.
    fn cursor_image(&mut self, id: u32) -> Result<(Vec<u8>, u32, u32), GpuError> {
        let export = self.export.clone();
        let res = self.resource(id)?;
        if res.width > MAX_CURSOR_EDGE || res.height > MAX_CURSOR_EDGE {
            return Err(GpuError::InvalidParameter(format!(
                "cursor resource {id} is {}x{}, larger than {MAX_CURSOR_EDGE}x{MAX_CURSOR_EDGE}",
                res.width, res.height
            )));
        }
        let mut image = vec![0u8; res.bytes() as usize];
        match &res.storage {
            Storage::Host(pixels) => image.copy_from_slice(pixels),
            Storage::Scanout => {
                if let Some(src) = export.pixels(0, image.len()) {
                    src.copy_to(&mut image[..]);
                }
            }
        }
        Ok((image, res.width, res.height))
    }

    fn move_cursor(&mut self, scanout_id: u32, x: u32, y: u32) -> Result<(), GpuError> {
        if scanout_id != 0 {
            return Err(GpuError::InvalidScanoutId(scanout_id));
        }
        self.cursor.x = x;
        self.cursor.y = y;
        Ok(())
    }
}

fn backing_cost(backing: Option<&Backing>) -> u64 {
    backing.map_or(0, |b| b.entry_count() as u64 * BACKING_ENTRY_COST)
}

impl GpuBackend for Backend2d {
    fn execute(&mut self, mem: &GuestMemory, cmd: GpuCommand) -> Result<GpuResponse, GpuError> {
        match cmd {
            GpuCommand::GetDisplayInfo => {
                let rect = Rect {
                    x: 0,
                    y: 0,
                    width: self.spec.width,
                    height: self.spec.height,
                };
                return Ok(GpuResponse::DisplayInfo(vec![rect]));
            }
            GpuCommand::GetEdid { scanout_id } => {
                if scanout_id != 0 {
                    return Err(GpuError::InvalidScanoutId(scanout_id));
                }
                return Ok(GpuResponse::Edid(edid::build(&self.spec).to_vec()));
            }
            GpuCommand::ResourceCreate2d {
                resource_id,
                format,
                width,
                height,
            } => self.create(resource_id, format, width, height),
            GpuCommand::ResourceUnref { resource_id } => self.unref(resource_id),
            GpuCommand::SetScanout {
                scanout_id,
                resource_id,
                rect,
            } => self.set_scanout(scanout_id, resource_id, rect),
            GpuCommand::ResourceFlush { resource_id, rect } => self.flush(resource_id, rect),
            GpuCommand::TransferToHost2d {
                resource_id,
                rect,
                offset,
            } => self.transfer(mem, resource_id, rect, offset),
            GpuCommand::AttachBacking {
                resource_id,
                entries,
            } => self.attach(mem, resource_id, entries),
            GpuCommand::DetachBacking { resource_id } => self.detach(resource_id),
            GpuCommand::UpdateCursor {
                scanout_id,
                x,
                y,
                resource_id,
                hot_x,
                hot_y,
            } => self.update_cursor(scanout_id, x, y, resource_id, (hot_x, hot_y)),
            GpuCommand::MoveCursor { scanout_id, x, y } => self.move_cursor(scanout_id, x, y),
            GpuCommand::Unsupported { cmd_type } => Err(GpuError::Unspec(format!(
                "command {cmd_type:#x} is not supported by the 2D device"
            ))),
        }
        .map(|()| GpuResponse::NoData)
    }

    fn reset(&mut self) {
        self.resources.clear();
        self.host_bytes = 0;
        self.scanout = None;
        self.cursor = CursorState::default();
    }

    fn save_state(&self) -> Result<serde_json::Value, GpuError> {
        let mut resources: Vec<ResourceState> = self
            .resources
            .iter()
            .map(|(&id, r)| ResourceState {
                id,
                format: r.format.virtio_code(),
                width: r.width,
                height: r.height,
                backing: r.backing.as_ref().map(|b| b.entries().to_vec()),
            })
            .collect();
        resources.sort_by_key(|r| r.id);
        let c = &self.cursor;
        let state = Gpu2dState {
            resources,
            scanout: self.scanout,
            cursor: [c.resource_id, c.x, c.y, c.hot_x, c.hot_y],
        };
        serde_json::to_value(state).map_err(|e| GpuError::Unspec(e.to_string()))
    }

    /// Replays the guest's commands (see [`Gpu2dState`]), so a state the guest could not
    /// have produced is refused by the same checks as its commands.
    fn restore_state(
        &mut self,
        mem: &GuestMemory,
        state: &serde_json::Value,
    ) -> Result<(), GpuError> {
        let state = Gpu2dState::deserialize(state)
            .map_err(|e| GpuError::InvalidParameter(format!("GPU snapshot state: {e}")))?;
        self.reset();
        for r in &state.resources {
            self.create(r.id, r.format, r.width, r.height)?;
            if let Some(entries) = &r.backing {
                self.attach(mem, r.id, entries.clone())?;
                self.refill(mem, r.id)?;
            }
        }
        if let Some(id) = state.scanout {
            let res = self.resource(id)?;
            let full = Rect {
                x: 0,
                y: 0,
                width: res.width,
                height: res.height,
            };
            self.set_scanout(0, id, full)?;
            self.flush(id, full)?;
        }
        let [id, x, y, hot_x, hot_y] = state.cursor;
        self.update_cursor(0, x, y, id, (hot_x, hot_y))
    }
}

impl Backend2d {
    /// Copy resource `id`'s pixels from its backing again: every whole row the backing holds.
    fn refill(&mut self, mem: &GuestMemory, id: u32) -> Result<(), GpuError> {
        let res = self.resource(id)?;
        let backing = res.backing.as_ref().map_or(0, Backing::len);
        let rows = (backing / u64::from(res.stride())).min(u64::from(res.height)) as u32;
        let rect = Rect {
            x: 0,
            y: 0,
            width: res.width,
            height: rows,
        };
        self.transfer(mem, id, rect, 0)
    }
}
