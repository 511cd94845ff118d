//! Virtio device models for cloudphone phones, and the virtio-pci transport they sit behind.
//!
//! Devices know nothing about KVM: they see guest memory (`vm-memory`), their queues
//! (`virtio-queue`), an eventfd per queue for notifications and a [`VirtioInterrupt`] to signal
//! the guest. The transport ([`VirtioPciDevice`]) and the VMM wire those to KVM (ioeventfd,
//! irqfd + MSI-X). That keeps every device testable in-process with the `virtio-drivers`
//! crate acting as the guest driver.
//!
//! # Modules
//! - [`device`], [`worker`]: the device contract, the part every device shares
//!   ([`VirtioCommon`]: features, worker lifecycle, snapshot state) and the epoll worker thread.
//! - [`queue`]: [`DeviceQueue`], the one virtqueue wrapper every device uses: validated chains,
//!   batched used-ring updates, EVENT_IDX-aware interrupts.
//! - [`pci`]: PCI config space, BARs, MSI-X, the [`PciDevice`] trait the VMM's bus calls.
//! - [`transport`]: [`VirtioPciDevice`], the virtio 1.x modern PCI transport.
//! - [`rng`], [`console`]: devices.
//! - `testing` (cargo feature `testing`): the tier-1 harness.
//!
//! # Wiring a device in the VMM
//! ```ignore
//! let pci = VirtioPciDevice::new(Box::new(Rng::new()), guest_mem.clone(), msi_sink)?;
//! pci.set_bar_address(transport::VIRTIO_BAR, bar0_addr)?;   // 16 KiB, 64-bit
//! pci.set_bar_address(transport::MSIX_BAR, bar2_addr)?;     // see pci.bars() for sizes
//! for (offset, fd) in pci.notify_eventfds() {
//!     vm.register_ioevent(fd, &IoEventAddress::Mmio(bar0_addr + offset), NoDatamatch)?;
//! }
//! // config space accesses -> pci.config_read/config_write (re-register on Some(BarMove)),
//! // MMIO inside a BAR -> pci.bar_read/bar_write(bar, offset, data).
//! ```
//!
//! # Snapshots
//! A function's whole state is a [`transport::TransportState`] (serde): config space, BAR
//! addresses, MSI-X table/PBA, the common configuration, queue registers and the device's
//! [`DeviceStateBlob`]. Save it with the vCPUs paused; restore it into a freshly built device of
//! the same kind and configuration, then map the BARs where the function says:
//! ```ignore
//! let state = pci.save_state()?;                       // or PciDevice::virtio_state
//! // ... new process, same guest RAM ...
//! let mut pci = VirtioPciDevice::restore(Box::new(Rng::new()), mem, msi_sink, &state)?;
//! // every MSI-X vector was programmed into msi_sink again. pci.bars() holds the saved
//! // addresses: map them (no allocation) and register pci.notify_eventfds() there.
//! // Once vCPUs and interrupt controllers are restored:
//! pci.resume()?;   // a DRIVER_OK device runs again on its saved queue positions
//! ```
//! The VMM does this per slot with `PciRoot::save_slots`, `PciRoot::attach_restored` and
//! `PciRoot::resume_all`.
//! Devices with state of their own override [`VirtioDevice::save_state`] /
//! [`VirtioDevice::restore_state`] on top of [`VirtioCommon::save_blob`] /
//! [`VirtioCommon::restore_blob`] and [`device_part`]; a device that cannot capture its state
//! refuses with [`StateError::Unsupported`] so no snapshot silently loses it.
//!
//! # Writing a device
//! A device embeds a [`VirtioCommon`] (type, queue sizes, features, worker, snapshot state)
//! and supplies its config space and the handler its worker thread runs; activation, reset
//! and save/restore come from the trait:
//! ```ignore
//! impl VirtioDevice for MyDev {
//!     cloudphone_virtio::virtio_common!(common);
//!     fn read_config(&self, offset: u64, data: &mut [u8]) {
//!         cloudphone_virtio::read_config_bytes(&self.config, offset, data);
//!     }
//!     fn worker_name(&self) -> &str { "virtio-mydev" }
//!     fn worker(&mut self, a: Activation) -> Result<Box<dyn WorkerHandler>, ActivateError> {
//!         let [queue] = Activation::queue_array(a.queues)?;   // a DeviceQueue
//!         Ok(Box::new(MyHandler { mem: a.mem, interrupt: a.interrupt, queue }))
//!     }
//! }
//! ```
//! The handler pops validated [`Chain`]s from its [`DeviceQueue`]s (or lets
//! [`DeviceQueue::drain`] run the loop), returns them with `add_used`/`add_used_batch`, and
//! calls `signal_used` once per batch. Its hostile-ring property test is one call to
//! `testing::hostile::fuzz_worker` with the device's `worker`.
//!
//! # Writing a tier-1 test for a device crate
//! In the device crate's `Cargo.toml`:
//! ```toml
//! [dev-dependencies]
//! cloudphone-virtio = { path = "../virtio-devices", features = ["testing"] }
//! ```
//! Then drive the device with a virtio-drivers driver through the real transport:
//! ```ignore
//! use cloudphone_virtio::testing::{run_with_timeout, TestHal, TestHarness};
//! use virtio_drivers::device::blk::VirtIOBlk;
//!
//! let h = TestHarness::new(Box::new(MyBlock::new(file)))?;
//! let transport = h.transport();
//! // Driver calls spin until the device completes; run them with a timeout so a broken
//! // device fails the test instead of hanging it.
//! run_with_timeout(Duration::from_secs(10), move || {
//!     let mut blk = VirtIOBlk::<TestHal, _>::new(transport).unwrap();
//!     blk.write_blocks(0, &[0xaa; 512]).unwrap();
//! });
//! assert!(!h.needs_reset());
//! assert!(h.msi().count(TestHarness::queue_vector(0)) > 0);
//! ```
//! Guest memory is one process-wide 512 MiB map ([`testing::test_memory`] when built with
//! the feature); hand-built rings for hostile tests come from `testing::alloc_pages`, raw
//! register access from `h.pci()`. `src/rng.rs` tests are a complete, compiled example.

// `x % n == 0` instead of `is_multiple_of` (stable only since 1.87; the workspace MSRV is 1.85).
#![allow(clippy::manual_is_multiple_of)]

pub mod console;
pub mod device;
pub mod log_limit;
pub mod pci;
pub mod queue;
pub mod rng;
#[cfg(any(test, feature = "testing"))]
pub mod testing;
pub mod transport;
pub mod worker;

pub use device::{
    device_part, read_config_bytes, to_device_part, ActivateError, ActivatedQueue, Activation,
    CommonState, DeviceStateBlob, GuestMemory, InterruptCause, StateError, VirtioCommon,
    VirtioDevice, VirtioInterrupt,
};
pub use pci::{MsiSink, MsixMessage, PciDevice};
pub use queue::{Chain, DeviceQueue, QueueError, QueueState};
pub use transport::VirtioPciDevice;
pub use worker::{DeviceWorker, WorkerContext, WorkerHandler};
