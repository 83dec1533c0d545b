//! The completer of split records (docs/FORMAT.md §11, "Completion";
//! crash cases P-22, P-24, P-28, P-29): a split keeps its base until every
//! granule is in its `new` cluster. Per queued place (volume id, virtual
//! cluster; queued by the write that made the split) the completer fills
//! the missing granules one at a time — busy-marked as a writer's fill,
//! read through the base, written into `new` with the metadata lock
//! released, the mask bit set under the lock — and, with the last bit in
//! the same transaction, releases the base (`base = 0`). Then, under the
//! pool's I/O gate held exclusively (no read holds a reference to the
//! record meanwhile), an exclusive complete record becomes the plain
//! entry `new` and its slot is freed (one transaction). The daemon runs
//! one task per pool (`Pool::start_completer`), throttled and yielding to
//! client I/O; tests drain the queue with `Pool::complete_queued`.
//!
//! ```text
//!  split made ──► queue ──► fill granule (busy, unlocked I/O, bit) ─┐
//!                             ▲            │ mask full: base released │
//!                             └── more ────┘ (same transaction)      ▼
//!                                         convert (gate exclusive): entry = new
//! ```

use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::time::Duration;

use crate::block::Durability;
use crate::pool::split::{full_mask, granule_size, Entry, SplitRecord, SplitRef};
use crate::pool::split_meta::is_split;
use crate::pool::{Pool, PoolError};
use crate::units::ByteOffset;

/// Places queued at most; beyond, a split is not queued and the split
/// pages are walked again instead (FORMAT §11 "Memory", `complete_scan`).
pub const QUEUE_MAX: usize = 65536;

/// Pause between two granule copies of the background task (at most
/// ~1000 granules a second: 64 MiB/s at 64 KiB granules).
pub(crate) const THROTTLE: Duration = Duration::from_millis(1);

/// What one step of completion did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    /// Nothing left to fill at that place (no split there, a gone
    /// volume, or the record complete already).
    Nothing,
    /// One granule filled, its mask bit set.
    Filled,
    /// Every missing granule was busy with a writer's fill: waited.
    Waited,
    /// The last granule filled: the base released, `base = 0`.
    Completed,
}

/// Granules of a mask.
fn bits(mask: u64) -> impl Iterator<Item = u32> {
    (0..64).filter(move |g| mask >> g & 1 == 1)
}

impl Pool {
    /// Queues place (`id`, `vc`) of a split just made, and wakes the task.
    pub(crate) fn queue_completion(&self, id: u32, vc: u64) {
        let mut q = self.completions.lock().unwrap_or_else(|e| e.into_inner());
        if q.len() < self.queue_max.load(Ordering::Relaxed) {
            q.push_back((id, vc));
        } else {
            // Dropped here, found by the next walk of the split pages.
            self.rescan.store(true, Ordering::Release);
        }
        drop(q);
        self.completer_wake.notify_one();
    }

    fn next_queued(&self) -> Option<(u32, u64)> {
        let mut q = self.completions.lock().unwrap_or_else(|e| e.into_inner());
        q.pop_front()
    }

    /// One step at (`id`, `vc`): fills one missing granule of the split
    /// record found there (the last one completes it: P-24).
    pub async fn complete_step(&self, id: u32, vc: u64) -> Result<Step, PoolError> {
        let _gate = self.gate.read().await;
        let wgate = self.vol_gate(id);
        let _w = wgate.read().await;
        let mut m = self.meta.lock().await;
        let Ok(i) = m.by_id(id) else {
            return Ok(Step::Nothing);
        };
        let e = match m.lookup_read(i, vc).await? {
            Some(e) if is_split(e) && self.splits => e,
            _ => return Ok(Step::Nothing),
        };
        let Entry::Split(r) = Entry::decode(e)? else {
            return Ok(Step::Nothing);
        };
        self.fill_one(m, r).await
    }

    /// Fills one missing granule of record `r` (busy-marked, read through
    /// its base, written with the metadata lock released, its bit set
    /// under the lock; the last one completes the record: P-24). The
    /// caller holds the pool's I/O gate shared (P-28) and passes the lock.
    pub(crate) async fn fill_one(
        &self,
        mut m: tokio::sync::MutexGuard<'_, crate::pool::meta::Meta>,
        r: SplitRef,
    ) -> Result<Step, PoolError> {
        let rec = m.record(r).await?;
        let missing = full_mask(self.cluster_size()) & !rec.mask;
        if rec.base == 0 || missing == 0 {
            return Ok(Step::Nothing);
        }
        let Some(g) = bits(missing).find(|g| !m.busy.contains(&(r, *g))) else {
            let done = self.fills_done.notified();
            tokio::pin!(done);
            done.as_mut().enable();
            drop(m);
            done.await;
            return Ok(Step::Waited);
        };
        let src = m.granule_source(rec.base, g).await?;
        m.busy.insert((r, g));
        drop(m);
        let io = self.fill_granule(rec.new, g, src).await;
        let mut m = self.meta.lock().await;
        m.busy.remove(&(r, g));
        self.fills_done.notify_waiters();
        io?;
        let step = m.set_filled(r, rec, g).await?;
        self.safe_point_released(m).await?;
        Ok(step)
    }

    /// Writes granule `g` of cluster `new` with its bytes from cluster
    /// `src` (zeros for `None`).
    async fn fill_granule(&self, new: u64, g: u32, src: Option<u64>) -> Result<(), PoolError> {
        let cs = self.cluster_size();
        let gs = granule_size(cs);
        let at = u64::from(g) * gs;
        let mut buf = vec![0u8; gs as usize];
        if let Some(c) = src {
            self.dev.read(ByteOffset(c * cs + at), &mut buf).await?;
        }
        let normal = Durability::Normal;
        self.dev
            .write(ByteOffset(new * cs + at), &buf, normal)
            .await?;
        Ok(())
    }

    /// Converts the complete records at `places` whose entry is on an
    /// exclusive path (count 1, no drop since the last commit, nothing
    /// copying from it) to plain entries naming their `new` cluster; the
    /// record's reference to `new` moves to the leaf, the slot is freed
    /// (one transaction, P-24). Holds the pool's I/O gate exclusively: a
    /// read resolves a split entry's granules after its lookup, so none
    /// may be in flight when the record goes. Returns how many.
    pub async fn convert_complete(&self, places: &[(u32, u64)]) -> Result<usize, PoolError> {
        let _gate = self.gate.write().await;
        let mut m = self.meta.lock().await;
        let mut n = 0;
        for &(id, vc) in places {
            let Ok(i) = m.by_id(id) else { continue };
            let l = m.lookup(i, vc).await?;
            let Some(e) = l.cluster.filter(|e| is_split(*e) && l.exclusive) else {
                continue;
            };
            let Entry::Split(r) = Entry::decode(e)? else {
                continue;
            };
            let rec = m.record(r).await?;
            if rec.base != 0 || m.slots[i].rec.flags != 0 {
                continue;
            }
            let Some((leaf, k)) = m.own_path(i, vc, false).await? else {
                continue;
            };
            m.store.page_mut(leaf).await?.set_entry(k, rec.new);
            SplitRecord::default().write(m.store.page_mut(r.block).await?, r.slot);
            m.unshared_records.remove(&r);
            m.add_mcount(r.block, -1).await?;
            n += 1;
        }
        Ok(n)
    }

    /// Completes every queued place (no throttle), then converts what it
    /// completed; returns (places completed, records converted).
    pub async fn complete_queued(&self) -> Result<(usize, usize), PoolError> {
        let mut done = Vec::new();
        while let Some((id, vc)) = self.next_queued() {
            while self.complete_step(id, vc).await? != Step::Nothing {}
            done.push((id, vc));
        }
        let converted = self.convert_complete(&done).await?;
        Ok((done.len(), converted))
    }

    /// Starts the background completer of this pool (a version-3 pool;
    /// nothing on a version-2 one). It holds the pool weakly: it ends
    /// when the pool is dropped.
    pub fn start_completer(self: &Arc<Self>) {
        if !self.splits {
            return;
        }
        let weak = Arc::downgrade(self);
        tokio::spawn(async move { completer(weak).await });
    }
}

/// The task: waits for queued places, completes them a granule at a
/// time with a pause between granules, converts each batch at the end
/// and commits.
async fn completer(weak: Weak<Pool>) {
    loop {
        let Some(pool) = weak.upgrade() else { return };
        let wake = pool.completer_wake.clone();
        let mut done = Vec::new();
        while let Some((id, vc)) = pool.next_queued() {
            loop {
                match pool.complete_step(id, vc).await {
                    Ok(Step::Nothing) => break,
                    Ok(_) => tokio::time::sleep(THROTTLE).await,
                    Err(e) => {
                        tracing::warn!(error = %e, volume = id, vc, "split completion stopped");
                        break;
                    }
                }
            }
            done.push((id, vc));
        }
        // Converted, then a quiescent commit: the released bases become
        // free space now, not at the next client FLUSH.
        if !done.is_empty() {
            let converted = pool.convert_complete(&done).await;
            if let Err(e) = converted.and(pool.flush().await) {
                tracing::warn!(error = %e, "split conversion stopped");
            }
        }
        let due = pool.rescan.swap(false, Ordering::AcqRel);
        drop(pool);
        if due {
            rescan(&weak).await;
            continue;
        }
        wake.notified().await;
    }
}

/// A walk of the split pages (`complete_scan`), then a quiescent commit
/// as after a batch.
async fn rescan(weak: &Weak<Pool>) {
    let t = std::time::Instant::now();
    match crate::pool::complete_scan::walk(weak, THROTTLE).await {
        Ok(Some(w)) => {
            tracing::info!(
                pages = w.pages,
                completed = w.completed,
                corrupt = w.corrupt,
                ms = t.elapsed().as_millis() as u64,
                "split pages walked"
            );
            if let Some(pool) = weak.upgrade().filter(|_| w.completed > 0) {
                if let Err(e) = pool.flush().await {
                    tracing::warn!(error = %e, "split completion commit failed");
                }
            }
        }
        Ok(None) => {}
        Err(e) => tracing::warn!(error = %e, "split page walk stopped"),
    }
}

impl crate::pool::meta::Meta {
    /// Sets granule `g`'s bit in record `r` (found as `was` before the
    /// fill); with the last bit, in the same transaction, releases the
    /// base and sets `base = 0` (P-24). Nothing if the record changed
    /// meanwhile (freed, or completed by another).
    async fn set_filled(
        &mut self,
        r: SplitRef,
        was: SplitRecord,
        g: u32,
    ) -> Result<Step, PoolError> {
        let now = self.record(r).await?;
        if now.is_free() || now.new != was.new || now.base != was.base || now.base == 0 {
            return Ok(Step::Nothing);
        }
        let mut next = SplitRecord {
            mask: now.mask | 1 << g,
            ..now
        };
        let done = next.mask == full_mask(self.geo().cluster_size());
        if done {
            next.base = 0;
        }
        next.write(self.store.page_mut(r.block).await?, r.slot);
        if !done {
            return Ok(Step::Filled);
        }
        self.add_eref(now.base, -1).await?;
        Ok(Step::Completed)
    }
}

#[cfg(test)]
#[path = "complete_tests.rs"]
mod tests;

#[cfg(test)]
#[path = "complete_race_tests.rs"]
mod race_tests;
