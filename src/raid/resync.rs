//! The crash resync: makes the redundancy of the regions dirty at a crash
//! consistent again, without ever turning a block that fails its checksum
//! into the truth (docs/FORMAT.md §6, §8 "Which checksum is trusted where").
//!
//! ```text
//!  resync(ranges): for each 2 MiB step of each dirty range, under its locks:
//!      RAID-1 ─► read every mirror ─► differ? per block trust::pick_copy
//!             ─► write the mirrors that differ
//!      RAID-5 ─► per 4 KiB row: consistent? keep : bad block rebuilt by its
//!                row passes? restore it : new parity from data
//!      all    ─► with block checksums: reseal every member's step from the
//!                bytes it now holds (RAID-0, or no redundancy: reseal only)
//! ```

use std::sync::atomic::Ordering;

use futures::future::join_all;

use super::checksum::Verdict;
use super::layout::{MemberIndex, StripeIndex};
use super::level::MemberOp;
use super::rebuild::{
    lock_step, steps, Pacer, RebuildControl, RebuildError, SyncKind, SyncTracker,
};
use super::volume::Volume;
use super::{raid5, trust};
use crate::block::Durability;
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
            for (s, e) in steps(a, b) {
                if ctl.is_cancelled() {
                    return Err(RebuildError::Cancelled);
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

    /// Makes the mirrors of `a..b` agree. Each 4 KiB block is taken from
    /// the copy [`trust::pick_copy`] chooses: one that passes its checksum
    /// before any that fails it, so a mirror written wrong never overwrites
    /// the good ones. Mirrors that already hold the result are left alone.
    pub(super) async fn resync_mirror_step(&self, a: u64, b: u64) -> Result<u64, RebuildError> {
        let members: Vec<MemberIndex> = (0..self.geometry().members()).map(MemberIndex).collect();
        let _guards = lock_step(self, a, b).await;
        let off = ByteOffset(a);
        let copies = join_all(members.iter().map(|&m| async move {
            if !self.is_active(m) {
                return None;
            }
            let mut buf = vec![0u8; (b - a) as usize];
            self.read_member(m, off, &mut buf).await.ok().map(|()| buf)
        }))
        .await;
        let Some(first) = copies.iter().flatten().next() else {
            return Err(RebuildError::Sources(self.data_lost()));
        };
        let want = if copies.iter().flatten().all(|c| c == first) {
            first.clone()
        } else {
            self.chosen_copies(a, &copies).await
        };
        // Mirrors that already agree are left alone; a mirror that cannot
        // be read is rewritten. Members being rebuilt always get the copy.
        let op = MemberOp::Write(off, &want, Durability::Normal);
        let fix = members.iter().map(|&m| {
            let same = copies[m.0].as_ref() == Some(&want);
            async move {
                if same {
                    self.incoming_op(m, op).await;
                    return false;
                }
                self.write_member(m, op).await
            }
        });
        let n = join_all(fix).await.into_iter().filter(|&ok| ok).count() as u64;
        if let Some(hook) = self.checksums() {
            for &m in &members {
                hook.reseal(m, off, &want).await;
            }
        }
        Ok(n * (b - a))
    }

    /// Mirrors disagree somewhere in the step at `a`: builds the step block
    /// by block from the copy each block's verdicts pick.
    async fn chosen_copies(&self, a: u64, copies: &[Option<Vec<u8>>]) -> Vec<u8> {
        let mut verdicts = Vec::with_capacity(copies.len());
        for (m, c) in copies.iter().enumerate() {
            verdicts.push(match c {
                Some(c) => self.verdicts(MemberIndex(m), ByteOffset(a), c).await,
                None => Vec::new(),
            });
        }
        let len = copies.iter().flatten().next().map_or(0, Vec::len);
        let mut want = vec![0u8; len];
        let mut overruled = 0;
        for (i, out) in want.chunks_mut(trust::BLOCK).enumerate() {
            let at = i * trust::BLOCK..i * trust::BLOCK + out.len();
            let block: Vec<Option<(&[u8], Verdict)>> = copies
                .iter()
                .zip(&verdicts)
                .map(|(c, v)| c.as_ref().map(|c| (&c[at.clone()], v[i])))
                .collect();
            let pick = trust::pick_copy(&block).unwrap_or(0);
            let chosen = block[pick].map(|(bytes, _)| bytes).unwrap_or(&[]);
            out.copy_from_slice(chosen);
            overruled += usize::from(block.iter().flatten().any(|(bytes, _)| *bytes != chosen));
        }
        if overruled > 0 {
            tracing::warn!(
                volume = self.volume_name(),
                offset = a,
                blocks = overruled,
                "resync: mirrors disagree; each block taken from a copy that passes its checksum \
                 (else the one most mirrors hold)"
            );
        }
        want
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
                hook.reseal(m, ByteOffset(a), &buf).await;
            }
        }
        Ok(())
    }

    /// Makes the stripes of `a..b` consistent, 4 KiB row by row: a row
    /// that XORs to zero is left alone; in one that does not, a block that
    /// fails its checksum while the XOR of the rest of its row passes it is
    /// restored from them (the parity still held the truth); otherwise the
    /// parity is recomputed from the data (a write torn by the crash).
    /// Skipped when a member is down (parity is then the only copy of the
    /// missing data).
    pub(super) async fn resync_parity_step(&self, a: u64, b: u64) -> Result<u64, RebuildError> {
        let n = self.geometry().members();
        if self.down_count() > 0 {
            return self.reseal_step(a, b).await.map(|()| 0);
        }
        let _guards = lock_step(self, a, b).await;
        let len = (b - a) as usize;
        let mut bufs = vec![vec![0u8; len]; n];
        let reads = bufs
            .iter_mut()
            .enumerate()
            .map(|(m, buf)| raid5::read_or_fail(self, MemberIndex(m), ByteOffset(a), buf));
        for r in join_all(reads).await {
            r.map_err(RebuildError::Sources)?;
        }
        let mut verdicts = Vec::with_capacity(n);
        for (m, buf) in bufs.iter().enumerate() {
            verdicts.push(self.verdicts(MemberIndex(m), ByteOffset(a), buf).await);
        }
        let mut changed = vec![vec![false; len.div_ceil(trust::BLOCK)]; n];
        for (i, at) in (0..len).step_by(trust::BLOCK).enumerate() {
            let rows = at..(at + trust::BLOCK).min(len);
            let row: Vec<&[u8]> = bufs.iter().map(|buf| &buf[rows.clone()]).collect();
            if trust::consistent(&row) {
                continue;
            }
            let off = a + at as u64;
            let row_verdicts: Vec<Verdict> = verdicts.iter().map(|v| v[i]).collect();
            let (m, bytes) = match self.repairable_member(&row, &row_verdicts, off).await {
                Some(found) => found,
                None => {
                    let p = self.parity_member_at(off);
                    (p, trust::rebuilt_from_others(&row, p.0))
                }
            };
            bufs[m.0][rows].copy_from_slice(&bytes);
            changed[m.0][i] = true;
        }
        let mut fixed = 0;
        for (m, blocks) in changed.iter().enumerate() {
            for (x, y) in runs(blocks) {
                let (x, y) = (x * trust::BLOCK, (y * trust::BLOCK).min(len));
                let op =
                    MemberOp::Write(ByteOffset(a + x as u64), &bufs[m][x..y], Durability::Normal);
                if self.write_member(MemberIndex(m), op).await {
                    fixed += (y - x) as u64;
                }
            }
        }
        if let Some(hook) = self.checksums() {
            for (m, buf) in bufs.iter().enumerate() {
                hook.reseal(MemberIndex(m), ByteOffset(a), buf).await;
            }
        }
        Ok(fixed)
    }

    /// The parity member of the stripe holding member data offset `off`.
    fn parity_member_at(&self, off: u64) -> MemberIndex {
        let stripe = StripeIndex(off / self.geometry().chunk().get());
        self.geometry()
            .parity_member(stripe)
            .unwrap_or(MemberIndex(0))
    }
}

/// The runs `[x, y)` of consecutive `true` in `flags`.
fn runs(flags: &[bool]) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    let mut start = None;
    for (i, &f) in flags.iter().chain([&false]).enumerate() {
        match (f, start) {
            (true, None) => start = Some(i),
            (false, Some(x)) => {
                out.push((x, i));
                start = None;
            }
            _ => {}
        }
    }
    out
}
