//! Virtio balloon: inflate/deflate, stats, free page reporting.
