//! The report port: one line per event the host-side tests wait for. Formats are a contract
//! with the tier-2 tests and the display benchmark:
//! * `PHONE_READY width=W height=H` once the first frame is on screen;
//! * `SCREEN app=<home|paint|info|clock>` on each page change;
//! * `INPUT t_us=<T> kind=touch slot=<S> action=<down|move|up> x=<X> y=<Y> frame_us=<F>`
//! * `INPUT t_us=<T> kind=key key=<HOME|BACK|APPSWITCH|POWER|VOLUMEUP|VOLUMEDOWN> down=<0|1> frame_us=<F>`
//! * `POWER_OFF reason=power-button` just before the agent powers the phone off;
//! * `IDENTITY vmgenid=<32 hex> hostname=<name> mac=<macs|none> cid=<n|none>` at start and after each restore (a clone).
//!
//! `T` is the kernel's CLOCK_MONOTONIC timestamp of the input frame in µs (evdev clock set to
//! monotonic), `F` the µs spent drawing and flushing the frame that input produced.

use std::io::Write;

use crate::input::evdev::{Input, TouchAction};
use crate::ui::Screen;

/// Default port: virtio-console port 1 (hvc0 carries the kernel log).
pub const DEFAULT_PORT: &str = "/dev/hvc1";

/// `PHONE_READY` line.
pub fn ready_line(width: u32, height: u32) -> String {
    format!("PHONE_READY width={width} height={height}")
}

/// `SCREEN` line.
pub fn screen_line(screen: Screen) -> String {
    format!("SCREEN app={}", screen.name())
}

/// `POWER_OFF` line: the ACPI power button was pressed and the phone is going down.
pub const POWER_OFF_LINE: &str = "POWER_OFF reason=power-button";

/// `INPUT` line for one handled input.
pub fn input_line(t_us: u64, input: &Input, frame_us: u64) -> String {
    match input {
        Input::Touch { slot, action, x, y } => {
            let action = match action {
                TouchAction::Down => "down",
                TouchAction::Move => "move",
                TouchAction::Up => "up",
            };
            format!("INPUT t_us={t_us} kind=touch slot={slot} action={action} x={x} y={y} frame_us={frame_us}")
        }
        Input::Key { key, down } => {
            format!(
                "INPUT t_us={t_us} kind=key key={} down={} frame_us={frame_us}",
                key.name(),
                u8::from(*down)
            )
        }
    }
}

/// Writes report lines; a failing port is logged once and then ignored (the phone keeps
/// working without its test channel).
pub struct Reporter {
    out: Box<dyn Write + Send>,
    broken: bool,
}

impl Reporter {
    /// Opens the port named by `cloudphone.report` (`stdout` or a path), default hvc1,
    /// falling back to stdout when the port cannot be opened.
    pub fn open(port: Option<&str>) -> Self {
        let port = port.unwrap_or(DEFAULT_PORT);
        if port == "stdout" {
            return Reporter::new(Box::new(std::io::stdout()));
        }
        match std::fs::OpenOptions::new().write(true).open(port) {
            Ok(f) => Reporter::new(Box::new(f)),
            Err(e) => {
                tracing::warn!("report port {port} unavailable ({e}); reporting on stdout instead");
                Reporter::new(Box::new(std::io::stdout()))
            }
        }
    }

    /// A reporter over any writer.
    pub fn new(out: Box<dyn Write + Send>) -> Self {
        Reporter { out, broken: false }
    }

    /// Writes one line and flushes it.
    pub fn line(&mut self, line: &str) {
        if self.broken {
            return;
        }
        if let Err(e) = writeln!(self.out, "{line}").and_then(|_| self.out.flush()) {
            tracing::warn!("report port write failed ({e}); further report lines are dropped");
            self.broken = true;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::input::evdev::Key;
    use crate::ui::App;

    #[test]
    fn line_formats() {
        assert_eq!(ready_line(720, 1280), "PHONE_READY width=720 height=1280");
        assert_eq!(screen_line(Screen::App(App::Info)), "SCREEN app=info");
        let t = Input::Touch {
            slot: 1,
            action: TouchAction::Move,
            x: 3,
            y: 4,
        };
        assert_eq!(
            input_line(10, &t, 7),
            "INPUT t_us=10 kind=touch slot=1 action=move x=3 y=4 frame_us=7"
        );
        let k = Input::Key {
            key: Key::Back,
            down: true,
        };
        assert_eq!(
            input_line(10, &k, 7),
            "INPUT t_us=10 kind=key key=BACK down=1 frame_us=7"
        );
    }

    #[test]
    fn reporter_writes_lines() {
        let path = std::env::temp_dir().join(format!("phone-agent-report-{}", std::process::id()));
        std::fs::write(&path, "").unwrap();
        let mut r = Reporter::open(path.to_str());
        r.line("A");
        r.line("B");
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "A\nB\n");
        std::fs::remove_file(path).unwrap();
    }
}
