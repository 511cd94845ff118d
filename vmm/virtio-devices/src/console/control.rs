//! virtio-console multiport control messages (virtio spec 5.3.6.2): 8-byte headers
//! `{id: le32, event: le16, value: le16}`, PORT_NAME followed by the name bytes.

/// Driver -> device: the driver is ready (value 1) or failed (0).
pub const DEVICE_READY: u16 = 0;
/// Device -> driver: a port `id` exists.
pub const DEVICE_ADD: u16 = 1;
/// Driver -> device: port `id` is ready (value 1) or failed (0).
pub const PORT_READY: u16 = 3;
/// Device -> driver: port `id` is a console (becomes an hvc device).
pub const CONSOLE_PORT: u16 = 4;
/// Both ways: a side opened (1) or closed (0) port `id`.
pub const PORT_OPEN: u16 = 6;
/// Device -> driver: the name of port `id` follows the header.
pub const PORT_NAME: u16 = 7;

/// Size of the control message header.
pub const HEADER_LEN: usize = 8;

/// One decoded control message from the driver.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ControlMsg {
    /// Port number.
    pub id: u32,
    /// Event code.
    pub event: u16,
    /// Event value.
    pub value: u16,
}

impl ControlMsg {
    /// Decode a driver message; None if shorter than a header (hostile or broken driver).
    pub fn parse(bytes: &[u8]) -> Option<Self> {
        let header = bytes.get(..HEADER_LEN)?;
        Some(Self {
            id: u32::from_le_bytes(header[0..4].try_into().ok()?),
            event: u16::from_le_bytes(header[4..6].try_into().ok()?),
            value: u16::from_le_bytes(header[6..8].try_into().ok()?),
        })
    }

    /// Encode a device message, with `payload` (the port name) appended.
    pub fn encode(id: u32, event: u16, value: u16, payload: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(HEADER_LEN + payload.len());
        out.extend_from_slice(&id.to_le_bytes());
        out.extend_from_slice(&event.to_le_bytes());
        out.extend_from_slice(&value.to_le_bytes());
        out.extend_from_slice(payload);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_short_input() {
        let bytes = ControlMsg::encode(3, PORT_NAME, 1, b"logcat");
        assert_eq!(bytes.len(), 14);
        assert_eq!(
            ControlMsg::parse(&bytes),
            Some(ControlMsg {
                id: 3,
                event: PORT_NAME,
                value: 1
            })
        );
        assert_eq!(ControlMsg::parse(&bytes[..7]), None);
    }
}
