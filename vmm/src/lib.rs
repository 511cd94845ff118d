//! cloudphone-vmm: the per-phone KVM virtual machine monitor.
//!
//! Layout (Cloud Hypervisor/Firecracker style): [`kvm`] opens and checks KVM, [`memory`] lays
//! out memfd-backed guest RAM, [`arch`] writes the x86 boot state, [`acpi`] the firmware
//! tables, [`boot`] loads kernel/initrd/cmdline, [`bus`] dispatches port I/O and MMIO to
//! [`legacy`] devices and [`pci`] (virtio-pci, MSI-X), [`vcpu`] runs one thread per vCPU, [`vm`] ties it together, [`snapshot`]
//! saves and restores a paused VM, [`api`]
//! serves the per-VM control socket, [`config`] parses the command line and [`jail`] confines
//! the process to its phone.

pub mod acpi;
pub mod api;
pub mod arch;
pub mod boot;
pub mod bus;
pub mod config;
pub mod exit;
pub mod jail;
pub mod kvm;
pub mod legacy;
pub mod memory;
pub mod pci;
pub mod seccomp;
pub mod snapshot;
pub mod vcpu;
pub mod vm;
