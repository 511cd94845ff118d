//! cloudphone-vmm: the per-phone KVM virtual machine monitor.
