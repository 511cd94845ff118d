//! Turning a control/cursor-queue descriptor chain into a [`GpuCommand`] and the backend's
//! result into the response the driver reads. Every length and count comes from the guest:
//! short requests, oversized scatter lists and tiny response buffers are answered (or logged)
//! without panicking or allocating by guest-chosen sizes.

use std::io::Write;

use cloudphone_virtio::queue::{ChainReader, ChainWriter};
use cloudphone_virtio::{Chain, GuestMemory};
use vm_memory::ByteValued;

use super::backend::{BackingEntry, GpuBackend, GpuCommand, GpuError, GpuResponse, Rect};
use super::protocol::*;

fn read<T: ByteValued + Default>(reader: &mut ChainReader, what: &str) -> Result<T, GpuError> {
    reader
        .read_obj::<T>()
        .map_err(|_| GpuError::Unspec(format!("request too short for the {what} body")))
}

fn rect(r: WireRect) -> Rect {
    Rect {
        x: r.x.into(),
        y: r.y.into(),
        width: r.width.into(),
        height: r.height.into(),
    }
}

/// Decode the body following `hdr`. `max_entries` caps ATTACH_BACKING's scatter list.
pub(crate) fn decode(
    hdr: &CtrlHeader,
    reader: &mut ChainReader,
    max_entries: u32,
) -> Result<GpuCommand, GpuError> {
    Ok(match u32::from(hdr.type_) {
        cmd::GET_DISPLAY_INFO => GpuCommand::GetDisplayInfo,
        cmd::GET_EDID => {
            let b: GetEdid = read(reader, "GET_EDID")?;
            GpuCommand::GetEdid {
                scanout_id: b.scanout.into(),
            }
        }
        cmd::RESOURCE_CREATE_2D => {
            let b: ResourceCreate2d = read(reader, "RESOURCE_CREATE_2D")?;
            GpuCommand::ResourceCreate2d {
                resource_id: b.resource_id.into(),
                format: b.format.into(),
                width: b.width.into(),
                height: b.height.into(),
            }
        }
        cmd::RESOURCE_UNREF => {
            let b: ResourceOnly = read(reader, "RESOURCE_UNREF")?;
            GpuCommand::ResourceUnref {
                resource_id: b.resource_id.into(),
            }
        }
        cmd::SET_SCANOUT => {
            let b: SetScanout = read(reader, "SET_SCANOUT")?;
            GpuCommand::SetScanout {
                scanout_id: b.scanout_id.into(),
                resource_id: b.resource_id.into(),
                rect: rect(b.rect),
            }
        }
        cmd::RESOURCE_FLUSH => {
            let b: ResourceFlush = read(reader, "RESOURCE_FLUSH")?;
            GpuCommand::ResourceFlush {
                resource_id: b.resource_id.into(),
                rect: rect(b.rect),
            }
        }
        cmd::TRANSFER_TO_HOST_2D => {
            let b: TransferToHost2d = read(reader, "TRANSFER_TO_HOST_2D")?;
            GpuCommand::TransferToHost2d {
                resource_id: b.resource_id.into(),
                rect: rect(b.rect),
                offset: b.offset.into(),
            }
        }
        cmd::RESOURCE_ATTACH_BACKING => {
            let b: AttachBacking = read(reader, "RESOURCE_ATTACH_BACKING")?;
            let count = u32::from(b.nr_entries);
            if count == 0 || count > max_entries {
                return Err(GpuError::InvalidParameter(format!(
                    "ATTACH_BACKING with {count} entries (allowed 1..={max_entries})"
                )));
            }
            if reader.available_bytes() < count as usize * std::mem::size_of::<MemEntry>() {
                return Err(GpuError::Unspec(format!(
                    "ATTACH_BACKING promises {count} entries but sends fewer"
                )));
            }
            let entries = (0..count)
                .map(|_| {
                    read::<MemEntry>(reader, "backing entry").map(|e| BackingEntry {
                        addr: e.addr.into(),
                        len: e.length.into(),
                    })
                })
                .collect::<Result<Vec<_>, _>>()?;
            GpuCommand::AttachBacking {
                resource_id: b.resource_id.into(),
                entries,
            }
        }
        cmd::RESOURCE_DETACH_BACKING => {
            let b: ResourceOnly = read(reader, "RESOURCE_DETACH_BACKING")?;
            GpuCommand::DetachBacking {
                resource_id: b.resource_id.into(),
            }
        }
        cmd::UPDATE_CURSOR | cmd::MOVE_CURSOR => {
            let b: UpdateCursor = read(reader, "cursor")?;
            let (scanout_id, x, y) = (b.pos.scanout_id.into(), b.pos.x.into(), b.pos.y.into());
            if u32::from(hdr.type_) == cmd::MOVE_CURSOR {
                GpuCommand::MoveCursor { scanout_id, x, y }
            } else {
                GpuCommand::UpdateCursor {
                    scanout_id,
                    x,
                    y,
                    resource_id: b.resource_id.into(),
                    hot_x: b.hot_x.into(),
                    hot_y: b.hot_y.into(),
                }
            }
        }
        other => GpuCommand::Unsupported { cmd_type: other },
    })
}

/// Serialize the response header (echoing fence/context per spec 5.7.6.7) and payload.
pub(crate) fn encode(req: &CtrlHeader, result: &Result<GpuResponse, GpuError>) -> Vec<u8> {
    let type_ = match result {
        Ok(GpuResponse::NoData) => resp::OK_NODATA,
        Ok(GpuResponse::DisplayInfo(_)) => resp::OK_DISPLAY_INFO,
        Ok(GpuResponse::Edid(_)) => resp::OK_EDID,
        Err(e) => e.response_type(),
    };
    let flags = u32::from(req.flags) & (FLAG_FENCE | FLAG_INFO_RING_IDX);
    let hdr = CtrlHeader {
        type_: type_.into(),
        flags: flags.into(),
        fence_id: if flags & FLAG_FENCE != 0 {
            req.fence_id
        } else {
            0.into()
        },
        ctx_id: req.ctx_id,
        ring_idx: if flags & FLAG_INFO_RING_IDX != 0 {
            req.ring_idx
        } else {
            0
        },
        padding: [0; 3],
    };
    let mut out = hdr.as_slice().to_vec();
    match result {
        Ok(GpuResponse::DisplayInfo(rects)) => {
            let mut body = DisplayInfoBody::default();
            for (one, r) in body.pmodes.iter_mut().zip(rects) {
                one.rect = WireRect {
                    x: r.x.into(),
                    y: r.y.into(),
                    width: r.width.into(),
                    height: r.height.into(),
                };
                one.enabled = 1.into();
            }
            out.extend_from_slice(body.as_slice());
        }
        Ok(GpuResponse::Edid(blob)) => {
            let mut body = EdidBody {
                size: 0.into(),
                padding: 0.into(),
                edid: [0; EDID_BLOB_SIZE],
            };
            let n = blob.len().min(EDID_BLOB_SIZE);
            body.edid[..n].copy_from_slice(&blob[..n]);
            body.size = (n as u32).into();
            out.extend_from_slice(body.as_slice());
        }
        _ => {}
    }
    out
}

/// Handle one chain end to end; returns the bytes written to the driver's response buffer.
pub(crate) fn process_chain(
    backend: &mut dyn GpuBackend,
    mem: &GuestMemory,
    chain: &Chain,
    max_entries: u32,
) -> u32 {
    let (mut reader, mut writer) = (chain.reader(mem), chain.writer(mem));
    let (hdr, result) = match read::<CtrlHeader>(&mut reader, "control header") {
        Ok(hdr) => {
            let result = decode(&hdr, &mut reader, max_entries).and_then(|cmd| {
                tracing::trace!(?cmd, "virtio-gpu command");
                backend.execute(mem, cmd)
            });
            (hdr, result)
        }
        Err(e) => (CtrlHeader::default(), Err(e)),
    };
    if let Err(e) = &result {
        tracing::debug!(cmd = u32::from(hdr.type_), error = %e, "virtio-gpu command rejected");
    }
    respond(&mut writer, &encode(&hdr, &result))
}

fn respond(writer: &mut ChainWriter, bytes: &[u8]) -> u32 {
    if writer.available_bytes() == 0 {
        return 0; // e.g. Linux's cursor queue sends no response buffer
    }
    if writer.available_bytes() < bytes.len() {
        cloudphone_virtio::guest_warn!(
            need = bytes.len(),
            have = writer.available_bytes(),
            "virtio-gpu: response buffer too small; response dropped"
        );
        return 0;
    }
    match writer.write_all(bytes) {
        Ok(()) => bytes.len() as u32,
        Err(e) => {
            cloudphone_virtio::guest_warn!(error = %e, "virtio-gpu: writing response failed");
            0
        }
    }
}
