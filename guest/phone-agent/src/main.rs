//! `phone-agent`: the guest phone UI (default), or host tools that share its drawing code:
//! `render` writes a golden PNG of a page, `layout` prints tap targets for tests.

use std::path::PathBuf;

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};
use cloudphone_phone_agent::clock::{self, WallTime};
use cloudphone_phone_agent::golden;
use cloudphone_phone_agent::sysinfo::DeviceInfo;
use cloudphone_phone_agent::ui::{Layout, Screen};

#[derive(Parser)]
#[command(
    name = "phone-agent",
    about = "cloudphone guest phone agent (home screen, touch, report port, vsock shell)"
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Cmd>,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the phone UI on the guest's display (the default).
    Run,
    /// Render a page to PNG on the host (golden images for screenshot tests).
    Render {
        /// home, info, paint or clock
        #[arg(long, default_value = "home")]
        screen: String,
        #[arg(long, default_value_t = 720)]
        width: u32,
        #[arg(long, default_value_t = 1280)]
        height: u32,
        #[arg(long)]
        out: PathBuf,
        /// Info page row, KEY=VALUE (repeatable): profile, hardware, vcpus, memory, kernel, screen, or any other key
        #[arg(long = "info")]
        info: Vec<String>,
        /// Clock time shown, HH:MM (default: now, UTC)
        #[arg(long)]
        time: Option<String>,
    },
    /// Print the layout's rectangles (`icon name=Info x= y= w= h=` lines) for a screen size.
    Layout {
        #[arg(long, default_value_t = 720)]
        width: u32,
        #[arg(long, default_value_t = 1280)]
        height: u32,
    },
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let command = cli.command.unwrap_or(Cmd::Run);
    if matches!(command, Cmd::Run) {
        cloudphone_phone_agent::supervisor::become_child_if_pid1();
    }
    tracing_subscriber::fmt()
        .with_writer(cloudphone_phone_agent::adbd::logs::TeeWriter)
        .with_ansi(false)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    match command {
        Cmd::Run => cloudphone_phone_agent::agent::run(),
        Cmd::Render {
            screen,
            width,
            height,
            out,
            info,
            time,
        } => render(&screen, width, height, &out, &info, time.as_deref()),
        Cmd::Layout { width, height } => {
            let l = Layout::new(width, height)?;
            for (app, r) in &l.icons {
                println!(
                    "icon name={} x={} y={} w={} h={}",
                    app.name(),
                    r.x,
                    r.y,
                    r.w,
                    r.h
                );
            }
            for (name, r) in [
                ("status_bar", l.status_bar),
                ("status_clock", l.status_clock),
                ("dock", l.dock),
                ("title_bar", l.title_bar),
                ("back", l.back_button),
                ("clear", l.clear_button),
                ("content", l.content),
            ] {
                println!("region name={name} x={} y={} w={} h={}", r.x, r.y, r.w, r.h);
            }
            Ok(())
        }
    }
}

fn render(
    screen: &str,
    width: u32,
    height: u32,
    out: &PathBuf,
    info: &[String],
    time: Option<&str>,
) -> anyhow::Result<()> {
    let Some(screen) = Screen::from_name(screen) else {
        bail!("unknown --screen {screen:?}: use home, info, paint or clock")
    };
    let now = match time {
        Some(t) => WallTime::parse_hhmm(t).with_context(|| format!("--time {t:?} is not HH:MM"))?,
        None => WallTime::from_unix(clock::realtime().0),
    };
    let mut rows = DeviceInfo::skeleton();
    rows.set("screen", &format!("{width}x{height}"));
    for kv in info {
        let Some((k, v)) = kv.split_once('=') else {
            bail!("--info {kv:?} must be KEY=VALUE")
        };
        rows.set(k, v);
    }
    let canvas = golden::render(screen, width, height, rows, now)?;
    let file = std::fs::File::create(out).with_context(|| format!("create {}", out.display()))?;
    golden::write_png(&canvas, std::io::BufWriter::new(file))
        .with_context(|| format!("write PNG {}", out.display()))?;
    Ok(())
}
