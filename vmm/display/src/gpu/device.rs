//! The virtio-gpu device (type 16): config space, feature negotiation and a worker thread that
//! feeds the control and cursor queues to a [`GpuBackend`].

use std::sync::{Arc, Mutex};

use cloudphone_virtio::{
    device_part, read_config_bytes, to_device_part, ActivateError, Activation, DeviceQueue,
    DeviceStateBlob, GuestMemory, StateError, VirtioCommon, VirtioDevice, VirtioInterrupt,
    WorkerContext, WorkerHandler,
};
use serde::{Deserialize, Serialize};
use vm_memory::ByteValued;
use vmm_sys_util::epoll::EventSet;

use super::backend::GpuBackend;
use super::backend2d::{Backend2d, GpuLimits};
use super::decode::process_chain;
use super::protocol::{GpuConfig, VIRTIO_GPU_F_EDID};
use crate::framebuffer::FramebufferExport;
use crate::spec::GpuSpec;

/// virtio device id of a GPU.
const DEVICE_TYPE_GPU: u32 = 16;
const VIRTIO_F_VERSION_1: u64 = 1 << 32;
const VIRTIO_RING_F_INDIRECT_DESC: u64 = 1 << 28;
/// Control queue (0) and cursor queue (1) sizes.
const QUEUE_SIZES: [u16; 2] = [256, 16];
/// Offset of `events_clear` in the config space.
const EVENTS_CLEAR_OFFSET: u64 = 4;

type SharedBackend = Arc<Mutex<Box<dyn GpuBackend>>>;

/// A virtio-gpu device with one scanout.
pub struct VirtioGpu {
    backend: SharedBackend,
    limits: GpuLimits,
    events_read: u32,
    common: VirtioCommon,
    /// Backend state from a restore, rebuilt at the next activation (it needs guest memory).
    restored: Option<serde_json::Value>,
}

/// The GPU's own snapshot state: pending config events and the backend's state (for the 2D
/// backend a [`Gpu2dState`](super::backend2d::Gpu2dState)).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct GpuState {
    /// `events_read` in config space.
    pub events_read: u32,
    /// What the backend saved.
    pub backend: serde_json::Value,
}

impl VirtioGpu {
    /// A 2D GPU for `spec` whose scanout is exported as a shared-memory file in `export_dir`
    /// (normally [`crate::framebuffer::ExportDir::default`]). Returns the device and the export handle
    /// the VMM's API serves (`GET /framebuffer`, events, screenshots).
    pub fn new_2d(
        spec: GpuSpec,
        limits: GpuLimits,
        export_dir: &crate::framebuffer::ExportDir,
    ) -> std::io::Result<(Self, FramebufferExport)> {
        let export = FramebufferExport::create_in(export_dir, spec.width, spec.height)?;
        let backend = Backend2d::new(spec, limits, export.clone());
        Ok((Self::with_backend(Box::new(backend), limits), export))
    }

    /// A device driving any backend (the seam for 3D).
    pub fn with_backend(backend: Box<dyn GpuBackend>, limits: GpuLimits) -> Self {
        let features = VIRTIO_F_VERSION_1
            | VIRTIO_RING_F_INDIRECT_DESC
            | 1 << VIRTIO_GPU_F_EDID
            | backend.extra_features();
        Self {
            backend: Arc::new(Mutex::new(backend)),
            limits,
            events_read: 0,
            common: VirtioCommon::new(DEVICE_TYPE_GPU, &QUEUE_SIZES, features),
            restored: None,
        }
    }

    fn config(&self) -> GpuConfig {
        let backend = self.backend.lock().unwrap_or_else(|p| p.into_inner());
        GpuConfig {
            events_read: self.events_read.into(),
            events_clear: 0.into(),
            num_scanouts: 1.into(),
            num_capsets: backend.num_capsets().into(),
        }
    }
}

impl VirtioDevice for VirtioGpu {
    cloudphone_virtio::virtio_common!(common);

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(self.config().as_slice(), offset, data);
    }

    fn write_config(&mut self, offset: u64, data: &[u8]) {
        if offset == EVENTS_CLEAR_OFFSET && data.len() == 4 {
            let clear = u32::from_le_bytes([data[0], data[1], data[2], data[3]]);
            self.events_read &= !clear;
        } else {
            cloudphone_virtio::guest_warn!(
                offset,
                len = data.len(),
                "virtio-gpu: write to read-only config ignored"
            );
        }
    }

    fn worker_name(&self) -> &str {
        "virtio-gpu"
    }

    /// Refused (`Unsupported`) when the backend cannot save its state.
    fn save_state(&self) -> Result<DeviceStateBlob, StateError> {
        let backend = self
            .backend
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .save_state()
            .map_err(|e| {
                tracing::warn!(error = %e, "virtio-gpu backend cannot be snapshotted");
                StateError::unsupported(self)
            })?;
        let state = GpuState {
            events_read: self.events_read,
            backend,
        };
        let part = to_device_part(DEVICE_TYPE_GPU, &state)?;
        Ok(self.common.save_blob(part))
    }

    /// The backend's part is rebuilt at activation, where guest memory is known; a state it
    /// refuses then fails the activation (and the restore) with the reason.
    fn restore_state(&mut self, blob: &DeviceStateBlob) -> Result<(), StateError> {
        let part = self.common.restore_blob(blob)?;
        let state: GpuState = device_part(DEVICE_TYPE_GPU, part)?;
        self.events_read = state.events_read;
        self.restored = Some(state.backend);
        Ok(())
    }

    fn worker(&mut self, a: Activation) -> Result<Box<dyn WorkerHandler>, ActivateError> {
        let queues: [DeviceQueue; 2] = Activation::queue_array(a.queues)?;
        if let Some(state) = self.restored.take() {
            self.backend
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .restore_state(&a.mem, &state)
                .map_err(|e| ActivateError::Backend(format!("restoring the GPU state: {e}")))?;
        }
        Ok(Box::new(GpuWorker {
            mem: a.mem,
            queues: queues.into(),
            backend: self.backend.clone(),
            interrupt: a.interrupt,
            max_entries: self.limits.max_backing_entries,
        }))
    }

    fn reset(&mut self) {
        self.restored = None;
        self.common.reset();
        self.backend
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .reset();
        self.events_read = 0;
    }
}

struct GpuWorker {
    mem: GuestMemory,
    queues: Vec<DeviceQueue>,
    backend: SharedBackend,
    interrupt: Arc<dyn VirtioInterrupt>,
    max_entries: u32,
}

impl WorkerHandler for GpuWorker {
    fn init(&mut self, ctx: &WorkerContext) -> std::io::Result<()> {
        for (token, q) in self.queues.iter().enumerate() {
            q.watch(ctx, token as u64)?;
        }
        Ok(())
    }

    fn handle(
        &mut self,
        _ctx: &WorkerContext,
        token: u64,
        _events: EventSet,
    ) -> Result<(), String> {
        let q = self
            .queues
            .get_mut(token as usize)
            .ok_or_else(|| format!("virtio-gpu: unknown worker token {token}"))?;
        q.ack_notify();
        let mut backend = self.backend.lock().unwrap_or_else(|p| p.into_inner());
        while let Some(chain) = q.pop(&self.mem)? {
            let written = process_chain(backend.as_mut(), &self.mem, &chain, self.max_entries);
            q.add_used(&self.mem, chain.head(), written)?;
        }
        q.signal_used(&self.mem, self.interrupt.as_ref())?;
        Ok(())
    }
}
