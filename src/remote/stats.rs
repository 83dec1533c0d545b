//! Counters of remote members and the book the control plane reads them
//! from (by member path), for `vraid status` and the metrics.
//!
//! ```text
//!  RemoteMember ─ Arc<RemoteStats> ─► book (path ─► Weak) ─► snapshot(path)
//! ```

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Counters of one remote member (shared with the book).
#[derive(Debug, Default)]
pub struct RemoteStats {
    /// Times the member got a connection back after having none.
    pub reconnects: AtomicU64,
    /// Requests sent again after a lost connection.
    pub retries: AtomicU64,
    /// Requests whose reply did not come within the request timeout.
    pub timeouts: AtomicU64,
    /// Requests answered.
    pub requests: AtomicU64,
    /// Sum of their latencies in microseconds.
    pub latency_us_total: AtomicU64,
    /// The longest of them in microseconds.
    pub latency_us_max: AtomicU64,
    /// Connections live (a gauge; several with `CAN_MULTI_CONN`).
    pub connections: AtomicU64,
    /// Unreachable for longer than `member_timeout` (no connection, or
    /// none answering), until a connection is made again.
    pub unreachable: AtomicBool,
}

impl RemoteStats {
    /// Counts one answered request that took `took`.
    pub fn answered(&self, took: Duration) {
        let us = u64::try_from(took.as_micros()).unwrap_or(u64::MAX);
        self.requests.fetch_add(1, Ordering::Relaxed);
        self.latency_us_total.fetch_add(us, Ordering::Relaxed);
        self.latency_us_max.fetch_max(us, Ordering::Relaxed);
        if self.unreachable.load(Ordering::Relaxed) {
            self.unreachable.store(false, Ordering::Release);
        }
    }

    /// The counters now.
    pub fn snapshot(&self) -> RemoteSnapshot {
        let requests = self.requests.load(Ordering::Relaxed);
        let total = self.latency_us_total.load(Ordering::Relaxed);
        RemoteSnapshot {
            reconnects: self.reconnects.load(Ordering::Relaxed),
            retries: self.retries.load(Ordering::Relaxed),
            timeouts: self.timeouts.load(Ordering::Relaxed),
            requests,
            latency_us_total: total,
            latency_us_avg: total.checked_div(requests).unwrap_or(0),
            latency_us_max: self.latency_us_max.load(Ordering::Relaxed),
            connections: self.connections.load(Ordering::Relaxed),
            unreachable: self.unreachable.load(Ordering::Acquire),
        }
    }
}

/// A remote member's counters in `status` (member entries) and metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RemoteSnapshot {
    /// Times the member got a connection back after having none.
    pub reconnects: u64,
    /// Requests sent again after a lost connection.
    pub retries: u64,
    /// Requests that timed out.
    pub timeouts: u64,
    /// Requests answered.
    pub requests: u64,
    /// Sum of their latencies (µs).
    pub latency_us_total: u64,
    /// Mean latency (µs).
    pub latency_us_avg: u64,
    /// Longest latency (µs).
    pub latency_us_max: u64,
    /// Connections live.
    #[serde(default)]
    pub connections: u64,
    /// Unreachable for longer than `member_timeout` now.
    #[serde(default)]
    pub unreachable: bool,
}

/// Live remote members by path (as given), newest last.
static BOOK: Mutex<Vec<(String, Weak<RemoteStats>)>> = Mutex::new(Vec::new());

/// Records the counters of the member opened as `path`.
pub fn enter(path: &str, stats: &Arc<RemoteStats>) {
    let mut book = BOOK.lock().unwrap_or_else(|e| e.into_inner());
    book.retain(|(_, w)| w.strong_count() > 0);
    book.push((path.to_string(), Arc::downgrade(stats)));
}

/// The counters of the live remote member opened as `path`, if any.
pub fn snapshot(path: &str) -> Option<RemoteSnapshot> {
    let book = BOOK.lock().unwrap_or_else(|e| e.into_inner());
    book.iter()
        .rev()
        .filter(|(p, _)| p == path)
        .find_map(|(_, w)| w.upgrade())
        .map(|s| s.snapshot())
}

/// True when the live remote member opened as `path` is unreachable past
/// `member_timeout` now (false for any other path).
pub fn unreachable(path: &str) -> bool {
    snapshot(path).is_some_and(|s| s.unreachable)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_book_answers_for_live_members_only() {
        let s = Arc::new(RemoteStats::default());
        enter("nbd://book-test:1/a", &s);
        s.answered(Duration::from_micros(30));
        s.answered(Duration::from_micros(10));
        let snap = snapshot("nbd://book-test:1/a").unwrap();
        assert_eq!(
            (snap.requests, snap.latency_us_avg, snap.latency_us_max),
            (2, 20, 30)
        );
        assert!(!unreachable("nbd://book-test:1/a"));
        s.unreachable.store(true, Ordering::Release);
        assert!(unreachable("nbd://book-test:1/a"));
        assert!(!unreachable("nbd://book-test:1/b"));
        drop(s);
        assert_eq!(snapshot("nbd://book-test:1/a"), None);
        assert!(!unreachable("nbd://book-test:1/a"));
    }
}
