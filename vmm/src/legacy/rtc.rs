//! CMOS RTC at 0x70/0x71: the current UTC date and time in BCD, plus 128 bytes of NVRAM.

use std::time::{SystemTime, UNIX_EPOCH};

use crate::bus::BusDevice;

/// Index port (data at +1).
pub const CMOS_PORT: u16 = 0x70;
/// Ports covered.
pub const CMOS_LEN: u16 = 2;

const REG_SECONDS: usize = 0x00;
const REG_MINUTES: usize = 0x02;
const REG_HOURS: usize = 0x04;
const REG_WEEKDAY: usize = 0x06;
const REG_DAY: usize = 0x07;
const REG_MONTH: usize = 0x08;
const REG_YEAR: usize = 0x09;
const REG_A: usize = 0x0a;
const REG_B: usize = 0x0b;
const REG_C: usize = 0x0c;
const REG_D: usize = 0x0d;
const REG_CENTURY: usize = 0x32;
const B_24H: u8 = 0x02;
const D_VALID_RAM_AND_TIME: u8 = 0x80;

/// Calendar fields of a UTC timestamp.
#[derive(Debug, PartialEq, Eq)]
pub struct DateTime {
    /// Full year (e.g. 2026).
    pub year: u32,
    /// 1..=12.
    pub month: u32,
    /// 1..=31.
    pub day: u32,
    /// 0..=23.
    pub hour: u32,
    /// 0..=59.
    pub minute: u32,
    /// 0..=59.
    pub second: u32,
    /// 1 = Sunday .. 7 = Saturday (CMOS convention).
    pub weekday: u32,
}

/// Convert seconds since the Unix epoch to a UTC calendar date (days-to-civil algorithm).
pub fn datetime_from_unix(secs: u64) -> DateTime {
    let days = secs / 86_400;
    let rem = secs % 86_400;
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = (yoe + era * 400 + i64::from(month <= 2)) as u32;
    DateTime {
        year,
        month,
        day,
        hour: (rem / 3600) as u32,
        minute: (rem % 3600 / 60) as u32,
        second: (rem % 60) as u32,
        // 1970-01-01 was a Thursday (5 in 1 = Sunday numbering).
        weekday: ((days + 4) % 7 + 1) as u32,
    }
}

fn bcd(v: u32) -> u8 {
    (((v / 10) % 10) << 4 | (v % 10)) as u8
}

/// The CMOS chip.
pub struct Cmos {
    index: usize,
    nvram: [u8; 128],
}

impl Default for Cmos {
    fn default() -> Self {
        Self::new()
    }
}

/// The CMOS index register and NVRAM, for snapshots (the clock itself is always the host's).
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct CmosState {
    /// Selected register.
    pub index: u8,
    /// 128 bytes of NVRAM.
    pub nvram: Vec<u8>,
}

impl Default for CmosState {
    fn default() -> Self {
        Cmos::new().state()
    }
}

impl Cmos {
    /// A CMOS with empty NVRAM.
    pub fn new() -> Self {
        Self {
            index: 0,
            nvram: [0; 128],
        }
    }

    /// The NVRAM and index, for a snapshot.
    pub fn state(&self) -> CmosState {
        CmosState {
            index: self.index as u8,
            nvram: self.nvram.to_vec(),
        }
    }

    /// A CMOS in `state`; a state that is not 128 bytes of NVRAM is refused.
    pub fn restored(state: &CmosState) -> Result<Self, String> {
        let nvram = state
            .nvram
            .as_slice()
            .try_into()
            .map_err(|_| format!("CMOS NVRAM of {} bytes (want 128)", state.nvram.len()))?;
        Ok(Self {
            index: usize::from(state.index & 0x7f),
            nvram,
        })
    }

    fn read_register(&self, index: usize) -> u8 {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let t = datetime_from_unix(now);
        match index {
            REG_SECONDS => bcd(t.second),
            REG_MINUTES => bcd(t.minute),
            REG_HOURS => bcd(t.hour),
            REG_WEEKDAY => bcd(t.weekday),
            REG_DAY => bcd(t.day),
            REG_MONTH => bcd(t.month),
            REG_YEAR => bcd(t.year % 100),
            REG_CENTURY => bcd(t.year / 100),
            REG_A => 0x26, // 32.768 kHz base, 1024 Hz rate, no update in progress
            REG_B => B_24H,
            REG_C => 0,
            REG_D => D_VALID_RAM_AND_TIME,
            i => self.nvram[i],
        }
    }
}

impl BusDevice for Cmos {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        data.fill(0xff);
        if let ([b], 1) = (data, offset) {
            *b = self.read_register(self.index);
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let Some(&v) = data.first() else { return };
        match offset {
            0 => self.index = usize::from(v & 0x7f),
            _ if self.index > REG_D && self.index != REG_CENTURY => self.nvram[self.index] = v,
            // Clock and control registers are read-only here.
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unix_to_date() {
        assert_eq!(
            datetime_from_unix(0),
            DateTime {
                year: 1970,
                month: 1,
                day: 1,
                hour: 0,
                minute: 0,
                second: 0,
                weekday: 5
            }
        );
        // 2026-11-25 13:26:56 UTC, a Wednesday.
        let t = datetime_from_unix(1_795_613_216);
        assert_eq!((t.year, t.month, t.day), (2026, 11, 25));
        assert_eq!((t.hour, t.minute, t.second, t.weekday), (13, 26, 56, 4));
        let leap = datetime_from_unix(951_782_400); // 2000-02-29
        assert_eq!((leap.year, leap.month, leap.day), (2000, 2, 29));
    }

    #[test]
    fn registers_through_ports() {
        let mut c = Cmos::new();
        let mut b = [0u8];
        c.write(0, &[0x80 | REG_D as u8]); // NMI-disable bit is masked off
        c.read(1, &mut b);
        assert_eq!(b[0], D_VALID_RAM_AND_TIME);
        c.write(0, &[REG_CENTURY as u8]);
        c.read(1, &mut b);
        assert_eq!(b[0], 0x20);
        c.write(0, &[0x40]);
        c.write(1, &[0x5a]);
        c.read(1, &mut b);
        assert_eq!(b[0], 0x5a);
        c.write(0, &[REG_B as u8]);
        c.write(1, &[0xff]);
        c.read(1, &mut b);
        assert_eq!(b[0], B_24H);
    }
}
