//! Commits with the metadata lock released during their I/O, and the
//! per-volume write gates (docs/FORMAT.md §11, "Transactions, journal and
//! commit" and "Snapshot, clone, ..."): a commit's journal write, FLUSH
//! and in-place writes run while other requests look up and change
//! metadata; a snapshot drains only its source volume's writes.
//!
//! ```text
//!  meta lock: changes ─► prepare (seal, record, pages pinned) ─► unlock
//!  commit lane (one job at a time, in order): record ─FLUSH─► in place
//! ```
//!
//! The lane is held only by a job running without the metadata lock or
//! by a commit that holds the metadata lock already, and nobody holding
//! the lane waits for the metadata lock: no deadlock.

use std::sync::Arc;

use tokio::sync::{MutexGuard, RwLock};

use crate::pool::meta::{Meta, COMMIT_AT};
use crate::pool::{Pool, PoolError};

/// A transaction this large is committed even if it must wait (with the
/// metadata lock held) for a commit in flight; it always fits the
/// journal with one more cluster operation.
const COMMIT_HARD: usize = 1024;
/// Passes of [`Pool::commit_released`] before it waits holding the lock.
const LANE_TRIES: usize = 64;

impl Pool {
    /// Commits everything changed under `m` (and before): durable when it
    /// returns. The metadata lock is released for the I/O; a commit in
    /// flight is waited for without it.
    pub(crate) async fn commit_released(&self, m: MutexGuard<'_, Meta>) -> Result<(), PoolError> {
        self.commit_unless(m, |_| false).await
    }

    /// Returns once record `seq` is durable: at once if it is, after the
    /// commit in flight that carries it, else by committing the open
    /// transaction (lock released for the I/O). Never commits again what
    /// a commit in flight made durable meanwhile (P-32): writers waiting
    /// for one `zeroed_from` raise share one FLUSH.
    pub(crate) async fn wait_durable(
        &self,
        m: MutexGuard<'_, Meta>,
        seq: u64,
    ) -> Result<(), PoolError> {
        self.commit_unless(m, |m| m.store.durable_seq() >= seq)
            .await
    }

    /// [`Pool::commit_released`], which returns as soon as `done` holds
    /// (checked under the lock before each pass and before the last
    /// commit, which waits holding the lock).
    async fn commit_unless(
        &self,
        mut m: MutexGuard<'_, Meta>,
        done: impl Fn(&Meta) -> bool,
    ) -> Result<(), PoolError> {
        for _ in 0..LANE_TRIES {
            if done(&m) {
                return Ok(());
            }
            if let Some(lane) = m.store.try_lane() {
                m.prune_unshared();
                let job = m.store.prepare(lane).await?;
                drop(m);
                return job.run().await;
            }
            let lane = m.store.lane();
            drop(m);
            drop(lane.lock().await);
            m = self.meta.lock().await;
        }
        match done(&m) {
            true => Ok(()),
            false => m.commit().await,
        }
    }

    /// Commits the open transaction in the background: a `zeroed_from`
    /// raise made ahead of need (P-32), which nobody waits for yet. A
    /// failure is logged; the next commit takes its pages back.
    pub(crate) fn kick_commit(self: &Arc<Self>) {
        let pool = self.clone();
        tokio::spawn(async move {
            let m = pool.meta.lock().await;
            if let Err(e) = pool.commit_released(m).await {
                tracing::warn!(error = %e, "background pool commit failed");
            }
        });
    }

    /// A safe point (commit once the transaction is large) that leaves
    /// the metadata lock released during the commit's I/O, and skips a
    /// commit while another is in flight unless the transaction is huge.
    pub(crate) async fn safe_point_released(
        &self,
        mut m: MutexGuard<'_, Meta>,
    ) -> Result<(), PoolError> {
        let dirty = m.store.dirty_pages();
        if dirty < COMMIT_AT {
            return Ok(());
        }
        match m.store.try_lane() {
            Some(lane) => {
                m.prune_unshared();
                let job = m.store.prepare(lane).await?;
                drop(m);
                job.run().await
            }
            None if dirty >= COMMIT_HARD => m.commit().await,
            None => Ok(()),
        }
    }

    /// The write gate of volume `id` (shared by its thin volumes): held
    /// shared by each write, exclusively by a snapshot or clone of it.
    pub(crate) fn vol_gate(&self, id: u32) -> Arc<RwLock<()>> {
        let mut gates = self.vol_gates.lock().unwrap_or_else(|e| e.into_inner());
        gates.entry(id).or_default().clone()
    }
}
