//! Device config space helper shared by the gpu and input devices.

/// Copy `data.len()` bytes of a config image at `offset`; bytes past its end read as zero.
pub(crate) fn read_config_bytes(image: &[u8], offset: u64, data: &mut [u8]) {
    data.fill(0);
    let Ok(start) = usize::try_from(offset) else {
        return;
    };
    if let Some(src) = image.get(start..) {
        let n = src.len().min(data.len());
        data[..n].copy_from_slice(&src[..n]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_are_clipped_and_zero_filled() {
        let image = [1u8, 2, 3, 4];
        let mut out = [0xffu8; 4];
        read_config_bytes(&image, 2, &mut out);
        assert_eq!(out, [3, 4, 0, 0]);
        read_config_bytes(&image, u64::MAX, &mut out);
        assert_eq!(out, [0; 4]);
    }
}
