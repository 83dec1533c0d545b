//! A write smaller than a 4 KiB block, its edge read *beside* its data
//! write (issue 10, docs/FORMAT.md §8 "Writes", cases 155-157).
//!
//! ```text
//!  serial:  read edge ─► verify ─► write 1 KiB ─► entry    (read + write)
//!  beside:  read edge ─┐
//!           write 1 KiB ┴► verify the read ─► overlay ─► entry  (max)
//! ```
//!
//! The checksum layer needs the whole block to know its new CRC. The bytes
//! outside the write cannot change meanwhile (the RAID layer's block locks:
//! no other writer), so a read issued together with the write returns them
//! right whatever the order; the written range of the read is replaced by
//! the new bytes. What the race costs is the *verdict* on the old block:
//! a read that saw some of the new bytes does not hash to the old entry
//! although the old block was good. [`saw_new`] tells the cases apart: a
//! mismatching read none of whose 64-byte pieces of the written range
//! equals the new bytes read the old block (it is bad, as in the serial
//! path); one that does may have raced and is sealed as good (counted:
//! [`raced`]). Only writes of whole 512-byte sectors go beside (others
//! are read-modify-written by the member itself).
//!
//! **Off by default** (`VRAID_EDGE_BESIDE=1` turns it on): on a disk
//! member at queue depth 1 the serial read and write each run inline on
//! the caller's thread (`member/lone.rs`), while the pair sent at once goes
//! to the ring (two requests begun: not lone), and the hand-offs cost more
//! than the overlap saves (session 18, benches/qd1-latency.sh at load 8:
//! 312 vs 241 us). It pays once the write can run inline with the read on
//! the ring (not built).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::OnceLock;

/// Environment variable: `0` keeps sub-block writes serial.
pub const ENV: &str = "VRAID_EDGE_BESIDE";

/// Sector size a write must be made of to go beside its read.
const SECTOR: u64 = 512;

/// Piece size compared by [`saw_new`] (a racing copy is seen in pieces
/// at least this large... or larger: any equal piece counts).
const PIECE: usize = 64;

/// Edge reads issued beside their write (process-wide; tests).
#[cfg_attr(not(test), allow(dead_code))]
static BESIDE: AtomicU64 = AtomicU64::new(0);
/// Mismatching edge reads that may have seen the new bytes (sealed good).
static RACED: AtomicU64 = AtomicU64::new(0);

/// Set by tests: sub-block writes go beside whatever the environment says.
static FORCED: AtomicBool = AtomicBool::new(false);

/// Whether sub-block writes go beside their reads (`VRAID_EDGE_BESIDE=1`,
/// read once; default off).
pub fn enabled() -> bool {
    static ON: OnceLock<bool> = OnceLock::new();
    FORCED.load(Ordering::Relaxed) || *ON.get_or_init(|| std::env::var(ENV).is_ok_and(|v| v == "1"))
}

/// Turns the beside path on for this process (tests).
#[cfg(test)]
pub fn force_on() {
    FORCED.store(true, Ordering::Relaxed);
}

/// Whether a write of `len` bytes at `offset` may go beside its edge reads.
pub fn fits(offset: u64, len: usize) -> bool {
    enabled() && offset.is_multiple_of(SECTOR) && (len as u64).is_multiple_of(SECTOR)
}

/// True when some [`PIECE`]-byte piece of `read` (the written range of an
/// edge read) equals the same piece of `new`: the read may have seen the
/// write's bytes, so a mismatch with the old entry proves nothing.
pub fn saw_new(read: &[u8], new: &[u8]) -> bool {
    debug_assert_eq!(read.len(), new.len());
    read.chunks(PIECE)
        .zip(new.chunks(PIECE))
        .any(|(a, b)| a == b)
}

/// Counts one edge read issued beside its write.
pub fn count_beside() {
    BESIDE.fetch_add(1, Ordering::Relaxed);
}

/// Counts one mismatching edge read taken for a race.
pub fn count_raced() {
    RACED.fetch_add(1, Ordering::Relaxed);
}

/// Edge reads issued beside their writes so far (process-wide).
#[cfg(test)]
pub fn beside() -> u64 {
    BESIDE.load(Ordering::Relaxed)
}

/// Mismatching edge reads taken for a race so far (process-wide).
#[cfg(test)]
pub fn raced() -> u64 {
    RACED.load(Ordering::Relaxed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn saw_new_finds_any_equal_piece() {
        let new = vec![7u8; 1024];
        let mut read = vec![1u8; 1024];
        assert!(!saw_new(&read, &new));
        // One sector of the new bytes (the read raced the write there).
        read[512..1024].copy_from_slice(&new[512..]);
        assert!(saw_new(&read, &new));
        // A torn copy: one piece new, the rest old.
        let mut torn = vec![1u8; 1024];
        torn[64..128].copy_from_slice(&new[64..128]);
        assert!(saw_new(&torn, &new));
    }

    #[test]
    fn only_whole_sectors_fit() {
        force_on();
        assert!(!fits(100, 1024));
        assert!(!fits(512, 100));
        assert!(fits(1024, 1024));
    }
}
