//! Clone identity: every phone restored from a snapshot is a copy of the same guest, so the VMM
//! gives each restore a new VM generation id (the VMGenID device, 16 bytes at a fixed guest
//! address). Debian's 6.1 kernel reseeds its RNG from it but tells user space nothing, so the
//! agent polls the id through `/dev/mem` (the first MiB is always readable there on x86) and on
//! a change takes a new identity: a hostname derived from the id, a reopened report port, and
//! an `IDENTITY` line on it. A clone's VMM also gives it a MAC and a vsock CID of its own; the
//! kernel re-reads the CID on the vsock transport reset the VMM sends, but a NIC's MAC only when
//! its driver probes it, so the agent rebinds each virtio-net device (see [`rebind_nics`]).

use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

/// Guest-physical address of the id (the VMM's `VMGENID_ADDR`, also in the DSDT's `ADDR`).
pub const VMGENID_ADDR: u64 = 0xf_e000;
/// Bytes in the id.
pub const VMGENID_LEN: usize = 16;
/// Where physical memory is read from.
pub const DEV_MEM: &str = "/dev/mem";

/// The id as lowercase hex.
pub fn hex(id: &[u8; VMGENID_LEN]) -> String {
    id.iter().map(|b| format!("{b:02x}")).collect()
}

/// This copy's hostname: `phone-` and the id's first 6 bytes (unique per restore in practice).
pub fn hostname(id: &[u8; VMGENID_LEN]) -> String {
    format!("phone-{}", &hex(id)[..12])
}

/// Where the virtio-net driver lists the devices bound to it.
pub const VIRTIO_NET_DRIVER: &str = "/sys/bus/virtio/drivers/virtio_net";
/// Where network interfaces are listed.
pub const CLASS_NET: &str = "/sys/class/net";
/// The vsock control device.
pub const DEV_VSOCK: &str = "/dev/vsock";

/// `IDENTITY vmgenid=<32 hex> hostname=<name> mac=<mac,...|none> cid=<n|none>` report line:
/// what makes this copy of the phone distinct, as the guest itself sees it.
pub fn identity_line(id: &[u8; VMGENID_LEN], macs: &[String], cid: Option<u32>) -> String {
    let macs = if macs.is_empty() {
        "none".to_owned()
    } else {
        macs.join(",")
    };
    let cid = cid.map_or("none".to_owned(), |c| c.to_string());
    format!(
        "IDENTITY vmgenid={} hostname={} mac={macs} cid={cid}",
        hex(id),
        hostname(id)
    )
}

/// Unbinds each virtio-net device (`virtioN` entries of `driver`, the driver's sysfs
/// directory) and binds it again, so the driver probes it anew and takes the MAC the restored
/// VMM now offers. Returns how many were rebound. The interfaces come back down and without
/// addresses: whatever configures the network must run again after a restore.
pub fn rebind_nics(driver: &Path) -> std::io::Result<usize> {
    let mut devices: Vec<String> = std::fs::read_dir(driver)?
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("virtio"))
        .collect();
    devices.sort();
    for d in &devices {
        std::fs::write(driver.join("unbind"), d)?;
        std::fs::write(driver.join("bind"), d)?;
    }
    Ok(devices.len())
}

/// MACs of the network interfaces that sit on a device (not `lo`), by interface name, from
/// `class_net` (`/sys/class/net` in the guest).
pub fn nic_macs(class_net: &Path) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(class_net) else {
        return Vec::new();
    };
    let mut nics: Vec<(String, String)> = entries
        .flatten()
        .filter(|e| e.path().join("device").exists())
        .filter_map(|e| {
            let mac = std::fs::read_to_string(e.path().join("address")).ok()?;
            Some((
                e.file_name().to_string_lossy().into_owned(),
                mac.trim().to_owned(),
            ))
        })
        .collect();
    nics.sort();
    nics.into_iter().map(|(_, mac)| mac).collect()
}

/// This guest's vsock CID (`IOCTL_VM_SOCKETS_GET_LOCAL_CID` on `/dev/vsock`); `None` without
/// a vsock device.
pub fn local_cid() -> Option<u32> {
    /// `_IO(7, 0xb9)` from linux/vm_sockets.h.
    const IOCTL_VM_SOCKETS_GET_LOCAL_CID: libc::c_ulong = 0x7b9;
    let dev = std::fs::File::open(DEV_VSOCK).ok()?;
    let mut cid: u32 = 0;
    // SAFETY: the ioctl writes one u32 into `cid`, which outlives the call.
    let rc = unsafe { libc::ioctl(dev.as_raw_fd(), IOCTL_VM_SOCKETS_GET_LOCAL_CID, &mut cid) };
    (rc == 0).then_some(cid)
}

/// Notices a new VM generation id.
pub struct GenIdWatcher {
    mem: PathBuf,
    offset: u64,
    last: Option<[u8; VMGENID_LEN]>,
}

impl GenIdWatcher {
    /// Watches the id at `offset` of `mem` (`/dev/mem` and [`VMGENID_ADDR`] in the guest).
    pub fn new(mem: &Path, offset: u64) -> Self {
        GenIdWatcher {
            mem: mem.to_path_buf(),
            offset,
            last: None,
        }
    }

    /// The id if it differs from the one seen last (the first read counts as a change); `None`
    /// while it is the same, all zeros (a VMM without VMGenID) or unreadable.
    pub fn changed(&mut self) -> Option<[u8; VMGENID_LEN]> {
        let mut id = [0u8; VMGENID_LEN];
        let file = std::fs::File::open(&self.mem).ok()?;
        file.read_exact_at(&mut id, self.offset).ok()?;
        if id == [0; VMGENID_LEN] || self.last == Some(id) {
            return None;
        }
        self.last = Some(id);
        Some(id)
    }
}

/// Sets the kernel hostname (the guest is a new machine).
pub fn set_hostname(name: &str) -> std::io::Result<()> {
    // SAFETY: sethostname(2) reads `len` bytes from a buffer we own.
    let rc = unsafe { libc::sethostname(name.as_ptr().cast(), name.len()) };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_id_is_noticed_once_and_names_the_phone() {
        let file = std::env::temp_dir().join(format!("genid-{}", std::process::id()));
        let mut mem = vec![0u8; 64];
        std::fs::write(&file, &mem).unwrap();
        let mut w = GenIdWatcher::new(&file, 16);
        assert_eq!(w.changed(), None, "all zeros: no VMGenID");
        mem[16..32].copy_from_slice(&[0xab; 16]);
        std::fs::write(&file, &mem).unwrap();
        let first = w.changed().expect("the first id");
        assert_eq!(w.changed(), None, "the same id again");
        mem[16] = 0x01;
        std::fs::write(&file, &mem).unwrap();
        let second = w.changed().expect("a restore's new id");
        assert_ne!(hostname(&first), hostname(&second));
        assert_eq!(hostname(&second), "phone-01ababababab");
        assert_eq!(
            identity_line(&first, &[], None),
            format!(
                "IDENTITY vmgenid={} hostname=phone-abababababab mac=none cid=none",
                "ab".repeat(16)
            )
        );
        let macs = [
            "52:54:00:00:00:01".to_owned(),
            "52:54:00:00:00:02".to_owned(),
        ];
        assert!(identity_line(&second, &macs, Some(7))
            .ends_with("mac=52:54:00:00:00:01,52:54:00:00:00:02 cid=7"));
        std::fs::write(&file, [0u8; 8]).unwrap();
        assert_eq!(w.changed(), None, "a short read is no id");
        std::fs::remove_file(&file).unwrap();
    }

    #[test]
    fn nics_are_listed_by_name_without_lo_and_rebound_through_sysfs() {
        let root = std::env::temp_dir().join(format!("nics-{}", std::process::id()));
        let net = root.join("net");
        for (name, mac, device) in [
            ("lo", "00:00:00:00:00:00", false),
            ("eth1", "52:54:00:00:00:02", true),
            ("eth0", "52:54:00:00:00:01", true),
        ] {
            std::fs::create_dir_all(net.join(name)).unwrap();
            std::fs::write(net.join(name).join("address"), format!("{mac}\n")).unwrap();
            if device {
                std::fs::create_dir_all(net.join(name).join("device")).unwrap();
            }
        }
        assert_eq!(nic_macs(&net), ["52:54:00:00:00:01", "52:54:00:00:00:02"]);
        assert!(nic_macs(&root.join("absent")).is_empty());

        // A driver directory: its devices, and bind/unbind files that record the last write.
        let driver = root.join("driver");
        for entry in ["virtio3", "virtio1", "module"] {
            std::fs::create_dir_all(driver.join(entry)).unwrap();
        }
        std::fs::write(driver.join("bind"), "").unwrap();
        std::fs::write(driver.join("unbind"), "").unwrap();
        assert_eq!(rebind_nics(&driver).unwrap(), 2);
        assert_eq!(
            std::fs::read_to_string(driver.join("unbind")).unwrap(),
            "virtio3"
        );
        assert_eq!(
            std::fs::read_to_string(driver.join("bind")).unwrap(),
            "virtio3"
        );
        assert!(rebind_nics(&root.join("absent")).is_err());
        std::fs::remove_dir_all(&root).unwrap();
    }
}
