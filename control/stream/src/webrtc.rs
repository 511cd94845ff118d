//! One WebRTC viewer of a phone screen: the browser's SDP offer in, our answer out, then H.264
//! access units pushed to the browser over SRTP and input messages coming back on a data channel.
//!
//! We use `str0m` (sans-IO): the session is a plain tokio task owning one UDP socket, so a host
//! serves many viewers without a thread each, and tests drive it with a str0m client in-process.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Instant;

use str0m::change::{SdpAnswer, SdpOffer};
use str0m::channel::ChannelId;
use str0m::format::Codec;
use str0m::media::{MediaKind, MediaTime, Mid, Pt};
use str0m::net::{Protocol, Receive};
use str0m::{bwe::BweKind, Candidate, Event, IceConnectionState, Input, Output, Rtc, RtcConfig};
use tokio::net::UdpSocket;
use tokio::sync::mpsc;

use crate::{EncodedFrame, StreamError};

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
    /// ICE + DTLS are up and the video track is negotiated: send a keyframe.
    Connected,
    /// The browser asked for a keyframe (PLI/FIR).
    KeyframeRequest,
    /// A new send-bandwidth estimate from the transport (bits/s).
    Bitrate(u32),
    /// A text message from the input data channel (JSON input events).
    Input(String),
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
/// browser can reach; loopback for local tests). The offer must contain a video m-line that can
/// receive H.264 (constrained baseline, packetization-mode 1).
pub async fn start_viewer(offer: &str, bind_ip: IpAddr) -> Result<Viewer, StreamError> {
    let offer = SdpOffer::from_sdp_string(offer)
        .map_err(|e| StreamError::Signalling(format!("unparseable SDP offer: {e}")))?;
    let socket = UdpSocket::bind(SocketAddr::new(bind_ip, 0))
        .await
        .map_err(|e| StreamError::Signalling(format!("bind UDP on {bind_ip}: {e}")))?;
    let local_addr = socket
        .local_addr()
        .map_err(|e| StreamError::Signalling(e.to_string()))?;
    let mut rtc = RtcConfig::new()
        .clear_codecs()
        .enable_h264(true)
        .enable_bwe(Some(str0m::bwe::Bitrate::kbps(2000)))
        .build(Instant::now());
    let candidate = Candidate::host(local_addr, "udp")
        .map_err(|e| StreamError::Signalling(format!("host candidate {local_addr}: {e}")))?;
    rtc.add_local_candidate(candidate);
    let answer: SdpAnswer = rtc
        .sdp_api()
        .accept_offer(offer)
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
    video: Option<(Mid, Pt)>,
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
                    if !self.on_event(event).await {
                        return Ok(None);
                    }
                }
            }
        }
    }

    async fn on_event(&mut self, event: Event) -> bool {
        let report = match event {
            Event::IceConnectionStateChange(IceConnectionState::Disconnected) => return false,
            Event::MediaAdded(media) if media.kind == MediaKind::Video => {
                self.video = self.pick_h264(media.mid).map(|pt| (media.mid, pt));
                if self.video.is_none() {
                    tracing::warn!("browser offered no usable H.264 (constrained baseline, packetization-mode 1)");
                }
                None
            }
            Event::Connected => Some(ViewerEvent::Connected),
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
                String::from_utf8(data.data).ok().map(ViewerEvent::Input)
            }
            _ => None,
        };
        if let Some(report) = report {
            // A full event queue means nobody is reading: drop rather than stall the media path.
            let _ = self.events.try_send(report);
        }
        true
    }

    fn pick_h264(&mut self, mid: Mid) -> Option<Pt> {
        let writer = self.rtc.writer(mid)?;
        let params: Vec<_> = writer
            .payload_params()
            .filter(|p| p.spec().codec == Codec::H264)
            .cloned()
            .collect();
        let baseline = |p: &&str0m::format::PayloadParams| {
            let f = p.spec().format;
            f.packetization_mode == Some(1)
                && f.profile_level_id.is_some_and(|id| (id >> 16) == 0x42)
        };
        params
            .iter()
            .find(baseline)
            .or(params.first())
            .map(|p| p.pt())
    }

    fn write_frame(&mut self, frame: &EncodedFrame) -> Result<(), StreamError> {
        let Some((mid, pt)) = self.video else {
            return Ok(());
        };
        let Some(writer) = self.rtc.writer(mid) else {
            return Ok(());
        };
        let now = Instant::now();
        let rtp_time = MediaTime::from_micros(now.duration_since(self.start).as_micros() as u64);
        writer
            .write(pt, now, rtp_time, frame.data.clone())
            .map_err(rtc_error)
    }
}

fn rtc_error(e: str0m::RtcError) -> StreamError {
    StreamError::Signalling(format!("WebRTC: {e}"))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::{H264Encoder, H264Settings, I420Frame, PixelLayout};
    use std::time::Duration;
    use str0m::media::Direction;

    /// A browser stand-in: a str0m client that offers recvonly video + an "input" channel.
    pub(crate) struct Browser {
        pub(crate) rtc: Rtc,
        socket: UdpSocket,
        addr: SocketAddr,
    }

    impl Browser {
        pub(crate) async fn new() -> (Self, String, str0m::change::SdpPendingOffer) {
            let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
            let addr = socket.local_addr().unwrap();
            let mut rtc = RtcConfig::new()
                .clear_codecs()
                .enable_h264(true)
                .build(Instant::now());
            rtc.add_local_candidate(Candidate::host(addr, "udp").unwrap());
            let mut change = rtc.sdp_api();
            change.add_media(MediaKind::Video, Direction::RecvOnly, None, None, None);
            change.add_channel("input".into());
            let (offer, pending) = change.apply().unwrap();
            (Self { rtc, socket, addr }, offer.to_sdp_string(), pending)
        }

        /// Run until `done` says so with the events seen; gives up after `limit`.
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

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn browser_receives_decodable_h264_and_sends_input() {
        let (mut browser, offer, pending) = Browser::new().await;
        let mut viewer = start_viewer(&offer, "127.0.0.1".parse().unwrap())
            .await
            .unwrap();
        let answer = SdpAnswer::from_sdp_string(&viewer.answer_sdp).unwrap();
        browser
            .rtc
            .sdp_api()
            .accept_answer(pending, answer)
            .unwrap();

        // Encode one phone-like frame and keep offering it until the browser decodes it.
        let mut enc = H264Encoder::new(H264Settings {
            width: 320,
            height: 240,
            bitrate: 1_000_000,
            max_fps: 30.0,
        })
        .unwrap();
        let mut frame = I420Frame::new(320, 240).unwrap();
        let px: Vec<u8> = (0..320 * 240)
            .flat_map(|i| [(i % 256) as u8, 90, 200, 255])
            .collect();
        frame.fill_from(&px, 320 * 4, PixelLayout::Bgrx).unwrap();
        let key = Arc::new(enc.encode(&frame).unwrap());
        assert!(key.keyframe);

        let commands = viewer.commands.clone();
        let feeder = tokio::spawn(async move {
            for _ in 0..200 {
                if commands
                    .send(ViewerCommand::Frame(key.clone()))
                    .await
                    .is_err()
                {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        });
        let mut decoder = openh264::decoder::Decoder::new().unwrap();
        let mut decoded = false;
        let mut sent_input = false;
        let got_everything = browser
            .pump(Duration::from_secs(20), |rtc, event| {
                match event {
                    Event::ChannelOpen(id, _) => {
                        let mut ch = rtc.channel(id).unwrap();
                        sent_input = ch.write(false, br#"{"key":"HOME","down":true}"#).unwrap();
                    }
                    Event::MediaData(data) => {
                        if let Ok(Some(_)) = decoder.decode(&data.data) {
                            decoded = true;
                        }
                    }
                    _ => {}
                }
                decoded && sent_input
            })
            .await;
        assert!(got_everything, "decoded={decoded} sent_input={sent_input}");
        let mut events = Vec::new();
        while let Ok(Some(e)) =
            tokio::time::timeout(Duration::from_secs(2), viewer.events.recv()).await
        {
            let is_input = matches!(e, ViewerEvent::Input(_));
            events.push(e);
            if is_input {
                break;
            }
        }
        assert!(events.contains(&ViewerEvent::Connected), "{events:?}");
        assert!(
            events.contains(&ViewerEvent::Input(r#"{"key":"HOME","down":true}"#.into())),
            "{events:?}"
        );
        viewer.commands.send(ViewerCommand::Close).await.unwrap();
        feeder.abort();
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
