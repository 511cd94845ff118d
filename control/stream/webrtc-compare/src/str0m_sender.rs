//! The str0m sender, shaped like our viewer session (`control/stream/src/webrtc.rs`): one tokio
//! task owning one UDP socket and the sans-IO `Rtc`, fed access units over a channel.

use std::net::SocketAddr;
use std::time::Instant;

use anyhow::Context;
use bytes::Bytes;
use str0m::change::SdpOffer;
use str0m::format::Codec;
use str0m::media::{MediaKind, MediaTime, Mid, Pt};
use str0m::net::{Protocol, Receive};
use str0m::{Candidate, Event, IceConnectionState, Input, Output, Rtc, RtcConfig};
use tokio::net::UdpSocket;
use tokio::sync::mpsc;

use crate::bench::FRAME_PERIOD_US;

/// Accept `offer`; returns the answer SDP and the channel that takes access units. `bwe` turns on
/// str0m's bandwidth estimation and pacer at 2 Mbit/s, as our production session does.
pub async fn start(offer: &str, bwe: bool) -> anyhow::Result<(String, mpsc::Sender<Bytes>)> {
    let offer = SdpOffer::from_sdp_string(offer).context("parse offer")?;
    let socket = UdpSocket::bind("127.0.0.1:0")
        .await
        .context("bind sender UDP")?;
    let local = socket.local_addr()?;
    let mut config = RtcConfig::new()
        .clear_codecs()
        .enable_h264(true)
        .enable_vp8(true);
    if bwe {
        config = config.enable_bwe(Some(str0m::bwe::Bitrate::kbps(2000)));
    }
    let mut rtc = config.build(Instant::now());
    rtc.add_local_candidate(Candidate::host(local, "udp")?);
    let answer = rtc.sdp_api().accept_offer(offer).context("accept offer")?;
    let (frames_tx, frames_rx) = mpsc::channel(8);
    tokio::spawn(async move {
        let mut session = Session {
            rtc,
            socket,
            local,
            video: None,
            written: 0,
        };
        if let Err(e) = session.run(frames_rx).await {
            eprintln!("str0m sender session ended: {e:#}");
        }
    });
    Ok((answer.to_sdp_string(), frames_tx))
}

struct Session {
    rtc: Rtc,
    socket: UdpSocket,
    local: SocketAddr,
    video: Option<(Mid, Pt)>,
    written: u64,
}

impl Session {
    async fn run(&mut self, mut frames: mpsc::Receiver<Bytes>) -> anyhow::Result<()> {
        let mut buf = vec![0u8; 2048];
        loop {
            let Some(deadline) = self.drain().await? else {
                return Ok(());
            };
            tokio::select! {
                r = self.socket.recv_from(&mut buf) => {
                    let (n, source) = r.context("sender UDP")?;
                    let Ok(contents) = buf[..n].try_into() else { continue };
                    let input = Input::Receive(Instant::now(), Receive {
                        proto: Protocol::Udp, source, destination: self.local, contents,
                    });
                    self.rtc.handle_input(input)?;
                }
                frame = frames.recv() => match frame {
                    Some(frame) => self.write(&frame)?,
                    None => return Ok(()),
                },
                _ = tokio::time::sleep_until(deadline.into()) => {
                    self.rtc.handle_input(Input::Timeout(Instant::now()))?;
                }
            }
        }
    }

    /// Send pending datagrams, note the video track; the next timeout, or None once the peer left.
    async fn drain(&mut self) -> anyhow::Result<Option<Instant>> {
        loop {
            match self.rtc.poll_output()? {
                Output::Timeout(t) => return Ok(Some(t)),
                Output::Transmit(t) => {
                    let _ = self.socket.send_to(&t.contents, t.destination).await;
                }
                Output::Event(Event::IceConnectionStateChange(
                    IceConnectionState::Disconnected,
                )) => {
                    return Ok(None);
                }
                Output::Event(Event::MediaAdded(media)) if media.kind == MediaKind::Video => {
                    let writer = self.rtc.writer(media.mid).context("no writer for video")?;
                    let pt = writer
                        .payload_params()
                        .find(|p| {
                            let spec = p.spec();
                            spec.codec == Codec::H264 && spec.format.packetization_mode == Some(1)
                        })
                        .map(|p| p.pt())
                        .context("receiver accepts no H.264 packetization-mode 1")?;
                    self.video = Some((media.mid, pt));
                }
                Output::Event(_) => {}
            }
        }
    }

    fn write(&mut self, frame: &Bytes) -> anyhow::Result<()> {
        let Some((mid, pt)) = self.video else {
            return Ok(());
        };
        let Some(writer) = self.rtc.writer(mid) else {
            return Ok(());
        };
        // RTP time advances one frame period per access unit, as webrtc-rs's sample duration does.
        let rtp_time = MediaTime::from_micros(self.written * FRAME_PERIOD_US);
        writer.write(pt, Instant::now(), rtp_time, &frame[..])?;
        self.written += 1;
        // str0m packetizes queued frames only in handle_timeout, one per call; without this a
        // sender fed faster than its timer fires queues 512 frames and then fails the write
        // with WriteWithoutPoll (seen with --fps 0; our production loop has the same shape).
        self.rtc.handle_input(Input::Timeout(Instant::now()))?;
        Ok(())
    }
}
