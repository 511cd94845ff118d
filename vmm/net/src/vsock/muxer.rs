//! The host side of the vsock device (Firecracker's "hybrid vsock" protocol):
//! - a host program connects to the Unix socket `uds`, writes `CONNECT <port>\n`, and after the
//!   guest accepts reads `OK <host_port>\n`, then the stream is a connection to guest `port`;
//! - a guest connection to host port P is connected to the Unix socket `<uds>_<P>`.
//!
//! The muxer owns every host stream and turns guest packets into stream I/O and stream events
//! into packets for the guest. Anything the guest sends that does not fit answers with RST.

use std::collections::{HashMap, VecDeque};
use std::io::{ErrorKind, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use cloudphone_virtio::WorkerContext;
use vmm_sys_util::epoll::EventSet;

use super::conn::{Conn, ConnError, State};
use super::packet::*;

/// Epoll token of the host listener; connection tokens are allocated above it.
pub(crate) const LISTENER_TOKEN: u64 = 16;
/// Open connections per phone. More guest REQUESTs get RST, more host CONNECTs are closed.
pub(crate) const MAX_CONNECTIONS: usize = 512;
/// Host streams accepted but not yet past their `CONNECT` line.
const MAX_PENDING_HOST: usize = 32;
/// Longest `CONNECT <port>\n` line accepted.
const MAX_CONNECT_LINE: usize = 32;
/// Stop taking guest tx packets while this many control packets wait for rx buffers, so a
/// guest that never posts rx buffers cannot make us queue replies without bound.
const CONTROL_HIGH_WATER: usize = 256;
/// Host-initiated connections get host ports from here up (as Firecracker does), away from the
/// well-known ports a guest connects to.
const FIRST_HOST_PORT: u32 = 1 << 30;

/// A connection, named by (host port, guest port).
pub(crate) type ConnKey = (u32, u32);

/// What an epoll token stands for.
enum Endpoint {
    /// A host stream that has not sent its `CONNECT` line yet.
    Pending(UnixStream),
    Conn(ConnKey),
}

/// A control packet waiting for a guest rx buffer; its header is built when sent so it
/// carries current credit counters.
struct Control {
    key: ConnKey,
    op: u16,
    flags: u32,
}

pub(crate) struct Muxer {
    guest_cid: u64,
    uds: PathBuf,
    listener: Arc<UnixListener>,
    conns: HashMap<ConnKey, Conn>,
    endpoints: HashMap<u64, Endpoint>,
    pending_hosts: usize,
    next_token: u64,
    next_host_port: u32,
    control: VecDeque<Control>,
    /// Connections whose host stream has (or may have) data for the guest.
    readable: VecDeque<ConnKey>,
    warn: cloudphone_virtio::log_limit::LogLimit,
}

/// Register `conn`'s stream for exactly the events it needs now (none: not registered, so a
/// hung-up stream cannot wake us in a loop while we wait for the guest).
fn sync_interest(ctx: &WorkerContext, conn: &mut Conn) -> Result<(), String> {
    let mut want = EventSet::empty();
    if conn.wants_host_data() && !conn.rx_queued {
        want |= EventSet::IN;
    }
    if conn.has_pending_to_host() {
        want |= EventSet::OUT;
    }
    if want == conn.registered {
        return Ok(());
    }
    let fd = conn.stream.as_raw_fd();
    let result = if want.is_empty() {
        ctx.remove(fd)
    } else if conn.registered.is_empty() {
        ctx.add(fd, want, conn.token)
    } else {
        ctx.modify(fd, want, conn.token)
    };
    result.map_err(|e| format!("vsock: cannot update epoll for a host stream: {e}"))?;
    conn.registered = want;
    Ok(())
}

/// Connect to a Unix stream socket without blocking (a listener with a full backlog must not
/// stall the device thread: that gives EAGAIN, which the caller answers with RST).
fn connect_nonblocking(path: &Path) -> std::io::Result<UnixStream> {
    let bytes = path.as_os_str().as_encoded_bytes();
    // SAFETY: sockaddr_un is plain old data; all-zero is a valid value.
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    if bytes.len() >= addr.sun_path.len() {
        return Err(std::io::Error::new(
            ErrorKind::InvalidInput,
            "socket path too long",
        ));
    }
    addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
    for (dst, src) in addr.sun_path.iter_mut().zip(bytes) {
        *dst = *src as libc::c_char;
    }
    // SAFETY: plain socket(2) call; the result is checked.
    let fd = unsafe {
        libc::socket(
            libc::AF_UNIX,
            libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `fd` is a fresh socket we own.
    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
    let len = std::mem::size_of::<libc::sockaddr_un>() as libc::socklen_t;
    // SAFETY: `addr` is a valid sockaddr_un of `len` bytes.
    if unsafe { libc::connect(fd, (&addr as *const libc::sockaddr_un).cast(), len) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(UnixStream::from(owned))
}

/// Parse `CONNECT <port>` (the newline already removed).
fn parse_connect(line: &[u8]) -> Option<u32> {
    let line = std::str::from_utf8(line).ok()?;
    let port = line.trim_end_matches('\r').strip_prefix("CONNECT ")?;
    if port.is_empty() || !port.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    port.parse().ok()
}

impl Muxer {
    pub fn new(guest_cid: u64, uds: PathBuf, listener: Arc<UnixListener>) -> Self {
        Muxer {
            guest_cid,
            uds,
            listener,
            conns: HashMap::new(),
            endpoints: HashMap::new(),
            pending_hosts: 0,
            next_token: LISTENER_TOKEN + 1,
            next_host_port: FIRST_HOST_PORT,
            control: VecDeque::new(),
            readable: VecDeque::new(),
            warn: Default::default(),
        }
    }

    /// Start watching the host listener.
    pub fn register(&self, ctx: &WorkerContext) -> std::io::Result<()> {
        ctx.add(self.listener.as_raw_fd(), EventSet::IN, LISTENER_TOKEN)
    }

    /// Whether there may be a packet for the guest.
    pub fn has_rx(&self) -> bool {
        !self.control.is_empty() || !self.readable.is_empty()
    }

    /// Whether guest tx processing should pause until the guest takes our replies.
    pub fn tx_backlog_full(&self) -> bool {
        self.control.len() >= CONTROL_HIGH_WATER
    }

    fn alloc_token(&mut self) -> u64 {
        let token = self.next_token;
        self.next_token += 1;
        token
    }

    fn alloc_host_port(&mut self) -> u32 {
        loop {
            let port = self.next_host_port;
            self.next_host_port = self
                .next_host_port
                .checked_add(1)
                .unwrap_or(FIRST_HOST_PORT);
            if !self.conns.keys().any(|&(host, _)| host == port) {
                return port;
            }
        }
    }

    fn header(&self, key: ConnKey, op: u16, flags: u32) -> Header {
        Header {
            src_cid: HOST_CID,
            dst_cid: self.guest_cid,
            src_port: key.0,
            dst_port: key.1,
            type_: TYPE_STREAM,
            op,
            flags,
            ..Header::default()
        }
    }

    fn queue_control(&mut self, key: ConnKey, op: u16, flags: u32) {
        self.control.push_back(Control { key, op, flags });
    }

    /// Forget a connection (closing its host stream), optionally telling the guest with RST.
    fn close(&mut self, ctx: &WorkerContext, key: ConnKey, send_rst: bool) {
        if let Some(conn) = self.conns.remove(&key) {
            if !conn.registered.is_empty() {
                let _ = ctx.remove(conn.stream.as_raw_fd());
            }
            self.endpoints.remove(&conn.token);
        }
        if send_rst {
            self.queue_control(key, OP_RST, 0);
        }
    }

    /// Answer a guest packet that matches nothing with RST (never answer an RST).
    fn refuse(&mut self, hdr: &Header) {
        if hdr.op != OP_RST {
            self.queue_control((hdr.dst_port, hdr.src_port), OP_RST, 0);
        }
    }

    /// A malformed packet from the guest (bad length): reset whatever it refers to.
    pub fn reject(&mut self, ctx: &WorkerContext, hdr: &Header) {
        let key = (hdr.dst_port, hdr.src_port);
        if self.conns.contains_key(&key) && hdr.src_cid == self.guest_cid {
            self.close(ctx, key, true);
        } else {
            self.refuse(hdr);
        }
    }

    /// Act on one packet from the guest's tx queue.
    pub fn guest_packet(
        &mut self,
        ctx: &WorkerContext,
        hdr: &Header,
        payload: &[u8],
    ) -> Result<(), String> {
        if hdr.src_cid != self.guest_cid || hdr.dst_cid != HOST_CID || hdr.type_ != TYPE_STREAM {
            if let Some(occurrences) = self.warn.record() {
                tracing::warn!(
                    occurrences,
                    ?hdr,
                    guest_cid = self.guest_cid,
                    "vsock packet with wrong CID or socket type; RST"
                );
            }
            self.refuse(hdr);
            return Ok(());
        }
        let key = (hdr.dst_port, hdr.src_port);
        match hdr.op {
            OP_REQUEST => return self.guest_connect(ctx, key, hdr),
            OP_RST => {
                self.close(ctx, key, false);
                return Ok(());
            }
            _ => {}
        }
        let Some(conn) = self.conns.get_mut(&key) else {
            self.refuse(hdr);
            return Ok(());
        };
        conn.update_peer_credit(hdr);
        let outcome = match (hdr.op, conn.state) {
            (OP_RESPONSE, State::Connecting) => {
                conn.state = State::Established;
                let line = format!("OK {}\n", key.0);
                match conn.stream.write(line.as_bytes()) {
                    Ok(n) if n == line.len() => Ok(()),
                    Ok(_) => Err(ConnError::Host(ErrorKind::WriteZero.into())),
                    Err(e) => Err(ConnError::Host(e)),
                }
            }
            (OP_RW, State::Established) => conn.push_to_host(payload),
            (OP_SHUTDOWN, _) => {
                conn.guest_shutdown |= hdr.flags & SHUTDOWN_BOTH;
                conn.flush_to_host()
            }
            (OP_CREDIT_UPDATE, _) => Ok(()),
            (OP_CREDIT_REQUEST, _) => {
                if !conn.credit_update_queued {
                    conn.credit_update_queued = true;
                    self.control.push_back(Control {
                        key,
                        op: OP_CREDIT_UPDATE,
                        flags: 0,
                    });
                }
                Ok(())
            }
            (op, _) => Err(ConnError::Protocol(op)),
        };
        self.after_io(ctx, key, outcome)
    }

    /// Common tail after moving guest data: reset on error, close when done, report credit,
    /// re-arm polling.
    fn after_io(
        &mut self,
        ctx: &WorkerContext,
        key: ConnKey,
        outcome: Result<(), ConnError>,
    ) -> Result<(), String> {
        let Some(conn) = self.conns.get_mut(&key) else {
            return Ok(());
        };
        if let Err(e) = outcome {
            tracing::debug!(?key, error = %e, "vsock connection reset");
            self.close(ctx, key, true);
            return Ok(());
        }
        if conn.finished() {
            self.close(ctx, key, true);
            return Ok(());
        }
        if conn.credit_update_due() && !conn.credit_update_queued {
            conn.credit_update_queued = true;
            self.control.push_back(Control {
                key,
                op: OP_CREDIT_UPDATE,
                flags: 0,
            });
        }
        sync_interest(ctx, conn)
    }

    /// The guest connects to host port `key.0`: connect to `<uds>_<port>`.
    fn guest_connect(
        &mut self,
        ctx: &WorkerContext,
        key: ConnKey,
        hdr: &Header,
    ) -> Result<(), String> {
        if self.conns.contains_key(&key) {
            if let Some(occurrences) = self.warn.record() {
                tracing::warn!(
                    occurrences,
                    ?key,
                    "vsock REQUEST for an open connection; RST"
                );
            }
            self.close(ctx, key, true);
            return Ok(());
        }
        if self.conns.len() >= MAX_CONNECTIONS {
            if let Some(occurrences) = self.warn.record() {
                tracing::warn!(
                    occurrences,
                    max = MAX_CONNECTIONS,
                    "vsock connection limit reached; RST"
                );
            }
            self.refuse(hdr);
            return Ok(());
        }
        let mut path = self.uds.clone().into_os_string();
        path.push(format!("_{}", key.0));
        let stream = match connect_nonblocking(Path::new(&path)) {
            Ok(stream) => stream,
            Err(e) => {
                tracing::debug!(path = ?path, error = %e, "guest vsock connect: nothing listening; RST");
                self.refuse(hdr);
                return Ok(());
            }
        };
        let token = self.alloc_token();
        let mut conn = Conn::new(stream, State::Established, token);
        conn.update_peer_credit(hdr);
        sync_interest(ctx, &mut conn)?;
        self.conns.insert(key, conn);
        self.endpoints.insert(token, Endpoint::Conn(key));
        self.queue_control(key, OP_RESPONSE, 0);
        Ok(())
    }

    /// An fd the muxer registered is ready.
    pub fn host_event(
        &mut self,
        ctx: &WorkerContext,
        token: u64,
        events: EventSet,
    ) -> Result<(), String> {
        if token == LISTENER_TOKEN {
            self.accept_hosts(ctx);
            return Ok(());
        }
        match self.endpoints.get(&token) {
            Some(Endpoint::Pending(_)) => self.read_connect_line(ctx, token),
            Some(Endpoint::Conn(key)) => {
                let key = *key;
                self.conn_event(ctx, key, events)
            }
            None => Ok(()), // closed since epoll reported it
        }
    }

    fn accept_hosts(&mut self, ctx: &WorkerContext) {
        loop {
            let stream = match self.listener.accept() {
                Ok((stream, _)) => stream,
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                Err(e) => {
                    if let Some(occurrences) = self.warn.record() {
                        tracing::warn!(occurrences, error = %e, "vsock: accept on the host socket failed");
                    }
                    return;
                }
            };
            if self.pending_hosts >= MAX_PENDING_HOST || stream.set_nonblocking(true).is_err() {
                if let Some(occurrences) = self.warn.record() {
                    tracing::warn!(
                        occurrences,
                        max = MAX_PENDING_HOST,
                        "vsock: too many host connections without a CONNECT line; closed"
                    );
                }
                continue;
            }
            let token = self.alloc_token();
            if let Err(e) = ctx.add(stream.as_raw_fd(), EventSet::IN, token) {
                if let Some(occurrences) = self.warn.record() {
                    tracing::warn!(occurrences, error = %e, "vsock: cannot watch a host connection; closed");
                }
                continue;
            }
            self.pending_hosts += 1;
            self.endpoints.insert(token, Endpoint::Pending(stream));
        }
    }

    fn drop_pending(&mut self, ctx: &WorkerContext, token: u64) -> Option<UnixStream> {
        let Some(Endpoint::Pending(stream)) = self.endpoints.remove(&token) else {
            return None;
        };
        self.pending_hosts -= 1;
        let _ = ctx.remove(stream.as_raw_fd());
        Some(stream)
    }

    /// A pending host stream is readable: parse `CONNECT <port>\n` and ask the guest.
    fn read_connect_line(&mut self, ctx: &WorkerContext, token: u64) -> Result<(), String> {
        let Some(Endpoint::Pending(stream)) = self.endpoints.get(&token) else {
            return Ok(());
        };
        let mut line = [0u8; MAX_CONNECT_LINE];
        // Peek so bytes after the newline (early payload) stay in the stream for the guest.
        // SAFETY: `line` is valid for writes of its length.
        let n = unsafe {
            libc::recv(
                stream.as_raw_fd(),
                line.as_mut_ptr().cast(),
                line.len(),
                libc::MSG_PEEK,
            )
        };
        if n < 0 && std::io::Error::last_os_error().kind() == ErrorKind::WouldBlock {
            return Ok(());
        }
        let n = usize::try_from(n).unwrap_or(0);
        let newline = line[..n].iter().position(|&b| b == b'\n');
        let port = match newline {
            None if n > 0 && n < line.len() => return Ok(()), // wait for the rest of the line
            None => None,                                     // EOF, error or line too long
            Some(end) => parse_connect(&line[..end]),
        };
        let (Some(port), Some(end)) = (port, newline) else {
            if let Some(occurrences) = self.warn.record() {
                tracing::warn!(occurrences, line = ?String::from_utf8_lossy(&line[..n]), "vsock: host sent no valid `CONNECT <port>` line; closed");
            }
            self.drop_pending(ctx, token);
            return Ok(());
        };
        if self.conns.len() >= MAX_CONNECTIONS {
            if let Some(occurrences) = self.warn.record() {
                tracing::warn!(
                    occurrences,
                    max = MAX_CONNECTIONS,
                    "vsock connection limit reached; host connection closed"
                );
            }
            self.drop_pending(ctx, token);
            return Ok(());
        }
        let Some(mut stream) = self.drop_pending(ctx, token) else {
            return Ok(());
        };
        let mut consumed = [0u8; MAX_CONNECT_LINE];
        if stream.read_exact(&mut consumed[..=end]).is_err() {
            return Ok(());
        }
        let key = (self.alloc_host_port(), port);
        let conn = Conn::new(stream, State::Connecting, token);
        self.conns.insert(key, conn);
        self.endpoints.insert(token, Endpoint::Conn(key));
        self.queue_control(key, OP_REQUEST, 0);
        Ok(())
    }

    fn conn_event(
        &mut self,
        ctx: &WorkerContext,
        key: ConnKey,
        events: EventSet,
    ) -> Result<(), String> {
        let Some(conn) = self.conns.get_mut(&key) else {
            return Ok(());
        };
        let hangup = events.intersects(EventSet::HANG_UP | EventSet::ERROR);
        conn.host_hup |= hangup;
        if (events.intersects(EventSet::IN) || hangup) && conn.wants_host_data() && !conn.rx_queued
        {
            conn.rx_queued = true;
            self.readable.push_back(key);
        }
        let outcome = if events.intersects(EventSet::OUT) || hangup {
            conn.flush_to_host()
        } else {
            Ok(())
        };
        self.after_io(ctx, key, outcome)
    }

    /// The next packet for the guest, with up to `buf.len()` payload bytes written to `buf`
    /// (`buf` may be empty: then only control packets are produced).
    pub fn next_rx(
        &mut self,
        ctx: &WorkerContext,
        buf: &mut [u8],
    ) -> Result<Option<(Header, usize)>, String> {
        if let Some(c) = self.control.pop_front() {
            let mut hdr = self.header(c.key, c.op, c.flags);
            if let Some(conn) = self.conns.get_mut(&c.key) {
                conn.stamp(&mut hdr);
                if c.op == OP_CREDIT_UPDATE {
                    conn.credit_update_queued = false;
                }
            }
            return Ok(Some((hdr, 0)));
        }
        if buf.is_empty() {
            return Ok(None);
        }
        while let Some(key) = self.readable.pop_front() {
            let Some(conn) = self.conns.get_mut(&key) else {
                continue;
            };
            conn.rx_queued = false;
            if !conn.wants_host_data() {
                sync_interest(ctx, conn)?;
                continue;
            }
            match conn.read_host(buf) {
                Ok(0) => {
                    conn.host_eof = true;
                    let flags = if conn.host_hup {
                        SHUTDOWN_BOTH
                    } else {
                        SHUTDOWN_SEND
                    };
                    let mut hdr = self.header(key, OP_SHUTDOWN, flags);
                    let conn = self.conns.get_mut(&key).expect("connection present");
                    conn.stamp(&mut hdr);
                    sync_interest(ctx, conn)?;
                    return Ok(Some((hdr, 0)));
                }
                Ok(n) => {
                    // More may follow: keep it queued (fairly, at the back).
                    conn.rx_queued = true;
                    let mut hdr = self.header(key, OP_RW, 0);
                    hdr.len = n as u32;
                    let conn = self.conns.get_mut(&key).expect("connection present");
                    conn.stamp(&mut hdr);
                    sync_interest(ctx, conn)?;
                    self.readable.push_back(key);
                    return Ok(Some((hdr, n)));
                }
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::Interrupted) => {
                    sync_interest(ctx, conn)?;
                }
                Err(e) => {
                    tracing::debug!(?key, error = %e, "vsock host stream read failed; RST");
                    self.close(ctx, key, true);
                    return self.next_rx(ctx, buf);
                }
            }
        }
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connect_lines() {
        assert_eq!(parse_connect(b"CONNECT 5555"), Some(5555));
        assert_eq!(parse_connect(b"CONNECT 52\r"), Some(52));
        for bad in [
            &b"CONNECT"[..],
            b"CONNECT ",
            b"CONNECT -1",
            b"CONNECT +1",
            b"connect 1",
            b"CONNECT 4294967296",
            b"CONNECT 1 2",
            b"\xff",
        ] {
            assert_eq!(
                parse_connect(bad),
                None,
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn fuzz_connect_line() {
        crate::testutil::fuzz(
            "vsock_connect_line",
            4096,
            "(CONNECT )?[0-9a-z +\r-]{0,12}",
            |s: String| {
                if let Some(port) = parse_connect(s.as_bytes()) {
                    let digits = s.trim_end_matches('\r').strip_prefix("CONNECT ");
                    proptest::prop_assert_eq!(
                        digits.and_then(|d| d.parse::<u32>().ok()),
                        Some(port)
                    );
                }
                Ok(())
            },
        );
    }
}
