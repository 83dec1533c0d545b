//! Fuzzes the superblock decoder: never panics, and whatever it accepts
//! re-encodes to the same bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vraid::meta::superblock::Superblock;

fuzz_target!(|data: &[u8]| {
    if let Ok(sb) = Superblock::decode(data) {
        assert_eq!(&sb.encode()[..], data, "accepted block does not re-encode identically");
    }
});
