//! The inline layout's tag sector (docs/FORMAT.md §8 "Inline layout"), as
//! pure functions: where a logical block and its tag lie on the member, and
//! the 512-byte tag codec.
//!
//! ```text
//!  logical block i ─► member data area [4608 i, 4608 i + 4096) data
//!                                      [4608 i + 4096, 4608 (i + 1)) tag
//!  tag: magic "VRTG" | version u16 | 0 | ref u64 | crc u32 | 0… | tag_crc u32
//! ```
//!
//! [`decode_tag`] parses untrusted bytes: it never panics.

use super::page::{BLOCK, UNKNOWN};

/// Bytes of one tag sector.
pub const TAG: u64 = 512;
/// Bytes one logical block takes on the member (data + tag).
pub const STRIDE: u64 = BLOCK + TAG;

const MAGIC: [u8; 4] = *b"VRTG";
const VERSION: u16 = 1;
const REF_AT: usize = 8;
const CRC_AT: usize = 16;
const RESERVED_AT: usize = 20;
const TAG_CRC_AT: usize = TAG as usize - 4;

/// Member bytes holding `logical` bytes of data (whole blocks).
pub fn physical_len(logical: u64) -> u64 {
    logical / BLOCK * STRIDE
}

/// Logical data bytes that `physical` member bytes hold (whole blocks).
pub fn logical_len(physical: u64) -> u64 {
    physical / STRIDE * BLOCK
}

/// The logical data-area offset that member data-area byte `physical`
/// stands for: a tag byte maps to the end of its block.
pub fn logical_of(physical: u64) -> u64 {
    physical / STRIDE * BLOCK + (physical % STRIDE).min(BLOCK)
}

/// What a tag sector says about its block.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tag {
    /// All zero, or a valid tag with `crc` 0: no checksum known.
    Unknown,
    /// A valid tag for this block: its entry (a sealed CRC32).
    Entry(u32),
    /// Anything else (damaged, foreign, or another block's: misdirected).
    Invalid,
}

/// The tag sector of logical block `block` whose entry is `entry`.
pub fn encode_tag(block: u64, entry: u32) -> [u8; TAG as usize] {
    let mut t = [0u8; TAG as usize];
    t[..4].copy_from_slice(&MAGIC);
    t[4..6].copy_from_slice(&VERSION.to_le_bytes());
    t[REF_AT..REF_AT + 8].copy_from_slice(&block.to_le_bytes());
    t[CRC_AT..CRC_AT + 4].copy_from_slice(&entry.to_le_bytes());
    let crc = crc32fast::hash(&t[..TAG_CRC_AT]);
    t[TAG_CRC_AT..].copy_from_slice(&crc.to_le_bytes());
    t
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// Decodes the tag sector `bytes` found after logical block `block`; a
/// buffer that is not one sector long is [`Tag::Invalid`].
pub fn decode_tag(bytes: &[u8], block: u64) -> Tag {
    if bytes.len() != TAG as usize {
        return Tag::Invalid;
    }
    if bytes.iter().all(|&b| b == 0) {
        return Tag::Unknown;
    }
    let mut r = [0u8; 8];
    r.copy_from_slice(&bytes[REF_AT..REF_AT + 8]);
    let valid = bytes[..4] == MAGIC
        && bytes[4..6] == VERSION.to_le_bytes()
        && bytes[6..REF_AT].iter().all(|&b| b == 0)
        && bytes[RESERVED_AT..TAG_CRC_AT].iter().all(|&b| b == 0)
        && u32_at(bytes, TAG_CRC_AT) == crc32fast::hash(&bytes[..TAG_CRC_AT])
        && u64::from_le_bytes(r) == block;
    match (valid, u32_at(bytes, CRC_AT)) {
        (false, _) => Tag::Invalid,
        (true, UNKNOWN) => Tag::Unknown,
        (true, e) => Tag::Entry(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_round_trip_and_zero_is_unknown() {
        assert_eq!(decode_tag(&encode_tag(7, 0x1234), 7), Tag::Entry(0x1234));
        assert_eq!(decode_tag(&encode_tag(7, UNKNOWN), 7), Tag::Unknown);
        assert_eq!(decode_tag(&[0u8; 512], 3), Tag::Unknown);
    }

    #[test]
    fn another_blocks_tag_or_a_flipped_bit_is_invalid() {
        assert_eq!(decode_tag(&encode_tag(7, 5), 8), Tag::Invalid);
        for bit in [0, 8 * 9, 8 * 17, 8 * 300, 8 * 510] {
            let mut t = encode_tag(7, 5);
            t[bit / 8] ^= 1 << (bit % 8);
            assert_eq!(decode_tag(&t, 7), Tag::Invalid, "bit {bit}");
        }
        assert_eq!(decode_tag(&encode_tag(7, 5)[..511], 7), Tag::Invalid);
    }

    #[test]
    fn layout_arithmetic() {
        assert_eq!(physical_len(8 * BLOCK), 8 * STRIDE);
        assert_eq!(logical_len(8 * STRIDE + 4000), 8 * BLOCK);
        assert_eq!(logical_of(STRIDE + 10), BLOCK + 10);
        assert_eq!(logical_of(STRIDE + BLOCK + 10), 2 * BLOCK);
    }
}
