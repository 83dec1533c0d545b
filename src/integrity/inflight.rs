//! [`Inflight`]: which blocks of a member have a write (or discard, zeroes,
//! lost mark) in flight or just ended, so a read that met a checksum
//! mismatch can tell a racing write from a corrupt block (§8 "Reads").
//!
//! ```text
//!  write ─► begin(b0..b1): writing += 1 ─► data, entries ─► ended += 1, writing -= 1
//!  read mismatch ─► quiet(b0..b1)? (no writing; ended = s) ─► read again
//!                   ─► still bad and quiet(b0..b1) = s ─► corrupt
//!                   └► a write began or ended meanwhile ─► again (bounded)
//! ```
//!
//! Readers take no lock, and a write changes the data before its entries:
//! a read between the two sees new bytes and an old entry. One more read
//! was not enough with several writers of one 4 KiB block (sub-block
//! writes of different clients, each 512 bytes of its own; session 18 red
//! team): both reads could fall between some write's data and entries,
//! and a good block failed with EIO. A read now counts as proof of
//! corruption only if no write of the bad blocks was in flight or ended
//! while it ran. Blocks map to a fixed table of slots by 64 KiB group
//! (no memory per block): blocks sharing a slot only cost a read more.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering::SeqCst};

/// Slots of the table.
const SLOTS: usize = 256;
/// Blocks (4 KiB) per slot group: a 1 MiB write touches 16 slots.
const GROUP: u64 = 16;

/// Writes in flight and ended, per slot of blocks.
#[derive(Debug)]
pub(crate) struct Inflight {
    writing: [AtomicU32; SLOTS],
    ended: [AtomicU64; SLOTS],
}

impl Default for Inflight {
    fn default() -> Self {
        Inflight {
            writing: std::array::from_fn(|_| AtomicU32::new(0)),
            ended: std::array::from_fn(|_| AtomicU64::new(0)),
        }
    }
}

/// The slots of blocks `b0..b1`, each once.
fn slots(b0: u64, b1: u64) -> impl Iterator<Item = usize> {
    let (g0, g1) = (b0 / GROUP, b1.div_ceil(GROUP));
    let n = (g1 - g0).min(SLOTS as u64);
    (g0..g0 + n).map(|g| (g % SLOTS as u64) as usize)
}

impl Inflight {
    /// Marks blocks `b0..b1` written until the guard is dropped.
    pub(crate) fn begin(&self, b0: u64, b1: u64) -> Writing<'_> {
        for s in slots(b0, b1) {
            self.writing[s].fetch_add(1, SeqCst);
        }
        Writing {
            table: self,
            b0,
            b1,
        }
    }

    /// `None` while a write of blocks `b0..b1` is in flight; else a stamp
    /// that changes when one ends.
    pub(crate) fn quiet(&self, b0: u64, b1: u64) -> Option<u64> {
        let mut stamp = 0u64;
        for s in slots(b0, b1) {
            if self.writing[s].load(SeqCst) != 0 {
                return None;
            }
            stamp = stamp.wrapping_add(self.ended[s].load(SeqCst));
        }
        Some(stamp)
    }
}

/// Blocks marked written ([`Inflight::begin`]).
pub(crate) struct Writing<'a> {
    table: &'a Inflight,
    b0: u64,
    b1: u64,
}

impl Drop for Writing<'_> {
    fn drop(&mut self) {
        for s in slots(self.b0, self.b1) {
            // Ended first: a reader that sees no writer then sees the end.
            self.table.ended[s].fetch_add(1, SeqCst);
            self.table.writing[s].fetch_sub(1, SeqCst);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_write_in_flight_or_ended_changes_what_a_reader_sees() {
        let t = Inflight::default();
        let quiet = t.quiet(100, 104).expect("no write yet");
        let w = t.begin(103, 104);
        assert_eq!(t.quiet(100, 104), None, "in flight");
        drop(w);
        assert_ne!(t.quiet(100, 104), Some(quiet), "ended");
        assert!(t.quiet(5000, 5001).is_some(), "another slot");
        let large = t.begin(0, 1 << 30);
        assert!(slots(0, 1 << 30).count() == SLOTS && t.quiet(5000, 5001).is_none());
        drop(large);
        assert!(t.writing.iter().all(|w| w.load(SeqCst) == 0));
    }
}
