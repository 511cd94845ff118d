//! The per-phone actor: viewers join and leave, damage drives the pacer, each paced frame is
//! encoded once per codec in use and fanned out, and the bitrate follows the slowest viewer.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot};

use super::encoding::{CodecFrames, EncodeJob, Encoding};
use super::input::InputForwarder;
use super::registry::{Control, Join, PhoneHandle, Registry, ViewerOptions};
use super::stats::StreamStats;
use crate::input::BrowserInput;
use crate::pacer::PacerAction;
use crate::source::Screen;
use crate::webrtc::{ViewerCommand, ViewerEvent};
use crate::{lock, BitrateController, Codec, EncodePacer, StreamError};
use cloudphone_vmm_api::DamageEvent;

/// Bitrate a new stream starts at (bits/s).
const INITIAL_BITRATE: u32 = 2_500_000;
/// Re-encode the screen once after this much idleness, so a frame lost at the end of a burst
/// does not leave viewers on a stale picture.
pub(super) const REFRESH_AFTER: Duration = Duration::from_millis(700);
/// Apply a new bitrate only when it differs this much (each change restarts the encoder).
const BITRATE_HYSTERESIS: f64 = 0.25;
/// ... and at most this often.
const BITRATE_MIN_INTERVAL: Duration = Duration::from_secs(2);
/// Wait between reconnects of a broken damage stream.
const DAMAGE_RETRY: Duration = Duration::from_secs(1);

/// A viewer as the stream keeps it: how to reach it and what it needs next.
struct ViewerSlot {
    options: ViewerOptions,
    commands: mpsc::Sender<ViewerCommand>,
    ended: Option<oneshot::Sender<String>>,
    /// The codec negotiated with it, once its transport is up (frames go only to those).
    codec: Option<Codec>,
    /// Skip delta frames until a keyframe reaches this viewer (new, or it missed a frame).
    needs_key: bool,
    estimate: Option<u32>,
    warned_input: bool,
}

impl ViewerSlot {
    /// Connected and still granted: a viewer whose lease ended sees nothing more of the phone.
    fn receives_frames(&self) -> bool {
        self.codec.is_some() && !self.options.revocation.is_revoked()
    }
}

/// One phone's stream: an actor owning its viewers, pacer, bitrate and encoders, driven by
/// registry messages, viewer events and screen damage.
pub(super) struct PhoneStream {
    id: String,
    screen: Screen,
    fps: u32,
    stats: Arc<StreamStats>,
    registry: Registry,
    control: mpsc::UnboundedSender<Control>,
    viewers: HashMap<u64, ViewerSlot>,
    next_viewer: u64,
    events_tx: mpsc::Sender<(u64, ViewerEvent)>,
    events_rx: mpsc::Receiver<(u64, ViewerEvent)>,
    pacer: EncodePacer,
    bitrate: BitrateController,
    applied_bitrate: u32,
    bitrate_changed: Instant,
    encoding: Option<Box<Encoding>>,
    screen_size: Option<(u32, u32)>,
    input: InputForwarder,
}

impl PhoneStream {
    /// Run a stream of `screen` at most `fps` frames/s for phone `id`, its first message
    /// `first` (a join); the handle is for `registry`, which the stream leaves when its last
    /// viewer does.
    pub(super) fn start(
        id: String,
        screen: Screen,
        fps: u32,
        registry: Registry,
        first: Control,
    ) -> PhoneHandle {
        let (control, control_rx) = mpsc::unbounded_channel();
        let stats = Arc::new(StreamStats::default());
        let _ = control.send(first);
        let (events_tx, events_rx) = mpsc::channel(256);
        let input = InputForwarder::start(screen.clone(), stats.clone(), id.clone());
        let bitrate = BitrateController::new(INITIAL_BITRATE);
        stats
            .bitrate
            .store(bitrate.bitrate() as u64, Ordering::Relaxed);
        let stream = Self {
            pacer: EncodePacer::new(fps as f32, REFRESH_AFTER),
            applied_bitrate: bitrate.bitrate(),
            bitrate,
            bitrate_changed: Instant::now(),
            id,
            screen,
            fps,
            stats: stats.clone(),
            registry,
            control: control.clone(),
            viewers: HashMap::new(),
            next_viewer: 0,
            events_tx,
            events_rx,
            encoding: None,
            screen_size: None,
            input,
        };
        tokio::spawn(stream.run(control_rx));
        PhoneHandle { control, stats }
    }

    /// Serve viewers until the last one leaves.
    async fn run(mut self, mut control: mpsc::UnboundedReceiver<Control>) {
        let (damage_tx, mut damage) = mpsc::channel(64);
        let watcher = tokio::spawn(watch_damage(self.screen.clone(), damage_tx));
        tracing::info!(phone = %self.id, source = %self.screen, "stream started");
        loop {
            let wait = match self.pacer.poll(Instant::now()) {
                PacerAction::Encode | PacerAction::Resend => {
                    self.encode_and_send().await;
                    continue;
                }
                PacerAction::WaitFor(d) => d,
                PacerAction::Idle => Duration::from_secs(3600),
            };
            tokio::select! {
                Some(msg) = control.recv() => self.on_control(msg),
                Some((id, event)) = self.events_rx.recv() => self.on_viewer_event(id, event).await,
                Some(event) = damage.recv() => self.on_damage(event),
                _ = tokio::time::sleep(wait) => {}
            }
            if self.viewers.is_empty() && self.finish(&mut control) {
                break;
            }
        }
        watcher.abort();
        tracing::info!(phone = %self.id, "stream stopped: no viewers left");
    }

    /// With no viewers left: unregister, unless a join raced in (then keep going).
    fn finish(&mut self, control: &mut mpsc::UnboundedReceiver<Control>) -> bool {
        let mut phones = lock(&self.registry);
        match control.try_recv() {
            Ok(msg) => {
                drop(phones);
                self.on_control(msg);
                false
            }
            Err(_) => {
                if phones
                    .get(&self.id)
                    .is_some_and(|h| h.control.same_channel(&self.control))
                {
                    phones.remove(&self.id);
                }
                true
            }
        }
    }

    fn on_control(&mut self, msg: Control) {
        match msg {
            Control::Join(join) => {
                let Join {
                    viewer,
                    options,
                    ended,
                } = *join;
                let id = self.next_viewer;
                self.next_viewer += 1;
                tracing::info!(phone = %self.id, viewer = %options.label, input = options.can_send_input, "viewer joined");
                let events_tx = self.events_tx.clone();
                let mut events = viewer.events;
                tokio::spawn(async move {
                    while let Some(event) = events.recv().await {
                        if events_tx.send((id, event)).await.is_err() {
                            return;
                        }
                    }
                    let _ = events_tx
                        .send((id, ViewerEvent::Closed("session ended".into())))
                        .await;
                });
                self.viewers.insert(
                    id,
                    ViewerSlot {
                        options,
                        commands: viewer.commands,
                        ended: Some(ended),
                        codec: None,
                        needs_key: true,
                        estimate: None,
                        warned_input: false,
                    },
                );
            }
            Control::CloseAll(reason) => {
                tracing::info!(phone = %self.id, %reason, "closing all viewers");
                for (_, mut slot) in self.viewers.drain() {
                    let _ = slot.commands.try_send(ViewerCommand::Close);
                    if let Some(ended) = slot.ended.take() {
                        let _ = ended.send(reason.clone());
                    }
                }
            }
        }
    }

    async fn on_viewer_event(&mut self, id: u64, event: ViewerEvent) {
        let Some(slot) = self.viewers.get_mut(&id) else {
            return;
        };
        match event {
            ViewerEvent::Connected(codec) => {
                slot.codec = Some(codec);
                slot.needs_key = true;
                self.pacer.damage();
            }
            ViewerEvent::KeyframeRequest => {
                slot.needs_key = true;
                self.pacer.damage();
            }
            ViewerEvent::Bitrate(bps) => {
                slot.estimate = Some(bps);
                self.update_bitrate();
            }
            ViewerEvent::Input(input) => self.on_input(id, input).await,
            ViewerEvent::BadInput(why) => {
                if self.may_send_input(id) {
                    self.input.refuse(&why);
                }
            }
            ViewerEvent::Closed(reason) => {
                if let Some(mut slot) = self.viewers.remove(&id) {
                    tracing::info!(phone = %self.id, viewer = %slot.options.label, %reason, "viewer left");
                    if let Some(ended) = slot.ended.take() {
                        let _ = ended.send(reason);
                    }
                }
                if !self.has_connected_viewer() {
                    // Nobody watches: free the encoder and the mapping.
                    self.encoding = None;
                }
                self.update_bitrate();
            }
        }
    }

    /// Whether viewer `id` may touch the phone: only the lease holder may; a watch-only
    /// viewer's input is counted as dropped (and warned about once).
    fn may_send_input(&mut self, id: u64) -> bool {
        let Some(slot) = self.viewers.get_mut(&id) else {
            return false;
        };
        if slot.options.revocation.is_revoked() {
            // Its lease ended: the session is closing; nothing it sends may reach the phone.
            StreamStats::bump(&self.stats.input_dropped);
            return false;
        }
        if slot.options.can_send_input {
            return true;
        }
        StreamStats::bump(&self.stats.input_dropped);
        if !std::mem::replace(&mut slot.warned_input, true) {
            tracing::warn!(phone = %self.id, viewer = %slot.options.label, "dropping input from a watch-only viewer (not the lease holder)");
        }
        false
    }

    /// Forward viewer `id`'s input, in pixels of the current screen, if it may send any.
    async fn on_input(&mut self, id: u64, input: BrowserInput) {
        if !self.may_send_input(id) {
            return;
        }
        let Some(revocation) = self.viewers.get(&id).map(|v| v.options.revocation.clone()) else {
            return;
        };
        let (width, height) = match self.screen_size {
            Some(size) => size,
            None => match self.screen.info().await {
                Ok(info) => *self.screen_size.insert((info.width, info.height)),
                Err(e) => {
                    StreamStats::bump(&self.stats.input_dropped);
                    tracing::warn!(phone = %self.id, error = %e, "dropping input: screen size unknown");
                    return;
                }
            },
        };
        self.input.send(input.to_screen(width, height), revocation);
    }

    fn on_damage(&mut self, event: DamageEvent) {
        self.input.on_damage();
        if let Some(enc) = &self.encoding {
            let right = u64::from(event.x) + u64::from(event.width);
            let bottom = u64::from(event.y) + u64::from(event.height);
            if right > u64::from(enc.info.width) || bottom > u64::from(enc.info.height) {
                tracing::info!(phone = %self.id, "damage outside the known screen: re-reading the geometry");
                self.encoding = None;
                self.screen_size = None;
            }
        }
        if self.has_connected_viewer() {
            self.pacer.damage();
        }
    }

    /// Target = the controller's rate capped by the slowest viewer's estimate.
    fn update_bitrate(&mut self) {
        let Some(slowest) = self.viewers.values().filter_map(|v| v.estimate).min() else {
            return;
        };
        let target = self.bitrate.on_feedback(0.0, Some(slowest));
        self.stats.bitrate.store(target as u64, Ordering::Relaxed);
    }

    /// The bitrate to switch the encoder to now, if any (hysteresis + rate limit).
    fn bitrate_change(&mut self) -> Option<u32> {
        let target = self.bitrate.bitrate();
        let delta =
            (target as f64 - self.applied_bitrate as f64).abs() / self.applied_bitrate as f64;
        if delta < BITRATE_HYSTERESIS || self.bitrate_changed.elapsed() < BITRATE_MIN_INTERVAL {
            return None;
        }
        self.applied_bitrate = target;
        self.bitrate_changed = Instant::now();
        Some(target)
    }

    /// A viewer's transport is up (frames would go somewhere).
    fn has_connected_viewer(&self) -> bool {
        self.viewers.values().any(ViewerSlot::receives_frames)
    }

    /// What to encode now: each codec a connected viewer receives, as a keyframe when one of
    /// them needs one.
    fn encode_jobs(&self) -> Vec<EncodeJob> {
        let mut jobs: Vec<EncodeJob> = Vec::new();
        for slot in self.viewers.values().filter(|v| v.receives_frames()) {
            let Some(codec) = slot.codec else { continue };
            match jobs.iter_mut().find(|j| j.codec == codec) {
                Some(job) => job.keyframe |= slot.needs_key,
                None => jobs.push(EncodeJob {
                    codec,
                    keyframe: slot.needs_key,
                }),
            }
        }
        jobs
    }

    async fn encode_and_send(&mut self) {
        let jobs = self.encode_jobs();
        if jobs.is_empty() {
            return;
        }
        let mut encoding = match self.encoding.take() {
            Some(enc) => enc,
            None => match self.open_encoding().await {
                Ok(enc) => enc,
                Err(e) => {
                    tracing::warn!(phone = %self.id, error = %e, "cannot encode the screen");
                    return;
                }
            },
        };
        let bitrate_changed = self.bitrate_change().is_some();
        let bitrate = self.applied_bitrate;
        let started = Instant::now();
        let job = tokio::task::spawn_blocking(move || {
            let result = encoding.encode(&jobs, bitrate, bitrate_changed);
            (encoding, result)
        });
        let (encoding, result) = match job.await {
            Ok(done) => done,
            Err(e) => {
                // The encoders went down with the task: the next ones start on a keyframe.
                tracing::error!(phone = %self.id, error = %e, "encoder task panicked; restarting the encoder");
                return;
            }
        };
        self.encoding = Some(encoding);
        let (frames, created) = match result {
            Ok(done) => done,
            Err(e) => {
                tracing::warn!(phone = %self.id, error = %e, "encoding failed; re-reading the screen");
                self.encoding = None;
                return;
            }
        };
        self.stats.encode.record(started.elapsed());
        self.stats.encoders.fetch_add(created, Ordering::Relaxed);
        for (_, frame) in &frames {
            StreamStats::bump(&self.stats.encoded);
            if frame.keyframe {
                StreamStats::bump(&self.stats.keyframes);
            }
        }
        self.fan_out(&frames);
    }

    async fn open_encoding(&mut self) -> Result<Box<Encoding>, StreamError> {
        let info = self.screen.info().await?;
        let pixels = self.screen.pixels(&info)?;
        self.screen_size = Some((info.width, info.height));
        Ok(Box::new(Encoding::open(info, pixels, self.fps)?))
    }

    /// Give each connected viewer the frame of its codec; one that cannot take it (full queue)
    /// or still waits for a keyframe gets a keyframe next.
    fn fan_out(&mut self, frames: &CodecFrames) {
        for slot in self.viewers.values_mut().filter(|v| v.receives_frames()) {
            let Some(frame) = frames
                .iter()
                .find(|(codec, _)| Some(*codec) == slot.codec)
                .map(|(_, frame)| frame)
            else {
                continue;
            };
            if slot.needs_key && !frame.keyframe {
                continue;
            }
            match slot.commands.try_send(ViewerCommand::Frame(frame.clone())) {
                Ok(()) => slot.needs_key = false,
                // It missed a frame: its decoder needs a fresh start.
                Err(mpsc::error::TrySendError::Full(_)) => slot.needs_key = true,
                Err(mpsc::error::TrySendError::Closed(_)) => {}
            }
        }
        if self
            .viewers
            .values()
            .any(|v| v.codec.is_some() && v.needs_key)
        {
            self.pacer.damage();
        }
    }
}

/// Keep a damage subscription open for as long as the stream runs, reconnecting after errors.
async fn watch_damage(screen: Screen, sink: mpsc::Sender<DamageEvent>) {
    loop {
        match screen.follow(&sink).await {
            Ok(()) if sink.is_closed() => return,
            Ok(()) => {
                tracing::info!(source = %screen, "damage stream ended; reconnecting")
            }
            Err(e) => tracing::warn!(error = %e, "damage stream failed; retrying in 1 s"),
        }
        tokio::time::sleep(DAMAGE_RETRY).await;
    }
}
