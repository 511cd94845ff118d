//! The guest main loop: bring up display, input, report port and adbd, draw the first frame,
//! then sleep in poll() until an input arrives or the minute turns. Nothing is drawn while
//! idle; each input batch is drawn and flushed once, then reported with its cost. A press of
//! the ACPI power button powers the phone off.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Context;

use crate::adbd;
use crate::canvas::Canvas;
use crate::clock::{self, WallTime};
use crate::display::{self, Display};
use crate::identity::{self, GenIdWatcher};
use crate::input::device::{self, Device, Kind};
use crate::input::evdev::Input;
use crate::phone_link::{self, Inbox, Request};
use crate::power;
use crate::report::{self, Reporter};
use crate::sysinfo::{self, DeviceInfo, Sources};
use crate::ui::{Effect, Layout, Ui};

/// How long to wait for the display and input devices to appear after start.
pub const DEVICE_WAIT: Duration = Duration::from_secs(30);

/// Runs the agent until killed (or a fatal display error).
pub fn run() -> anyhow::Result<()> {
    let started = Instant::now();
    let sources = Sources::read_system();
    let params = sysinfo::boot_params(&sources.cmdline, &sources.bootconfig);

    let backend = match sysinfo::lookup(&params, sysinfo::DISPLAY_KEY) {
        Some("fbdev") => display::Backend::Fbdev,
        _ => display::Backend::Drm,
    };
    let mut scanout = display::open(backend, DEVICE_WAIT)?;
    tracing::info!("display: {}", scanout.describe());
    if let Err(e) = display::stop_text_console() {
        tracing::warn!(
            "text console left running under the phone UI (its cursor keeps blinking): {e}"
        );
    }
    let (w, h) = scanout.size();
    let layout = Layout::new(w, h).context("display mode unusable for the phone UI")?;
    let info = DeviceInfo::from_sources(&sources, w, h);
    let mut ui = Ui::new(layout, info, WallTime::from_unix(clock::realtime().0));
    // Inputs open before PHONE_READY so no tap sent after it is lost.
    let mut devices = wait_for_inputs(started + DEVICE_WAIT, (w as i32, h as i32));
    let inbox = start_adbd(&params, w as i32, h as i32);
    let mut canvas = Canvas::new(w, h);
    ui.redraw(&mut canvas);
    flush(scanout.as_mut(), &mut canvas)?;
    // Opened last: by now the virtio-console ports had the device wait to show up.
    let report_port = sysinfo::lookup(&params, sysinfo::REPORT_KEY);
    let mut reporter = Reporter::open(report_port);
    reporter.line(&report::ready_line(w, h));
    reporter.line(&report::screen_line(ui.screen()));
    let mut genid = GenIdWatcher::new(Path::new(identity::DEV_MEM), identity::VMGENID_ADDR);
    loop {
        if let Some(id) = genid.changed() {
            take_identity(&id, &mut reporter, report_port);
        }
        let (secs, nanos) = clock::realtime();
        let to_minute = if ui.screen_on() {
            clock::ms_to_next_minute(secs, nanos)
        } else {
            GENID_POLL_MS
        };
        let (ready, requests) = poll(&devices, inbox.as_ref(), to_minute.min(GENID_POLL_MS))?;
        for request in requests {
            match request {
                Request::Screencap(reply) => {
                    let mut png = Vec::new();
                    let result = crate::golden::write_png(&canvas, &mut png).map(|()| png);
                    let _ = reply.send(result.context("encoding the screen as PNG"));
                }
                Request::Inject(inputs) => {
                    let t_us = clock::monotonic_us();
                    let timed: Vec<_> = inputs.into_iter().map(|i| (t_us, i)).collect();
                    handle_batch(
                        &mut ui,
                        &mut canvas,
                        scanout.as_mut(),
                        &mut reporter,
                        &timed,
                    )?;
                }
            }
        }
        if ready.is_empty() {
            if ui.set_time(&mut canvas, WallTime::from_unix(clock::realtime().0)) {
                flush(scanout.as_mut(), &mut canvas)?;
            }
            continue;
        }
        for i in ready.into_iter().rev() {
            match devices[i].read_inputs() {
                Ok(inputs) if devices[i].kind == Kind::PowerButton => {
                    if power::pressed(&inputs) {
                        tracing::info!("ACPI power button pressed: powering off");
                        reporter.line(report::POWER_OFF_LINE);
                        let e = power::power_off();
                        tracing::error!("power off failed ({e}); the host will force the stop");
                    }
                }
                Ok(inputs) if !inputs.is_empty() => handle_batch(
                    &mut ui,
                    &mut canvas,
                    scanout.as_mut(),
                    &mut reporter,
                    &inputs,
                )?,
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!("input device {:?} gone: {e}", devices[i].name);
                    devices.remove(i);
                }
            }
        }
    }
}

/// How often the VM generation id is read (a restored clone takes its identity within this).
const GENID_POLL_MS: i32 = 1000;

/// A new VM generation id: this is a new copy of the phone. It takes a hostname of its own and
/// reopens its report port (the host side is a new file for a clone), then says so.
fn take_identity(id: &[u8; 16], reporter: &mut Reporter, report_port: Option<&str>) {
    let name = identity::hostname(id);
    if let Err(e) = identity::set_hostname(&name) {
        tracing::warn!("setting the hostname {name}: {e}");
    }
    *reporter = Reporter::open(report_port);
    reporter.line(&identity::identity_line(id));
    tracing::info!("VM generation id changed: now {name}");
}

/// Applies a batch of inputs, flushes the result once, and reports each input.
fn handle_batch(
    ui: &mut Ui,
    canvas: &mut Canvas,
    display: &mut dyn Display,
    reporter: &mut Reporter,
    inputs: &[(u64, Input)],
) -> anyhow::Result<()> {
    let t0 = Instant::now();
    let mut lines = Vec::new();
    for (_, input) in inputs {
        match ui.handle(canvas, *input) {
            Effect::Screen(s) => lines.push(report::screen_line(s)),
            Effect::Power(on) => {
                if let Err(e) = display.set_power(on) {
                    tracing::warn!("screen power {on}: {e:#}");
                }
            }
            Effect::None => {}
        }
    }
    if ui.screen_on() {
        flush(display, canvas)?;
    } else {
        canvas.take_damage();
    }
    let frame_us = t0.elapsed().as_micros() as u64;
    for (t_us, input) in inputs {
        reporter.line(&report::input_line(*t_us, input, frame_us));
    }
    for l in lines {
        reporter.line(&l);
    }
    Ok(())
}

/// Sends the canvas's damage to the display (nothing when nothing changed).
fn flush(display: &mut dyn Display, canvas: &mut Canvas) -> anyhow::Result<()> {
    let damage = canvas.take_damage();
    if damage.is_empty() {
        return Ok(());
    }
    display.present(canvas, &damage)
}

/// Once one input device shows up, how long to wait for the other kind (a phone may have a
/// touchscreen only).
const SECOND_DEVICE_WAIT: Duration = Duration::from_secs(2);

/// Opens input devices, waiting until a touchscreen and a key device exist, or
/// [`SECOND_DEVICE_WAIT`] after the first one appeared, or `deadline`.
fn wait_for_inputs(deadline: Instant, screen: (i32, i32)) -> Vec<Device> {
    let mut first_seen: Option<Instant> = None;
    loop {
        let devices = device::open_all(screen);
        let has = |k: Kind| devices.iter().any(|d| d.kind == k);
        if !devices.is_empty() {
            first_seen.get_or_insert_with(Instant::now);
        }
        let settled = first_seen.is_some_and(|t| t.elapsed() >= SECOND_DEVICE_WAIT);
        if (has(Kind::Touchscreen) && has(Kind::Keys)) || settled || Instant::now() >= deadline {
            if devices.is_empty() {
                tracing::warn!("no touchscreen or key device in /dev/input within the wait; the phone runs without input (are virtio_input and evdev loaded?)");
            }
            return devices;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Starts adbd on vsock port 5555 with pushes confined to /data and /sdcard and apps in
/// /data/app; returns the main loop's end of its link (None when vsock is unavailable).
fn start_adbd(params: &[(String, String)], width: i32, height: i32) -> Option<Inbox> {
    let roots = [Path::new("/data"), Path::new("/sdcard")];
    for dir in roots
        .iter()
        .chain([&Path::new("/data/local/tmp"), &Path::new("/data/app")])
    {
        if let Err(e) = std::fs::create_dir_all(dir) {
            tracing::warn!("adbd: cannot create {}: {e}", dir.display());
        }
    }
    let started = phone_link::link(width, height).and_then(|(phone, inbox)| {
        let config = adbd::Config {
            roots: roots.iter().map(|r| r.to_path_buf()).collect(),
            apps_dir: "/data/app".into(),
            product: "cloudphone".into(),
            model: sysinfo::lookup(params, sysinfo::PROFILE_KEY)
                .unwrap_or("test-phone")
                .into(),
            phone: std::sync::Arc::new(phone),
        };
        adbd::spawn(adbd::listen(adbd::PORT)?, std::sync::Arc::new(config))?;
        Ok(inbox)
    });
    match started {
        Ok(inbox) => {
            tracing::info!("adbd listening on vsock port {}", adbd::PORT);
            Some(inbox)
        }
        Err(e) => {
            tracing::warn!("no adbd: {e:#}");
            None
        }
    }
}

/// Waits for input on any device or an adbd request; returns the indices of readable devices
/// (empty on timeout) and the requests that arrived.
fn poll(
    devices: &[Device],
    inbox: Option<&Inbox>,
    timeout_ms: i32,
) -> anyhow::Result<(Vec<usize>, Vec<Request>)> {
    let mut fds: Vec<libc::pollfd> = devices
        .iter()
        .map(|d| d.fd())
        .chain(inbox.map(Inbox::fd))
        .map(|fd| libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        })
        .collect();
    loop {
        // SAFETY: fds is a live array of fds.len() pollfd structs.
        let rc = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, timeout_ms) };
        if rc >= 0 {
            let requests = match inbox {
                Some(inbox) if fds[devices.len()].revents != 0 => inbox.drain(),
                _ => Vec::new(),
            };
            let ready = fds[..devices.len()]
                .iter()
                .enumerate()
                .filter(|(_, p)| p.revents != 0)
                .map(|(i, _)| i)
                .collect();
            return Ok((ready, requests));
        }
        let err = std::io::Error::last_os_error();
        if err.kind() != std::io::ErrorKind::Interrupted {
            return Err(err).context("poll on input devices");
        }
    }
}
