//! Fuzzes the written-region map decoder (docs/FORMAT.md §10): arbitrary
//! member images never panic; an image that decodes re-encodes to bytes
//! that decode to the same image, and every bit it sets covers a region
//! that starts inside the data area.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vraid::meta::written::{written_shift, WrittenImage};

fuzz_target!(|data: &[u8]| {
    if data.len() < 3 {
        return;
    }
    // Data areas from 1 MiB to 2^47 bytes, the bitmap shift 20..=40.
    let data_size = (u64::from(u16::from_le_bytes([data[0], data[1]])) + 1) << 20 << (data[2] % 12);
    let shift = written_shift(20 + u32::from(data[2] % 21), data_size);
    let raw = &data[3..];
    let Ok(image) = WrittenImage::decode(raw, shift, data_size) else {
        return;
    };
    let again = WrittenImage::decode(&image.encode(), shift, data_size).expect("own encoding");
    assert_eq!(again, image);
    assert!(image.bytes(data_size) <= data_size);
    // No bit past the last region (which may be partial: it ends at
    // data_size rounded up to a region).
    let end = data_size.next_multiple_of(1 << shift);
    assert!(!image.is_written(end, end + (1 << shift)));
});
