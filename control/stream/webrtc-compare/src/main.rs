//! `webrtc-compare`: str0m vs webrtc-rs as the sender of the same H.264 stream to the same str0m
//! receiver over loopback UDP (issue 6's measured comparison). Each stack runs in its own child
//! process so CPU and RSS figures do not mix.
//!
//! Usage: `webrtc-compare [--frames N] [--viewers V] [--fps F] [--stack NAME]`
//! (defaults 600 frames, 1 viewer, 60 fps; `--fps 0` sends as fast as the sender accepts;
//! `--stack` runs one stack in this process, otherwise all of them, then the ratios).

mod bench;
mod payload;
mod receiver;
mod str0m_sender;
mod usage;
mod webrtc_sender;

use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Context};
use bench::{Report, Stack};

/// What to run.
#[derive(Clone, Copy)]
pub struct Config {
    /// Access units streamed to each viewer after connecting.
    pub frames: u32,
    /// Concurrent sessions (each with its own receiver).
    pub viewers: usize,
    /// Pacing; 0 sends each frame as soon as the previous one was accepted.
    pub fps: u32,
}

fn main() -> anyhow::Result<()> {
    let mut config = Config {
        frames: 600,
        viewers: 1,
        fps: 60,
    };
    let mut stack = None;
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let mut value = || args.next().with_context(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--frames" => config.frames = value()?.parse().context("--frames")?,
            "--viewers" => config.viewers = value()?.parse().context("--viewers")?,
            "--fps" => config.fps = value()?.parse().context("--fps")?,
            "--stack" => stack = Some(Stack::parse(&value()?)?),
            other => bail!("unknown argument '{other}' (--frames N --viewers V --fps F --stack S)"),
        }
    }
    if config.frames == 0 || config.viewers == 0 || config.viewers > 200 {
        bail!("--frames must be > 0 and --viewers in 1..=200");
    }
    match stack {
        Some(stack) => {
            let report = measure(stack, config)?;
            println!("{}", line(stack, config, &report));
            Ok(())
        }
        None => compare(config),
    }
}

/// Run `stack` here: the sender on a one-worker runtime whose threads we time, the receivers
/// on a separate two-worker runtime.
fn measure(stack: Stack, config: Config) -> anyhow::Result<Report> {
    let sender_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name(usage::SENDER_THREADS)
        .enable_all()
        .build()?;
    let receiver_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("cmp-recv")
        .enable_all()
        .build()?;
    let receivers = receiver_rt.handle().clone();
    let report = sender_rt
        .block_on(async move { tokio::spawn(bench::run(stack, config, receivers)).await })??;
    sender_rt.shutdown_timeout(Duration::from_millis(100));
    receiver_rt.shutdown_timeout(Duration::from_millis(100));
    Ok(report)
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// The report line of one stack.
fn line(stack: Stack, config: Config, r: &Report) -> String {
    let mut connect: Vec<f64> = r.connect.iter().copied().map(ms).collect();
    connect.sort_by(f64::total_cmp);
    let median = connect[connect.len() / 2];
    let max = connect[connect.len() - 1];
    let sends = f64::from(config.frames) * config.viewers as f64;
    let [rss0, rss1, rss2] = r.rss_kib;
    format!(
        "{}: connect-ms {median:.1} (max {max:.1}), cpu-ms-per-frame {:.4}, delivered {}/{}, \
         corrupt {}, connect-cpu-ms {:.1}, process-cpu-ms-per-frame {:.4}, stream-s {:.2}, \
         rss-kib-per-session {} (after streaming {}), viewers {}, fps {}",
        stack.name(),
        ms(r.stream_cpu) / sends,
        r.delivered,
        config.frames as usize * config.viewers,
        r.corrupt,
        ms(r.connect_cpu),
        ms(r.stream_process_cpu) / sends,
        r.stream_wall.as_secs_f64(),
        rss1.saturating_sub(rss0) / config.viewers as u64,
        rss2.saturating_sub(rss0) / config.viewers as u64,
        config.viewers,
        config.fps,
    )
}

/// Run every stack in a child process, print their lines and the CPU ratios.
fn compare(config: Config) -> anyhow::Result<()> {
    let exe = std::env::current_exe().context("own executable")?;
    let mut cpu = Vec::new();
    for stack in Stack::ALL {
        let out = Command::new(&exe)
            .args(["--stack", stack.name()])
            .args(["--frames", &config.frames.to_string()])
            .args(["--viewers", &config.viewers.to_string()])
            .args(["--fps", &config.fps.to_string()])
            .output()
            .with_context(|| format!("run {}", stack.name()))?;
        eprint!("{}", String::from_utf8_lossy(&out.stderr));
        let stdout = String::from_utf8_lossy(&out.stdout);
        if !out.status.success() {
            println!("{}: FAILED ({})", stack.name(), out.status);
            cpu.push(None);
            continue;
        }
        print!("{stdout}");
        cpu.push(
            stdout
                .split("cpu-ms-per-frame ")
                .nth(1)
                .and_then(|v| v.split(',').next())
                .and_then(|v| v.parse::<f64>().ok()),
        );
    }
    let ratio = |a: Option<f64>, b: Option<f64>| match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => format!("{:.3}", a / b),
        _ => "n/a".into(),
    };
    println!("ratio: str0m-vs-webrtc-cpu {}", ratio(cpu[0], cpu[2]));
    println!("ratio: str0m+bwe-vs-webrtc-cpu {}", ratio(cpu[1], cpu[2]));
    println!("ratio: str0m-vs-webrtc+twcc-cpu {}", ratio(cpu[0], cpu[3]));
    Ok(())
}
