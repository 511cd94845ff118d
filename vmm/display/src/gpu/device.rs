//! The virtio-gpu device (type 16): config space, feature negotiation and a worker thread that
//! feeds the control and cursor queues to a [`GpuBackend`].

use std::path::Path;
use std::sync::{Arc, Mutex};

use cloudphone_virtio::{
    read_config_bytes, ActivateError, Activation, DeviceQueue, GuestMemory, VirtioCommon,
    VirtioDevice, VirtioInterrupt, WorkerContext, WorkerHandler,
};
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
}

impl VirtioGpu {
    /// A 2D GPU for `spec` whose scanout is exported as a shared-memory file in `export_dir`
    /// (normally [`crate::framebuffer::DEFAULT_DIR`]). Returns the device and the export handle
    /// the VMM's API serves (`GET /framebuffer`, events, screenshots).
    pub fn new_2d(
        spec: GpuSpec,
        limits: GpuLimits,
        export_dir: &Path,
    ) -> std::io::Result<(Self, FramebufferExport)> {
        let export = FramebufferExport::create(export_dir, spec.width, spec.height)?;
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
            tracing::warn!(
                offset,
                len = data.len(),
                "virtio-gpu: write to read-only config ignored"
            );
        }
    }

    fn worker_name(&self) -> &str {
        "virtio-gpu"
    }

    /// Refused until this device's own state is captured (a restore would lose it).
    fn save_state(
        &self,
    ) -> Result<cloudphone_virtio::DeviceStateBlob, cloudphone_virtio::StateError> {
        Err(cloudphone_virtio::StateError::unsupported(self))
    }

    fn worker(&mut self, a: Activation) -> Result<Box<dyn WorkerHandler>, ActivateError> {
        let queues: [DeviceQueue; 2] = Activation::queue_array(a.queues)?;
        Ok(Box::new(GpuWorker {
            mem: a.mem,
            queues: queues.into(),
            backend: self.backend.clone(),
            interrupt: a.interrupt,
            max_entries: self.limits.max_backing_entries,
        }))
    }

    fn reset(&mut self) {
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
