//! One vsock stream connection: its host Unix stream, state, and credit accounting in both
//! directions (virtio spec 5.10.6.3) so neither side overruns the other's buffer.

use std::collections::VecDeque;
use std::io::{ErrorKind, Read, Write};
use std::num::Wrapping;
use std::os::unix::net::UnixStream;

use vmm_sys_util::epoll::EventSet;

use super::packet::{Header, SHUTDOWN_RCV, SHUTDOWN_SEND};

/// Bytes of guest data we buffer per connection when the host reader is slow; advertised to
/// the guest as `buf_alloc`, so a well-behaved guest never sends more than this unforwarded.
pub(crate) const CONN_BUF_ALLOC: u32 = 256 * 1024;
/// Send an unsolicited CREDIT_UPDATE once this many bytes were forwarded since the last one we
/// reported (no more than `CONN_BUF_ALLOC`, so a stalled guest always hears back).
const CREDIT_UPDATE_THRESHOLD: u32 = CONN_BUF_ALLOC / 4;

/// Where a connection is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum State {
    /// Host-initiated: REQUEST queued/sent to the guest, waiting for RESPONSE.
    Connecting,
    /// Data flows.
    Established,
}

/// What went wrong on a connection; the muxer answers with RST and forgets it.
#[derive(Debug)]
pub(crate) enum ConnError {
    /// The guest sent more than the credit we gave it.
    CreditOverrun,
    /// The host side of the stream failed (closed, reset).
    Host(std::io::Error),
    /// The guest sent an operation that makes no sense in the connection's state.
    Protocol(u16),
}

impl std::fmt::Display for ConnError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ConnError::CreditOverrun => write!(f, "guest sent more data than its credit allows"),
            ConnError::Host(e) => write!(f, "host stream failed: {e}"),
            ConnError::Protocol(op) => write!(f, "guest sent op {op}, invalid in this state"),
        }
    }
}

pub(crate) struct Conn {
    pub stream: UnixStream,
    pub state: State,
    /// Epoll token of `stream`, and the events it is registered for (empty: not registered).
    pub token: u64,
    pub registered: EventSet,
    // Guest -> host.
    /// Guest data not yet accepted by the host stream.
    to_host: VecDeque<u8>,
    /// Bytes of guest data written to the host stream (reported to the guest).
    fwd_cnt: Wrapping<u32>,
    last_reported_fwd_cnt: Wrapping<u32>,
    // Host -> guest.
    /// Bytes sent to the guest.
    rx_cnt: Wrapping<u32>,
    peer_buf_alloc: u32,
    peer_fwd_cnt: Wrapping<u32>,
    // Shutdown.
    /// SHUTDOWN flags the guest sent.
    pub guest_shutdown: u32,
    /// The host stream reached end of file.
    pub host_eof: bool,
    /// The host closed both directions (EPOLLHUP seen).
    pub host_hup: bool,
    // Scheduling.
    /// Queued in the muxer's "has data for the guest" list.
    pub rx_queued: bool,
    /// A CREDIT_UPDATE for this connection is queued.
    pub credit_update_queued: bool,
}

impl Conn {
    pub fn new(stream: UnixStream, state: State, token: u64) -> Self {
        Conn {
            stream,
            state,
            token,
            registered: EventSet::empty(),
            to_host: VecDeque::new(),
            fwd_cnt: Wrapping(0),
            last_reported_fwd_cnt: Wrapping(0),
            rx_cnt: Wrapping(0),
            peer_buf_alloc: 0,
            peer_fwd_cnt: Wrapping(0),
            guest_shutdown: 0,
            host_eof: false,
            host_hup: false,
            rx_queued: false,
            credit_update_queued: false,
        }
    }

    /// Record the guest's credit fields (every guest packet carries them).
    pub fn update_peer_credit(&mut self, hdr: &Header) {
        self.peer_buf_alloc = hdr.buf_alloc;
        self.peer_fwd_cnt = Wrapping(hdr.fwd_cnt);
    }

    /// How many bytes the guest can take right now.
    pub fn peer_free(&self) -> u32 {
        let in_flight = (self.rx_cnt - self.peer_fwd_cnt).0;
        self.peer_buf_alloc.saturating_sub(in_flight)
    }

    /// Whether host data should be read and sent to the guest now.
    pub fn wants_host_data(&self) -> bool {
        self.state == State::Established
            && !self.host_eof
            && self.guest_shutdown & SHUTDOWN_RCV == 0
            && self.peer_free() > 0
    }

    /// Whether guest data is waiting for the host stream to become writable.
    pub fn has_pending_to_host(&self) -> bool {
        !self.to_host.is_empty()
    }

    /// Fill our credit fields into a header going to the guest; the guest now knows our
    /// `fwd_cnt`, so no separate credit update is needed for it.
    pub fn stamp(&mut self, hdr: &mut Header) {
        hdr.buf_alloc = CONN_BUF_ALLOC;
        hdr.fwd_cnt = self.fwd_cnt.0;
        self.last_reported_fwd_cnt = self.fwd_cnt;
    }

    /// Whether the guest should be told about freed buffer space without waiting to be asked.
    pub fn credit_update_due(&self) -> bool {
        (self.fwd_cnt - self.last_reported_fwd_cnt).0 >= CREDIT_UPDATE_THRESHOLD
    }

    /// Read host data for the guest into `buf`, at most the guest's free credit. `Ok(0)` is
    /// end of file.
    pub fn read_host(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = buf.len().min(self.peer_free() as usize);
        let read = self.stream.read(&mut buf[..n])?;
        self.rx_cnt += Wrapping(read as u32);
        Ok(read)
    }

    /// Take guest data for the host: write what the stream accepts, buffer the rest.
    pub fn push_to_host(&mut self, data: &[u8]) -> Result<(), ConnError> {
        if self.to_host.len() + data.len() > CONN_BUF_ALLOC as usize {
            return Err(ConnError::CreditOverrun);
        }
        self.to_host.extend(data);
        self.flush_to_host()
    }

    /// Write buffered guest data to the host stream until it would block.
    pub fn flush_to_host(&mut self) -> Result<(), ConnError> {
        while !self.to_host.is_empty() {
            let (front, _) = self.to_host.as_slices();
            match self.stream.write(front) {
                Ok(0) => return Err(ConnError::Host(ErrorKind::WriteZero.into())),
                Ok(n) => {
                    self.to_host.drain(..n);
                    self.fwd_cnt += Wrapping(n as u32);
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(ConnError::Host(e)),
            }
        }
        if self.to_host.is_empty() && self.guest_shutdown & SHUTDOWN_SEND != 0 {
            // The guest sends nothing more: pass the half-close on to the host reader.
            let _ = self.stream.shutdown(std::net::Shutdown::Write);
        }
        Ok(())
    }

    /// The guest shut down both directions and everything it sent reached the host.
    pub fn finished(&self) -> bool {
        self.guest_shutdown & super::packet::SHUTDOWN_BOTH == super::packet::SHUTDOWN_BOTH
            && self.to_host.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conn() -> (Conn, UnixStream) {
        let (a, b) = UnixStream::pair().unwrap();
        a.set_nonblocking(true).unwrap();
        (Conn::new(a, State::Established, 7), b)
    }

    #[test]
    fn peer_credit_limits_reads_and_wraps() {
        let (mut c, mut host) = conn();
        assert_eq!(c.peer_free(), 0);
        assert!(
            !c.wants_host_data(),
            "no credit before the guest announces buf_alloc"
        );
        c.update_peer_credit(&Header {
            buf_alloc: 10,
            fwd_cnt: 0,
            ..Header::default()
        });
        host.write_all(&[1; 64]).unwrap();
        let mut buf = [0; 64];
        assert_eq!(c.read_host(&mut buf).unwrap(), 10);
        assert_eq!(c.peer_free(), 0);
        // Counters wrap at 2^32 without losing track.
        c.rx_cnt = Wrapping(u32::MAX - 2);
        c.update_peer_credit(&Header {
            buf_alloc: 10,
            fwd_cnt: u32::MAX - 5,
            ..Header::default()
        });
        assert_eq!(c.peer_free(), 7);
    }

    #[test]
    fn guest_overrun_is_detected() {
        let (mut c, _host) = conn();
        // The host never reads: the socket buffer fills, then our buffer, then overrun.
        let chunk = vec![0u8; 64 * 1024];
        let mut result = Ok(());
        for _ in 0..64 {
            result = c.push_to_host(&chunk);
            if result.is_err() {
                break;
            }
        }
        assert!(matches!(result, Err(ConnError::CreditOverrun)));
        assert!(c.to_host.len() <= CONN_BUF_ALLOC as usize);
    }

    #[test]
    fn credit_update_due_after_threshold_forwarded() {
        let (mut c, mut host) = conn();
        c.push_to_host(&vec![1u8; CREDIT_UPDATE_THRESHOLD as usize - 1])
            .unwrap();
        assert!(!c.credit_update_due());
        c.push_to_host(&[1]).unwrap();
        assert!(c.credit_update_due());
        let mut hdr = Header::default();
        c.stamp(&mut hdr);
        assert_eq!(hdr.fwd_cnt, CREDIT_UPDATE_THRESHOLD);
        assert!(!c.credit_update_due());
        let mut sink = vec![0u8; CREDIT_UPDATE_THRESHOLD as usize];
        host.read_exact(&mut sink).unwrap();
    }
}
