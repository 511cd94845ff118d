//! Virtio net (TAP) and vsock (hybrid Unix-socket) devices for cloudphone phones.
//!
//! - [`Net`]: virtio-net over a TAP interface (vnet header + offloads, one MAC per phone),
//!   configured from `--net tap=NAME[,mac=..]` ([`NetSpec`]).
//! - [`Vsock`]: virtio-vsock with a userspace backend that exposes guest ports as Unix sockets
//!   the way Firecracker's hybrid vsock does, configured from `--vsock cid=N,uds=PATH`
//!   ([`VsockSpec`]).
//!
//! Both implement [`cloudphone_virtio::VirtioDevice`] and do their queue work on a
//! [`cloudphone_virtio::DeviceWorker`] thread.

mod mac;
mod net;
mod vsock;

pub use mac::{MacAddr, MacParseError};
pub use net::{GuestFrame, Net, NetBackend, NetError, NetSpec, NetSpecError, RxTarget, Tap};
pub use vsock::{Vsock, VsockError, VsockSpec, VsockSpecError};

#[cfg(test)]
mod testutil;
