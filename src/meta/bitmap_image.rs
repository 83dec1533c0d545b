//! Decoding of on-disk write-intent bitmap images (docs/FORMAT.md §1, §6):
//! pure functions over untrusted bytes, shared by assembly
//! ([`super::bitmap::DiskBitmap::load`]) and `vraid examine`, and fuzzed
//! (`fuzz/fuzz_targets/bitmap.rs`).
//!
//! ```text
//!  member A image ─┐
//!  member B image ─┼─ OR ─► mask bits >= regions ─► dirty region list
//!  (short/garbage) ┘
//! ```

/// Bytes of image needed for `regions` regions, capped at the area length.
pub fn image_len(regions: u64, area_len: u64) -> usize {
    let bytes = regions.div_ceil(8).min(area_len);
    usize::try_from(bytes).unwrap_or(usize::MAX)
}

/// ORs `raw` (one member's image, any length) into `image`, ignoring bytes
/// beyond `image` and treating missing bytes as zero.
pub fn merge_into(image: &mut [u8], raw: &[u8]) {
    image.iter_mut().zip(raw).for_each(|(a, b)| *a |= b);
}

/// Clears every bit at or past `regions` (bits past the last region carry
/// no meaning and may be garbage on disk).
pub fn mask_tail(image: &mut [u8], regions: u64) {
    let total = image.len() as u64 * 8;
    for r in regions.min(total)..total {
        let (byte, bit) = ((r / 8) as usize, r % 8);
        image[byte] &= !(1 << bit);
    }
}

/// Region indexes whose bit is set, in increasing order.
pub fn dirty_regions(image: &[u8], regions: u64) -> Vec<u64> {
    let mut out = Vec::new();
    for (i, &b) in image.iter().enumerate() {
        if b == 0 {
            continue;
        }
        for bit in 0..8u64 {
            let r = i as u64 * 8 + bit;
            if r < regions && b & (1 << bit) != 0 {
                out.push(r);
            }
        }
    }
    out
}

/// The merged, masked image of several members' raw images.
pub fn decode(raws: &[&[u8]], regions: u64, area_len: u64) -> Vec<u8> {
    let mut image = vec![0u8; image_len(regions, area_len)];
    for raw in raws {
        merge_into(&mut image, raw);
    }
    mask_tail(&mut image, regions);
    image
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decode_ors_images_and_drops_bits_past_the_last_region() {
        let a = [0b0000_0001u8, 0xFF];
        let b = [0b1000_0000u8];
        let image = decode(&[&a, &b], 10, 4096);
        assert_eq!(image, vec![0b1000_0001, 0b0000_0011]);
        assert_eq!(dirty_regions(&image, 10), vec![0, 7, 8, 9]);
    }

    #[test]
    fn short_and_empty_images_decode_as_clean() {
        let image = decode(&[&[], &[0xFF][..0]], 100, 4096);
        assert_eq!(image.len(), 13);
        assert!(dirty_regions(&image, 100).is_empty());
    }

    #[test]
    fn image_length_is_capped_by_the_area() {
        assert_eq!(image_len(1 << 40, 4096), 4096);
        assert_eq!(image_len(0, 4096), 0);
    }
}
