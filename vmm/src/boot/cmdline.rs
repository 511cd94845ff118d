//! Kernel command line validation against the kernel's own limit.

/// Limit for kernels that do not state one (boot protocol < 2.06, ELF).
pub const DEFAULT_CMDLINE_CAPACITY: usize = 2048;

/// Why a command line was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CmdlineError {
    /// Too long for this kernel.
    #[error("--cmdline is {len} bytes; this kernel accepts at most {max}: shorten it")]
    TooLong {
        /// Its length.
        len: usize,
        /// The kernel's maximum (without the NUL).
        max: usize,
    },
    /// Contains a byte the kernel cannot take (control characters, NUL, non-ASCII).
    #[error("--cmdline contains the non-printable byte {byte:#04x} at offset {offset}")]
    BadByte {
        /// The byte.
        byte: u8,
        /// Where.
        offset: usize,
    },
}

/// Check `cmdline` for a kernel whose buffer holds `capacity` bytes including the NUL; returns
/// the NUL-terminated bytes to place in guest memory.
pub fn prepare(cmdline: &str, capacity: usize) -> Result<Vec<u8>, CmdlineError> {
    let max = capacity.saturating_sub(1);
    if cmdline.len() > max {
        return Err(CmdlineError::TooLong {
            len: cmdline.len(),
            max,
        });
    }
    if let Some((offset, &byte)) = cmdline
        .as_bytes()
        .iter()
        .enumerate()
        .find(|(_, &b)| !(0x20..0x7f).contains(&b))
    {
        return Err(CmdlineError::BadByte { byte, offset });
    }
    let mut out = Vec::with_capacity(cmdline.len() + 1);
    out.extend_from_slice(cmdline.as_bytes());
    out.push(0);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn limits() {
        assert_eq!(prepare("console=ttyS0", 2048).unwrap(), b"console=ttyS0\0");
        assert_eq!(prepare(&"a".repeat(2047), 2048).unwrap().len(), 2048);
        assert_eq!(
            prepare(&"a".repeat(2048), 2048),
            Err(CmdlineError::TooLong {
                len: 2048,
                max: 2047
            })
        );
        assert_eq!(
            prepare("a\nb", 2048),
            Err(CmdlineError::BadByte {
                byte: b'\n',
                offset: 1
            })
        );
        assert!(prepare("é", 2048).is_err());
        assert_eq!(prepare("", 1).unwrap(), b"\0");
        assert!(prepare("x", 0).is_err());
    }

    #[test]
    fn fuzz_cmdline() {
        let cases = 512;
        eprintln!("fuzz cmdline: {cases} cases");
        proptest!(ProptestConfig::with_cases(cases), |(s in ".{0,3000}", cap in 0usize..4096)| {
            match prepare(&s, cap) {
                Ok(b) => {
                    prop_assert!(b.len() <= cap);
                    prop_assert_eq!(b.last(), Some(&0));
                    prop_assert!(b[..b.len() - 1].iter().all(|c| (0x20..0x7f).contains(c)));
                }
                Err(_) => prop_assert!(s.len() >= cap || s.bytes().any(|c| !(0x20..0x7f).contains(&c))),
            }
        });
    }
}
