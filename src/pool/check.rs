//! `vraid pool check`: a read-only walk of every volume's map that
//! recounts the references to each map page and data cluster and compares
//! them with the stored counts and free totals; `--repair` lowers counts
//! above their references (leaks), and with `force` raises those below
//! (docs/FORMAT.md §11, "Check and repair"; crash case P-15). Memory is
//! by what is mapped (an offline tool).

use std::collections::HashMap;

use crate::pool::format::{Kind, COUNTS_PER_PAGE, MAP_FANOUT};
use crate::pool::meta::Meta;
use crate::pool::split::{Entry, SplitRecord, SplitRef, RECORDS_PER_SPLIT_PAGE};
use crate::pool::split_meta::is_split;
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
    /// Split records referenced (version-3 pools; 0 otherwise).
    #[serde(default)]
    pub split_records: u64,
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
    /// References to split records (leaf entries and records' bases).
    records: HashMap<SplitRef, u32>,
    /// Split pages reached (their every slot is compared).
    split_pages: std::collections::BTreeSet<u64>,
    /// Problems a repair must not touch (bad pointers, wrong levels).
    structural: usize,
    /// Counts that differ from their references.
    wrong: Vec<Wrong>,
}

/// What a count belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum What {
    Cluster,
    Page,
    /// A split record: this slot of the page at `at`.
    Record(usize),
}

/// A stored count that differs from the references found.
#[derive(Clone, Copy, Debug)]
struct Wrong {
    what: What,
    at: u64,
    stored: u32,
    want: u32,
}

impl Wrong {
    fn describe(&self) -> String {
        let what = match self.what {
            What::Cluster => "cluster".to_string(),
            What::Page => "map page".to_string(),
            What::Record(slot) => format!("split record slot {slot} of page"),
        };
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
                (e, 0) if is_split(e) && m.store.splits() => walk_split(m, b, e, c, report).await?,
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

fn structural(c: &mut Counts, report: &mut CheckReport, line: String) {
    c.structural += 1;
    report.problems.push(line);
}

/// Counts the references of split entry `e` (in leaf `leaf`) and, on the
/// first visit of each record of its chain, the record's own: `new`,
/// `base`, and one record in use on its page (FORMAT.md §11, "Check").
async fn walk_split(
    m: &mut Meta,
    leaf: u64,
    e: u64,
    c: &mut Counts,
    report: &mut CheckReport,
) -> Result<(), PoolError> {
    let (g, mut cur, mut above) = (m.geo(), e, None::<u32>);
    loop {
        let r = match Entry::decode(cur) {
            Ok(Entry::Split(r)) if g.is_map_block(r.block) => r,
            Ok(Entry::Plain(x)) if above.is_some() && g.is_data_cluster(x) => {
                *c.clusters.entry(x).or_insert(0) += 1;
                return Ok(());
            }
            _ => {
                let line = format!("leaf {leaf}: split chain names {cur:#x}, outside its areas");
                structural(c, report, line);
                return Ok(());
            }
        };
        let n = c.records.entry(r).or_insert(0);
        *n += 1;
        if *n > 1 {
            return Ok(()); // its chain was counted at the first visit
        }
        let page = m.store.page(r.block).await?;
        let rec = SplitRecord::read(page, r.slot);
        let bad = match (page.kind() == Kind::Split as u32, rec.check(&g)) {
            (false, _) => Some("not a split page".to_string()),
            (true, Err(e)) => Some(e.to_string()),
            _ if rec.is_free() => Some("a free slot".to_string()),
            _ if above.is_some_and(|d| rec.depth + 1 != d) => Some("depth off its chain".into()),
            _ => None,
        };
        if let Some(why) = bad {
            let line = format!("split record {} slot {}: {why}", r.block, r.slot);
            structural(c, report, line);
            return Ok(());
        }
        c.split_pages.insert(r.block);
        *c.pages.entry(r.block).or_insert(0) += 1;
        *c.clusters.entry(rec.new).or_insert(0) += 1;
        if rec.base == 0 {
            return Ok(());
        }
        (cur, above) = (rec.base, Some(rec.depth));
    }
}

/// Every slot of every split page reached: stored counts against the
/// references found (a slot in use that nothing names is leaked).
async fn compare_records(m: &mut Meta, c: &mut Counts) -> Result<(), PoolError> {
    for b in c.split_pages.clone() {
        let page = m.store.page(b).await?.clone();
        for slot in 0..RECORDS_PER_SPLIT_PAGE {
            let stored = SplitRecord::read(&page, slot).count;
            let want = c.records.get(&SplitRef { block: b, slot }).copied();
            if stored != want.unwrap_or(0) {
                c.wrong.push(Wrong {
                    what: What::Record(slot),
                    at: b,
                    stored,
                    want: want.unwrap_or(0),
                });
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
                    what: What::Cluster,
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
                what: What::Page,
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
    report.split_records = counts.records.len() as u64;
    let free_clusters = compare_clusters(m, &mut counts).await?;
    let free_meta = compare_pages(m, &mut counts).await?;
    compare_records(m, &mut counts).await?;
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

/// A record's count set to its references; a record nothing names is
/// zeroed (its page's count and its clusters' are fixed by their own
/// lines: the walk did not count what a leaked record names).
async fn fix_record(m: &mut Meta, w: &Wrong, slot: usize) -> Result<(), PoolError> {
    let page = m.store.page_mut(w.at).await?;
    let rec = match w.want {
        0 => SplitRecord::default(),
        n => SplitRecord {
            count: n,
            ..SplitRecord::read(page, slot)
        },
    };
    rec.write(page, slot);
    Ok(())
}

/// Sets each wrong count to its references, then the free totals.
async fn fix_counts(m: &mut Meta, wrong: &[Wrong]) -> Result<Vec<String>, PoolError> {
    let g = m.geo();
    let mut done = Vec::new();
    for w in wrong {
        let at = match w.what {
            What::Cluster => g.cluster_count_at(w.at),
            What::Page => g.map_count_at(w.at),
            What::Record(slot) => {
                fix_record(m, w, slot).await?;
                done.push(w.describe());
                m.safe_point().await?;
                continue;
            }
        };
        m.store.page_mut(at.0).await?.set_count(at.1, w.want);
        if w.what == What::Cluster && w.want == 0 {
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
