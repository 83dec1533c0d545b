//! Fuzzes the write-intent bitmap image decoder: arbitrary member images of
//! any length never panic, never yield a region past the last one, and the
//! decoded image is the OR of the inputs.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vraid::meta::bitmap_image;

fuzz_target!(|data: &[u8]| {
    if data.len() < 4 {
        return;
    }
    let regions = u64::from(u16::from_le_bytes([data[0], data[1]]));
    let area_len = u64::from(data[2]) * 8;
    let split = (data[3] as usize).min(data.len() - 4);
    let (a, b) = data[4..].split_at(split);
    let image = bitmap_image::decode(&[a, b], regions, area_len);
    assert_eq!(image.len(), bitmap_image::image_len(regions, area_len));
    let dirty = bitmap_image::dirty_regions(&image, regions);
    assert!(dirty.iter().all(|&r| r < regions));
    assert!(dirty.windows(2).all(|w| w[0] < w[1]));
    for &r in &dirty {
        let (byte, bit) = ((r / 8) as usize, r % 8);
        let on = |raw: &[u8]| raw.get(byte).is_some_and(|v| v & (1 << bit) != 0);
        assert!(on(a) || on(b), "region {r} set but in neither image");
    }
});
