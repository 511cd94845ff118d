//! Virtio balloon: inflate/deflate, stats, free page reporting.
//!
//! The host takes memory back from a phone by asking its guest to inflate the balloon
//! ([`BalloonHandle::set_target_mib`]); pages the guest puts in the balloon, and free ranges it
//! reports, are released with `fallocate(PUNCH_HOLE)` (memfd-backed memory) and
//! `madvise(MADV_DONTNEED)`, so the VMM's RSS really drops. Stats come from the stats queue
//! ([`BalloonHandle::status`]).
//!
//! ```ignore
//! let (balloon, handle) = Balloon::new(memory_mib)?;
//! let pci = VirtioPciDevice::new(Box::new(balloon), guest_mem.clone(), msi)?; // 00:07.0
//! // PUT /balloon {"target_mib":N}
//! handle.set_target_mib(n)?;
//! // GET /balloon -> serde_json::to_string(&handle.status(Duration::from_millis(500)))
//! ```

// `x % n != 0` instead of `is_multiple_of` (stable only since 1.87; the workspace MSRV is 1.85).
#![allow(clippy::manual_is_multiple_of)]

mod device;
mod discard;
mod handle;
mod stats;
mod worker;

pub use device::{
    Balloon, BalloonState, VIRTIO_BALLOON_F_DEFLATE_ON_OOM, VIRTIO_BALLOON_F_REPORTING,
    VIRTIO_BALLOON_F_STATS_VQ,
};
pub use discard::{DiscardError, PAGE_SIZE};
pub use handle::{BalloonError, BalloonHandle, BalloonStatus};
pub use stats::BalloonStats;

#[cfg(test)]
mod tests;
