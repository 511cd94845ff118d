//! Headless Chromium driven over chromedriver's W3C WebDriver protocol (Debian `chromium` +
//! `chromium-driver`): the browser tests' only way to act like a user.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use serde_json::{json, Value};

use crate::http;

const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";

/// One browser session; chromedriver and its Chromium are killed on drop.
pub struct Browser {
    driver: Child,
    addr: String,
    session: String,
}

impl Browser {
    /// Start chromedriver and a headless Chromium that may autoplay and use loopback WebRTC.
    pub fn start(window: (u32, u32)) -> Result<Self> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let driver = Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting chromedriver (apt-get install chromium chromium-driver)")?;
        let mut browser = Self {
            driver,
            addr: format!("127.0.0.1:{port}"),
            session: String::new(),
        };
        let up = crate::poll(Duration::from_secs(30), Duration::from_millis(100), || {
            Ok(http::request(&browser.addr, "GET", "/status", None, None)
                .ok()
                .map(drop))
        })?;
        if up.is_none() {
            bail!(
                "chromedriver did not answer on {} within 30 s",
                browser.addr
            );
        }
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {"binary": CHROMIUM, "args": [
                "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                "--disable-component-update", "--no-first-run",
                format!("--window-size={},{}", window.0, window.1),
                "--autoplay-policy=no-user-gesture-required", "--allow-loopback-in-peer-connection",
                "--disable-features=WebRtcHideLocalIpsWithMdns",
            ]}
        }}});
        let session = browser.call("POST", "/session", Some(&caps))?;
        browser.session = session["sessionId"]
            .as_str()
            .context("chromedriver gave no session id")?
            .to_owned();
        Ok(browser)
    }

    fn call(&self, method: &str, path: &str, body: Option<&Value>) -> Result<Value> {
        let (status, reply) = http::request(&self.addr, method, path, None, body)?;
        if !(200..300).contains(&status) {
            bail!("WebDriver {method} {path}: {status} {reply}");
        }
        Ok(reply["value"].clone())
    }

    fn session_call(&self, method: &str, path: &str, body: &Value) -> Result<Value> {
        self.call(
            method,
            &format!("/session/{}{path}", self.session),
            Some(body),
        )
    }

    /// Navigate to `url`.
    pub fn open(&self, url: &str) -> Result<()> {
        self.session_call("POST", "/url", &json!({ "url": url }))
            .map(drop)
    }

    /// Run `script` (a function body; `arguments[i]` are `args`) in the page; its return value.
    pub fn script(&self, script: &str, args: &[Value]) -> Result<Value> {
        self.session_call(
            "POST",
            "/execute/sync",
            &json!({"script": script, "args": args}),
        )
    }

    /// Poll `script(args)` until `done` accepts its value; the last value on timeout as the error.
    pub fn wait_for(
        &self,
        what: &str,
        timeout: Duration,
        (script, args): (&str, &[Value]),
        done: impl Fn(&Value) -> bool,
    ) -> Result<Value> {
        let mut last = Value::Null;
        let found = crate::poll(timeout, Duration::from_millis(200), || {
            let value = self.script(script, args)?;
            if done(&value) {
                return Ok(Some(value));
            }
            last = value;
            Ok(None)
        })?;
        found.ok_or_else(|| anyhow!("browser: no {what} within {timeout:?}; last: {last}"))
    }

    /// Open the web UI at `base_url` and log in through its form as `name`.
    pub fn log_in(&self, base_url: &str, name: &str, password: &str) -> Result<()> {
        self.open(&format!("{base_url}/"))?;
        self.wait_for(
            "the login form",
            Duration::from_secs(30),
            ("return !!document.querySelector('form.login')", &[]),
            |v| v == true,
        )?;
        self.script(
            "const f = document.querySelector('form.login');
             f.querySelector('[name=name]').value = arguments[0];
             f.querySelector('[name=password]').value = arguments[1];
             f.requestSubmit();",
            &[json!(name), json!(password)],
        )
        .map(drop)
    }

    /// A real (trusted) pointer tap at viewport CSS pixel `(x, y)`.
    pub fn tap(&self, x: f64, y: f64) -> Result<()> {
        let actions = json!({"actions": [{"type": "pointer", "id": "finger", "parameters": {"pointerType": "mouse"}, "actions": [
            {"type": "pointerMove", "origin": "viewport", "x": x.round() as i64, "y": y.round() as i64},
            {"type": "pointerDown", "button": 0},
            {"type": "pause", "duration": 60},
            {"type": "pointerUp", "button": 0},
        ]}]});
        self.session_call("POST", "/actions", &actions).map(drop)
    }
}

impl Browser {
    /// A PNG of the browser window as the user sees it (docs screenshots, failure evidence).
    pub fn screenshot_png(&self) -> Result<Vec<u8>> {
        use base64::Engine as _;
        let value = self.call(
            "GET",
            &format!("/session/{}/screenshot", self.session),
            None,
        )?;
        let text = value
            .as_str()
            .context("screenshot reply is not a base64 string")?;
        base64::engine::general_purpose::STANDARD
            .decode(text)
            .map_err(|e| anyhow::anyhow!("screenshot is not valid base64: {e}"))
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.call("DELETE", &format!("/session/{}", self.session), None);
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}
