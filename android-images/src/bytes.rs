//! Little-endian field readers and writers shared by the header formats. Every read is
//! bounds-checked against the input and reports the structure it was reading.

use crate::error::{invalid, ImageError, Result};

/// Returns `len` bytes at `offset` of `buf`, or a [`ImageError::Truncated`] naming `what`.
pub fn slice_at<'a>(buf: &'a [u8], what: &str, offset: u64, len: u64) -> Result<&'a [u8]> {
    let truncated = || ImageError::Truncated {
        what: what.to_string(),
        offset,
        end: offset.saturating_add(len),
        available: buf.len() as u64,
    };
    let end = offset.checked_add(len).ok_or_else(truncated)?;
    if end > buf.len() as u64 {
        return Err(truncated());
    }
    // Both bounds are <= buf.len(), so they fit in usize.
    Ok(&buf[offset as usize..end as usize])
}

/// Rounds `value` up to a multiple of `align` (a power of two), failing on overflow.
pub fn align_up(value: u64, align: u64, field: &str) -> Result<u64> {
    debug_assert!(align.is_power_of_two());
    value
        .checked_add(align - 1)
        .map(|v| v & !(align - 1))
        .ok_or_else(|| invalid(field, value, "too large: overflows when aligned"))
}

/// Appends zero bytes until `out.len()` is a multiple of `align`.
pub fn pad_to(out: &mut Vec<u8>, align: usize) {
    let rem = out.len() % align;
    if rem != 0 {
        out.resize(out.len() + align - rem, 0);
    }
}

/// Escapes bytes for error messages (magic values are usually ASCII).
pub fn escape(bytes: &[u8]) -> String {
    bytes.escape_ascii().to_string()
}

/// Checks that `buf` starts with `magic`.
pub fn expect_magic(buf: &[u8], magic: &[u8], what: &'static str) -> Result<()> {
    let found = slice_at(buf, what, 0, magic.len() as u64)?;
    if found != magic {
        return Err(ImageError::BadMagic {
            what,
            found: escape(found),
            expected: escape(magic),
        });
    }
    Ok(())
}

/// Sequential little-endian reader over a header.
pub struct FieldReader<'a> {
    buf: &'a [u8],
    pos: u64,
    what: &'static str,
}

impl<'a> FieldReader<'a> {
    /// Reads `buf` from `start`; `what` names the structure in errors.
    pub fn new(buf: &'a [u8], start: u64, what: &'static str) -> Self {
        Self {
            buf,
            pos: start,
            what,
        }
    }

    /// Reads the next `len` bytes.
    pub fn bytes(&mut self, len: u64) -> Result<&'a [u8]> {
        let out = slice_at(self.buf, self.what, self.pos, len)?;
        self.pos += len;
        Ok(out)
    }

    /// Reads a fixed-size array.
    pub fn array<const N: usize>(&mut self) -> Result<[u8; N]> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.bytes(N as u64)?);
        Ok(out)
    }

    /// Reads a little-endian u32.
    pub fn u32(&mut self) -> Result<u32> {
        Ok(u32::from_le_bytes(self.array()?))
    }

    /// Reads a little-endian u64.
    pub fn u64(&mut self) -> Result<u64> {
        Ok(u64::from_le_bytes(self.array()?))
    }

    /// Reads a NUL-padded string field of `len` bytes (text up to the first NUL).
    pub fn cstr(&mut self, len: u64, field: &str) -> Result<String> {
        decode_cstr(self.bytes(len)?, field)
    }
}

/// Decodes a NUL-padded text field; non-UTF-8 text is rejected with the field named.
pub fn decode_cstr(raw: &[u8], field: &str) -> Result<String> {
    let end = raw.iter().position(|&b| b == 0).unwrap_or(raw.len());
    String::from_utf8(raw[..end].to_vec())
        .map_err(|_| invalid(field, escape(&raw[..end]), "not valid UTF-8 text"))
}

/// Appends `text` NUL-padded to `len` bytes; errors when it does not fit or holds a NUL.
pub fn put_cstr(out: &mut Vec<u8>, text: &str, len: usize, field: &str) -> Result<()> {
    if text.len() > len {
        return Err(invalid(
            field,
            text,
            format!("{} bytes long, the field holds {len}", text.len()),
        ));
    }
    if text.contains('\0') {
        return Err(invalid(field, text.escape_debug(), "contains a NUL byte"));
    }
    out.extend_from_slice(text.as_bytes());
    out.resize(out.len() + len - text.len(), 0);
    Ok(())
}

/// Appends a little-endian u32.
pub fn put_u32(out: &mut Vec<u8>, v: u32) {
    out.extend_from_slice(&v.to_le_bytes());
}

/// Appends a little-endian u64.
pub fn put_u64(out: &mut Vec<u8>, v: u64) {
    out.extend_from_slice(&v.to_le_bytes());
}

/// Converts a payload length to the u32 a header stores, naming the field if it is too big.
pub fn len_u32(len: usize, field: &str) -> Result<u32> {
    u32::try_from(len)
        .map_err(|_| invalid(field, len, "larger than 4 GiB, the header field is 32-bit"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slice_at_rejects_overflowing_ranges() {
        let buf = [0u8; 8];
        assert!(slice_at(&buf, "x", 4, 4).is_ok());
        assert!(matches!(
            slice_at(&buf, "x", 5, 4),
            Err(ImageError::Truncated { .. })
        ));
        assert!(slice_at(&buf, "x", u64::MAX, 2).is_err());
    }

    #[test]
    fn cstr_round_trip_and_limits() {
        let mut out = Vec::new();
        put_cstr(&mut out, "abc", 5, "f").unwrap();
        assert_eq!(out, b"abc\0\0");
        assert_eq!(decode_cstr(&out, "f").unwrap(), "abc");
        assert!(put_cstr(&mut out, "abcdef", 5, "f").is_err());
        assert!(decode_cstr(&[0xff, 0], "f")
            .unwrap_err()
            .to_string()
            .contains("f = "));
    }

    #[test]
    fn align_and_pad() {
        assert_eq!(align_up(4097, 4096, "x").unwrap(), 8192);
        assert_eq!(align_up(4096, 4096, "x").unwrap(), 4096);
        assert!(align_up(u64::MAX, 4096, "x").is_err());
        let mut v = vec![1u8; 5];
        pad_to(&mut v, 4);
        assert_eq!(v.len(), 8);
    }
}
