//! The Linux evdev codes our input devices speak (include/uapi/linux/input-event-codes.h) and
//! the key names the API accepts.

pub const EV_SYN: u16 = 0x00;
pub const EV_KEY: u16 = 0x01;
pub const EV_ABS: u16 = 0x03;

pub const SYN_REPORT: u16 = 0;

pub const BTN_TOUCH: u16 = 0x14a;

pub const ABS_X: u16 = 0x00;
pub const ABS_Y: u16 = 0x01;
pub const ABS_MT_SLOT: u16 = 0x2f;
pub const ABS_MT_POSITION_X: u16 = 0x35;
pub const ABS_MT_POSITION_Y: u16 = 0x36;
pub const ABS_MT_TRACKING_ID: u16 = 0x39;

pub const INPUT_PROP_DIRECT: u16 = 0x01;

/// Key names accepted in `{"key": NAME}` and the Linux key codes sent for them. Android's
/// Generic.kl maps 172 to HOME, 158 to BACK and 580 (KEY_APPSELECT) to APP_SWITCH.
pub const KEYS: &[(&str, u16)] = &[
    ("HOME", 172),
    ("BACK", 158),
    ("APPSWITCH", 580),
    ("POWER", 116),
    ("VOLUMEUP", 115),
    ("VOLUMEDOWN", 114),
    ("ENTER", 28),
    ("BACKSPACE", 14),
    ("SPACE", 57),
    ("1", 2),
    ("2", 3),
    ("3", 4),
    ("4", 5),
    ("5", 6),
    ("6", 7),
    ("7", 8),
    ("8", 9),
    ("9", 10),
    ("0", 11),
    ("Q", 16),
    ("W", 17),
    ("E", 18),
    ("R", 19),
    ("T", 20),
    ("Y", 21),
    ("U", 22),
    ("I", 23),
    ("O", 24),
    ("P", 25),
    ("A", 30),
    ("S", 31),
    ("D", 32),
    ("F", 33),
    ("G", 34),
    ("H", 35),
    ("J", 36),
    ("K", 37),
    ("L", 38),
    ("Z", 44),
    ("X", 45),
    ("C", 46),
    ("V", 47),
    ("B", 48),
    ("N", 49),
    ("M", 50),
];

/// The key code for an API key name: case-insensitive, `_` ignored, optional `KEY_` prefix
/// (`"home"`, `"VOLUME_UP"`, `"KEY_A"`).
pub fn key_code(name: &str) -> Option<u16> {
    let norm: String = name
        .chars()
        .filter(|c| *c != '_')
        .collect::<String>()
        .to_ascii_uppercase();
    let norm = norm
        .strip_prefix("KEY")
        .filter(|rest| !rest.is_empty())
        .unwrap_or(&norm);
    KEYS.iter().find(|(n, _)| *n == norm).map(|(_, code)| *code)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_names_normalise() {
        assert_eq!(key_code("HOME"), Some(172));
        assert_eq!(key_code("home"), Some(172));
        assert_eq!(key_code("VOLUME_UP"), Some(115));
        assert_eq!(key_code("KEY_A"), Some(30));
        assert_eq!(key_code("0"), Some(11));
        assert_eq!(key_code("APP_SWITCH"), Some(580));
        assert_eq!(key_code("KEY"), None);
        assert_eq!(key_code("F13"), None);
        assert_eq!(key_code(""), None);
    }

    #[test]
    fn names_and_codes_are_unique() {
        for (i, (n, c)) in KEYS.iter().enumerate() {
            assert!(
                KEYS[i + 1..].iter().all(|(n2, c2)| n2 != n && c2 != c),
                "{n} {c}"
            );
        }
    }
}
