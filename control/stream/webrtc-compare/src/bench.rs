//! One measured run of one stack: `viewers` sender sessions (each answering its own str0m
//! receiver's offer), a connect phase (a keyframe re-sent every 5 ms until each receiver has it
//! whole) and a streaming phase (`frames` access units to every viewer, paced or not), with the
//! sender runtime's CPU time, the process's CPU time and RSS sampled around each phase.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use bytes::Bytes;
use tokio::runtime::Handle;
use tokio::sync::mpsc;

use crate::payload::{self, WARMUP};
use crate::receiver::{Arrival, Receiver};
use crate::usage::{process_cpu, rss_kib, threads_cpu, SENDER_THREADS};
use crate::webrtc_sender::WebrtcRsSender;
use crate::{str0m_sender, Config};

/// One frame at 60 fps, in microseconds (RTP time step of both senders).
pub const FRAME_PERIOD_US: u64 = 16_667;
/// How long a viewer may take to connect and receive its first frame.
const CONNECT_LIMIT: Duration = Duration::from_secs(20);
/// How often the connect phase re-sends its keyframe.
const RESEND: Duration = Duration::from_millis(5);
/// How long to wait for stragglers after the last frame was handed to the sender.
const TAIL: Duration = Duration::from_secs(1);

/// The WebRTC stack under test.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Stack {
    /// str0m without bandwidth estimation (no pacer), like webrtc-rs's defaults.
    Str0m,
    /// str0m with BWE + pacer at 2 Mbit/s initial, our production configuration.
    Str0mBwe,
    /// webrtc-rs 0.14 with its default interceptors.
    WebrtcRs,
    /// webrtc-rs 0.14 also stamping TWCC sequence numbers on sent packets, like str0m.
    WebrtcRsTwcc,
}

impl Stack {
    /// Every stack, in report order.
    pub const ALL: [Stack; 4] = [
        Stack::Str0m,
        Stack::Str0mBwe,
        Stack::WebrtcRs,
        Stack::WebrtcRsTwcc,
    ];

    /// The name used on the command line and in the report.
    pub fn name(self) -> &'static str {
        match self {
            Stack::Str0m => "str0m",
            Stack::Str0mBwe => "str0m+bwe",
            Stack::WebrtcRs => "webrtc-rs",
            Stack::WebrtcRsTwcc => "webrtc-rs+twcc",
        }
    }

    /// The stack called `name`.
    pub fn parse(name: &str) -> anyhow::Result<Stack> {
        Stack::ALL
            .into_iter()
            .find(|s| s.name() == name)
            .with_context(|| {
                format!("unknown stack '{name}' (str0m, str0m+bwe, webrtc-rs, webrtc-rs+twcc)")
            })
    }
}

/// A sender session of either stack.
enum Sender {
    Str0m(mpsc::Sender<Bytes>),
    WebrtcRs(WebrtcRsSender),
}

impl Sender {
    async fn start(stack: Stack, offer: &str) -> anyhow::Result<(String, Sender)> {
        Ok(match stack {
            Stack::Str0m | Stack::Str0mBwe => {
                let (answer, tx) = str0m_sender::start(offer, stack == Stack::Str0mBwe).await?;
                (answer, Sender::Str0m(tx))
            }
            Stack::WebrtcRs | Stack::WebrtcRsTwcc => {
                let twcc = stack == Stack::WebrtcRsTwcc;
                let (answer, sender) = WebrtcRsSender::start(offer, twcc).await?;
                (answer, Sender::WebrtcRs(sender))
            }
        })
    }

    async fn send(&self, frame: &Bytes) -> anyhow::Result<()> {
        match self {
            Sender::Str0m(tx) => tx.send(frame.clone()).await.context("str0m session ended"),
            Sender::WebrtcRs(s) => s.send(frame, Duration::from_micros(FRAME_PERIOD_US)).await,
        }
    }
}

/// What one run measured.
pub struct Report {
    /// Offer handed to the sender -> first whole frame at the receiver, per viewer.
    pub connect: Vec<Duration>,
    /// Sender-runtime CPU from session creation until every viewer had its first frame.
    pub connect_cpu: Duration,
    /// Sender-runtime CPU over the streaming phase.
    pub stream_cpu: Duration,
    /// Whole-process CPU (receivers included) over the streaming phase.
    pub stream_process_cpu: Duration,
    /// Wall time of the streaming phase.
    pub stream_wall: Duration,
    /// Distinct stream frames received intact, summed over viewers.
    pub delivered: usize,
    /// Access units that arrived with bytes differing from what was sent.
    pub corrupt: usize,
    /// RSS before the first session, once all were connected, after streaming (KiB).
    pub rss_kib: [u64; 3],
}

/// Run `stack` with `config`; receivers run on `receivers`, everything else on the current
/// (sender) runtime.
pub async fn run(stack: Stack, config: Config, receivers: Handle) -> anyhow::Result<Report> {
    let (arrivals_tx, mut arrivals) = mpsc::unbounded_channel::<Arrival>();
    let warmup = payload::access_unit(WARMUP);
    let frames: Vec<Bytes> = (0..config.frames).map(payload::access_unit).collect();
    let rss_start = rss_kib()?;
    let cpu_start = threads_cpu(SENDER_THREADS)?;
    let mut senders = Vec::with_capacity(config.viewers);
    let mut started = Vec::with_capacity(config.viewers);
    for viewer in 0..config.viewers {
        let (receiver, offer) = receivers.spawn(Receiver::offer()).await??;
        started.push(Instant::now());
        let (answer, sender) = Sender::start(stack, &offer)
            .await
            .with_context(|| format!("{} sender session for viewer {viewer}", stack.name()))?;
        let tx = arrivals_tx.clone();
        receivers.spawn(async move {
            if let Err(e) = receiver.run(&answer, viewer, tx).await {
                eprintln!("receiver {viewer}: {e:#}");
            }
        });
        senders.push(sender);
    }

    let mut connect: Vec<Option<Duration>> = vec![None; config.viewers];
    let limit = tokio::time::Instant::now() + CONNECT_LIMIT;
    // The resend period bounds connect-ms resolution: frames written before a stack is ready
    // are dropped by it, so the first whole frame follows readiness by at most one period.
    let mut resend = tokio::time::interval(RESEND);
    while connect.iter().any(Option::is_none) {
        tokio::select! {
            _ = resend.tick() => {
                for (sender, done) in senders.iter().zip(&connect) {
                    if done.is_none() {
                        sender.send(&warmup).await?;
                    }
                }
            }
            Some(a) = arrivals.recv() => {
                if a.index == Some(WARMUP) && connect[a.viewer].is_none() {
                    connect[a.viewer] = Some(a.at - started[a.viewer]);
                }
            }
            _ = tokio::time::sleep_until(limit) => {
                let missing: Vec<usize> = (0..connect.len()).filter(|&v| connect[v].is_none()).collect();
                bail!("{}: viewers {missing:?} got no whole frame within {CONNECT_LIMIT:?}", stack.name());
            }
        }
    }
    let connect_cpu = threads_cpu(SENDER_THREADS)? - cpu_start;
    let rss_connected = rss_kib()?;

    let mut tally = Tally::new(config.viewers, frames.len());
    let cpu0 = threads_cpu(SENDER_THREADS)?;
    let process0 = process_cpu();
    let wall0 = Instant::now();
    let mut pace = (config.fps > 0)
        .then(|| tokio::time::interval(Duration::from_secs_f64(1.0 / f64::from(config.fps))));
    for frame in &frames {
        if let Some(pace) = &mut pace {
            pace.tick().await;
        }
        for sender in &senders {
            sender.send(frame).await?;
        }
        while let Ok(a) = arrivals.try_recv() {
            tally.add(a);
        }
    }
    let expected = frames.len() * config.viewers;
    let tail = tokio::time::Instant::now() + TAIL;
    while tally.delivered() < expected {
        tokio::select! {
            Some(a) = arrivals.recv() => tally.add(a),
            _ = tokio::time::sleep_until(tail) => break,
        }
    }
    let stream_cpu = threads_cpu(SENDER_THREADS)? - cpu0;
    let stream_process_cpu = process_cpu() - process0;
    let stream_wall = wall0.elapsed();
    Ok(Report {
        connect: connect.into_iter().flatten().collect(),
        connect_cpu,
        stream_cpu,
        stream_process_cpu,
        stream_wall,
        delivered: tally.delivered(),
        corrupt: tally.corrupt,
        rss_kib: [rss_start, rss_connected, rss_kib()?],
    })
}

/// Stream frames received intact per viewer, and corrupted arrivals.
struct Tally {
    received: Vec<HashSet<u32>>,
    frames: usize,
    corrupt: usize,
}

impl Tally {
    fn new(viewers: usize, frames: usize) -> Self {
        Self {
            received: vec![HashSet::new(); viewers],
            frames,
            corrupt: 0,
        }
    }

    /// Count one arrival (warm-up keyframes still in flight are ignored).
    fn add(&mut self, a: Arrival) {
        match a.index {
            Some(i) if (i as usize) < self.frames => {
                self.received[a.viewer].insert(i);
            }
            Some(_) => {}
            None => self.corrupt += 1,
        }
    }

    fn delivered(&self) -> usize {
        self.received.iter().map(HashSet::len).sum()
    }
}
