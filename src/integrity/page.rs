//! The checksum-page format (docs/FORMAT.md §8), as pure functions: one
//! little-endian `u32` per 4 KiB data block, 1024 entries per 4 KiB page.
//!
//! Entry 0 means "no checksum known" (the block is not verified); a real
//! CRC32 of 0 is stored as 1, and 1 verifies both ([`seal`]).

/// Bytes of data one entry covers.
pub const BLOCK: u64 = 4096;
/// Bytes of one checksum page.
pub const PAGE_BYTES: usize = 4096;
/// Entries in one checksum page.
pub const PAGE_ENTRIES: usize = PAGE_BYTES / 4;
/// The entry value that means "not known".
pub const UNKNOWN: u32 = 0;

/// The 4 KiB-aligned hull of `offset..offset + len`, as block numbers.
pub fn hull(offset: u64, len: u64) -> (u64, u64) {
    (offset / BLOCK, (offset + len).div_ceil(BLOCK))
}

/// A CRC32 as stored: never 0 (which means unknown).
pub fn seal(crc: u32) -> u32 {
    crc.max(1)
}

/// The stored entry for one data block.
pub fn block_entry(block: &[u8]) -> u32 {
    seal(crc32fast::hash(block))
}

/// The stored entry of a block of zeroes (discard, write-zeroes).
pub fn zero_entry() -> u32 {
    static ZERO: std::sync::OnceLock<u32> = std::sync::OnceLock::new();
    *ZERO.get_or_init(|| block_entry(&[0u8; BLOCK as usize]))
}

/// Entries of every whole block of `data` (its length a multiple of 4 KiB;
/// a short tail block is hashed as it is).
pub fn entries_of(data: &[u8]) -> Vec<u32> {
    data.chunks(BLOCK as usize).map(block_entry).collect()
}

/// Decodes a checksum page; missing bytes (a short page) decode as unknown.
pub fn decode_page(bytes: &[u8]) -> Vec<u32> {
    let mut out = vec![UNKNOWN; PAGE_ENTRIES];
    for (e, b) in out.iter_mut().zip(bytes.chunks_exact(4)) {
        *e = u32::from_le_bytes([b[0], b[1], b[2], b[3]]);
    }
    out
}

/// Encodes entries into a page image (missing entries are unknown).
pub fn encode_page(entries: &[u32]) -> Vec<u8> {
    let mut out = vec![0u8; PAGE_BYTES];
    for (b, e) in out.chunks_exact_mut(4).zip(entries) {
        b.copy_from_slice(&e.to_le_bytes());
    }
    out
}

/// Does `block` match `entry`? An unknown entry matches anything.
pub fn matches(entry: u32, block: &[u8]) -> bool {
    entry == UNKNOWN || entry == block_entry(block)
}

/// Indexes of the blocks of `data` that fail their entry (`entries[i]`
/// covers the i-th 4 KiB block; blocks without an entry are not checked).
pub fn bad_blocks(entries: &[u32], data: &[u8]) -> Vec<usize> {
    data.chunks(BLOCK as usize)
        .zip(entries)
        .enumerate()
        .filter(|(_, (block, &e))| !matches(e, block))
        .map(|(i, _)| i)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seal_maps_zero_to_one_and_one_verifies_both() {
        assert_eq!(seal(0), 1);
        assert_eq!(seal(1), 1);
        assert_eq!(seal(7), 7);
    }

    #[test]
    fn page_round_trips_and_short_pages_are_unknown() {
        let entries: Vec<u32> = (0..PAGE_ENTRIES as u32).map(|i| i * 31 + 1).collect();
        assert_eq!(decode_page(&encode_page(&entries)), entries);
        let short = decode_page(&encode_page(&entries)[..10]);
        assert_eq!(&short[..2], &entries[..2]);
        assert!(short[2..].iter().all(|&e| e == UNKNOWN));
    }

    #[test]
    fn bad_blocks_skips_unknown_entries_and_finds_flips() {
        let mut data = vec![7u8; 3 * BLOCK as usize];
        let mut entries = entries_of(&data);
        entries[2] = UNKNOWN;
        data[5] ^= 1;
        data[2 * BLOCK as usize] ^= 1;
        assert_eq!(bad_blocks(&entries, &data), vec![0]);
    }

    #[test]
    fn zero_entry_is_the_entry_of_zeroes() {
        assert_eq!(zero_entry(), block_entry(&[0u8; 4096]));
    }
}
