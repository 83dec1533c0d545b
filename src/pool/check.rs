//! `vraid pool check`: a read-only walk of every volume's map that
//! recounts the references to each map page and data cluster and compares
//! them with the stored counts and free totals; `--repair` lowers counts
//! above their references (leaks), and with `force` raises those below
//! (docs/FORMAT.md §11, "Check and repair"; crash case P-15). Memory is
//! by what is mapped (an offline tool).

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
    /// What a repair changed, one line each.
    #[serde(default)]
    pub repaired: Vec<String>,
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
    /// Problems a repair must not touch (bad pointers, wrong levels).
    structural: usize,
    /// Counts that differ from their references.
    wrong: Vec<Wrong>,
}

/// A stored count that differs from the references found.
#[derive(Clone, Copy, Debug)]
struct Wrong {
    cluster: bool,
    at: u64,
    stored: u32,
    want: u32,
}

impl Wrong {
    fn describe(&self) -> String {
        let what = if self.cluster { "cluster" } else { "map page" };
        let how = match (self.want, self.stored > self.want) {
            (0, _) => "leaked",
            (_, true) => "count too high",
            _ => "count too low (shared without its count)",
        };
        format!(
            "{what} {}: {how} (stored {}, referenced {})",
            self.at, self.stored, self.want
        )
    }
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
            c.structural += 1;
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
            c.structural += 1;
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
                (e, 0) => {
                    c.structural += 1;
                    report
                        .problems
                        .push(format!("leaf {b} names cluster {e}, outside the data area"))
                }
                (e, l) => stack.push((e, l - 1)),
            }
        }
    }
    Ok(())
}

async fn compare_clusters(m: &mut Meta, c: &mut Counts) -> Result<u64, PoolError> {
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
                c.wrong.push(Wrong {
                    cluster: true,
                    at: cl,
                    stored,
                    want,
                });
            }
        }
    }
    Ok(free)
}

async fn compare_pages(m: &mut Meta, c: &mut Counts) -> Result<u64, PoolError> {
    let g = m.geo();
    let mut free = 0;
    for b in g.meta_start()..g.meta_end() {
        let stored = m.mcount(b).await?;
        let want = c.pages.get(&b).copied().unwrap_or(0);
        free += u64::from(stored == 0);
        if stored != want {
            c.wrong.push(Wrong {
                cluster: false,
                at: b,
                stored,
                want,
            });
        }
    }
    Ok(free)
}

async fn tally(m: &mut Meta) -> Result<(CheckReport, Counts), PoolError> {
    let mut report = CheckReport::default();
    let mut counts = Counts::default();
    let roots: Vec<(u64, u32)> = m.slots.iter().map(|s| (s.rec.root, s.rec.depth)).collect();
    report.volumes = roots.len();
    for (root, depth) in roots {
        if root != 0 {
            walk(m, root, depth, &mut counts, &mut report).await?;
        }
    }
    report.map_pages = counts.pages.len() as u64;
    report.clusters = counts.clusters.len() as u64;
    let free_clusters = compare_clusters(m, &mut counts).await?;
    let free_meta = compare_pages(m, &mut counts).await?;
    report
        .problems
        .extend(counts.wrong.iter().map(Wrong::describe));
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
    Ok((report, counts))
}

/// Sets each wrong count to its references, then the free totals.
async fn fix_counts(m: &mut Meta, wrong: &[Wrong]) -> Result<Vec<String>, PoolError> {
    let g = m.geo();
    let mut done = Vec::new();
    for w in wrong {
        let at = match w.cluster {
            true => g.cluster_count_at(w.at),
            false => g.map_count_at(w.at),
        };
        m.store.page_mut(at.0).await?.set_count(at.1, w.want);
        if w.cluster && w.want == 0 {
            // Unreferenced: allocatable (and discarded) after the commit.
            m.pending.insert(w.at);
        }
        done.push(w.describe());
        m.safe_point().await?;
    }
    let free_clusters = compare_clusters(m, &mut Counts::default()).await?;
    let free_meta = compare_pages(m, &mut Counts::default()).await?;
    if (free_clusters, free_meta) != (m.summary.free_clusters, m.summary.free_meta) {
        done.push(format!(
            "summary free totals {} clusters / {} map pages (were {} / {})",
            free_clusters, free_meta, m.summary.free_clusters, m.summary.free_meta
        ));
        m.summary.free_clusters = free_clusters;
        m.summary.free_meta = free_meta;
        m.save_summary().await?;
    }
    Ok(done)
}

fn refuse_repair(counts: &Counts, report: &CheckReport, force: bool) -> Result<(), PoolError> {
    if counts.structural > 0 {
        return Err(PoolError::Invalid(format!(
            "not repaired (nothing changed): {} pointer(s) outside their areas or at the wrong \
             level cannot be repaired safely: {}",
            counts.structural,
            report.problems.join("; ")
        )));
    }
    let low: Vec<String> = counts
        .wrong
        .iter()
        .filter(|w| w.stored < w.want)
        .map(Wrong::describe)
        .collect();
    if !low.is_empty() && !force {
        return Err(PoolError::Invalid(format!(
            "not repaired (nothing changed): {} count(s) below their references — a write to \
             one holder may already have changed another's bytes; copy the data out of the \
             volumes sharing them, or run `pool check --repair --force` to raise the counts \
             (later writes then copy; bytes already mixed stay mixed): {}",
            low.len(),
            low.join("; ")
        )));
    }
    Ok(())
}

impl Pool {
    /// Verifies the pool's metadata (read-only).
    pub async fn check(&self) -> Result<CheckReport, PoolError> {
        let _gate = self.gate.write().await;
        let mut m = self.meta.lock().await;
        Ok(tally(&mut m).await?.0)
    }

    /// `pool check --repair`: commits, recounts, and sets every count
    /// above its references to them (with `force`, those below too), then
    /// the free totals; refuses (changing nothing) what is unsafe. Returns
    /// the check after the repair, with what was changed.
    pub async fn repair(&self, force: bool) -> Result<CheckReport, PoolError> {
        let _gate = self.gate.write().await;
        let mut m = self.meta.lock().await;
        crate::pool::pool::commit_and_discard(&mut m, self.dev.as_ref()).await?;
        let (report, counts) = tally(&mut m).await?;
        if report.clean() {
            return Ok(report);
        }
        refuse_repair(&counts, &report, force)?;
        let done = fix_counts(&mut m, &counts.wrong).await?;
        crate::pool::pool::commit_and_discard(&mut m, self.dev.as_ref()).await?;
        let (mut after, _) = tally(&mut m).await?;
        after.repaired = done;
        Ok(after)
    }
}
