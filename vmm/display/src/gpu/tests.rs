//! Device-model tests: commands go through real descriptor chains (virtio-queue's mock driver)
//! into `process_chain`, so the parser, the backend and the response encoding are all covered.

use proptest::prelude::*;
use vm_memory::{ByteValued, Bytes, GuestAddress};

use super::decode::process_chain;
use super::protocol::*;
use super::{Backend2d, GpuLimits};
use crate::framebuffer::tests::test_export;
use crate::framebuffer::FramebufferExport;
use crate::spec::GpuSpec;
use cloudphone_virtio::testing::hostile::single_chain;
use cloudphone_virtio::GuestMemory;

const MEM_SIZE: usize = 16 << 20;
const REQ_ADDR: u64 = 0x10_0000;
const RESP_ADDR: u64 = 0x20_0000;
const DATA_ADDR: u64 = 0x40_0000;

struct Gpu {
    mem: GuestMemory,
    backend: Backend2d,
    export: FramebufferExport,
}

/// A decoded response: type, flags, fence, ctx, payload after the header.
#[derive(Debug)]
struct Resp {
    type_: u32,
    flags: u32,
    fence_id: u64,
    ctx_id: u32,
    body: Vec<u8>,
}

fn hdr(type_: u32) -> CtrlHeader {
    CtrlHeader {
        type_: type_.into(),
        ..Default::default()
    }
}

fn req<T: ByteValued>(type_: u32, body: T) -> Vec<u8> {
    let mut v = hdr(type_).as_slice().to_vec();
    v.extend_from_slice(body.as_slice());
    v
}

fn wrect(x: u32, y: u32, width: u32, height: u32) -> WireRect {
    WireRect {
        x: x.into(),
        y: y.into(),
        width: width.into(),
        height: height.into(),
    }
}

impl Gpu {
    fn new(width: u32, height: u32) -> Self {
        Self::with_limits(width, height, GpuLimits::default())
    }

    fn with_limits(width: u32, height: u32, limits: GpuLimits) -> Self {
        let mem = GuestMemory::from_ranges(&[(GuestAddress(0), MEM_SIZE)]).unwrap();
        let export = test_export(width, height);
        let backend = Backend2d::new(
            GpuSpec {
                width,
                height,
                dpi: 320,
            },
            limits,
            export.clone(),
        );
        Self {
            mem,
            backend,
            export,
        }
    }

    /// Send raw request bytes with a `resp_len`-byte response buffer; returns bytes written and
    /// the response buffer.
    fn raw(&mut self, request: &[u8], resp_len: u32) -> (u32, Vec<u8>) {
        self.mem
            .write_slice(request, GuestAddress(REQ_ADDR))
            .unwrap();
        self.mem
            .write_slice(&vec![0xaa; resp_len as usize], GuestAddress(RESP_ADDR))
            .unwrap();
        let mut bufs = vec![(REQ_ADDR, request.len() as u32, false)];
        if resp_len > 0 {
            bufs.push((RESP_ADDR, resp_len, true));
        }
        let chain = single_chain(&self.mem, &bufs).unwrap();
        let limit = GpuLimits::default().max_backing_entries;
        let written = process_chain(&mut self.backend, &self.mem, &chain, limit);
        let mut out = vec![0u8; resp_len as usize];
        self.mem
            .read_slice(&mut out, GuestAddress(RESP_ADDR))
            .unwrap();
        (written, out)
    }

    fn send(&mut self, request: &[u8]) -> Resp {
        let (written, out) = self.raw(request, 4096);
        assert!(written as usize >= 24, "no response header written");
        let h = CtrlHeader::from_slice(&out[..24]).copied().unwrap();
        Resp {
            type_: h.type_.into(),
            flags: h.flags.into(),
            fence_id: h.fence_id.into(),
            ctx_id: h.ctx_id.into(),
            body: out[24..written as usize].to_vec(),
        }
    }

    fn create(&mut self, id: u32, width: u32, height: u32) -> u32 {
        let body = ResourceCreate2d {
            resource_id: id.into(),
            format: 2.into(),
            width: width.into(),
            height: height.into(),
        };
        self.send(&req(cmd::RESOURCE_CREATE_2D, body)).type_
    }

    fn attach(&mut self, id: u32, entries: &[(u64, u32)]) -> u32 {
        let mut v = req(
            cmd::RESOURCE_ATTACH_BACKING,
            AttachBacking {
                resource_id: id.into(),
                nr_entries: (entries.len() as u32).into(),
            },
        );
        for &(addr, len) in entries {
            v.extend_from_slice(
                MemEntry {
                    addr: addr.into(),
                    length: len.into(),
                    padding: 0.into(),
                }
                .as_slice(),
            );
        }
        self.send(&v).type_
    }

    fn transfer(&mut self, id: u32, r: WireRect, offset: u64) -> u32 {
        let body = TransferToHost2d {
            rect: r,
            offset: offset.into(),
            resource_id: id.into(),
            padding: 0.into(),
        };
        self.send(&req(cmd::TRANSFER_TO_HOST_2D, body)).type_
    }

    fn scanout(&mut self, scanout: u32, id: u32, r: WireRect) -> u32 {
        let body = SetScanout {
            rect: r,
            scanout_id: scanout.into(),
            resource_id: id.into(),
        };
        self.send(&req(cmd::SET_SCANOUT, body)).type_
    }

    fn flush(&mut self, id: u32, r: WireRect) -> u32 {
        let body = ResourceFlush {
            rect: r,
            resource_id: id.into(),
            padding: 0.into(),
        };
        self.send(&req(cmd::RESOURCE_FLUSH, body)).type_
    }

    fn resource_only(&mut self, type_: u32, id: u32) -> u32 {
        self.send(&req(
            type_,
            ResourceOnly {
                resource_id: id.into(),
                padding: 0.into(),
            },
        ))
        .type_
    }
}

/// A deterministic test picture: byte i of the frame = f(i, salt).
fn pattern(len: usize, salt: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(salt) ^ (i >> 8) as u8)
        .collect()
}

#[test]
fn display_info_and_edid() {
    let mut gpu = Gpu::new(720, 1280);
    let r = gpu.send(hdr(cmd::GET_DISPLAY_INFO).as_slice());
    assert_eq!(r.type_, resp::OK_DISPLAY_INFO);
    let info = DisplayInfoBody::from_slice(&r.body).copied().unwrap();
    let one = info.pmodes[0];
    assert_eq!(
        (
            u32::from(one.rect.width),
            u32::from(one.rect.height),
            u32::from(one.enabled)
        ),
        (720, 1280, 1)
    );
    assert!(info.pmodes[1..].iter().all(|p| u32::from(p.enabled) == 0));

    let r = gpu.send(&req(
        cmd::GET_EDID,
        GetEdid {
            scanout: 0.into(),
            padding: 0.into(),
        },
    ));
    assert_eq!(r.type_, resp::OK_EDID);
    let body = EdidBody::from_slice(&r.body).copied().unwrap();
    assert_eq!(u32::from(body.size), 128);
    assert_eq!(
        body.edid[..128].iter().fold(0u8, |a, b| a.wrapping_add(*b)),
        0
    );
    let r = gpu.send(&req(
        cmd::GET_EDID,
        GetEdid {
            scanout: 1.into(),
            padding: 0.into(),
        },
    ));
    assert_eq!(r.type_, resp::ERR_INVALID_SCANOUT_ID);
}

#[test]
fn drawn_frame_lands_in_export_with_damage() {
    let (w, h) = (64u32, 32u32);
    let mut gpu = Gpu::new(w, h);
    let damage = gpu.export.subscribe();
    let frame = (w * h * 4) as usize;
    // Backing scattered over three entries in a non-monotonic address order.
    let pixels = pattern(frame, 1);
    let split = [
        (DATA_ADDR + 0x20_0000, 1000u32),
        (DATA_ADDR, 3000),
        (DATA_ADDR + 0x10_0000, frame as u32 - 4000),
    ];
    let mut at = 0usize;
    for (addr, len) in split {
        gpu.mem
            .write_slice(&pixels[at..at + len as usize], GuestAddress(addr))
            .unwrap();
        at += len as usize;
    }
    assert_eq!(gpu.create(7, w, h), resp::OK_NODATA);
    assert_eq!(gpu.attach(7, &split), resp::OK_NODATA);
    assert_eq!(gpu.transfer(7, wrect(0, 0, w, h), 0), resp::OK_NODATA);
    assert_eq!(gpu.scanout(0, 7, wrect(0, 0, w, h)), resp::OK_NODATA);
    assert_eq!(gpu.flush(7, wrect(0, 0, w, h)), resp::OK_NODATA);
    let (info, shown) = gpu.export.read_frame();
    assert_eq!(
        (info.width, info.height, info.stride, info.seq),
        (w, h, w * 4, 1)
    );
    assert_eq!(
        shown, pixels,
        "scanout must match the guest's frame byte for byte"
    );
    assert_eq!(
        std::fs::read(&info.path).unwrap(),
        pixels,
        "and so must the shared file"
    );
    let d = damage.try_recv().unwrap();
    assert_eq!((d.seq, d.x, d.y, d.width, d.height), (1, 0, 0, w, h));

    // Redraw a sub-rectangle: only it changes, at the right place.
    let new = pattern(frame, 99);
    at = 0;
    for (addr, len) in split {
        gpu.mem
            .write_slice(&new[at..at + len as usize], GuestAddress(addr))
            .unwrap();
        at += len as usize;
    }
    let (rx, ry, rw, rh) = (8u32, 4u32, 16u32, 8u32);
    let stride = w * 4;
    assert_eq!(
        gpu.transfer(7, wrect(rx, ry, rw, rh), u64::from(ry * stride + rx * 4)),
        resp::OK_NODATA
    );
    assert_eq!(gpu.flush(7, wrect(rx, ry, rw, rh)), resp::OK_NODATA);
    let (_, shown) = gpu.export.read_frame();
    for y in 0..h {
        for x in 0..w {
            let i = (y * stride + x * 4) as usize;
            let inside = (rx..rx + rw).contains(&x) && (ry..ry + rh).contains(&y);
            let expect = if inside {
                &new[i..i + 4]
            } else {
                &pixels[i..i + 4]
            };
            assert_eq!(&shown[i..i + 4], expect, "pixel ({x},{y}) inside={inside}");
        }
    }
    let d = damage.try_recv().unwrap();
    assert_eq!((d.seq, d.x, d.y, d.width, d.height), (2, rx, ry, rw, rh));
    // Flushing a resource that is not on the scanout publishes nothing.
    assert_eq!(gpu.create(8, 4, 4), resp::OK_NODATA);
    assert_eq!(gpu.flush(8, wrect(0, 0, 4, 4)), resp::OK_NODATA);
    assert!(damage.try_recv().is_none());
}

#[test]
fn page_flip_between_resources_keeps_both_contents() {
    let (w, h) = (16u32, 8u32);
    let frame = (w * h * 4) as usize;
    let mut gpu = Gpu::new(w, h);
    let (a, b) = (pattern(frame, 3), pattern(frame, 200));
    gpu.mem.write_slice(&a, GuestAddress(DATA_ADDR)).unwrap();
    gpu.mem
        .write_slice(&b, GuestAddress(DATA_ADDR + 0x10_0000))
        .unwrap();
    for (id, addr) in [(1, DATA_ADDR), (2, DATA_ADDR + 0x10_0000)] {
        assert_eq!(gpu.create(id, w, h), resp::OK_NODATA);
        assert_eq!(gpu.attach(id, &[(addr, frame as u32)]), resp::OK_NODATA);
        assert_eq!(gpu.transfer(id, wrect(0, 0, w, h), 0), resp::OK_NODATA);
    }
    assert_eq!(gpu.scanout(0, 1, wrect(0, 0, w, h)), resp::OK_NODATA);
    assert_eq!(gpu.export.read_frame().1, a);
    assert_eq!(gpu.scanout(0, 2, wrect(0, 0, w, h)), resp::OK_NODATA);
    assert_eq!(gpu.export.read_frame().1, b);
    assert_eq!(gpu.scanout(0, 1, wrect(0, 0, w, h)), resp::OK_NODATA);
    assert_eq!(gpu.export.read_frame().1, a);
    // Disable, unref, detach.
    assert_eq!(gpu.scanout(0, 0, wrect(0, 0, 0, 0)), resp::OK_NODATA);
    assert_eq!(
        gpu.resource_only(cmd::RESOURCE_DETACH_BACKING, 1),
        resp::OK_NODATA
    );
    assert_eq!(
        gpu.resource_only(cmd::RESOURCE_DETACH_BACKING, 1),
        resp::ERR_UNSPEC
    );
    assert_eq!(gpu.resource_only(cmd::RESOURCE_UNREF, 1), resp::OK_NODATA);
    assert_eq!(
        gpu.resource_only(cmd::RESOURCE_UNREF, 1),
        resp::ERR_INVALID_RESOURCE_ID
    );
}

#[test]
fn fences_are_echoed() {
    let mut gpu = Gpu::new(64, 64);
    let mut h = hdr(cmd::GET_DISPLAY_INFO);
    h.flags = FLAG_FENCE.into();
    h.fence_id = 0x1234_5678_9abc.into();
    h.ctx_id = 5.into();
    let r = gpu.send(h.as_slice());
    assert_eq!(
        (r.flags & FLAG_FENCE, r.fence_id, r.ctx_id),
        (FLAG_FENCE, 0x1234_5678_9abc, 5)
    );
    // Errors carry the fence too.
    let mut v = req(
        cmd::RESOURCE_UNREF,
        ResourceOnly {
            resource_id: 9.into(),
            padding: 0.into(),
        },
    );
    v[4..8].copy_from_slice(&FLAG_FENCE.to_le_bytes());
    v[8..16].copy_from_slice(&7u64.to_le_bytes());
    let r = gpu.send(&v);
    assert_eq!(
        (r.type_, r.flags, r.fence_id),
        (resp::ERR_INVALID_RESOURCE_ID, FLAG_FENCE, 7)
    );
    // Without the flag, no fence id leaks back.
    let r = gpu.send(hdr(cmd::GET_DISPLAY_INFO).as_slice());
    assert_eq!((r.flags, r.fence_id), (0, 0));
}

#[test]
fn hostile_commands_get_spec_errors() {
    let limits = GpuLimits {
        max_host_memory: 1 << 20,
        ..GpuLimits::default()
    };
    let mut gpu = Gpu::with_limits(64, 64, limits);
    use resp::*;
    assert_eq!(gpu.create(0, 4, 4), ERR_INVALID_RESOURCE_ID);
    assert_eq!(gpu.create(1, 4, 4), OK_NODATA);
    assert_eq!(gpu.create(1, 4, 4), ERR_INVALID_RESOURCE_ID, "duplicate id");
    assert_eq!(gpu.create(2, 0, 4), ERR_INVALID_PARAMETER);
    assert_eq!(gpu.create(2, 8193, 1), ERR_INVALID_PARAMETER);
    assert_eq!(
        gpu.create(2, 8192, 8192),
        ERR_OUT_OF_MEMORY,
        "256 MiB over a 1 MiB cap"
    );
    let bad_format = ResourceCreate2d {
        resource_id: 3.into(),
        format: 5.into(),
        width: 4.into(),
        height: 4.into(),
    };
    assert_eq!(
        gpu.send(&req(cmd::RESOURCE_CREATE_2D, bad_format)).type_,
        ERR_INVALID_PARAMETER
    );

    // Backing outside guest memory, wrapping, too many entries, promised but missing entries.
    assert_eq!(
        gpu.attach(1, &[(MEM_SIZE as u64 - 8, 64)]),
        ERR_INVALID_PARAMETER
    );
    assert_eq!(gpu.attach(1, &[(u64::MAX - 4, 64)]), ERR_INVALID_PARAMETER);
    assert_eq!(gpu.attach(99, &[(DATA_ADDR, 64)]), ERR_INVALID_RESOURCE_ID);
    let huge = AttachBacking {
        resource_id: 1.into(),
        nr_entries: u32::MAX.into(),
    };
    assert_eq!(
        gpu.send(&req(cmd::RESOURCE_ATTACH_BACKING, huge)).type_,
        ERR_INVALID_PARAMETER
    );
    let short = AttachBacking {
        resource_id: 1.into(),
        nr_entries: 3.into(),
    };
    assert_eq!(
        gpu.send(&req(cmd::RESOURCE_ATTACH_BACKING, short)).type_,
        ERR_UNSPEC
    );

    // Transfers: no backing, past the resource, past the backing, overflowing offset.
    assert_eq!(gpu.transfer(1, wrect(0, 0, 4, 4), 0), ERR_UNSPEC);
    assert_eq!(
        gpu.attach(1, &[(DATA_ADDR, 32)]),
        OK_NODATA,
        "half the 64 bytes needed"
    );
    assert_eq!(
        gpu.attach(1, &[(DATA_ADDR, 64)]),
        ERR_UNSPEC,
        "already attached"
    );
    assert_eq!(gpu.transfer(1, wrect(0, 0, 4, 2), 0), OK_NODATA);
    assert_eq!(gpu.transfer(1, wrect(0, 0, 4, 4), 0), ERR_INVALID_PARAMETER);
    assert_eq!(gpu.transfer(1, wrect(1, 0, 4, 1), 0), ERR_INVALID_PARAMETER);
    assert_eq!(
        gpu.transfer(1, wrect(u32::MAX, 0, 2, 1), 0),
        ERR_INVALID_PARAMETER
    );
    assert_eq!(
        gpu.transfer(1, wrect(0, 0, 1, 1), 32),
        ERR_INVALID_PARAMETER
    );
    assert_eq!(
        gpu.transfer(1, wrect(0, 0, 1, 1), u64::MAX),
        ERR_INVALID_PARAMETER
    );
    assert_eq!(
        gpu.transfer(42, wrect(0, 0, 1, 1), 0),
        ERR_INVALID_RESOURCE_ID
    );

    // Scanout and flush.
    assert_eq!(gpu.scanout(1, 1, wrect(0, 0, 4, 4)), ERR_INVALID_SCANOUT_ID);
    assert_eq!(
        gpu.scanout(0, 42, wrect(0, 0, 4, 4)),
        ERR_INVALID_RESOURCE_ID
    );
    assert_eq!(gpu.scanout(0, 1, wrect(0, 0, 5, 4)), ERR_INVALID_PARAMETER);
    assert_eq!(gpu.create(4, 128, 128), OK_NODATA);
    assert_eq!(
        gpu.scanout(0, 4, wrect(0, 0, 128, 128)),
        ERR_INVALID_PARAMETER,
        "bigger than the display"
    );
    assert_eq!(gpu.flush(1, wrect(0, 0, 5, 5)), ERR_INVALID_PARAMETER);
    assert_eq!(gpu.flush(42, wrect(0, 0, 1, 1)), ERR_INVALID_RESOURCE_ID);
    assert_eq!(
        gpu.resource_only(cmd::RESOURCE_DETACH_BACKING, 42),
        ERR_INVALID_RESOURCE_ID
    );

    // Unknown (3D) commands and truncated bodies.
    assert_eq!(gpu.send(hdr(0x200).as_slice()).type_, ERR_UNSPEC);
    assert_eq!(
        gpu.send(hdr(cmd::RESOURCE_CREATE_2D).as_slice()).type_,
        ERR_UNSPEC
    );
    assert_eq!(
        gpu.send(&[1, 1, 0]).type_,
        ERR_UNSPEC,
        "shorter than a header"
    );

    // Accounting returns memory on unref: the cap is reusable.
    assert_eq!(gpu.resource_only(cmd::RESOURCE_UNREF, 4), OK_NODATA);
    // 1 MiB cap - resource 1 (64 bytes + one 24-byte backing entry) - 1020 KiB leaves 4008 bytes.
    assert_eq!(gpu.create(5, 1024, 255), OK_NODATA);
    assert_eq!(gpu.create(6, 32, 32), ERR_OUT_OF_MEMORY);
    assert_eq!(gpu.resource_only(cmd::RESOURCE_UNREF, 5), OK_NODATA);
    assert_eq!(gpu.create(6, 32, 32), OK_NODATA);
}

#[test]
fn small_or_missing_response_buffers_do_not_panic() {
    let mut gpu = Gpu::new(64, 64);
    let (written, buf) = gpu.raw(hdr(cmd::GET_DISPLAY_INFO).as_slice(), 30);
    assert_eq!(written, 0);
    assert!(buf.iter().all(|b| *b == 0xaa), "nothing partial written");
    let (written, _) = gpu.raw(hdr(cmd::GET_DISPLAY_INFO).as_slice(), 0);
    assert_eq!(written, 0);
}

#[test]
fn cursor_state_is_kept() {
    let mut gpu = Gpu::new(64, 64);
    let image = pattern(64 * 64 * 4, 5);
    gpu.mem
        .write_slice(&image, GuestAddress(DATA_ADDR))
        .unwrap();
    assert_eq!(gpu.create(9, 64, 64), resp::OK_NODATA);
    assert_eq!(
        gpu.attach(9, &[(DATA_ADDR, image.len() as u32)]),
        resp::OK_NODATA
    );
    assert_eq!(gpu.transfer(9, wrect(0, 0, 64, 64), 0), resp::OK_NODATA);
    let upd = |id: u32, x: u32, y: u32| UpdateCursor {
        pos: CursorPosWire {
            scanout_id: 0.into(),
            x: x.into(),
            y: y.into(),
            padding: 0.into(),
        },
        resource_id: id.into(),
        hot_x: 3.into(),
        hot_y: 4.into(),
        padding: 0.into(),
    };
    // Linux's cursor queue has no response buffer.
    assert_eq!(gpu.raw(&req(cmd::UPDATE_CURSOR, upd(9, 10, 20)), 0).0, 0);
    let c = gpu.backend.cursor().clone();
    assert_eq!(
        (c.resource_id, c.x, c.y, c.hot_x, c.hot_y, c.width, c.height),
        (9, 10, 20, 3, 4, 64, 64)
    );
    assert_eq!(c.image, image);
    gpu.raw(&req(cmd::MOVE_CURSOR, upd(0, 30, 40)), 0);
    assert_eq!(
        (
            gpu.backend.cursor().x,
            gpu.backend.cursor().y,
            gpu.backend.cursor().resource_id
        ),
        (30, 40, 9)
    );
    assert_eq!(gpu.create(10, 65, 1), resp::OK_NODATA);
    assert_eq!(
        gpu.send(&req(cmd::UPDATE_CURSOR, upd(10, 0, 0))).type_,
        resp::ERR_INVALID_PARAMETER
    );
    gpu.raw(&req(cmd::UPDATE_CURSOR, upd(0, 1, 1)), 0);
    assert_eq!(
        gpu.backend.cursor().resource_id,
        0,
        "resource 0 hides the cursor"
    );
}

/// One hostile command for the fuzzer: small ids collide with live resources, big values probe
/// overflow paths.
fn arb_command() -> impl Strategy<Value = Vec<u8>> {
    let id = prop_oneof![2 => Just(1u32), 2 => 0u32..4, 1 => any::<u32>()];
    let dim = prop_oneof![3 => 0u32..32, 1 => 0u32..80, 1 => any::<u32>()];
    let addr = prop_oneof![Just(DATA_ADDR), 0u64..MEM_SIZE as u64 + 4096, any::<u64>()];
    let len = prop_oneof![0u32..0x8000, any::<u32>()];
    let rect = (dim.clone(), dim.clone(), dim.clone(), dim.clone())
        .prop_map(|(x, y, w, h)| wrect(x, y, w, h));
    let format = prop_oneof![Just(2u32), Just(1), Just(134), any::<u32>()];
    prop_oneof![
        (id.clone(), format, dim.clone(), dim.clone()).prop_map(|(i, f, w, h)| req(
            cmd::RESOURCE_CREATE_2D,
            ResourceCreate2d {
                resource_id: i.into(),
                format: f.into(),
                width: w.into(),
                height: h.into()
            }
        )),
        (
            id.clone(),
            prop::collection::vec((addr, len), 0..6),
            0u32..8
        )
            .prop_map(|(i, entries, extra)| {
                let n = entries.len() as u32 + extra % 2;
                let mut v = req(
                    cmd::RESOURCE_ATTACH_BACKING,
                    AttachBacking {
                        resource_id: i.into(),
                        nr_entries: n.into(),
                    },
                );
                for (a, l) in entries {
                    v.extend_from_slice(
                        MemEntry {
                            addr: a.into(),
                            length: l.into(),
                            padding: 0.into(),
                        }
                        .as_slice(),
                    );
                }
                v
            }),
        (
            id.clone(),
            rect.clone(),
            prop_oneof![3 => 0u64..4096, 1 => 0u64..0x10000, 1 => any::<u64>()]
        )
            .prop_map(|(i, r, o)| req(
                cmd::TRANSFER_TO_HOST_2D,
                TransferToHost2d {
                    rect: r,
                    offset: o.into(),
                    resource_id: i.into(),
                    padding: 0.into()
                }
            )),
        (id.clone(), 0u32..3, rect.clone()).prop_map(|(i, s, r)| req(
            cmd::SET_SCANOUT,
            SetScanout {
                rect: r,
                scanout_id: s.into(),
                resource_id: i.into()
            }
        )),
        (id.clone(), rect).prop_map(|(i, r)| req(
            cmd::RESOURCE_FLUSH,
            ResourceFlush {
                rect: r,
                resource_id: i.into(),
                padding: 0.into()
            }
        )),
        (
            id.clone(),
            prop_oneof![
                Just(cmd::RESOURCE_UNREF),
                Just(cmd::RESOURCE_DETACH_BACKING)
            ]
        )
            .prop_map(|(i, c)| req(
                c,
                ResourceOnly {
                    resource_id: i.into(),
                    padding: 0.into()
                }
            )),
        (id, dim.clone(), dim).prop_map(|(i, x, y)| req(
            cmd::UPDATE_CURSOR,
            UpdateCursor {
                pos: CursorPosWire {
                    scanout_id: 0.into(),
                    x: x.into(),
                    y: y.into(),
                    padding: 0.into()
                },
                resource_id: i.into(),
                ..Default::default()
            }
        )),
        // Raw garbage after a plausible or random type.
        (
            prop_oneof![0x100u32..0x10b, 0x300u32..0x302, any::<u32>()],
            prop::collection::vec(any::<u8>(), 0..80)
        )
            .prop_map(|(t, tail)| {
                let mut v = hdr(t).as_slice().to_vec();
                v.extend(tail);
                v
            }),
        // Truncated commands.
        (prop::collection::vec(any::<u8>(), 0..40)).prop_map(|v| v),
    ]
}

#[test]
fn fuzz_command_parser() {
    const CASES: u32 = 1500;
    let valid = [
        resp::OK_NODATA,
        resp::OK_DISPLAY_INFO,
        resp::OK_EDID,
        resp::ERR_UNSPEC,
        resp::ERR_OUT_OF_MEMORY,
        resp::ERR_INVALID_SCANOUT_ID,
        resp::ERR_INVALID_RESOURCE_ID,
        resp::ERR_INVALID_PARAMETER,
    ];
    let limits = GpuLimits {
        max_host_memory: 4 << 20,
        ..GpuLimits::default()
    };
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig {
        cases: CASES,
        ..ProptestConfig::default()
    });
    let commands = std::cell::Cell::new(0u64);
    // Successful transfers and scanouts show the fuzzer reaches the deep paths, not just errors.
    let deep_ok = std::cell::Cell::new(0u64);
    runner
        .run(&prop::collection::vec(arb_command(), 1..24), |cmds| {
            let mut gpu = Gpu::with_limits(64, 64, limits);
            // Start from a live, backed resource 1 so hostile commands also hit deep paths.
            prop_assert_eq!(gpu.create(1, 64, 64), resp::OK_NODATA);
            prop_assert_eq!(gpu.attach(1, &[(DATA_ADDR, 64 * 64 * 4)]), resp::OK_NODATA);
            for c in &cmds {
                let r = gpu.send(c);
                prop_assert!(valid.contains(&r.type_), "response type {:#x}", r.type_);
                prop_assert!(gpu.backend.host_bytes() <= limits.max_host_memory);
                let cmd_type = c
                    .get(..4)
                    .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]));
                let deep = matches!(cmd_type, Some(cmd::TRANSFER_TO_HOST_2D | cmd::SET_SCANOUT));
                if deep && r.type_ == resp::OK_NODATA {
                    deep_ok.set(deep_ok.get() + 1);
                }
                commands.set(commands.get() + 1);
            }
            Ok(())
        })
        .unwrap();
    eprintln!(
        "fuzz gpu_command_parser: {CASES} cases, {} commands, {} successful transfers/scanouts",
        commands.get(),
        deep_ok.get()
    );
    assert!(deep_ok.get() > 0, "the fuzzer never got past validation");
}

/// The hostile-ring property every device passes through its `DeviceQueue`, on the control
/// and cursor queues.
#[test]
fn fuzz_gpu_hostile_rings() {
    let limits = GpuLimits::default();
    let spec = GpuSpec {
        width: 64,
        height: 64,
        dpi: 320,
    };
    let backend = Backend2d::new(spec, limits, test_export(64, 64));
    let mut dev = super::VirtioGpu::with_backend(Box::new(backend), limits);
    cloudphone_virtio::testing::hostile::fuzz_worker("gpu_chains", 1000, 2, |a| {
        cloudphone_virtio::VirtioDevice::worker(&mut dev, a).unwrap()
    });
}

/// The 2D backend's snapshot state restores by replaying commands: pixels come back from the
/// guest backing, and states no guest could have produced are refused, never panicked on.
#[test]
fn backend_state_restores_from_backing_and_refuses_impossible_states() {
    use super::{Gpu2dState, GpuBackend};
    let mut g = Gpu::new(64, 64);
    let pixels: Vec<u8> = (0..16 * 16 * 4).map(|i| i as u8).collect();
    g.mem.write_slice(&pixels, GuestAddress(DATA_ADDR)).unwrap();
    assert_eq!(g.create(1, 16, 16), resp::OK_NODATA);
    assert_eq!(g.create(2, 8, 8), resp::OK_NODATA);
    assert_eq!(g.attach(1, &[(DATA_ADDR, 16 * 16 * 4)]), resp::OK_NODATA);
    let saved = g.backend.save_state().unwrap();
    let state: Gpu2dState = serde_json::from_value(saved).unwrap();
    assert_eq!(state.resources.len(), 2);
    assert_eq!(state.resources[1].backing, None);

    let mut restored = Gpu::new(64, 64);
    restored
        .mem
        .write_slice(&pixels, GuestAddress(DATA_ADDR))
        .unwrap();
    let mut with_scanout = state.clone();
    with_scanout.scanout = Some(1);
    let value = serde_json::to_value(&with_scanout).unwrap();
    restored
        .backend
        .restore_state(&restored.mem, &value)
        .unwrap();
    assert_eq!(restored.backend.save_state().unwrap(), value);
    let (_, shown) = restored.export.read_frame();
    assert_eq!(shown, pixels, "scanout re-filled from the guest backing");

    let corrupt: [fn(&mut Gpu2dState); 6] = [
        |s| s.resources[0].format = 999,
        |s| {
            s.resources[0].backing = Some(vec![super::BackingEntry {
                addr: u64::MAX - 8,
                len: 64,
            }])
        },
        |s| s.resources[1].width = 0,
        |s| s.resources.push(s.resources[0].clone()),
        |s| s.scanout = Some(7),
        |s| s.cursor[0] = 1, // valid: a 16x16 resource may be the cursor
    ];
    for (i, f) in corrupt.iter().enumerate() {
        let mut s = state.clone();
        f(&mut s);
        let value = serde_json::to_value(&s).unwrap();
        let mut fresh = Gpu::new(64, 64);
        let result = fresh.backend.restore_state(&fresh.mem, &value);
        assert_eq!(result.is_ok(), i == 5, "case {i}: {result:?}");
    }
    let mut fresh = Gpu::new(64, 64);
    assert!(fresh
        .backend
        .restore_state(&fresh.mem, &serde_json::json!({"resources": 3}))
        .is_err());
}
