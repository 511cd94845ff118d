//! Opening `/dev/kvm`, creating the VM and checking that this KVM can actually run our guests.

use std::path::Path;

use kvm_bindings::{kvm_pit_config, KVM_PIT_SPEAKER_DUMMY};
use kvm_ioctls::{Cap, Kvm, VmFd};

/// Guest-physical address of the TSS KVM needs on Intel (three pages just below the BIOS area).
pub const KVM_TSS_ADDR: u64 = 0xfffb_d000;
/// Guest-physical address of the identity-map page KVM needs on Intel (just below the TSS).
pub const KVM_IDENTITY_MAP_ADDR: u64 = 0xfffb_c000;

/// Why KVM cannot be used; all of these map to exit code 3.
#[derive(Debug, thiserror::Error)]
pub enum KvmError {
    /// `/dev/kvm` could not be opened.
    #[error("cannot open /dev/kvm ({0}): KVM is missing or not accessible; load kvm-intel/kvm-amd, check permissions, or run under scripts/kvm-sandbox")]
    Open(#[source] kvm_ioctls::Error),
    /// The host KVM is the PVM flavour, which cannot run unmodified guests.
    #[error("/dev/kvm is provided by kvm_pvm, which cannot boot standard guests: run under scripts/kvm-sandbox")]
    Pvm,
    /// A capability we rely on is missing.
    #[error("/dev/kvm lacks the {0} capability that cloudphone-vmm needs: run under scripts/kvm-sandbox")]
    MissingCap(&'static str),
    /// A VM-level ioctl failed.
    #[error(
        "KVM {what} failed: {source}; if this host's KVM is unusual, run under scripts/kvm-sandbox"
    )]
    Ioctl {
        /// The operation that failed.
        what: &'static str,
        /// The ioctl error.
        source: kvm_ioctls::Error,
    },
}

/// Result alias for this module.
pub type Result<T> = std::result::Result<T, KvmError>;

fn ioctl(what: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> KvmError {
    move |source| KvmError::Ioctl { what, source }
}

/// True when the host's KVM is the PVM (paravirtualised) flavour: `kvm_pvm` is loaded.
pub fn is_pvm_host(sys_module: &Path) -> bool {
    sys_module.join("kvm_pvm").exists()
}

/// Open `/dev/kvm` and verify it is a KVM that can run a standard x86 guest.
pub fn open_kvm() -> Result<Kvm> {
    open_kvm_checked(Path::new("/sys/module"))
}

/// [`open_kvm`] with the sysfs module directory as a parameter, so the PVM check is testable.
pub fn open_kvm_checked(sys_module: &Path) -> Result<Kvm> {
    let kvm = Kvm::new().map_err(KvmError::Open)?;
    if is_pvm_host(sys_module) {
        return Err(KvmError::Pvm);
    }
    check_caps(&kvm)?;
    Ok(kvm)
}

/// Open `/dev/kvm` without rejecting PVM: for tier-1 payload tests that only need the run loop.
pub fn open_kvm_unchecked() -> Result<Kvm> {
    Kvm::new().map_err(KvmError::Open)
}

fn check_caps(kvm: &Kvm) -> Result<()> {
    let needed = [
        (Cap::Irqchip, "IRQCHIP"),
        (Cap::Irqfd, "IRQFD"),
        (Cap::Ioeventfd, "IOEVENTFD"),
        (Cap::UserMemory, "USER_MEMORY"),
        (Cap::SetTssAddr, "SET_TSS_ADDR"),
        (Cap::Pit2, "PIT2"),
        (Cap::ImmediateExit, "IMMEDIATE_EXIT"),
        (Cap::IrqRouting, "IRQ_ROUTING"),
    ];
    for (cap, name) in needed {
        if !kvm.check_extension(cap) {
            return Err(KvmError::MissingCap(name));
        }
    }
    Ok(())
}

/// Create a VM with the in-kernel irqchip (PIC + IOAPIC + LAPICs) and PIT, as Linux guests
/// expect on a PC.
pub fn create_vm(kvm: &Kvm) -> Result<VmFd> {
    let vm = kvm.create_vm().map_err(ioctl("CREATE_VM"))?;
    vm.set_tss_address(KVM_TSS_ADDR as usize)
        .map_err(ioctl("SET_TSS_ADDR"))?;
    vm.set_identity_map_address(KVM_IDENTITY_MAP_ADDR)
        .map_err(ioctl("SET_IDENTITY_MAP_ADDR"))?;
    vm.create_irq_chip().map_err(ioctl("CREATE_IRQCHIP"))?;
    let pit = kvm_pit_config {
        flags: KVM_PIT_SPEAKER_DUMMY,
        ..Default::default()
    };
    vm.create_pit2(pit).map_err(ioctl("CREATE_PIT2"))?;
    Ok(vm)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pvm_detected_from_sysfs_module_dir() {
        let dir = std::env::temp_dir().join(format!("vmm-pvm-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        assert!(!is_pvm_host(&dir));
        std::fs::create_dir_all(dir.join("kvm_pvm")).unwrap();
        assert!(is_pvm_host(&dir));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
