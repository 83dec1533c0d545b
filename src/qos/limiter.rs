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
//!
//! In flight: a limited direction keeps at most `rate × latency × 1.5 + 1`
//! of its requests in the volume at once ([`in_flight_cap`]; latency: the
//! moving average of its own admitted requests, from admission to the
//! drop of their [`Admission`]). At the rate it needs no more (Little's
//! law), so the cap costs it nothing in steady state; it stops a burst (a
//! full bucket, a timer tick releasing several heads) from queueing many
//! member I/Os ahead of a neighbour's request.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::{watch, Notify};
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

    /// Requests a second the limits of `dir` allow requests of `bytes`
    /// (the lowest of them), `None` when `dir` has no limit.
    fn ops_rate(&mut self, dir: Direction, bytes: u64) -> Option<f64> {
        self.each(dir, bytes)
            .map(|(b, cost)| b.rate() as f64 / cost.max(1) as f64)
            .min_by(f64::total_cmp)
    }
}

/// Fewest requests a limited direction may have in flight.
pub const MIN_IN_FLIGHT: u64 = 2;

/// Headroom of the in-flight cap over rate × latency.
const IN_FLIGHT_HEADROOM: f64 = 1.5;

/// The in-flight cap at `ops_rate` requests a second whose latency is
/// `latency_ns` on average: `None` (no cap) before any latency is known.
pub fn in_flight_cap(ops_rate: f64, latency_ns: u64) -> Option<u64> {
    if latency_ns == 0 {
        return None;
    }
    let need = ops_rate * latency_ns as f64 / 1e9 * IN_FLIGHT_HEADROOM;
    Some((need.ceil() as u64).saturating_add(1).max(MIN_IN_FLIGHT))
}

/// The admitted requests of one direction in the volume.
#[derive(Debug, Default)]
struct Flight {
    /// In flight now.
    n: AtomicU64,
    /// Moving average of their latency (1/8 weight), ns; 0: none yet.
    latency_ns: AtomicU64,
    /// Woken when one ends.
    ended: Notify,
}

impl Flight {
    fn end(&self, latency: Duration) {
        let s = u64::try_from(latency.as_nanos()).unwrap_or(u64::MAX).max(1);
        let _ = self
            .latency_ns
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |old| {
                Some(match old {
                    0 => s,
                    old => old - old / 8 + s / 8,
                })
            });
        self.n.fetch_sub(1, Ordering::AcqRel);
        self.ended.notify_waiters();
    }
}

/// An admitted request: holds its place in flight until dropped (when the
/// request has ended). Empty for an unlimited direction.
#[derive(Debug, Default)]
pub struct Admission<'a> {
    slot: Option<(&'a Flight, Instant)>,
}

impl Drop for Admission<'_> {
    fn drop(&mut self) {
        if let Some((flight, at)) = self.slot.take() {
            flight.end(at.elapsed());
        }
    }
}

/// What the head of a queue waits for.
enum Wait {
    Until(Instant),
    Slot,
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
    /// Reads, writes in flight.
    flights: [Flight; 2],
    /// Requests that waited for room in flight, since start.
    capped_requests: AtomicU64,
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
            flights: Default::default(),
            capped_requests: AtomicU64::new(0),
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
            in_flight: self
                .flights
                .iter()
                .map(|f| f.n.load(Ordering::Relaxed))
                .sum(),
            capped_requests: self.capped_requests.load(Ordering::Relaxed),
        }
    }

    fn flight(&self, dir: Direction) -> &Flight {
        &self.flights[dir as usize]
    }

    /// The in-flight cap of `dir` for requests of `bytes` now (`None`:
    /// no cap).
    pub fn cap(&self, dir: Direction, bytes: u64) -> Option<u64> {
        let rate = self.buckets().ops_rate(dir, bytes)?;
        in_flight_cap(rate, self.flight(dir).latency_ns.load(Ordering::Relaxed))
    }

    /// Starts the request if its buckets and the in-flight cap allow it
    /// now (takes its tokens and a place in flight), else what to wait for.
    fn try_start(&self, dir: Direction, bytes: u64) -> Result<(), Wait> {
        let flight = self.flight(dir);
        let mut b = self.buckets();
        let now = Instant::now();
        let at = b.ready_at(dir, bytes, now);
        if at > now {
            return Err(Wait::Until(at));
        }
        let latency = flight.latency_ns.load(Ordering::Relaxed);
        let cap = b
            .ops_rate(dir, bytes)
            .and_then(|rate| in_flight_cap(rate, latency));
        // Only the head of the queue adds: the count cannot pass the cap.
        if cap.is_some_and(|cap| flight.n.load(Ordering::Acquire) >= cap) {
            return Err(Wait::Slot);
        }
        b.take(dir, bytes, now);
        flight.n.fetch_add(1, Ordering::AcqRel);
        Ok(())
    }

    /// Waits until a request of `bytes` in direction `dir` may start;
    /// the request is in flight until the [`Admission`] is dropped.
    pub async fn admit(&self, dir: Direction, bytes: u64) -> Admission<'_> {
        if !self.enabled() {
            return Admission::default();
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
        let flight = self.flight(dir);
        let mut capped = false;
        loop {
            let ended = flight.ended.notified();
            tokio::pin!(ended);
            ended.as_mut().enable();
            let wait = match self.try_start(dir, bytes) {
                Ok(()) => break,
                Err(wait) => wait,
            };
            held = true;
            changed.mark_unchanged();
            match wait {
                Wait::Until(at) => tokio::select! {
                    _ = tokio::time::sleep_until(at) => {}
                    _ = changed.changed() => {}
                },
                Wait::Slot => {
                    capped = true;
                    tokio::select! {
                        _ = ended => {}
                        _ = changed.changed() => {}
                    }
                }
            }
        }
        if held {
            let ns = u64::try_from(start.elapsed().as_nanos()).unwrap_or(u64::MAX);
            self.throttled_requests.fetch_add(1, Ordering::Relaxed);
            self.throttled_ns.fetch_add(ns, Ordering::Relaxed);
        }
        if capped {
            self.capped_requests.fetch_add(1, Ordering::Relaxed);
        }
        Admission {
            slot: Some((flight, Instant::now())),
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
