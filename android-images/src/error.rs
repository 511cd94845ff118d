//! One error type for every format: each variant names the field (or section) at fault and the
//! value that was found, so a user can tell which image is broken and where.

use std::path::PathBuf;

/// Everything that can go wrong while parsing, writing or assembling an Android image.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// The input ended before a structure or section it declares.
    #[error("{what}: truncated: needs bytes {offset}..{end} but the input has {available} bytes")]
    Truncated {
        /// The structure or section being read.
        what: String,
        /// Where it starts.
        offset: u64,
        /// Where it would end.
        end: u64,
        /// How long the input actually is.
        available: u64,
    },
    /// The leading magic bytes are not the format's.
    #[error("{what}: bad magic {found:?}, expected {expected:?}")]
    BadMagic {
        /// The format that was expected.
        what: &'static str,
        /// The bytes found (escaped).
        found: String,
        /// The magic the format requires (escaped).
        expected: String,
    },
    /// A header field holds a value the format does not allow.
    #[error("{field} = {value}: {reason}")]
    InvalidField {
        /// Dotted field name, e.g. `boot.page_size`.
        field: String,
        /// The offending value as found.
        value: String,
        /// Why it is rejected and, where useful, what is expected.
        reason: String,
    },
    /// A stored checksum does not match the data.
    #[error("{what}: checksum mismatch: stored {stored:#010x}, computed {computed:#010x}")]
    Checksum {
        /// The checksummed structure.
        what: String,
        /// Value stored in the image.
        stored: u32,
        /// Value computed over the data.
        computed: u32,
    },
    /// A file could not be opened, read or written.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file involved.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A file's contents were rejected (the inner error names the field).
    #[error("{}: {source}", path.display())]
    InFile {
        /// The file that was parsed.
        path: PathBuf,
        /// What was wrong with it.
        source: Box<ImageError>,
    },
    /// A stream (not a named file) failed while reading or writing.
    #[error("{what}: I/O error: {source}")]
    Stream {
        /// What was being read or written.
        what: String,
        /// The underlying error.
        source: std::io::Error,
    },
}

/// Shorthand result type of this crate.
pub type Result<T> = std::result::Result<T, ImageError>;

/// Builds an [`ImageError::InvalidField`]; used everywhere a header value is rejected.
pub fn invalid(
    field: impl Into<String>,
    value: impl std::fmt::Display,
    reason: impl Into<String>,
) -> ImageError {
    ImageError::InvalidField {
        field: field.into(),
        value: value.to_string(),
        reason: reason.into(),
    }
}

/// Builds an [`ImageError::Io`] for `path`.
pub fn io_err(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> ImageError {
    let path = path.into();
    move |source| ImageError::Io { path, source }
}

/// Builds an [`ImageError::Stream`] for a stream described by `what`.
pub fn stream_err(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> ImageError {
    let what = what.into();
    move |source| ImageError::Stream { what, source }
}
