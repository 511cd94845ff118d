//! The `sync:` service (adb push/pull/ls): little-endian frames of a 4-letter id and a u32.
//! Requests are `id len path` (STAT, LIST, SEND `path,mode`, RECV) or `QUIT`; a SEND is
//! followed by `DATA len bytes` chunks and `DONE mtime`. Replies: `STAT mode size mtime`,
//! `DENT mode size mtime len name`... `DONE`, `DATA len bytes`... `DONE`, `OKAY 0`, or
//! `FAIL len message`. Version 1 only: we do not advertise `stat_v2`/`ls_v2`, so Debian's adb
//! 29 never sends STA2/LST2/LIS2.

use std::io::{Read, Write};

/// Longest path a request may name (adb's 1024).
pub const MAX_PATH: usize = 1024;
/// Largest DATA chunk (adb's SYNC_DATA_MAX, 64 KiB).
pub const MAX_DATA: usize = 64 * 1024;

/// Why a sync frame was refused; the stream is closed after a FAIL.
#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    /// An id this implementation does not speak.
    #[error("unknown sync request {0:?}")]
    UnknownId(String),
    /// Path longer than [`MAX_PATH`].
    #[error("sync path of {0} bytes exceeds {MAX_PATH}")]
    PathTooLong(u32),
    /// DATA chunk larger than [`MAX_DATA`].
    #[error("sync DATA chunk of {0} bytes exceeds {MAX_DATA}")]
    ChunkTooLarge(u32),
    /// SEND without a `,mode` suffix, or a mode that is not a number.
    #[error("sync SEND target {0:?} is not `path,mode`")]
    BadSendTarget(String),
    /// The stream ended or failed.
    #[error("sync stream: {0}")]
    Io(#[from] std::io::Error),
}

/// A client request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Request {
    /// `STAT path`: mode, size and mtime (all zero when missing).
    Stat(Vec<u8>),
    /// `LIST path`: the directory's entries.
    List(Vec<u8>),
    /// `SEND path,mode`: a file follows as DATA chunks and DONE.
    Send { path: Vec<u8>, mode: u32 },
    /// `RECV path`: send the file back as DATA chunks and DONE.
    Recv(Vec<u8>),
    /// `QUIT`: end of the session.
    Quit,
}

/// What follows a SEND.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Chunk {
    /// File bytes.
    Data(Vec<u8>),
    /// End of file, with the modification time to set.
    Done { mtime: u32 },
}

fn read_frame(r: &mut impl Read) -> Result<([u8; 4], u32), SyncError> {
    let mut b = [0u8; 8];
    r.read_exact(&mut b)?;
    let id = [b[0], b[1], b[2], b[3]];
    Ok((id, u32::from_le_bytes([b[4], b[5], b[6], b[7]])))
}

fn read_bytes(r: &mut impl Read, len: u32) -> Result<Vec<u8>, SyncError> {
    let mut v = vec![0u8; len as usize];
    r.read_exact(&mut v)?;
    Ok(v)
}

fn frame(id: &[u8; 4], value: u32) -> Vec<u8> {
    let mut v = id.to_vec();
    v.extend_from_slice(&value.to_le_bytes());
    v
}

fn id_name(id: [u8; 4]) -> String {
    String::from_utf8_lossy(&id).into_owned()
}

impl Request {
    /// Reads one request (bounded by [`MAX_PATH`]).
    pub fn read_from(r: &mut impl Read) -> Result<Request, SyncError> {
        let (id, len) = read_frame(r)?;
        if &id == b"QUIT" {
            return Ok(Request::Quit);
        }
        if !matches!(&id, b"STAT" | b"LIST" | b"SEND" | b"RECV") {
            return Err(SyncError::UnknownId(id_name(id)));
        }
        if len as usize > MAX_PATH {
            return Err(SyncError::PathTooLong(len));
        }
        let path = read_bytes(r, len)?;
        Ok(match &id {
            b"STAT" => Request::Stat(path),
            b"LIST" => Request::List(path),
            b"RECV" => Request::Recv(path),
            _ => {
                let text = String::from_utf8_lossy(&path).into_owned();
                let comma = path.iter().rposition(|&b| b == b',');
                let mode = comma
                    .and_then(|i| std::str::from_utf8(&path[i + 1..]).ok())
                    .and_then(|m| m.parse::<u32>().ok());
                match (comma, mode) {
                    (Some(i), Some(mode)) => Request::Send {
                        path: path[..i].to_vec(),
                        mode,
                    },
                    _ => return Err(SyncError::BadSendTarget(text)),
                }
            }
        })
    }

    /// The request's wire bytes (what an adb client sends).
    pub fn encode(&self) -> Vec<u8> {
        let with_path = |id: &[u8; 4], p: &[u8]| {
            let mut v = frame(id, p.len() as u32);
            v.extend_from_slice(p);
            v
        };
        match self {
            Request::Stat(p) => with_path(b"STAT", p),
            Request::List(p) => with_path(b"LIST", p),
            Request::Recv(p) => with_path(b"RECV", p),
            Request::Send { path, mode } => with_path(
                b"SEND",
                &[path.as_slice(), format!(",{mode}").as_bytes()].concat(),
            ),
            Request::Quit => frame(b"QUIT", 0),
        }
    }
}

impl Chunk {
    /// Reads one DATA or DONE after a SEND (bounded by [`MAX_DATA`]).
    pub fn read_from(r: &mut impl Read) -> Result<Chunk, SyncError> {
        match read_frame(r)? {
            (id, len) if &id == b"DATA" => {
                if len as usize > MAX_DATA {
                    return Err(SyncError::ChunkTooLarge(len));
                }
                Ok(Chunk::Data(read_bytes(r, len)?))
            }
            (id, mtime) if &id == b"DONE" => Ok(Chunk::Done { mtime }),
            (id, _) => Err(SyncError::UnknownId(id_name(id))),
        }
    }

    /// The chunk's wire bytes (DATA is also how RECV replies carry file bytes).
    pub fn encode(&self) -> Vec<u8> {
        match self {
            Chunk::Data(d) => [frame(b"DATA", d.len() as u32), d.clone()].concat(),
            Chunk::Done { mtime } => frame(b"DONE", *mtime),
        }
    }
}

/// File facts carried by STAT and DENT replies (v1: 32-bit fields).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stat {
    pub mode: u32,
    pub size: u32,
    pub mtime: u32,
}

/// Writers of the device's replies.
pub mod reply {
    use super::*;

    /// `STAT mode size mtime` (all zero: no such file).
    pub fn stat(w: &mut impl Write, s: Stat) -> std::io::Result<()> {
        w.write_all(&[frame(b"STAT", s.mode), stat_tail(s)].concat())
    }

    /// One LIST entry.
    pub fn dent(w: &mut impl Write, s: Stat, name: &[u8]) -> std::io::Result<()> {
        let head = [frame(b"DENT", s.mode), stat_tail(s)].concat();
        w.write_all(
            &[
                head,
                (name.len() as u32).to_le_bytes().to_vec(),
                name.to_vec(),
            ]
            .concat(),
        )
    }

    /// End of a LIST: DONE followed by an all-zero entry.
    pub fn list_done(w: &mut impl Write) -> std::io::Result<()> {
        w.write_all(&[frame(b"DONE", 0), vec![0; 12]].concat())
    }

    /// Success of a SEND.
    pub fn okay(w: &mut impl Write) -> std::io::Result<()> {
        w.write_all(&frame(b"OKAY", 0))
    }

    /// A failure the client prints (`adb: error: failed to copy ...: <message>`).
    pub fn fail(w: &mut impl Write, message: &str) -> std::io::Result<()> {
        let m = &message.as_bytes()[..message.len().min(MAX_PATH)];
        w.write_all(&[frame(b"FAIL", m.len() as u32), m.to_vec()].concat())
    }

    fn stat_tail(s: Stat) -> Vec<u8> {
        [s.size.to_le_bytes(), s.mtime.to_le_bytes()].concat()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn path() -> impl Strategy<Value = Vec<u8>> {
        proptest::collection::vec(any::<u8>(), 0..=MAX_PATH - 12)
    }

    fn request() -> impl Strategy<Value = Request> {
        prop_oneof![
            path().prop_map(Request::Stat),
            path().prop_map(Request::List),
            path().prop_map(Request::Recv),
            (path(), any::<u32>()).prop_map(|(path, mode)| Request::Send { path, mode }),
            Just(Request::Quit),
        ]
    }

    #[test]
    fn refuses_oversized_and_unknown_frames() {
        let read = |w: Vec<u8>| Request::read_from(&mut &w[..]);
        assert!(matches!(
            read(frame(b"STAT", 5000)),
            Err(SyncError::PathTooLong(5000))
        ));
        assert!(matches!(
            read(frame(b"STA2", 1)),
            Err(SyncError::UnknownId(_))
        ));
        assert!(matches!(
            read([frame(b"SEND", 3), b"a,x".to_vec()].concat()),
            Err(SyncError::BadSendTarget(_))
        ));
        assert!(matches!(
            read([frame(b"SEND", 1), b"a".to_vec()].concat()),
            Err(SyncError::BadSendTarget(_))
        ));
        assert!(matches!(read(frame(b"RECV", 9)), Err(SyncError::Io(_))));
        let big = frame(b"DATA", MAX_DATA as u32 + 1);
        assert!(matches!(
            Chunk::read_from(&mut &big[..]),
            Err(SyncError::ChunkTooLarge(_))
        ));
    }

    #[test]
    fn replies_have_adb_v1_layout() {
        let mut out = Vec::new();
        reply::stat(
            &mut out,
            Stat {
                mode: 0o100644,
                size: 5,
                mtime: 9,
            },
        )
        .unwrap();
        reply::dent(&mut out, Stat::default(), b"ab").unwrap();
        reply::list_done(&mut out).unwrap();
        reply::fail(&mut out, "no").unwrap();
        assert_eq!(out.len(), 16 + 22 + 20 + 10);
        assert_eq!(&out[..8], b"STAT\xa4\x81\0\0");
        assert_eq!(&out[16..20], b"DENT");
        assert_eq!(&out[36..38], b"ab");
        assert_eq!(&out[58..68], b"FAIL\x02\0\0\0no");
    }

    proptest! {
        #[test]
        fn requests_round_trip(req in request()) {
            let wire = req.encode();
            prop_assert_eq!(Request::read_from(&mut &wire[..]).unwrap(), req);
        }

        #[test]
        fn chunks_round_trip(data in proptest::collection::vec(any::<u8>(), 0..4096), mtime in any::<u32>()) {
            for c in [Chunk::Data(data.clone()), Chunk::Done { mtime }] {
                let wire = c.encode();
                prop_assert_eq!(Chunk::read_from(&mut &wire[..]).unwrap(), c);
            }
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
            let mut r = &bytes[..];
            while Request::read_from(&mut r).is_ok() {}
            let mut r = &bytes[..];
            while Chunk::read_from(&mut r).is_ok() {}
        }
    }
}
