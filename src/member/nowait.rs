//! What the direct writes off the 4 KiB granule of member files did
//! (docs/FORMAT.md §8 "Writes into holes"): `RWF_NOWAIT` tries, the
//! kernel's refusals (would block, or not supported), the writes widened
//! to whole blocks and their edge reads, counted per process for `vraid
//! status` and the metrics; and the file systems that refused `RWF_NOWAIT`
//! as not supported, remembered so that no member on them tries it again.
//! A member whose last [`STREAK`] tries were all refused (writes into the
//! holes of a sparse file) widens without trying, but for one write in
//! [`PROBE`], which tries again (a taken try ends the streak).
//!
//! ```text
//!  write off the granule ─► try RWF_NOWAIT ─► taken ─────────────► done
//!                                 │ EAGAIN (hole, page cache) ─► edge read(s) + widened write
//!                                 │ EOPNOTSUPP ─► remember st_dev ─► plain write (and from now on)
//! ```

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

static TRIES: AtomicU64 = AtomicU64::new(0);
static WOULD_BLOCK: AtomicU64 = AtomicU64::new(0);
static UNSUPPORTED: AtomicU64 = AtomicU64::new(0);
static WIDENED: AtomicU64 = AtomicU64::new(0);
static EDGE_READS: AtomicU64 = AtomicU64::new(0);
static UNTRIED: AtomicU64 = AtomicU64::new(0);

/// Refusals in a row after which a member stops trying `RWF_NOWAIT`.
pub(super) const STREAK: u32 = 16;
/// While it has stopped, one write in `PROBE` still tries.
pub(super) const PROBE: u32 = 16;

/// File systems (`st_dev` of a member file) that refused `RWF_NOWAIT`
/// with EOPNOTSUPP; `ANY_UNSUPPORTED` keeps the common case to one load.
static UNSUPPORTED_FS: Mutex<Vec<u64>> = Mutex::new(Vec::new());
static ANY_UNSUPPORTED: AtomicBool = AtomicBool::new(false);

/// The counts of every file member of this process since it started.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NowaitCounts {
    /// Direct writes off the granule submitted with `RWF_NOWAIT`.
    #[serde(default)]
    pub tries: u64,
    /// Tries the kernel refused with EAGAIN (it would have blocked: a
    /// hole, an unwritten extent, cached pages of the range).
    #[serde(default)]
    pub refused_would_block: u64,
    /// Tries refused with EOPNOTSUPP (the file system has no
    /// `RWF_NOWAIT`; its members write plainly from then on).
    #[serde(default)]
    pub refused_unsupported: u64,
    /// Writes widened to whole 4 KiB blocks.
    #[serde(default)]
    pub widened: u64,
    /// Edge-block reads of widened writes.
    #[serde(default)]
    pub edge_reads: u64,
    /// Writes widened without a try: their member's last tries were all
    /// refused (holes of a sparse file).
    #[serde(default)]
    pub untried: u64,
}

impl NowaitCounts {
    /// Nothing counted (no member wrote off the granule).
    pub fn is_zero(&self) -> bool {
        *self == NowaitCounts::default()
    }
}

/// The process's counts now.
pub fn counts() -> NowaitCounts {
    NowaitCounts {
        tries: TRIES.load(Ordering::Relaxed),
        refused_would_block: WOULD_BLOCK.load(Ordering::Relaxed),
        refused_unsupported: UNSUPPORTED.load(Ordering::Relaxed),
        widened: WIDENED.load(Ordering::Relaxed),
        edge_reads: EDGE_READS.load(Ordering::Relaxed),
        untried: UNTRIED.load(Ordering::Relaxed),
    }
}

/// One member's recent `RWF_NOWAIT` refusals: whether its next write
/// off the granule should try at all. A hint only: a write widened
/// without a try is correct wherever it lands, merely slower than a taken
/// try over written blocks.
#[derive(Debug, Default)]
pub(super) struct Streak {
    refused: AtomicU32,
    skipped: AtomicU32,
}

impl Streak {
    /// Whether to try `RWF_NOWAIT` (else widen at once, counted).
    pub(super) fn should_try(&self) -> bool {
        if self.refused.load(Ordering::Relaxed) < STREAK {
            return true;
        }
        let probe = self.skipped.fetch_add(1, Ordering::Relaxed) % PROBE == PROBE - 1;
        if !probe {
            UNTRIED.fetch_add(1, Ordering::Relaxed);
        }
        probe
    }

    /// The kernel took a try: the member's blocks are written here.
    pub(super) fn taken(&self) {
        if self.refused.load(Ordering::Relaxed) != 0 {
            self.refused.store(0, Ordering::Relaxed);
        }
    }

    /// The kernel refused a try as one that would block.
    pub(super) fn refused(&self) {
        let _ = self
            .refused
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                (n < STREAK).then_some(n + 1)
            });
    }
}

pub(super) fn count_try() {
    TRIES.fetch_add(1, Ordering::Relaxed);
}

pub(super) fn count_would_block() {
    WOULD_BLOCK.fetch_add(1, Ordering::Relaxed);
}

pub(super) fn count_widened() {
    WIDENED.fetch_add(1, Ordering::Relaxed);
}

pub(super) fn count_edge_read() {
    EDGE_READS.fetch_add(1, Ordering::Relaxed);
}

/// Counts an EOPNOTSUPP refusal and remembers the file system `dev`.
pub(super) fn refused_unsupported(dev: u64) {
    UNSUPPORTED.fetch_add(1, Ordering::Relaxed);
    let mut set = UNSUPPORTED_FS.lock().unwrap_or_else(|e| e.into_inner());
    if !set.contains(&dev) {
        set.push(dev);
        tracing::info!(
            dev,
            "file system has no RWF_NOWAIT: its members write plainly"
        );
    }
    ANY_UNSUPPORTED.store(true, Ordering::Release);
}

/// Whether the file system `dev` refused `RWF_NOWAIT` as not supported.
pub(super) fn unsupported(dev: u64) -> bool {
    if !ANY_UNSUPPORTED.load(Ordering::Acquire) {
        return false;
    }
    let set = UNSUPPORTED_FS.lock().unwrap_or_else(|e| e.into_inner());
    set.contains(&dev)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_streak_of_refusals_stops_the_tries_but_for_probes() {
        let s = Streak::default();
        for _ in 0..STREAK {
            assert!(s.should_try());
            s.refused();
        }
        let tries = (0..4 * PROBE).filter(|_| s.should_try()).count();
        assert_eq!(tries, 4, "one write in PROBE tries");
        s.taken();
        assert!(
            (0..PROBE).all(|_| s.should_try()),
            "a taken try ends the streak"
        );
    }

    #[test]
    fn an_unsupported_file_system_is_remembered_alone() {
        // Device numbers no real file system of the test machine has.
        let (dev, other) = (u64::MAX - 7, u64::MAX - 8);
        assert!(!unsupported(dev));
        let before = counts().refused_unsupported;
        refused_unsupported(dev);
        refused_unsupported(dev);
        assert!(unsupported(dev));
        assert!(!unsupported(other));
        assert_eq!(counts().refused_unsupported, before + 2);
        assert_eq!(
            UNSUPPORTED_FS
                .lock()
                .unwrap()
                .iter()
                .filter(|d| **d == dev)
                .count(),
            1
        );
    }
}
