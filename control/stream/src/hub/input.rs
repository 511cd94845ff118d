//! Input forwarding: the lease holder's input, already in screen pixels, queued for the VMM and
//! delivered one at a time in order, off the phone actor (a slow VMM never stalls the video);
//! a press starts the input-to-redraw timer that the next screen damage stops.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;

use super::stats::StreamStats;
use crate::input::{InputError, VmmInput};
use crate::revocation::Revocation;
use crate::source::Screen;

/// Input messages waiting for the VMM beyond this are dropped (the VMM is stuck).
const INPUT_QUEUE: usize = 256;
/// Screen damage later than this after an input is not counted as that input's redraw.
const INPUT_DAMAGE_WINDOW: Duration = Duration::from_secs(2);

/// One phone's input path to its VMM.
pub(super) struct InputForwarder {
    queue: mpsc::Sender<(VmmInput, Revocation)>,
    /// When the oldest press not yet followed by screen damage was accepted.
    pending: Option<Instant>,
    stats: Arc<StreamStats>,
    phone: String,
}

impl InputForwarder {
    /// Start delivering to `screen`'s VMM (the delivery task ends with the forwarder).
    pub(super) fn start(screen: Screen, stats: Arc<StreamStats>, phone: String) -> Self {
        let (queue, input_rx) = mpsc::channel(INPUT_QUEUE);
        tokio::spawn(deliver(screen, input_rx, stats.clone(), phone.clone()));
        Self {
            queue,
            pending: None,
            stats,
            phone,
        }
    }

    /// Queue `input` for the VMM; dropped (and counted) when the VMM is not keeping up, or
    /// when `grant` (its sender's) is revoked before its turn comes.
    pub(super) fn send(&mut self, input: VmmInput, grant: Revocation) {
        if input.is_press() {
            self.pending.get_or_insert_with(Instant::now);
        }
        if self.queue.try_send((input, grant)).is_err() {
            StreamStats::bump(&self.stats.input_dropped);
            tracing::warn!(phone = %self.phone, "dropping input: the VMM is not keeping up");
        }
    }

    /// Count a data-channel message from the lease holder that was not input.
    pub(super) fn refuse(&self, why: &InputError) {
        StreamStats::bump(&self.stats.input_dropped);
        tracing::debug!(phone = %self.phone, %why, "dropping malformed input message");
    }

    /// The screen changed: that is the redraw of the pending press, if it came soon enough
    /// (damage long after an input was not caused by it: the app ignored the touch).
    pub(super) fn on_damage(&mut self) {
        if let Some(since) = self.pending.take() {
            if since.elapsed() < INPUT_DAMAGE_WINDOW {
                self.stats.input_to_damage.record(since.elapsed());
            }
        }
    }
}

/// Send queued input to the VMM one at a time, in order; input whose sender's lease ended
/// while it waited is dropped (the phone may already belong to someone else).
async fn deliver(
    screen: Screen,
    mut queue: mpsc::Receiver<(VmmInput, Revocation)>,
    stats: Arc<StreamStats>,
    phone: String,
) {
    while let Some((input, grant)) = queue.recv().await {
        if grant.is_revoked() {
            StreamStats::bump(&stats.input_dropped);
            tracing::info!(%phone, "dropping input queued before its lease ended");
            continue;
        }
        match screen.put_input(&input).await {
            Ok(()) => StreamStats::bump(&stats.input_forwarded),
            Err(e) => {
                StreamStats::bump(&stats.input_dropped);
                tracing::warn!(%phone, error = %e, "input not delivered");
            }
        }
    }
}
