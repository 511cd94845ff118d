//! What each input device tells the driver through the select/subsel config space (virtio spec
//! 5.8.4): name, serial, ids, property bits, supported event bitmaps and axis ranges.

use std::collections::BTreeMap;

use super::evdev::*;

/// Bytes of the config `u` union.
pub const CONFIG_DATA_LEN: usize = 128;
/// Offset of the `u` union in the config space.
const DATA_OFFSET: usize = 8;

const CFG_ID_NAME: u8 = 0x01;
const CFG_ID_SERIAL: u8 = 0x02;
const CFG_ID_DEVIDS: u8 = 0x03;
const CFG_PROP_BITS: u8 = 0x10;
const CFG_EV_BITS: u8 = 0x11;
const CFG_ABS_INFO: u8 = 0x12;

/// Virtual bus type for `ID_DEVIDS` (BUS_VIRTUAL).
const BUS_VIRTUAL: u16 = 0x06;
/// Most touch contacts (slots 0..=9).
pub const TOUCH_SLOTS: u32 = 10;

/// `struct virtio_input_absinfo`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AbsInfo {
    pub min: u32,
    pub max: u32,
    pub fuzz: u32,
    pub flat: u32,
    pub res: u32,
}

impl AbsInfo {
    fn range(min: u32, max: u32) -> Self {
        Self {
            min,
            max,
            fuzz: 0,
            flat: 0,
            res: 0,
        }
    }
}

/// Static description of one input device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InputProfile {
    pub name: String,
    pub serial: String,
    pub product: u16,
    pub props: Vec<u16>,
    /// Event type -> supported codes.
    pub events: BTreeMap<u16, Vec<u16>>,
    pub abs: BTreeMap<u16, AbsInfo>,
}

impl InputProfile {
    /// A direct-touch multitouch screen of `width`×`height` pixels (protocol B, 10 slots).
    pub fn touchscreen(width: u32, height: u32) -> Self {
        let (mx, my) = (width.saturating_sub(1), height.saturating_sub(1));
        let abs = BTreeMap::from([
            (ABS_X, AbsInfo::range(0, mx)),
            (ABS_Y, AbsInfo::range(0, my)),
            (ABS_MT_SLOT, AbsInfo::range(0, TOUCH_SLOTS - 1)),
            (ABS_MT_POSITION_X, AbsInfo::range(0, mx)),
            (ABS_MT_POSITION_Y, AbsInfo::range(0, my)),
            (ABS_MT_TRACKING_ID, AbsInfo::range(0, u32::from(u16::MAX))),
        ]);
        Self {
            name: "virtio-touchscreen-0".into(),
            serial: "cloudphone-touch-0".into(),
            product: 1,
            props: vec![INPUT_PROP_DIRECT],
            events: BTreeMap::from([
                (EV_KEY, vec![BTN_TOUCH]),
                (EV_ABS, abs.keys().copied().collect()),
            ]),
            abs,
        }
    }

    /// A keyboard with the phone keys, letters and digits.
    pub fn keyboard() -> Self {
        Self {
            name: "virtio-keyboard-0".into(),
            serial: "cloudphone-keyboard-0".into(),
            product: 2,
            props: vec![],
            events: BTreeMap::from([(EV_KEY, KEYS.iter().map(|(_, c)| *c).collect())]),
            abs: BTreeMap::new(),
        }
    }

    /// The `u` payload for `(select, subsel)`; empty means "not supported" (size 0).
    pub fn answer(&self, select: u8, subsel: u8) -> Vec<u8> {
        let mut out = match (select, subsel) {
            (CFG_ID_NAME, 0) => self.name.as_bytes().to_vec(),
            (CFG_ID_SERIAL, 0) => self.serial.as_bytes().to_vec(),
            (CFG_ID_DEVIDS, 0) => [BUS_VIRTUAL, 0x1af4, self.product, 1]
                .iter()
                .flat_map(|v| v.to_le_bytes())
                .collect(),
            (CFG_PROP_BITS, 0) => bitmap(&self.props),
            (CFG_EV_BITS, ty) => self
                .events
                .get(&u16::from(ty))
                .map(|codes| bitmap(codes))
                .unwrap_or_default(),
            (CFG_ABS_INFO, axis) => self
                .abs
                .get(&u16::from(axis))
                .map(|a| {
                    [a.min, a.max, a.fuzz, a.flat, a.res]
                        .iter()
                        .flat_map(|v| v.to_le_bytes())
                        .collect()
                })
                .unwrap_or_default(),
            _ => Vec::new(),
        };
        out.truncate(CONFIG_DATA_LEN);
        out
    }
}

/// A little-endian bitmap with bit `code` set for each code, as short as possible.
fn bitmap(codes: &[u16]) -> Vec<u8> {
    let Some(max) = codes.iter().max() else {
        return Vec::new();
    };
    let mut bits = vec![0u8; usize::from(*max) / 8 + 1];
    for &c in codes {
        bits[usize::from(c) / 8] |= 1 << (c % 8);
    }
    bits
}

/// The config space: the driver writes `select`/`subsel`, then reads `size` and `u`.
#[derive(Debug, Clone, Default)]
pub struct ConfigSpace {
    select: u8,
    subsel: u8,
}

impl ConfigSpace {
    /// Read `data.len()` bytes at `offset` of the config image for the current selection.
    pub fn read(&self, profile: &InputProfile, offset: u64, data: &mut [u8]) {
        let payload = profile.answer(self.select, self.subsel);
        let mut image = [0u8; DATA_OFFSET + CONFIG_DATA_LEN];
        image[0] = self.select;
        image[1] = self.subsel;
        image[2] = payload.len() as u8;
        image[DATA_OFFSET..DATA_OFFSET + payload.len()].copy_from_slice(&payload);
        cloudphone_virtio::read_config_bytes(&image, offset, data);
    }

    /// Writes to `select` (offset 0) and `subsel` (offset 1) take effect; others are ignored.
    pub fn write(&mut self, offset: u64, data: &[u8]) {
        for (i, byte) in data.iter().enumerate() {
            match offset.checked_add(i as u64) {
                Some(0) => self.select = *byte,
                Some(1) => self.subsel = *byte,
                _ => tracing::debug!(
                    offset,
                    "virtio-input: write to read-only config byte ignored"
                ),
            }
        }
    }

    /// Back to the reset state.
    pub fn reset(&mut self) {
        *self = Self::default();
    }

    /// The driver's current (select, subsel), for a snapshot.
    pub fn selection(&self) -> (u8, u8) {
        (self.select, self.subsel)
    }

    /// Restore a snapshot's (select, subsel); any pair is a valid query (unknown ones
    /// answer empty).
    pub fn select(&mut self, (select, subsel): (u8, u8)) {
        self.select = select;
        self.subsel = subsel;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn query(space: &mut ConfigSpace, profile: &InputProfile, select: u8, subsel: u8) -> Vec<u8> {
        space.write(0, &[select, subsel]);
        let mut size = [0u8];
        space.read(profile, 2, &mut size);
        let mut data = vec![0u8; usize::from(size[0])];
        space.read(profile, 8, &mut data);
        data
    }

    #[test]
    fn touchscreen_answers() {
        let p = InputProfile::touchscreen(720, 1280);
        let mut s = ConfigSpace::default();
        assert_eq!(query(&mut s, &p, CFG_ID_NAME, 0), b"virtio-touchscreen-0");
        assert_eq!(
            query(&mut s, &p, CFG_PROP_BITS, 0),
            [1 << INPUT_PROP_DIRECT]
        );
        let abs_bits = query(&mut s, &p, CFG_EV_BITS, EV_ABS as u8);
        for axis in [
            ABS_X,
            ABS_Y,
            ABS_MT_SLOT,
            ABS_MT_POSITION_X,
            ABS_MT_POSITION_Y,
            ABS_MT_TRACKING_ID,
        ] {
            assert_ne!(
                abs_bits[usize::from(axis / 8)] & (1 << (axis % 8)),
                0,
                "axis {axis}"
            );
        }
        let key_bits = query(&mut s, &p, CFG_EV_BITS, EV_KEY as u8);
        assert_eq!(key_bits.len(), usize::from(BTN_TOUCH / 8) + 1);
        let x = query(&mut s, &p, CFG_ABS_INFO, ABS_MT_POSITION_X as u8);
        assert_eq!(&x[..8], &[0, 0, 0, 0, 0xcf, 0x02, 0, 0]); // 0..=719
        let slot = query(&mut s, &p, CFG_ABS_INFO, ABS_MT_SLOT as u8);
        assert_eq!(&slot[4..8], &9u32.to_le_bytes());
        assert!(query(&mut s, &p, CFG_EV_BITS, 0x02).is_empty(), "no EV_REL");
        assert!(query(&mut s, &p, CFG_ABS_INFO, 0x10).is_empty());
        assert!(query(&mut s, &p, 0x7f, 0).is_empty());
        assert_eq!(query(&mut s, &p, CFG_ID_DEVIDS, 0).len(), 8);
    }

    #[test]
    fn keyboard_has_phone_keys() {
        let p = InputProfile::keyboard();
        let mut s = ConfigSpace::default();
        assert_eq!(query(&mut s, &p, CFG_ID_NAME, 0), b"virtio-keyboard-0");
        let bits = query(&mut s, &p, CFG_EV_BITS, EV_KEY as u8);
        for code in [172u16, 158, 580, 116, 115, 114, 30, 2, 28, 14, 57] {
            assert_ne!(
                bits[usize::from(code / 8)] & (1 << (code % 8)),
                0,
                "key {code}"
            );
        }
        assert!(query(&mut s, &p, CFG_EV_BITS, EV_ABS as u8).is_empty());
        assert!(query(&mut s, &p, CFG_PROP_BITS, 0).is_empty());
    }

    #[test]
    fn writes_beyond_subsel_ignored_and_reads_past_end_are_zero() {
        let p = InputProfile::keyboard();
        let mut s = ConfigSpace::default();
        s.write(0, &[CFG_ID_NAME, 0, 99, 99]);
        let mut size = [0u8];
        s.read(&p, 2, &mut size);
        assert_eq!(size[0] as usize, "virtio-keyboard-0".len());
        s.write(u64::MAX, &[1, 2]);
        let mut tail = [0xffu8; 8];
        s.read(&p, 200, &mut tail);
        assert_eq!(tail, [0; 8]);
    }
}
