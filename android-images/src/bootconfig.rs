//! Linux bootconfig (Documentation/admin-guide/bootconfig.rst): the `key = value` text, the
//! trailer a bootloader appends to the initrd (`data + padding, le32 size, le32 checksum,
//! "#BOOTCONFIG\n"`), and Cuttlefish's move of `androidboot.*` from the cmdline into it.

use crate::error::{invalid, ImageError, Result};

/// Magic that ends an initrd carrying bootconfig.
pub const BOOTCONFIG_MAGIC: &[u8; 12] = b"#BOOTCONFIG\n";
/// The kernel refuses bootconfig data larger than this (`XBC_DATA_MAX`).
pub const BOOTCONFIG_MAX: usize = 32767;
/// Size of the trailer after the data: size, checksum, magic.
pub const TRAILER_LEN: usize = 4 + 4 + BOOTCONFIG_MAGIC.len();
/// The kernel aligns the whole initrd+bootconfig to this many bytes with NUL padding.
pub const BOOTCONFIG_ALIGN: usize = 4;
/// Prefix of the Android parameters that move from the cmdline into bootconfig.
pub const ANDROIDBOOT_PREFIX: &str = "androidboot.";

/// Ordered bootconfig key/value pairs (a key may hold several values, an array).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BootConfig {
    entries: Vec<(String, Vec<String>)>,
}

/// The bootconfig checksum: the 32-bit wrapping sum of all data bytes.
pub fn checksum(data: &[u8]) -> u32 {
    data.iter()
        .fold(0u32, |sum, &b| sum.wrapping_add(u32::from(b)))
}

/// Checks a key: dot-separated words of `[A-Za-z0-9_-]`.
pub fn check_key(key: &str) -> Result<()> {
    let ok = !key.is_empty()
        && key.split('.').all(|w| {
            !w.is_empty()
                && w.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        });
    if !ok {
        return Err(invalid(
            "bootconfig key",
            key.escape_debug(),
            "expected dot-separated words of letters, digits, '_' or '-'",
        ));
    }
    Ok(())
}

/// Quotes a value for bootconfig text: double quotes unless it holds one, then single quotes;
/// a value with both cannot be expressed (the format has no escapes).
pub fn quote_value(value: &str) -> Result<String> {
    if value.contains('\0') {
        return Err(invalid(
            "bootconfig value",
            value.escape_debug(),
            "contains a NUL byte",
        ));
    }
    match (value.contains('"'), value.contains('\'')) {
        (false, _) => Ok(format!("\"{value}\"")),
        (true, false) => Ok(format!("'{value}'")),
        (true, true) => Err(invalid(
            "bootconfig value",
            value.escape_debug(),
            "holds both quote characters; bootconfig has no escapes",
        )),
    }
}

impl BootConfig {
    /// An empty configuration.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets `key` to one value, replacing earlier values (like `:=`).
    pub fn set(&mut self, key: &str, value: &str) -> Result<()> {
        check_key(key)?;
        quote_value(value)?;
        match self.entries.iter_mut().find(|(k, _)| k == key) {
            Some((_, values)) => *values = vec![value.to_string()],
            None => self
                .entries
                .push((key.to_string(), vec![value.to_string()])),
        }
        Ok(())
    }

    /// The first value of `key`.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.entries
            .iter()
            .find(|(k, _)| k == key)
            .and_then(|(_, v)| v.first())
            .map(String::as_str)
    }

    /// All entries in order.
    pub fn entries(&self) -> &[(String, Vec<String>)] {
        &self.entries
    }

    /// Adds every entry of `other`, later values replacing earlier ones.
    pub fn merge(&mut self, other: &BootConfig) {
        for (k, v) in &other.entries {
            match self.entries.iter_mut().find(|(key, _)| key == k) {
                Some((_, values)) => values.clone_from(v),
                None => self.entries.push((k.clone(), v.clone())),
            }
        }
    }

    /// Renders the text form: one `key = "value"` line per entry (`"a", "b"` for arrays).
    pub fn render(&self) -> Result<String> {
        let mut out = String::new();
        for (key, values) in &self.entries {
            check_key(key)?;
            let quoted: Vec<String> = values
                .iter()
                .map(|v| quote_value(v))
                .collect::<Result<_>>()?;
            if quoted.is_empty() {
                out.push_str(&format!("{key}\n"));
            } else {
                out.push_str(&format!("{key} = {}\n", quoted.join(", ")));
            }
        }
        Ok(out)
    }

    /// Renders entries as kernel cmdline words (`key=value`, quoted when holding spaces),
    /// for kernels without CONFIG_BOOT_CONFIG.
    pub fn to_cmdline_words(&self) -> Vec<String> {
        self.entries
            .iter()
            .map(|(k, values)| {
                let v = values.join(",");
                if v.chars().any(char::is_whitespace) {
                    format!("{k}=\"{v}\"")
                } else {
                    format!("{k}={v}")
                }
            })
            .collect()
    }

    /// Parses bootconfig text: `key = value`, `key += value`, `key := value`, arrays
    /// (`a, b`), quoted values, `#` comments, `;`/newline separators and `key { ... }` blocks.
    pub fn parse(text: &str) -> Result<Self> {
        if text.len() > BOOTCONFIG_MAX {
            return Err(invalid(
                "bootconfig size",
                text.len(),
                format!("larger than the kernel's {BOOTCONFIG_MAX} bytes"),
            ));
        }
        Parser {
            s: text.as_bytes(),
            pos: 0,
            prefixes: Vec::new(),
            out: BootConfig::new(),
        }
        .run()
    }
}

/// Recursive-descent-free bootconfig parser (blocks tracked with a prefix stack).
struct Parser<'a> {
    s: &'a [u8],
    pos: usize,
    prefixes: Vec<String>,
    out: BootConfig,
}

impl Parser<'_> {
    fn err(&self, reason: &str) -> ImageError {
        let line = self.s[..self.pos.min(self.s.len())]
            .iter()
            .filter(|&&b| b == b'\n')
            .count()
            + 1;
        invalid(
            "bootconfig",
            format!("line {line}, byte {}", self.pos),
            reason,
        )
    }

    fn peek(&self) -> Option<u8> {
        self.s.get(self.pos).copied()
    }

    /// Skips spaces (and newlines too when `newlines`) and comments.
    fn skip_space(&mut self, newlines: bool) {
        while let Some(c) = self.peek() {
            if c == b'#' {
                while self.peek().is_some_and(|c| c != b'\n') {
                    self.pos += 1;
                }
            } else if c == b' ' || c == b'\t' || c == b'\r' || (newlines && c == b'\n') {
                self.pos += 1;
            } else {
                break;
            }
        }
    }

    fn run(mut self) -> Result<BootConfig> {
        loop {
            self.skip_space(true);
            match self.peek() {
                None => break,
                Some(b';') => self.pos += 1,
                Some(b'}') => {
                    if self.prefixes.pop().is_none() {
                        return Err(self.err("'}' without an open block"));
                    }
                    self.pos += 1;
                }
                Some(_) => self.statement()?,
            }
        }
        if !self.prefixes.is_empty() {
            return Err(self.err("block not closed with '}'"));
        }
        Ok(self.out)
    }

    fn statement(&mut self) -> Result<()> {
        let start = self.pos;
        while self
            .peek()
            .is_some_and(|c| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'_' | b'-'))
        {
            self.pos += 1;
        }
        if start == self.pos {
            return Err(self.err("expected a key"));
        }
        let word = String::from_utf8_lossy(&self.s[start..self.pos]).into_owned();
        let key = match self.prefixes.last() {
            Some(p) => format!("{p}.{word}"),
            None => word,
        };
        check_key(&key)?;
        self.skip_space(false);
        match self.peek() {
            Some(b'{') => {
                self.pos += 1;
                self.prefixes.push(key);
                Ok(())
            }
            Some(b'=') => {
                self.pos += 1;
                self.assign(key, Op::Set)
            }
            Some(op @ (b'+' | b':')) if self.s.get(self.pos + 1) == Some(&b'=') => {
                self.pos += 2;
                self.assign(key, if op == b'+' { Op::Append } else { Op::Override })
            }
            None | Some(b'\n' | b';' | b'}') => self.assign_values(key, Vec::new(), Op::Set),
            Some(_) => Err(self.err("expected '=', '+=', ':=', '{' or end of line after key")),
        }
    }

    fn assign(&mut self, key: String, op: Op) -> Result<()> {
        let mut values = Vec::new();
        loop {
            self.skip_space(false);
            values.push(self.value()?);
            self.skip_space(false);
            if self.peek() == Some(b',') {
                self.pos += 1;
                self.skip_space(true);
                continue;
            }
            break;
        }
        match self.peek() {
            None | Some(b'\n' | b';' | b'}') => self.assign_values(key, values, op),
            Some(_) => Err(self.err("unexpected character after value")),
        }
    }

    fn value(&mut self) -> Result<String> {
        let start;
        let end;
        match self.peek() {
            Some(q @ (b'"' | b'\'')) => {
                self.pos += 1;
                start = self.pos;
                while self.peek().is_some_and(|c| c != q) {
                    self.pos += 1;
                }
                if self.peek().is_none() {
                    return Err(self.err("unterminated quoted value"));
                }
                end = self.pos;
                self.pos += 1;
            }
            _ => {
                start = self.pos;
                while self.peek().is_some_and(|c| {
                    !matches!(
                        c,
                        b' ' | b'\t'
                            | b'\r'
                            | b'\n'
                            | b','
                            | b';'
                            | b'#'
                            | b'}'
                            | b'='
                            | b'"'
                            | b'\''
                    )
                }) {
                    self.pos += 1;
                }
                end = self.pos;
            }
        }
        String::from_utf8(self.s[start..end].to_vec()).map_err(|_| self.err("value is not UTF-8"))
    }

    fn assign_values(&mut self, key: String, values: Vec<String>, op: Op) -> Result<()> {
        match (self.out.entries.iter_mut().find(|(k, _)| *k == key), op) {
            (Some(_), Op::Set) => Err(invalid(
                "bootconfig key",
                key,
                "defined twice (use := to override or += to append)",
            )),
            (Some((_, old)), Op::Append) => {
                old.extend(values);
                Ok(())
            }
            (Some((_, old)), Op::Override) => {
                *old = values;
                Ok(())
            }
            (None, _) => {
                self.out.entries.push((key, values));
                Ok(())
            }
        }
    }
}

#[derive(Clone, Copy)]
enum Op {
    Set,
    Append,
    Override,
}

/// Appends `data` as bootconfig to `initrd` the way the kernel's `tools/bootconfig` does:
/// NUL padding so the total length is a multiple of 4, then size (data + padding), checksum
/// and the magic.
pub fn append_trailer(initrd: &mut Vec<u8>, data: &[u8]) -> Result<()> {
    let unpadded = initrd.len() + data.len() + TRAILER_LEN;
    let pad = (BOOTCONFIG_ALIGN - unpadded % BOOTCONFIG_ALIGN) % BOOTCONFIG_ALIGN;
    let size = data.len() + pad;
    if size > BOOTCONFIG_MAX {
        return Err(invalid(
            "bootconfig size",
            size,
            format!("larger than the kernel's {BOOTCONFIG_MAX} bytes"),
        ));
    }
    initrd.extend_from_slice(data);
    initrd.resize(initrd.len() + pad, 0);
    initrd.extend_from_slice(&(size as u32).to_le_bytes());
    initrd.extend_from_slice(&checksum(data).to_le_bytes());
    initrd.extend_from_slice(BOOTCONFIG_MAGIC);
    Ok(())
}

/// Splits an initrd that ends with a bootconfig trailer into (initrd, bootconfig data with
/// padding), verifying size and checksum; `Ok(None)` when there is no trailer.
pub fn split_trailer(buf: &[u8]) -> Result<Option<(&[u8], &[u8])>> {
    if buf.len() < TRAILER_LEN || !buf.ends_with(BOOTCONFIG_MAGIC) {
        return Ok(None);
    }
    let tail = buf.len() - TRAILER_LEN;
    let word = |at: usize| u32::from_le_bytes([buf[at], buf[at + 1], buf[at + 2], buf[at + 3]]);
    let size = word(tail);
    let stored = word(tail + 4);
    if size as usize > BOOTCONFIG_MAX || size as usize > tail {
        return Err(invalid(
            "bootconfig size",
            size,
            format!("exceeds the {tail} bytes before the trailer or the kernel's {BOOTCONFIG_MAX}"),
        ));
    }
    let start = tail - size as usize;
    let data = &buf[start..tail];
    let computed = checksum(data);
    if computed != stored {
        return Err(ImageError::Checksum {
            what: "bootconfig".into(),
            stored,
            computed,
        });
    }
    Ok(Some((&buf[..start], data)))
}

/// Splits a cmdline into words the way the kernel's `next_arg` does: whitespace separates,
/// double quotes group (and stay in the word).
pub fn cmdline_words(cmdline: &str) -> Vec<&str> {
    let mut words = Vec::new();
    let mut start = None;
    let mut quoted = false;
    for (i, c) in cmdline.char_indices() {
        if c == '"' {
            quoted = !quoted;
        }
        if c.is_whitespace() && !quoted {
            if let Some(s) = start.take() {
                words.push(&cmdline[s..i]);
            }
        } else if start.is_none() {
            start = Some(i);
        }
    }
    if let Some(s) = start {
        words.push(&cmdline[s..]);
    }
    words
}

/// Moves every `androidboot.*` word of `cmdline` into a [`BootConfig`] (as Cuttlefish does
/// for kernels with bootconfig); returns the remaining cmdline and the moved parameters.
pub fn extract_androidboot(cmdline: &str) -> Result<(String, BootConfig)> {
    let mut rest = Vec::new();
    let mut config = BootConfig::new();
    for word in cmdline_words(cmdline) {
        if !word.starts_with(ANDROIDBOOT_PREFIX) {
            rest.push(word);
            continue;
        }
        let (key, value) = word.split_once('=').unwrap_or((word, ""));
        let value = value
            .strip_prefix('"')
            .and_then(|v| v.strip_suffix('"'))
            .unwrap_or(value);
        config.set(key, value)?;
    }
    Ok((rest.join(" "), config))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trailer_hand_computed_vector() {
        // "a = \"b\"\n" is 8 bytes: 'a'=97 ' '=32 '='=61 ' '=32 '"'=34 'b'=98 '"'=34 '\n'=10,
        // sum 398 = 0x18e. Initrd of 3 bytes: 3 + 8 + 20 = 31, so 1 NUL of padding, size 9.
        let mut initrd = vec![1, 2, 3];
        append_trailer(&mut initrd, b"a = \"b\"\n").unwrap();
        let mut expected = vec![1, 2, 3];
        expected.extend_from_slice(b"a = \"b\"\n\0");
        expected.extend_from_slice(&[9, 0, 0, 0, 0x8e, 0x01, 0, 0]);
        expected.extend_from_slice(b"#BOOTCONFIG\n");
        assert_eq!(initrd, expected);
        assert_eq!(initrd.len() % 4, 0);
        let (rd, data) = split_trailer(&initrd).unwrap().unwrap();
        assert_eq!(rd, &[1, 2, 3]);
        assert_eq!(data, b"a = \"b\"\n\0");
    }

    #[test]
    fn trailer_alignment_for_every_residue() {
        for rd_len in 0..8 {
            let mut initrd = vec![0xaa; rd_len];
            append_trailer(&mut initrd, b"k = v\n").unwrap();
            assert_eq!(initrd.len() % 4, 0, "initrd {rd_len}");
            assert!(split_trailer(&initrd).unwrap().is_some());
        }
    }

    #[test]
    fn trailer_checksum_and_size_errors() {
        let mut initrd = vec![0u8; 4];
        append_trailer(&mut initrd, b"k = v\n").unwrap();
        let mut corrupt = initrd.clone();
        corrupt[4] ^= 1;
        let err = split_trailer(&corrupt).unwrap_err().to_string();
        assert!(err.contains("bootconfig: checksum mismatch"), "{err}");
        let mut big = initrd.clone();
        let at = big.len() - TRAILER_LEN;
        big[at..at + 4].copy_from_slice(&100_000u32.to_le_bytes());
        assert!(split_trailer(&big)
            .unwrap_err()
            .to_string()
            .contains("bootconfig size = 100000"));
        assert!(split_trailer(b"no trailer").unwrap().is_none());
        assert!(append_trailer(&mut Vec::new(), &vec![b'a'; BOOTCONFIG_MAX + 1]).is_err());
    }

    #[test]
    fn render_quotes_values() {
        let mut c = BootConfig::new();
        c.set("androidboot.hardware", "cloudphone").unwrap();
        c.set("androidboot.msg", "say \"hi\"").unwrap();
        assert_eq!(
            c.render().unwrap(),
            "androidboot.hardware = \"cloudphone\"\nandroidboot.msg = 'say \"hi\"'\n"
        );
        assert!(c.set("bad key", "x").is_err());
        assert!(c.set("a..b", "x").is_err());
        assert!(c.set("k", "both \" and '").is_err());
    }

    #[test]
    fn parse_documented_syntax() {
        let text = "# comment\nfeature.option.foo = 1; feature.option.bar = \"two words\"\n\
                    ftrace { event = a, b,\n c }\nkernel.x = 1\nkernel.x += 2\nkernel.y = 1\nkernel.y := 3\nflag\n";
        let c = BootConfig::parse(text).unwrap();
        assert_eq!(c.get("feature.option.foo"), Some("1"));
        assert_eq!(c.get("feature.option.bar"), Some("two words"));
        let ev = &c
            .entries()
            .iter()
            .find(|(k, _)| k == "ftrace.event")
            .unwrap()
            .1;
        assert_eq!(ev, &["a", "b", "c"]);
        let x = &c.entries().iter().find(|(k, _)| k == "kernel.x").unwrap().1;
        assert_eq!(x, &["1", "2"]);
        assert_eq!(c.get("kernel.y"), Some("3"));
        assert!(c.entries().iter().any(|(k, v)| k == "flag" && v.is_empty()));
        let again = BootConfig::parse(&c.render().unwrap()).unwrap();
        assert_eq!(again, c);
    }

    #[test]
    fn parse_errors_name_the_place() {
        assert!(BootConfig::parse("a = 1\na = 2\n")
            .unwrap_err()
            .to_string()
            .contains("defined twice"));
        assert!(BootConfig::parse("a = \"open\n")
            .unwrap_err()
            .to_string()
            .contains("unterminated"));
        assert!(BootConfig::parse("a {\n b = 1\n")
            .unwrap_err()
            .to_string()
            .contains("not closed"));
        assert!(BootConfig::parse("}").is_err());
        assert!(BootConfig::parse("a = 1 2")
            .unwrap_err()
            .to_string()
            .contains("line 1"));
    }

    #[test]
    fn androidboot_moves_out_of_cmdline() {
        let (rest, c) = extract_androidboot(
            "console=hvc0 androidboot.hardware=cutf androidboot.x=\"a b\" quiet androidboot.flag",
        )
        .unwrap();
        assert_eq!(rest, "console=hvc0 quiet");
        assert_eq!(c.get("androidboot.hardware"), Some("cutf"));
        assert_eq!(c.get("androidboot.x"), Some("a b"));
        assert_eq!(c.get("androidboot.flag"), Some(""));
        assert_eq!(
            c.to_cmdline_words(),
            [
                "androidboot.hardware=cutf",
                "androidboot.x=\"a b\"",
                "androidboot.flag="
            ]
        );
    }
}
