//! Where a pool write's time goes (issue 11, the snapshot pause): each
//! write of a thin volume carries a [`Phases`] that adds the time since
//! the last mark to the phase just ended; a write slower than
//! [`SLOW_US`] logs one `slow pool write` line (info, target
//! `vraid::pool::slow`) with every phase in µs. `benches/snapshot-pause.sh`
//! sums those lines per phase.
//!
//! ```text
//!  gate ─► wgate ─► lock(+lookup) ─► in place | record
//!                                 └► reserve ─► zeroed ─► permit ─► copy ─► map_lock ─► map ─► safe
//! ```

use std::time::Instant;

/// A write at least this slow (µs) is logged with its phases.
pub(crate) const SLOW_US: u64 = 10_000;

/// The phases of one write, in the order they run.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Phase {
    /// Waiting for the pool's I/O gate (shared).
    Gate,
    /// Waiting for the volume's write gate (a snapshot holds it).
    WGate,
    /// Waiting for the metadata lock, and the lookup under it.
    Lock,
    /// The in-place data write of an exclusive cluster.
    InPlace,
    /// A split record's in-place write or granule fill (case 3).
    Record,
    /// Reserving a fresh cluster (under the lock).
    Reserve,
    /// Waiting until the `zeroed_from` raise covering it is durable.
    Zeroed,
    /// Waiting for a copy permit.
    Permit,
    /// The fill, copy or split data I/O.
    Copy,
    /// Waiting for the metadata lock to map the fresh cluster.
    MapLock,
    /// Mapping it (count, leaf entry; shadowing shared pages).
    Map,
    /// The safe point after (a commit once the transaction is large).
    Safe,
}

const NAMES: [&str; 12] = [
    "gate", "wgate", "lock", "inplace", "record", "reserve", "zeroed", "permit", "copy",
    "map_lock", "map", "safe",
];

/// Phase times of one write.
#[derive(Debug)]
pub(crate) struct Phases {
    start: Instant,
    last: Instant,
    us: [u64; 12],
}

impl Phases {
    pub(crate) fn new() -> Self {
        let now = Instant::now();
        Phases {
            start: now,
            last: now,
            us: [0; 12],
        }
    }

    /// Ends phase `p` now (the time since the previous mark is its).
    pub(crate) fn mark(&mut self, p: Phase) {
        let now = Instant::now();
        self.us[p as usize] += now.duration_since(self.last).as_micros() as u64;
        self.last = now;
    }

    /// µs spent in phase `p` so far.
    #[cfg(test)]
    pub(crate) fn of(&self, p: Phase) -> u64 {
        self.us[p as usize]
    }

    /// The `k=v` list of the phases that took any time.
    pub(crate) fn line(&self) -> String {
        let parts: Vec<String> = NAMES
            .iter()
            .zip(self.us)
            .filter(|(_, us)| *us > 0)
            .map(|(n, us)| format!("{n}_us={us}"))
            .collect();
        parts.join(" ")
    }

    /// Logs the write if it was slow.
    pub(crate) fn finish(&self, volume: &str) {
        let total = self.start.elapsed().as_micros() as u64;
        if total >= SLOW_US {
            tracing::info!(
                target: "vraid::pool::slow",
                volume,
                "slow pool write total_us={total} {}",
                self.line()
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn marks_add_to_their_phase_and_the_line_names_only_used_ones() {
        let mut ph = Phases::new();
        std::thread::sleep(std::time::Duration::from_millis(2));
        ph.mark(Phase::Zeroed);
        ph.mark(Phase::Copy);
        assert!(ph.of(Phase::Zeroed) >= 2000);
        let line = ph.line();
        assert!(line.starts_with("zeroed_us="), "{line}");
        assert!(!line.contains("gate_us"), "{line}");
    }
}
