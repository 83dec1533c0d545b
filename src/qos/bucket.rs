//! One token bucket, pure arithmetic over tokio's clock (no I/O, no
//! waiting): a rate in tokens per second, a capacity (the burst), and a
//! level that may go below zero.
//!
//! ```text
//!  level(t) = min(capacity, level(t0) + rate × (t - t0))
//!  a request of `cost` may start once level ≥ min(cost, capacity);
//!  starting takes `cost` (the level may go negative: a request larger
//!  than the burst is paid for by the requests after it)
//! ```
//!
//! Levels are kept in nano-tokens (token × 10⁹) so that one nanosecond
//! of refill at any integer rate is exact.

use std::time::Duration;

use tokio::time::Instant;

/// Nano-tokens per token.
const NANO: i128 = 1_000_000_000;

/// A token bucket.
#[derive(Clone, Debug)]
pub struct TokenBucket {
    /// Tokens per second (> 0).
    rate: u64,
    /// Most nano-tokens held.
    capacity: i128,
    /// Nano-tokens held at `at` (may be negative).
    level: i128,
    at: Instant,
}

impl TokenBucket {
    /// A full bucket refilling at `rate` tokens a second and holding
    /// `burst` worth of them (at least one token).
    pub fn new(rate: u64, burst: Duration, now: Instant) -> TokenBucket {
        let rate = rate.max(1);
        // Saturating: `vraid set --iops 18446744073709551615 --burst 1000d`
        // must not wrap to a one-token bucket (or panic in a debug build).
        let burst_ns = i128::try_from(burst.as_nanos()).unwrap_or(i128::MAX);
        let capacity = i128::from(rate).saturating_mul(burst_ns).max(NANO);
        TokenBucket {
            rate,
            capacity,
            level: capacity,
            at: now,
        }
    }

    /// Tokens per second.
    pub fn rate(&self) -> u64 {
        self.rate
    }

    fn refill(&mut self, now: Instant) {
        if now <= self.at {
            return;
        }
        let ns = i128::try_from(now.duration_since(self.at).as_nanos()).unwrap_or(i128::MAX);
        let gained = ns.saturating_mul(i128::from(self.rate));
        self.level = self.level.saturating_add(gained).min(self.capacity);
        self.at = now;
    }

    /// When a request of `cost` tokens may start (`now` if it may now).
    pub fn ready_at(&mut self, cost: u64, now: Instant) -> Instant {
        self.refill(now);
        let need = (i128::from(cost) * NANO).min(self.capacity);
        if self.level >= need {
            return now;
        }
        let missing = need - self.level;
        let rate = i128::from(self.rate);
        let ns = (missing + rate - 1) / rate;
        now + Duration::from_nanos(u64::try_from(ns).unwrap_or(u64::MAX))
    }

    /// Takes `cost` tokens at `now` (after [`TokenBucket::ready_at`] said so).
    pub fn take(&mut self, cost: u64, now: Instant) {
        self.refill(now);
        self.level = self.level.saturating_sub(i128::from(cost) * NANO);
    }

    /// Tokens held now, rounded down (negative: owed).
    pub fn level(&mut self, now: Instant) -> i64 {
        self.refill(now);
        let tokens = self.level / NANO;
        i64::try_from(tokens).unwrap_or(if tokens > 0 { i64::MAX } else { i64::MIN })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[tokio::test(start_paused = true)]
    async fn a_full_bucket_lets_its_burst_through_then_paces_at_the_rate() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(100, ms(100), t0);

        for _ in 0..10 {
            assert_eq!(b.ready_at(1, t0), t0);
            b.take(1, t0);
        }

        assert_eq!(b.ready_at(1, t0), t0 + ms(10));
    }

    #[tokio::test(start_paused = true)]
    async fn the_level_never_exceeds_the_capacity() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(1000, ms(10), t0);

        let later = t0 + Duration::from_secs(60);

        assert_eq!(b.level(later), 10);
    }

    #[tokio::test(start_paused = true)]
    async fn a_request_larger_than_the_burst_waits_for_a_full_bucket_and_leaves_a_debt() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(1 << 20, ms(100), t0);
        b.take(1 << 20, t0);
        assert!(b.level(t0) < 0);

        let at = b.ready_at(4 << 20, t0);

        // Owed 1 MiB − 102.4 KiB, then a full 102.4 KiB bucket: 1 s.
        assert_eq!(at, t0 + Duration::from_secs(1));
        b.take(4 << 20, at);
        // Then 3.9 s of debt (4 MiB − 0.1 s of burst) before the next.
        let next = b.ready_at(1, at).duration_since(at);
        assert!(next > ms(3900) && next < ms(3901), "{next:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn over_a_long_run_the_rate_holds_whatever_the_request_sizes() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(1000, ms(100), t0);
        let mut now = t0;
        let mut taken = 0u64;
        for i in 0..5000u64 {
            let cost = 1 + (i * 7919) % 13;
            now = b.ready_at(cost, now);
            b.take(cost, now);
            taken += cost;
        }

        let secs = now.duration_since(t0).as_secs_f64();
        let rate = (taken - 100) as f64 / secs;
        assert!((990.0..=1010.0).contains(&rate), "rate {rate}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_zero_burst_still_holds_one_token() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(10, Duration::ZERO, t0);

        assert_eq!(b.ready_at(1, t0), t0);
        b.take(1, t0);

        assert_eq!(b.ready_at(1, t0), t0 + ms(100));
    }

    /// Red team (RT3): huge rates and bursts (all the CLI and JSON-RPC
    /// take) saturate instead of wrapping to a one-token bucket or
    /// panicking.
    #[tokio::test(start_paused = true)]
    async fn huge_rates_and_bursts_saturate_instead_of_wrapping() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(u64::MAX, Duration::from_millis(u64::MAX), t0);

        for _ in 0..1000 {
            assert_eq!(b.ready_at(u64::MAX, t0), t0);
            b.take(32 << 20, t0);
        }
        let much_later = t0 + Duration::from_secs(100 * 365 * 86400);
        assert_eq!(b.ready_at(u64::MAX, much_later), much_later);
        assert!(b.level(much_later) > 1 << 40);
    }
}
