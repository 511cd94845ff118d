//! The hub end to end against a fake VMM (local and relayed): sharing, codecs, input, leaving.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};

use super::input::InputForwarder;
use super::phone::REFRESH_AFTER;
use super::{StreamHub, StreamStats, ViewerOptions};
use crate::fake_vmm::{until, FakeVmm};
use crate::input::BrowserInput;
use crate::revocation::Revocation;
use crate::source::{Screen, ScreenSource};
use crate::webrtc::{Viewer, ViewerCommand, ViewerEvent};
use crate::{Codec, EncodedFrame};

struct FakeViewer {
    frames: mpsc::Receiver<ViewerCommand>,
    events: mpsc::Sender<ViewerEvent>,
    /// Why the hub ended this viewer's session.
    ended: oneshot::Receiver<String>,
}

impl FakeViewer {
    fn join(hub: &StreamHub, vmm: &FakeVmm, options: ViewerOptions) -> Self {
        Self::join_source(hub, ScreenSource::local(&vmm.socket), options)
    }

    fn join_source(hub: &StreamHub, source: ScreenSource, options: ViewerOptions) -> Self {
        let (commands, frames) = mpsc::channel(8);
        let (events, events_rx) = mpsc::channel(8);
        let viewer = Viewer {
            answer_sdp: String::new(),
            commands,
            events: events_rx,
            local_addr: "127.0.0.1:9".parse().unwrap(),
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

/// A viewer `label` whose grant is never revoked; only `can_send_input` viewers touch the phone.
fn options(label: &str, can_send_input: bool) -> ViewerOptions {
    ViewerOptions {
        label: label.into(),
        can_send_input,
        revocation: Revocation::never(),
    }
}

/// How long the hub tests wait for a stream to reach a state.
const WAIT: Duration = Duration::from_secs(5);

fn count(c: &AtomicU64) -> u64 {
    c.load(Ordering::Relaxed)
}

/// A 64x48 phone with two viewers joined, "alice" holding the lease and "operator" watching,
/// once the stream subscribed to damage.
async fn lease_holder_and_watcher() -> (FakeVmm, StreamHub, Arc<StreamStats>, FakeViewer, FakeViewer)
{
    let vmm = FakeVmm::start(64, 48);
    let hub = StreamHub::new();
    let holder = FakeViewer::join(&hub, &vmm, options("alice", true));
    let watcher = FakeViewer::join(&hub, &vmm, options("operator", false));
    until("one damage subscription", WAIT, || vmm.subscribers() == 1).await;
    let stats = hub.stats("phone-1").unwrap();
    (vmm, hub, stats, holder, watcher)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_encoder_for_two_viewers_encodes_only_after_damage() {
    let (vmm, hub, stats, mut holder, mut watcher) = lease_holder_and_watcher().await;

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
    watcher
        .send(ViewerEvent::Input(touch.parse().unwrap()))
        .await;
    holder
        .send(ViewerEvent::Input(touch.parse().unwrap()))
        .await;
    holder
        .send(ViewerEvent::Input(
            r#"{"type":"key","key":"BACK","down":true}"#.parse().unwrap(),
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

    // A data-channel message that is not input is counted as dropped; nothing reaches the VMM.
    let garbage = "not input".parse::<BrowserInput>().unwrap_err();
    holder.send(ViewerEvent::BadInput(garbage)).await;
    until("garbage counted as dropped", WAIT, || {
        count(&stats.input_dropped) == 2
    })
    .await;
    assert_eq!(vmm.inputs().len(), 2);

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
    let (vmm, hub, stats, mut h264, mut vp8) = lease_holder_and_watcher().await;

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
    let mut bob = FakeViewer::join(&hub, &vmm, options("bob", true));
    hub.disconnect("phone-1", "lease expired");
    assert_eq!((&mut bob.ended).await.unwrap(), "lease expired");
    assert!(matches!(
        bob.frames.recv().await,
        Some(ViewerCommand::Close)
    ));
    until("stream gone", WAIT, || hub.stats("phone-1").is_none()).await;

    let mut again = FakeViewer::join(&hub, &vmm, options("bob", true));
    again.send(ViewerEvent::Connected(Codec::H264)).await;
    assert!(again.next_frame().await.keyframe);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_viewer_gets_no_frames_and_none_of_its_input_reaches_the_vmm() {
    let vmm = FakeVmm::start(32, 32);
    let hub = StreamHub::new();
    let (revoker, revocation) = Revocation::new();
    let mut alice = FakeViewer::join(
        &hub,
        &vmm,
        ViewerOptions {
            revocation,
            ..options("alice", true)
        },
    );
    let mut operator = FakeViewer::join(&hub, &vmm, options("operator", false));
    alice.send(ViewerEvent::Connected(Codec::H264)).await;
    operator.send(ViewerEvent::Connected(Codec::H264)).await;
    assert!(alice.next_frame().await.keyframe);
    let key = r#"{"type":"key","key":"HOME","down":true}"#;
    alice.send(ViewerEvent::Input(key.parse().unwrap())).await;
    until("alice's key at the VMM", WAIT, || vmm.inputs().len() == 1).await;

    // Her lease ends while her session is still open: whatever she sends now is dropped.
    revoker.revoke("lease ended: released");
    for _ in 0..5 {
        alice.send(ViewerEvent::Input(key.parse().unwrap())).await;
    }
    let stats = hub.stats("phone-1").unwrap();
    until("her input counted as dropped", WAIT, || {
        count(&stats.input_dropped) == 5
    })
    .await;
    tokio::time::sleep(REFRESH_AFTER).await;
    alice.pending_frames();
    operator.pending_frames();
    // The operator, not bound to her lease, keeps watching; she sees nothing more.
    vmm.damage();
    operator.next_frame().await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(alice.pending_frames(), 0, "frames after the lease ended");
    assert_eq!(
        vmm.inputs().len(),
        1,
        "input after the lease ended reached the VMM"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn input_queued_for_the_vmm_is_dropped_once_its_grant_is_revoked() {
    let vmm = FakeVmm::start(32, 32);
    let stats = Arc::new(StreamStats::default());
    let screen = Screen::new(ScreenSource::local(&vmm.socket));
    let mut forwarder = InputForwarder::start(screen, stats.clone(), "phone-1".into());
    let key = |k: &str| {
        format!(r#"{{"type":"key","key":"{k}","down":true}}"#)
            .parse::<BrowserInput>()
            .unwrap()
            .to_screen(32, 32)
    };
    let (revoker, revoked) = Revocation::new();
    revoker.revoke("lease ended: released");
    // Whatever is still queued when its grant ends is dropped at its turn, not delivered.
    forwarder.send(key("BACK"), revoked);
    forwarder.send(key("HOME"), Revocation::never());
    until("the live grant's key delivered", WAIT, || {
        count(&stats.input_forwarded) == 1
    })
    .await;
    assert_eq!(count(&stats.input_dropped), 1);
    let delivered: Vec<serde_json::Value> = vmm
        .inputs()
        .iter()
        .map(|s| serde_json::from_str(s).unwrap())
        .collect();
    assert_eq!(
        delivered,
        [serde_json::json!({"key": "HOME", "down": true})]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relayed_phone_streams_on_damage_and_takes_input_through_the_relay() {
    let vmm = FakeVmm::start(64, 48);
    let url = crate::relay::tests::relay_for(&vmm).await;
    let source = ScreenSource::relay(&url, crate::relay::tests::KEY, "p-1").unwrap();
    let hub = StreamHub::new();
    let mut holder = FakeViewer::join_source(&hub, source, options("alice", true));
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
    holder
        .send(ViewerEvent::Input(touch.parse().unwrap()))
        .await;
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
    let (url, connections) = scripted(vec![b"garbage".to_vec(), good_stream(32, 16, 0x80)]).await;
    let hub = StreamHub::new();
    let source = ScreenSource::relay(&url, "k", "p-1").unwrap();
    let mut viewer = FakeViewer::join_source(&hub, source, options("alice", false));
    viewer.send(ViewerEvent::Connected(Codec::H264)).await;
    assert!(viewer.next_frame().await.keyframe);
    assert!(
        connections.load(Ordering::SeqCst) >= 2,
        "reconnected after the garbage"
    );
    viewer.send(ViewerEvent::Closed("bye".into())).await;
}
