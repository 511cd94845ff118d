//! adbd: the device side of the adb protocol (version 0x01000001) on vsock port 5555.
//!
//! Each connection starts with the host's key preamble ([`cloudphone_adb::preamble`]): the
//! keys of the lease owner. Then the adb handshake: the client's CNXN is answered with AUTH
//! TOKEN (20 random bytes); an AUTH SIGNATURE that verifies against a preamble key gets our
//! CNXN (banner `device::ro.product.name=..;ro.product.model=..;features=shell_v2`), any
//! other signature a fresh token (at most [`MAX_AUTH_ATTEMPTS`]); an AUTH RSAPUBLICKEY (a key
//! adb would prompt for) closes the connection: the phone never prompts. Then OPEN starts a
//! service on its own thread ([`services`]); WRTE/OKAY carry stream data with one write in
//! flight per direction ([`stream`]); CLSE ends a stream.
//!
//! Hostile clients: a bad preamble, magic, checksum or oversized packet ends the connection
//! (logged, rate-limited); streams and auth attempts are capped; unknown services get CLSE.

mod bundle;
mod commands;
mod exec;
mod files;
pub mod logs;
mod services;
mod stream;

use std::io::Write;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use cloudphone_adb::key::{AdbPublicKey, TOKEN_LEN};
use cloudphone_adb::packet::{self, Packet};
use cloudphone_adb::preamble;

use crate::input::evdev::Input;
use stream::{send, PacketSink, Streams};

/// The vsock port adbd listens on (Android's adbd port, as in Cuttlefish).
pub const PORT: u32 = 5555;
/// Connections served at once; more are closed at once.
const MAX_CONNECTIONS: usize = 8;
/// Failed AUTH SIGNATUREs (and CNXNs, each of which asks for a fresh token) per connection
/// before it is closed (adb clients try each of their keys once, so a handful is plenty;
/// more is a guessing attack).
pub const MAX_AUTH_ATTEMPTS: u32 = 10;
/// Time from the preamble to a successful AUTH; a client silent longer is dropped (it would
/// otherwise hold one of the few connection slots forever).
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(30);
/// Features we implement and advertise in the CNXN banner.
const FEATURES: &str = "shell_v2";

/// What adbd needs from the running phone: its screen and its input path.
pub trait Phone: Send + Sync {
    /// The current screen as a PNG.
    fn screencap(&self) -> anyhow::Result<Vec<u8>>;
    /// Feeds inputs through the same path as virtio-input events (the UI's handler).
    fn inject(&self, inputs: Vec<Input>) -> anyhow::Result<()>;
    /// Screen size in pixels (for `input` coordinate checks and `wm size`).
    fn screen_size(&self) -> (i32, i32);
    /// Syncs the disks and restarts the phone (`adb reboot`); returns only on failure.
    fn reboot(&self) -> anyhow::Result<()>;
}

/// adbd's settings.
pub struct Config {
    /// Directories `sync:` may read and write (push/pull are confined to them).
    pub roots: Vec<PathBuf>,
    /// Where `pm install` unpacks app bundles (one subdirectory per app).
    pub apps_dir: PathBuf,
    /// `ro.product.name` in the banner.
    pub product: String,
    /// `ro.product.model` in the banner.
    pub model: String,
    /// The phone's screen and input.
    pub phone: Arc<dyn Phone>,
}

impl Config {
    fn banner(&self) -> String {
        let clean = |s: &str| s.replace([';', '=', ':', '\0'], "_");
        format!(
            "device::ro.product.name={};ro.product.model={};ro.product.device={};features={FEATURES}",
            clean(&self.product),
            clean(&self.model),
            clean(&self.product)
        )
    }
}

/// Binds adbd's vsock listener (any CID, `port`).
pub fn listen(port: u32) -> anyhow::Result<OwnedFd> {
    // SAFETY: plain socket creation; the result is checked.
    let fd = unsafe { libc::socket(libc::AF_VSOCK, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        bail!(
            "vsock socket: {} (is the vsock / vmw_vsock_virtio_transport module loaded?)",
            std::io::Error::last_os_error()
        );
    }
    // SAFETY: fd is a fresh socket we own.
    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: sockaddr_vm is plain data; zero is a valid starting value.
    let mut addr: libc::sockaddr_vm = unsafe { std::mem::zeroed() };
    addr.svm_family = libc::AF_VSOCK as libc::sa_family_t;
    addr.svm_port = port;
    addr.svm_cid = libc::VMADDR_CID_ANY;
    let len = std::mem::size_of::<libc::sockaddr_vm>() as libc::socklen_t;
    // SAFETY: addr is a valid sockaddr_vm of `len` bytes.
    if unsafe { libc::bind(fd, (&addr as *const libc::sockaddr_vm).cast(), len) } != 0 {
        bail!(
            "vsock bind port {port}: {}",
            std::io::Error::last_os_error()
        );
    }
    // SAFETY: listening on our own bound socket.
    if unsafe { libc::listen(fd, 8) } != 0 {
        bail!(
            "vsock listen port {port}: {}",
            std::io::Error::last_os_error()
        );
    }
    Ok(owned)
}

/// Accepts connections forever on a background thread, each served on its own thread.
pub fn spawn(listener: OwnedFd, config: Arc<Config>) -> std::io::Result<()> {
    std::thread::Builder::new()
        .name("adbd".into())
        .spawn(move || {
            let active = Arc::new(AtomicUsize::new(0));
            loop {
                // SAFETY: accepting on our listening socket; the peer address is not needed.
                let fd = unsafe {
                    libc::accept4(
                        listener.as_raw_fd(),
                        std::ptr::null_mut(),
                        std::ptr::null_mut(),
                        libc::SOCK_CLOEXEC,
                    )
                };
                if fd < 0 {
                    tracing::warn!("adbd accept: {}", std::io::Error::last_os_error());
                    std::thread::sleep(Duration::from_millis(100));
                    continue;
                }
                // SAFETY: accept returned a new connected socket that we now own.
                let conn = UnixStream::from(unsafe { OwnedFd::from_raw_fd(fd) });
                if active.fetch_add(1, Ordering::SeqCst) >= MAX_CONNECTIONS {
                    active.fetch_sub(1, Ordering::SeqCst);
                    limited_warn(format_args!(
                        "adbd: more than {MAX_CONNECTIONS} connections; closing the newest"
                    ));
                    continue;
                }
                let (ours, config) = (active.clone(), config.clone());
                let spawned =
                    std::thread::Builder::new()
                        .name("adbd-conn".into())
                        .spawn(move || {
                            if let Err(e) = serve(conn, &config) {
                                limited_warn(format_args!("adbd connection closed: {e:#}"));
                            }
                            ours.fetch_sub(1, Ordering::SeqCst);
                        });
                if spawned.is_err() {
                    active.fetch_sub(1, Ordering::SeqCst);
                    tracing::warn!("adbd: cannot start a connection thread");
                }
            }
        })?;
    Ok(())
}

/// Logs a warning at most once a second (hostile peers must not flood the log).
fn limited_warn(message: std::fmt::Arguments<'_>) {
    static LAST_MS: AtomicU64 = AtomicU64::new(0);
    static SUPPRESSED: AtomicU64 = AtomicU64::new(0);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    let last = LAST_MS.load(Ordering::Relaxed);
    if now.saturating_sub(last) >= 1000
        && LAST_MS
            .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
    {
        let skipped = SUPPRESSED.swap(0, Ordering::Relaxed);
        tracing::warn!("{message} ({skipped} similar messages suppressed)");
    } else {
        SUPPRESSED.fetch_add(1, Ordering::Relaxed);
    }
}

/// Serves one connection: preamble, handshake, then streams until either side closes.
pub fn serve(conn: UnixStream, config: &Arc<Config>) -> anyhow::Result<()> {
    conn.set_read_timeout(Some(Duration::from_millis(250)))?;
    let mut reader = conn.try_clone()?;
    let keys = preamble::read(&mut reader, Instant::now() + preamble::TIMEOUT)
        .context("reading the host's key preamble")?;
    conn.set_read_timeout(Some(HANDSHAKE_TIMEOUT))?;
    let sink: PacketSink = Arc::new(Mutex::new(
        Box::new(conn.try_clone()?) as Box<dyn Write + Send>
    ));
    let streams = Streams::default();
    let result = Session {
        keys,
        sink: sink.clone(),
        streams: streams.clone(),
        config: config.clone(),
    }
    .run(&mut reader);
    streams.clear();
    let _ = conn.shutdown(std::net::Shutdown::Both);
    result
}

struct Session {
    keys: Vec<AdbPublicKey>,
    sink: PacketSink,
    streams: Streams,
    config: Arc<Config>,
}

impl Session {
    fn run(&self, reader: &mut UnixStream) -> anyhow::Result<()> {
        let max_payload = self.authenticate(reader)?;
        reader.set_read_timeout(None)?;
        let mut next_local: u32 = 1;
        loop {
            let p = Packet::read_from(reader, max_payload, false)?;
            match p.command {
                packet::A_OPEN => {
                    let local = next_local;
                    next_local = next_local.wrapping_add(1).max(1);
                    self.open(local, p.arg0, &p.payload, max_payload as usize)?;
                }
                packet::A_WRTE => {
                    if self.streams.deliver(p.arg1, p.payload) == stream::Delivery::Flooded {
                        limited_warn(format_args!(
                            "adbd: client wrote to stream {} without waiting for OKAY; closing it",
                            p.arg1
                        ));
                        if self.streams.remove(p.arg1) {
                            send(
                                &self.sink,
                                &Packet::new(packet::A_CLSE, p.arg1, p.arg0, Vec::new()),
                            )?;
                        }
                    }
                }
                packet::A_OKAY => self.streams.okay(p.arg1),
                packet::A_CLSE => {
                    self.streams.remove(p.arg1);
                }
                other => tracing::debug!(
                    "adbd: ignoring {} after connect",
                    packet::command_name(other)
                ),
            }
        }
    }

    /// Runs CNXN/AUTH until a signature verifies; returns the negotiated max payload.
    fn authenticate(&self, reader: &mut UnixStream) -> anyhow::Result<u32> {
        let mut client_max = None;
        let mut token = [0u8; TOKEN_LEN];
        let (mut attempts, mut connects) = (0, 0);
        loop {
            let p = Packet::read_from(reader, packet::MAX_PAYLOAD_BEFORE_CONNECT, true)?;
            match (p.command, p.arg0) {
                (packet::A_CNXN, version) => {
                    connects += 1;
                    if connects > MAX_AUTH_ATTEMPTS {
                        anyhow::bail!("{connects} CNXN messages without authenticating; closing");
                    }
                    if version < packet::VERSION_MIN {
                        anyhow::bail!(
                            "adb client speaks protocol {version:#x}, older than {:#x}",
                            packet::VERSION_MIN
                        );
                    }
                    client_max = Some(p.arg1.clamp(4096, packet::MAX_PAYLOAD));
                    token = fresh_token()?;
                    send(
                        &self.sink,
                        &Packet::new(packet::A_AUTH, packet::AUTH_TOKEN, 0, token.to_vec()),
                    )?;
                }
                (packet::A_AUTH, packet::AUTH_SIGNATURE) if client_max.is_some() => {
                    if self.keys.iter().any(|k| k.verifies(&token, &p.payload)) {
                        let max = client_max.unwrap_or(packet::MAX_PAYLOAD);
                        let banner = self.config.banner().into_bytes();
                        send(
                            &self.sink,
                            &Packet::new(packet::A_CNXN, packet::VERSION, max, banner),
                        )?;
                        tracing::info!("adbd: client authenticated (max payload {max})");
                        return Ok(max);
                    }
                    attempts += 1;
                    if attempts >= MAX_AUTH_ATTEMPTS {
                        anyhow::bail!("{attempts} AUTH signatures failed; closing (keys must be registered to the lease's user)");
                    }
                    token = fresh_token()?;
                    send(
                        &self.sink,
                        &Packet::new(packet::A_AUTH, packet::AUTH_TOKEN, 0, token.to_vec()),
                    )?;
                }
                (packet::A_AUTH, packet::AUTH_RSAPUBLICKEY) => {
                    anyhow::bail!("adb client offered a key not registered to the lease's user (AUTH refused; register it with `cloudphone keys add`)");
                }
                (command, _) => anyhow::bail!(
                    "adb client sent {} before authenticating",
                    packet::command_name(command)
                ),
            }
        }
    }

    /// Starts a service for an OPEN, or refuses it with CLSE.
    fn open(
        &self,
        local: u32,
        remote: u32,
        payload: &[u8],
        max_payload: usize,
    ) -> std::io::Result<()> {
        let name = String::from_utf8_lossy(payload)
            .trim_end_matches('\0')
            .to_string();
        let refuse = |why: &str| {
            limited_warn(format_args!("adbd: refusing service {name:?}: {why}"));
            send(
                &self.sink,
                &Packet::new(packet::A_CLSE, 0, remote, Vec::new()),
            )
        };
        let Some(service) = services::Service::parse(&name) else {
            return refuse("unknown service");
        };
        let Some((reader, writer)) =
            self.streams
                .open(local, remote, self.sink.clone(), max_payload)
        else {
            return refuse("too many open streams");
        };
        send(
            &self.sink,
            &Packet::new(packet::A_OKAY, local, remote, Vec::new()),
        )?;
        let config = self.config.clone();
        let spawned = std::thread::Builder::new()
            .name("adbd-service".into())
            .spawn(move || services::run(service, reader, writer, &config));
        if spawned.is_err() {
            tracing::warn!("adbd: cannot start a service thread for {name:?}");
        }
        Ok(())
    }
}

/// 20 random bytes from the kernel.
fn fresh_token() -> std::io::Result<[u8; TOKEN_LEN]> {
    let mut t = [0u8; TOKEN_LEN];
    // SAFETY: getrandom writes at most t.len() bytes into t.
    let n = unsafe { libc::getrandom(t.as_mut_ptr().cast(), t.len(), 0) };
    if n != t.len() as isize {
        return Err(std::io::Error::last_os_error());
    }
    Ok(t)
}
