//! Wall-clock time for the status bar and the Clock app (UTC: the test guest has no zone
//! data), and the monotonic microseconds used in report lines.

/// A civil time, to the minute.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WallTime {
    pub year: i64,
    pub month: u32,
    pub day: u32,
    /// 0 = Monday.
    pub weekday: u32,
    pub hour: u32,
    pub minute: u32,
}

const MONTHS: [&str; 12] = [
    "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
];
const WEEKDAYS: [&str; 7] = ["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"];

impl WallTime {
    /// Converts seconds since the Unix epoch (UTC) to a civil time.
    pub fn from_unix(secs: i64) -> Self {
        let days = secs.div_euclid(86_400);
        let rem = secs.rem_euclid(86_400);
        // Days-to-civil (proleptic Gregorian), era-based.
        let z = days + 719_468;
        let era = z.div_euclid(146_097);
        let doe = z.rem_euclid(146_097);
        let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
        let mp = (5 * doy + 2) / 153;
        let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
        let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
        let year = yoe + era * 400 + i64::from(month <= 2);
        // 1970-01-01 was a Thursday (3 with Monday = 0).
        let weekday = (days + 3).rem_euclid(7) as u32;
        WallTime {
            year,
            month,
            day,
            weekday,
            hour: (rem / 3600) as u32,
            minute: (rem % 3600 / 60) as u32,
        }
    }

    /// A fixed time from "HH:MM" (for golden images), on 2026-01-01.
    pub fn parse_hhmm(s: &str) -> Option<Self> {
        let (h, m) = s.split_once(':')?;
        let (hour, minute) = (h.parse::<u32>().ok()?, m.parse::<u32>().ok()?);
        (hour < 24 && minute < 60 && h.len() == 2 && m.len() == 2).then(|| WallTime {
            hour,
            minute,
            ..WallTime::from_unix(1_767_225_600)
        })
    }

    /// "HH:MM".
    pub fn hhmm(&self) -> String {
        format!("{:02}:{:02}", self.hour, self.minute)
    }

    /// "Wed 25 Nov 2026".
    pub fn date(&self) -> String {
        format!(
            "{} {} {} {}",
            WEEKDAYS[self.weekday as usize % 7],
            self.day,
            MONTHS[(self.month as usize + 11) % 12],
            self.year
        )
    }
}

fn clock_now(id: libc::clockid_t) -> libc::timespec {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec into the valid, exclusively borrowed `ts`.
    unsafe { libc::clock_gettime(id, &mut ts) };
    ts
}

/// Seconds and nanoseconds since the epoch (CLOCK_REALTIME).
pub fn realtime() -> (i64, u32) {
    let ts = clock_now(libc::CLOCK_REALTIME);
    (ts.tv_sec, ts.tv_nsec as u32)
}

/// CLOCK_MONOTONIC in microseconds, the time base of `INPUT t_us=` report lines.
pub fn monotonic_us() -> u64 {
    let ts = clock_now(libc::CLOCK_MONOTONIC);
    ts.tv_sec as u64 * 1_000_000 + ts.tv_nsec as u64 / 1000
}

/// Milliseconds from `(secs, nanos)` to the next minute boundary, plus a small margin so the
/// wake-up lands after the minute turned.
pub fn ms_to_next_minute(secs: i64, nanos: u32) -> i32 {
    let into = secs.rem_euclid(60) as i32 * 1000 + (nanos / 1_000_000) as i32;
    60_000 - into + 5
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_dates() {
        let t = WallTime::from_unix(0);
        assert_eq!(
            (t.year, t.month, t.day, t.hour, t.minute),
            (1970, 1, 1, 0, 0)
        );
        assert_eq!(t.date(), "Thu 1 Jan 1970");
        // 2026-11-25 13:26:56 UTC, a Wednesday.
        let t = WallTime::from_unix(1_795_613_216);
        assert_eq!(t.date(), "Wed 25 Nov 2026");
        assert_eq!(t.hhmm(), "13:26");
        // Leap day.
        assert_eq!(WallTime::from_unix(951_782_400).date(), "Tue 29 Feb 2000");
        assert_eq!(WallTime::from_unix(-1).date(), "Wed 31 Dec 1969");
    }

    #[test]
    fn parse_hhmm_validates() {
        assert_eq!(WallTime::parse_hhmm("09:05").unwrap().hhmm(), "09:05");
        for bad in ["24:00", "9:05", "12:60", "ab:cd", "1205", ""] {
            assert!(WallTime::parse_hhmm(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn next_minute_timeout() {
        assert_eq!(ms_to_next_minute(120, 0), 60_005);
        assert_eq!(ms_to_next_minute(179, 999_000_000), 6);
        assert!(monotonic_us() > 0);
    }
}
