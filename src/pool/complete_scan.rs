//! The completer's walk of the split pages (docs/FORMAT.md §11,
//! "Completion", crash cases P-24, P-27, P-30, P-31): the queue only knows
//! the splits made since open, and not those it had no room for. A walk
//! goes once over the map area — block by block, map-count 0 skipped, a
//! page read without entering the cache — and completes every record on a
//! kind-8 page whose `base` is not 0, by its slot (no volume, no place:
//! such a record is completed, not converted to a plain entry). It runs
//! in the background task after open of a version-3 pool and again after
//! the queue dropped a place, so no record is forgotten; opening the pool
//! does not wait for it.
//!
//! ```text
//!  open / queue full ──► rescan flag ──► walk map area ──► per split page:
//!                                           │  incomplete slots → fill_one
//!                                           └─ corrupt page: logged, skipped
//! ```

use std::sync::atomic::Ordering;
use std::sync::Weak;
use std::time::Duration;

use crate::pool::complete::Step;
use crate::pool::format::Kind;
use crate::pool::split::{SplitRecord, SplitRef, RECORDS_PER_SPLIT_PAGE};
use crate::pool::{Pool, PoolError};

/// What a walk did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Walked {
    /// Map blocks in use that were read.
    pub pages: u64,
    /// Records found incomplete and completed.
    pub completed: u64,
    /// Split pages skipped as corrupt (logged, P-27).
    pub corrupt: u64,
}

impl Pool {
    /// The incomplete records (in use, `base` not 0) on map block `b`:
    /// none for a free block or a page of another kind. `Ok(None)`: the
    /// block was not read (free).
    async fn incomplete_at(&self, b: u64) -> Result<Option<Vec<SplitRef>>, PoolError> {
        let mut m = self.meta.lock().await;
        if m.mcount(b).await? == 0 {
            return Ok(None);
        }
        let page = m.store.peek(b).await?;
        drop(m);
        if page.kind() != Kind::Split as u32 {
            return Ok(Some(Vec::new()));
        }
        let open = (0..RECORDS_PER_SPLIT_PAGE).filter(|&s| {
            let rec = SplitRecord::read(&page, s);
            !rec.is_free() && rec.base != 0
        });
        Ok(Some(open.map(|slot| SplitRef { block: b, slot }).collect()))
    }

    /// One step of completing record `r` found by the walk (see
    /// `complete_step`; `Nothing` once complete, or if its page is free or
    /// no longer a split page: the record went meanwhile).
    pub async fn complete_record_step(&self, r: SplitRef) -> Result<Step, PoolError> {
        let _gate = self.gate.read().await;
        let mut m = self.meta.lock().await;
        if m.mcount(r.block).await? == 0
            || m.store.page(r.block).await?.kind() != Kind::Split as u32
        {
            return Ok(Step::Nothing);
        }
        self.fill_one(m, r).await
    }

    /// Completes record `r` (a pause of `throttle` between granules).
    async fn complete_record(&self, r: SplitRef, throttle: Duration) -> Result<bool, PoolError> {
        let mut did = false;
        loop {
            match self.complete_record_step(r).await? {
                Step::Nothing => return Ok(did),
                Step::Completed => did = true,
                Step::Filled | Step::Waited => {}
            }
            if !throttle.is_zero() {
                tokio::time::sleep(throttle).await;
            }
        }
    }

    /// Walks the whole map area now if a walk is due (the flag is
    /// cleared first: a place dropped during the walk makes another
    /// due); `None` if none was. Tests call it; the task uses [`walk`].
    pub async fn complete_scanned(
        self: &std::sync::Arc<Self>,
    ) -> Result<Option<Walked>, PoolError> {
        if !self.rescan.swap(false, Ordering::AcqRel) {
            return Ok(None);
        }
        walk(&std::sync::Arc::downgrade(self), Duration::ZERO).await
    }
}

/// Walks the map area of the pool behind `weak` (held only per block: a
/// dropped pool ends the walk, `None`), completing every incomplete record
/// on a split page; corrupt pages and records are logged and skipped
/// (P-27); an I/O error ends the walk.
pub(crate) async fn walk(
    weak: &Weak<Pool>,
    throttle: Duration,
) -> Result<Option<Walked>, PoolError> {
    let mut done = Walked::default();
    let Some(pool) = weak.upgrade() else {
        return Ok(None);
    };
    let blocks = pool.geo.meta_start()..pool.geo.meta_end();
    drop(pool);
    for b in blocks {
        let Some(pool) = weak.upgrade() else {
            return Ok(None);
        };
        let open = match pool.incomplete_at(b).await {
            Ok(None) => continue,
            Ok(Some(open)) => open,
            Err(e @ PoolError::Io(_)) => return Err(e),
            Err(e) => {
                tracing::warn!(block = b, error = %e, "split page skipped by the completer");
                done.corrupt += 1;
                continue;
            }
        };
        done.pages += 1;
        for r in open {
            match pool.complete_record(r, throttle).await {
                Ok(c) => done.completed += u64::from(c),
                Err(e @ PoolError::Io(_)) => return Err(e),
                Err(e) => tracing::warn!(block = b, slot = r.slot, error = %e,
                    "split record skipped by the completer"),
            }
        }
    }
    Ok(Some(done))
}

#[cfg(test)]
#[path = "complete_scan_tests.rs"]
mod tests;
