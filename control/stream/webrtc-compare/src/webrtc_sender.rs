//! The webrtc-rs (`webrtc` 0.14) sender: one peer connection per viewer with the default
//! interceptors (NACK responder, RTCP reports, TWCC for received media only) or, with `twcc`,
//! TWCC sequence numbers on sent media too (what str0m always does; no congestion controller
//! consumes the feedback), host candidates on loopback only, and one `TrackLocalStaticSample`
//! that packetizes our H.264 access units.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use bytes::Bytes;
use webrtc::api::interceptor_registry::{
    configure_nack, configure_rtcp_reports, configure_twcc, register_default_interceptors,
};
use webrtc::api::media_engine::{MediaEngine, MIME_TYPE_H264};
use webrtc::api::setting_engine::SettingEngine;
use webrtc::api::APIBuilder;
use webrtc::ice::mdns::MulticastDnsMode;
use webrtc::ice::network_type::NetworkType;
use webrtc::interceptor::registry::Registry;
use webrtc::media::Sample;
use webrtc::peer_connection::configuration::RTCConfiguration;
use webrtc::peer_connection::sdp::session_description::RTCSessionDescription;
use webrtc::peer_connection::RTCPeerConnection;
use webrtc::rtp_transceiver::rtp_codec::RTCRtpCodecCapability;
use webrtc::track::track_local::track_local_static_sample::TrackLocalStaticSample;
use webrtc::track::track_local::TrackLocal;

/// A connected-or-connecting webrtc-rs sender.
pub struct WebrtcRsSender {
    track: Arc<TrackLocalStaticSample>,
    /// Kept alive for the session's lifetime.
    _pc: Arc<RTCPeerConnection>,
}

impl WebrtcRsSender {
    /// Accept `offer`; returns the answer SDP (all candidates gathered) and the sender.
    pub async fn start(offer: &str, twcc: bool) -> anyhow::Result<(String, Self)> {
        let mut media = MediaEngine::default();
        media.register_default_codecs().context("register codecs")?;
        let registry = if twcc {
            let registry = configure_rtcp_reports(configure_nack(Registry::new(), &mut media));
            configure_twcc(registry, &mut media)
        } else {
            register_default_interceptors(Registry::new(), &mut media)
        }
        .context("register interceptors")?;
        let mut settings = SettingEngine::default();
        settings.set_ice_multicast_dns_mode(MulticastDnsMode::Disabled);
        settings.set_network_types(vec![NetworkType::Udp4]);
        settings.set_include_loopback_candidate(true);
        settings.set_ip_filter(Box::new(|ip| ip.is_loopback()));
        let api = APIBuilder::new()
            .with_media_engine(media)
            .with_interceptor_registry(registry)
            .with_setting_engine(settings)
            .build();
        let pc = Arc::new(api.new_peer_connection(RTCConfiguration::default()).await?);
        let codec = RTCRtpCodecCapability {
            mime_type: MIME_TYPE_H264.to_owned(),
            ..Default::default()
        };
        let track = Arc::new(TrackLocalStaticSample::new(
            codec,
            "screen".into(),
            "phone".into(),
        ));
        let rtp_sender = pc
            .add_track(Arc::clone(&track) as Arc<dyn TrackLocal + Send + Sync>)
            .await
            .context("add video track")?;
        // Incoming RTCP only reaches the interceptors (NACK -> retransmission) when read.
        tokio::spawn(async move {
            let mut buf = vec![0u8; 1500];
            while rtp_sender.read(&mut buf).await.is_ok() {}
        });
        let offer = RTCSessionDescription::offer(offer.to_owned()).context("parse offer")?;
        pc.set_remote_description(offer)
            .await
            .context("set remote offer")?;
        let answer = pc.create_answer(None).await.context("create answer")?;
        let mut gathered = pc.gathering_complete_promise().await;
        pc.set_local_description(answer)
            .await
            .context("set local answer")?;
        let _ = gathered.recv().await;
        let answer = pc
            .local_description()
            .await
            .context("no local description")?;
        Ok((answer.sdp, Self { track, _pc: pc }))
    }

    /// Packetize and send one access unit lasting `duration`.
    pub async fn send(&self, frame: &Bytes, duration: Duration) -> anyhow::Result<()> {
        let sample = Sample {
            data: frame.clone(),
            duration,
            ..Default::default()
        };
        self.track
            .write_sample(&sample)
            .await
            .context("write_sample")
    }
}
