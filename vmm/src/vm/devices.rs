//! The optional virtio devices of [`DeviceConfig`], created and placed on their fixed PCI slots,
//! and the host-side handles the API drives them through.

use std::sync::Arc;

use cloudphone_balloon::{Balloon, BalloonHandle};
use cloudphone_block::{Block, DiskSpec};
use cloudphone_display::{
    FramebufferExport, GpuLimits, InputDevices, InputHandle, Screen, VirtioGpu,
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
            VirtioGpu::new_2d(spec, GpuLimits::default(), &config.framebuffer_dir),
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
        // Config validation caps the disk count so the slot stays on bus 0.
        attach(slots::FIRST_BLOCK + i as u8, Box::new(open_disk(spec)?))?;
    }
    Ok(handles)
}

/// Open (and lock) the disk `spec` names. An image another VMM holds keeps its
/// [`ImageInUse`](cloudphone_block::lock::ImageInUse) in the error chain, so the process
/// exits with its own code ([`crate::exit::EXIT_DISK_IN_USE`]); any other failure is a
/// [`DeviceSetupError`].
pub(crate) fn open_disk(spec: &DiskSpec) -> anyhow::Result<Block> {
    let option = || format!("--disk {}", spec.path.display());
    let error = match Block::from_spec(spec) {
        Ok(block) => return Ok(block),
        Err(e) => e,
    };
    match error.into_in_use() {
        Ok(in_use) => {
            Err(anyhow::Error::new(in_use)
                .context(format!("{}: disk in use by another VMM", option())))
        }
        Err(e) => Err(DeviceSetupError {
            option: option(),
            message: e.to_string(),
        }
        .into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::exit::{failure_code, EXIT_CONFIG, EXIT_DISK_IN_USE};

    #[test]
    fn a_disk_another_vmm_holds_fails_with_its_own_exit_code() {
        let dir = std::env::temp_dir().join(format!("cp-disk-in-use-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("phone.img");
        std::fs::write(&path, [0u8; 4096]).unwrap();
        let spec: DiskSpec = path.display().to_string().parse().unwrap();

        // The first "VMM" holds the image; a second open description conflicts, as a second
        // process's would (OFD locks belong to the open file, not the process).
        let first = open_disk(&spec).unwrap();
        let err = open_disk(&spec).err().expect("a second writer is refused");
        assert_eq!(failure_code(&err), EXIT_DISK_IN_USE, "{err:#}");
        let message = format!("{err:#}");
        assert!(
            message.contains("disk in use by another VMM") && message.contains("phone.img"),
            "{message}"
        );
        let ro: DiskSpec = format!("{},ro", path.display()).parse().unwrap();
        let err = open_disk(&ro)
            .err()
            .expect("a reader is refused while a writer holds it");
        assert_eq!(failure_code(&err), EXIT_DISK_IN_USE);
        drop(first);
        open_disk(&spec).unwrap();

        let overlay = format!(
            "{},overlay={}",
            path.display(),
            dir.join("o.qcow2").display()
        );
        let overlay: DiskSpec = overlay.parse().unwrap();
        let first = open_disk(&overlay).unwrap();
        let err = open_disk(&overlay)
            .err()
            .expect("a second overlay writer is refused");
        assert_eq!(failure_code(&err), EXIT_DISK_IN_USE, "{err:#}");
        drop(first);

        let missing: DiskSpec = dir
            .join("missing.img")
            .display()
            .to_string()
            .parse()
            .unwrap();
        let err = open_disk(&missing)
            .err()
            .expect("a missing image is refused");
        assert_eq!(failure_code(&err), EXIT_CONFIG, "{err:#}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
