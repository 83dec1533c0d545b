//! The crash states a disk with a volatile write cache allows, given the
//! log of what its clients had acknowledged (as CrashMonkey and
//! dm-log-writes users enumerate them).
//!
//! A state is a *cut* (the entries acknowledged before the power went)
//! and the entries of it that are *dropped* (never reached the medium).
//! What may be dropped: a write, trim or zeroing that is neither FUA nor
//! covered by a FLUSH that completed before the cut. Two families:
//! - every flush point: the cut right after a FLUSH record, nothing
//!   dropped (and the end of the log, everything kept);
//! - per window between two FLUSHes, `subsets` seeded draws: a cut
//!   uniform in the window, each droppable entry dropped with
//!   probability 1/2. The whole set is exponential; these are samples,
//!   repeatable from the seed.

use serde::{Deserialize, Serialize};

use super::format::{RecordKind, FLAG_FUA};
use super::scan::LogIndex;
use crate::member::fault::Rng;

/// How many crash states to draw.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CrashOptions {
    /// Random subsets per window between FLUSHes (0: flush points only).
    pub subsets: usize,
    /// Seed of the draws.
    pub seed: u64,
    /// At most this many points in all.
    pub max: usize,
    /// Only points whose cut is past this entry number.
    pub after: u64,
    /// Only points whose cut is at most this (`u64::MAX`: no bound).
    pub before: u64,
}

/// One crash state.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CrashPoint {
    /// Its number in the enumeration (for `replay --crashpoint`).
    pub id: usize,
    /// `flush:K`, `end` or `subset:K.J` (window before flush K, draw J).
    pub label: String,
    /// Entries acknowledged before the power went: `0..cut`.
    pub cut: u64,
    /// Entries of `0..cut` that every state keeps (covered by a FLUSH).
    pub durable: u64,
    /// Entries of `durable..cut` dropped, in order.
    pub dropped: Vec<u64>,
}

/// Every flush point, then the drawn subsets, window by window.
pub fn crash_points(index: &LogIndex, opts: CrashOptions) -> Vec<CrashPoint> {
    let n = index.entries.len() as u64;
    let flushes = index.flushes();
    let mut points = Vec::new();
    let mut push = |label: String, cut: u64, durable: u64, dropped: Vec<u64>| {
        if cut > opts.after && cut <= opts.before && points.len() < opts.max {
            let id = points.len();
            points.push(CrashPoint {
                id,
                label,
                cut,
                durable,
                dropped,
            });
        }
    };
    for (k, &f) in flushes.iter().enumerate() {
        push(format!("flush:{k}"), f + 1, covers(index, f), Vec::new());
    }
    if flushes.last().is_none_or(|&f| f + 1 < n) {
        push("end".into(), n, 0, Vec::new());
    }
    let rng = Rng::new(opts.seed);
    let windows = flushes.iter().copied().chain([n]);
    let mut start = 0u64;
    let mut durable = 0u64;
    for (k, end) in windows.enumerate() {
        for j in 0..opts.subsets {
            if let Some((cut, dropped)) = draw(index, &rng, start, end, durable) {
                push(format!("subset:{k}.{j}"), cut, durable, dropped);
            }
        }
        if end < n {
            durable = covers(index, end);
            start = end + 1;
        }
    }
    points
}

/// How many entries the FLUSH at `f` covers.
fn covers(index: &LogIndex, f: u64) -> u64 {
    index.entries[f as usize].head.offset
}

/// One draw in the window `start..end` (entries after one FLUSH record
/// and before the next); None when nothing in it could be dropped.
fn draw(
    index: &LogIndex,
    rng: &Rng,
    start: u64,
    end: u64,
    durable: u64,
) -> Option<(u64, Vec<u64>)> {
    if end <= start {
        return None;
    }
    let cut = start + 1 + rng.next_u64() % (end - start);
    let droppable: Vec<u64> = (durable..cut).filter(|&i| droppable(index, i)).collect();
    if droppable.is_empty() {
        return None;
    }
    let dropped: Vec<u64> = droppable
        .into_iter()
        .filter(|_| rng.next_u64() & 1 == 1)
        .collect();
    Some((cut, dropped))
}

/// A write, trim or zeroing that is not FUA.
fn droppable(index: &LogIndex, i: u64) -> bool {
    let head = &index.entries[i as usize].head;
    head.kind.changes_data() && head.flags & FLAG_FUA == 0 && head.kind != RecordKind::Flush
}
