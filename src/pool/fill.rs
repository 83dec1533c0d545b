//! Fill thresholds of pools: percent-full levels (config `fill_events`,
//! `vraid pool set POOL --fill-events 80,90,95`) that raise one event
//! when the pool's used space reaches them and one more when it falls
//! [`HYSTERESIS`] points below again (re-armed), never one per check in
//! between. Pure state: the daemon observes every pool's space now and
//! then and records the events this returns.
//!
//! ```text
//!  used % ─ observe ─► per threshold: below ──(≥ t)──► above: "pool_fill"
//!                                     ▲                  │
//!                                     └─(< t - 5)─────────┘ "pool_fill_cleared"
//! ```

use std::collections::HashMap;
use std::sync::Mutex;

/// Points below a threshold that re-arm it.
pub const HYSTERESIS: f64 = 5.0;

/// Thresholds when neither the config nor `pool set` gave any.
pub const DEFAULT_THRESHOLDS: [u8; 3] = [80, 90, 95];

/// One crossing.
#[derive(Clone, Debug, PartialEq)]
pub struct FillEvent {
    /// `pool_fill` (reached) or `pool_fill_cleared` (back below, re-armed).
    pub kind: &'static str,
    /// The threshold, percent.
    pub threshold: u8,
    /// Used percent when seen.
    pub used_percent: f64,
}

#[derive(Debug, Default)]
struct Levels {
    thresholds: Vec<u8>,
    /// Per threshold: reached and not yet re-armed.
    above: Vec<bool>,
}

/// The thresholds and their state, per pool.
#[derive(Debug, Default)]
pub struct FillWatch {
    pools: Mutex<HashMap<String, Levels>>,
}

/// Why a threshold list is refused.
pub fn check_thresholds(t: &[u8]) -> Result<(), String> {
    if let Some(bad) = t.iter().find(|&&n| n == 0 || n > 100) {
        return Err(format!("{bad} is not a percentage from 1 to 100"));
    }
    if t.windows(2).any(|w| w[0] >= w[1]) {
        return Err("thresholds must be ascending, each once".into());
    }
    Ok(())
}

impl FillWatch {
    fn levels(&self) -> std::sync::MutexGuard<'_, HashMap<String, Levels>> {
        self.pools.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Sets the thresholds of `pool` (checked with [`check_thresholds`]);
    /// all armed again, so levels already passed are reported once more.
    pub fn set(&self, pool: &str, thresholds: Vec<u8>) {
        let above = vec![false; thresholds.len()];
        self.levels()
            .insert(pool.to_string(), Levels { thresholds, above });
    }

    /// The thresholds of `pool`.
    pub fn thresholds(&self, pool: &str) -> Vec<u8> {
        self.levels()
            .get(pool)
            .map_or_else(|| DEFAULT_THRESHOLDS.to_vec(), |l| l.thresholds.clone())
    }

    /// Records that `pool` has `used` of `total` bytes in use; returns
    /// the crossings since the last observation.
    pub fn observe(&self, pool: &str, used: u64, total: u64) -> Vec<FillEvent> {
        let pct = if total == 0 {
            0.0
        } else {
            used as f64 * 100.0 / total as f64
        };
        let mut levels = self.levels();
        let l = levels.entry(pool.to_string()).or_insert_with(|| Levels {
            thresholds: DEFAULT_THRESHOLDS.to_vec(),
            above: vec![false; DEFAULT_THRESHOLDS.len()],
        });
        let mut out = Vec::new();
        for (t, above) in l.thresholds.iter().zip(l.above.iter_mut()) {
            let crossed = if !*above && pct >= f64::from(*t) {
                Some("pool_fill")
            } else if *above && pct < f64::from(*t) - HYSTERESIS {
                Some("pool_fill_cleared")
            } else {
                None
            };
            if let Some(kind) = crossed {
                *above = !*above;
                out.push(FillEvent {
                    kind,
                    threshold: *t,
                    used_percent: pct,
                });
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kinds(ev: &[FillEvent]) -> Vec<(&'static str, u8)> {
        ev.iter().map(|e| (e.kind, e.threshold)).collect()
    }

    #[test]
    fn each_crossing_is_reported_once_with_hysteresis() {
        let w = FillWatch::default();
        w.set("p", vec![50, 90]);

        assert!(w.observe("p", 49, 100).is_empty());
        assert_eq!(kinds(&w.observe("p", 50, 100)), vec![("pool_fill", 50)]);
        assert!(w.observe("p", 60, 100).is_empty(), "no repeat while above");
        assert!(w.observe("p", 46, 100).is_empty(), "inside the hysteresis");
        assert!(w.observe("p", 52, 100).is_empty(), "no repeat after a dip");
        assert_eq!(
            kinds(&w.observe("p", 44, 100)),
            vec![("pool_fill_cleared", 50)]
        );
        assert_eq!(
            kinds(&w.observe("p", 95, 100)),
            vec![("pool_fill", 50), ("pool_fill", 90)],
            "a jump past two thresholds reports both"
        );
        assert!(w.observe("p", 100, 100).is_empty());
    }

    #[test]
    fn setting_thresholds_rearms_them_and_defaults_apply_to_unset_pools() {
        let w = FillWatch::default();
        assert_eq!(kinds(&w.observe("q", 81, 100)), vec![("pool_fill", 80)]);
        assert_eq!(w.thresholds("q"), vec![80, 90, 95]);
        w.set("q", vec![70]);
        assert_eq!(kinds(&w.observe("q", 81, 100)), vec![("pool_fill", 70)]);
        assert!(w.observe("empty", 0, 0).is_empty());
    }

    #[test]
    fn bad_threshold_lists_are_refused() {
        assert!(check_thresholds(&[80, 90, 95]).is_ok());
        assert!(check_thresholds(&[]).is_ok());
        assert!(check_thresholds(&[0]).is_err());
        assert!(check_thresholds(&[101]).is_err());
        assert!(check_thresholds(&[90, 80]).is_err());
        assert!(check_thresholds(&[80, 80]).is_err());
    }
}
