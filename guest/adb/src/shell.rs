//! `shell,v2` framing: each packet is an id byte, a little-endian u32 length and the data.
//! The client sends stdin, close-stdin and window-size packets; the device sends stdout,
//! stderr and finally exit with one status byte. Unlike the raw v1 shell, the client learns
//! the command's exit code and keeps stderr apart.

use std::io::Read;

/// Client → device: bytes for the command's stdin.
pub const ID_STDIN: u8 = 0;
/// Device → client: command stdout.
pub const ID_STDOUT: u8 = 1;
/// Device → client: command stderr.
pub const ID_STDERR: u8 = 2;
/// Device → client: exit status (one byte).
pub const ID_EXIT: u8 = 3;
/// Client → device: stdin reached EOF.
pub const ID_CLOSE_STDIN: u8 = 4;
/// Client → device: terminal size changed (ignored: no pty here).
pub const ID_WINDOW_SIZE: u8 = 5;
/// Largest packet accepted from the client (adb's buffer is 32 KiB... we allow up to 1 MiB).
pub const MAX_PACKET: u32 = 1024 * 1024;

/// Encodes one packet.
pub fn encode(id: u8, data: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(5 + data.len());
    v.push(id);
    v.extend_from_slice(&(data.len() as u32).to_le_bytes());
    v.extend_from_slice(data);
    v
}

/// Reads one packet (id, data); refuses a length above [`MAX_PACKET`] with InvalidData.
pub fn read(r: &mut impl Read) -> std::io::Result<(u8, Vec<u8>)> {
    let mut h = [0u8; 5];
    r.read_exact(&mut h)?;
    let len = u32::from_le_bytes([h[1], h[2], h[3], h[4]]);
    if len > MAX_PACKET {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("shell v2 packet of {len} bytes exceeds {MAX_PACKET}"),
        ));
    }
    let mut data = vec![0u8; len as usize];
    r.read_exact(&mut data)?;
    Ok((h[0], data))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn round_trips(id in any::<u8>(), data in proptest::collection::vec(any::<u8>(), 0..1024)) {
            let wire = encode(id, &data);
            prop_assert_eq!(read(&mut &wire[..]).unwrap(), (id, data));
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            let mut r = &bytes[..];
            while read(&mut r).is_ok() {}
        }
    }

    #[test]
    fn refuses_huge_packets() {
        let wire = [ID_STDIN, 0xff, 0xff, 0xff, 0xff];
        assert_eq!(
            read(&mut &wire[..]).unwrap_err().kind(),
            std::io::ErrorKind::InvalidData
        );
    }
}
