//! One WebRTC viewer of a phone screen: the browser's SDP offer in, our answer out, then encoded
//! frames (H.264, or VP8 when the browser offers no usable H.264) pushed to the browser over SRTP
//! and input messages coming back on a data channel.
//!
//! We use `str0m` (sans-IO): the session is a plain tokio task owning one UDP socket, so a host
//! serves many viewers without a thread each, and tests drive it with a str0m client in-process.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Instant;

use str0m::change::{SdpAnswer, SdpOffer};
use str0m::channel::ChannelId;
use str0m::format::{Codec as RtpCodec, PayloadParams};
use str0m::media::{MediaKind, MediaTime, Mid, Pt};
use str0m::net::{Protocol, Receive};
use str0m::{bwe::BweKind, Candidate, Event, IceConnectionState, Input, Output, Rtc, RtcConfig};
use tokio::net::UdpSocket;
use tokio::sync::mpsc;

use crate::input::{BrowserInput, InputError};
use crate::{Codec, EncodedFrame, StreamError};

/// Cap on a data-channel input message: anything larger is not an input event.
const MAX_INPUT_MESSAGE: usize = 4096;

/// What the streaming side tells a viewer session.
pub enum ViewerCommand {
    /// Send this access unit (shared between all viewers of the phone).
    Frame(Arc<EncodedFrame>),
    /// End the session.
    Close,
}

/// What a viewer session reports back.
#[derive(Debug, Clone, PartialEq)]
pub enum ViewerEvent {
    /// ICE + DTLS are up and the video track is negotiated with this codec: send it a keyframe.
    Connected(Codec),
    /// The browser asked for a keyframe (PLI/FIR).
    KeyframeRequest,
    /// A new send-bandwidth estimate from the transport (bits/s).
    Bitrate(u32),
    /// An input event from the data channel, parsed and checked here, once.
    Input(BrowserInput),
    /// A text message on the input data channel that is not an input event (counted as
    /// dropped input by the hub).
    BadInput(InputError),
    /// The session ended (reason).
    Closed(String),
}

/// A running viewer: send it frames, read its events.
pub struct Viewer {
    /// The SDP answer to return to the browser.
    pub answer_sdp: String,
    /// Frames and close requests for the session.
    pub commands: mpsc::Sender<ViewerCommand>,
    /// Connection, keyframe, bitrate, input and close events.
    pub events: mpsc::Receiver<ViewerEvent>,
    /// The UDP address the session listens on (its host candidate).
    pub local_addr: SocketAddr,
}

/// Accept the browser's SDP `offer` and start a session bound to `bind_ip` (the address the
/// browser can reach; loopback for local tests). The offer's video m-line must accept H.264
/// (preferred: constrained baseline, packetization-mode 1) or VP8; a browser can force VP8 by
/// offering only VP8 (`setCodecPreferences`).
pub async fn start_viewer(offer: &str, bind_ip: IpAddr) -> Result<Viewer, StreamError> {
    let parsed = SdpOffer::from_sdp_string(offer)
        .map_err(|e| StreamError::Signalling(format!("unparseable SDP offer: {e}")))?;
    check_video_codecs(offer)?;
    let socket = UdpSocket::bind(SocketAddr::new(bind_ip, 0))
        .await
        .map_err(|e| StreamError::Signalling(format!("bind UDP on {bind_ip}: {e}")))?;
    let local_addr = socket
        .local_addr()
        .map_err(|e| StreamError::Signalling(e.to_string()))?;
    let mut rtc = RtcConfig::new()
        .clear_codecs()
        .enable_h264(true)
        .enable_vp8(true)
        .enable_bwe(Some(str0m::bwe::Bitrate::kbps(2000)))
        .build(Instant::now());
    let candidate = Candidate::host(local_addr, "udp")
        .map_err(|e| StreamError::Signalling(format!("host candidate {local_addr}: {e}")))?;
    rtc.add_local_candidate(candidate);
    let answer: SdpAnswer = rtc
        .sdp_api()
        .accept_offer(parsed)
        .map_err(|e| StreamError::Signalling(format!("offer rejected: {e}")))?;
    let (cmd_tx, cmd_rx) = mpsc::channel(8);
    let (ev_tx, ev_rx) = mpsc::channel(64);
    tokio::spawn(async move {
        let mut session = Session {
            rtc,
            socket,
            local_addr,
            events: ev_tx,
            video: None,
            channel: None,
            start: Instant::now(),
        };
        let reason = match session.run(cmd_rx).await {
            Ok(reason) => reason,
            Err(e) => e.to_string(),
        };
        tracing::info!(%local_addr, %reason, "viewer session ended");
        let _ = session.events.send(ViewerEvent::Closed(reason)).await;
    });
    Ok(Viewer {
        answer_sdp: answer.to_sdp_string(),
        commands: cmd_tx,
        events: ev_rx,
        local_addr,
    })
}

struct Session {
    rtc: Rtc,
    socket: UdpSocket,
    local_addr: SocketAddr,
    events: mpsc::Sender<ViewerEvent>,
    video: Option<(Mid, Pt, Codec)>,
    channel: Option<ChannelId>,
    start: Instant,
}

impl Session {
    async fn run(
        &mut self,
        mut commands: mpsc::Receiver<ViewerCommand>,
    ) -> Result<String, StreamError> {
        let mut buf = vec![0u8; 2048];
        loop {
            let deadline = match self.drain_output().await? {
                Some(deadline) => deadline,
                None => return Ok("browser disconnected".into()),
            };
            tokio::select! {
                received = self.socket.recv_from(&mut buf) => {
                    let (n, source) = received.map_err(|e| StreamError::Signalling(format!("UDP receive: {e}")))?;
                    let Ok(contents) = buf[..n].try_into() else { continue };
                    let input = Input::Receive(Instant::now(), Receive {
                        proto: Protocol::Udp, source, destination: self.local_addr, contents,
                    });
                    self.rtc.handle_input(input).map_err(rtc_error)?;
                }
                command = commands.recv() => match command {
                    Some(ViewerCommand::Frame(frame)) => self.write_frame(&frame)?,
                    Some(ViewerCommand::Close) | None => return Ok("closed by the host".into()),
                },
                _ = tokio::time::sleep_until(tokio::time::Instant::from_std(deadline)) => {
                    self.rtc.handle_input(Input::Timeout(Instant::now())).map_err(rtc_error)?;
                }
            }
        }
    }

    /// Send pending datagrams and handle events; returns the next timeout, or None when the
    /// peer is gone.
    async fn drain_output(&mut self) -> Result<Option<Instant>, StreamError> {
        loop {
            match self.rtc.poll_output().map_err(rtc_error)? {
                Output::Timeout(deadline) => return Ok(Some(deadline)),
                Output::Transmit(t) => {
                    if let Err(e) = self.socket.send_to(&t.contents, t.destination).await {
                        tracing::debug!(error = %e, "UDP send failed");
                    }
                }
                Output::Event(event) => {
                    if !self.on_event(event).await? {
                        return Ok(None);
                    }
                }
            }
        }
    }

    /// Handle one session event; `Ok(false)` when the browser went away.
    async fn on_event(&mut self, event: Event) -> Result<bool, StreamError> {
        let report = match event {
            Event::IceConnectionStateChange(IceConnectionState::Disconnected) => return Ok(false),
            // str0m announces the media once SRTP is up, i.e. after `Event::Connected`: that
            // is when frames can flow.
            Event::MediaAdded(media) if media.kind == MediaKind::Video => {
                let Some((pt, codec)) = self
                    .rtc
                    .writer(media.mid)
                    .and_then(|w| pick_codec(w.payload_params()))
                else {
                    return Err(StreamError::Signalling(format!(
                        "the browser offered no video codec we send ({SENDABLE})"
                    )));
                };
                tracing::info!(?codec, %pt, "video negotiated");
                self.video = Some((media.mid, pt, codec));
                Some(ViewerEvent::Connected(codec))
            }
            Event::KeyframeRequest(_) => Some(ViewerEvent::KeyframeRequest),
            Event::EgressBitrateEstimate(
                BweKind::Twcc { estimate, .. } | BweKind::Remb { estimate, .. },
            ) => Some(ViewerEvent::Bitrate(
                estimate.as_u64().min(u32::MAX as u64) as u32
            )),
            Event::ChannelOpen(id, _label) => {
                self.channel = Some(id);
                None
            }
            Event::ChannelData(data) if !data.binary && data.data.len() <= MAX_INPUT_MESSAGE => {
                String::from_utf8(data.data)
                    .ok()
                    .map(|text| match text.parse() {
                        Ok(input) => ViewerEvent::Input(input),
                        Err(why) => ViewerEvent::BadInput(why),
                    })
            }
            _ => None,
        };
        if let Some(report) = report {
            // A full event queue means nobody is reading: drop rather than stall the media path.
            let _ = self.events.try_send(report);
        }
        Ok(true)
    }

    fn write_frame(&mut self, frame: &EncodedFrame) -> Result<(), StreamError> {
        let Some((mid, pt, _)) = self.video else {
            return Ok(());
        };
        let Some(writer) = self.rtc.writer(mid) else {
            return Ok(());
        };
        let now = Instant::now();
        let rtp_time = MediaTime::from_micros(now.duration_since(self.start).as_micros() as u64);
        writer
            .write(pt, now, rtp_time, frame.data.clone())
            .map_err(rtc_error)?;
        // str0m packetizes a written frame on its next timeout: run it now, so frames that
        // arrive faster than the session's timer never pile up (past 512 queued frames str0m
        // refuses the write and the session would end).
        self.rtc
            .handle_input(Input::Timeout(now))
            .map_err(rtc_error)
    }
}

/// What [`pick_codec`] accepts, for error messages.
const SENDABLE: &str = "H.264 with packetization-mode 1, or VP8";

/// Refuse an offer whose video section lists no codec we can send, before answering it (a
/// browser would otherwise connect and wait for video forever).
fn check_video_codecs(sdp: &str) -> Result<(), StreamError> {
    let mut in_video = false;
    let mut saw_video = false;
    for line in sdp.lines() {
        if let Some(media) = line.strip_prefix("m=") {
            in_video = media.starts_with("video ");
            saw_video |= in_video;
        } else if let Some(map) = line.strip_prefix("a=rtpmap:").filter(|_| in_video) {
            let name = map.split([' ', '/']).nth(1).unwrap_or("");
            if name.eq_ignore_ascii_case("H264") || name.eq_ignore_ascii_case("VP8") {
                return Ok(());
            }
        }
    }
    Err(StreamError::Signalling(if saw_video {
        format!("the browser offered no video codec we send ({SENDABLE})")
    } else {
        "the offer has no video m-line: add a recvonly video transceiver".into()
    }))
}

/// The payload type to send on, from what both sides agreed: H.264 constrained baseline with
/// packetization-mode 1 (what OpenH264 produces and every browser decodes in hardware), else any
/// H.264 with packetization-mode 1, else VP8.
fn pick_codec<'a>(params: impl Iterator<Item = &'a PayloadParams>) -> Option<(Pt, Codec)> {
    let mut best: Option<(u8, Pt, Codec)> = None;
    for p in params {
        let spec = p.spec();
        let rank = match spec.codec {
            RtpCodec::H264 if spec.format.packetization_mode == Some(1) => {
                if spec
                    .format
                    .profile_level_id
                    .is_some_and(|id| id >> 16 == 0x42)
                {
                    0
                } else {
                    1
                }
            }
            RtpCodec::Vp8 => 2,
            _ => continue,
        };
        let codec = if rank == 2 { Codec::Vp8 } else { Codec::H264 };
        if best.is_none_or(|(r, _, _)| rank < r) {
            best = Some((rank, p.pt(), codec));
        }
    }
    best.map(|(_, pt, codec)| (pt, codec))
}

fn rtc_error(e: str0m::RtcError) -> StreamError {
    StreamError::Signalling(format!("WebRTC: {e}"))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::codec::testing::phone_frame;
    use crate::codec::EncoderSettings;
    use crate::encoders::new_encoder;
    use std::time::Duration;
    use str0m::media::Direction;

    /// The input message the browser stand-in sends back once video arrived.
    const HOME: &str = r#"{"type":"key","key":"HOME","down":true}"#;

    /// A browser stand-in: a str0m client that offers recvonly video + an "input" channel.
    pub(crate) struct Browser {
        pub(crate) rtc: Rtc,
        socket: UdpSocket,
        addr: SocketAddr,
    }

    impl Browser {
        /// A browser that decodes H.264 (what every browser offers).
        pub(crate) async fn new() -> (Self, String, str0m::change::SdpPendingOffer) {
            Self::offering(&[Codec::H264]).await
        }

        /// A browser whose video m-line lists only `codecs` (none: only VP9, which we never
        /// send).
        pub(crate) async fn offering(
            codecs: &[Codec],
        ) -> (Self, String, str0m::change::SdpPendingOffer) {
            let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
            let addr = socket.local_addr().unwrap();
            let mut rtc = RtcConfig::new()
                .clear_codecs()
                .enable_h264(codecs.contains(&Codec::H264))
                .enable_vp8(codecs.contains(&Codec::Vp8))
                .enable_vp9(codecs.is_empty())
                .build(Instant::now());
            rtc.add_local_candidate(Candidate::host(addr, "udp").unwrap());
            let mut change = rtc.sdp_api();
            change.add_media(MediaKind::Video, Direction::RecvOnly, None, None, None);
            change.add_channel("input".into());
            let (offer, pending) = change.apply().unwrap();
            (Self { rtc, socket, addr }, offer.to_sdp_string(), pending)
        }

        /// Run until `done` says so with the events seen; gives up after `limit`.
        /// Drive the connection until `check` holds; false after `limit`. A data-channel write
        /// leaves only while the `Rtc` is polled, so waiting for its effect must keep pumping.
        pub(crate) async fn pump_until(
            &mut self,
            limit: Duration,
            mut check: impl FnMut() -> bool,
        ) -> bool {
            let end = Instant::now() + limit;
            while !check() {
                if Instant::now() >= end {
                    return false;
                }
                self.pump(Duration::from_millis(25), |_, _| false).await;
            }
            true
        }

        pub(crate) async fn pump(
            &mut self,
            limit: Duration,
            mut on_event: impl FnMut(&mut Rtc, Event) -> bool,
        ) -> bool {
            let end = Instant::now() + limit;
            let mut buf = vec![0u8; 2048];
            while Instant::now() < end {
                let deadline = loop {
                    match self.rtc.poll_output().unwrap() {
                        Output::Timeout(t) => break t,
                        Output::Transmit(t) => {
                            self.socket
                                .send_to(&t.contents, t.destination)
                                .await
                                .unwrap();
                        }
                        Output::Event(e) => {
                            if on_event(&mut self.rtc, e) {
                                return true;
                            }
                        }
                    }
                };
                let wait = deadline.min(Instant::now() + Duration::from_millis(20));
                tokio::select! {
                    r = self.socket.recv_from(&mut buf) => {
                        let (n, source) = r.unwrap();
                        let input = Input::Receive(Instant::now(), Receive {
                            proto: Protocol::Udp, source, destination: self.addr,
                            contents: buf[..n].try_into().unwrap(),
                        });
                        self.rtc.handle_input(input).unwrap();
                    }
                    _ = tokio::time::sleep_until(tokio::time::Instant::from_std(wait)) => {
                        self.rtc.handle_input(Input::Timeout(Instant::now())).unwrap();
                    }
                }
            }
            false
        }
    }

    /// Offer `codecs`; once the session reports its codec, keep sending it one phone-like
    /// keyframe of that codec until the browser has it whole, and send one input message back.
    /// Checks the session reported the codec that arrived and the input; returns that codec.
    async fn exchange_one_frame(codecs: &[Codec]) -> Codec {
        let (mut browser, offer, pending) = Browser::offering(codecs).await;
        let viewer = start_viewer(&offer, "127.0.0.1".parse().unwrap())
            .await
            .unwrap();
        let answer = SdpAnswer::from_sdp_string(&viewer.answer_sdp).unwrap();
        browser
            .rtc
            .sdp_api()
            .accept_answer(pending, answer)
            .unwrap();

        let keyframe = |codec| {
            let settings = EncoderSettings {
                width: 320,
                height: 240,
                bitrate: 1_000_000,
                max_fps: 30.0,
            };
            let mut encoder = new_encoder(codec, settings).unwrap();
            Arc::new(encoder.encode(&phone_frame(320, 240, 0)).unwrap())
        };
        let vp8_key = keyframe(Codec::Vp8);
        let h264_key = keyframe(Codec::H264);
        let (commands, mut events) = (viewer.commands.clone(), viewer.events);
        let (seen_tx, mut seen) = mpsc::unbounded_channel();
        let session = tokio::spawn({
            let (vp8_key, h264_key) = (vp8_key.clone(), h264_key.clone());
            async move {
                let mut frame = None;
                let mut resend = tokio::time::interval(Duration::from_millis(50));
                loop {
                    tokio::select! {
                        Some(event) = events.recv() => {
                            if let ViewerEvent::Connected(codec) = event {
                                frame = Some(if codec == Codec::Vp8 { vp8_key.clone() } else { h264_key.clone() });
                            }
                            let _ = seen_tx.send(event);
                        }
                        _ = resend.tick() => {
                            if let Some(frame) = &frame {
                                let _ = commands.send(ViewerCommand::Frame(frame.clone())).await;
                            }
                        }
                    }
                }
            }
        });
        // H.264 is re-framed by the depacketizer, so decode it; a VP8 frame comes out of RTP
        // byte for byte.
        let mut decoder = openh264::decoder::Decoder::new().unwrap();
        let (mut received, mut sent_input) = (None, false);
        let got_everything = browser
            .pump(Duration::from_secs(20), |rtc, event| {
                match event {
                    Event::ChannelOpen(id, _) => {
                        let mut ch = rtc.channel(id).unwrap();
                        sent_input = ch.write(false, HOME.as_bytes()).unwrap();
                    }
                    Event::MediaData(data) if *data.data == *vp8_key.data => {
                        received = Some(Codec::Vp8)
                    }
                    Event::MediaData(data) => {
                        if let Ok(Some(_)) = decoder.decode(&data.data) {
                            received = Some(Codec::H264);
                        }
                    }
                    _ => {}
                }
                received.is_some() && sent_input
            })
            .await;
        assert!(
            got_everything,
            "received={received:?} sent_input={sent_input}"
        );
        let mut events = Vec::new();
        while let Ok(Some(event)) = tokio::time::timeout(Duration::from_secs(5), seen.recv()).await
        {
            let is_input = matches!(event, ViewerEvent::Input(_));
            events.push(event);
            if is_input {
                break;
            }
        }
        session.abort();
        let received = received.unwrap();
        assert!(
            events.contains(&ViewerEvent::Connected(received)),
            "the codec received is the one the session reported: {events:?}"
        );
        assert!(
            events.contains(&ViewerEvent::Input(HOME.parse().unwrap())),
            "{events:?}"
        );
        viewer.commands.send(ViewerCommand::Close).await.unwrap();
        received
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn browser_offering_both_gets_h264_and_sends_input() {
        assert_eq!(
            exchange_one_frame(&[Codec::Vp8, Codec::H264]).await,
            Codec::H264
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn browser_offering_only_vp8_gets_vp8() {
        assert_eq!(exchange_one_frame(&[Codec::Vp8]).await, Codec::Vp8);
    }

    #[tokio::test]
    async fn offer_without_a_codec_we_send_is_refused_with_the_reason() {
        let (_browser, offer, _pending) = Browser::offering(&[]).await;
        let err = start_viewer(&offer, "127.0.0.1".parse().unwrap())
            .await
            .err()
            .expect("a VP9-only offer is refused");
        assert!(err.to_string().contains("no video codec we send"), "{err}");
    }

    #[tokio::test]
    async fn garbage_offer_is_a_clear_error() {
        let err = start_viewer("not sdp", "127.0.0.1".parse().unwrap())
            .await
            .err()
            .unwrap();
        assert!(err.to_string().contains("SDP offer"), "{err}");
    }
}
