//! The virtio-vsock packet header (virtio spec 5.10.6) and its constants.

/// Size of `struct virtio_vsock_hdr` on the wire.
pub(crate) const HDR_LEN: usize = 44;
/// The host's CID: every guest packet we accept is addressed to it.
pub(crate) const HOST_CID: u64 = 2;
/// Largest payload one packet may carry (Linux's VIRTIO_VSOCK_MAX_PKT_BUF_SIZE); bounds the
/// per-device bounce buffer and rejects inflated `len` fields.
pub(crate) const MAX_PAYLOAD: usize = 64 * 1024;

pub(crate) const TYPE_STREAM: u16 = 1;

pub(crate) const OP_REQUEST: u16 = 1;
pub(crate) const OP_RESPONSE: u16 = 2;
pub(crate) const OP_RST: u16 = 3;
pub(crate) const OP_SHUTDOWN: u16 = 4;
pub(crate) const OP_RW: u16 = 5;
pub(crate) const OP_CREDIT_UPDATE: u16 = 6;
pub(crate) const OP_CREDIT_REQUEST: u16 = 7;

/// SHUTDOWN flag: the sender will receive no more data.
pub(crate) const SHUTDOWN_RCV: u32 = 1;
/// SHUTDOWN flag: the sender will send no more data.
pub(crate) const SHUTDOWN_SEND: u32 = 2;
pub(crate) const SHUTDOWN_BOTH: u32 = SHUTDOWN_RCV | SHUTDOWN_SEND;

/// A decoded `virtio_vsock_hdr` (all fields little-endian on the wire).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Header {
    pub src_cid: u64,
    pub dst_cid: u64,
    pub src_port: u32,
    pub dst_port: u32,
    pub len: u32,
    pub type_: u16,
    pub op: u16,
    pub flags: u32,
    pub buf_alloc: u32,
    pub fwd_cnt: u32,
}

impl Header {
    /// Decode a header read from a guest buffer.
    pub fn decode(b: &[u8; HDR_LEN]) -> Self {
        let u16_at = |i: usize| u16::from_le_bytes([b[i], b[i + 1]]);
        let u32_at = |i: usize| u32::from_le_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
        let u64_at = |i: usize| u64::from(u32_at(i)) | u64::from(u32_at(i + 4)) << 32;
        Header {
            src_cid: u64_at(0),
            dst_cid: u64_at(8),
            src_port: u32_at(16),
            dst_port: u32_at(20),
            len: u32_at(24),
            type_: u16_at(28),
            op: u16_at(30),
            flags: u32_at(32),
            buf_alloc: u32_at(36),
            fwd_cnt: u32_at(40),
        }
    }

    /// Encode for a guest rx buffer.
    pub fn encode(&self) -> [u8; HDR_LEN] {
        let mut b = [0u8; HDR_LEN];
        b[0..8].copy_from_slice(&self.src_cid.to_le_bytes());
        b[8..16].copy_from_slice(&self.dst_cid.to_le_bytes());
        b[16..20].copy_from_slice(&self.src_port.to_le_bytes());
        b[20..24].copy_from_slice(&self.dst_port.to_le_bytes());
        b[24..28].copy_from_slice(&self.len.to_le_bytes());
        b[28..30].copy_from_slice(&self.type_.to_le_bytes());
        b[30..32].copy_from_slice(&self.op.to_le_bytes());
        b[32..36].copy_from_slice(&self.flags.to_le_bytes());
        b[36..40].copy_from_slice(&self.buf_alloc.to_le_bytes());
        b[40..44].copy_from_slice(&self.fwd_cnt.to_le_bytes());
        b
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fuzz_header_round_trip() {
        crate::testutil::fuzz(
            "vsock_header",
            4096,
            proptest::array::uniform32(proptest::num::u8::ANY),
            |seed| {
                let mut raw = [0u8; HDR_LEN];
                for (i, byte) in raw.iter_mut().enumerate() {
                    *byte = seed[i % 32].wrapping_add(i as u8);
                }
                proptest::prop_assert_eq!(Header::decode(&raw).encode(), raw);
                Ok(())
            },
        );
    }

    #[test]
    fn field_offsets_match_the_spec() {
        let h = Header {
            src_cid: 3,
            dst_cid: 2,
            src_port: 0x1234,
            dst_port: 5555,
            len: 7,
            type_: 1,
            op: OP_RW,
            flags: 2,
            buf_alloc: 4096,
            fwd_cnt: 9,
        };
        let b = h.encode();
        assert_eq!(b[0], 3);
        assert_eq!(b[8], 2);
        assert_eq!(&b[16..18], &[0x34, 0x12]);
        assert_eq!(u32::from_le_bytes(b[20..24].try_into().unwrap()), 5555);
        assert_eq!(b[24], 7);
        assert_eq!(b[28], 1);
        assert_eq!(b[30], 5);
        assert_eq!(b[32], 2);
        assert_eq!(u32::from_le_bytes(b[36..40].try_into().unwrap()), 4096);
        assert_eq!(b[40], 9);
    }
}
