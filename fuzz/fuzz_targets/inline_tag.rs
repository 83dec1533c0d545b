//! Fuzzes the inline layout's tag-sector decoder (docs/FORMAT.md §8 "Inline
//! layout"): arbitrary bytes never panic, an all-zero sector is unknown, a
//! valid tag only ever names the block it was encoded for, and every tag
//! round-trips through encode/decode.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vraid::integrity::tag::{decode_tag, encode_tag, Tag, TAG};

fuzz_target!(|input: &[u8]| {
    let block = input
        .get(..8)
        .map_or(0, |b| u64::from_le_bytes(b.try_into().unwrap()));
    let sector = input.get(8..).unwrap_or(&[]);
    let tag = decode_tag(sector, block);
    if sector.len() != TAG as usize {
        assert_eq!(tag, Tag::Invalid);
    }
    if let Tag::Entry(e) = tag {
        assert_ne!(e, 0);
        assert_eq!(decode_tag(sector, block.wrapping_add(1)), Tag::Invalid);
        assert_eq!(&encode_tag(block, e)[..], sector);
    }
    let e = sector.first().map_or(1, |&b| u32::from(b) + 1);
    assert_eq!(decode_tag(&encode_tag(block, e), block), Tag::Entry(e));
});
