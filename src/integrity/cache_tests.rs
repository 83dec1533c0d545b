//! Property test of the bounded page cache: random updates, reads,
//! flush write-backs and evictions (a budget far below the pages touched)
//! against a model of the entries, on an in-memory checksum area.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use proptest::prelude::*;

use super::cache::{CacheBudget, MIN_BUDGET};
use super::page::{decode_page, encode_page, PAGE_BYTES, PAGE_ENTRIES, UNKNOWN};
use super::CsumStore;
use crate::block::{BlockDevice, Durability};
use crate::raid::test_support::TestDevice;
use crate::units::ByteOffset;

/// Pages the test touches: three times the budget.
const PAGES: u64 = 3 * MIN_BUDGET / PAGE_BYTES as u64;
const AREA: u64 = 4096;

#[derive(Debug, Clone)]
enum Op {
    Set {
        page: u64,
        at: usize,
        values: Vec<u32>,
    },
    Fill {
        page: u64,
        at: usize,
        n: usize,
        value: u32,
    },
    Read {
        page: u64,
        at: usize,
        n: usize,
    },
    Flush,
}

fn op() -> impl Strategy<Value = Op> {
    let page = 0..PAGES;
    let at = 0..PAGE_ENTRIES;
    prop_oneof![
        4 => (page.clone(), at.clone(), prop::collection::vec(1u32.., 1..40))
            .prop_map(|(page, at, values)| Op::Set { page, at, values }),
        1 => (page.clone(), at.clone(), 1usize..3000, any::<u32>())
            .prop_map(|(page, at, n, value)| Op::Fill { page, at, n, value }),
        3 => (page, at, 1usize..2000).prop_map(|(page, at, n)| Op::Read { page, at, n }),
        1 => Just(Op::Flush),
    ]
}

/// What an area holds before the run: garbage a fresh store must never
/// show, entries a reused store must load.
fn initial(block: u64) -> u32 {
    (block as u32).wrapping_mul(2_654_435_761) | 1
}

struct Model {
    fresh: bool,
    entries: HashMap<u64, u32>,
    /// Fresh store: pages it created (written back as all unknown).
    touched: HashSet<u64>,
}

impl Model {
    fn get(&self, b: u64) -> u32 {
        match self.entries.get(&b) {
            Some(&e) => e,
            None if self.fresh => UNKNOWN,
            None => initial(b),
        }
    }

    fn touch(&mut self, first: u64, n: u64) {
        let per = PAGE_ENTRIES as u64;
        for p in first / per..(first + n).div_ceil(per) {
            self.touched.insert(p);
        }
    }
}

async fn disk_page(area: &TestDevice, p: u64) -> Vec<u32> {
    let mut buf = vec![0u8; PAGE_BYTES];
    let at = AREA + p * PAGE_BYTES as u64;
    area.mem.read(ByteOffset(at), &mut buf).await.unwrap();
    decode_page(&buf)
}

async fn run(fresh: bool, ops: Vec<Op>) {
    let blocks = PAGES * PAGE_ENTRIES as u64 - 7;
    let area = TestDevice::new("area", AREA + PAGES * PAGE_BYTES as u64);
    for p in 0..PAGES {
        let first = p * PAGE_ENTRIES as u64;
        let page: Vec<u32> = (first..first + PAGE_ENTRIES as u64).map(initial).collect();
        let at = ByteOffset(AREA + p * PAGE_BYTES as u64);
        area.mem
            .write(at, &encode_page(&page), Durability::Normal)
            .await
            .unwrap();
    }
    let budget = Arc::new(CacheBudget::new(MIN_BUDGET));
    let store = CsumStore::with_budget(area.clone(), AREA, blocks, fresh, budget.clone());
    let mut model = Model {
        fresh,
        entries: HashMap::new(),
        touched: HashSet::new(),
    };
    let clamp = |page: u64, at: usize, n: usize| {
        let first = (page * PAGE_ENTRIES as u64 + at as u64).min(blocks - 1);
        (first, (n as u64).min(blocks - first))
    };
    for op in ops {
        match op {
            Op::Set { page, at, values } => {
                let (first, n) = clamp(page, at, values.len());
                store.set(first, &values[..n as usize]).await.unwrap();
                for (b, &v) in (first..).zip(&values[..n as usize]) {
                    model.entries.insert(b, v);
                }
                model.touch(first, n);
            }
            Op::Fill { page, at, n, value } => {
                let (first, n) = clamp(page, at, n);
                store.fill(first, n, value).await.unwrap();
                for b in first..first + n {
                    model.entries.insert(b, value);
                }
                model.touch(first, n);
            }
            Op::Read { page, at, n } => {
                let (first, n) = clamp(page, at, n);
                let got = store.entries(first, n).await.unwrap();
                let want: Vec<u32> = (first..first + n).map(|b| model.get(b)).collect();
                assert_eq!(got, want, "entries {first}+{n}");
                model.touch(first, n);
            }
            Op::Flush => {
                store.write_pages(Durability::Normal).await.unwrap();
                assert_eq!(store.dirty_pages(), 0);
                // Nothing older than the last flush on disk: every page
                // equals the model (a fresh store: every page it touched).
                for p in 0..PAGES {
                    if fresh && !model.touched.contains(&p) {
                        continue;
                    }
                    let disk = disk_page(&area, p).await;
                    let first = p * PAGE_ENTRIES as u64;
                    for (i, &e) in disk.iter().enumerate() {
                        let b = first + i as u64;
                        let want = if b < blocks { model.get(b) } else { disk[i] };
                        assert_eq!(e, want, "page {p} entry {i} after a flush");
                    }
                }
            }
        }
        let resident = budget.stats().resident_bytes;
        assert!(
            resident <= MIN_BUDGET + PAGE_BYTES as u64,
            "{resident} resident"
        );
        assert_eq!(resident, store.resident_pages() as u64 * PAGE_BYTES as u64);
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    #[test]
    fn cache_matches_a_model_under_eviction(fresh: bool, ops in prop::collection::vec(op(), 1..120)) {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(run(fresh, ops));
    }
}

#[tokio::test]
async fn evictions_write_back_dirty_pages_and_count_them() {
    let area = TestDevice::new("area", AREA + PAGES * PAGE_BYTES as u64);
    let budget = Arc::new(CacheBudget::new(MIN_BUDGET));
    let blocks = PAGES * PAGE_ENTRIES as u64;
    let store = CsumStore::with_budget(area.clone(), AREA, blocks, false, budget.clone());
    for p in 0..PAGES {
        store
            .set(p * PAGE_ENTRIES as u64, &[p as u32 + 10])
            .await
            .unwrap();
    }
    let s = budget.stats();
    assert!(
        s.evictions >= PAGES - MIN_BUDGET / PAGE_BYTES as u64,
        "{s:?}"
    );
    assert!(s.writebacks > 0 && s.misses == PAGES, "{s:?}");
    // Evicted pages were written back: reloading them gives the entries.
    for p in 0..PAGES {
        let e = store.entries(p * PAGE_ENTRIES as u64, 1).await.unwrap();
        assert_eq!(e, vec![p as u32 + 10]);
    }
    assert!(budget.stats().hits + budget.stats().misses > PAGES);
}

/// Tasks updating disjoint blocks, reading them back and flushing, all at
/// once on a multi-threaded runtime with a budget a third of the pages
/// touched: no update is lost to a racing eviction or write-back, and
/// after a final write-back the area holds every last value.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_updates_survive_evictions_and_write_backs() {
    let area = TestDevice::new("area", AREA + PAGES * PAGE_BYTES as u64);
    area.yield_first
        .store(true, std::sync::atomic::Ordering::SeqCst);
    let budget = Arc::new(CacheBudget::new(MIN_BUDGET));
    let blocks = PAGES * PAGE_ENTRIES as u64;
    let store = Arc::new(CsumStore::with_budget(
        area.clone(),
        AREA,
        blocks,
        false,
        budget.clone(),
    ));
    const TASKS: u64 = 8;
    let mut handles = Vec::new();
    for t in 0..TASKS {
        let store = store.clone();
        handles.push(tokio::spawn(async move {
            // Task t owns blocks b with b % TASKS == t, spread over every page.
            let mut last = HashMap::new();
            for round in 0..300u64 {
                let page = (round * 7 + t * 13) % PAGES;
                let b = page * PAGE_ENTRIES as u64 + ((round * 31) % 100) * TASKS + t;
                let v = (round as u32 + 1) * 1000 + t as u32;
                store.set(b, &[v]).await.unwrap();
                last.insert(b, v);
                let check = *last.keys().nth((round as usize * 5) % last.len()).unwrap();
                assert_eq!(store.entries(check, 1).await.unwrap(), vec![last[&check]]);
                if round % 50 == 49 {
                    store.write_pages(Durability::Normal).await.unwrap();
                }
            }
            last
        }));
    }
    let mut all = HashMap::new();
    for h in handles {
        all.extend(h.await.unwrap());
    }
    store.write_pages(Durability::Normal).await.unwrap();
    for (&b, &v) in &all {
        let per = PAGE_ENTRIES as u64;
        let page = disk_page(&area, b / per).await;
        assert_eq!(page[(b % per) as usize], v, "block {b}");
    }
    let s = budget.stats();
    assert!(s.evictions > 0 && s.writebacks > 0, "{s:?}");
}
