use super::*;

const GIB: u64 = 1 << 30;
const TIB: u64 = 1 << 40;

#[test]
fn shift_stays_at_the_bitmap_region_up_to_28_tib_then_coarsens() {
    assert_eq!(written_shift(26, 4 * TIB), 26);
    assert_eq!(written_shift(26, 16 * TIB), 26);
    assert_eq!(written_shift(26, 27 * TIB), 26);
    assert_eq!(written_shift(26, 28 * TIB), 27);
    assert_eq!(written_shift(26, 40 * TIB), 27);
    for size in [GIB, 16 * TIB, 100 * TIB, 1 << 62] {
        let w = WrittenImage::empty(written_shift(26, size), size);
        assert!(w.encode().len() as u64 <= WRITTEN_AREA, "{size}");
    }
}

#[test]
fn round_trips_and_answers_overlaps() {
    let size = 4 * TIB;
    let mut w = WrittenImage::empty(26, size);
    assert!(w.set_range(100 << 20, (100 << 20) + 4096));
    assert!(!w.set_range(64 << 20, 65 << 20));
    let back = WrittenImage::decode(&w.encode(), 26, size).unwrap();
    assert_eq!(back, w);
    assert!(back.is_written(0, (64 << 20) + 1));
    assert!(!back.is_written(0, 64 << 20));
    assert!(!back.is_written(128 << 20, 2 * GIB));
    assert_eq!(back.count(), 1);
}

#[test]
fn bad_images_are_refused_not_trusted() {
    let size = 4 * TIB;
    let mut w = WrittenImage::empty(26, size);
    w.set_range(0, 1);
    let good = w.encode();
    assert_eq!(
        WrittenImage::decode(&vec![0; 8192], 26, size),
        Err(WrittenError::Absent)
    );
    let mut torn = good.clone();
    torn[HEADER + 5] ^= 0x10;
    assert_eq!(
        WrittenImage::decode(&torn, 26, size),
        Err(WrittenError::Crc)
    );
    assert!(matches!(
        WrittenImage::decode(&good, 27, size),
        Err(WrittenError::Shift { .. })
    ));
    assert_eq!(
        WrittenImage::decode(&good[..20], 26, size),
        Err(WrittenError::Short(20))
    );
    let mut magic = good;
    magic[0] = b'X';
    assert_eq!(
        WrittenImage::decode(&magic, 26, size),
        Err(WrittenError::Magic)
    );
}

#[test]
fn set_range_coarsens_to_written_regions_and_missing_says_what_is_not_set() {
    let mut w = WrittenImage::empty(27, 64 * GIB);
    // Bitmap regions 3 and 9 (64 MiB each) fall in written regions 1 and 4.
    assert!(w.set_range(3 << 26, 4 << 26));
    assert!(w.set_range(9 << 26, (9 << 26) + 1));
    assert!(!w.set_range(2 << 26, 3 << 26));
    assert_eq!(w.count(), 2);
    assert!(w.is_written(128 << 20, 129 << 20));
    assert!(w.is_written(4 << 27, (4 << 27) + 1));
    assert!(!w.is_written(0, 128 << 20));
    assert!(!w.missing(128 << 20, 256 << 20));
    assert!(w.missing(128 << 20, (256 << 20) + 1));
    assert!(!w.missing(5, 5));
}

#[test]
fn bytes_count_the_partial_last_region_as_far_as_the_data_goes() {
    let size = 3 * (1 << 26) + 4096;
    let mut w = WrittenImage::empty(26, size);
    w.set_range(0, 1);
    assert_eq!(w.bytes(size), 1 << 26);
    w.set_range(size - 1, size);
    assert_eq!(w.bytes(size), (1 << 26) + 4096);
}

#[test]
fn tail_bits_past_the_last_region_are_ignored() {
    let size = 10 << 26;
    let mut raw = WrittenImage::all_set(26, size).encode();
    // Set bits 10..16 by hand and fix the CRC: still 10 regions.
    raw[HEADER + 1] = 0xFF;
    let c = crc(&raw[..HEADER + 2]);
    raw[12..16].copy_from_slice(&c.to_le_bytes());
    assert_eq!(WrittenImage::decode(&raw, 26, size).unwrap().count(), 10);
}

proptest::proptest! {
    #[test]
    fn decode_never_panics(raw in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..200),
                           shift in 20u32..40, size in 1u64..(1 << 45)) {
        let _ = WrittenImage::decode(&raw, shift, size);
    }

    #[test]
    fn set_ranges_are_written(ranges in proptest::collection::vec((0u64..(1 << 36), 1u64..(1 << 28)), 1..20)) {
        let size = 1u64 << 37;
        let mut w = WrittenImage::empty(26, size);
        for &(a, len) in &ranges {
            w.set_range(a, a + len);
        }
        let back = WrittenImage::decode(&w.encode(), 26, size).unwrap();
        for &(a, len) in &ranges {
            proptest::prop_assert!(back.is_written(a, a + len));
        }
    }
}
