//! `phone-agent`: the guest phone UI (default), or host tools that share its drawing code:
//! `render` writes a golden PNG of a page, `layout` prints tap targets for tests, `adbd`
//! serves adbd on a host Unix socket (the local baseline of `scripts/bench/adb`).

use std::path::PathBuf;

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};
use cloudphone_phone_agent::adbd;
use cloudphone_phone_agent::clock::{self, WallTime};
use cloudphone_phone_agent::golden;
use cloudphone_phone_agent::sysinfo::DeviceInfo;
use cloudphone_phone_agent::ui::{Layout, Screen};

#[derive(Parser)]
#[command(
    name = "phone-agent",
    about = "cloudphone guest phone agent (home screen, touch, report port, adbd)"
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
    /// Serve adbd on a host Unix socket, files confined to ROOT, no screen or input: the same
    /// protocol code as on the phone without the VMM and vsock, for benchmark baselines.
    Adbd {
        /// Socket path; each connection starts with the key preamble, like vsock 5555.
        #[arg(long)]
        unix: PathBuf,
        /// The one directory push/pull may use (also holds installed apps in ROOT/app).
        #[arg(long)]
        root: PathBuf,
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
        Cmd::Adbd { unix, root } => host_adbd(&unix, &root),
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

/// A phone without screen or input: adbd's file and shell services only.
struct Headless;

impl adbd::Phone for Headless {
    fn screencap(&self) -> anyhow::Result<Vec<u8>> {
        bail!("no screen: adbd is running on the host")
    }
    fn inject(&self, _: Vec<cloudphone_phone_agent::input::evdev::Input>) -> anyhow::Result<()> {
        bail!("no input: adbd is running on the host")
    }
    fn screen_size(&self) -> (i32, i32) {
        (0, 0)
    }
    fn reboot(&self) -> anyhow::Result<()> {
        bail!("adbd on the host does not reboot it")
    }
}

/// Serves adbd on a Unix socket until killed.
fn host_adbd(socket: &std::path::Path, root: &std::path::Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(root).with_context(|| format!("creating {}", root.display()))?;
    let _ = std::fs::remove_file(socket);
    let listener = std::os::unix::net::UnixListener::bind(socket)
        .with_context(|| format!("binding {}", socket.display()))?;
    let config = std::sync::Arc::new(adbd::Config {
        roots: vec![root.to_path_buf()],
        apps_dir: root.join("app"),
        product: "cloudphone-host".into(),
        model: "headless".into(),
        phone: std::sync::Arc::new(Headless),
    });
    for conn in listener.incoming() {
        let conn = conn.context("accepting an adb connection")?;
        let config = config.clone();
        std::thread::spawn(move || {
            if let Err(e) = adbd::serve(conn, &config) {
                tracing::warn!("adbd connection: {e:#}");
            }
        });
    }
    Ok(())
}
