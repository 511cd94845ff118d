//! The browser stand-in both senders stream to: a str0m peer that offers recvonly H.264 video
//! plus an "input" data channel (as our web UI does), on its own UDP socket on 127.0.0.1, and
//! reports every access unit it receives.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::Context;
use str0m::change::{SdpAnswer, SdpPendingOffer};
use str0m::media::{Direction, MediaKind};
use str0m::net::{Protocol, Receive};
use str0m::{Candidate, Event, IceConnectionState, Input, Output, Rtc, RtcConfig};
use tokio::net::UdpSocket;
use tokio::sync::mpsc;

use crate::payload;

/// One access unit seen by a receiver.
pub struct Arrival {
    /// Which viewer got it.
    pub viewer: usize,
    /// The frame index, `None` when the bytes differ from what was sent.
    pub index: Option<u32>,
    /// When the receiver's str0m handed it out.
    pub at: Instant,
}

/// A receiver before the sender's answer is applied.
pub struct Receiver {
    rtc: Rtc,
    socket: UdpSocket,
    addr: SocketAddr,
    pending: Option<SdpPendingOffer>,
}

impl Receiver {
    /// Bind a loopback socket and build the offer (SDP text) to hand to a sender.
    pub async fn offer() -> anyhow::Result<(Self, String)> {
        let socket = UdpSocket::bind("127.0.0.1:0")
            .await
            .context("bind receiver UDP")?;
        let addr = socket.local_addr()?;
        let mut rtc = RtcConfig::new()
            .clear_codecs()
            .enable_h264(true)
            .build(Instant::now());
        rtc.add_local_candidate(Candidate::host(addr, "udp")?);
        let mut change = rtc.sdp_api();
        change.add_media(MediaKind::Video, Direction::RecvOnly, None, None, None);
        change.add_channel("input".into());
        let (offer, pending) = change.apply().context("receiver offer")?;
        let receiver = Self {
            rtc,
            socket,
            addr,
            pending: Some(pending),
        };
        Ok((receiver, offer.to_sdp_string()))
    }

    /// Apply the sender's answer and run until the sender goes away, reporting each access unit.
    pub async fn run(
        mut self,
        answer: &str,
        viewer: usize,
        arrivals: mpsc::UnboundedSender<Arrival>,
    ) -> anyhow::Result<()> {
        let answer = SdpAnswer::from_sdp_string(answer).context("sender's SDP answer")?;
        let pending = self.pending.take().context("answer applied twice")?;
        self.rtc
            .sdp_api()
            .accept_answer(pending, answer)
            .context("accept answer")?;
        let mut buf = vec![0u8; 2048];
        loop {
            let deadline = loop {
                match self.rtc.poll_output()? {
                    Output::Timeout(t) => break t,
                    Output::Transmit(t) => {
                        let _ = self.socket.send_to(&t.contents, t.destination).await;
                    }
                    Output::Event(Event::MediaData(data)) => {
                        let index = payload::identify(&data.data);
                        let _ = arrivals.send(Arrival {
                            viewer,
                            index,
                            at: Instant::now(),
                        });
                    }
                    Output::Event(Event::IceConnectionStateChange(
                        IceConnectionState::Disconnected,
                    )) => {
                        return Ok(());
                    }
                    Output::Event(_) => {}
                }
            };
            let wait = deadline.min(Instant::now() + Duration::from_millis(50));
            tokio::select! {
                r = self.socket.recv_from(&mut buf) => {
                    let (n, source) = r.context("receiver UDP")?;
                    let Ok(contents) = buf[..n].try_into() else { continue };
                    let input = Input::Receive(Instant::now(), Receive {
                        proto: Protocol::Udp, source, destination: self.addr, contents,
                    });
                    self.rtc.handle_input(input)?;
                }
                _ = tokio::time::sleep_until(wait.into()) => {
                    self.rtc.handle_input(Input::Timeout(Instant::now()))?;
                }
            }
        }
    }
}
