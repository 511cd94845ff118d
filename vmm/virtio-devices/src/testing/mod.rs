//! Tier-1 test harness (cargo feature `testing`): the `virtio-drivers` crate acts as the guest
//! driver against a device wrapped in the real [`VirtioPciDevice`] transport.
//!
//! - [`TestHal`]: DMA from one process-wide test guest memory ([`test_memory`]).
//! - [`TestTransport`]: a virtio-drivers `Transport` that discovers the device through PCI
//!   config space and drives it only through BAR reads/writes.
//! - [`CountingMsiSink`]: the VMM's MSI-X side, counting interrupts per vector.
//! - [`TestHarness`]: ties them together for one device.
//! - [`hostile`]: hostile split rings and [`hostile::fuzz_worker`], the property test every
//!   device's worker runs through its [`DeviceQueue`](crate::DeviceQueue)s.
//!
//! See the crate documentation for an example.

mod hal;
pub mod hostile;
mod sink;
mod transport;

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

pub use hal::{alloc_pages, free_pages, test_memory, TestHal, TEST_MEMORY_SIZE};
pub use sink::CountingMsiSink;
pub use transport::{DiscoveryError, TestTransport, CONFIG_VECTOR, TEST_MSI_ADDR};

use crate::pci::PciDevice;
use crate::rng::Rng;
use crate::transport::{RestoreError, TransportError, TransportState, VirtioPciDevice};
use crate::{StateError, VirtioDevice};

/// Why a harness could not be built.
#[derive(Debug, thiserror::Error)]
pub enum HarnessError {
    /// The transport rejected the device (queue sizes, eventfds, ...).
    #[error("cannot wrap the device in virtio-pci: {0}")]
    Transport(#[from] TransportError),
    /// The driver side could not discover the device through config space.
    #[error("driver-side discovery failed: {0}")]
    Discovery(#[from] DiscoveryError),
    /// Saving the function's state failed.
    #[error("saving the virtio-pci state failed: {0}")]
    Save(#[from] StateError),
    /// The state did not survive its JSON round trip.
    #[error("the saved state does not round-trip through JSON: {0}")]
    Json(#[from] serde_json::Error),
    /// Restoring the state into the new device failed.
    #[error("restoring the virtio-pci state failed: {0}")]
    Restore(#[from] RestoreError),
}

/// One device behind the real virtio-pci transport, plus the driver side.
pub struct TestHarness {
    pci: Arc<Mutex<VirtioPciDevice>>,
    msi: Arc<CountingMsiSink>,
    transport: TestTransport,
}

impl TestHarness {
    /// Wrap `device` (queues in [`test_memory`]) and discover it with MSI-X enabled: config
    /// changes on vector [`CONFIG_VECTOR`], queue `q` on vector `q + 1`.
    pub fn new(device: Box<dyn VirtioDevice>) -> Result<Self, HarnessError> {
        Self::with_msix(device, true)
    }

    /// As [`new`](Self::new); with `msix == false` MSI-X stays disabled and interrupts are
    /// only visible in the ISR register (the INTx path).
    pub fn with_msix(device: Box<dyn VirtioDevice>, msix: bool) -> Result<Self, HarnessError> {
        let msi = Arc::new(CountingMsiSink::default());
        let pci = Arc::new(Mutex::new(VirtioPciDevice::new(
            device,
            test_memory(),
            msi.clone(),
        )?));
        let transport = TestTransport::new(pci.clone(), msi.clone(), msix)?;
        Ok(Self {
            pci,
            msi,
            transport,
        })
    }

    /// A driver-side transport for `VirtIOXxx::<TestHal, _>::new(h.transport())`.
    pub fn transport(&self) -> TestTransport {
        self.transport.clone()
    }

    /// Direct access to the transport's registers (hostile-input tests, status checks).
    pub fn pci(&self) -> MutexGuard<'_, VirtioPciDevice> {
        self.pci.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The MSI-X side: interrupt counts per vector.
    pub fn msi(&self) -> &CountingMsiSink {
        &self.msi
    }

    /// The MSI-X vector the test driver gave queue `queue`.
    pub fn queue_vector(queue: u16) -> u16 {
        queue + 1
    }

    /// Snapshot and restore under the driver's feet: save the function's state, pass it
    /// through JSON (as the state file does), drop the old function (its worker stops and its
    /// backend closes, as when the old VMM process exits), rebuild one around `make()` (a
    /// fresh device of the same kind) on the same guest memory and swap it in. Driver
    /// transports from [`transport`](Self::transport) keep working against the restored
    /// function. Call it between driver requests (the worker idle). Returns the state.
    pub fn snapshot_restore(
        &self,
        make: impl FnOnce() -> Box<dyn VirtioDevice>,
    ) -> Result<TransportState, HarnessError> {
        let mut pci = self.pci();
        assert!(
            pci.quiesce(),
            "the device worker did not park for the snapshot"
        );
        let json = serde_json::to_string(&pci.save_state()?)?;
        let state: TransportState = serde_json::from_str(&json)?;
        // A placeholder takes the old function's place so it is dropped before the new
        // device opens its backend (files are locked, sockets bound).
        let placeholder =
            VirtioPciDevice::new(Box::new(Rng::new()), test_memory(), self.msi.clone())?;
        drop(std::mem::replace(&mut *pci, placeholder));
        *pci = VirtioPciDevice::restore(make(), test_memory(), self.msi.clone(), &state)?;
        pci.resume()?;
        Ok(state)
    }

    /// Whether the device flagged DEVICE_NEEDS_RESET.
    pub fn needs_reset(&self) -> bool {
        self.pci().device_status() & 0x40 != 0
    }
}

/// Run `f` (typically driver calls that spin until the device completes a request) on its
/// own thread; panics with a clear message if it does not finish within `timeout`, so a
/// broken device fails the test instead of hanging it.
pub fn run_with_timeout<T: Send + 'static>(
    timeout: Duration,
    f: impl FnOnce() -> T + Send + 'static,
) -> T {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    match rx.recv_timeout(timeout) {
        Ok(value) => value,
        Err(std::sync::mpsc::RecvTimeoutError::Timeout) => panic!(
            "driver call did not finish within {timeout:?}: the device never completed the \
             request (check its worker and that it reads the queue eventfd)"
        ),
        Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
            panic!("driver call panicked (see the panic message above)")
        }
    }
}
