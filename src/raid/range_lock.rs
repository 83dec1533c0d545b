//! [`RangeLocks`]: write locks of byte ranges (RAID-0 member blocks,
//! RAID-1 mirror ranges), one table entry per request whatever its size.
//!
//! ```text
//!  lock(a..b) ─► entry (ticket, waiting) ─► no earlier entry overlaps? ─► held
//!                                        └► wait for a release, look again
//!  guard dropped (also a cancelled waiter) ─► entry removed ─► wake waiters
//! ```
//!
//! A request waits for every earlier request (lower ticket) whose range
//! overlaps its own, held or still waiting, so overlapping requests are
//! served in arrival order and the earliest waiter can always go (no
//! deadlock among one-lock holders). Requests of disjoint ranges never
//! wait for each other: sequential small writes of neighbouring blocks run
//! side by side. The entries live in a list reused in place (no allocation
//! per lock in steady state); a release wakes every waiter, which is cheap
//! at the few dozen requests a volume has in flight.

use std::pin::pin;
use std::sync::{Mutex, MutexGuard};

use tokio::sync::Notify;

#[derive(Debug)]
struct Entry {
    ticket: u64,
    start: u64,
    end: u64,
}

#[derive(Debug, Default)]
struct State {
    next: u64,
    /// Held and waiting requests, in no particular order.
    entries: Vec<Entry>,
}

/// The range lock table of one volume.
#[derive(Debug, Default)]
pub struct RangeLocks {
    state: Mutex<State>,
    released: Notify,
}

/// Holds `start..end` locked until dropped; a waiter's guard deregisters
/// it when the lock future is dropped.
#[derive(Debug)]
pub struct RangeGuard<'a> {
    locks: &'a RangeLocks,
    ticket: u64,
}

impl Drop for RangeGuard<'_> {
    fn drop(&mut self) {
        let mut state = self.locks.state();
        if let Some(i) = state.entries.iter().position(|e| e.ticket == self.ticket) {
            state.entries.swap_remove(i);
        }
        drop(state);
        self.locks.released.notify_waiters();
    }
}

impl RangeLocks {
    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Locks `start..end` (`start < end`), waiting for the earlier
    /// requests of overlapping ranges.
    pub async fn lock(&self, start: u64, end: u64) -> RangeGuard<'_> {
        let ticket = {
            let mut state = self.state();
            let ticket = state.next;
            state.next += 1;
            state.entries.push(Entry { ticket, start, end });
            ticket
        };
        let guard = RangeGuard {
            locks: self,
            ticket,
        };
        loop {
            // Registered before the look: a release in between is seen.
            let mut released = pin!(self.released.notified());
            released.as_mut().enable();
            if !self.blocked(ticket, start, end) {
                return guard;
            }
            released.await;
        }
    }

    /// True while an earlier request's range overlaps `start..end`.
    fn blocked(&self, ticket: u64, start: u64, end: u64) -> bool {
        self.state()
            .entries
            .iter()
            .any(|e| e.ticket < ticket && e.start < end && start < e.end)
    }

    /// Requests holding or waiting for a range.
    pub fn len(&self) -> usize {
        self.state().entries.len()
    }

    /// True when no range is held or waited for.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn disjoint_ranges_go_side_by_side_overlapping_ones_in_order() {
        let locks = RangeLocks::default();
        let a = locks.lock(0, 4096).await;
        let _b = locks.lock(4096, 8192).await;
        let mut c = pin!(locks.lock(1024, 5000));
        assert!(futures::poll!(c.as_mut()).is_pending(), "overlaps a and b");
        // Disjoint from everything held, but overlapping the earlier
        // waiter c: waits for it (arrival order).
        let mut d = pin!(locks.lock(4500, 4600));
        assert!(futures::poll!(d.as_mut()).is_pending());
        let _e = locks.lock(9000, 9001).await;
        assert_eq!(locks.len(), 5);
        drop(a);
        assert!(futures::poll!(c.as_mut()).is_pending(), "b still holds");
        drop(_b);
        let c = c.await;
        assert!(futures::poll!(d.as_mut()).is_pending(), "c holds");
        drop(c);
        let _d = d.await;
        assert_eq!(locks.len(), 2);
    }

    #[tokio::test]
    async fn a_cancelled_waiter_deregisters_and_lets_the_next_one_go() {
        let locks = RangeLocks::default();
        let a = locks.lock(0, 10).await;
        {
            let mut b = pin!(locks.lock(5, 15));
            assert!(futures::poll!(b.as_mut()).is_pending());
        }
        let mut c = pin!(locks.lock(12, 20));
        let c = futures::poll!(c.as_mut());
        assert!(c.is_ready(), "b is gone");
        drop(a);
        assert_eq!(locks.len(), 1);
        drop(c);
        assert!(locks.is_empty());
    }
}
