//! The crash resync: makes the redundancy of the regions dirty at a crash
//! consistent again, without ever turning a block that fails its checksum
//! into the truth (docs/FORMAT.md §6, §8 "Which checksum is trusted where").
//!
//! ```text
//!  resync(ranges): for each 2 MiB step of each dirty range, the level's
//!  LevelIo::resync_step, under the step's locks:
//!      RAID-1 ─► read every mirror ─► differ? per block trust::pick_copy
//!             ─► write the mirrors that differ
//!      RAID-5 ─► per 4 KiB row: consistent? keep : bad block rebuilt by its
//!                row passes? restore it : new parity from data
//!      all    ─► with block checksums: reseal every member's step from the
//!                bytes it now holds (RAID-0, or no redundancy: reseal only)
//! ```
//!
//! This file keeps the pass (its loop, progress, pacing) and the reseal
//! every level shares; the RAID-1 and RAID-5 steps are in `raid1_sync.rs`
//! and `raid5_sync.rs`.

use std::sync::atomic::Ordering;

use super::layout::MemberIndex;
use super::rebuild::{
    lock_step, pass_steps, Pacer, RebuildControl, RebuildError, SyncKind, SyncTracker,
};
use super::volume::Volume;
use crate::units::ByteOffset;

impl Volume {
    /// Makes redundancy consistent in `ranges` (member data offsets): RAID-1
    /// copies the first in-sync mirror onto the others, RAID-5 recomputes
    /// parity. `on_range_done` is called for every range once it is done.
    /// Returns the bytes rewritten.
    pub async fn resync(
        &self,
        ranges: Vec<(u64, u64)>,
        ctl: &RebuildControl,
        on_range_done: &(dyn Fn(u64, u64) + Send + Sync),
    ) -> Result<u64, RebuildError> {
        let mds = self.geometry().member_data_size();
        let ranges: Vec<(u64, u64)> = ranges
            .into_iter()
            .map(|(a, b)| (a.min(mds), b.min(mds)))
            .filter(|(a, b)| a < b)
            .collect();
        let total = ranges.iter().map(|(a, b)| b - a).sum();
        let tracker = SyncTracker::new(SyncKind::Resync, None, total);
        self.set_progress(Some(tracker.clone()));
        let result = self
            .resync_inner(&ranges, ctl, &tracker, on_range_done)
            .await;
        self.set_progress(None);
        result
    }

    async fn resync_inner(
        &self,
        ranges: &[(u64, u64)],
        ctl: &RebuildControl,
        tracker: &SyncTracker,
        on_range_done: &(dyn Fn(u64, u64) + Send + Sync),
    ) -> Result<u64, RebuildError> {
        let mut pacer = Pacer::new();
        let mut rewritten = 0;
        for &(a, b) in ranges {
            for (s, e, written) in pass_steps(self.written(), a, b) {
                if ctl.is_cancelled() {
                    return Err(RebuildError::Cancelled);
                }
                if !written {
                    // Never written: zeroes everywhere, consistent (§10).
                    tracker.done.fetch_add(e - s, Ordering::Relaxed);
                    tracker.skipped.fetch_add(e - s, Ordering::Relaxed);
                    continue;
                }
                let step = self.level_io().resync_step(self, s, e);
                let (step, no_space) = super::no_space::watch(step).await;
                // Still out of space: the range stays owed (not reported done).
                if no_space {
                    let name = crate::block::BlockDevice::name(self);
                    return Err(RebuildError::Target(super::no_space::error(name)));
                }
                rewritten += step?;
                tracker.done.fetch_add(e - s, Ordering::Relaxed);
                pacer.step(self, ctl, e - s).await;
            }
            on_range_done(a, b);
        }
        Ok(rewritten)
    }

    /// Reseals the block checksums of every member in `a..b` from the bytes
    /// each holds (under the step's locks): RAID-0, and RAID-5 while a
    /// member is down (parity cannot be checked, the bytes are what they
    /// are). A member that cannot be read is left alone.
    pub(super) async fn reseal_step(&self, a: u64, b: u64) -> Result<(), RebuildError> {
        let Some(hook) = self.checksums() else {
            return Ok(());
        };
        let _guards = lock_step(self, a, b).await;
        let mut buf = vec![0u8; (b - a) as usize];
        for m in (0..self.geometry().members()).map(MemberIndex) {
            if self.read_member(m, ByteOffset(a), &mut buf).await.is_ok() {
                super::no_space::note_result(&hook.reseal(m, ByteOffset(a), &buf).await);
            }
        }
        Ok(())
    }
}
