//! Making splits (docs/FORMAT.md §11, "Split clusters", write cases 2
//! and 4): a write to a shared plain cluster, or to a shared split
//! record, of a version-3 pool writes only the granules it touches into a
//! reserved cluster (the rest of each touched granule read from where the
//! shared entry reads it), then maps a split record `{new, base: the
//! shared entry, mask: touched}` in its place (a record on a record is
//! one level deeper; at depth 16 the write copies whole instead). Also
//! the record allocator (kind-8 pages, their map-page count = records in
//! use).
//!
//! Case 3 (a write to an exclusive record) is in `thin_split.rs`; the
//! completer (queued by `ThinVolume::fill_fresh`) in `complete.rs`.

use crate::block::{BlockDevice, Durability};
use crate::pool::format::Kind;
use crate::pool::meta::Meta;
use crate::pool::split::{
    granule_size, touched, Entry, SplitRecord, SplitRef, RECORDS_PER_SPLIT_PAGE,
};
use crate::pool::PoolError;
use crate::units::ByteOffset;

impl Meta {
    /// A free slot of split page `b`, if `b` is still a split page in use
    /// with room.
    async fn free_slot(&mut self, b: u64) -> Result<Option<usize>, PoolError> {
        let n = self.mcount(b).await? as usize;
        if n == 0 || n >= RECORDS_PER_SPLIT_PAGE {
            return Ok(None);
        }
        let page = self.store.page(b).await?;
        if page.kind() != Kind::Split as u32 {
            return Ok(None);
        }
        Ok((0..RECORDS_PER_SPLIT_PAGE).find(|s| SplitRecord::read(page, *s).is_free()))
    }

    /// Stores `rec` (count 1 or more) in a free slot: of the split page
    /// last allocated while it has room, else of a new one.
    pub async fn alloc_record(&mut self, rec: SplitRecord) -> Result<SplitRef, PoolError> {
        if let Some(b) = self.split_page {
            if let Some(slot) = self.free_slot(b).await? {
                self.add_mcount(b, 1).await?;
                rec.write(self.store.page_mut(b).await?, slot);
                return Ok(SplitRef { block: b, slot });
            }
        }
        let b = self.alloc_map(Kind::Split).await?;
        self.split_page = Some(b);
        rec.write(self.store.page_mut(b).await?, 0);
        Ok(SplitRef { block: b, slot: 0 })
    }

    /// Maps split `{new: fresh, base: old, mask}` at `vc` of slot `i`
    /// (reserved `fresh` holds the granules of `mask`); false (nothing
    /// changed) if `vc` no longer maps `old` (a plain cluster, or a split
    /// entry: case 4, the new record one level deeper). `old`'s count is
    /// unchanged: the leaf's reference moves to the record's base.
    pub async fn map_split(
        &mut self,
        i: usize,
        vc: u64,
        fresh: u64,
        old: u64,
        mask: u64,
    ) -> Result<bool, PoolError> {
        if self.lookup(i, vc).await?.cluster != Some(old) {
            return Ok(false);
        }
        let Some((leaf, k)) = self.own_path(i, vc, true).await? else {
            return Err(PoolError::Corrupt("map path not created".into()));
        };
        let depth = match Entry::decode(old)? {
            Entry::Split(r) => self.record(r).await?.depth + 1,
            _ => 1,
        };
        let rec = SplitRecord {
            new: fresh,
            base: old,
            mask,
            count: 1,
            depth,
        };
        let r = self.alloc_record(rec).await?;
        self.claim(fresh).await?;
        let e = Entry::Split(r).encode();
        self.store.page_mut(leaf).await?.set_entry(k, e);
        Ok(true)
    }
}

impl Meta {
    /// True if split entry `e`'s record may be written (case 3) by the
    /// one leaf entry holding it: count 1, no drop since the last commit
    /// (P-8a for records), no whole copy reading it.
    pub async fn record_writable(&mut self, e: u64) -> Result<bool, PoolError> {
        let Entry::Split(r) = Entry::decode(e)? else {
            return Ok(false);
        };
        let rec = self.record(r).await?;
        let durable = self.store.durable_seq();
        let unshared = self.unshared_records.get(&r).is_none_or(|s| *s <= durable);
        Ok(rec.count == 1 && unshared && !self.copying.contains_key(&e))
    }

    /// Sets the bits of `fill` in the mask of split entry `e`'s record,
    /// its granules written into `new`; false (nothing changed) if `vc`
    /// of slot `i` no longer holds `e` or the record changed.
    pub async fn set_mask(
        &mut self,
        i: usize,
        vc: u64,
        e: u64,
        new: u64,
        fill: u64,
    ) -> Result<bool, PoolError> {
        if self.lookup(i, vc).await?.cluster != Some(e) {
            return Ok(false);
        }
        let Entry::Split(r) = Entry::decode(e)? else {
            return Ok(false);
        };
        let mut rec = self.record(r).await?;
        if rec.new != new {
            return Ok(false);
        }
        rec.mask |= fill;
        rec.write(self.store.page_mut(r.block).await?, r.slot);
        Ok(true)
    }
}

/// Writes the granules of a cluster that `data` at `off` touches into
/// cluster `fresh` (one write of their span), the rest of each from
/// `sources` (per granule, the cluster the shared entry reads it from;
/// `None` reads zero): only a first or last granule that `data` covers
/// in part is read. Returns the mask.
pub async fn write_granules(
    dev: &dyn BlockDevice,
    cs: u64,
    fresh: u64,
    sources: &[Option<u64>],
    off: u64,
    data: &[u8],
) -> Result<u64, PoolError> {
    let (gs, len) = (granule_size(cs), data.len() as u64);
    let mask = touched(cs, off, len);
    let start = off / gs * gs;
    let end = (off + len).div_ceil(gs) * gs;
    let normal = Durability::Normal;
    if start == off && end == off + len {
        dev.write(ByteOffset(fresh * cs + off), data, normal)
            .await?;
        return Ok(mask);
    }
    let mut buf = vec![0u8; (end - start) as usize];
    let (first, last) = (start, end - gs);
    let partial = |g0: u64| g0 < off || g0 + gs > off + len;
    let edges = if first == last { 1 } else { 2 };
    for g0 in [first, last].into_iter().take(edges) {
        let src = sources.get((g0 / gs) as usize).copied().flatten();
        if let (true, Some(c)) = (partial(g0), src) {
            let at = (g0 - start) as usize;
            let part = &mut buf[at..at + gs as usize];
            dev.read(ByteOffset(c * cs + g0), part).await?;
        }
    }
    let at = (off - start) as usize;
    buf[at..at + data.len()].copy_from_slice(data);
    dev.write(ByteOffset(fresh * cs + start), &buf, normal)
        .await?;
    Ok(mask)
}

#[cfg(test)]
#[path = "split_write_tests.rs"]
mod tests;
