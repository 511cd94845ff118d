//! Parsing and executing one virtio-blk request (virtio spec 5.2.6).
//!
//! The chain is untrusted: it is read as a readable byte stream (16-byte header, then data
//! for writes/discards) followed by a writable stream (data for reads, then the 1-byte status),
//! with no assumption about how the driver split it into descriptors. Everything is checked
//! before the disk is touched: direction, sizes, sector ranges and caps.

use virtio_bindings::virtio_blk::*;
use vm_memory::{Address, Bytes, GuestAddress, GuestMemoryBackend};

use crate::backend::DiskBackend;
use crate::guest_io::GuestIo;
use cloudphone_virtio::GuestMemory;

/// Sector size of the virtio-blk protocol (independent of `blk_size`).
pub const SECTOR_SIZE: u64 = 512;
/// Device ID length (`VIRTIO_BLK_ID_BYTES`).
pub const ID_LEN: usize = 20;
/// Data segments per request we advertise (`seg_max`) and accept: the 256-entry queue minus
/// header and status (as QEMU does), so page-cache writeback comes in ~1 MiB requests rather
/// than twice as many half-size ones (each costs a notify and an interrupt).
pub const SEG_MAX: u32 = 254;
/// Descriptors per chain we look at (data segments + header + status, with slack for
/// drivers that split the header); bounds the work per request whatever the queue size.
const MAX_DESCRIPTORS: usize = SEG_MAX as usize + 8;
/// Largest data transfer per request (a bounce buffer, where a backend needs one, is sized by
/// it, never by the guest).
pub const MAX_REQUEST_BYTES: u64 = 32 << 20;
/// Discard / write-zeroes segments per request we advertise and accept.
pub const MAX_DISCARD_SEGMENTS: u32 = 32;
/// Sectors per discard / write-zeroes segment we advertise and accept (2 GiB).
pub const MAX_DISCARD_SECTORS: u32 = 1 << 22;
/// Size of one discard / write-zeroes segment on the wire.
const DISCARD_SEGMENT_LEN: usize = 16;
const HEADER_LEN: usize = 16;

/// Why a chain was rejected; logged, and answered with IOERR or UNSUPP when possible.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RequestError {
    #[error("chain has more than {MAX_DESCRIPTORS} descriptors")]
    TooManyDescriptors,
    #[error("readable descriptor after a writable one")]
    BadOrder,
    #[error("no device-writable status byte at the end of the chain")]
    NoStatus,
    #[error("status byte at {0:#x} is outside guest memory")]
    StatusOutsideMemory(u64),
    #[error("request header is {0} bytes, need {HEADER_LEN}")]
    ShortHeader(usize),
    #[error("{0} buffer is in the wrong direction for request type {1}")]
    WrongDirection(&'static str, u32),
    #[error("data length {0} is not a multiple of 512")]
    Unaligned(u64),
    #[error("data length {0} exceeds the {MAX_REQUEST_BYTES}-byte request cap")]
    TooLong(u64),
    #[error("sectors {sector}+{count} are past the disk end ({capacity} sectors)")]
    OutOfRange {
        sector: u64,
        count: u64,
        capacity: u64,
    },
    #[error("malformed discard/write-zeroes segment list: {0}")]
    BadSegments(&'static str),
    #[error("unsupported request type {0}")]
    Unsupported(u32),
    #[error("guest memory access failed at {0:#x}")]
    Memory(u64),
    #[error("read-only disk")]
    ReadOnly,
    #[error("backend failed: {0}")]
    Backend(String),
}

impl RequestError {
    /// The status byte the driver gets for this error.
    pub fn status(&self) -> u8 {
        match self {
            RequestError::Unsupported(_) => VIRTIO_BLK_S_UNSUPP as u8,
            _ => VIRTIO_BLK_S_IOERR as u8,
        }
    }
}

/// A contiguous piece of guest memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Segment {
    pub addr: GuestAddress,
    pub len: u32,
}

/// The shape of a chain after the framing checks: readable and writable byte streams.
#[derive(Debug)]
pub struct Framing {
    readable: Vec<Segment>,
    writable: Vec<Segment>,
    /// Where the status byte goes.
    pub status: GuestAddress,
}

/// The operation a request asks for, with its data checked against the disk.
#[derive(Debug, PartialEq, Eq)]
pub enum Op {
    Read {
        offset: u64,
        data: Vec<Segment>,
        len: u64,
    },
    Write {
        offset: u64,
        data: Vec<Segment>,
        len: u64,
    },
    Flush,
    GetId {
        data: Vec<Segment>,
    },
    /// (offset, len) byte ranges.
    Discard(Vec<(u64, u64)>),
    WriteZeroes(Vec<(u64, u64)>),
}

fn total(segs: &[Segment]) -> u64 {
    segs.iter().map(|s| u64::from(s.len)).sum()
}

/// Split a stream of segments after `at` bytes: (head, tail).
fn split_at(segs: &[Segment], mut at: u64) -> (Vec<Segment>, Vec<Segment>) {
    let mut head = Vec::new();
    let mut tail = Vec::new();
    for s in segs {
        let len = u64::from(s.len);
        if at >= len {
            head.push(*s);
            at -= len;
        } else if at > 0 {
            head.push(Segment {
                addr: s.addr,
                len: at as u32,
            });
            tail.push(Segment {
                addr: s.addr.unchecked_add(at),
                len: s.len - at as u32,
            });
            at = 0;
        } else {
            tail.push(*s);
        }
    }
    (head, tail)
}

/// Copy the whole stream `segs` out of guest memory into `out` (which has the stream's length).
pub fn gather(mem: &GuestMemory, segs: &[Segment], out: &mut [u8]) -> Result<(), RequestError> {
    let mut pos = 0;
    for s in segs {
        let n = s.len as usize;
        mem.read_slice(&mut out[pos..pos + n], s.addr)
            .map_err(|_| RequestError::Memory(s.addr.0))?;
        pos += n;
    }
    Ok(())
}

/// Copy `data` into the guest stream `segs` (as far as both reach); returns bytes written.
pub fn scatter(mem: &GuestMemory, segs: &[Segment], data: &[u8]) -> Result<usize, RequestError> {
    let mut pos = 0;
    for s in segs {
        if pos >= data.len() {
            break;
        }
        let n = (s.len as usize).min(data.len() - pos);
        mem.write_slice(&data[pos..pos + n], s.addr)
            .map_err(|_| RequestError::Memory(s.addr.0))?;
        pos += n;
    }
    Ok(pos)
}

impl Framing {
    /// Walk the descriptors (address, length, device-writable) of one chain.
    pub fn new(
        mem: &GuestMemory,
        descriptors: impl Iterator<Item = (GuestAddress, u32, bool)>,
    ) -> Result<Self, RequestError> {
        let mut readable = Vec::new();
        let mut writable = Vec::new();
        for (count, (addr, len, device_writable)) in descriptors.enumerate() {
            if count >= MAX_DESCRIPTORS {
                return Err(RequestError::TooManyDescriptors);
            }
            if len == 0 {
                continue;
            }
            let seg = Segment { addr, len };
            if device_writable {
                writable.push(seg);
            } else if writable.is_empty() {
                readable.push(seg);
            } else {
                return Err(RequestError::BadOrder);
            }
        }
        let last = writable.pop().ok_or(RequestError::NoStatus)?;
        let status = last
            .addr
            .checked_add(u64::from(last.len) - 1)
            .filter(|a| mem.address_in_range(*a))
            .ok_or(RequestError::StatusOutsideMemory(
                last.addr.0.wrapping_add(u64::from(last.len) - 1),
            ))?;
        if last.len > 1 {
            writable.push(Segment {
                addr: last.addr,
                len: last.len - 1,
            });
        }
        Ok(Framing {
            readable,
            writable,
            status,
        })
    }

    /// Read the header and check the request against a disk of `capacity_sectors`.
    pub fn parse(
        self,
        mem: &GuestMemory,
        capacity_sectors: u64,
        read_only: bool,
    ) -> Result<Op, RequestError> {
        let readable_len = total(&self.readable);
        if readable_len < HEADER_LEN as u64 {
            return Err(RequestError::ShortHeader(readable_len as usize));
        }
        let (header_segs, data_in) = split_at(&self.readable, HEADER_LEN as u64);
        let mut header = [0u8; HEADER_LEN];
        gather(mem, &header_segs, &mut header)?;
        let kind = u32::from_le_bytes(header[0..4].try_into().expect("4 bytes"));
        let sector = u64::from_le_bytes(header[8..16].try_into().expect("8 bytes"));
        let data_out = self.writable;
        let none = |segs: &[Segment], which| {
            if segs.is_empty() {
                Ok(())
            } else {
                Err(RequestError::WrongDirection(which, kind))
            }
        };
        let mutating = matches!(
            kind,
            VIRTIO_BLK_T_OUT | VIRTIO_BLK_T_DISCARD | VIRTIO_BLK_T_WRITE_ZEROES
        );
        if mutating && read_only {
            return Err(RequestError::ReadOnly);
        }
        match kind {
            VIRTIO_BLK_T_IN | VIRTIO_BLK_T_OUT => {
                let (data, other) = if kind == VIRTIO_BLK_T_IN {
                    (data_out, data_in)
                } else {
                    (data_in, data_out)
                };
                none(
                    &other,
                    if kind == VIRTIO_BLK_T_IN {
                        "readable"
                    } else {
                        "writable"
                    },
                )?;
                let len = total(&data);
                if len % SECTOR_SIZE != 0 {
                    return Err(RequestError::Unaligned(len));
                }
                if len > MAX_REQUEST_BYTES {
                    return Err(RequestError::TooLong(len));
                }
                check_range(sector, len / SECTOR_SIZE, capacity_sectors)?;
                let offset = sector * SECTOR_SIZE;
                Ok(if kind == VIRTIO_BLK_T_IN {
                    Op::Read { offset, data, len }
                } else {
                    Op::Write { offset, data, len }
                })
            }
            VIRTIO_BLK_T_FLUSH => {
                none(&data_in, "readable")?;
                none(&data_out, "writable")?;
                Ok(Op::Flush)
            }
            VIRTIO_BLK_T_GET_ID => {
                none(&data_in, "readable")?;
                Ok(Op::GetId { data: data_out })
            }
            VIRTIO_BLK_T_DISCARD | VIRTIO_BLK_T_WRITE_ZEROES => {
                none(&data_out, "writable")?;
                let ranges = parse_segments(
                    mem,
                    &data_in,
                    capacity_sectors,
                    kind == VIRTIO_BLK_T_WRITE_ZEROES,
                )?;
                Ok(if kind == VIRTIO_BLK_T_DISCARD {
                    Op::Discard(ranges)
                } else {
                    Op::WriteZeroes(ranges)
                })
            }
            other => Err(RequestError::Unsupported(other)),
        }
    }
}

fn check_range(sector: u64, count: u64, capacity: u64) -> Result<(), RequestError> {
    match sector.checked_add(count) {
        Some(end) if end <= capacity => Ok(()),
        _ => Err(RequestError::OutOfRange {
            sector,
            count,
            capacity,
        }),
    }
}

/// Parse `virtio_blk_discard_write_zeroes` segments into byte ranges.
fn parse_segments(
    mem: &GuestMemory,
    segs: &[Segment],
    capacity: u64,
    unmap_allowed: bool,
) -> Result<Vec<(u64, u64)>, RequestError> {
    let len = total(segs);
    if len == 0 || len % DISCARD_SEGMENT_LEN as u64 != 0 {
        return Err(RequestError::BadSegments(
            "length is not a non-zero multiple of 16",
        ));
    }
    if len > u64::from(MAX_DISCARD_SEGMENTS) * DISCARD_SEGMENT_LEN as u64 {
        return Err(RequestError::BadSegments(
            "more segments than max_discard_seg",
        ));
    }
    let mut raw = vec![0u8; len as usize];
    gather(mem, segs, &mut raw)?;
    raw.chunks_exact(DISCARD_SEGMENT_LEN)
        .map(|c| {
            let sector = u64::from_le_bytes(c[0..8].try_into().expect("8 bytes"));
            let count = u32::from_le_bytes(c[8..12].try_into().expect("4 bytes"));
            let flags = u32::from_le_bytes(c[12..16].try_into().expect("4 bytes"));
            let allowed = if unmap_allowed {
                VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP
            } else {
                0
            };
            if flags & !allowed != 0 {
                return Err(RequestError::BadSegments("unknown flags"));
            }
            if count > MAX_DISCARD_SECTORS {
                return Err(RequestError::BadSegments(
                    "segment larger than max_discard_sectors",
                ));
            }
            check_range(sector, u64::from(count), capacity)?;
            Ok((sector * SECTOR_SIZE, u64::from(count) * SECTOR_SIZE))
        })
        .collect()
}

/// Run `op` against `disk`; returns the number of bytes written into the guest's writable
/// buffers (not counting the status byte). `bounce` is reused between requests.
pub fn execute(
    op: Op,
    mem: &GuestMemory,
    disk: &mut dyn DiskBackend,
    id: &[u8; ID_LEN],
    bounce: &mut Vec<u8>,
) -> Result<u32, RequestError> {
    let backend = |e: crate::backend::DiskError| RequestError::Backend(e.to_string());
    match op {
        Op::Read { offset, data, len } => {
            let data = GuestIo::new(mem, &data)?;
            disk.read_to_guest(&data, offset, bounce).map_err(backend)?;
            Ok(len as u32)
        }
        Op::Write { offset, data, .. } => {
            let data = GuestIo::new(mem, &data)?;
            disk.write_from_guest(&data, offset, bounce)
                .map_err(backend)?;
            Ok(0)
        }
        Op::Flush => disk.flush().map(|_| 0).map_err(backend),
        Op::GetId { data } => Ok(scatter(mem, &data, id)? as u32),
        Op::Discard(ranges) => {
            for (offset, len) in ranges {
                disk.discard(offset, len).map_err(backend)?;
            }
            Ok(0)
        }
        Op::WriteZeroes(ranges) => {
            for (offset, len) in ranges {
                disk.write_zeroes(offset, len).map_err(backend)?;
            }
            Ok(0)
        }
    }
}
