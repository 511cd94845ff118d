//! The fbdev fallback: map /dev/fb0 and write pixels; the kernel's deferred I/O flushes them
//! to the device (virtio_gpu's fbdev emulation), so there is no explicit damage call.

use std::fs::File;
use std::os::fd::AsRawFd;

use anyhow::{bail, Context};

use super::mapping::Mapping;
use super::{copy_rects, Display};
use crate::canvas::{Canvas, Rect};

const FBIOGET_VSCREENINFO: u64 = 0x4600;
const FBIOGET_FSCREENINFO: u64 = 0x4602;
const FBIOBLANK: u64 = 0x4611;
const FB_BLANK_UNBLANK: libc::c_ulong = 0;
const FB_BLANK_POWERDOWN: libc::c_ulong = 4;

/// `struct fb_var_screeninfo`: 40 u32 fields; we read resolution and depth.
#[repr(C)]
struct VarInfo {
    xres: u32,
    yres: u32,
    rest: [u32; 38],
}

/// `struct fb_fix_screeninfo` on 64-bit (all fields spelled out to keep the kernel layout).
#[repr(C)]
#[allow(dead_code)]
struct FixInfo {
    id: [u8; 16],
    smem_start: libc::c_ulong,
    smem_len: u32,
    kind: u32,
    type_aux: u32,
    visual: u32,
    xpanstep: u16,
    ypanstep: u16,
    ywrapstep: u16,
    line_length: u32,
    mmio_start: libc::c_ulong,
    mmio_len: u32,
    accel: u32,
    capabilities: u16,
    reserved: [u16; 2],
}

/// A mapped fbdev framebuffer.
pub struct FbDisplay {
    file: File,
    map: Mapping,
    width: u32,
    height: u32,
    pitch: usize,
}

impl FbDisplay {
    /// Opens and maps `path`; only 32 bits per pixel is supported.
    pub fn open(path: &str) -> anyhow::Result<Self> {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .with_context(|| format!("open {path}"))?;
        let fd = file.as_raw_fd();
        // SAFETY: both structs are plain data sized like the kernel's; the ioctls fill them.
        let (mut var, mut fix): (VarInfo, FixInfo) =
            unsafe { (std::mem::zeroed(), std::mem::zeroed()) };
        // SAFETY: see above; the pointers refer to the live locals.
        if unsafe { libc::ioctl(fd, FBIOGET_VSCREENINFO as _, &mut var) } != 0
            || unsafe { libc::ioctl(fd, FBIOGET_FSCREENINFO as _, &mut fix) } != 0
        {
            bail!(
                "{path}: FBIOGET_*SCREENINFO failed: {}",
                std::io::Error::last_os_error()
            );
        }
        let bpp = var.rest[4]; // bits_per_pixel follows xres, yres, xres_virtual, yres_virtual, xoffset, yoffset
        if bpp != 32 {
            bail!("{path}: {bpp} bits per pixel; the agent draws XRGB8888 only");
        }
        let pitch = fix.line_length as usize;
        if pitch < var.xres as usize * 4 || (fix.smem_len as usize) < pitch * var.yres as usize {
            bail!(
                "{path}: inconsistent geometry (line {pitch}, {}x{}, {} bytes)",
                var.xres,
                var.yres,
                fix.smem_len
            );
        }
        let map = Mapping::new(fd, fix.smem_len as usize, 0)?;
        Ok(FbDisplay {
            file,
            map,
            width: var.xres,
            height: var.yres,
            pitch,
        })
    }
}

impl Display for FbDisplay {
    fn size(&self) -> (u32, u32) {
        (self.width, self.height)
    }

    fn present(&mut self, canvas: &Canvas, damage: &[Rect]) -> anyhow::Result<()> {
        let pitch = self.pitch;
        copy_rects(canvas, damage, self.map.bytes(), pitch);
        Ok(())
    }

    fn set_power(&mut self, on: bool) -> anyhow::Result<()> {
        let arg = if on {
            FB_BLANK_UNBLANK
        } else {
            FB_BLANK_POWERDOWN
        };
        // SAFETY: FBIOBLANK takes its argument by value.
        if unsafe { libc::ioctl(self.file.as_raw_fd(), FBIOBLANK as _, arg) } != 0 {
            bail!("FBIOBLANK failed: {}", std::io::Error::last_os_error());
        }
        Ok(())
    }

    fn describe(&self) -> String {
        format!("fbdev {}x{} pitch {}", self.width, self.height, self.pitch)
    }
}
