//! The optional virtio devices of [`DeviceConfig`], created and placed on their fixed PCI slots,
//! and the host-side handles the API drives them through.

use std::path::Path;
use std::sync::Arc;

use cloudphone_balloon::{Balloon, BalloonHandle};
use cloudphone_block::Block;
use cloudphone_display::{
    framebuffer, FramebufferExport, GpuLimits, InputDevices, InputHandle, Screen, VirtioGpu,
};
use cloudphone_net::{Net, Vsock};
use cloudphone_virtio::VirtioDevice;

use crate::config::DeviceConfig;
use crate::pci::{slots, GsiRoutes, PciRoot, SlotState};

use super::{attach_virtio, GuestMemoryMmap};

/// A device named on the command line could not be created (missing file, bad TAP, ...): a
/// configuration problem (exit code 2), with the option in the message.
#[derive(Debug, thiserror::Error)]
#[error("{option}: {message}")]
pub struct DeviceSetupError {
    /// The option whose device failed, e.g. `--disk /x.img`.
    pub option: String,
    /// Why.
    pub message: String,
}

fn setup<T, E: std::fmt::Display>(
    option: impl FnOnce() -> String,
    r: Result<T, E>,
) -> Result<T, DeviceSetupError> {
    r.map_err(|e| DeviceSetupError {
        option: option(),
        message: e.to_string(),
    })
}

/// Host-side handles of the devices the API talks to; `None` where the VM has no such device.
#[derive(Clone, Default)]
pub struct DeviceHandles {
    /// The GPU's exported scanout (`GET /framebuffer`, `/framebuffer/events`, `/screenshot`).
    pub framebuffer: Option<FramebufferExport>,
    /// Touch/keyboard injection (`PUT /input`).
    pub input: Option<InputHandle>,
    /// Balloon control (`PUT/GET /balloon`).
    pub balloon: Option<BalloonHandle>,
}

/// Create every device `config` asks for and attach it at its slot (in its `saved` state on
/// a restore).
pub(super) fn attach_devices(
    pci: &mut PciRoot,
    routes: &Arc<GsiRoutes>,
    mem: &GuestMemoryMmap,
    config: &DeviceConfig,
    memory_mib: u64,
    saved: &[SlotState],
) -> anyhow::Result<DeviceHandles> {
    let mut attach =
        |slot: u8, dev: Box<dyn VirtioDevice>| attach_virtio(pci, routes, mem, slot, dev, saved);
    let mut handles = DeviceHandles::default();
    let mut screen = None;
    if let Some(spec) = config.gpu {
        let (gpu, fb) = setup(
            || "--gpu".into(),
            VirtioGpu::new_2d(
                spec,
                GpuLimits::default(),
                Path::new(framebuffer::DEFAULT_DIR),
            ),
        )?;
        attach(slots::GPU, Box::new(gpu))?;
        handles.framebuffer = Some(fb);
        screen = Some(Screen {
            width: spec.width,
            height: spec.height,
        });
    }
    if let Some(spec) = config.input {
        // Config validation demands --gpu for touch; a keyboard-only phone has no screen, and the
        // keyboard ignores the size.
        let screen = screen.unwrap_or(Screen {
            width: 0,
            height: 0,
        });
        let input = setup(|| "--input".into(), InputDevices::new(spec, screen))?;
        if let Some(touch) = input.touch {
            attach(slots::TOUCH, Box::new(touch))?;
        }
        if let Some(keyboard) = input.keyboard {
            attach(slots::KEYBOARD, Box::new(keyboard))?;
        }
        handles.input = Some(input.handle);
    }
    if let Some(spec) = &config.vsock {
        let vsock = setup(|| format!("--vsock cid={}", spec.cid), Vsock::new(spec))?;
        attach(slots::VSOCK, Box::new(vsock))?;
    }
    if config.balloon {
        let (balloon, handle) = setup(|| "--balloon".into(), Balloon::new(memory_mib))?;
        attach(slots::BALLOON, Box::new(balloon))?;
        handles.balloon = Some(handle);
    }
    if let Some(spec) = &config.net {
        let net = setup(|| format!("--net tap={}", spec.tap), Net::new(spec))?;
        attach(slots::NET, Box::new(net))?;
    }
    for (i, spec) in config.disks.iter().enumerate() {
        let block = setup(
            || format!("--disk {}", spec.path.display()),
            Block::from_spec(spec),
        )?;
        // Config validation caps the disk count so the slot stays on bus 0.
        attach(slots::FIRST_BLOCK + i as u8, Box::new(block))?;
    }
    Ok(handles)
}
