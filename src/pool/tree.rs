//! Per-volume map trees (docs/FORMAT.md §11, "Reference counts, sharing
//! and copy-on-write"): lookup, shadowing a path so the volume owns it,
//! mapping and unmapping a cluster, growing a tree, and releasing a
//! subtree in a resumable way.

use crate::block::BoxFuture;
use crate::pool::format::{Kind, MAP_FANOUT};
use crate::pool::meta::{digits, Meta};
use crate::pool::page::Page;
use crate::pool::split_meta::{fill_from_split, is_split};
use crate::pool::PoolError;

/// What a lookup found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Lookup {
    /// The leaf entry, if mapped: a physical cluster, or on a version-3
    /// pool a split reference (`split_meta::is_split`).
    pub cluster: Option<u64>,
    /// True if every page on the path and the cluster have count 1: the
    /// volume alone owns the cluster and may write it in place.
    pub exclusive: bool,
}

/// The entry `digit` of map page `page` (block `b`) at `level`, once the
/// page is checked to be of that level.
fn step(page: &Page, b: u64, level: u32, digit: usize) -> Result<u64, PoolError> {
    if page.kind() != kind_of(level) as u32 {
        return Err(PoolError::Corrupt(format!(
            "map page {b} at the wrong level"
        )));
    }
    Ok(page.entry(digit))
}

fn kind_of(level: u32) -> Kind {
    if level == 0 {
        Kind::Leaf
    } else {
        Kind::Interior
    }
}

impl Meta {
    /// Finds virtual cluster `vc` of the volume in slot `i`.
    pub async fn lookup(&mut self, i: usize, vc: u64) -> Result<Lookup, PoolError> {
        let (mut cur, depth) = (self.slots[i].rec.root, self.slots[i].rec.depth);
        let d = digits(vc);
        let mut exclusive = true;
        for level in (0..depth).rev() {
            if cur == 0 {
                return Ok(Lookup {
                    cluster: None,
                    exclusive,
                });
            }
            exclusive &= self.mcount(cur).await? == 1;
            let page = self.store.page(cur).await?;
            if page.kind() != kind_of(level) as u32 {
                return Err(PoolError::Corrupt(format!(
                    "map page {cur} at the wrong level"
                )));
            }
            cur = page.entry(d[level as usize]);
        }
        if cur == 0 {
            return Ok(Lookup {
                cluster: None,
                exclusive,
            });
        }
        if is_split(cur) {
            // Exclusive: written in place or filled (write case 3).
            self.check_entry(cur)?;
            return Ok(Lookup {
                cluster: Some(cur),
                exclusive: exclusive && self.record_writable(cur).await?,
            });
        }
        exclusive &= self.ccount(cur).await? == 1 && self.writable_in_place(cur);
        Ok(Lookup {
            cluster: Some(cur),
            exclusive,
        })
    }

    /// Leaf entry of virtual cluster `vc` of slot `i`, for a read: the
    /// path only, no counts (see [`Meta::lookup`]); `None` for a hole, a
    /// physical cluster, or on a version-3 pool a split reference
    /// (`split_meta::is_split`: read per granule through
    /// [`Meta::granule_source`]).
    pub async fn lookup_read(&mut self, i: usize, vc: u64) -> Result<Option<u64>, PoolError> {
        if let Some(found) = self.lookup_read_cached(i, vc) {
            return found;
        }
        let (mut cur, depth) = (self.slots[i].rec.root, self.slots[i].rec.depth);
        let d = digits(vc);
        for level in (0..depth).rev() {
            if cur == 0 {
                return Ok(None);
            }
            cur = step(self.store.page(cur).await?, cur, level, d[level as usize])?;
        }
        self.found(cur)
    }

    /// [`Meta::lookup_read`] when every page on the path is cached: no
    /// I/O and no future (the read path's common case); `None` on a miss.
    pub fn lookup_read_cached(
        &mut self,
        i: usize,
        vc: u64,
    ) -> Option<Result<Option<u64>, PoolError>> {
        let (mut cur, depth) = (self.slots[i].rec.root, self.slots[i].rec.depth);
        let d = digits(vc);
        for level in (0..depth).rev() {
            if cur == 0 {
                return Some(Ok(None));
            }
            let page = self.store.cached(cur)?;
            cur = match step(page, cur, level, d[level as usize]) {
                Ok(next) => next,
                Err(e) => return Some(Err(e)),
            };
        }
        Some(self.found(cur))
    }

    fn found(&self, cur: u64) -> Result<Option<u64>, PoolError> {
        if cur != 0 {
            self.check_entry(cur)?;
        }
        Ok((cur != 0).then_some(cur))
    }

    async fn set_child(
        &mut self,
        i: usize,
        parent: Option<(u64, usize)>,
        child: u64,
    ) -> Result<(), PoolError> {
        match parent {
            None => {
                self.slots[i].rec.root = child;
                self.save_slot(i).await
            }
            Some((b, k)) => {
                self.store.page_mut(b).await?.set_entry(k, child);
                Ok(())
            }
        }
    }

    /// Copies shared page `old` to a new page the caller owns.
    async fn shadow(&mut self, old: u64, level: u32) -> Result<u64, PoolError> {
        let mut copy = self.store.page(old).await?.clone();
        let new = self.alloc_map(kind_of(level)).await?;
        copy.relabel(kind_of(level), new);
        for k in 0..MAP_FANOUT as usize {
            let e = copy.entry(k);
            if e == 0 {
                continue;
            }
            if level == 0 {
                self.add_eref(e, 1).await?;
            } else {
                self.add_mcount(e, 1).await?;
            }
        }
        *self.store.page_mut(new).await? = copy;
        self.add_mcount(old, -1).await?;
        Ok(new)
    }

    /// Page `cur` at `level` (named by `parent`, or the record's root)
    /// made the volume's own: shadowed if shared. Returns the page to use.
    pub async fn own_page(
        &mut self,
        i: usize,
        parent: Option<(u64, usize)>,
        cur: u64,
        level: u32,
    ) -> Result<u64, PoolError> {
        if self.mcount(cur).await? <= 1 {
            return Ok(cur);
        }
        let new = self.shadow(cur, level).await?;
        self.set_child(i, parent, new).await?;
        Ok(new)
    }

    /// Makes the path to `vc` the volume's own (shadowing shared pages;
    /// with `create`, adding missing ones). Returns the leaf and index, or
    /// `None` if a page is missing and `create` is false.
    pub async fn own_path(
        &mut self,
        i: usize,
        vc: u64,
        create: bool,
    ) -> Result<Option<(u64, usize)>, PoolError> {
        let d = digits(vc);
        let mut parent = None;
        let mut cur = self.slots[i].rec.root;
        for level in (0..self.slots[i].rec.depth).rev() {
            if cur == 0 {
                if !create {
                    return Ok(None);
                }
                cur = self.alloc_map(kind_of(level)).await?;
                self.set_child(i, parent, cur).await?;
            } else if self.mcount(cur).await? > 1 {
                cur = self.shadow(cur, level).await?;
                self.set_child(i, parent, cur).await?;
            }
            let k = d[level as usize];
            if level == 0 {
                return Ok(Some((cur, k)));
            }
            parent = Some((cur, k));
            cur = self.store.page(cur).await?.entry(k);
        }
        Err(PoolError::Corrupt("volume with a map of depth 0".into()))
    }

    /// Unmaps `vc` (TRIM of a whole cluster); holes stay holes.
    pub async fn unmap(&mut self, i: usize, vc: u64) -> Result<(), PoolError> {
        if self.lookup(i, vc).await?.cluster.is_none() {
            return Ok(());
        }
        let Some((leaf, k)) = self.own_path(i, vc, false).await? else {
            return Ok(());
        };
        let old = self.store.page(leaf).await?.entry(k);
        if old == 0 {
            return Ok(());
        }
        self.store.page_mut(leaf).await?.set_entry(k, 0);
        self.add_eref(old, -1).await?;
        self.slots[i].rec.mapped = self.slots[i].rec.mapped.checked_sub(1).ok_or_else(|| {
            PoolError::Corrupt(format!(
                "{}: mapped count below zero",
                self.slots[i].rec.name
            ))
        })?;
        self.save_slot(i).await
    }

    /// Grows the volume's tree to cover `clusters`.
    pub async fn grow_tree(&mut self, i: usize, clusters: u64) -> Result<(), PoolError> {
        while MAP_FANOUT.pow(self.slots[i].rec.depth) < clusters {
            if self.slots[i].rec.depth >= crate::pool::format::MAX_DEPTH {
                return Err(PoolError::Invalid("volume too large".into()));
            }
            let root = self.slots[i].rec.root;
            if root != 0 {
                let new = self.alloc_map(Kind::Interior).await?;
                self.store.page_mut(new).await?.set_entry(0, root);
                self.slots[i].rec.root = new;
            }
            self.slots[i].rec.depth += 1;
            self.save_slot(i).await?;
        }
        Ok(())
    }

    /// Drops one reference to map page `b` at `level`; at 0 releases its
    /// children, clearing each entry as it goes (resumable), committing
    /// at safe points when `commits` is set.
    pub fn release(
        &mut self,
        b: u64,
        level: u32,
        commits: bool,
    ) -> BoxFuture<'_, Result<(), PoolError>> {
        crate::block::BoxFuture::new(async move {
            if self.mcount(b).await? > 1 {
                self.add_mcount(b, -1).await?;
                return Ok(());
            }
            for k in 0..MAP_FANOUT as usize {
                let e = self.store.page(b).await?.entry(k);
                if e == 0 {
                    continue;
                }
                if level == 0 {
                    self.add_eref(e, -1).await?;
                } else {
                    self.release(e, level - 1, commits).await?;
                }
                self.store.page_mut(b).await?.set_entry(k, 0);
                if commits {
                    self.safe_point().await?;
                }
            }
            self.add_mcount(b, -1).await?;
            Ok(())
        })
    }
}

impl Meta {
    /// Writes `data` at byte `off` of virtual cluster `vc` when the volume
    /// does not own a mapped cluster there: allocates (a hole) or copies
    /// on write (a shared cluster). Holds the metadata lock through the
    /// data I/O; the mapping changes only after the data is written.
    pub async fn write_slow(
        &mut self,
        i: usize,
        vc: u64,
        off: u64,
        data: &[u8],
    ) -> Result<(), PoolError> {
        let Some((leaf, k)) = self.own_path(i, vc, true).await? else {
            return Err(PoolError::Corrupt("map path not created".into()));
        };
        let cs = self.geo().cluster_size();
        let dev = self.store.dev().clone();
        let old = self.store.page(leaf).await?.entry(k);
        let plain = old != 0 && !is_split(old);
        if plain && self.ccount(old).await? == 1 && self.writable_in_place(old) {
            let at = crate::units::ByteOffset(old * cs + off);
            dev.write(at, data, crate::block::Durability::Normal)
                .await?;
            return Ok(());
        }
        let fresh = self.alloc_cluster().await?;
        if let Err(e) = self.fill_cluster(fresh, old, off, data).await {
            self.add_ccount(fresh.cluster, -1).await?;
            return Err(e);
        }
        self.store.page_mut(leaf).await?.set_entry(k, fresh.cluster);
        if old != 0 {
            self.add_eref(old, -1).await
        } else {
            self.slots[i].rec.mapped = self.slots[i].rec.mapped.saturating_add(1);
            self.save_slot(i).await
        }
    }

    /// Maps reserved cluster `fresh` (its data written) at `vc` of slot
    /// `i` in place of `old` (0: a hole; else the shared cluster it was
    /// copied from, whose count drops); false (nothing changed) if `vc`
    /// no longer maps `old`.
    pub async fn map_fresh(
        &mut self,
        i: usize,
        vc: u64,
        fresh: u64,
        old: u64,
    ) -> Result<bool, PoolError> {
        if self.lookup(i, vc).await?.cluster.unwrap_or(0) != old {
            return Ok(false);
        }
        let Some((leaf, k)) = self.own_path(i, vc, true).await? else {
            return Err(PoolError::Corrupt("map path not created".into()));
        };
        self.claim(fresh).await?;
        self.store.page_mut(leaf).await?.set_entry(k, fresh);
        if old != 0 {
            self.add_eref(old, -1).await?;
            return Ok(true);
        }
        self.slots[i].rec.mapped = self.slots[i].rec.mapped.saturating_add(1);
        self.save_slot(i).await?;
        Ok(true)
    }

    async fn fill_cluster(
        &mut self,
        fresh: crate::pool::meta::Fresh,
        old: u64,
        off: u64,
        data: &[u8],
    ) -> Result<(), PoolError> {
        let dev = self.store.dev().clone();
        if is_split(old) {
            let sources = self.granule_sources(old).await?;
            let cs = self.geo().cluster_size();
            return fill_from_split(dev.as_ref(), cs, fresh, &sources, off, data).await;
        }
        fill_cluster(
            dev.as_ref(),
            self.geo().cluster_size(),
            fresh,
            old,
            off,
            data,
        )
        .await
    }
}

/// Writes a newly allocated cluster: `data` at `off`, the rest from `old`
/// (copy-on-write) or zeros (unless known zero already).
pub async fn fill_cluster(
    dev: &dyn crate::block::BlockDevice,
    cs: u64,
    fresh: crate::pool::meta::Fresh,
    old: u64,
    off: u64,
    data: &[u8],
) -> Result<(), PoolError> {
    use crate::units::ByteOffset;
    let base = fresh.cluster * cs;
    let normal = crate::block::Durability::Normal;
    if old == 0 && (fresh.zeroed || data.len() as u64 == cs) {
        dev.write(ByteOffset(base + off), data, normal).await?;
        return Ok(());
    }
    let mut buf = vec![0u8; cs as usize];
    if old != 0 {
        dev.read(ByteOffset(old * cs), &mut buf).await?;
    }
    buf[off as usize..off as usize + data.len()].copy_from_slice(data);
    dev.write(ByteOffset(base), &buf, normal).await?;
    Ok(())
}
