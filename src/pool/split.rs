//! Split clusters (docs/FORMAT.md §11, "Split clusters: sub-cluster
//! copy-on-write"): the bytes of the design — granule geometry, tagged
//! leaf entries, split records on kind-8 pages and the per-granule
//! resolution of a record chain.
//!
//! The open pool's side: `split_meta` (reads, references, release),
//! `split_write` (making splits, the record allocator), `thin_split`
//! (writes into an exclusive record), `complete` (the completer). What
//! is left is listed in
//! docs/STATUS.md.

use crate::pool::format::{get32, get64, put32, put64, FormatError, Geometry, PAGE_HDR};
use crate::pool::page::Page;

/// Header version of a pool that may hold splits (older builds refuse it).
pub const SPLIT_VERSION: u32 = 3;
/// Bit 63 of a leaf entry: a split reference, not a cluster number.
pub const SPLIT_TAG: u64 = 1 << 63;
/// Split records per kind-8 page.
pub const RECORDS_PER_SPLIT_PAGE: usize = 127;
/// Bytes of one split record.
pub const SPLIT_RECORD_BYTES: usize = 32;
/// Longest record chain (a write on a record this deep copies whole).
pub const MAX_SPLIT_DEPTH: u32 = 16;
/// Smallest granule.
pub const GRANULE_MIN: u64 = 64 << 10;

/// Granule size of a pool with clusters of `cs` bytes.
pub fn granule_size(cs: u64) -> u64 {
    (cs / 64).max(GRANULE_MIN).min(cs)
}

/// Granules per cluster (1: the pool never splits).
pub fn granules(cs: u64) -> u32 {
    (cs / granule_size(cs)) as u32
}

/// The mask with every granule of a cluster set.
pub fn full_mask(cs: u64) -> u64 {
    match granules(cs) {
        64 => u64::MAX,
        g => (1u64 << g) - 1,
    }
}

/// Granules touched by bytes `off..off + len` of a cluster (`len` > 0).
pub fn touched(cs: u64, off: u64, len: u64) -> u64 {
    let gs = granule_size(cs);
    let (first, last) = (off / gs, (off + len - 1) / gs);
    (first..=last).fold(0, |m, g| m | 1 << g)
}

/// Where a split record lives.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SplitRef {
    /// Kind-8 page (a block of the map area).
    pub block: u64,
    /// Record index in the page.
    pub slot: usize,
}

/// A decoded leaf entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Entry {
    /// Nothing mapped (reads zero).
    Hole,
    /// A physical cluster.
    Plain(u64),
    /// A split record.
    Split(SplitRef),
}

impl Entry {
    /// Parses a leaf entry.
    pub fn decode(e: u64) -> Result<Entry, FormatError> {
        if e == 0 {
            return Ok(Entry::Hole);
        }
        if e & SPLIT_TAG == 0 {
            return Ok(Entry::Plain(e));
        }
        let v = e & !SPLIT_TAG;
        let slot = (v & 127) as usize;
        if slot >= RECORDS_PER_SPLIT_PAGE {
            return Err(bad(format!("split reference to slot {slot}")));
        }
        Ok(Entry::Split(SplitRef {
            block: v >> 7,
            slot,
        }))
    }

    /// The entry's u64.
    pub fn encode(self) -> u64 {
        match self {
            Entry::Hole => 0,
            Entry::Plain(c) => c,
            Entry::Split(r) => SPLIT_TAG | r.block << 7 | r.slot as u64,
        }
    }
}

fn bad(detail: String) -> FormatError {
    FormatError::Field {
        what: "split record",
        detail,
    }
}

/// One split record (FORMAT.md §11 table).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SplitRecord {
    /// Cluster holding the granules in `mask`.
    pub new: u64,
    /// Leaf-entry value the other granules come from (0: completed).
    pub base: u64,
    /// Granules in `new`.
    pub mask: u64,
    /// References (leaf entries and records naming it as `base`).
    pub count: u32,
    /// 1 + the base's depth.
    pub depth: u32,
}

fn record_at(slot: usize) -> usize {
    PAGE_HDR + SPLIT_RECORD_BYTES * slot
}

impl SplitRecord {
    /// Record `slot` of a split page.
    pub fn read(p: &Page, slot: usize) -> SplitRecord {
        let b = &p.bytes()[record_at(slot)..record_at(slot + 1)];
        SplitRecord {
            new: get64(b, 0),
            base: get64(b, 8),
            mask: get64(b, 16),
            count: get32(b, 24),
            depth: get32(b, 28),
        }
    }

    /// Writes record `slot` of a split page.
    pub fn write(&self, p: &mut Page, slot: usize) {
        let b = &mut p.bytes_mut()[record_at(slot)..record_at(slot + 1)];
        put64(b, 0, self.new);
        put64(b, 8, self.base);
        put64(b, 16, self.mask);
        put32(b, 24, self.count);
        put32(b, 28, self.depth);
    }

    /// True for a free slot.
    pub fn is_free(&self) -> bool {
        self.count == 0
    }

    /// Checks the fields against the pool's geometry (not the chain: the
    /// base's depth is checked by whoever follows it).
    pub fn check(&self, g: &Geometry) -> Result<(), FormatError> {
        if self.is_free() {
            return match *self == SplitRecord::default() {
                true => Ok(()),
                false => Err(bad("free slot with fields set".into())),
            };
        }
        let cs = g.cluster_size();
        if !g.is_data_cluster(self.new) {
            return Err(bad(format!(
                "new cluster {} outside the data area",
                self.new
            )));
        }
        if self.mask & !full_mask(cs) != 0 {
            return Err(bad(format!("mask {:#x} past the cluster", self.mask)));
        }
        if !(1..=MAX_SPLIT_DEPTH).contains(&self.depth) {
            return Err(bad(format!("depth {} out of range", self.depth)));
        }
        match Entry::decode(self.base)? {
            Entry::Hole if self.mask != full_mask(cs) => {
                Err(bad("no base with granules missing".into()))
            }
            Entry::Plain(c) if !g.is_data_cluster(c) => {
                Err(bad(format!("base cluster {c} outside the data area")))
            }
            Entry::Plain(_) if self.depth != 1 => Err(bad("plain base at depth > 1".into())),
            Entry::Split(r) if !g.is_map_block(r.block) => Err(bad(format!(
                "base names block {}, outside the map area",
                r.block
            ))),
            Entry::Split(_) if self.depth == 1 => Err(bad("split base at depth 1".into())),
            _ => Ok(()),
        }
    }
}

/// Physical cluster granule `gr` of leaf entry `e` is read from (`None`: a
/// hole), following split records through `get`; each record must be in
/// use and one level shallower than the one naming it, so a corrupt chain
/// (a cycle, a free slot) ends in an error within [`MAX_SPLIT_DEPTH`] steps.
pub fn resolve<E: From<FormatError>>(
    e: u64,
    gr: u32,
    mut get: impl FnMut(SplitRef) -> Result<SplitRecord, E>,
) -> Result<Option<u64>, E> {
    let mut cur = e;
    let mut above: Option<u32> = None;
    loop {
        let r = match Entry::decode(cur)? {
            Entry::Hole => return Ok(None),
            Entry::Plain(c) => return Ok(Some(c)),
            Entry::Split(r) => r,
        };
        let rec = get(r)?;
        let chained = above.is_none_or(|d| rec.depth + 1 == d);
        if rec.is_free() || !chained || rec.depth == 0 || rec.depth > MAX_SPLIT_DEPTH {
            return Err(bad(format!(
                "broken chain at block {} slot {} (depth {})",
                r.block, r.slot, rec.depth
            ))
            .into());
        }
        if rec.mask >> gr & 1 == 1 {
            return Ok(Some(rec.new));
        }
        if rec.base == 0 {
            return Err(bad(format!("granule {gr} in neither new nor base")).into());
        }
        above = Some(rec.depth);
        cur = rec.base;
    }
}

#[cfg(test)]
#[path = "split_tests.rs"]
mod tests;
