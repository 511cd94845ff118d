//! Virtio device models for cloudphone phones.
//!
//! Devices know nothing about KVM: they see guest memory (`vm-memory`), their queues
//! (`virtio-queue`), an eventfd per queue for notifications and a [`VirtioInterrupt`] to signal
//! the guest. The transport (virtio-pci in [`transport`]) and the VMM wire those to KVM
//! (ioeventfd, irqfd + MSI-X). That keeps every device testable in-process with the
//! `virtio-drivers` crate acting as the guest driver.

pub mod device;
pub mod pci;
pub mod worker;

pub use device::{
    ActivateError, ActivatedQueue, GuestMemory, InterruptCause, VirtioDevice, VirtioInterrupt,
};
pub use worker::{DeviceWorker, WorkerContext, WorkerHandler};
