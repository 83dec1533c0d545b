//! Changed blocks between two volumes of a pool (docs/FORMAT.md §11,
//! "Changed blocks"): a virtual cluster is dirty when the two trees map
//! it to different physical clusters. Both trees are walked at once from
//! the larger depth; a subtree held by both (same block at the same
//! level) is clean without being read.

use crate::pool::format::MAP_FANOUT;
use crate::pool::meta::Meta;
use crate::pool::PoolError;

/// Leaf pages one walk reads at most (the caller asks again for the rest).
pub const LEAF_BUDGET: usize = 64;

/// A node of one tree as seen from a level of the common walk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Node {
    /// Nothing mapped below.
    Hole,
    /// A map page.
    Page(u64),
    /// A shallower tree lifted: its root sits at `level` under entry 0s.
    Lifted { root: u64, level: u32 },
}

impl Node {
    /// The node for a tree of `depth` with `root`, seen from `top`.
    fn of(root: u64, depth: u32, top: u32) -> Node {
        match (root, depth - 1 == top) {
            (0, _) => Node::Hole,
            (r, true) => Node::Page(r),
            (r, false) => Node::Lifted {
                root: r,
                level: depth - 1,
            },
        }
    }
}

/// Runs of (virtual clusters, dirty), in order.
pub type DirtyRuns = Vec<(u64, bool)>;

fn push(runs: &mut DirtyRuns, n: u64, dirty: bool) {
    match runs.last_mut() {
        Some((m, d)) if *d == dirty => *m += n,
        _ if n > 0 => runs.push((n, dirty)),
        _ => {}
    }
}

/// Marks cluster `k` (counted from the runs' start) dirty, if the runs
/// reach it.
fn mark_dirty(runs: &mut DirtyRuns, k: u64) {
    let mut out = DirtyRuns::with_capacity(runs.len() + 2);
    let mut at = 0;
    for &(n, dirty) in runs.iter() {
        if dirty || !(at..at + n).contains(&k) {
            push(&mut out, n, dirty);
        } else {
            push(&mut out, k - at, false);
            push(&mut out, 1, true);
            push(&mut out, at + n - k - 1, false);
        }
        at += n;
    }
    *runs = out;
}

/// One step of the walk: a node pair at `level` covering virtual
/// clusters from `base`.
#[derive(Clone, Copy, Debug)]
struct Pair {
    level: u32,
    base: u64,
    a: Node,
    b: Node,
}

impl Meta {
    async fn child(&mut self, n: Node, level: u32, k: usize) -> Result<Node, PoolError> {
        Ok(match n {
            Node::Hole => Node::Hole,
            Node::Page(b) => match self.store.page(b).await?.entry(k) {
                0 => Node::Hole,
                e => Node::Page(e),
            },
            Node::Lifted { .. } if k != 0 => Node::Hole,
            Node::Lifted { root, level: rl } if level - 1 == rl => Node::Page(root),
            lifted => lifted,
        })
    }

    async fn leaf_entries(&mut self, n: Node) -> Result<Vec<u64>, PoolError> {
        Ok(match n {
            Node::Page(b) => {
                let p = self.store.page(b).await?;
                (0..MAP_FANOUT as usize).map(|k| p.entry(k)).collect()
            }
            _ => vec![0; MAP_FANOUT as usize],
        })
    }

    /// Dirty runs of virtual clusters `from..to` of volume slot `a`
    /// against slot `b`. Covers at least one cluster when `from < to`;
    /// may stop short after [`LEAF_BUDGET`] leaf pages.
    pub async fn diff(
        &mut self,
        a: usize,
        b: usize,
        from: u64,
        to: u64,
    ) -> Result<DirtyRuns, PoolError> {
        let (ra, rb) = (self.slots[a].rec.clone(), self.slots[b].rec.clone());
        let top = ra.depth.max(rb.depth) - 1;
        let mut stack = vec![Pair {
            level: top,
            base: 0,
            a: Node::of(ra.root, ra.depth, top),
            b: Node::of(rb.root, rb.depth, top),
        }];
        let (mut runs, mut budget, mut at) = (DirtyRuns::new(), LEAF_BUDGET, from);
        while let Some(p) = stack.pop() {
            let span = MAP_FANOUT.pow(p.level + 1);
            let (lo, hi) = (p.base.max(at), (p.base + span).min(to));
            if lo >= hi {
                continue;
            }
            if p.a == p.b {
                push(&mut runs, hi - lo, false);
            } else if p.level == 0 {
                if budget == 0 {
                    break;
                }
                budget -= 1;
                let (ea, eb) = (self.leaf_entries(p.a).await?, self.leaf_entries(p.b).await?);
                for vc in lo..hi {
                    let k = (vc - p.base) as usize;
                    push(&mut runs, 1, ea[k] != eb[k]);
                }
            } else {
                self.push_children(&mut stack, p, lo, hi).await?;
                continue;
            }
            at = hi;
        }
        Ok(runs)
    }

    /// Pushes the children of `p` overlapping `lo..hi`, last first.
    async fn push_children(
        &mut self,
        stack: &mut Vec<Pair>,
        p: Pair,
        lo: u64,
        hi: u64,
    ) -> Result<(), PoolError> {
        let sub = MAP_FANOUT.pow(p.level);
        let (k0, k1) = ((lo - p.base) / sub, (hi - 1 - p.base) / sub);
        for k in (k0..=k1).rev() {
            let k = k as usize;
            stack.push(Pair {
                level: p.level - 1,
                base: p.base + k as u64 * sub,
                a: self.child(p.a, p.level, k).await?,
                b: self.child(p.b, p.level, k).await?,
            });
        }
        Ok(())
    }
}

impl crate::pool::Pool {
    /// Changed bytes of volume `a` against volume `b` (ids) from `offset`
    /// for up to `len` bytes: runs of (bytes, dirty) in order, covering
    /// at least one byte; cluster-granular, clipped to `a`'s size.
    pub async fn changed(
        &self,
        a: u32,
        b: u32,
        offset: u64,
        len: u64,
    ) -> Result<Vec<(u64, bool)>, PoolError> {
        let cs = self.cluster_size();
        let mut m = self.meta.lock().await;
        let (ia, ib) = (m.by_id(a)?, m.by_id(b)?);
        let end = offset.saturating_add(len).min(m.slots[ia].rec.size);
        if offset >= end {
            return Err(PoolError::Invalid("range past the volume's end".into()));
        }
        let (from, to) = (offset / cs, end.div_ceil(cs));
        let mut runs = m.diff(ia, ib, from, to).await?;
        // The cluster across b's end: bytes a has there b has not.
        let (sa, sb) = (m.slots[ia].rec.size, m.slots[ib].rec.size);
        let edge = sb / cs;
        let across = sa > sb && !sb.is_multiple_of(cs) && (from..to).contains(&edge);
        if across && m.lookup(ia, edge).await?.cluster.is_some() {
            mark_dirty(&mut runs, edge - from);
        }
        drop(m);
        let mut out = Vec::with_capacity(runs.len());
        let mut pos = offset - offset % cs;
        for (n, dirty) in runs {
            let next = (pos + n * cs).min(end);
            out.push((next - pos.max(offset), dirty));
            pos = next;
        }
        Ok(out)
    }
}
