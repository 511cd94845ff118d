//! adb helpers for tests and benchmarks: Debian's `adb` client with a private HOME, key and
//! server port (killed on drop; the sandbox has a fresh /tmp, so nothing is shared), and a TCP
//! bridge that prefixes every connection with the `CLOUDPHONE-ADB 1` key preamble, either to an
//! in-process adbd or to a VMM's hybrid vsock socket (`CONNECT 5555`); and a native adb client
//! ([`shell`]) for where Debian's adb server cannot run (inside scripts/kvm-sandbox).

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use cloudphone_adb::key::AdbPublicKey;
use cloudphone_adb::preamble;

/// An adb client with its own HOME (holding a fresh `~/.android/adbkey`) and its own adb
/// server, started by us on 127.0.0.1 (adb's autostart connects to `localhost`, which may mean
/// ::1, absent in the sandbox) and killed on drop.
pub struct AdbClient {
    home: PathBuf,
    server_port: u16,
    server: Child,
    /// `127.0.0.1:PORT` of the device this client talks to.
    pub serial: String,
}

/// Bytes as text, for assertions.
pub fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free local TCP port")
}

impl AdbClient {
    /// A client under `home` (created) for the device at `127.0.0.1:device_port`.
    pub fn new(home: &Path, device_port: u16) -> Result<AdbClient> {
        crate::loopback_up();
        std::fs::create_dir_all(home.join(".android"))?;
        let key = home.join(".android/adbkey");
        let keygen = Command::new("adb")
            .env("HOME", home)
            .arg("keygen")
            .arg(&key)
            .output()
            .context("running Debian's adb (apt-get install adb)")?;
        if !keygen.status.success() {
            bail!("adb keygen failed: {keygen:?}");
        }
        let server_port = free_port();
        let server = Command::new("adb")
            .env("HOME", home)
            // No USB or mDNS discovery: only the TCP device is wanted, and in the sandbox the
            // server stalled before listening with them on.
            .env("ADB_USB", "0")
            .env("ADB_MDNS", "0")
            .env("ADB_EMU", "0")
            .args(["-L", &format!("tcp:{server_port}"), "server", "nodaemon"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(home.join("adb-server.log"))?)
            .spawn()
            .context("starting an adb server")?;
        let client = AdbClient {
            home: home.to_path_buf(),
            server_port,
            server,
            serial: format!("127.0.0.1:{device_port}"),
        };
        // Generous: under nested virtualisation a busy sandbox starts adb slowly.
        let up = crate::poll(Duration::from_secs(60), Duration::from_millis(50), || {
            Ok(TcpStream::connect(("127.0.0.1", server_port)).ok())
        })?;
        if up.is_none() {
            let log = std::fs::read_to_string(home.join("adb-server.log")).unwrap_or_default();
            bail!(
                "the adb server did not listen on 127.0.0.1:{server_port} within 60 s:\n{log}\nits threads (comm, wchan, syscall):\n{}",
                thread_states(client.server.id())
            );
        }
        Ok(client)
    }

    /// The client's public key, as the host would register it.
    pub fn public_key(&self) -> Result<AdbPublicKey> {
        let line = std::fs::read(self.home.join(".android/adbkey.pub"))?;
        Ok(AdbPublicKey::from_pub_line(&line)?)
    }

    /// An `adb -s SERIAL` command with this client's HOME and server port, to add arguments
    /// and stdio to.
    pub fn command(&self) -> Command {
        let mut c = Command::new("adb");
        c.env("HOME", &self.home)
            .env(
                "ADB_SERVER_SOCKET",
                format!("tcp:127.0.0.1:{}", self.server_port),
            )
            .env_remove("ADB_VENDOR_KEYS")
            .env_remove("ANDROID_SERIAL")
            .args(["-s", &self.serial]);
        c
    }

    /// `adb -s SERIAL args...` with this client's HOME and server port.
    pub fn run(&self, args: &[&str]) -> Result<Output> {
        let mut c = self.command();
        c.args(args)
            .output()
            .context("running Debian's adb (apt-get install adb)")
    }

    /// `adb connect`; returns what it printed (stdout, then stderr).
    pub fn connect(&self) -> Result<String> {
        let out = self.run(&["connect", &self.serial])?;
        Ok(text(&out.stdout) + &text(&out.stderr))
    }

    /// Waits up to `timeout` for `get-state` to say `device`; returns the last state.
    pub fn wait_online(&self, timeout: Duration) -> Result<String> {
        let state = crate::poll(timeout, Duration::from_millis(200), || {
            let s = text(&self.run(&["get-state"])?.stdout);
            Ok((s.trim() == "device").then_some(s))
        })?;
        Ok(state.unwrap_or_else(|| "not online".into()))
    }
}

impl Drop for AdbClient {
    fn drop(&mut self) {
        let _ = self.server.kill();
        let _ = self.server.wait();
    }
}

/// Where each thread of `pid` is blocked, from /proc (diagnostics for a stalled process).
fn thread_states(pid: u32) -> String {
    let read = |p: std::path::PathBuf| std::fs::read_to_string(p).unwrap_or_default();
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task"))
        .into_iter()
        .flatten()
        .flatten();
    tasks
        .map(|t| {
            let d = t.path();
            format!(
                "{} {} {}",
                read(d.join("comm")).trim(),
                read(d.join("wchan")).trim(),
                read(d.join("syscall")).trim()
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
        + &format!(
            "\nlistening sockets (/proc/net/tcp, tcp6; st 0A = LISTEN):\n{}{}",
            read(format!("/proc/{pid}/net/tcp").into()),
            read(format!("/proc/{pid}/net/tcp6").into())
        )
}

/// Copies bytes both ways between two sockets until either side closes.
pub fn relay(tcp: TcpStream, unix: UnixStream) -> Result<()> {
    let (mut t2, mut u2) = (tcp.try_clone()?, unix.try_clone()?);
    let (mut tcp, mut unix) = (tcp, unix);
    std::thread::spawn(move || {
        let _ = std::io::copy(&mut t2, &mut u2);
        let _ = u2.shutdown(std::net::Shutdown::Both);
    });
    std::thread::spawn(move || {
        let _ = std::io::copy(&mut unix, &mut tcp);
        let _ = tcp.shutdown(std::net::Shutdown::Both);
    });
    Ok(())
}

/// Listens on a local TCP port; each connection gets a socket from `open`, the key preamble
/// for `keys`, then its bytes relayed. Returns the port.
pub fn preamble_bridge(
    keys: &[AdbPublicKey],
    open: impl Fn() -> Result<UnixStream> + Send + 'static,
) -> Result<u16> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let port = listener.local_addr()?.port();
    let wire = preamble::encode(keys)?;
    std::thread::spawn(move || {
        for tcp in listener.incoming().flatten() {
            let bridged = open().and_then(|mut unix| {
                unix.write_all(&wire)?;
                relay(tcp, unix)
            });
            if let Err(e) = bridged {
                eprintln!("adb bridge: {e:#}");
            }
        }
    });
    Ok(port)
}

/// Opens guest vsock `port` through a VMM's hybrid vsock socket (`CONNECT`, `OK`).
pub fn vsock_connect(uds: &Path, port: u32) -> Result<UnixStream> {
    let mut s =
        UnixStream::connect(uds).with_context(|| format!("connecting {}", uds.display()))?;
    s.write_all(format!("CONNECT {port}\n").as_bytes())?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut line = Vec::new();
    // Byte by byte: nothing after the OK line may be swallowed by a buffer.
    let mut reader = BufReader::with_capacity(1, s.try_clone()?);
    reader.read_until(b'\n', &mut line)?;
    if !line.starts_with(b"OK ") {
        bail!("vsock CONNECT {port}: {:?}", text(&line));
    }
    s.set_read_timeout(None)?;
    Ok(s)
}

/// A test key pair for [`shell`], generated once per process (2048 bits, adb's size).
pub fn test_key() -> &'static rsa::RsaPrivateKey {
    static KEY: std::sync::OnceLock<rsa::RsaPrivateKey> = std::sync::OnceLock::new();
    KEY.get_or_init(|| {
        use rand::SeedableRng;
        let mut rng = rand::rngs::StdRng::seed_from_u64(u64::from(std::process::id()));
        rsa::RsaPrivateKey::new(&mut rng, 2048).expect("2048-bit key generation")
    })
}

/// [`test_key`]'s public half, as the preamble names it.
pub fn test_public_key() -> AdbPublicKey {
    AdbPublicKey::from_rsa(test_key().to_public_key())
}

/// What a native [`shell`] command produced.
#[derive(Debug, Default)]
pub struct ShellOutput {
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    /// None when the stream closed without a shell v2 exit packet.
    pub exit: Option<u8>,
}

/// A native adb client (no Debian adb): on `stream` (a fresh connection to adbd, e.g. from
/// [`vsock_connect`]) writes the key preamble naming [`test_public_key`], does CNXN, AUTH
/// TOKEN -> SIGNATURE, CNXN, then runs `command` as `shell,v2,raw:` and collects its stdout,
/// stderr and exit code (OKAYing each WRTE) until CLSE. Call [`test_key`] before connecting:
/// generating the key can take longer than adbd waits for the preamble.
pub fn shell(mut stream: UnixStream, command: &str, timeout: Duration) -> Result<ShellOutput> {
    use cloudphone_adb::packet::{self, Packet};
    use cloudphone_adb::shell as v2;
    stream.set_read_timeout(Some(timeout))?;
    let wire = preamble::encode(&[test_public_key()])?;
    stream
        .write_all(&wire)
        .context("writing the key preamble")?;
    let max = packet::MAX_PAYLOAD;
    let read = |s: &mut UnixStream| -> Result<Packet> {
        Packet::read_from(s, max, false).context("reading an adb packet")
    };
    Packet::new(packet::A_CNXN, packet::VERSION, max, &b"host::\0"[..])
        .write_to(&mut stream)
        .context("writing CNXN")?;
    loop {
        let p = read(&mut stream)?;
        match (p.command, p.arg0) {
            (packet::A_AUTH, packet::AUTH_TOKEN) => {
                let signature = test_key()
                    .sign(rsa::Pkcs1v15Sign::new::<sha1::Sha1>(), &p.payload)
                    .context("signing the AUTH token")?;
                Packet::new(packet::A_AUTH, packet::AUTH_SIGNATURE, 0, signature)
                    .write_to(&mut stream)
                    .context("writing AUTH SIGNATURE")?;
            }
            (packet::A_CNXN, _) => break,
            _ => bail!(
                "adb handshake: unexpected {} {}",
                packet::command_name(p.command),
                p.arg0
            ),
        }
    }
    const LOCAL_ID: u32 = 1;
    let mut service = format!("shell,v2,raw:{command}").into_bytes();
    service.push(0);
    Packet::new(packet::A_OPEN, LOCAL_ID, 0, service)
        .write_to(&mut stream)
        .context("writing OPEN")?;
    // The shell v2 stream, reassembled from WRTE payloads.
    let mut data = Vec::new();
    let mut out = ShellOutput::default();
    loop {
        let p = read(&mut stream)?;
        match p.command {
            packet::A_OKAY => {}
            packet::A_WRTE => {
                data.extend_from_slice(&p.payload);
                Packet::new(packet::A_OKAY, LOCAL_ID, p.arg0, Vec::new()).write_to(&mut stream)?;
            }
            packet::A_CLSE => break,
            c => bail!("adb shell: unexpected {}", packet::command_name(c)),
        }
    }
    let mut r = &data[..];
    while !r.is_empty() {
        let (id, bytes) = v2::read(&mut r).context("a truncated shell v2 packet")?;
        match id {
            v2::ID_STDOUT => out.stdout.extend_from_slice(&bytes),
            v2::ID_STDERR => out.stderr.extend_from_slice(&bytes),
            v2::ID_EXIT => out.exit = bytes.first().copied(),
            _ => {}
        }
    }
    Ok(out)
}
