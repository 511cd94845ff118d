//! Test double of a phone's VMM API socket: a real shared framebuffer file with a test pattern,
//! a chunked `GET /framebuffer/events` stream fed by [`FakeVmm::damage`], and a `PUT /input`
//! that records the JSON bodies it receives (anything else: 400).

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::mpsc;

/// Colours of the test pattern's four horizontal bands (R, G, B), top to bottom.
pub const BANDS: [[u8; 3]; 4] = [[230, 30, 30], [30, 200, 40], [40, 60, 220], [240, 240, 240]];

#[derive(Default)]
struct State {
    inputs: Vec<String>,
    subscribers: Vec<mpsc::UnboundedSender<String>>,
    seq: u64,
}

/// A fake VMM serving one `width`×`height` B8G8R8X8 screen.
pub struct FakeVmm {
    pub dir: PathBuf,
    pub socket: PathBuf,
    pub width: u32,
    pub height: u32,
    state: Arc<Mutex<State>>,
    server: tokio::task::JoinHandle<()>,
}

/// A fresh private directory for one test.
pub fn test_dir(tag: &str) -> PathBuf {
    static N: AtomicU64 = AtomicU64::new(0);
    let dir = std::env::temp_dir().join(format!(
        "cloudphone-stream-{tag}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// The banded test pattern as BGRX bytes.
pub fn pattern(width: u32, height: u32) -> Vec<u8> {
    let mut px = Vec::with_capacity((width * height * 4) as usize);
    for y in 0..height {
        let [r, g, b] = BANDS[(y * 4 / height) as usize];
        for _ in 0..width {
            px.extend_from_slice(&[b, g, r, 0]);
        }
    }
    px
}

impl FakeVmm {
    /// Start serving on a socket in a new test directory (inside a tokio runtime).
    pub fn start(width: u32, height: u32) -> Self {
        let dir = test_dir("vmm");
        std::fs::write(dir.join("fb"), pattern(width, height)).unwrap();
        let socket = dir.join("api.sock");
        let listener = UnixListener::bind(&socket).unwrap();
        let state = Arc::new(Mutex::new(State::default()));
        let info = serde_json::json!({
            "path": dir.join("fb"), "width": width, "height": height,
            "stride": width * 4, "format": "B8G8R8X8", "seq": 0,
        })
        .to_string();
        let shared = state.clone();
        let server = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(serve(stream, shared.clone(), info.clone()));
            }
        });
        Self {
            dir,
            socket,
            width,
            height,
            state,
            server,
        }
    }

    /// Publish one damage event (the whole screen) to every events subscriber.
    pub fn damage(&self) {
        let mut st = self.state.lock().unwrap();
        st.seq += 1;
        let line = format!(
            "{{\"seq\":{},\"x\":0,\"y\":0,\"width\":{},\"height\":{}}}\n",
            st.seq, self.width, self.height
        );
        st.subscribers.retain(|s| s.send(line.clone()).is_ok());
    }

    /// Number of open damage subscriptions.
    pub fn subscribers(&self) -> usize {
        let mut st = self.state.lock().unwrap();
        st.subscribers.retain(|s| !s.is_closed());
        st.subscribers.len()
    }

    /// `PUT /input` bodies received so far.
    pub fn inputs(&self) -> Vec<String> {
        self.state.lock().unwrap().inputs.clone()
    }
}

impl Drop for FakeVmm {
    fn drop(&mut self) {
        self.server.abort();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

async fn serve(stream: UnixStream, state: Arc<Mutex<State>>, info: String) {
    let mut reader = BufReader::new(stream);
    let mut head = String::new();
    let mut length = 0usize;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).await.unwrap_or(0) == 0 {
            return;
        }
        if line == "\r\n" {
            break;
        }
        if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
            length = v.trim().parse().unwrap_or(0);
        }
        head.push_str(&line);
    }
    let mut body = vec![0u8; length.min(65536)];
    if reader.read_exact(&mut body).await.is_err() {
        return;
    }
    let mut stream = reader.into_inner();
    let request_line = head.lines().next().unwrap_or_default().to_owned();
    let reply = |status: &str, body: &str| {
        format!(
            "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
    };
    let response = if request_line.starts_with("GET /framebuffer/events ") {
        let (tx, mut rx) = mpsc::unbounded_channel();
        state.lock().unwrap().subscribers.push(tx);
        let start = "HTTP/1.1 200 OK\r\nContent-Type: application/x-ndjson\r\nTransfer-Encoding: chunked\r\n\r\n";
        if stream.write_all(start.as_bytes()).await.is_err() {
            return;
        }
        loop {
            let mut probe = [0u8; 1];
            tokio::select! {
                line = rx.recv() => {
                    let Some(line) = line else { return };
                    let chunk = format!("{:x}\r\n{line}\r\n", line.len());
                    if stream.write_all(chunk.as_bytes()).await.is_err() {
                        return;
                    }
                }
                // The client hung up (read returns 0 or fails): end the subscription.
                _ = stream.read(&mut probe) => return,
            }
        }
    } else if request_line.starts_with("GET /framebuffer ") {
        reply("200 OK", &info)
    } else if request_line.starts_with("PUT /input ")
        && serde_json::from_slice::<serde_json::Value>(&body).is_err()
    {
        reply("400 Bad Request", r#"{"error":"input body is not JSON"}"#)
    } else if request_line.starts_with("PUT /input ") {
        state
            .lock()
            .unwrap()
            .inputs
            .push(String::from_utf8_lossy(&body).into_owned());
        reply("200 OK", "{}")
    } else {
        reply("404 Not Found", r#"{"error":"unknown path"}"#)
    };
    let _ = stream.write_all(response.as_bytes()).await;
    let _ = stream.shutdown().await;
}

/// Poll `check` every 25 ms until it holds; panics naming `what` once `within` has passed.
pub async fn until(what: &str, within: std::time::Duration, mut check: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + within;
    while !check() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(25)).await;
    }
}
