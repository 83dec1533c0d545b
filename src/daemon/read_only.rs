//! Serving an array read-only (`vraid serve --read-only`, config
//! `read_only = true`), the way md's read-only mode does: members are
//! opened O_RDONLY and nothing is written to them — no dirty/clean marks,
//! no journal replay, no resync or rebuild, no bitmap, checksum or spare
//! writes. The superblock table still changes in memory (a member that
//! fails is left out for the rest of the run) but never reaches a disk.
//!
//! ```text
//!  ArrayOptions ─► options(): no spares, bitmap, checksums, journal, scrub
//!  Assembly     ─► servable(): a dirty RAID-5 or RAID-6 must have every member
//! ```

use super::array::ArrayOptions;
use super::DaemonError;
use crate::meta::Assembly;

/// The options a read-only run actually uses: everything that writes to
/// members off (spares, write-intent bitmap, block checksums, whose
/// verification needs the bitmap, the partial-parity journal, scheduled
/// scrubs).
pub(super) fn options(asked: &ArrayOptions) -> ArrayOptions {
    ArrayOptions {
        spares: Vec::new(),
        bitmap: false,
        checksums: false,
        write_hole_protection: false,
        scrub_interval: None,
        scrub_repair: false,
        create_size: None,
        read_only: true,
        ..asked.clone()
    }
}

/// Refuses a RAID-5 or RAID-6 that crashed (dirty) with a member missing: its torn
/// stripes are made consistent only by the journal replay or resync a
/// read-only run does not do, so a chunk rebuilt from their parity could be
/// wrong. Any other array is served as it is on disk: a whole RAID-5 reads
/// data chunks only, each mirror of a RAID-1 holds a complete write.
pub(super) fn servable(assembly: &Assembly) -> Result<(), DaemonError> {
    let missing = assembly.missing();
    if assembly.level.has_parity() && assembly.was_dirty && missing > 0 {
        return Err(DaemonError::Usage(format!(
            "{}: not shut down cleanly and {missing} member(s) missing: a read-only run cannot \
             replay the journal or resync, and data rebuilt from torn stripes could be wrong; \
             serve it read-write once to repair it",
            assembly.name
        )));
    }
    Ok(())
}
