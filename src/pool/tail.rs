//! The tail cut of a shrink (docs/FORMAT.md §11, "Shrink"; crash case
//! P-14): unmaps every cluster at or past a volume's end, in resumable
//! steps (each entry cleared in the transaction that drops its count),
//! and finds at open whether a cut was left unfinished.

use crate::block::BoxFuture;
use crate::pool::format::MAP_FANOUT;
use crate::pool::meta::{digits, Meta};
use crate::pool::{Pool, PoolError};

impl Meta {
    /// First virtual cluster wholly past the end of slot `i`, if the
    /// tree can map it.
    fn tail_start(&self, i: usize) -> Option<u64> {
        let r = &self.slots[i].rec;
        let e = r.size.div_ceil(self.geo().cluster_size());
        (e < MAP_FANOUT.pow(r.depth)).then_some(e)
    }

    /// True if slot `i` maps anything at or past its end (read-only: walks
    /// one path, looking at the entries right of it).
    pub async fn has_tail(&mut self, i: usize) -> Result<bool, PoolError> {
        let Some(e) = self.tail_start(i) else {
            return Ok(false);
        };
        let d = digits(e);
        let mut cur = self.slots[i].rec.root;
        for level in (0..self.slots[i].rec.depth).rev() {
            if cur == 0 {
                return Ok(false);
            }
            let p = self.store.page(cur).await?;
            let first = d[level as usize] + usize::from(level > 0);
            if (first..MAP_FANOUT as usize).any(|k| p.entry(k) != 0) {
                return Ok(true);
            }
            cur = p.entry(d[level as usize]);
        }
        Ok(false)
    }

    /// Unmaps every cluster of slot `i` at or past its end, committing at
    /// safe points; pages on the boundary path are made the volume's own.
    pub async fn cut_tail(&mut self, i: usize) -> Result<(), PoolError> {
        if !self.has_tail(i).await? {
            return Ok(());
        }
        let Some(e) = self.tail_start(i) else {
            return Ok(());
        };
        let d = digits(e);
        let mut parent = None;
        let mut cur = self.slots[i].rec.root;
        for level in (0..self.slots[i].rec.depth).rev() {
            if cur == 0 {
                break;
            }
            cur = self.own_page(i, parent, cur, level).await?;
            let first = d[level as usize] + usize::from(level > 0);
            for k in first..MAP_FANOUT as usize {
                let child = self.store.page(cur).await?.entry(k);
                if child != 0 {
                    self.drop_entry(i, cur, k, child, level).await?;
                    self.safe_point().await?;
                }
            }
            parent = Some((cur, d[level as usize]));
            cur = self.store.page(cur).await?.entry(d[level as usize]);
        }
        Ok(())
    }

    /// Drops entry `k` of `page` (at `level`) of slot `i`: the cluster of
    /// a leaf entry, or the subtree of an interior one; the entry is
    /// cleared and `mapped` lowered in the transaction of the last count
    /// drop.
    fn drop_entry(
        &mut self,
        i: usize,
        page: u64,
        k: usize,
        child: u64,
        level: u32,
    ) -> BoxFuture<'_, Result<(), PoolError>> {
        crate::block::BoxFuture::new(async move {
            let lost = if level == 0 {
                self.add_eref(child, -1).await?;
                1
            } else if self.mcount(child).await? > 1 {
                let n = self.count_leaves(child, level - 1).await?;
                self.add_mcount(child, -1).await?;
                n
            } else {
                for kk in 0..MAP_FANOUT as usize {
                    let e = self.store.page(child).await?.entry(kk);
                    if e != 0 {
                        self.drop_entry(i, child, kk, e, level - 1).await?;
                        self.safe_point().await?;
                    }
                }
                self.add_mcount(child, -1).await?;
                0
            };
            self.store.page_mut(page).await?.set_entry(k, 0);
            let r = &mut self.slots[i].rec;
            r.mapped = r.mapped.saturating_sub(lost);
            self.save_slot(i).await
        })
    }

    /// Clusters mapped under map page `b` at `level` (read-only).
    fn count_leaves(&mut self, b: u64, level: u32) -> BoxFuture<'_, Result<u64, PoolError>> {
        crate::block::BoxFuture::new(async move {
            let entries: Vec<u64> = {
                let p = self.store.page(b).await?;
                (0..MAP_FANOUT as usize)
                    .map(|k| p.entry(k))
                    .filter(|e| *e != 0)
                    .collect()
            };
            if level == 0 {
                return Ok(entries.len() as u64);
            }
            let mut n = 0;
            for e in entries {
                self.mcount(e).await?;
                n += self.count_leaves(e, level - 1).await?;
            }
            Ok(n)
        })
    }
}

impl Pool {
    /// Finishes every tail cut a crash interrupted (at open).
    pub(crate) async fn resume_tail_cuts(&self) -> Result<(), PoolError> {
        let _gate = self.gate.write().await;
        let mut m = self.meta.lock().await;
        let mut cut = false;
        for i in 0..m.slots.len() {
            if m.has_tail(i).await? {
                tracing::info!(volume = %m.slots[i].rec.name, "finishing an interrupted shrink");
                m.cut_tail(i).await?;
                cut = true;
            }
        }
        if cut {
            crate::pool::pool::commit_and_discard(&mut m, self.dev.as_ref()).await?;
        }
        Ok(())
    }
}
