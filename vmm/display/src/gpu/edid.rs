//! A 128-byte EDID 1.4 base block describing the phone screen: the preferred (and only) mode is
//! the configured W×H at up to 60 Hz, and the physical size comes from the dpi, so the guest's
//! DRM driver and Android's density logic see the profile's real geometry.

use crate::spec::GpuSpec;

/// Size of an EDID base block.
pub const EDID_LEN: usize = 128;

const HEADER: [u8; 8] = [0x00, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x00];
/// Three-letter PNP manufacturer id ("CPH": cloudphone).
const MANUFACTURER: [u8; 3] = *b"CPH";
const MONITOR_NAME: &[u8] = b"cloudphone";
/// Blanking for a virtual panel (CVT reduced-blanking-like); only needs to be plausible.
const H_BLANK: u32 = 160;
const H_FRONT_PORCH: u32 = 48;
const H_SYNC: u32 = 32;
const V_BLANK: u32 = 30;
const V_FRONT_PORCH: u32 = 3;
const V_SYNC: u32 = 5;
const REFRESH_HZ: u64 = 60;
/// sRGB primaries and white point (x, y) for the chromaticity block.
const SRGB: [(f64, f64); 4] = [
    (0.640, 0.330),
    (0.300, 0.600),
    (0.150, 0.060),
    (0.3127, 0.3290),
];

/// Build the EDID for `spec`. Width and height must fit 12 bits (the spec parser enforces it).
pub fn build(spec: &GpuSpec) -> [u8; EDID_LEN] {
    let mut e = [0u8; EDID_LEN];
    e[..8].copy_from_slice(&HEADER);
    let id = MANUFACTURER
        .iter()
        .fold(0u16, |acc, c| (acc << 5) | u16::from(c - b'A' + 1));
    e[8..10].copy_from_slice(&id.to_be_bytes());
    e[10..12].copy_from_slice(&1u16.to_le_bytes()); // product code
    e[16] = 1; // week of manufacture
    e[17] = 34; // year of manufacture: 2024 - 1990
    e[18] = 1; // EDID version 1.4
    e[19] = 4;
    e[20] = 0x80 | 0x20; // digital input, 8 bits per colour
    let (w_mm, h_mm) = spec.size_mm();
    e[21] = cm(w_mm);
    e[22] = cm(h_mm);
    e[23] = 120; // gamma 2.2
    e[24] = 0x06; // sRGB default colour space, preferred timing is the native mode
    chromaticity(&mut e[25..35]);
    for timing in e[38..54].chunks_mut(2) {
        timing.copy_from_slice(&[0x01, 0x01]); // standard timings unused
    }
    detailed_timing(&mut e[54..72], spec, (w_mm, h_mm));
    display_name(&mut e[72..90]);
    dummy_descriptor(&mut e[90..108]);
    dummy_descriptor(&mut e[108..126]);
    e[126] = 0; // no extension blocks
    let sum = e[..127].iter().fold(0u8, |acc, b| acc.wrapping_add(*b));
    e[127] = 0u8.wrapping_sub(sum);
    e
}

fn cm(mm: u32) -> u8 {
    (mm.div_ceil(10)).clamp(1, 255) as u8
}

fn chromaticity(out: &mut [u8]) {
    let v: Vec<u16> = SRGB
        .iter()
        .flat_map(|&(x, y)| [x, y])
        .map(|c| (c * 1024.0).round() as u16)
        .collect();
    let lo = |i: usize| (v[i] & 3) as u8;
    out[0] = lo(0) << 6 | lo(1) << 4 | lo(2) << 2 | lo(3);
    out[1] = lo(4) << 6 | lo(5) << 4 | lo(6) << 2 | lo(7);
    for (i, value) in v.iter().enumerate() {
        out[2 + i] = (value >> 2) as u8;
    }
}

fn detailed_timing(d: &mut [u8], spec: &GpuSpec, (w_mm, h_mm): (u32, u32)) {
    let (h, v) = (spec.width, spec.height);
    let total = u64::from(h + H_BLANK) * u64::from(v + V_BLANK);
    // Pixel clock is 16 bits of 10 kHz: lower the refresh for very large panels so it fits.
    let refresh = REFRESH_HZ.min(u64::from(u16::MAX) * 10_000 / total).max(1);
    let clock = (total * refresh).div_ceil(10_000) as u16;
    d[0..2].copy_from_slice(&clock.to_le_bytes());
    d[2] = h as u8;
    d[3] = H_BLANK as u8;
    d[4] = ((h >> 8) as u8) << 4 | (H_BLANK >> 8) as u8;
    d[5] = v as u8;
    d[6] = V_BLANK as u8;
    d[7] = ((v >> 8) as u8) << 4 | (V_BLANK >> 8) as u8;
    d[8] = H_FRONT_PORCH as u8;
    d[9] = H_SYNC as u8;
    d[10] = (V_FRONT_PORCH as u8) << 4 | V_SYNC as u8;
    d[11] = 0; // high bits of porches/syncs: all small
    d[12] = w_mm as u8;
    d[13] = h_mm as u8;
    d[14] = ((w_mm >> 8) as u8 & 0xf) << 4 | ((h_mm >> 8) as u8 & 0xf);
    d[17] = 0x1e; // digital separate sync, +hsync +vsync
}

fn display_name(d: &mut [u8]) {
    d[3] = 0xfc;
    let text = &mut d[5..18];
    text.fill(0x20);
    text[..MONITOR_NAME.len()].copy_from_slice(MONITOR_NAME);
    text[MONITOR_NAME.len()] = 0x0a;
}

fn dummy_descriptor(d: &mut [u8]) {
    d[3] = 0x10;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(width: u32, height: u32, dpi: u32) -> GpuSpec {
        GpuSpec { width, height, dpi }
    }

    #[test]
    fn checksum_header_and_preferred_mode() {
        for s in [
            spec(720, 1280, 320),
            spec(1440, 3120, 560),
            spec(4095, 4095, 72),
            spec(64, 64, 1000),
        ] {
            let e = build(&s);
            assert_eq!(
                e.iter().fold(0u8, |a, b| a.wrapping_add(*b)),
                0,
                "checksum {s:?}"
            );
            assert_eq!(e[..8], HEADER);
            let h_active = u32::from(e[56]) | u32::from(e[58] >> 4) << 8;
            let v_active = u32::from(e[59]) | u32::from(e[61] >> 4) << 8;
            assert_eq!((h_active, v_active), (s.width, s.height));
            let clock = u16::from_le_bytes([e[54], e[55]]);
            assert!(clock > 0, "pixel clock must be non-zero for {s:?}");
            let w_mm = u32::from(e[66]) | u32::from(e[68] >> 4) << 8;
            let h_mm = u32::from(e[67]) | u32::from(e[68] & 0xf) << 8;
            assert_eq!((w_mm, h_mm), s.size_mm());
        }
    }

    #[test]
    fn phone_profile_values() {
        let e = build(&spec(720, 1280, 320));
        // 57 x 102 mm -> 6 x 11 cm.
        assert_eq!((e[21], e[22]), (6, 11));
        // 880 x 1310 x 60 Hz = 69.17 MHz.
        assert_eq!(u16::from_le_bytes([e[54], e[55]]), 6917);
        assert_eq!(&e[77..88], b"cloudphone\n");
        // PNP id "CPH" = 00011 10000 01000.
        assert_eq!(u16::from_be_bytes([e[8], e[9]]), 0b0_00011_10000_01000);
    }

    #[test]
    fn advertises_no_standard_timings() {
        let e = build(&spec(720, 1280, 320));
        assert!(e[38..54].chunks(2).all(|t| t == [1, 1]));
    }
}
