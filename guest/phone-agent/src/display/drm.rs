//! DRM/KMS through raw ioctls: pick the first connected connector and its preferred mode,
//! find a CRTC, scan out one dumb buffer, and report damage with DIRTYFB clip rectangles.

use std::fs::File;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;

use anyhow::Context;

use super::mapping::Mapping;
use super::{copy_rects, Display};
use crate::canvas::{Canvas, Rect};

/// Cap on object counts taken from the kernel (real devices have a handful).
const MAX_OBJECTS: u32 = 64;
/// Clip rectangles per DIRTYFB call (the canvas folds damage to at most this many anyway).
const MAX_CLIPS: usize = 16;
const DRM_MODE_CONNECTED: u32 = 1;
const DRM_MODE_TYPE_PREFERRED: u32 = 1 << 3;

const DRM_IOCTL_MODE_GETRESOURCES: u64 = 0xa0;
const DRM_IOCTL_MODE_SETCRTC: u64 = 0xa2;
const DRM_IOCTL_MODE_GETENCODER: u64 = 0xa6;
const DRM_IOCTL_MODE_GETCONNECTOR: u64 = 0xa7;
const DRM_IOCTL_MODE_ADDFB: u64 = 0xae;
const DRM_IOCTL_MODE_DIRTYFB: u64 = 0xb1;
const DRM_IOCTL_MODE_CREATE_DUMB: u64 = 0xb2;
const DRM_IOCTL_MODE_MAP_DUMB: u64 = 0xb3;

#[repr(C)]
#[derive(Default)]
struct CardRes {
    fb_id_ptr: u64,
    crtc_id_ptr: u64,
    connector_id_ptr: u64,
    encoder_id_ptr: u64,
    count_fbs: u32,
    count_crtcs: u32,
    count_connectors: u32,
    count_encoders: u32,
    min_width: u32,
    max_width: u32,
    min_height: u32,
    max_height: u32,
}

#[repr(C)]
#[derive(Clone, Copy, Default, Debug)]
struct ModeInfo {
    clock: u32,
    hdisplay: u16,
    hsync_start: u16,
    hsync_end: u16,
    htotal: u16,
    hskew: u16,
    vdisplay: u16,
    vsync_start: u16,
    vsync_end: u16,
    vtotal: u16,
    vscan: u16,
    vrefresh: u32,
    flags: u32,
    kind: u32,
    name: [u8; 32],
}

#[repr(C)]
#[derive(Default)]
struct GetConnector {
    encoders_ptr: u64,
    modes_ptr: u64,
    props_ptr: u64,
    prop_values_ptr: u64,
    count_modes: u32,
    count_props: u32,
    count_encoders: u32,
    encoder_id: u32,
    connector_id: u32,
    connector_type: u32,
    connector_type_id: u32,
    connection: u32,
    mm_width: u32,
    mm_height: u32,
    subpixel: u32,
    pad: u32,
}

#[repr(C)]
#[derive(Default)]
struct GetEncoder {
    encoder_id: u32,
    encoder_type: u32,
    crtc_id: u32,
    possible_crtcs: u32,
    possible_clones: u32,
}

#[repr(C)]
#[derive(Default)]
struct SetCrtc {
    set_connectors_ptr: u64,
    count_connectors: u32,
    crtc_id: u32,
    fb_id: u32,
    x: u32,
    y: u32,
    gamma_size: u32,
    mode_valid: u32,
    mode: ModeInfo,
}

#[repr(C)]
#[derive(Default)]
struct CreateDumb {
    height: u32,
    width: u32,
    bpp: u32,
    flags: u32,
    handle: u32,
    pitch: u32,
    size: u64,
}

#[repr(C)]
#[derive(Default)]
struct MapDumb {
    handle: u32,
    pad: u32,
    offset: u64,
}

#[repr(C)]
#[derive(Default)]
struct FbCmd {
    fb_id: u32,
    width: u32,
    height: u32,
    pitch: u32,
    bpp: u32,
    depth: u32,
    handle: u32,
}

#[repr(C)]
#[derive(Default)]
struct FbDirty {
    fb_id: u32,
    flags: u32,
    color: u32,
    num_clips: u32,
    clips_ptr: u64,
}

#[repr(C)]
#[derive(Clone, Copy)]
struct ClipRect {
    x1: u16,
    y1: u16,
    x2: u16,
    y2: u16,
}

/// `DRM_IOWR('d', nr, T)` on `arg`, retrying on EINTR/EAGAIN as libdrm does.
fn raw_ioctl<T>(fd: RawFd, nr: u64, arg: &mut T) -> std::io::Result<()> {
    let req = (3u64 << 30) | ((std::mem::size_of::<T>() as u64) << 16) | ((b'd' as u64) << 8) | nr;
    loop {
        // SAFETY: `arg` is a repr(C) struct of the size encoded in `req`, exclusively borrowed;
        // any pointers inside it point at live buffers sized by the counts we pass.
        let rc = unsafe { libc::ioctl(fd, req as _, arg as *mut T) };
        if rc == 0 {
            return Ok(());
        }
        let err = std::io::Error::last_os_error();
        match err.raw_os_error() {
            Some(libc::EINTR) | Some(libc::EAGAIN) => continue,
            _ => return Err(err),
        }
    }
}

/// [`raw_ioctl`] with the request's name in the error.
fn ioctl<T>(fd: RawFd, nr: u64, arg: &mut T, what: &str) -> anyhow::Result<()> {
    raw_ioctl(fd, nr, arg).with_context(|| format!("DRM {what} ioctl"))
}

fn ptr<T>(v: &mut [T]) -> u64 {
    v.as_mut_ptr() as u64
}

/// A DRM card scanning out one dumb buffer.
pub struct DrmDisplay {
    file: File,
    map: Mapping,
    pitch: usize,
    fb_id: u32,
    crtc_id: u32,
    connector_id: u32,
    mode: ModeInfo,
}

impl DrmDisplay {
    /// Opens `path` and lights up its first connected output.
    pub fn open(path: &str) -> anyhow::Result<Self> {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_CLOEXEC)
            .open(path)
            .with_context(|| format!("open {path}"))?;
        let fd = file.as_raw_fd();
        let mut res = CardRes::default();
        ioctl(fd, DRM_IOCTL_MODE_GETRESOURCES, &mut res, "GETRESOURCES")?;
        let mut crtcs = vec![0u32; res.count_crtcs.min(MAX_OBJECTS) as usize];
        let mut connectors = vec![0u32; res.count_connectors.min(MAX_OBJECTS) as usize];
        let mut encoders = vec![0u32; res.count_encoders.min(MAX_OBJECTS) as usize];
        let mut res = CardRes {
            crtc_id_ptr: ptr(&mut crtcs),
            connector_id_ptr: ptr(&mut connectors),
            encoder_id_ptr: ptr(&mut encoders),
            count_crtcs: crtcs.len() as u32,
            count_connectors: connectors.len() as u32,
            count_encoders: encoders.len() as u32,
            ..CardRes::default()
        };
        ioctl(fd, DRM_IOCTL_MODE_GETRESOURCES, &mut res, "GETRESOURCES")?;
        crtcs.truncate(res.count_crtcs as usize);
        connectors.truncate(res.count_connectors as usize);

        let (connector_id, mode, encoder_ids) = connectors
            .iter()
            .find_map(|&id| connected_mode(fd, id).transpose())
            .transpose()?
            .context(
                "no connected DRM connector with a mode (is the virtio-gpu scanout enabled?)",
            )?;
        let crtc_id =
            pick_crtc(fd, &encoder_ids, &crtcs).context("no CRTC can drive the connector")?;
        let (w, h) = (u32::from(mode.hdisplay), u32::from(mode.vdisplay));

        let mut dumb = CreateDumb {
            width: w,
            height: h,
            bpp: 32,
            ..CreateDumb::default()
        };
        ioctl(fd, DRM_IOCTL_MODE_CREATE_DUMB, &mut dumb, "CREATE_DUMB")?;
        let mut fb = FbCmd {
            width: w,
            height: h,
            pitch: dumb.pitch,
            bpp: 32,
            depth: 24,
            handle: dumb.handle,
            ..FbCmd::default()
        };
        ioctl(fd, DRM_IOCTL_MODE_ADDFB, &mut fb, "ADDFB")?;
        let mut map = MapDumb {
            handle: dumb.handle,
            ..MapDumb::default()
        };
        ioctl(fd, DRM_IOCTL_MODE_MAP_DUMB, &mut map, "MAP_DUMB")?;
        let map = Mapping::new(fd, dumb.size as usize, map.offset)?;
        let mut d = DrmDisplay {
            file,
            map,
            pitch: dumb.pitch as usize,
            fb_id: fb.fb_id,
            crtc_id,
            connector_id,
            mode,
        };
        d.map.bytes().fill(0);
        d.set_crtc(true)?;
        Ok(d)
    }

    fn set_crtc(&mut self, on: bool) -> anyhow::Result<()> {
        let mut conn = [self.connector_id];
        let mut req = SetCrtc {
            crtc_id: self.crtc_id,
            ..SetCrtc::default()
        };
        if on {
            req.set_connectors_ptr = ptr(&mut conn);
            req.count_connectors = 1;
            req.fb_id = self.fb_id;
            req.mode_valid = 1;
            req.mode = self.mode;
        }
        ioctl(
            self.file.as_raw_fd(),
            DRM_IOCTL_MODE_SETCRTC,
            &mut req,
            "SETCRTC",
        )
    }
}

/// The connector's preferred (else first) mode and its encoders, if it is connected.
fn connected_mode(fd: RawFd, id: u32) -> anyhow::Result<Option<(u32, ModeInfo, Vec<u32>)>> {
    let mut probe = GetConnector {
        connector_id: id,
        ..GetConnector::default()
    };
    ioctl(fd, DRM_IOCTL_MODE_GETCONNECTOR, &mut probe, "GETCONNECTOR")?;
    if probe.connection != DRM_MODE_CONNECTED || probe.count_modes == 0 {
        return Ok(None);
    }
    let mut modes = vec![ModeInfo::default(); probe.count_modes.min(MAX_OBJECTS * 4) as usize];
    let mut encoders = vec![0u32; probe.count_encoders.min(MAX_OBJECTS) as usize];
    let mut full = GetConnector {
        connector_id: id,
        modes_ptr: ptr(&mut modes),
        count_modes: modes.len() as u32,
        encoders_ptr: ptr(&mut encoders),
        count_encoders: encoders.len() as u32,
        ..GetConnector::default()
    };
    ioctl(fd, DRM_IOCTL_MODE_GETCONNECTOR, &mut full, "GETCONNECTOR")?;
    modes.truncate(full.count_modes as usize);
    encoders.truncate(full.count_encoders as usize);
    if full.encoder_id != 0 {
        encoders.insert(0, full.encoder_id);
    }
    let mode = modes
        .iter()
        .find(|m| m.kind & DRM_MODE_TYPE_PREFERRED != 0)
        .or(modes.first())
        .copied();
    Ok(mode.map(|m| (id, m, encoders)))
}

/// The CRTC an encoder is bound to, else the first one it can drive.
fn pick_crtc(fd: RawFd, encoders: &[u32], crtcs: &[u32]) -> Option<u32> {
    for &id in encoders {
        let mut enc = GetEncoder {
            encoder_id: id,
            ..GetEncoder::default()
        };
        if ioctl(fd, DRM_IOCTL_MODE_GETENCODER, &mut enc, "GETENCODER").is_err() {
            continue;
        }
        if enc.crtc_id != 0 {
            return Some(enc.crtc_id);
        }
        if let Some((_, &c)) = crtcs
            .iter()
            .enumerate()
            .find(|(i, _)| *i < 32 && enc.possible_crtcs & (1 << i) != 0)
        {
            return Some(c);
        }
    }
    None
}

impl Display for DrmDisplay {
    fn size(&self) -> (u32, u32) {
        (u32::from(self.mode.hdisplay), u32::from(self.mode.vdisplay))
    }

    fn present(&mut self, canvas: &Canvas, damage: &[Rect]) -> anyhow::Result<()> {
        let pitch = self.pitch;
        copy_rects(canvas, damage, self.map.bytes(), pitch);
        let mut clips: Vec<ClipRect> = damage
            .iter()
            .map(|r| r.intersect(&canvas.bounds()))
            .filter(|r| !r.is_empty())
            .take(MAX_CLIPS)
            .map(|r| ClipRect {
                x1: r.x as u16,
                y1: r.y as u16,
                x2: r.right() as u16,
                y2: r.bottom() as u16,
            })
            .collect();
        if clips.is_empty() {
            return Ok(());
        }
        let mut dirty = FbDirty {
            fb_id: self.fb_id,
            num_clips: clips.len() as u32,
            clips_ptr: ptr(&mut clips),
            ..FbDirty::default()
        };
        match raw_ioctl(self.file.as_raw_fd(), DRM_IOCTL_MODE_DIRTYFB, &mut dirty) {
            // Drivers that scan out memory directly do not implement DIRTYFB.
            Err(e) if e.raw_os_error() == Some(libc::ENOSYS) => Ok(()),
            other => other.context("DRM DIRTYFB ioctl"),
        }
    }

    fn set_power(&mut self, on: bool) -> anyhow::Result<()> {
        self.set_crtc(on)
    }

    fn describe(&self) -> String {
        let (w, h) = self.size();
        format!(
            "DRM dumb buffer {w}x{h} pitch {} on crtc {} connector {}",
            self.pitch, self.crtc_id, self.connector_id
        )
    }
}
