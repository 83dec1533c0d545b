//! The shared parts of the bounded checksum-page cache (docs/FORMAT.md §8
//! "Page cache"): the byte budget one array's stores share with its
//! counters ([`CacheBudget`], read out as [`CacheStats`]), and the set of
//! pages a store made writable in this run ([`PageSet`], sparse: it grows
//! with the pages touched, never with the member's size).
//!
//! ```text
//!  CsumStore (role 0) ─┐
//!  CsumStore (role 1) ─┼─► CacheBudget: resident bytes vs limit, hits,
//!  CsumStore (role n) ─┘      misses, evictions, write-backs ─► CacheStats
//! ```

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};

use super::page::PAGE_BYTES;

/// The default budget of one array's checksum pages.
pub const DEFAULT_BUDGET: u64 = 64 << 20;
/// The smallest budget honoured: a few pages per member, so a request
/// spanning two pages never evicts itself. A smaller one is raised to it,
/// with a warning ([`CacheBudget::new`]): the memory used is then more than
/// the configuration said.
pub const MIN_BUDGET: u64 = 64 * PAGE_BYTES as u64;

/// The budget and counters of one array's checksum pages.
#[derive(Debug)]
pub struct CacheBudget {
    limit: u64,
    resident: AtomicU64,
    hits: AtomicU64,
    misses: AtomicU64,
    loads: AtomicU64,
    evictions: AtomicU64,
    writebacks: AtomicU64,
}

/// A snapshot of one array's checksum-page cache, for `vraid status` and
/// the metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct CacheStats {
    /// The configured budget, bytes.
    pub budget_bytes: u64,
    /// Pages held in memory, bytes.
    pub resident_bytes: u64,
    /// Page look-ups served from memory.
    pub hits: u64,
    /// Page look-ups that had to load (or create) the page.
    pub misses: u64,
    /// Pages read from the members (misses of pages that exist there).
    #[serde(default)]
    pub loads: u64,
    /// Pages dropped to stay within the budget.
    pub evictions: u64,
    /// Dirty pages written back to make room (flushes' write-backs are not
    /// counted here).
    pub writebacks: u64,
}

impl CacheStats {
    /// Hits over look-ups (1 when nothing was looked up).
    pub fn hit_rate(&self) -> f64 {
        let total = self.hits + self.misses;
        if total == 0 {
            1.0
        } else {
            self.hits as f64 / total as f64
        }
    }
}

impl CacheBudget {
    /// A budget of `limit` bytes (raised to [`MIN_BUDGET`], with a warning).
    pub fn new(limit: u64) -> CacheBudget {
        if limit < MIN_BUDGET {
            tracing::warn!(
                requested = limit,
                minimum = MIN_BUDGET,
                "checksum cache budget below the minimum: raised to 256K"
            );
        }
        CacheBudget {
            limit: limit.max(MIN_BUDGET),
            resident: AtomicU64::new(0),
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
            loads: AtomicU64::new(0),
            evictions: AtomicU64::new(0),
            writebacks: AtomicU64::new(0),
        }
    }

    /// The limit in bytes.
    pub fn limit(&self) -> u64 {
        self.limit
    }

    /// Pages to free before one more fits: down to the limit minus a slack
    /// of 1/32 of it, so write-backs of dirty pages go out in batches.
    pub(super) fn excess_pages(&self) -> u64 {
        let page = PAGE_BYTES as u64;
        let resident = self.resident.load(Ordering::Acquire);
        if resident + page <= self.limit {
            return 0;
        }
        let target = self.limit - (self.limit / 32).max(page);
        (resident + page - target).div_ceil(page)
    }

    pub(super) fn add_page(&self) {
        self.resident.fetch_add(PAGE_BYTES as u64, Ordering::AcqRel);
    }

    pub(super) fn remove_pages(&self, n: u64) {
        self.resident
            .fetch_sub(n * PAGE_BYTES as u64, Ordering::AcqRel);
    }

    pub(super) fn hit(&self) {
        self.hits.fetch_add(1, Ordering::Relaxed);
    }

    pub(super) fn miss(&self) {
        self.misses.fetch_add(1, Ordering::Relaxed);
    }

    pub(super) fn loaded(&self) {
        self.loads.fetch_add(1, Ordering::Relaxed);
    }

    pub(super) fn evicted(&self, n: u64) {
        self.evictions.fetch_add(n, Ordering::Relaxed);
    }

    pub(super) fn written_back(&self, n: u64) {
        self.writebacks.fetch_add(n, Ordering::Relaxed);
    }

    /// The counters now.
    pub fn stats(&self) -> CacheStats {
        CacheStats {
            budget_bytes: self.limit,
            resident_bytes: self.resident.load(Ordering::Acquire),
            hits: self.hits.load(Ordering::Relaxed),
            misses: self.misses.load(Ordering::Relaxed),
            loads: self.loads.load(Ordering::Relaxed),
            evictions: self.evictions.load(Ordering::Relaxed),
            writebacks: self.writebacks.load(Ordering::Relaxed),
        }
    }
}

impl Default for CacheBudget {
    fn default() -> Self {
        CacheBudget::new(DEFAULT_BUDGET)
    }
}

/// Pages per chunk of a [`PageSet`] (64 words of bits).
const CHUNK_PAGES: u64 = 64 * 64;

/// A sparse set of page indexes: bit chunks created on first insert, so
/// an empty set costs nothing whatever the member's size (a full 16 TiB
/// member costs 512 KiB).
#[derive(Default, Debug)]
pub struct PageSet {
    chunks: HashMap<u64, Box<[u64; 64]>>,
}

impl PageSet {
    /// Whether `page` is in the set.
    pub fn contains(&self, page: u64) -> bool {
        let (chunk, bit) = (page / CHUNK_PAGES, page % CHUNK_PAGES);
        self.chunks
            .get(&chunk)
            .is_some_and(|c| c[(bit / 64) as usize] & (1 << (bit % 64)) != 0)
    }

    /// Adds `page`.
    pub fn insert(&mut self, page: u64) {
        let (chunk, bit) = (page / CHUNK_PAGES, page % CHUNK_PAGES);
        let c = self
            .chunks
            .entry(chunk)
            .or_insert_with(|| Box::new([0; 64]));
        c[(bit / 64) as usize] |= 1 << (bit % 64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_set_is_sparse_and_exact() {
        let mut s = PageSet::default();
        assert!(!s.contains(0));
        for p in [0, 63, 64, 4095, 4096, 1 << 40] {
            s.insert(p);
        }
        for p in [0, 63, 64, 4095, 4096, 1 << 40] {
            assert!(s.contains(p), "{p}");
        }
        for p in [1, 62, 65, 4094, 4097, (1 << 40) + 1] {
            assert!(!s.contains(p), "{p}");
        }
        assert_eq!(s.chunks.len(), 3);
    }

    #[test]
    fn excess_leaves_a_slack_and_hit_rate_counts() {
        let b = CacheBudget::new(MIN_BUDGET);
        assert_eq!(b.excess_pages(), 0);
        for _ in 0..64 {
            b.add_page();
        }
        // 64 resident, one more wanted, target 62 (slack 1/32): three.
        assert_eq!(b.excess_pages(), 3);
        b.hit();
        b.hit();
        b.hit();
        b.miss();
        assert_eq!(b.stats().hit_rate(), 0.75);
        assert_eq!(CacheBudget::new(1).limit(), MIN_BUDGET);
    }
}
