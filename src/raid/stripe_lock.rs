//! Per-stripe (RAID-5/6, RAID-10 rows) write locks, and the byte-range
//! locks of RAID-0 and RAID-1 ([`RangeLocks`], one per request).
//!
//! Only writers (and degraded readers) of the *same* stripe or region wait
//! for each other; a volume locks one kind of unit only ([`LockUnit`]).
//! The table maps a unit number to its own lock; an entry lives only
//! while someone holds or waits for it, so the table stays as small as the
//! number of stripes in flight. The table's std mutex is held only for a map
//! insert or remove, never across an await. The locks of removed entries
//! are kept for reuse (up to [`SPARE_LOCKS`]), and a range of one unit
//! holds its guard inline: locking allocates nothing in steady state.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::{Mutex as AsyncMutex, OwnedMutexGuard};

use super::layout::{RegionIndex, StripeIndex};
use super::range_lock::{RangeGuard, RangeLocks};

/// What a lock table locks: a stripe or a RAID-1 region, by number.
pub trait LockUnit: Copy {
    /// The unit's number in the table.
    fn number(self) -> u64;
}

impl LockUnit for StripeIndex {
    fn number(self) -> u64 {
        self.0
    }
}

impl LockUnit for RegionIndex {
    fn number(self) -> u64 {
        self.0
    }
}

/// Unused locks kept for reuse at most.
const SPARE_LOCKS: usize = 64;

/// The lock table of one volume.
#[derive(Debug, Default)]
pub struct StripeLocks {
    table: Mutex<Table>,
    ranges: RangeLocks,
}

#[derive(Debug, Default)]
struct Table {
    entries: HashMap<u64, Entry>,
    /// Locks of removed entries nobody holds, for the next new entry.
    spare: Vec<Arc<AsyncMutex<()>>>,
}

#[derive(Debug)]
struct Entry {
    users: usize,
    lock: Arc<AsyncMutex<()>>,
}

/// Holds one stripe locked until dropped.
#[derive(Debug)]
pub struct StripeGuard<'a> {
    _guard: OwnedMutexGuard<()>,
    _user: User<'a>,
}

/// The guards of a range of units, in locking order: the first inline,
/// the rest (ranges of more than one unit) in a list.
#[derive(Debug, Default)]
pub struct StripeGuards<'a> {
    first: Option<StripeGuard<'a>>,
    rest: Vec<StripeGuard<'a>>,
    /// A byte range held instead ([`StripeLocks::lock_span`]).
    span: Option<RangeGuard<'a>>,
}

impl<'a> StripeGuards<'a> {
    fn push(&mut self, guard: StripeGuard<'a>) {
        match self.first {
            None => self.first = Some(guard),
            Some(_) => self.rest.push(guard),
        }
    }

    /// Number of units (or byte ranges) held.
    pub fn len(&self) -> usize {
        usize::from(self.first.is_some()) + self.rest.len() + usize::from(self.span.is_some())
    }

    /// True when no unit is held.
    pub fn is_empty(&self) -> bool {
        self.first.is_none() && self.span.is_none()
    }
}

/// A registered user of a table entry; deregisters on drop, also when the
/// lock future is cancelled while waiting.
#[derive(Debug)]
struct User<'a> {
    locks: &'a StripeLocks,
    stripe: u64,
}

impl Drop for User<'_> {
    fn drop(&mut self) {
        let mut table = self.locks.table.lock().unwrap_or_else(|e| e.into_inner());
        let Table { entries, spare } = &mut *table;
        if let Some(entry) = entries.get_mut(&self.stripe) {
            entry.users -= 1;
            if entry.users == 0 {
                let lock = entries.remove(&self.stripe).map(|e| e.lock);
                // Kept only when nobody else holds it (a cancelled waiter's
                // lock future may still own a clone).
                if let Some(lock) = lock.filter(|l| Arc::strong_count(l) == 1) {
                    if spare.len() < SPARE_LOCKS {
                        spare.push(lock);
                    }
                }
            }
        }
    }
}

impl StripeLocks {
    /// An empty table.
    pub fn new() -> Self {
        Self::default()
    }

    /// Locks `unit`, waiting for its current holder.
    pub async fn lock(&self, unit: impl LockUnit) -> StripeGuard<'_> {
        self.lock_number(unit.number()).await
    }

    async fn lock_number(&self, stripe: u64) -> StripeGuard<'_> {
        let lock = {
            let mut table = self.table.lock().unwrap_or_else(|e| e.into_inner());
            let Table { entries, spare } = &mut *table;
            let entry = entries.entry(stripe).or_insert_with(|| Entry {
                users: 0,
                lock: spare.pop().unwrap_or_else(|| Arc::new(AsyncMutex::new(()))),
            });
            entry.users += 1;
            entry.lock.clone()
        };
        let user = User {
            locks: self,
            stripe,
        };
        StripeGuard {
            _guard: lock.lock_owned().await,
            _user: user,
        }
    }

    /// Locks every unit of `first..=last` in ascending order (deadlock-free
    /// against other multi-unit lockers).
    pub async fn lock_range<U: LockUnit>(&self, first: U, last: U) -> StripeGuards<'_> {
        let (first, last) = (first.number(), last.number());
        let mut guards = StripeGuards::default();
        for s in first..=last {
            guards.push(self.lock_number(s).await);
        }
        guards
    }

    /// Locks the byte range `start..end` (`start < end`) in the range
    /// table: one entry whatever the size, disjoint ranges never wait.
    pub async fn lock_span(&self, start: u64, end: u64) -> StripeGuards<'_> {
        StripeGuards {
            span: Some(self.ranges.lock(start, end).await),
            ..StripeGuards::default()
        }
    }

    /// Number of stripes and byte ranges currently locked or waited for.
    pub fn len(&self) -> usize {
        let table = self.table.lock().unwrap_or_else(|e| e.into_inner());
        table.entries.len() + self.ranges.len()
    }

    /// True when no stripe is locked.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn same_stripe_writers_serialize_and_entries_are_removed() {
        let locks = StripeLocks::new();
        let g = locks.lock(StripeIndex(7)).await;
        let waiting =
            tokio::time::timeout(Duration::from_millis(20), locks.lock(StripeIndex(7))).await;
        assert!(
            waiting.is_err(),
            "second locker of the same stripe must wait"
        );
        assert_eq!(locks.len(), 1, "cancelled waiter must deregister");
        drop(g);
        assert!(locks.is_empty());
    }

    #[tokio::test]
    async fn different_stripes_do_not_wait() {
        let locks = StripeLocks::new();
        let _a = locks.lock(StripeIndex(1)).await;
        let b = tokio::time::timeout(Duration::from_millis(200), locks.lock(StripeIndex(2))).await;
        assert!(b.is_ok());
        assert_eq!(locks.len(), 2);
    }

    #[tokio::test]
    async fn lock_range_holds_every_stripe() {
        let locks = StripeLocks::new();
        let guards = locks.lock_range(StripeIndex(3), StripeIndex(5)).await;
        assert_eq!(guards.len(), 3);
        let blocked =
            tokio::time::timeout(Duration::from_millis(20), locks.lock(StripeIndex(4))).await;
        assert!(blocked.is_err());
        drop(guards);
        assert!(locks.is_empty());
    }
}
