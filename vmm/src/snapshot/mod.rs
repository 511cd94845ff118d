//! Snapshots of a paused VM: a state file (vCPUs, VM-wide KVM state, and the layout needed to
//! check a restore) and a memory file, in one directory. A restore maps the memory file
//! `MAP_PRIVATE`, so the same snapshot restored many times is a set of clones sharing every
//! page none of them wrote.
//!
//! Directory layout: `DIR/state` ([`file`] framing around [`VmSnapshot`] as JSON) and
//! `DIR/memory` (guest RAM, [`memory`]).

pub mod file;
pub mod memory;
pub mod vcpu;
pub mod vm_state;

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

pub use file::StateFileError;
pub use vcpu::{VcpuState, VcpuStateError};
pub use vm_state::{VmState, VmStateError};

/// File name of the state file inside a snapshot directory.
pub const STATE_FILE: &str = "state";
/// File name of the memory file inside a snapshot directory.
pub const MEMORY_FILE: &str = "memory";

/// Everything but RAM that a restore needs.
#[derive(Clone, Serialize, Deserialize)]
pub struct VmSnapshot {
    /// Guest RAM size in bytes; the memory file must be exactly this long.
    pub memory_bytes: u64,
    /// One entry per vCPU, in id order.
    pub vcpus: Vec<VcpuState>,
    /// Interrupt controllers, PIT and clock.
    pub vm: VmState,
    /// The legacy devices and the PCI config latch.
    pub legacy: LegacyState,
    /// Every virtio-pci slot's transport and device state (absent in snapshots of VMs
    /// without virtio devices).
    #[serde(default)]
    pub pci_slots: Vec<crate::pci::SlotState>,
}

/// State of the devices every VM has: COM1, the CMOS, the GED's pending events and the PCI
/// CONFIG_ADDRESS latch (the i8042 keeps none).
#[derive(Clone, Default, Serialize, Deserialize)]
pub struct LegacyState {
    /// COM1 registers and unread input.
    pub serial: crate::legacy::serial::UartState,
    /// CMOS NVRAM and index.
    pub cmos: crate::legacy::rtc::CmosState,
    /// GED events not yet read by the guest.
    pub ged_pending: u8,
    /// PCI CONFIG_ADDRESS.
    pub pci_config_address: u32,
}

/// Paths of the two files of the snapshot in `dir`.
pub fn paths(dir: &Path) -> (PathBuf, PathBuf) {
    (dir.join(STATE_FILE), dir.join(MEMORY_FILE))
}

/// Read `dir`'s state file and check it against its memory file and this host's limits,
/// before anything is created from it.
pub fn load(dir: &Path) -> Result<VmSnapshot, SnapshotError> {
    let (state, mem) = paths(dir);
    let snap: VmSnapshot = file::read(&state)?;
    let invalid = |why: String| SnapshotError::Invalid {
        path: state.clone(),
        why,
    };
    if snap.vcpus.is_empty() || snap.vcpus.len() > usize::from(crate::config::MAX_VCPUS) {
        return Err(invalid(format!("{} vCPUs", snap.vcpus.len())));
    }
    if let Some((i, v)) = snap
        .vcpus
        .iter()
        .enumerate()
        .find(|(i, v)| usize::from(v.id) != *i)
    {
        return Err(invalid(format!("vCPU entry {i} has id {}", v.id)));
    }
    let mib = snap.memory_bytes >> 20;
    if !snap.memory_bytes.is_multiple_of(1 << 20) || crate::memory::validate_size(mib).is_err() {
        return Err(invalid(format!(
            "guest RAM of {} bytes is not a whole MiB count this host accepts",
            snap.memory_bytes
        )));
    }
    let len = std::fs::metadata(&mem)
        .map_err(|source| SnapshotError::Io {
            path: mem.clone(),
            source,
        })?
        .len();
    if len != snap.memory_bytes {
        return Err(SnapshotError::Memory(memory::MemorySnapshotError::Size {
            path: mem.display().to_string(),
            len,
            want: snap.memory_bytes,
        }));
    }
    Ok(snap)
}

/// Why a snapshot could not be taken or restored.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    /// The state file is unreadable, truncated, corrupt or from another version.
    #[error(transparent)]
    StateFile(#[from] StateFileError),
    /// The state file parses but describes a VM we cannot build.
    #[error("snapshot state file {path} is not usable: {why}")]
    Invalid {
        /// The state file.
        path: PathBuf,
        /// What is wrong.
        why: String,
    },
    /// A snapshot file could not be read or written.
    #[error("snapshot file {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// Guest RAM could not be saved or mapped.
    #[error(transparent)]
    Memory(#[from] memory::MemorySnapshotError),
    /// A vCPU's state could not be read or written.
    #[error(transparent)]
    Vcpu(#[from] VcpuStateError),
    /// The VM's state could not be read or written.
    #[error(transparent)]
    Vm(#[from] VmStateError),
    /// The snapshot directory already exists: snapshots never overwrite.
    #[error("snapshot directory {0} already exists: name a new directory (a snapshot never overwrites one)")]
    DirExists(PathBuf),
    /// A snapshot was asked of a running VM.
    #[error("the VM is running: pause it first (PUT /pause), then take the snapshot")]
    NotPaused,
    /// A device cannot save its state (yet); the VM cannot be snapshotted with it.
    #[error("the device at PCI slot {slot} cannot be snapshotted: {source}; start the VM without it to snapshot it")]
    UnsupportedDevice {
        /// Its PCI slot.
        slot: u8,
        /// Why.
        source: cloudphone_virtio::StateError,
    },
    /// A parked vCPU did not hand over its state in time.
    #[error("vCPU {0} did not save its state within the timeout; the VM may be exiting")]
    VcpuTimeout(u8),
}

#[cfg(test)]
mod tests;
