//! The video both senders packetize: a synthetic H.264 Annex-B stream shaped like our encoder's
//! screen-content output (SPS + PPS + IDR of ~30 KB every 60 frames, P slices of 3-8 KB), with
//! the frame index stamped into every slice so the receiver can tell which frame arrived and
//! check it byte for byte.

use bytes::Bytes;

/// Frames per keyframe interval (one IDR per second at 60 fps).
pub const GOP: u32 = 60;
/// The index of the keyframe sent repeatedly while a session connects (outside `0..N`).
pub const WARMUP: u32 = 0x0FFF_FFFF;

const START: [u8; 4] = [0, 0, 0, 1];
/// Baseline profile (0x42), constraint flags 0xC0, level 3.1: what our OpenH264 settings emit.
const SPS: [u8; 11] = [
    0x67, 0x42, 0xC0, 0x1F, 0xDA, 0x01, 0x68, 0x0A, 0x1F, 0x96, 0x52,
];
const PPS: [u8; 4] = [0x68, 0xCE, 0x3C, 0x80];
const NAL_IDR: u8 = 0x65;
const NAL_P: u8 = 0x41;

/// Deterministic xorshift so both stacks get the same bytes in every run.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn range(&mut self, lo: usize, hi: usize) -> usize {
        lo + (self.next() % (hi - lo) as u64) as usize
    }
}

/// The access unit for frame `index`: keyframes at multiples of [`GOP`] (and for [`WARMUP`]).
pub fn access_unit(index: u32) -> Bytes {
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15 ^ u64::from(index).wrapping_mul(0x2545_F491_4F6C_DD1D));
    let keyframe = index == WARMUP || index.is_multiple_of(GOP);
    let mut au = Vec::with_capacity(32 * 1024);
    if keyframe {
        for nal in [&SPS[..], &PPS[..]] {
            au.extend_from_slice(&START);
            au.extend_from_slice(nal);
        }
    }
    au.extend_from_slice(&START);
    au.push(if keyframe { NAL_IDR } else { NAL_P });
    au.extend_from_slice(&stamp(index));
    let body = if keyframe {
        rng.range(28_000, 32_000)
    } else {
        rng.range(3_000, 8_000)
    };
    // Slice data without zero bytes never forms a start code or needs emulation prevention.
    au.extend((0..body).map(|_| (rng.next() >> 24) as u8 | 1));
    Bytes::from(au)
}

/// The frame index as four non-zero bytes (7 bits each).
fn stamp(index: u32) -> [u8; 4] {
    std::array::from_fn(|k| 0x80 | ((index >> (7 * k)) & 0x7F) as u8)
}

/// The NAL units of an Annex-B buffer (start codes of 3 or 4 bytes stripped).
pub fn nal_units(data: &[u8]) -> Vec<&[u8]> {
    let mut starts = Vec::new();
    let mut i = 0;
    while i + 3 <= data.len() {
        if data[i..i + 3] == [0, 0, 1] {
            starts.push((i, i + 3));
            i += 3;
        } else {
            i += 1;
        }
    }
    let mut units = Vec::with_capacity(starts.len());
    for (k, &(_, begin)) in starts.iter().enumerate() {
        let mut end = starts.get(k + 1).map_or(data.len(), |&(code, _)| code);
        while end > begin && data[end - 1] == 0 {
            end -= 1; // the leading zero of a 4-byte start code
        }
        units.push(&data[begin..end]);
    }
    units
}

/// Which frame a received access unit is, if it arrived byte for byte (NAL units equal to what
/// was sent; a depacketizer may change start-code lengths).
pub fn identify(received: &[u8]) -> Option<u32> {
    let units = nal_units(received);
    let slice = units
        .iter()
        .find(|n| matches!(n.first(), Some(&NAL_IDR | &NAL_P)))?;
    let stamp = slice.get(1..5)?;
    let index = stamp.iter().enumerate().try_fold(0u32, |acc, (k, b)| {
        (b & 0x80 != 0).then(|| acc | u32::from(b & 0x7F) << (7 * k))
    })?;
    (nal_units(&access_unit(index)) == units).then_some(index)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_has_the_shape_of_screen_content() {
        let key = access_unit(0);
        let p = access_unit(1);
        assert!((28_000..33_000).contains(&key.len()), "{}", key.len());
        assert!((3_000..8_100).contains(&p.len()), "{}", p.len());
        let types: Vec<u8> = nal_units(&key).iter().map(|n| n[0] & 0x1F).collect();
        assert_eq!(types, [7, 8, 5]);
        assert_eq!(
            nal_units(&p)
                .iter()
                .map(|n| n[0] & 0x1F)
                .collect::<Vec<_>>(),
            [1]
        );
        assert!(
            access_unit(GOP).len() > 20_000,
            "every GOP starts with an IDR"
        );
    }

    #[test]
    fn frames_are_identified_and_corruption_is_not() {
        for index in [0, 1, 59, 60, 599, WARMUP] {
            assert_eq!(identify(&access_unit(index)), Some(index));
        }
        // 3-byte start codes (what a depacketizer may emit) still match.
        let au = access_unit(7);
        let short: Vec<u8> = au[1..].to_vec();
        assert_eq!(identify(&short), Some(7));
        let mut bad = au.to_vec();
        let last = bad.len() - 1;
        bad[last] ^= 0x02;
        assert_eq!(identify(&bad), None);
        assert_eq!(identify(&au[..au.len() - 1]), None);
    }
}
