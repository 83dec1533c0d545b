//! Split records in an open pool (docs/FORMAT.md §11, "Split clusters"):
//! checking a tagged leaf entry, reading a record from its kind-8 page,
//! finding per granule the cluster a split entry's bytes are read from
//! (the read path, through `split::resolve`), references to records
//! (shadowing adds, release drops; a record at 0 frees its slot and
//! releases `new` and `base`, P-25), and the whole copy of a split entry
//! (a write that replaces it by a plain cluster). Making splits and
//! writing into records: `split_write`, `thin_split`.

use crate::pool::format::{FormatError, Kind};
use crate::pool::meta::Meta;
use crate::pool::split::{self, Entry, SplitRecord, SplitRef, MAX_SPLIT_DEPTH, SPLIT_TAG};
use crate::pool::PoolError;

/// Why a walk over cached pages stopped.
enum Walk {
    /// The page at this block is not cached.
    Miss(u64),
    /// Corrupt metadata.
    Fail(PoolError),
}

impl From<FormatError> for Walk {
    fn from(e: FormatError) -> Self {
        Walk::Fail(e.into())
    }
}

/// True for a leaf entry that is a split reference (bit 63).
pub fn is_split(e: u64) -> bool {
    e & SPLIT_TAG != 0
}

impl Meta {
    /// A non-zero leaf entry checked for what it names: a data cluster, or
    /// on a version-3 pool a split reference into the map area (a
    /// version-2 pool has none: there it is a cluster out of range).
    pub fn check_entry(&self, e: u64) -> Result<(), PoolError> {
        if !is_split(e) || !self.store.splits() {
            return self.check_data_cluster(e);
        }
        match Entry::decode(e)? {
            Entry::Split(r) if self.geo().is_map_block(r.block) => Ok(()),
            _ => Err(PoolError::Corrupt(format!(
                "leaf entry {e:#x} names no split record in the map area"
            ))),
        }
    }

    /// Record `r` if its page is cached; a page of another kind is
    /// corrupt metadata (P-27).
    fn record_cached(&mut self, r: SplitRef) -> Result<SplitRecord, Walk> {
        if !self.geo().is_map_block(r.block) {
            return Err(Walk::Fail(PoolError::Corrupt(format!(
                "split reference to block {}, outside the map area",
                r.block
            ))));
        }
        let Some(page) = self.store.cached(r.block) else {
            return Err(Walk::Miss(r.block));
        };
        if page.kind() != Kind::Split as u32 {
            return Err(Walk::Fail(PoolError::Corrupt(format!(
                "split reference to block {}, which is not a split page",
                r.block
            ))));
        }
        Ok(SplitRecord::read(page, r.slot))
    }

    /// Record `r`, its page read if not cached.
    pub async fn record(&mut self, r: SplitRef) -> Result<SplitRecord, PoolError> {
        loop {
            match self.record_cached(r) {
                Ok(rec) => return Ok(rec),
                Err(Walk::Miss(b)) => {
                    self.store.page(b).await?;
                }
                Err(Walk::Fail(e)) => return Err(e),
            }
        }
    }

    /// The data cluster granule `gr` of leaf entry `e` is read from
    /// (`None`: a hole). A corrupt chain (a free slot, a cycle, a depth
    /// past 16, a page of another kind) is an error naming the block,
    /// reached within [`MAX_SPLIT_DEPTH`] records (P-27).
    pub async fn granule_source(&mut self, e: u64, gr: u32) -> Result<Option<u64>, PoolError> {
        // Each miss loads one page of the chain; the cache keeps at least
        // a chain's pages, so this ends well before the bound.
        for _ in 0..=2 * MAX_SPLIT_DEPTH {
            match split::resolve(e, gr, |r| self.record_cached(r)) {
                Ok(Some(c)) => {
                    self.check_data_cluster(c)?;
                    return Ok(Some(c));
                }
                Ok(None) => return Ok(None),
                Err(Walk::Miss(b)) => {
                    self.store.page(b).await?;
                }
                Err(Walk::Fail(e)) => return Err(e),
            }
        }
        Err(PoolError::Corrupt(format!(
            "split chain of entry {e:#x} does not stay in the page cache"
        )))
    }
}

impl Meta {
    /// Adds `delta` to the references of non-zero leaf entry `e`: a data
    /// cluster's count, or a split record's ([`Meta::add_rcount`]).
    pub async fn add_eref(&mut self, e: u64, delta: i64) -> Result<(), PoolError> {
        if !is_split(e) || !self.store.splits() {
            return self.add_ccount(e, delta).await;
        }
        match Entry::decode(e)? {
            Entry::Split(r) => self.add_rcount(r, delta).await,
            _ => unreachable!("a tagged entry decodes to a split reference"),
        }
    }

    /// Adds `delta` to record `r`'s count. A record reaching 0 is freed in
    /// this transaction (P-25): its slot zeroed, its page's count (records
    /// in use) lowered, `new` and `base` released, a base record in turn
    /// (iteratively, each one level shallower, so a corrupt chain ends).
    pub async fn add_rcount(&mut self, r: SplitRef, delta: i64) -> Result<(), PoolError> {
        let (mut r, mut delta, mut above) = (r, delta, None);
        loop {
            let rec = self.record(r).await?;
            let n = i64::from(rec.count) + delta;
            let chained = above.is_none_or(|d| rec.depth + 1 == d);
            if rec.is_free() || !chained || !(0..=i64::from(u32::MAX)).contains(&n) {
                return Err(PoolError::Corrupt(format!(
                    "split record {} slot {}: count {} {delta:+} (depth {})",
                    r.block, r.slot, rec.count, rec.depth
                )));
            }
            if n > 0 {
                let page = self.store.page_mut(r.block).await?;
                SplitRecord {
                    count: n as u32,
                    ..rec
                }
                .write(page, r.slot);
                if delta < 0 {
                    self.unshared_records.insert(r, self.store.open_seq());
                }
                return Ok(());
            }
            let page = self.store.page_mut(r.block).await?;
            SplitRecord::default().write(page, r.slot);
            self.unshared_records.remove(&r);
            self.add_mcount(r.block, -1).await?;
            self.add_ccount(rec.new, -1).await?;
            match Entry::decode(rec.base)? {
                Entry::Hole => return Ok(()),
                Entry::Plain(c) => return self.add_ccount(c, -1).await,
                Entry::Split(b) => (r, delta, above) = (b, -1, Some(rec.depth)),
            }
        }
    }
}

impl Meta {
    /// The cluster each granule of split entry `e` is read from (see
    /// [`Meta::granule_source`]).
    pub async fn granule_sources(&mut self, e: u64) -> Result<Vec<Option<u64>>, PoolError> {
        let mut out = Vec::new();
        for g in 0..split::granules(self.geo().cluster_size()) {
            out.push(self.granule_source(e, g).await?);
        }
        Ok(out)
    }

    /// Depth of leaf entry `e`: its record's, 0 for a plain cluster or a
    /// hole (a split on `e` is one deeper).
    pub async fn entry_depth(&mut self, e: u64) -> Result<u32, PoolError> {
        match Entry::decode(e)? {
            Entry::Split(r) if self.store.splits() => Ok(self.record(r).await?.depth),
            _ => Ok(0),
        }
    }
}

/// Writes reserved cluster `fresh` whole: `data` at `off`, every other
/// byte from the granules' `sources` (a split entry's bytes, read through
/// its chain; `None` reads zero). The write over a split entry that
/// replaces it by a plain cluster (FORMAT.md §11, write case 4 at depth
/// 16; also `tree.rs`'s copies under the lock, grow's zeroing).
pub async fn fill_from_split(
    dev: &dyn crate::block::BlockDevice,
    cs: u64,
    fresh: crate::pool::meta::Fresh,
    sources: &[Option<u64>],
    off: u64,
    data: &[u8],
) -> Result<(), PoolError> {
    use crate::units::ByteOffset;
    let gs = split::granule_size(cs);
    let mut buf = vec![0u8; cs as usize];
    for (g, src) in sources.iter().enumerate() {
        let at = g as u64 * gs;
        let covered = off <= at && at + gs <= off + data.len() as u64;
        if let (Some(c), false) = (src, covered) {
            let part = &mut buf[at as usize..(at + gs) as usize];
            dev.read(ByteOffset(c * cs + at), part).await?;
        }
    }
    buf[off as usize..off as usize + data.len()].copy_from_slice(data);
    let normal = crate::block::Durability::Normal;
    dev.write(ByteOffset(fresh.cluster * cs), &buf, normal)
        .await?;
    Ok(())
}

#[cfg(test)]
#[path = "split_meta_tests.rs"]
pub(super) mod tests;
