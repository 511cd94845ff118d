//! The stats queue's buffer: `struct virtio_balloon_stat { le16 tag; le64 val; }` entries.

use serde::{Deserialize, Serialize};

/// Size of one packed stat entry on the wire.
pub const STAT_LEN: usize = 10;
/// Entries we read from one buffer (the spec defines 10 tags; drivers send each once).
pub const MAX_STATS: usize = 64;

/// The guest's memory statistics, as last reported. Memory amounts are bytes; `None` means the
/// guest did not report that tag.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BalloonStats {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub swap_in: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub swap_out: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub major_faults: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub minor_faults: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub free_memory: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub total_memory: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub available_memory: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub disk_caches: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hugetlb_allocations: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hugetlb_failures: Option<u64>,
}

/// Why a stats buffer was ignored.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum StatsError {
    #[error("stats buffer of {0} bytes is not a whole number of 10-byte entries")]
    Ragged(usize),
    #[error("stats buffer of {0} bytes has more than {MAX_STATS} entries")]
    TooLong(usize),
}

impl BalloonStats {
    /// Parse a stats buffer; unknown tags are skipped (newer guests may send more).
    pub fn parse(buf: &[u8]) -> Result<Self, StatsError> {
        if buf.len() % STAT_LEN != 0 {
            return Err(StatsError::Ragged(buf.len()));
        }
        if buf.len() > MAX_STATS * STAT_LEN {
            return Err(StatsError::TooLong(buf.len()));
        }
        let mut s = BalloonStats::default();
        for entry in buf.chunks_exact(STAT_LEN) {
            let tag = u16::from_le_bytes([entry[0], entry[1]]);
            let val = u64::from_le_bytes(entry[2..10].try_into().expect("8 bytes"));
            let slot = match tag {
                0 => &mut s.swap_in,
                1 => &mut s.swap_out,
                2 => &mut s.major_faults,
                3 => &mut s.minor_faults,
                4 => &mut s.free_memory,
                5 => &mut s.total_memory,
                6 => &mut s.available_memory,
                7 => &mut s.disk_caches,
                8 => &mut s.hugetlb_allocations,
                9 => &mut s.hugetlb_failures,
                _ => continue,
            };
            *slot = Some(val);
        }
        Ok(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn entry(tag: u16, val: u64) -> Vec<u8> {
        let mut e = tag.to_le_bytes().to_vec();
        e.extend_from_slice(&val.to_le_bytes());
        e
    }

    #[test]
    fn parses_known_tags_and_skips_unknown() {
        let buf: Vec<u8> = [
            entry(4, 100 << 20),
            entry(5, 512 << 20),
            entry(99, 1),
            entry(6, 200 << 20),
        ]
        .concat();
        let s = BalloonStats::parse(&buf).unwrap();
        assert_eq!(s.free_memory, Some(100 << 20));
        assert_eq!(s.total_memory, Some(512 << 20));
        assert_eq!(s.available_memory, Some(200 << 20));
        assert_eq!(s.swap_in, None);
        let json = serde_json::to_string(&s).unwrap();
        assert_eq!(
            json,
            r#"{"free_memory":104857600,"total_memory":536870912,"available_memory":209715200}"#
        );
    }

    #[test]
    fn rejects_ragged_and_oversized_buffers() {
        assert_eq!(BalloonStats::parse(&[0u8; 11]), Err(StatsError::Ragged(11)));
        assert_eq!(
            BalloonStats::parse(&vec![0u8; 650]),
            Err(StatsError::TooLong(650))
        );
        assert_eq!(BalloonStats::parse(&[]), Ok(BalloonStats::default()));
    }

    #[test]
    fn prop_parser_never_panics() {
        let cases = std::sync::atomic::AtomicUsize::new(0);
        proptest!(ProptestConfig::with_cases(5000), |(buf in proptest::collection::vec(any::<u8>(), 0..800))| {
            cases.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let r = BalloonStats::parse(&buf);
            prop_assert_eq!(r.is_ok(), buf.len() % STAT_LEN == 0 && buf.len() <= MAX_STATS * STAT_LEN);
        });
        eprintln!("fuzz balloon_stats: {} cases", cases.into_inner());
    }
}
