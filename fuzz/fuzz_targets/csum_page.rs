//! Fuzzes the checksum-page decoder (docs/FORMAT.md §8) and verification of
//! a data buffer against the decoded entries: arbitrary page bytes and data
//! must never panic, a page round-trips through encode/decode, and unknown
//! (zero) entries never flag a block.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vraid::integrity::page::{bad_blocks, decode_page, encode_page, PAGE_BYTES, UNKNOWN};

fuzz_target!(|input: &[u8]| {
    let split = input.len().min(PAGE_BYTES);
    let (page, data) = input.split_at(split);
    let entries = decode_page(page);
    assert_eq!(entries.len(), PAGE_BYTES / 4);
    let encoded = encode_page(&entries);
    assert_eq!(&encoded[..page.len() / 4 * 4], &page[..page.len() / 4 * 4]);
    assert_eq!(decode_page(&encoded), entries);
    let bad = bad_blocks(&entries, data);
    assert!(bad.iter().all(|&i| entries[i] != UNKNOWN));
    assert!(bad.windows(2).all(|w| w[0] < w[1]));
});
