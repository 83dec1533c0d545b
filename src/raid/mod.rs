//! RAID volumes: layout math, levels 0/1/5/6/10, parity and stripe locks.
//!
//! ```text
//!  Volume (BlockDevice, volume.rs) ─► level_io(level) ─► Raid0 / Raid1 / Raid5 / Raid6 : LevelIo
//!        │ range check, busy count,        (level.rs)      raid0.rs raid1.rs raid5.rs(+raid5_write.rs)
//!        │                                                 raid6.rs(+raid6_write.rs, raid6_sync.rs)
//!        │ write intent, ENOSPC                                     │
//!        ◄──── member methods: read_member, write_member, member_op, ┘
//!              fail_member, locks, checksums, parity_log
//!  layout.rs: volume range → per-member extents (pure math); striped.rs: what RAID-0/5 share
//!  parity.rs: XOR; syndrome.rs: RAID-6 P/Q and two-block recovery;
//!  md_layout.rs: Linux md RAID-4/5/6/10 placement (pure math);
//!  raid10_layout.rs: our RAID-10's shape and chunk map (md's placement);
//!  raid10.rs (+raid10_sync.rs): RAID-10's data path and sync parts
//!  stripe_lock.rs: per-stripe / per-region writer serialization
//!  rebuild.rs, resync.rs, scrub.rs: the sync passes (their loops), calling the level per step;
//!  raid1_sync.rs, raid5_sync.rs, raid6_sync.rs: those levels' parts of the passes
//! ```
//!
//! Adding a level (RAID-6, RAID-10): (1) give it a [`Level`] variant here,
//! with its number, minimum member count and redundancy; (2) teach
//! `layout.rs`'s [`Geometry`] its shape (`data_members`, where data and
//! parity live, `extents`, `member_span`); (3) write `raidN.rs` with a unit
//! struct implementing `level::LevelIo`: its read, write and clear, the
//! locks a sync step takes, its resync step, how a rebuilt member's bytes
//! come from the others, and its scrub checks (reuse `striped.rs`, and
//! `raid1_sync.rs`/`raid5_sync.rs` where a mirror or XOR parity fits;
//! RAID-6 needs its own Q-parity versions, e.g. in `raid6_sync.rs`);
//! (4) add its arm to `volume.rs`'s `level_io` and to `data_path.rs`'s
//! `read` and `write` (the per-request path, dispatched without boxing).
//! Levels reach the members only through `Volume`'s methods, never its
//! fields. (Outside `src/raid/`, the daemon still tests `Level::Raid0` and
//! `Level::Raid5` by name in a few places, e.g. for the bitmap and the
//! read-only-unsynced rule: check those too.)

pub mod changes;
pub mod checksum;
pub mod intent;
pub mod layout;
pub mod md_layout;
pub mod parity;
pub mod ppl;
mod ppl6;
pub mod raid10_layout;
pub mod range_lock;
pub mod rebuild;
pub mod scrub;
pub mod stripe_lock;
pub mod syndrome;
pub mod volume;
pub mod written;

mod behind;
mod data_path;
mod dirty_read;
mod gather;
mod level;
mod member_runs;
mod no_space;
mod raid0;
mod raid1;
mod raid10;
mod raid10_sync;
mod raid1_sync;
mod raid5;
mod raid5_sync;
mod raid5_write;
mod raid6;
mod raid6_sync;
mod raid6_write;
mod resync;
mod striped;
mod trust;

#[cfg(test)]
mod behind_tests;
#[cfg(test)]
mod changes_tests;
#[cfg(test)]
mod conformance;
#[cfg(test)]
pub(crate) mod test_support;
#[cfg(test)]
mod volume_tests;

pub use behind::{BehindLimits, Lag as BehindLag};
pub use intent::{MemIntent, WriteIntent};
pub use layout::{ChunkSize, Extent, Geometry, LayoutError, MemberIndex, RegionIndex, StripeIndex};
pub use ppl::{MemParityLog, ParityLog, PplClaim, PplRecord, PplTicket, RingLog};
pub use raid10_layout::{Raid10Map, Raid10Shape};
pub use rebuild::{RebuildControl, RebuildError, RebuildSink, SyncKind, SyncProgress};
pub use scrub::{MemberScrub, ScrubReport};
pub use volume::{MemberState, RaidError, Volume, VolumeEvents};
pub use written::WrittenRegions;

use std::fmt;
use std::str::FromStr;

/// A RAID level.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum Level {
    /// Striping, no redundancy.
    #[serde(rename = "0")]
    Raid0,
    /// N-way mirroring.
    #[serde(rename = "1")]
    Raid1,
    /// Striping with rotating parity (md left-symmetric).
    #[serde(rename = "5")]
    Raid5,
    /// Striping with rotating P and Q parity (md left-symmetric, layout 2).
    #[serde(rename = "6")]
    Raid6,
    /// Mirrored chunks in one of md's RAID-10 layouts (`raid10_layout.rs`).
    #[serde(rename = "10")]
    Raid10(Raid10Shape),
}

impl Level {
    /// The number stored on disk and shown to users (0, 1, 5, 6, 10).
    pub const fn number(self) -> u32 {
        match self {
            Level::Raid0 => 0,
            Level::Raid1 => 1,
            Level::Raid5 => 5,
            Level::Raid6 => 6,
            Level::Raid10(_) => 10,
        }
    }

    /// Inverse of [`Level::number`] (RAID-10 in md's default layout, n2).
    pub const fn from_number(n: u32) -> Option<Level> {
        match n {
            0 => Some(Level::Raid0),
            1 => Some(Level::Raid1),
            5 => Some(Level::Raid5),
            6 => Some(Level::Raid6),
            10 => Some(Level::Raid10(Raid10Shape::N2)),
            _ => None,
        }
    }

    /// The RAID-10 layout, `None` for the other levels.
    pub const fn raid10_shape(self) -> Option<Raid10Shape> {
        match self {
            Level::Raid10(s) => Some(s),
            _ => None,
        }
    }

    /// Fewest members an array of this level may be created with.
    pub const fn min_members(self) -> usize {
        match self {
            Level::Raid0 | Level::Raid1 => 2,
            Level::Raid5 => 3,
            Level::Raid6 => 4,
            Level::Raid10(s) => s.copies(),
        }
    }

    /// True for the levels with parity stripes (RAID-5, RAID-6): data is
    /// rebuilt from parity, which a crash may leave stale until resynced.
    pub const fn has_parity(self) -> bool {
        matches!(self, Level::Raid5 | Level::Raid6)
    }

    /// How many members may be missing while all data stays available,
    /// for an array of `members` members, whichever they are (RAID-10
    /// survives more when they hold different chunks:
    /// `Geometry::tolerates`).
    pub const fn redundancy(self, members: usize) -> usize {
        match self {
            Level::Raid0 => 0,
            Level::Raid1 => members.saturating_sub(1),
            Level::Raid5 => 1,
            Level::Raid6 => 2,
            Level::Raid10(s) => s.copies() - 1,
        }
    }
}

impl fmt::Display for Level {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Level::Raid10(s) if *s != Raid10Shape::N2 => write!(f, "raid10 ({s})"),
            _ => write!(f, "raid{}", self.number()),
        }
    }
}

impl FromStr for Level {
    type Err = String;
    fn from_str(s: &str) -> Result<Level, String> {
        let t = s.trim().to_ascii_lowercase();
        let t = t.strip_prefix("raid").unwrap_or(&t);
        t.parse::<u32>()
            .ok()
            .and_then(Level::from_number)
            .ok_or_else(|| format!("unknown RAID level {s:?}: expected 0, 1, 5, 6 or 10"))
    }
}

#[cfg(test)]
mod gather_tests;
#[cfg(test)]
mod ppl6_tests;
#[cfg(test)]
mod ppl_tests;
#[cfg(test)]
mod raid10_tests;
#[cfg(test)]
mod raid6_tests;
#[cfg(test)]
mod rebuild_tests;
#[cfg(test)]
mod resync_tests;
#[cfg(test)]
mod scrub_tests;
#[cfg(test)]
mod small_write_tests;
#[cfg(test)]
mod vectored_tests;
