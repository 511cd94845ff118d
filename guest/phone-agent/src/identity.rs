//! Clone identity: every phone restored from a snapshot is a copy of the same guest, so the VMM
//! gives each restore a new VM generation id (the VMGenID device, 16 bytes at a fixed guest
//! address). Debian's 6.1 kernel reseeds its RNG from it but tells user space nothing, so the
//! agent polls the id through `/dev/mem` (the first MiB is always readable there on x86) and on
//! a change takes a new identity: a hostname derived from the id, a reopened report port, and
//! an `IDENTITY` line on it.

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

/// `IDENTITY vmgenid=<32 hex> hostname=<name>` report line.
pub fn identity_line(id: &[u8; VMGENID_LEN]) -> String {
    format!("IDENTITY vmgenid={} hostname={}", hex(id), hostname(id))
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
            identity_line(&first),
            format!(
                "IDENTITY vmgenid={} hostname=phone-abababababab",
                "ab".repeat(16)
            )
        );
        std::fs::write(&file, [0u8; 8]).unwrap();
        assert_eq!(w.changed(), None, "a short read is no id");
        std::fs::remove_file(&file).unwrap();
    }
}
