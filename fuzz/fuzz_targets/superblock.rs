//! Fuzzes the superblock decoder: never panics, and whatever it accepts
//! re-encodes to the same bytes. Half the inputs are padded to 4 KiB and
//! given a valid magic and CRC, so the field checks run.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vraid::meta::superblock::{reseal, Superblock, SUPERBLOCK_SIZE};

fuzz_target!(|raw: &[u8]| {
    let mut owned = raw.to_vec();
    if raw.first().is_some_and(|b| b & 1 == 1) {
        owned.resize(SUPERBLOCK_SIZE, 0);
        reseal(&mut owned);
    }
    let data = &owned[..];
    if let Ok(sb) = Superblock::decode(data) {
        assert_eq!(
            &sb.encode()[..],
            data,
            "accepted block does not re-encode identically"
        );
    }
});
