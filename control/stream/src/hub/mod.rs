//! One stream per phone, shared by all its viewers (the lease holder plus operators watching):
//! damage events from the VMM drive the pacer, each frame is converted once and encoded once per
//! codec in use (H.264, plus VP8 only while a viewer negotiated VP8), and the same
//! `Arc<EncodedFrame>` goes to every viewer of that codec. Nothing is encoded while no viewer is
//! connected or the screen is idle. Only viewers granted input may touch the phone.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cloudphone_display::{FramebufferInfo, PixelFormat};
use tokio::sync::{mpsc, oneshot};

use crate::input::translate;
use crate::pacer::PacerAction;
use crate::source::{Pixels, Screen, ScreenSource};
use crate::vmm_api::DamageEvent;
use crate::webrtc::{Viewer, ViewerCommand, ViewerEvent};
use crate::{
    lock, new_encoder, BitrateController, Codec, EncodePacer, EncodedFrame, EncoderSettings,
    I420Frame, PixelLayout, StreamError, VideoEncoder,
};

/// Bitrate a new stream starts at (bits/s).
const INITIAL_BITRATE: u32 = 2_500_000;
/// Re-encode the screen once after this much idleness, so a frame lost at the end of a burst
/// does not leave viewers on a stale picture.
const REFRESH_AFTER: Duration = Duration::from_millis(700);
/// Apply a new bitrate only when it differs this much (each change restarts the encoder).
const BITRATE_HYSTERESIS: f64 = 0.25;
/// ... and at most this often.
const BITRATE_MIN_INTERVAL: Duration = Duration::from_secs(2);
/// Input messages waiting for the VMM beyond this are dropped (the VMM is stuck).
const INPUT_QUEUE: usize = 256;
/// Wait between reconnects of a broken damage stream.
const DAMAGE_RETRY: Duration = Duration::from_secs(1);

/// How a viewer may use the phone (from the lease check in signalling).
#[derive(Debug, Clone)]
pub struct ViewerOptions {
    /// Who is watching, for log lines (user name).
    pub label: String,
    /// Lease holder: its touches and keys go to the phone; everybody else only watches.
    pub can_send_input: bool,
}

/// Counters of one phone's stream (what tests and metrics look at).
#[derive(Debug, Default)]
pub struct StreamStats {
    /// Frames encoded (damage-driven and refreshes; one per codec in use).
    pub encoded: AtomicU64,
    /// Of those, keyframes.
    pub keyframes: AtomicU64,
    /// Encoders created (one per codec in use, again after a geometry change or a failure).
    pub encoders: AtomicU64,
    /// Input messages sent to the VMM.
    pub input_forwarded: AtomicU64,
    /// Input messages refused (watch-only viewer, malformed, VMM backlog).
    pub input_dropped: AtomicU64,
    /// Current target bitrate (bits/s).
    pub bitrate: AtomicU64,
    /// Input accepted from the lease holder → the next screen damage from the phone: the
    /// phone's side of touch-to-photon (delivery to the VMM, guest input handling, drawing).
    pub input_to_damage: LatencyWindow,
    /// Time to convert and encode one frame: the host's main cost per frame.
    pub encode: LatencyWindow,
}

impl StreamStats {
    fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// Counters and latency percentiles as JSON (the stream stats route, tests).
    pub fn snapshot(&self) -> serde_json::Value {
        let n = |c: &AtomicU64| c.load(Ordering::Relaxed);
        serde_json::json!({
            "encoded": n(&self.encoded),
            "keyframes": n(&self.keyframes),
            "encoders": n(&self.encoders),
            "input_forwarded": n(&self.input_forwarded),
            "input_dropped": n(&self.input_dropped),
            "bitrate": n(&self.bitrate),
            "input_to_damage_ms": self.input_to_damage.summary(),
            "encode_ms": self.encode.summary(),
        })
    }
}

/// The last [`LatencyWindow::CAPACITY`] samples of one latency, for percentiles.
#[derive(Debug, Default)]
pub struct LatencyWindow(Mutex<std::collections::VecDeque<Duration>>);

impl LatencyWindow {
    /// Samples kept (older ones fall out).
    pub const CAPACITY: usize = 512;

    /// Add one sample.
    pub fn record(&self, sample: Duration) {
        let mut w = lock(&self.0);
        if w.len() == Self::CAPACITY {
            w.pop_front();
        }
        w.push_back(sample);
    }

    /// `{count, p50, p95, max}` in milliseconds (`null` percentiles before any sample).
    pub fn summary(&self) -> serde_json::Value {
        let mut v: Vec<f64> = lock(&self.0)
            .iter()
            .map(|d| d.as_secs_f64() * 1e3)
            .collect();
        v.sort_by(f64::total_cmp);
        let pct = |q: f64| {
            v.get(((v.len().max(1) - 1) as f64 * q).round() as usize)
                .copied()
        };
        serde_json::json!({ "count": v.len(), "p50": pct(0.5), "p95": pct(0.95), "max": v.last() })
    }
}

/// Screen damage later than this after an input is not counted as that input's redraw.
const INPUT_DAMAGE_WINDOW: Duration = Duration::from_secs(2);

enum Control {
    Join(Box<Join>),
    CloseAll(String),
}

struct Join {
    viewer: Viewer,
    options: ViewerOptions,
    ended: oneshot::Sender<String>,
}

struct PhoneHandle {
    control: mpsc::UnboundedSender<Control>,
    stats: Arc<StreamStats>,
}

type Registry = Arc<Mutex<HashMap<String, PhoneHandle>>>;

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
        let (control, control_rx) = mpsc::unbounded_channel();
        let stats = Arc::new(StreamStats::default());
        let _ = control.send(join);
        phones.insert(
            phone_id.to_owned(),
            PhoneHandle {
                control: control.clone(),
                stats: stats.clone(),
            },
        );
        let stream = PhoneStream::new(
            phone_id.to_owned(),
            Screen::new(source),
            fps_cap,
            stats,
            self.phones.clone(),
            control,
        );
        tokio::spawn(stream.run(control_rx));
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

/// One encoded frame per codec in use.
type CodecFrames = Vec<(Codec, Arc<EncodedFrame>)>;

/// One encode of the screen for the codec viewers receive.
#[derive(Clone, Copy, Debug, PartialEq)]
struct EncodeJob {
    codec: Codec,
    /// A viewer of this codec joined, asked for a keyframe or missed a frame.
    keyframe: bool,
}

/// The pixel source and encoders of a stream with viewers.
struct Encoding {
    info: FramebufferInfo,
    pixels: Pixels,
    layout: PixelLayout,
    frame: I420Frame,
    fps: u32,
    /// One encoder per codec some connected viewer receives (created on first use).
    encoders: Vec<Box<dyn VideoEncoder>>,
}

impl Encoding {
    fn open(info: FramebufferInfo, pixels: Pixels, fps: u32) -> Result<Self, StreamError> {
        let layout = match info.format {
            PixelFormat::B8G8R8X8 | PixelFormat::B8G8R8A8 => PixelLayout::Bgrx,
            PixelFormat::R8G8B8X8 | PixelFormat::R8G8B8A8 => PixelLayout::Rgbx,
            other => {
                return Err(StreamError::Geometry(format!(
                    "framebuffer format {other:?} is not supported (B8G8R8X8, B8G8R8A8, R8G8B8X8, R8G8B8A8 are)"
                )))
            }
        };
        // I420 (and H.264) need even sizes: drop an odd last row/column.
        let frame = I420Frame::new(info.width & !1, info.height & !1)?;
        Ok(Self {
            info,
            pixels,
            layout,
            frame,
            fps,
            encoders: Vec::new(),
        })
    }

    /// Convert the screen once and encode it for each job; encoders of codecs no job names are
    /// dropped, missing ones created at `bitrate`. Returns the frames and how many encoders
    /// were created.
    fn encode(
        &mut self,
        jobs: &[EncodeJob],
        bitrate: u32,
        bitrate_changed: bool,
    ) -> Result<(CodecFrames, u64), StreamError> {
        self.encoders
            .retain(|e| jobs.iter().any(|j| j.codec == e.codec()));
        let (frame, stride, layout) = (&mut self.frame, self.info.stride, self.layout);
        self.pixels
            .with_frame(&self.info, |pixels| frame.fill_from(pixels, stride, layout))?;
        let mut created = 0;
        let mut frames = Vec::with_capacity(jobs.len());
        for job in jobs {
            let encoder = match self.encoders.iter().position(|e| e.codec() == job.codec) {
                Some(i) => {
                    let encoder = &mut self.encoders[i];
                    if bitrate_changed {
                        encoder.set_bitrate(bitrate)?;
                    }
                    encoder
                }
                None => {
                    let settings = EncoderSettings {
                        width: self.frame.width(),
                        height: self.frame.height(),
                        bitrate,
                        max_fps: self.fps as f32,
                    };
                    created += 1;
                    self.encoders.push(new_encoder(job.codec, settings)?);
                    self.encoders.last_mut().expect("just pushed")
                }
            };
            if job.keyframe {
                encoder.request_keyframe();
            }
            frames.push((job.codec, Arc::new(encoder.encode(&self.frame)?)));
        }
        Ok((frames, created))
    }
}

struct PhoneStream {
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
    /// When the oldest input not yet followed by screen damage was accepted.
    pending_input: Option<Instant>,
    bitrate: BitrateController,
    applied_bitrate: u32,
    bitrate_changed: Instant,
    encoding: Option<Box<Encoding>>,
    screen_size: Option<(u32, u32)>,
    input: mpsc::Sender<String>,
}

impl PhoneStream {
    fn new(
        id: String,
        screen: Screen,
        fps: u32,
        stats: Arc<StreamStats>,
        registry: Registry,
        control: mpsc::UnboundedSender<Control>,
    ) -> Self {
        let (events_tx, events_rx) = mpsc::channel(256);
        let (input, input_rx) = mpsc::channel(INPUT_QUEUE);
        tokio::spawn(forward_input(
            screen.clone(),
            input_rx,
            stats.clone(),
            id.clone(),
        ));
        let bitrate = BitrateController::new(INITIAL_BITRATE);
        stats
            .bitrate
            .store(bitrate.bitrate() as u64, Ordering::Relaxed);
        Self {
            pending_input: None,
            pacer: EncodePacer::new(fps as f32, REFRESH_AFTER),
            applied_bitrate: bitrate.bitrate(),
            bitrate,
            bitrate_changed: Instant::now(),
            id,
            screen,
            fps,
            stats,
            registry,
            control,
            viewers: HashMap::new(),
            next_viewer: 0,
            events_tx,
            events_rx,
            encoding: None,
            screen_size: None,
            input,
        }
    }

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
            ViewerEvent::Input(message) => self.on_input(id, message).await,
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

    async fn on_input(&mut self, id: u64, message: String) {
        let Some(slot) = self.viewers.get_mut(&id) else {
            return;
        };
        if !slot.options.can_send_input {
            StreamStats::bump(&self.stats.input_dropped);
            if !std::mem::replace(&mut slot.warned_input, true) {
                tracing::warn!(phone = %self.id, viewer = %slot.options.label, "dropping input from a watch-only viewer (not the lease holder)");
            }
            return;
        }
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
        match translate(&message, width, height) {
            Ok(body) => {
                // Presses and moves make the phone redraw; releases usually do not.
                if body.contains("\"down\":true") {
                    self.pending_input.get_or_insert_with(Instant::now);
                }
                if self.input.try_send(body).is_err() {
                    StreamStats::bump(&self.stats.input_dropped);
                    tracing::warn!(phone = %self.id, "dropping input: the VMM is not keeping up");
                }
            }
            Err(why) => {
                StreamStats::bump(&self.stats.input_dropped);
                tracing::debug!(phone = %self.id, %why, "dropping malformed input message");
            }
        }
    }

    fn on_damage(&mut self, event: DamageEvent) {
        if let Some(since) = self.pending_input.take() {
            // Damage long after an input was not caused by it (the app ignored the touch).
            if since.elapsed() < INPUT_DAMAGE_WINDOW {
                self.stats.input_to_damage.record(since.elapsed());
            }
        }
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
        self.viewers.values().any(|v| v.codec.is_some())
    }

    /// What to encode now: each codec a connected viewer receives, as a keyframe when one of
    /// them needs one.
    fn encode_jobs(&self) -> Vec<EncodeJob> {
        let mut jobs: Vec<EncodeJob> = Vec::new();
        for slot in self.viewers.values() {
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
    fn fan_out(&mut self, frames: &[(Codec, Arc<EncodedFrame>)]) {
        for slot in self.viewers.values_mut() {
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

/// Send input bodies to the VMM one at a time, in order.
async fn forward_input(
    screen: Screen,
    mut queue: mpsc::Receiver<String>,
    stats: Arc<StreamStats>,
    phone: String,
) {
    while let Some(body) = queue.recv().await {
        match screen.put_input(body).await {
            Ok(()) => StreamStats::bump(&stats.input_forwarded),
            Err(e) => {
                StreamStats::bump(&stats.input_dropped);
                tracing::warn!(%phone, error = %e, "input not delivered");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fake_vmm::{until, FakeVmm};

    struct FakeViewer {
        frames: mpsc::Receiver<ViewerCommand>,
        events: mpsc::Sender<ViewerEvent>,
        /// Why the hub ended this viewer's session.
        ended: oneshot::Receiver<String>,
    }

    impl FakeViewer {
        fn join(hub: &StreamHub, vmm: &FakeVmm, label: &str, can_send_input: bool) -> Self {
            Self::join_source(hub, ScreenSource::local(&vmm.socket), label, can_send_input)
        }

        fn join_source(
            hub: &StreamHub,
            source: ScreenSource,
            label: &str,
            can_send_input: bool,
        ) -> Self {
            let (commands, frames) = mpsc::channel(8);
            let (events, events_rx) = mpsc::channel(8);
            let viewer = Viewer {
                answer_sdp: String::new(),
                commands,
                events: events_rx,
                local_addr: "127.0.0.1:9".parse().unwrap(),
            };
            let options = ViewerOptions {
                label: label.into(),
                can_send_input,
            };
            let ended = hub.attach("phone-1", source, 30, viewer, options);
            Self {
                frames,
                events,
                ended,
            }
        }

        async fn send(&self, event: ViewerEvent) {
            self.events.send(event).await.unwrap();
        }

        async fn next_frame(&mut self) -> Arc<EncodedFrame> {
            match tokio::time::timeout(Duration::from_secs(10), self.frames.recv()).await {
                Ok(Some(ViewerCommand::Frame(f))) => f,
                Ok(Some(ViewerCommand::Close)) | Ok(None) => panic!("viewer closed"),
                Err(_) => panic!("no frame within 10 s"),
            }
        }

        fn pending_frames(&mut self) -> usize {
            std::iter::from_fn(|| self.frames.try_recv().ok()).count()
        }
    }

    /// How long the hub tests wait for a stream to reach a state.
    const WAIT: Duration = Duration::from_secs(5);

    fn count(c: &AtomicU64) -> u64 {
        c.load(Ordering::Relaxed)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn one_encoder_for_two_viewers_encodes_only_after_damage() {
        let vmm = FakeVmm::start(64, 48);
        let hub = StreamHub::new();
        let mut holder = FakeViewer::join(&hub, &vmm, "alice", true);
        let mut watcher = FakeViewer::join(&hub, &vmm, "operator", false);
        until("one damage subscription", WAIT, || vmm.subscribers() == 1).await;
        let stats = hub.stats("phone-1").unwrap();

        // Damage before anybody is connected encodes nothing.
        vmm.damage();
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(count(&stats.encoded), 0);

        // Joining: both viewers start on a keyframe.
        holder.send(ViewerEvent::Connected(Codec::H264)).await;
        watcher.send(ViewerEvent::Connected(Codec::H264)).await;
        assert!(holder.next_frame().await.keyframe);
        assert!(watcher.next_frame().await.keyframe);

        // Let the join frames and the idle refresh pass, then nothing more while idle.
        tokio::time::sleep(REFRESH_AFTER * 2).await;
        holder.pending_frames();
        watcher.pending_frames();
        let settled = count(&stats.encoded);
        tokio::time::sleep(Duration::from_millis(1500)).await;
        assert_eq!(count(&stats.encoded), settled, "encoded while idle");
        assert_eq!((holder.pending_frames(), watcher.pending_frames()), (0, 0));

        // One damage event: one encode, the same access unit to both viewers.
        vmm.damage();
        let a = holder.next_frame().await;
        let b = watcher.next_frame().await;
        assert!(
            Arc::ptr_eq(&a, &b),
            "both viewers get the one encoded frame"
        );
        assert_eq!(count(&stats.encoded), settled + 1);
        assert_eq!(count(&stats.encoders), 1, "one encoder for the phone");

        // A PLI makes the next frame a keyframe.
        watcher.send(ViewerEvent::KeyframeRequest).await;
        assert!(watcher.next_frame().await.keyframe);

        // Input: the watcher's is dropped, the holder's reaches the VMM in screen pixels.
        let touch = r#"{"type":"touch","pointers":[{"id":0,"x":0.5,"y":1.0,"down":true}]}"#;
        watcher.send(ViewerEvent::Input(touch.into())).await;
        holder.send(ViewerEvent::Input(touch.into())).await;
        holder
            .send(ViewerEvent::Input(
                r#"{"type":"key","key":"BACK","down":true}"#.into(),
            ))
            .await;
        until("two inputs at the VMM", WAIT, || vmm.inputs().len() == 2).await;
        tokio::time::sleep(Duration::from_millis(200)).await;
        let inputs: Vec<serde_json::Value> = vmm
            .inputs()
            .iter()
            .map(|s| serde_json::from_str(s).unwrap())
            .collect();
        assert_eq!(
            inputs[0],
            serde_json::json!({"touch":[{"id":0,"x":32,"y":47,"down":true}]})
        );
        assert_eq!(inputs[1], serde_json::json!({"key":"BACK","down":true}));
        assert_eq!(count(&stats.input_dropped), 1);
        assert_eq!(count(&stats.input_forwarded), 2);

        // The phone redraws after the input: that wait is timed, as is every encode.
        vmm.damage();
        until("input -> damage timed", WAIT, || {
            stats.snapshot()["input_to_damage_ms"]["count"] == 1
        })
        .await;
        let snapshot = stats.snapshot();
        assert!(
            snapshot["encode_ms"]["count"].as_u64().unwrap() >= 1,
            "{snapshot}"
        );
        assert!(
            snapshot["input_to_damage_ms"]["p50"].as_f64().unwrap() > 0.0,
            "{snapshot}"
        );

        // Everybody leaves: the stream stops and unsubscribes.
        holder.send(ViewerEvent::Closed("bye".into())).await;
        watcher.send(ViewerEvent::Closed("bye".into())).await;
        until("stream gone", WAIT, || hub.stats("phone-1").is_none()).await;
        until("damage unsubscribed", WAIT, || vmm.subscribers() == 0).await;
    }

    /// An H.264 access unit in Annex-B form starts with a start code.
    fn is_h264(frame: &EncodedFrame) -> bool {
        frame.data.starts_with(&[0, 0, 0, 1]) || frame.data.starts_with(&[0, 0, 1])
    }

    /// A VP8 keyframe: frame-type bit clear, then the 0x9d012a start code and the size.
    fn vp8_keyframe_size(frame: &EncodedFrame) -> Option<(u16, u16)> {
        let d = &frame.data;
        (d.len() > 10 && d[0] & 1 == 0 && d[3..6] == [0x9d, 0x01, 0x2a]).then(|| {
            (
                u16::from_le_bytes([d[6], d[7]]) & 0x3fff,
                u16::from_le_bytes([d[8], d[9]]) & 0x3fff,
            )
        })
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn viewers_of_different_codecs_each_get_their_codec_and_vp8_stops_with_its_viewer() {
        let vmm = FakeVmm::start(64, 48);
        let hub = StreamHub::new();
        let mut h264 = FakeViewer::join(&hub, &vmm, "alice", true);
        let mut vp8 = FakeViewer::join(&hub, &vmm, "operator", false);
        until("one damage subscription", WAIT, || vmm.subscribers() == 1).await;
        let stats = hub.stats("phone-1").unwrap();

        h264.send(ViewerEvent::Connected(Codec::H264)).await;
        vp8.send(ViewerEvent::Connected(Codec::Vp8)).await;
        let first = h264.next_frame().await;
        assert!(first.keyframe && is_h264(&first));
        let first = vp8.next_frame().await;
        assert_eq!(vp8_keyframe_size(&first), Some((64, 48)));

        // Settle, then one damage: one frame per codec, each to its own viewer.
        tokio::time::sleep(REFRESH_AFTER * 2).await;
        h264.pending_frames();
        vp8.pending_frames();
        let settled = count(&stats.encoded);
        vmm.damage();
        assert!(is_h264(&*h264.next_frame().await));
        let delta = vp8.next_frame().await;
        assert!(!delta.keyframe && !is_h264(&delta) && !delta.data.is_empty());
        assert_eq!(count(&stats.encoded), settled + 2);
        assert_eq!(count(&stats.encoders), 2, "one encoder per codec");

        // The VP8 viewer leaves: damage encodes H.264 only.
        vp8.send(ViewerEvent::Closed("bye".into())).await;
        tokio::time::sleep(REFRESH_AFTER * 2).await;
        h264.pending_frames();
        let settled = count(&stats.encoded);
        vmm.damage();
        assert!(is_h264(&*h264.next_frame().await));
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(
            count(&stats.encoded),
            settled + 1,
            "no VP8 encode without a VP8 viewer"
        );
        h264.send(ViewerEvent::Closed("bye".into())).await;
        until("stream gone", WAIT, || hub.stats("phone-1").is_none()).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn disconnect_ends_every_viewer_and_a_new_viewer_restarts_the_stream() {
        let vmm = FakeVmm::start(32, 32);
        let hub = StreamHub::new();
        let mut bob = FakeViewer::join(&hub, &vmm, "bob", true);
        hub.disconnect("phone-1", "lease expired");
        assert_eq!((&mut bob.ended).await.unwrap(), "lease expired");
        assert!(matches!(
            bob.frames.recv().await,
            Some(ViewerCommand::Close)
        ));
        until("stream gone", WAIT, || hub.stats("phone-1").is_none()).await;

        let mut again = FakeViewer::join(&hub, &vmm, "bob", true);
        again.send(ViewerEvent::Connected(Codec::H264)).await;
        assert!(again.next_frame().await.keyframe);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_relayed_phone_streams_on_damage_and_takes_input_through_the_relay() {
        let vmm = FakeVmm::start(64, 48);
        let url = crate::relay::tests::relay_for(&vmm).await;
        let source = ScreenSource::relay(&url, crate::relay::tests::KEY, "p-1").unwrap();
        let hub = StreamHub::new();
        let mut holder = FakeViewer::join_source(&hub, source, "alice", true);
        until("the relay's damage subscription", WAIT, || {
            vmm.subscribers() == 1
        })
        .await;
        let stats = hub.stats("phone-1").unwrap();

        holder.send(ViewerEvent::Connected(Codec::H264)).await;
        assert!(holder.next_frame().await.keyframe);
        tokio::time::sleep(REFRESH_AFTER * 2).await;
        holder.pending_frames();
        let settled = count(&stats.encoded);
        vmm.damage();
        let frame = holder.next_frame().await;
        assert!(!frame.data.is_empty());
        assert_eq!(
            count(&stats.encoded),
            settled + 1,
            "one encode per relayed update"
        );

        let touch = r#"{"type":"touch","pointers":[{"id":0,"x":0.5,"y":1.0,"down":true}]}"#;
        holder.send(ViewerEvent::Input(touch.into())).await;
        until("input at the VMM", WAIT, || vmm.inputs().len() == 1).await;
        let input: serde_json::Value = serde_json::from_str(&vmm.inputs()[0]).unwrap();
        assert_eq!(
            input,
            serde_json::json!({"touch":[{"id":0,"x":32,"y":47,"down":true}]})
        );

        holder.send(ViewerEvent::Closed("bye".into())).await;
        until("stream gone", WAIT, || hub.stats("phone-1").is_none()).await;
        until("relay unsubscribed from the VMM", WAIT, || {
            vmm.subscribers() == 0
        })
        .await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_garbled_relay_stream_is_dropped_and_reconnected() {
        use crate::relay::tests::{good_stream, scripted};
        let (url, connections) =
            scripted(vec![b"garbage".to_vec(), good_stream(32, 16, 0x80)]).await;
        let hub = StreamHub::new();
        let source = ScreenSource::relay(&url, "k", "p-1").unwrap();
        let mut viewer = FakeViewer::join_source(&hub, source, "alice", false);
        viewer.send(ViewerEvent::Connected(Codec::H264)).await;
        assert!(viewer.next_frame().await.keyframe);
        assert!(
            connections.load(Ordering::SeqCst) >= 2,
            "reconnected after the garbage"
        );
        viewer.send(ViewerEvent::Closed("bye".into())).await;
    }
}
