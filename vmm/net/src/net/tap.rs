//! The TAP interface behind a phone's virtio-net device, and the small [`NetBackend`] trait
//! the device logic is written against (so tests can swap in a socket pair).

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;

use virtio_bindings::virtio_net::{
    VIRTIO_NET_F_GUEST_CSUM, VIRTIO_NET_F_GUEST_ECN, VIRTIO_NET_F_GUEST_TSO4,
    VIRTIO_NET_F_GUEST_TSO6,
};

use super::{GuestFrame, NetError, RxTarget, VNET_HDR_LEN};

/// Where a virtio-net device sends and receives frames. Every frame crossing this trait starts
/// with the 12-byte `virtio_net_hdr_v1` (the guest's own format, so no translation is needed).
pub trait NetBackend: Send + Sync {
    /// The fd the device worker polls for readability (a frame is waiting).
    fn fd(&self) -> RawFd;
    /// Read one frame (header included) into `target` without blocking; returns its length.
    /// `WouldBlock` when no frame is waiting.
    fn recv(&self, target: &RxTarget<'_>) -> io::Result<usize>;
    /// Send one frame (header included), gathered from guest memory.
    fn send(&self, frame: &GuestFrame<'_>) -> io::Result<()>;
    /// Tell the backend which offloads the guest accepted on receive (its negotiated
    /// virtio-net feature bits), so it never hands the guest a frame it cannot parse.
    fn set_offload(&self, guest_features: u64) -> io::Result<()>;
}

/// `struct ifreq` as TUNSETIFF uses it: the name, then the flags in the union.
#[repr(C)]
struct IfReq {
    name: [u8; libc::IFNAMSIZ],
    flags: libc::c_short,
    _pad: [u8; 22],
}

/// An open TAP interface in vnet-header mode.
pub struct Tap {
    file: File,
    name: String,
}

impl Tap {
    /// Attach to (or create, with CAP_NET_ADMIN) the TAP interface `name` with
    /// IFF_TAP | IFF_NO_PI | IFF_VNET_HDR and a 12-byte vnet header, non-blocking.
    pub fn open(name: &str) -> Result<Self, NetError> {
        if name.is_empty() || name.len() >= libc::IFNAMSIZ {
            return Err(NetError::Tap {
                tap: name.to_string(),
                op: "name check",
                source: io::Error::new(io::ErrorKind::InvalidInput, "name must be 1-15 bytes"),
            });
        }
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open("/dev/net/tun")
            .map_err(NetError::OpenTun)?;
        let tap_err = |op: &'static str| {
            let source = io::Error::last_os_error();
            NetError::Tap {
                tap: name.to_string(),
                op,
                source,
            }
        };
        let mut req = IfReq {
            name: [0; libc::IFNAMSIZ],
            flags: 0,
            _pad: [0; 22],
        };
        req.name[..name.len()].copy_from_slice(name.as_bytes());
        req.flags = (libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR) as libc::c_short;
        // SAFETY: TUNSETIFF reads and writes a `struct ifreq`, which `req` is laid out as and
        // outlives the call.
        if unsafe { libc::ioctl(file.as_raw_fd(), libc::TUNSETIFF, &mut req) } < 0 {
            return Err(tap_err(
                "TUNSETIFF (attach; needs CAP_NET_ADMIN or a tap owned by this user)",
            ));
        }
        let hdr_len = VNET_HDR_LEN as libc::c_int;
        // SAFETY: TUNSETVNETHDRSZ reads one int from the pointer, which is valid.
        if unsafe { libc::ioctl(file.as_raw_fd(), libc::TUNSETVNETHDRSZ, &hdr_len) } < 0 {
            return Err(tap_err("TUNSETVNETHDRSZ"));
        }
        let end = req
            .name
            .iter()
            .position(|&b| b == 0)
            .unwrap_or(req.name.len());
        let name = String::from_utf8_lossy(&req.name[..end]).into_owned();
        Ok(Tap { file, name })
    }

    /// The interface name the kernel gave the TAP.
    pub fn name(&self) -> &str {
        &self.name
    }
}

/// TUN offload flags matching the receive offloads the guest negotiated. TSO needs checksum
/// offload, and UFO is never enabled (Linux no longer generates it for guests).
fn tun_offload_flags(guest_features: u64) -> libc::c_uint {
    let has = |bit: u32| guest_features & (1u64 << bit) != 0;
    if !has(VIRTIO_NET_F_GUEST_CSUM) {
        return 0;
    }
    let mut flags = libc::TUN_F_CSUM;
    if has(VIRTIO_NET_F_GUEST_TSO4) {
        flags |= libc::TUN_F_TSO4;
    }
    if has(VIRTIO_NET_F_GUEST_TSO6) {
        flags |= libc::TUN_F_TSO6;
    }
    if has(VIRTIO_NET_F_GUEST_ECN) && flags & (libc::TUN_F_TSO4 | libc::TUN_F_TSO6) != 0 {
        flags |= libc::TUN_F_TSO_ECN;
    }
    flags
}

impl NetBackend for Tap {
    fn fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }

    fn recv(&self, target: &RxTarget<'_>) -> io::Result<usize> {
        target.read_from(self.fd())
    }

    fn send(&self, frame: &GuestFrame<'_>) -> io::Result<()> {
        frame.write_to(self.fd())
    }

    fn set_offload(&self, guest_features: u64) -> io::Result<()> {
        let flags = tun_offload_flags(guest_features);
        // SAFETY: TUNSETOFFLOAD takes the flags by value; no memory is passed.
        if unsafe { libc::ioctl(self.fd(), libc::TUNSETOFFLOAD, flags as libc::c_ulong) } < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offload_flags_follow_guest_features() {
        let bit = |b: u32| 1u64 << b;
        assert_eq!(tun_offload_flags(0), 0);
        // TSO without checksum offload is not allowed by the tun driver.
        assert_eq!(tun_offload_flags(bit(VIRTIO_NET_F_GUEST_TSO4)), 0);
        assert_eq!(
            tun_offload_flags(bit(VIRTIO_NET_F_GUEST_CSUM)),
            libc::TUN_F_CSUM
        );
        let all = bit(VIRTIO_NET_F_GUEST_CSUM)
            | bit(VIRTIO_NET_F_GUEST_TSO4)
            | bit(VIRTIO_NET_F_GUEST_TSO6)
            | bit(VIRTIO_NET_F_GUEST_ECN);
        assert_eq!(
            tun_offload_flags(all),
            libc::TUN_F_CSUM | libc::TUN_F_TSO4 | libc::TUN_F_TSO6 | libc::TUN_F_TSO_ECN
        );
    }
}
