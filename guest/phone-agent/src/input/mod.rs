//! Input: evdev decoding (pure, host-tested) and the guest's input device discovery.

#[cfg(target_os = "linux")]
pub mod device;
pub mod evdev;
