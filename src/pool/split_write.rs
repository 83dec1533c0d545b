//! Making splits (docs/FORMAT.md §11, "Split clusters", write case 2): a
//! write to a shared plain cluster of a version-3 pool writes only the
//! granules it touches into a reserved cluster (the rest of each touched
//! granule read from the shared one), then maps a split record
//! `{new, base: the shared cluster, mask: touched}` in its place. Also
//! the record allocator (kind-8 pages, their map-page count = records in
//! use).
//!
//! Case 3 (a write to an exclusive record) is in `thin_split.rs`; not
//! built yet: case 4 (a split on top of a shared record: such a write
//! copies the cluster whole) and the completer; docs/STATUS.md.

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
    /// changed) if `vc` no longer maps plain cluster `old`. `old`'s count
    /// is unchanged: the leaf's reference moves to the record's base.
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
        let rec = SplitRecord {
            new: fresh,
            base: old,
            mask,
            count: 1,
            depth: 1,
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
/// cluster `fresh`, the rest of each from cluster `old` (one read and one
/// write of their span; no read when `data` covers it). Returns the mask.
pub async fn write_granules(
    dev: &dyn BlockDevice,
    cs: u64,
    fresh: u64,
    old: u64,
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
    dev.read(ByteOffset(old * cs + start), &mut buf).await?;
    let at = (off - start) as usize;
    buf[at..at + data.len()].copy_from_slice(data);
    dev.write(ByteOffset(fresh * cs + start), &buf, normal)
        .await?;
    Ok(mask)
}

#[cfg(test)]
#[path = "split_write_tests.rs"]
mod tests;
