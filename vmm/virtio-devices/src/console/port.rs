//! Host side of one console port: where guest output goes and guest input comes from.
//!
//! Socket ports listen at a path; one client at a time (a new connection replaces the old
//! one, so a reconnecting tool never finds the port stuck). Client sockets are non-blocking:
//! output the client cannot take yet waits in a bounded buffer and the port's transmit
//! queue is not drained meanwhile (back-pressure to the guest instead of data loss).

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::FileTypeExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};

/// Where a port's bytes go.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PortBackend {
    /// Guest output to the VMM's stdout (no input).
    Stdout,
    /// Guest output appended to a file (no input).
    File(PathBuf),
    /// The VMM listens at this path; the connected client exchanges bytes with the port.
    Socket(PathBuf),
    /// Output discarded, no input.
    None,
}

/// Configuration of one port (`--console port=N,...`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PortConfig {
    /// Backend of the port.
    pub backend: PortBackend,
    /// Name the guest sees in `/sys/class/virtio-ports/vportNpM/name` (e.g. "logcat").
    pub name: Option<String>,
    /// Announce the port as a console, so the guest creates an hvc device for it.
    pub console: bool,
}

/// Why a port backend could not be opened (reported at VMM start).
#[derive(Debug, thiserror::Error)]
pub enum PortError {
    /// The output file could not be opened.
    #[error("console port {port}: cannot open {path} for appending: {source}")]
    File {
        port: usize,
        path: PathBuf,
        source: io::Error,
    },
    /// The socket could not be created.
    #[error("console port {port}: cannot listen on {path} (is the directory writable, the path free?): {source}")]
    Socket {
        port: usize,
        path: PathBuf,
        source: io::Error,
    },
}

/// Outcome of pushing buffered output to a socket client.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Flush {
    /// Everything was written.
    Done,
    /// The client's buffer is full; wait for EPOLLOUT.
    Blocked,
    /// The client went away.
    Disconnected,
}

enum Io {
    Stdout,
    File(File),
    Socket {
        listener: UnixListener,
        client: Option<UnixStream>,
    },
    Null,
}

/// Runtime state of one port's host side.
pub(crate) struct Port {
    pub(crate) name: Option<String>,
    pub(crate) console: bool,
    /// The driver set this port up (PORT_READY): it gets PORT_OPEN updates. Kept here, not
    /// in the worker, so snapshots save it.
    pub(crate) guest_ready: bool,
    io: Io,
    /// Guest output a socket client has not taken yet (at most one request's worth).
    tx_pending: Vec<u8>,
}

impl Port {
    /// Open the backend of port `index`.
    pub(crate) fn open(index: usize, cfg: &PortConfig) -> Result<Self, PortError> {
        let io = match &cfg.backend {
            PortBackend::Stdout => Io::Stdout,
            PortBackend::None => Io::Null,
            PortBackend::File(path) => Io::File(
                OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)
                    .map_err(|source| PortError::File {
                        port: index,
                        path: path.clone(),
                        source,
                    })?,
            ),
            PortBackend::Socket(path) => {
                let listener = listen(path).map_err(|source| PortError::Socket {
                    port: index,
                    path: path.clone(),
                    source,
                })?;
                Io::Socket {
                    listener,
                    client: None,
                }
            }
        };
        Ok(Self {
            name: cfg.name.clone(),
            console: cfg.console,
            guest_ready: false,
            io,
            tx_pending: Vec::new(),
        })
    }

    /// Whether the host side is open (PORT_OPEN value): sockets only while a client is
    /// connected; other backends always.
    pub(crate) fn host_connected(&self) -> bool {
        match &self.io {
            Io::Socket { client, .. } => client.is_some(),
            _ => true,
        }
    }

    pub(crate) fn listener_fd(&self) -> Option<RawFd> {
        match &self.io {
            Io::Socket { listener, .. } => Some(listener.as_raw_fd()),
            _ => None,
        }
    }

    pub(crate) fn client_fd(&self) -> Option<RawFd> {
        match &self.io {
            Io::Socket {
                client: Some(c), ..
            } => Some(c.as_raw_fd()),
            _ => None,
        }
    }

    /// Accept a pending connection, replacing any current client. Returns the fd of the
    /// client it replaced (to unregister), or None if nothing was accepted.
    pub(crate) fn accept(&mut self) -> io::Result<Option<Option<RawFd>>> {
        let Io::Socket { listener, client } = &mut self.io else {
            return Ok(None);
        };
        let stream = match listener.accept() {
            Ok((stream, _)) => stream,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(None),
            Err(e) => return Err(e),
        };
        stream.set_nonblocking(true)?;
        let old = client.replace(stream).map(|c| c.as_raw_fd());
        self.tx_pending.clear();
        Ok(Some(old))
    }

    /// Drop the client (it hung up or failed).
    pub(crate) fn disconnect(&mut self) {
        if let Io::Socket { client, .. } = &mut self.io {
            *client = None;
        }
        self.tx_pending.clear();
    }

    /// Read client input into `buf`: Ok(0) means the client closed.
    pub(crate) fn read_input(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match &mut self.io {
            Io::Socket {
                client: Some(c), ..
            } => c.read(buf),
            _ => Err(io::ErrorKind::WouldBlock.into()),
        }
    }

    /// Whether output is waiting for the client.
    pub(crate) fn tx_blocked(&self) -> bool {
        !self.tx_pending.is_empty()
    }

    /// Send guest output to the backend.
    pub(crate) fn write_output(&mut self, data: &[u8]) -> Flush {
        let result = match &mut self.io {
            Io::Stdout => {
                let mut out = io::stdout().lock();
                out.write_all(data).and_then(|()| out.flush())
            }
            Io::File(f) => f.write_all(data),
            Io::Null => Ok(()),
            Io::Socket { client: None, .. } => Ok(()), // nobody listening: dropped
            Io::Socket {
                client: Some(_), ..
            } => {
                self.tx_pending.extend_from_slice(data);
                return self.flush();
            }
        };
        if let Err(e) = result {
            tracing::warn!(error = %e, "console output to the host backend failed; bytes dropped");
        }
        Flush::Done
    }

    /// Push buffered output to the socket client.
    pub(crate) fn flush(&mut self) -> Flush {
        let Io::Socket {
            client: Some(c), ..
        } = &mut self.io
        else {
            self.tx_pending.clear();
            return Flush::Done;
        };
        while !self.tx_pending.is_empty() {
            match c.write(&self.tx_pending) {
                Ok(0) => return Flush::Disconnected,
                Ok(n) => {
                    self.tx_pending.drain(..n);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Flush::Blocked,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return Flush::Disconnected,
            }
        }
        Flush::Done
    }

    /// Emergency write (config space `emerg_wr`): one byte straight to the backend.
    pub(crate) fn emergency_write(&mut self, byte: u8) {
        if self.write_output(&[byte]) == Flush::Disconnected {
            self.disconnect();
        }
    }
}

/// Bind a listening socket at `path`, replacing a stale socket left by a previous VMM but
/// never deleting anything that is not a socket.
fn listen(path: &Path) -> io::Result<UnixListener> {
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        if meta.file_type().is_socket() {
            std::fs::remove_file(path)?;
        } else {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                "path exists and is not a socket",
            ));
        }
    }
    let listener = UnixListener::bind(path)?;
    listener.set_nonblocking(true)?;
    Ok(listener)
}
