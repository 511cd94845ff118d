//! The hub: which phones have a running stream, so every viewer of a phone joins the one
//! stream (one damage subscription, one encoder per codec).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::{mpsc, oneshot};

use super::phone::PhoneStream;
use super::stats::StreamStats;
use crate::lock;
use crate::revocation::Revocation;
use crate::source::{Screen, ScreenSource};
use crate::webrtc::Viewer;

/// How a viewer may use the phone (from the lease check in signalling).
#[derive(Debug, Clone)]
pub struct ViewerOptions {
    /// Who is watching, for log lines (user name).
    pub label: String,
    /// Lease holder: its touches and keys go to the phone; everybody else only watches.
    pub can_send_input: bool,
    /// Ends the viewer's right to the phone (its lease ended): from then on it gets no frames
    /// and its input is dropped, even input already queued for the VMM.
    pub revocation: Revocation,
}

/// What the registry tells a running phone stream.
pub(super) enum Control {
    /// A viewer joins.
    Join(Box<Join>),
    /// End every viewer (reason).
    CloseAll(String),
}

/// A joining viewer and where to report why its session ended.
pub(super) struct Join {
    pub(super) viewer: Viewer,
    pub(super) options: ViewerOptions,
    pub(super) ended: oneshot::Sender<String>,
}

/// A running stream as the registry holds it.
pub(super) struct PhoneHandle {
    pub(super) control: mpsc::UnboundedSender<Control>,
    pub(super) stats: Arc<StreamStats>,
}

/// Phone id → its running stream, shared with the streams (each removes itself when its last
/// viewer leaves).
pub(super) type Registry = Arc<Mutex<HashMap<String, PhoneHandle>>>;

/// All phone streams of this service; cheap to clone. Viewers of the same phone id share one
/// stream (one damage subscription, one encoder).
#[derive(Clone, Default)]
pub struct StreamHub {
    phones: Registry,
}

impl StreamHub {
    /// An empty hub.
    pub fn new() -> Self {
        Self::default()
    }

    /// Add `viewer` (a started WebRTC session) to phone `phone_id`'s stream, starting the stream
    /// (screen from `source`, at most `fps_cap` frames/s) if it is the first viewer. The
    /// returned receiver yields why the viewer's session ended.
    pub fn attach(
        &self,
        phone_id: &str,
        source: ScreenSource,
        fps_cap: u32,
        viewer: Viewer,
        options: ViewerOptions,
    ) -> oneshot::Receiver<String> {
        let (ended, ended_rx) = oneshot::channel();
        let mut join = Control::Join(Box::new(Join {
            viewer,
            options,
            ended,
        }));
        let mut phones = lock(&self.phones);
        if let Some(handle) = phones.get(phone_id) {
            match handle.control.send(join) {
                Ok(()) => return ended_rx,
                Err(mpsc::error::SendError(j)) => join = j,
            }
        }
        let handle = PhoneStream::start(
            phone_id.to_owned(),
            Screen::new(source),
            fps_cap,
            self.phones.clone(),
            join,
        );
        phones.insert(phone_id.to_owned(), handle);
        ended_rx
    }

    /// End every viewer of `phone_id` (lease released or expired, phone stopped).
    pub fn disconnect(&self, phone_id: &str, reason: &str) {
        if let Some(handle) = lock(&self.phones).get(phone_id) {
            let _ = handle.control.send(Control::CloseAll(reason.to_owned()));
        }
    }

    /// The running stream's counters, `None` when nobody watches `phone_id`.
    pub fn stats(&self, phone_id: &str) -> Option<Arc<StreamStats>> {
        lock(&self.phones).get(phone_id).map(|h| h.stats.clone())
    }
}
