//! Counting requests in flight, shared by both exports: the NBD server's
//! count over all connections (its stats and drain) and each vhost-user
//! queue's count (GET_VRING_BASE and RESET_DEVICE wait for it to reach 0).
//!
//! ```text
//!  begin() ─► count + 1 ─► InFlightRequest guard ─ dropped (answered or
//!             request future dropped) ─► count − 1 ─► at 0: wake wait_idle
//! ```
//!
//! The count is an atomic, so starting and ending a request takes no lock;
//! the lock and condition variable are used only when the count reaches 0.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// The requests of one export (or queue) that have started and not ended.
#[derive(Debug, Default)]
pub struct InFlightRequests {
    count: AtomicUsize,
    lock: Mutex<()>,
    idle: Condvar,
}

impl InFlightRequests {
    /// Counts one more request until the returned guard is dropped.
    pub fn begin(self: &Arc<Self>) -> InFlightRequest {
        self.count.fetch_add(1, Ordering::SeqCst);
        InFlightRequest(self.clone())
    }

    /// Requests in flight now.
    pub fn get(&self) -> usize {
        self.count.load(Ordering::SeqCst)
    }

    /// Waits (blocking the thread) until nothing is in flight; false on
    /// timeout.
    pub fn wait_idle(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut lock = self.lock.lock().unwrap_or_else(|e| e.into_inner());
        // Checked under the lock: the last guard takes it before notifying,
        // so its notification cannot fall between this check and the wait.
        while self.get() > 0 {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            lock = match self.idle.wait_timeout(lock, left) {
                Ok((l, _)) => l,
                Err(e) => e.into_inner().0,
            };
        }
        true
    }
}

/// One request in flight: its count is released when this is dropped,
/// whether the request was answered or its future dropped.
#[derive(Debug)]
pub struct InFlightRequest(Arc<InFlightRequests>);

impl Drop for InFlightRequest {
    fn drop(&mut self) {
        if self.0.count.fetch_sub(1, Ordering::SeqCst) == 1 {
            let _lock = self.0.lock.lock().unwrap_or_else(|e| e.into_inner());
            self.0.idle.notify_all();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wait_idle_returns_once_the_last_request_ends() {
        let requests = Arc::new(InFlightRequests::default());
        let first = requests.begin();
        drop(requests.begin());

        let timed_out = !requests.wait_idle(Duration::from_millis(20));
        let releaser = std::thread::spawn(move || drop(first));
        let drained = requests.wait_idle(Duration::from_secs(10));
        releaser.join().unwrap();

        assert!(timed_out);
        assert!(drained);
        assert_eq!(requests.get(), 0);
    }
}
