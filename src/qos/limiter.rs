//! A volume's limiter: its buckets, the two queues requests wait in, and
//! the counters `status` and the metrics show.
//!
//! ```text
//!  read  ─► reads queue (FIFO) ─┐ head: every bucket of its kind ready?
//!  write ─► writes queue (FIFO) ─┤   yes ─► take the tokens, go
//!                                └   no  ─► sleep until the latest of them
//!                                            (or until the limits change), again
//! ```
//!
//! A read asks the total and read buckets, a write the total and write
//! buckets; IOPS buckets cost one token, bytes buckets the request's
//! bytes (TRIM and WRITE_ZEROES move none: they cost IOPS only). Reads and
//! writes queue apart, so a read never waits behind a write held by the
//! write limit. Nothing fails: a request over the limit waits its turn.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;

use super::bucket::TokenBucket;
use super::{QosLimits, QosStatus, DEFAULT_BURST};

/// Which queue and buckets a request uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    /// READ.
    Read,
    /// WRITE, TRIM, WRITE_ZEROES.
    Write,
}

/// The buckets of the limits set (none for a limit of 0).
#[derive(Debug, Default)]
struct Buckets {
    limits: QosLimits,
    iops: Option<TokenBucket>,
    read_iops: Option<TokenBucket>,
    write_iops: Option<TokenBucket>,
    bps: Option<TokenBucket>,
    read_bps: Option<TokenBucket>,
    write_bps: Option<TokenBucket>,
}

impl Buckets {
    fn new(limits: QosLimits, now: Instant) -> Buckets {
        let burst = match limits.burst_ms {
            0 => DEFAULT_BURST,
            ms => Duration::from_millis(ms),
        };
        let make = |rate: u64| (rate > 0).then(|| TokenBucket::new(rate, burst, now));
        Buckets {
            limits,
            iops: make(limits.iops),
            read_iops: make(limits.read_iops),
            write_iops: make(limits.write_iops),
            bps: make(limits.bps),
            read_bps: make(limits.read_bps),
            write_bps: make(limits.write_bps),
        }
    }

    /// The buckets a request uses, each with its cost.
    fn each(
        &mut self,
        dir: Direction,
        bytes: u64,
    ) -> impl Iterator<Item = (&mut TokenBucket, u64)> {
        let (iops, bps) = match dir {
            Direction::Read => (&mut self.read_iops, &mut self.read_bps),
            Direction::Write => (&mut self.write_iops, &mut self.write_bps),
        };
        let by_ops = [self.iops.as_mut(), iops.as_mut()]
            .into_iter()
            .flatten()
            .map(|b| (b, 1));
        let by_bytes = [self.bps.as_mut(), bps.as_mut()]
            .into_iter()
            .flatten()
            .filter(move |_| bytes > 0)
            .map(move |b| (b, bytes));
        by_ops.chain(by_bytes)
    }

    /// When the request may start: `now` or later.
    fn ready_at(&mut self, dir: Direction, bytes: u64, now: Instant) -> Instant {
        self.each(dir, bytes)
            .map(|(b, cost)| b.ready_at(cost, now))
            .max()
            .unwrap_or(now)
    }

    fn take(&mut self, dir: Direction, bytes: u64, now: Instant) {
        for (b, cost) in self.each(dir, bytes) {
            b.take(cost, now);
        }
    }
}

/// The limits of one volume and the requests they hold.
#[derive(Debug)]
pub struct Limiter {
    buckets: Mutex<Buckets>,
    /// Any limit set: requests go through the queues.
    enabled: AtomicBool,
    reads: tokio::sync::Mutex<()>,
    writes: tokio::sync::Mutex<()>,
    /// Bumped when the limits change: sleeping heads look again.
    changed: watch::Sender<u64>,
    throttled_requests: AtomicU64,
    throttled_ns: AtomicU64,
    waiting: AtomicU64,
}

impl Default for Limiter {
    fn default() -> Self {
        Limiter::new(QosLimits::default())
    }
}

impl Limiter {
    /// A limiter enforcing `limits` (all 0: nothing is held).
    pub fn new(limits: QosLimits) -> Limiter {
        Limiter {
            enabled: AtomicBool::new(limits.any()),
            buckets: Mutex::new(Buckets::new(limits, Instant::now())),
            reads: tokio::sync::Mutex::new(()),
            writes: tokio::sync::Mutex::new(()),
            changed: watch::Sender::new(0),
            throttled_requests: AtomicU64::new(0),
            throttled_ns: AtomicU64::new(0),
            waiting: AtomicU64::new(0),
        }
    }

    fn buckets(&self) -> MutexGuard<'_, Buckets> {
        self.buckets.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// True when some limit is set.
    pub fn enabled(&self) -> bool {
        self.enabled.load(Ordering::Acquire)
    }

    /// The limits now.
    pub fn limits(&self) -> QosLimits {
        self.buckets().limits
    }

    /// Replaces the limits (buckets start full); waiting requests look
    /// again at once.
    pub fn set(&self, limits: QosLimits) {
        *self.buckets() = Buckets::new(limits, Instant::now());
        self.enabled.store(limits.any(), Ordering::Release);
        self.changed.send_modify(|n| *n += 1);
    }

    /// The status snapshot.
    pub fn status(&self) -> QosStatus {
        QosStatus {
            limits: self.limits(),
            throttled_requests: self.throttled_requests.load(Ordering::Relaxed),
            throttled_us: self.throttled_ns.load(Ordering::Relaxed) / 1000,
            waiting: self.waiting.load(Ordering::Relaxed),
        }
    }

    /// Waits until a request of `bytes` in direction `dir` may start.
    pub async fn admit(&self, dir: Direction, bytes: u64) {
        if !self.enabled() {
            return;
        }
        let start = Instant::now();
        let _waiting = Waiting::new(&self.waiting);
        let queue = match dir {
            Direction::Read => &self.reads,
            Direction::Write => &self.writes,
        };
        let (_turn, mut held) = match queue.try_lock() {
            Ok(turn) => (turn, false),
            Err(_) => (queue.lock().await, true),
        };
        let mut changed = self.changed.subscribe();
        loop {
            let at = {
                let mut b = self.buckets();
                let now = Instant::now();
                let at = b.ready_at(dir, bytes, now);
                if at <= now {
                    b.take(dir, bytes, now);
                    break;
                }
                at
            };
            held = true;
            changed.mark_unchanged();
            tokio::select! {
                _ = tokio::time::sleep_until(at) => {}
                _ = changed.changed() => {}
            }
        }
        if held {
            let ns = u64::try_from(start.elapsed().as_nanos()).unwrap_or(u64::MAX);
            self.throttled_requests.fetch_add(1, Ordering::Relaxed);
            self.throttled_ns.fetch_add(ns, Ordering::Relaxed);
        }
    }
}

/// Counts a request for as long as it waits (dropped or not).
struct Waiting<'a>(&'a AtomicU64);

impl<'a> Waiting<'a> {
    fn new(n: &'a AtomicU64) -> Waiting<'a> {
        n.fetch_add(1, Ordering::Relaxed);
        Waiting(n)
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}
