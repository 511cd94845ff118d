//! Decoding of the virtio-pci common configuration structure (virtio spec 4.1.4.3).
//!
//! Each field may only be accessed at its own offset with its own width; 64-bit fields also
//! as two 32-bit halves (what Linux does). Anything else is logged and ignored: the guest
//! is not trusted.

/// One field of `struct virtio_pci_common_cfg`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Field {
    DeviceFeatureSelect,
    DeviceFeature,
    DriverFeatureSelect,
    DriverFeature,
    ConfigMsixVector,
    NumQueues,
    DeviceStatus,
    ConfigGeneration,
    QueueSelect,
    QueueSize,
    QueueMsixVector,
    QueueEnable,
    QueueNotifyOff,
    QueueDesc(Part),
    QueueDriver(Part),
    QueueDevice(Part),
}

/// Which part of a 64-bit field an access covers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Part {
    Low,
    High,
    Full,
}

/// Bytes of the common configuration structure we implement (up to queue_device).
pub(crate) const COMMON_CFG_LEN: u32 = 0x38;

/// Map an access of `len` bytes at `offset` to its field.
pub(crate) fn decode(offset: u64, len: usize) -> Option<Field> {
    use Field::*;
    let wide = |make: fn(Part) -> Field, base: u64| match (offset - base, len) {
        (0, 4) => Some(make(Part::Low)),
        (4, 4) => Some(make(Part::High)),
        (0, 8) => Some(make(Part::Full)),
        _ => None,
    };
    let (field, width) = match offset {
        0x00 => (DeviceFeatureSelect, 4),
        0x04 => (DeviceFeature, 4),
        0x08 => (DriverFeatureSelect, 4),
        0x0c => (DriverFeature, 4),
        0x10 => (ConfigMsixVector, 2),
        0x12 => (NumQueues, 2),
        0x14 => (DeviceStatus, 1),
        0x15 => (ConfigGeneration, 1),
        0x16 => (QueueSelect, 2),
        0x18 => (QueueSize, 2),
        0x1a => (QueueMsixVector, 2),
        0x1c => (QueueEnable, 2),
        0x1e => (QueueNotifyOff, 2),
        0x20..0x28 => return wide(QueueDesc, 0x20),
        0x28..0x30 => return wide(QueueDriver, 0x28),
        0x30..0x38 => return wide(QueueDevice, 0x30),
        _ => return None,
    };
    (len == width).then_some(field)
}

/// Replace the `part` of a 64-bit register with `value`.
pub(crate) fn merge64(old: u64, part: Part, value: u64) -> u64 {
    match part {
        Part::Low => (old & !0xffff_ffff) | (value & 0xffff_ffff),
        Part::High => (old & 0xffff_ffff) | (value << 32),
        Part::Full => value,
    }
}

/// Read the `part` of a 64-bit register.
pub(crate) fn extract64(value: u64, part: Part) -> u64 {
    match part {
        Part::Low => value & 0xffff_ffff,
        Part::High => value >> 32,
        Part::Full => value,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decode_accepts_only_natural_accesses() {
        assert_eq!(decode(0x14, 1), Some(Field::DeviceStatus));
        assert_eq!(decode(0x14, 2), None);
        assert_eq!(decode(0x13, 1), None);
        assert_eq!(decode(0x16, 2), Some(Field::QueueSelect));
        assert_eq!(decode(0x24, 4), Some(Field::QueueDesc(Part::High)));
        assert_eq!(decode(0x28, 8), Some(Field::QueueDriver(Part::Full)));
        assert_eq!(decode(0x2c, 8), None);
        assert_eq!(decode(0x22, 2), None);
        assert_eq!(decode(0x38, 2), None);
        assert_eq!(decode(u64::MAX, 4), None);
    }

    #[test]
    fn halves_merge() {
        let v = merge64(0, Part::Low, 0x1234_5678);
        let v = merge64(v, Part::High, 0x9);
        assert_eq!(v, 0x9_1234_5678);
        assert_eq!(extract64(v, Part::High), 9);
        assert_eq!(extract64(v, Part::Low), 0x1234_5678);
    }
}
