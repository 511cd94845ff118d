//! The adb message: a 24-byte little-endian header (command, arg0, arg1, payload length,
//! payload byte sum, command ^ 0xffffffff) followed by the payload. Decoding checks the magic,
//! the length against the negotiated maximum and (where the protocol still uses it) the sum,
//! so a hostile peer can neither make us allocate more than the limit nor smuggle garbage.

use std::io::{Read, Write};

/// `CNXN`: connect, carries version, max payload and the system identity banner.
pub const A_CNXN: u32 = 0x4e58_4e43;
/// `AUTH`: token, signature or public key exchange.
pub const A_AUTH: u32 = 0x4854_5541;
/// `OPEN`: open a stream to a named service.
pub const A_OPEN: u32 = 0x4e45_504f;
/// `OKAY`: stream opened / ready for the next WRTE.
pub const A_OKAY: u32 = 0x5941_4b4f;
/// `CLSE`: stream closed (or an OPEN refused).
pub const A_CLSE: u32 = 0x4553_4c43;
/// `WRTE`: stream data.
pub const A_WRTE: u32 = 0x4554_5257;
/// `STLS`: TLS upgrade (refused here: we never advertise it).
pub const A_STLS: u32 = 0x534c_5453;

/// AUTH arg0: the device's 20-byte random token.
pub const AUTH_TOKEN: u32 = 1;
/// AUTH arg0: the client's signature of the token.
pub const AUTH_SIGNATURE: u32 = 2;
/// AUTH arg0: the client's public key (adbd would prompt; we refuse).
pub const AUTH_RSAPUBLICKEY: u32 = 3;

/// The protocol version spoken: the first that lets the checksum be skipped (0x01000001).
pub const VERSION: u32 = 0x0100_0001;
/// Oldest version a peer may announce (adb's A_VERSION_MIN).
pub const VERSION_MIN: u32 = 0x0100_0000;
/// Largest payload either side sends (adb's MAX_PAYLOAD, 1 MiB); the CNXN exchange settles on
/// the smaller of both sides' values.
pub const MAX_PAYLOAD: u32 = 1024 * 1024;
/// Payload limit before CNXN: the first messages are small (CNXN banner, AUTH keys).
pub const MAX_PAYLOAD_BEFORE_CONNECT: u32 = 64 * 1024;
/// Header size on the wire.
pub const HEADER_LEN: usize = 24;

/// Why an incoming message was refused; each ends the connection.
#[derive(Debug, thiserror::Error)]
pub enum PacketError {
    /// The magic field is not the command's complement: not an adb peer, or corrupted stream.
    #[error("bad adb magic {magic:#010x} for command {command:#010x}: not an adb stream")]
    BadMagic { command: u32, magic: u32 },
    /// The payload is larger than the negotiated maximum.
    #[error("adb payload of {len} bytes exceeds the limit of {max} bytes")]
    TooLarge { len: u32, max: u32 },
    /// The payload's byte sum does not match the header.
    #[error("adb payload checksum {actual:#x} does not match the header's {expected:#x}")]
    BadChecksum { expected: u32, actual: u32 },
    /// The peer closed or the socket failed mid-message.
    #[error("adb stream: {0}")]
    Io(#[from] std::io::Error),
}

/// A decoded header (magic already checked).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    pub command: u32,
    pub arg0: u32,
    pub arg1: u32,
    pub data_length: u32,
    pub data_check: u32,
}

impl Header {
    /// Parses 24 header bytes, refusing a bad magic or a length above `max_payload`.
    pub fn decode(b: &[u8; HEADER_LEN], max_payload: u32) -> Result<Header, PacketError> {
        let word = |i: usize| u32::from_le_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
        let header = Header {
            command: word(0),
            arg0: word(4),
            arg1: word(8),
            data_length: word(12),
            data_check: word(16),
        };
        let magic = word(20);
        if magic != header.command ^ 0xffff_ffff {
            return Err(PacketError::BadMagic {
                command: header.command,
                magic,
            });
        }
        if header.data_length > max_payload {
            return Err(PacketError::TooLarge {
                len: header.data_length,
                max: max_payload,
            });
        }
        Ok(header)
    }
}

/// One adb message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Packet {
    pub command: u32,
    pub arg0: u32,
    pub arg1: u32,
    pub payload: Vec<u8>,
}

/// adb's payload checksum: the sum of the bytes.
pub fn checksum(data: &[u8]) -> u32 {
    data.iter().fold(0u32, |s, &b| s.wrapping_add(u32::from(b)))
}

impl Packet {
    /// A message with the given command, arguments and payload.
    pub fn new(command: u32, arg0: u32, arg1: u32, payload: impl Into<Vec<u8>>) -> Packet {
        Packet {
            command,
            arg0,
            arg1,
            payload: payload.into(),
        }
    }

    /// The wire bytes: header (with checksum, which every adb version accepts) and payload.
    pub fn encode(&self) -> Vec<u8> {
        let len = u32::try_from(self.payload.len()).expect("adb payloads are far below 4 GiB");
        let mut out = Vec::with_capacity(HEADER_LEN + self.payload.len());
        for w in [
            self.command,
            self.arg0,
            self.arg1,
            len,
            checksum(&self.payload),
            self.command ^ 0xffff_ffff,
        ] {
            out.extend_from_slice(&w.to_le_bytes());
        }
        out.extend_from_slice(&self.payload);
        out
    }

    /// Writes the message in one `write_all` (one syscall for small messages).
    pub fn write_to(&self, w: &mut impl Write) -> std::io::Result<()> {
        w.write_all(&self.encode())
    }

    /// Reads one message. `max_payload` bounds the allocation; `verify_checksum` is true while
    /// the peer's version is below 0x01000001 (newer peers may send 0 there). A non-zero
    /// checksum is always verified.
    pub fn read_from(
        r: &mut impl Read,
        max_payload: u32,
        verify_checksum: bool,
    ) -> Result<Packet, PacketError> {
        let mut hb = [0u8; HEADER_LEN];
        r.read_exact(&mut hb)?;
        let header = Header::decode(&hb, max_payload)?;
        let mut payload = vec![0u8; header.data_length as usize];
        r.read_exact(&mut payload)?;
        if verify_checksum || header.data_check != 0 {
            let actual = checksum(&payload);
            if actual != header.data_check {
                return Err(PacketError::BadChecksum {
                    expected: header.data_check,
                    actual,
                });
            }
        }
        Ok(Packet {
            command: header.command,
            arg0: header.arg0,
            arg1: header.arg1,
            payload,
        })
    }
}

/// A command word as its four ASCII letters, for logs.
pub fn command_name(command: u32) -> String {
    command
        .to_le_bytes()
        .iter()
        .map(|&b| if b.is_ascii_graphic() { b as char } else { '?' })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn command_words_spell_their_names() {
        for (c, n) in [
            (A_CNXN, "CNXN"),
            (A_AUTH, "AUTH"),
            (A_OPEN, "OPEN"),
            (A_OKAY, "OKAY"),
            (A_CLSE, "CLSE"),
            (A_WRTE, "WRTE"),
            (A_STLS, "STLS"),
        ] {
            assert_eq!(command_name(c), n);
        }
    }

    #[test]
    fn refuses_bad_magic_length_and_checksum() {
        let mut wire = Packet::new(A_WRTE, 1, 2, b"hello".to_vec()).encode();
        let read = |w: &[u8], max, verify| Packet::read_from(&mut &w[..], max, verify);
        assert_eq!(read(&wire, 5, true).unwrap().payload, b"hello");
        assert!(matches!(
            read(&wire, 4, true),
            Err(PacketError::TooLarge { len: 5, max: 4 })
        ));
        wire[24] ^= 1;
        assert!(matches!(
            read(&wire, 5, false),
            Err(PacketError::BadChecksum { .. })
        ));
        wire[16..20].copy_from_slice(&[0; 4]);
        assert!(
            read(&wire, 5, false).is_ok(),
            "0x01000001 peers may skip the sum"
        );
        assert!(matches!(
            read(&wire, 5, true),
            Err(PacketError::BadChecksum { .. })
        ));
        assert!(matches!(
            read(&wire[..28], 100, false),
            Err(PacketError::Io(_))
        ));
        wire[20] ^= 1;
        assert!(matches!(
            read(&wire, 5, false),
            Err(PacketError::BadMagic { .. })
        ));
    }

    proptest! {
        #[test]
        fn encode_then_decode_is_identity(
            command in any::<u32>(), arg0 in any::<u32>(), arg1 in any::<u32>(),
            payload in proptest::collection::vec(any::<u8>(), 0..2048),
        ) {
            let p = Packet::new(command, arg0, arg1, payload);
            let wire = p.encode();
            prop_assert_eq!(Packet::read_from(&mut &wire[..], 4096, true).unwrap(), p);
        }

        #[test]
        fn arbitrary_bytes_never_panic_or_overallocate(
            bytes in proptest::collection::vec(any::<u8>(), 0..256), max in 0u32..128,
        ) {
            if let Ok(p) = Packet::read_from(&mut &bytes[..], max, true) {
                prop_assert!(p.payload.len() <= max as usize);
                prop_assert_eq!(&p.encode()[..], &bytes[..HEADER_LEN + p.payload.len()]);
            }
        }

        #[test]
        fn any_single_bit_flip_in_the_header_is_caught(
            payload in proptest::collection::vec(1u8..=255, 1..64), bit in 0usize..(8 * 24),
        ) {
            let mut wire = Packet::new(A_WRTE, 7, 9, payload).encode();
            wire[bit / 8] ^= 1 << (bit % 8);
            // Flips in arg0/arg1 are undetectable by design (adb has no header checksum);
            // every other header field is covered by the magic, the length or the sum.
            let in_args = (4..12).contains(&(bit / 8));
            let r = Packet::read_from(&mut &wire[..], 4096, true);
            prop_assert!(in_args == r.is_ok(), "bit {} gave {:?}", bit, r.map(|p| p.command));
        }
    }
}
