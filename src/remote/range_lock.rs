//! Exclusive locks on byte ranges of a remote member. A write to a server
//! with a minimum block size holds the whole blocks it touches while it
//! reads, patches and writes them, so two sub-block writes to one block
//! (or one and a whole-block write) never interleave and lose a write.
//!
//! ```text
//!  lock(range) ─ overlaps a held range? ─ yes ─► wait for any release, retry
//!                                        └ no ─► held until the guard drops
//! ```
//!
//! Reads take no lock: a block being rewritten keeps the bytes nobody
//! changed, so a read sees the old or the new bytes of a write, as with any
//! write in flight.

use std::ops::Range;
use std::sync::Mutex;

use tokio::sync::Notify;

/// The ranges held now.
#[derive(Debug, Default)]
pub struct RangeLocks {
    held: Mutex<Vec<(u64, Range<u64>)>>,
    next: std::sync::atomic::AtomicU64,
    freed: Notify,
}

/// A range held until dropped.
#[derive(Debug)]
pub struct RangeGuard<'a> {
    locks: &'a RangeLocks,
    id: u64,
}

impl RangeLocks {
    /// Waits until no held range overlaps `range`, then holds it.
    pub async fn lock(&self, range: Range<u64>) -> RangeGuard<'_> {
        loop {
            let freed = self.freed.notified();
            tokio::pin!(freed);
            // Registered before the check: a release after it wakes us.
            freed.as_mut().enable();
            if let Some(g) = self.try_lock(&range) {
                return g;
            }
            freed.await;
        }
    }

    fn try_lock(&self, range: &Range<u64>) -> Option<RangeGuard<'_>> {
        let mut held = self.held.lock().unwrap_or_else(|e| e.into_inner());
        let overlaps = |r: &Range<u64>| r.start < range.end && range.start < r.end;
        if held.iter().any(|(_, r)| overlaps(r)) {
            return None;
        }
        let id = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        held.push((id, range.clone()));
        Some(RangeGuard { locks: self, id })
    }

    /// Ranges held now (for tests).
    #[cfg(test)]
    fn count(&self) -> usize {
        self.held.lock().unwrap().len()
    }
}

impl Drop for RangeGuard<'_> {
    fn drop(&mut self) {
        let mut held = self.locks.held.lock().unwrap_or_else(|e| e.into_inner());
        held.retain(|(id, _)| *id != self.id);
        drop(held);
        self.locks.freed.notify_waiters();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::time::Duration;

    #[tokio::test]
    async fn overlapping_ranges_wait_and_disjoint_ones_do_not() {
        let locks = Arc::new(RangeLocks::default());
        let a = locks.lock(0..4096).await;
        let b = locks.lock(4096..8192).await;
        assert_eq!(locks.count(), 2);
        let l = locks.clone();
        let waiter = tokio::spawn(async move {
            let _c = l.lock(4000..4100).await;
        });
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished());
        drop(a);
        // Still held by `b` (4096..8192 overlaps 4000..4100).
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished());
        drop(b);
        tokio::time::timeout(Duration::from_secs(10), waiter)
            .await
            .expect("the waiter never got the range")
            .unwrap();
        assert_eq!(locks.count(), 0);
    }

    #[tokio::test]
    async fn a_dropped_waiter_leaves_nothing_held() {
        let locks = RangeLocks::default();
        let a = locks.lock(0..10).await;
        let attempt = tokio::time::timeout(Duration::from_millis(20), locks.lock(5..6)).await;
        assert!(attempt.is_err());
        drop(a);
        let _b = locks.lock(5..6).await;
        assert_eq!(locks.count(), 1);
    }
}
