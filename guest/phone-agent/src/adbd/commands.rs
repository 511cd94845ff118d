//! Phone commands adbd answers itself instead of passing to `sh`, as Android's own binaries
//! would: `screencap [-p]` (the screen as PNG on stdout), `input tap|swipe|keyevent|text`
//! (fed through the UI's virtio-input handler), `pm install|list packages` (app bundles, see
//! [`super::bundle`]), `logcat [-d|-c]` and `wm size`. A command line with shell syntax
//! (pipes, redirections, `;`...) goes to `sh` unchanged.

use std::sync::Arc;
use std::time::Duration;

use super::exec::Output;
use std::os::unix::fs::OpenOptionsExt;

use anyhow::Context;

use super::{bundle, files, logs, Config};
use crate::input::evdev::{Input, Key, TouchAction};

/// A recognised built-in command line, split into words.
#[derive(Debug, PartialEq, Eq)]
pub struct Builtin(Vec<String>);

/// What `adb logcat` puts before `exec logcat ...` (adb 29: `export ANDROID_LOG_TAGS="..."; `).
const LOGCAT_PREFIX: &str = "export ANDROID_LOG_TAGS=";

/// Splits `line` like sh would (quotes and backslashes) when it is a plain command naming a
/// built-in; None when it is for the shell. adb's own wrappers (`export ANDROID_LOG_TAGS=..;
/// exec logcat`) count as plain.
pub fn parse(line: &str) -> Option<Builtin> {
    let line = match line.strip_prefix(LOGCAT_PREFIX) {
        Some(rest) => rest.split_once("; ")?.1,
        None => line,
    };
    let line = line.trim_start().strip_prefix("exec ").unwrap_or(line);
    let mut words = Vec::new();
    let mut word: Option<String> = None;
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match c {
            '\'' => {
                let w = word.get_or_insert_with(String::new);
                loop {
                    match chars.next()? {
                        '\'' => break,
                        c => w.push(c),
                    }
                }
            }
            '"' => {
                let w = word.get_or_insert_with(String::new);
                loop {
                    match chars.next()? {
                        '"' => break,
                        '\\' => w.push(chars.next()?),
                        '$' | '`' => return None,
                        c => w.push(c),
                    }
                }
            }
            '\\' => word.get_or_insert_with(String::new).push(chars.next()?),
            ' ' | '\t' => words.extend(word.take()),
            '|' | '&' | ';' | '<' | '>' | '(' | ')' | '$' | '`' | '\n' | '*' | '?' | '~' => {
                return None
            }
            c => word.get_or_insert_with(String::new).push(c),
        }
    }
    words.extend(word);
    match words.first().map(String::as_str) {
        Some("screencap" | "input" | "pm" | "logcat" | "wm") => Some(Builtin(words)),
        _ => None,
    }
}

/// Runs a built-in; returns its exit code (errors are written to stderr).
pub fn run(builtin: Builtin, out: &Output, config: &Arc<Config>) -> i32 {
    let words: Vec<&str> = builtin.0.iter().map(String::as_str).collect();
    let result = match words.as_slice() {
        ["screencap", "-p"] | ["screencap"] => config
            .phone
            .screencap()
            .and_then(|png| Ok(out.stdout(&png)?)),
        ["screencap", "-p", file] | ["screencap", file] => screencap_to(file, config),
        ["input", args @ ..] => input(args, config),
        ["pm", "install", .., path] => {
            return match bundle::install(path.as_bytes(), &config.roots, &config.apps_dir) {
                Ok(name) => {
                    tracing::info!("installed app {name}");
                    reply(out, "Success\n", 0)
                }
                Err(e) => reply(out, &format!("Failure [INSTALL_FAILED_INVALID_APK: {e:#}]\n"), 1),
            }
        }
        ["pm", "list", "packages"] => bundle::installed(&config.apps_dir).and_then(|names| {
            let text: String = names.iter().map(|n| format!("package:{n}\n")).collect();
            Ok(out.stdout(text.as_bytes())?)
        }),
        ["logcat", "-c"] => {
            logs::clear();
            Ok(())
        }
        ["logcat", rest @ ..] if rest.iter().all(|a| *a == "-d") => {
            logcat(out, rest.is_empty()).map_err(Into::into)
        }
        ["wm", "size"] => {
            let (w, h) = config.phone.screen_size();
            out.stdout(format!("Physical size: {w}x{h}\n").as_bytes()).map_err(Into::into)
        }
        _ => Err(anyhow::anyhow!(
            "usage: screencap [-p] [FILE] | input tap X Y | input swipe X1 Y1 X2 Y2 [MS] | input keyevent KEY... | pm install FILE.apk | pm list packages | logcat [-d|-c] | wm size"
        )),
    };
    match result {
        Ok(()) => 0,
        Err(e) => reply(out, &format!("{}: {e:#}\n", words[0]), 1),
    }
}

/// `screencap [-p] FILE`: the PNG into a file inside the sync roots (never through a symlink).
fn screencap_to(file: &str, config: &Arc<Config>) -> anyhow::Result<()> {
    let path = files::confine(file.as_bytes(), &config.roots).map_err(anyhow::Error::msg)?;
    let png = config.phone.screencap()?;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&path)
        .with_context(|| format!("creating {}", path.display()))?;
    std::io::Write::write_all(&mut f, &png)?;
    Ok(())
}

/// Writes a final message (stdout for code 0, stderr otherwise) and returns the code.
fn reply(out: &Output, text: &str, code: i32) -> i32 {
    let _ = if code == 0 {
        out.stdout(text.as_bytes())
    } else {
        out.stderr(text.as_bytes())
    };
    code
}

/// Streams the log: everything kept, then (when `follow`) new lines until the client leaves.
fn logcat(out: &Output, follow: bool) -> std::io::Result<()> {
    let (lines, mut seen) = logs::since(0, Duration::ZERO);
    out.stdout(
        lines
            .iter()
            .map(|l| format!("{l}\n"))
            .collect::<String>()
            .as_bytes(),
    )?;
    while follow && !out.client_gone() {
        let (lines, newest) = logs::since(seen, Duration::from_secs(1));
        seen = newest;
        if !lines.is_empty() {
            out.stdout(
                lines
                    .iter()
                    .map(|l| format!("{l}\n"))
                    .collect::<String>()
                    .as_bytes(),
            )?;
        }
    }
    Ok(())
}

/// Touch and key events for `input ...`, fed to the UI as virtio-input events would be.
fn input(args: &[&str], config: &Arc<Config>) -> anyhow::Result<()> {
    let (w, h) = config.phone.screen_size();
    let point = |x: &str, y: &str| -> anyhow::Result<(i32, i32)> {
        let (x, y): (f64, f64) = (x.parse()?, y.parse()?);
        let (x, y) = (x.round() as i32, y.round() as i32);
        anyhow::ensure!(
            (0..w).contains(&x) && (0..h).contains(&y),
            "({x}, {y}) is off the {w}x{h} screen"
        );
        Ok((x, y))
    };
    let touch = |action, (x, y): (i32, i32)| Input::Touch {
        slot: 0,
        action,
        x,
        y,
    };
    let phone = &config.phone;
    match args {
        ["tap", x, y] => {
            let p = point(x, y)?;
            phone.inject(vec![touch(TouchAction::Down, p)])?;
            phone.inject(vec![touch(TouchAction::Up, p)])
        }
        ["swipe", x1, y1, x2, y2, rest @ ..] => {
            let (a, b) = (point(x1, y1)?, point(x2, y2)?);
            let ms: u64 = match rest {
                [] => 300,
                [ms] => ms.parse()?,
                _ => anyhow::bail!("swipe takes X1 Y1 X2 Y2 [DURATION_MS]"),
            };
            const STEPS: i32 = 10;
            phone.inject(vec![touch(TouchAction::Down, a)])?;
            for i in 1..=STEPS {
                std::thread::sleep(Duration::from_millis(ms.min(10_000) / STEPS as u64));
                let p = (a.0 + (b.0 - a.0) * i / STEPS, a.1 + (b.1 - a.1) * i / STEPS);
                phone.inject(vec![touch(TouchAction::Move, p)])?;
            }
            phone.inject(vec![touch(TouchAction::Up, b)])
        }
        ["keyevent", keys @ ..] if !keys.is_empty() => {
            for k in keys {
                let key = keycode(k).ok_or_else(|| anyhow::anyhow!("unknown key {k:?} (this phone has HOME, BACK, APP_SWITCH, POWER, VOLUME_UP, VOLUME_DOWN)"))?;
                phone.inject(vec![Input::Key { key, down: true }])?;
                phone.inject(vec![Input::Key { key, down: false }])?;
            }
            Ok(())
        }
        ["text", ..] => anyhow::bail!("the test phone has no text field to type into"),
        _ => anyhow::bail!(
            "usage: input tap X Y | input swipe X1 Y1 X2 Y2 [MS] | input keyevent KEY..."
        ),
    }
}

/// An Android key code (number or KEYCODE_ name, prefix optional) this phone has.
fn keycode(name: &str) -> Option<Key> {
    Some(match name.trim_start_matches("KEYCODE_") {
        "3" | "HOME" => Key::Home,
        "4" | "BACK" => Key::Back,
        "187" | "APP_SWITCH" => Key::AppSwitch,
        "26" | "POWER" => Key::Power,
        "24" | "VOLUME_UP" => Key::VolumeUp,
        "25" | "VOLUME_DOWN" => Key::VolumeDown,
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_plain_builtins_and_leaves_shell_syntax_to_sh() {
        let words = |l: &str| parse(l).map(|b| b.0);
        assert_eq!(
            words("pm 'install' '/data/local/tmp/a b.apk'").unwrap(),
            ["pm", "install", "/data/local/tmp/a b.apk"]
        );
        assert_eq!(
            words("input  tap 10 \"20\"").unwrap(),
            ["input", "tap", "10", "20"]
        );
        assert_eq!(words("screencap -p").unwrap(), ["screencap", "-p"]);
        assert_eq!(
            words("export ANDROID_LOG_TAGS=\"''\"; exec logcat '-d'").unwrap(),
            ["logcat", "-d"]
        );
        for shell in [
            "screencap -p > /data/x.png",
            "echo hi",
            "input tap 1 2; reboot",
            "pm 'unterminated",
            "logcat | grep x",
            "input text $HOME",
        ] {
            assert_eq!(parse(shell), None, "{shell}");
        }
        assert_eq!(keycode("KEYCODE_HOME"), Some(Key::Home));
        assert_eq!(keycode("4"), Some(Key::Back));
        assert_eq!(keycode("KEYCODE_A"), None);
    }
}
