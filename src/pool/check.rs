//! `vraid pool check`: a read-only walk of every volume's map that
//! recounts the references to each map page and data cluster and compares
//! them with the stored counts and free totals (docs/FORMAT.md §11).
//! Memory is by what is mapped (an offline tool).

use std::collections::HashMap;

use crate::pool::format::{COUNTS_PER_PAGE, MAP_FANOUT};
use crate::pool::meta::Meta;
use crate::pool::{Pool, PoolError};

/// What `pool check` found.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct CheckReport {
    /// Volumes walked.
    pub volumes: usize,
    /// Map pages referenced.
    pub map_pages: u64,
    /// Data clusters referenced.
    pub clusters: u64,
    /// Every inconsistency, one line each.
    pub problems: Vec<String>,
}

impl CheckReport {
    /// True when nothing is wrong.
    pub fn clean(&self) -> bool {
        self.problems.is_empty()
    }
}

#[derive(Default)]
struct Counts {
    pages: HashMap<u64, u32>,
    clusters: HashMap<u64, u32>,
}

async fn walk(
    m: &mut Meta,
    root: u64,
    depth: u32,
    c: &mut Counts,
    report: &mut CheckReport,
) -> Result<(), PoolError> {
    let mut stack = vec![(root, depth - 1)];
    while let Some((b, level)) = stack.pop() {
        if !m.geo().is_map_block(b) {
            report
                .problems
                .push(format!("map pointer to block {b}, outside the map area"));
            continue;
        }
        let n = c.pages.entry(b).or_insert(0);
        *n += 1;
        if *n > 1 {
            continue; // shared: its children were counted once already
        }
        let page = m.store.page(b).await?.clone();
        let want = if level == 0 { 6 } else { 5 };
        if page.kind() != want {
            report
                .problems
                .push(format!("map page {b} at the wrong level"));
            continue;
        }
        for k in 0..MAP_FANOUT as usize {
            let e = page.entry(k);
            match (e, level) {
                (0, _) => {}
                (e, 0) if m.geo().is_data_cluster(e) => *c.clusters.entry(e).or_insert(0) += 1,
                (e, 0) => report
                    .problems
                    .push(format!("leaf {b} names cluster {e}, outside the data area")),
                (e, l) => stack.push((e, l - 1)),
            }
        }
    }
    Ok(())
}

async fn compare_clusters(
    m: &mut Meta,
    c: &Counts,
    report: &mut CheckReport,
) -> Result<u64, PoolError> {
    let g = m.geo();
    let mut free = 0;
    for p in 0..g.ccount_pages() {
        let page = m.store.page(g.ccount_start() + p).await?.clone();
        for k in 0..COUNTS_PER_PAGE {
            let cl = g.first_data_cluster + p * COUNTS_PER_PAGE + k;
            if !g.is_data_cluster(cl) {
                break;
            }
            let stored = page.count(k as usize);
            let want = c.clusters.get(&cl).copied().unwrap_or(0);
            free += u64::from(stored == 0);
            if stored != want {
                let what = if want == 0 { "leaked" } else { "wrong count" };
                report.problems.push(format!(
                    "cluster {cl}: {what} (stored {stored}, referenced {want})"
                ));
            }
        }
    }
    Ok(free)
}

async fn compare_pages(
    m: &mut Meta,
    c: &Counts,
    report: &mut CheckReport,
) -> Result<u64, PoolError> {
    let g = m.geo();
    let mut free = 0;
    for b in g.meta_start()..g.meta_end() {
        let stored = m.mcount(b).await?;
        let want = c.pages.get(&b).copied().unwrap_or(0);
        free += u64::from(stored == 0);
        if stored != want {
            let what = if want == 0 { "leaked" } else { "wrong count" };
            report.problems.push(format!(
                "map page {b}: {what} (stored {stored}, referenced {want})"
            ));
        }
    }
    Ok(free)
}

impl Pool {
    /// Verifies the pool's metadata (read-only).
    pub async fn check(&self) -> Result<CheckReport, PoolError> {
        let _gate = self.gate.write().await;
        let mut m = self.meta.lock().await;
        let mut report = CheckReport::default();
        let mut counts = Counts::default();
        let roots: Vec<(u64, u32)> = m.slots.iter().map(|s| (s.rec.root, s.rec.depth)).collect();
        report.volumes = roots.len();
        for (root, depth) in roots {
            if root != 0 {
                walk(&mut m, root, depth, &mut counts, &mut report).await?;
            }
        }
        report.map_pages = counts.pages.len() as u64;
        report.clusters = counts.clusters.len() as u64;
        let free_clusters = compare_clusters(&mut m, &counts, &mut report).await?;
        let free_meta = compare_pages(&mut m, &counts, &mut report).await?;
        if free_clusters != m.summary.free_clusters {
            report.problems.push(format!(
                "summary says {} free clusters, counts say {free_clusters}",
                m.summary.free_clusters
            ));
        }
        if free_meta != m.summary.free_meta {
            report.problems.push(format!(
                "summary says {} free map pages, counts say {free_meta}",
                m.summary.free_meta
            ));
        }
        Ok(report)
    }
}
