//! The API's paths and JSON bodies, shared by the VMM (server) and [`crate::VmmApi`] (client).

use serde::{Deserialize, Serialize};

/// The API's paths, so server routes and client calls name the same strings.
pub mod path {
    /// `GET`: the VM's [`StatusReply`](super::StatusReply).
    pub const STATUS: &str = "/status";
    /// `PUT` a [`ShutdownRequest`](super::ShutdownRequest): ACPI power button, then forced off.
    pub const SHUTDOWN: &str = "/shutdown";
    /// `PUT`: reset the guest.
    pub const REBOOT: &str = "/reboot";
    /// `PUT`: park the vCPUs.
    pub const PAUSE: &str = "/pause";
    /// `PUT`: resume the vCPUs.
    pub const RESUME: &str = "/resume";
    /// `PUT` touch or key events.
    pub const INPUT: &str = "/input";
    /// `GET`: the framebuffer's [`FramebufferInfo`](crate::FramebufferInfo).
    pub const FRAMEBUFFER: &str = "/framebuffer";
    /// `GET`: a chunked stream of [`DamageEvent`](super::DamageEvent) lines.
    pub const FRAMEBUFFER_EVENTS: &str = "/framebuffer/events";
    /// `GET`: the screen as PNG.
    pub const SCREENSHOT: &str = "/screenshot";
    /// `GET` the balloon's status, `PUT` a [`BalloonRequest`](super::BalloonRequest).
    pub const BALLOON: &str = "/balloon";
    /// `PUT` a [`SnapshotRequest`](super::SnapshotRequest): write a snapshot of the paused VM.
    pub const SNAPSHOT: &str = "/snapshot";
}

/// `PUT /snapshot` body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SnapshotRequest {
    /// Absolute directory on the VMM's host to write `state` and `memory` into; it must not
    /// exist yet (its parent must). `cloudphone-vmm --restore DIR` resumes it.
    pub dir: String,
}

/// `GET /status` reply: what the host agent checks to tell a live VM from a wedged one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusReply {
    /// `running`, `paused` or `shutting_down`.
    pub state: String,
    /// vCPU count.
    pub vcpus: u8,
    /// Guest memory in MiB.
    pub memory_mib: u64,
    /// Milliseconds since boot.
    pub uptime_ms: u64,
    /// The VMM's process id (lets a supervisor match the socket to the process).
    pub pid: u32,
}

/// `PUT /shutdown` body; an empty body means the default deadline.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShutdownRequest {
    /// How long the guest gets to power off before the VMM stops it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
}

/// `PUT /balloon` body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BalloonRequest {
    /// How much guest memory the balloon should hold back.
    pub target_mib: u64,
}

/// One `GET /framebuffer/events` line (`{"seq":N,"x":..,"y":..,"width":..,"height":..}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct DamageEvent {
    /// The framebuffer's flush sequence number after this flush.
    pub seq: u64,
    /// Changed rectangle.
    pub x: u32,
    /// See `x`.
    pub y: u32,
    /// See `x`.
    pub width: u32,
    /// See `x`.
    pub height: u32,
}

impl DamageEvent {
    /// The smallest rectangle covering `self` and `other`, with the later sequence number
    /// (damage that piled up while a consumer was busy is sent once).
    pub fn union(self, other: DamageEvent) -> DamageEvent {
        let right = (u64::from(self.x) + u64::from(self.width))
            .max(u64::from(other.x) + u64::from(other.width));
        let bottom = (u64::from(self.y) + u64::from(self.height))
            .max(u64::from(other.y) + u64::from(other.height));
        let (x, y) = (self.x.min(other.x), self.y.min(other.y));
        DamageEvent {
            seq: self.seq.max(other.seq),
            x,
            y,
            width: u32::try_from(right - u64::from(x)).unwrap_or(u32::MAX),
            height: u32::try_from(bottom - u64::from(y)).unwrap_or(u32::MAX),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn union_covers_both_rects_and_keeps_the_later_seq() {
        let a = DamageEvent {
            seq: 3,
            x: 10,
            y: 5,
            width: 4,
            height: 2,
        };
        let b = DamageEvent {
            seq: 7,
            x: 2,
            y: 6,
            width: 3,
            height: 10,
        };
        assert_eq!(
            a.union(b),
            DamageEvent {
                seq: 7,
                x: 2,
                y: 5,
                width: 12,
                height: 11
            }
        );
        let huge = DamageEvent {
            seq: 1,
            x: u32::MAX,
            y: 0,
            width: u32::MAX,
            height: 1,
        };
        assert_eq!(huge.union(a).width, u32::MAX, "saturates, no overflow");
    }

    #[test]
    fn bodies_keep_their_wire_form() {
        let status: StatusReply = serde_json::from_str(
            r#"{"memory_mib":256,"pid":7,"state":"running","uptime_ms":5,"vcpus":2}"#,
        )
        .unwrap();
        assert_eq!(status.state, "running");
        let shutdown = ShutdownRequest {
            timeout_ms: Some(50),
        };
        assert_eq!(
            serde_json::to_string(&shutdown).unwrap(),
            r#"{"timeout_ms":50}"#
        );
        assert!(serde_json::from_str::<ShutdownRequest>(r#"{"timeout":5}"#).is_err());
        assert!(serde_json::from_str::<BalloonRequest>(r#"{"target_mib":1,"x":2}"#).is_err());
    }
}
