//! adb streams over one connection: each OPEN gets a service thread holding a
//! [`StreamReader`] (WRTE payloads from the client, acknowledged with OKAY as they are
//! consumed) and a [`StreamWriter`] (our WRTEs, one in flight until the client's OKAY).
//! Closing either side removes the stream from the [`Streams`] table, which wakes the other.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cloudphone_adb::packet::{Packet, A_CLSE, A_OKAY, A_WRTE};

/// Streams open at once per connection (adb clients use a handful).
pub const MAX_STREAMS: usize = 32;
/// Client WRTEs queued for a service before the stream counts as flooding (a well-behaved
/// client has one in flight).
const QUEUED_WRITES: usize = 4;
/// A client that does not acknowledge our WRTE within this is gone.
const OKAY_TIMEOUT: Duration = Duration::from_secs(60);

/// The connection's packet writer, shared by the reader loop and all service threads.
pub type PacketSink = Arc<Mutex<Box<dyn Write + Send>>>;

/// Sends one packet under the writer lock.
pub fn send(sink: &PacketSink, packet: &Packet) -> std::io::Result<()> {
    let mut w = sink.lock().unwrap_or_else(|p| p.into_inner());
    packet.write_to(&mut *w)?;
    w.flush()
}

struct Handle {
    data: SyncSender<Vec<u8>>,
    okay: SyncSender<()>,
}

/// The open streams of one connection, by our local id.
#[derive(Clone, Default)]
pub struct Streams {
    table: Arc<Mutex<HashMap<u32, Handle>>>,
}

/// What the reader loop should do after delivering a client packet to a stream.
#[derive(Debug, PartialEq, Eq)]
pub enum Delivery {
    /// Delivered (or the stream is already gone, which is normal after a close race).
    Done,
    /// The client sent WRTEs without waiting for OKAY: close that stream.
    Flooded,
}

impl Streams {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u32, Handle>> {
        self.table.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Registers a stream and returns its two halves, or None when [`MAX_STREAMS`] are open.
    pub fn open(
        &self,
        local: u32,
        remote: u32,
        sink: PacketSink,
        max_payload: usize,
    ) -> Option<(StreamReader, StreamWriter)> {
        let mut table = self.lock();
        if table.len() >= MAX_STREAMS {
            return None;
        }
        let (data_tx, data_rx) = mpsc::sync_channel(QUEUED_WRITES);
        let (okay_tx, okay_rx) = mpsc::sync_channel(1);
        table.insert(
            local,
            Handle {
                data: data_tx,
                okay: okay_tx,
            },
        );
        let ids = Ids { local, remote };
        let reader = StreamReader {
            ids,
            sink: sink.clone(),
            data: data_rx,
            pending: Vec::new(),
            at: 0,
        };
        let writer = StreamWriter {
            ids,
            sink,
            okay: okay_rx,
            streams: self.clone(),
            max_payload,
        };
        Some((reader, writer))
    }

    /// Hands a client WRTE payload to the stream's service.
    pub fn deliver(&self, local: u32, data: Vec<u8>) -> Delivery {
        let table = self.lock();
        let Some(h) = table.get(&local) else {
            return Delivery::Done;
        };
        match h.data.try_send(data) {
            Ok(()) | Err(TrySendError::Disconnected(_)) => Delivery::Done,
            Err(TrySendError::Full(_)) => Delivery::Flooded,
        }
    }

    /// The client acknowledged our last WRTE on `local`.
    pub fn okay(&self, local: u32) {
        if let Some(h) = self.lock().get(&local) {
            // A second OKAY without a WRTE between is ignored (the slot is full).
            let _ = h.okay.try_send(());
        }
    }

    /// Forgets a stream (client CLSE, or our close); true when it was still open.
    pub fn remove(&self, local: u32) -> bool {
        self.lock().remove(&local).is_some()
    }

    /// Forgets every stream (the connection ended): all service threads see EOF.
    pub fn clear(&self) {
        self.lock().clear();
    }
}

#[derive(Clone, Copy, Debug)]
struct Ids {
    local: u32,
    remote: u32,
}

/// The client → service direction of a stream: a byte stream of WRTE payloads. EOF when the
/// client closes the stream (or the connection ends).
pub struct StreamReader {
    ids: Ids,
    sink: PacketSink,
    data: Receiver<Vec<u8>>,
    pending: Vec<u8>,
    at: usize,
}

impl Read for StreamReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.at == self.pending.len() {
            match self.data.recv() {
                Ok(chunk) => {
                    self.pending = chunk;
                    self.at = 0;
                    // Taking the chunk frees the slot: let the client send the next one.
                    send(
                        &self.sink,
                        &Packet::new(A_OKAY, self.ids.local, self.ids.remote, Vec::new()),
                    )?;
                }
                Err(_) => return Ok(0),
            }
        }
        let n = buf.len().min(self.pending.len() - self.at);
        buf[..n].copy_from_slice(&self.pending[self.at..self.at + n]);
        self.at += n;
        Ok(n)
    }
}

/// The service → client direction: WRTEs of at most the negotiated payload, each waiting for
/// the client's OKAY. Dropping it closes the stream (CLSE) unless the client already did.
pub struct StreamWriter {
    ids: Ids,
    sink: PacketSink,
    okay: Receiver<()>,
    streams: Streams,
    max_payload: usize,
}

impl Write for StreamWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = buf.len().min(self.max_payload);
        if n == 0 {
            return Ok(0);
        }
        send(
            &self.sink,
            &Packet::new(A_WRTE, self.ids.local, self.ids.remote, buf[..n].to_vec()),
        )?;
        match self.okay.recv_timeout(OKAY_TIMEOUT) {
            Ok(()) => Ok(n),
            Err(RecvTimeoutError::Disconnected) => Err(std::io::ErrorKind::BrokenPipe.into()),
            Err(RecvTimeoutError::Timeout) => Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "adb client did not acknowledge a write within 60 s",
            )),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for StreamWriter {
    fn drop(&mut self) {
        if self.streams.remove(self.ids.local) {
            let _ = send(
                &self.sink,
                &Packet::new(A_CLSE, self.ids.local, self.ids.remote, Vec::new()),
            );
        }
    }
}
