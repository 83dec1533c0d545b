//! A thin volume of a pool as a [`BlockDevice`]: requests are cut at
//! cluster boundaries; mapped clusters the volume owns are read and
//! written in place without the metadata lock; holes read zero; a write
//! to a hole allocates, to a shared cluster copies on write (both with
//! the lock released during the data I/O); TRIM and
//! WRITE_ZEROES of whole clusters unmap them; FLUSH commits.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use crate::block::{check_range, BlockDevice, BlockError, BlockResult, Durability, IoFuture};
use crate::pool::meta::Fresh;
use crate::pool::phases::{Phase, Phases};
use crate::pool::split::{granule_size, granules, MAX_SPLIT_DEPTH};
use crate::pool::split_meta::{fill_from_split, is_split};
use crate::pool::split_write::write_granules;
use crate::pool::tree::fill_cluster;
use crate::pool::{Pool, PoolError};
use crate::units::ByteOffset;

#[path = "thin_split.rs"]
mod split_io;

/// One volume of a pool.
pub struct ThinVolume {
    pool: Arc<Pool>,
    id: u32,
    name: String,
    size: Arc<AtomicU64>,
    read_only: bool,
    /// The volume's write gate (a snapshot of it drains its writes).
    wgate: Arc<tokio::sync::RwLock<()>>,
}

impl std::fmt::Debug for ThinVolume {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ThinVolume")
            .field("name", &self.name)
            .finish()
    }
}

/// A piece of a request inside one cluster.
#[derive(Clone, Copy, Debug)]
struct Piece {
    vc: u64,
    off: u64,
    len: u64,
    /// Offset of the piece inside the request.
    at: usize,
}

fn pieces(offset: u64, len: u64, cs: u64) -> impl Iterator<Item = Piece> {
    let end = offset + len;
    let mut pos = offset;
    std::iter::from_fn(move || {
        if pos >= end {
            return None;
        }
        let off = pos % cs;
        let n = (cs - off).min(end - pos);
        let p = Piece {
            vc: pos / cs,
            off,
            len: n,
            at: (pos - offset) as usize,
        };
        pos += n;
        Some(p)
    })
}

impl ThinVolume {
    pub(crate) fn new(
        pool: Arc<Pool>,
        id: u32,
        name: String,
        size: Arc<AtomicU64>,
        read_only: bool,
    ) -> Self {
        ThinVolume {
            wgate: pool.vol_gate(id),
            pool,
            id,
            name,
            size,
            read_only,
        }
    }

    /// The pool it belongs to.
    pub fn pool(&self) -> &Arc<Pool> {
        &self.pool
    }

    /// True for a snapshot.
    pub fn read_only(&self) -> bool {
        self.read_only
    }

    fn err(&self, e: PoolError) -> BlockError {
        e.into_block(&self.name)
    }

    fn phys(&self, cluster: u64, off: u64) -> ByteOffset {
        ByteOffset(cluster * self.pool.cluster_size() + off)
    }

    async fn lookup(&self, vc: u64) -> Result<crate::pool::tree::Lookup, PoolError> {
        let mut m = self.pool.meta.lock().await;
        let i = m.by_id(self.id)?;
        m.lookup(i, vc).await
    }

    /// The read's lookup: without a lock future when the metadata lock is
    /// free and the path cached (the common case), else waits for both.
    async fn lookup_read(&self, vc: u64) -> Result<Option<u64>, PoolError> {
        let mut m = match self.pool.meta.try_lock() {
            Ok(m) => m,
            Err(_) => self.pool.meta.lock().await,
        };
        let i = m.by_id(self.id)?;
        m.lookup_read(i, vc).await
    }

    /// Allocation of `offset..offset + len`: runs of (length, allocated),
    /// in order, cluster-granular (for NBD `base:allocation`).
    pub async fn allocation(&self, offset: u64, len: u64) -> BlockResult<Vec<(u64, bool)>> {
        check_range(ByteOffset(offset), len, self.size())?;
        let mut runs: Vec<(u64, bool)> = Vec::new();
        for p in pieces(offset, len, self.pool.cluster_size()) {
            let mapped = self
                .lookup_read(p.vc)
                .await
                .map_err(|e| self.err(e))?
                .is_some();
            match runs.last_mut() {
                Some((n, a)) if *a == mapped => *n += p.len,
                _ => runs.push((p.len, mapped)),
            }
        }
        Ok(runs)
    }

    async fn read_at(&self, offset: ByteOffset, buf: &mut [u8]) -> BlockResult {
        check_range(offset, buf.len() as u64, self.size())?;
        let _gate = match self.pool.gate.try_read() {
            Ok(g) => g,
            Err(_) => self.pool.gate.read().await,
        };
        for p in pieces(offset.get(), buf.len() as u64, self.pool.cluster_size()) {
            let part = &mut buf[p.at..p.at + p.len as usize];
            match self.lookup_read(p.vc).await.map_err(|e| self.err(e))? {
                None => part.fill(0),
                Some(e) if is_split(e) => self.read_split(e, p, part).await?,
                Some(c) => self.pool.dev.read(self.phys(c, p.off), part).await?,
            }
        }
        Ok(())
    }

    /// Reads piece `p` of a split entry `e` granule by granule, each from
    /// the cluster its record chain names (docs/FORMAT.md §11).
    async fn read_split(&self, e: u64, p: Piece, part: &mut [u8]) -> BlockResult {
        let gs = granule_size(self.pool.cluster_size());
        let mut off = p.off;
        while off < p.off + p.len {
            let n = (gs - off % gs).min(p.off + p.len - off);
            let src = {
                let mut m = self.pool.meta.lock().await;
                m.granule_source(e, (off / gs) as u32).await
            };
            let at = (off - p.off) as usize;
            let buf = &mut part[at..at + n as usize];
            match src.map_err(|e| self.err(e))? {
                None => buf.fill(0),
                Some(c) => self.pool.dev.read(self.phys(c, off), buf).await?,
            }
            off += n;
        }
        Ok(())
    }

    /// Writes one piece; true if metadata changed. A cluster it owns is
    /// written in place, a hole filled and a shared cluster copied on
    /// write with the metadata lock released during the data I/O (crash
    /// cases P-16, P-17). Only an in-place write holds the volume's write
    /// gate through its I/O (a snapshot waits for those alone: they change
    /// clusters it is about to share); a fill or copy writes a cluster
    /// nobody else sees and maps it under the lock, after the snapshot or
    /// before it (crash case P-19). On a version-3 pool a shared cluster
    /// is split instead (`split_write`) and an exclusive split record
    /// written in place or filled (`thin_split`); a shared split entry
    /// gets a split on top (case 4; copied whole at depth 16).
    async fn write_piece(&self, p: Piece, data: &[u8], ph: &mut Phases) -> Result<bool, PoolError> {
        loop {
            let wgate = self.wgate.read().await;
            ph.mark(Phase::WGate);
            let mut m = self.pool.meta.lock().await;
            let i = m.by_id(self.id)?;
            let l = m.lookup(i, p.vc).await?;
            ph.mark(Phase::Lock);
            let old = match (l.cluster, l.exclusive) {
                (Some(e), true) if is_split(e) => {
                    let r = self.write_record(p, data, e, wgate, m).await?;
                    ph.mark(Phase::Record);
                    match r {
                        Some(changed) => return Ok(changed),
                        None => continue,
                    }
                }
                (Some(c), true) => {
                    drop(m);
                    let at = self.phys(c, p.off);
                    self.pool.dev.write(at, data, Durability::Normal).await?;
                    drop(wgate);
                    ph.mark(Phase::InPlace);
                    return Ok(false);
                }
                (Some(c), false) => {
                    *m.copying.entry(c).or_default() += 1;
                    c
                }
                (None, _) => 0,
            };
            drop(wgate);
            let r = match m.reserve_cluster_deferred().await {
                Ok(r) => r,
                Err(e) => {
                    m.stop_copying(old);
                    return Err(e);
                }
            };
            let fresh = r.fresh;
            ph.mark(Phase::Reserve);
            if let Some(seq) = r.wait {
                // The zeroed_from raise covering `fresh`, durable first.
                if let Err(e) = self.pool.wait_durable(m, seq).await {
                    let mut m = self.pool.meta.lock().await;
                    m.stop_copying(old);
                    m.reserved.remove(&fresh.cluster);
                    return Err(e);
                }
            } else {
                drop(m);
                if r.kick {
                    self.pool.kick_commit();
                }
            }
            ph.mark(Phase::Zeroed);
            if self.fill_fresh(p, data, fresh, old, ph).await? {
                return Ok(true);
            }
        }
    }

    /// Writes `data` into reserved cluster `fresh` (the rest from `old`,
    /// or zeros for a hole) without the lock, then maps it; false if the
    /// mapping changed meanwhile (the reservation is dropped; the caller
    /// writes again).
    async fn fill_fresh(
        &self,
        p: Piece,
        data: &[u8],
        fresh: Fresh,
        old: u64,
        ph: &mut Phases,
    ) -> Result<bool, PoolError> {
        // At most COPIES_IN_FLIGHT units of copies at once (a snapshot
        // turns every write into one: unbounded, they starve each other
        // and the rest); a split copies a granule, else a whole cluster.
        let permit = match old {
            0 => None,
            _ => self.pool.copies.acquire_many(self.copy_units()).await.ok(),
        };
        ph.mark(Phase::Permit);
        let r = self.copy_for_write(p, data, fresh, old).await;
        drop(permit);
        ph.mark(Phase::Copy);
        let mut m = self.pool.meta.lock().await;
        ph.mark(Phase::MapLock);
        m.stop_copying(old);
        let split = matches!(r, Ok(Some(_)));
        let mapped = match (r, m.by_id(self.id)) {
            (Ok(Some(mask)), Ok(i)) => m.map_split(i, p.vc, fresh.cluster, old, mask).await,
            (Ok(None), Ok(i)) => m.map_fresh(i, p.vc, fresh.cluster, old).await,
            (Err(e), _) | (_, Err(e)) => Err(e),
        };
        ph.mark(Phase::Map);
        match mapped {
            Ok(true) => {
                if split {
                    self.pool.queue_completion(self.id, p.vc);
                }
                self.pool.safe_point_released(m).await?;
                ph.mark(Phase::Safe);
                Ok(true)
            }
            other => {
                m.reserved.remove(&fresh.cluster);
                other
            }
        }
    }

    /// Copy units (`COPY_UNIT`) a copy-on-write of this pool moves.
    fn copy_units(&self) -> u32 {
        let cs = self.pool.cluster_size();
        let bytes = match self.pool.splits && granules(cs) > 1 {
            true => granule_size(cs),
            false => cs,
        };
        let max = crate::pool::pool::COPIES_IN_FLIGHT as u64;
        (bytes / crate::pool::pool::COPY_UNIT).clamp(1, max) as u32
    }

    /// Writes `data` into reserved cluster `fresh` with the rest of
    /// what `old` holds: on a version-3 pool of more than one granule per
    /// cluster only the touched granules (a split, cases 2 and 4; returns
    /// the mask), else the whole cluster (a hole's zeros, a plain copy, or
    /// a split entry at depth 16 read through its chain; returns `None`).
    /// A split entry's sources are found under the lock and read without
    /// it (they stay while the entry's record does; the mapping is
    /// checked again after).
    async fn copy_for_write(
        &self,
        p: Piece,
        data: &[u8],
        fresh: Fresh,
        old: u64,
    ) -> Result<Option<u64>, PoolError> {
        let (dev, cs) = (self.pool.dev.as_ref(), self.pool.cluster_size());
        let g = granules(cs);
        let splits = self.pool.splits && old != 0 && g > 1;
        if !is_split(old) {
            if splits {
                let sources = vec![Some(old); g as usize];
                return write_granules(dev, cs, fresh.cluster, &sources, p.off, data)
                    .await
                    .map(Some);
            }
            return fill_cluster(dev, cs, fresh, old, p.off, data)
                .await
                .map(|()| None);
        }
        let (sources, depth) = {
            let mut m = self.pool.meta.lock().await;
            (m.granule_sources(old).await?, m.entry_depth(old).await?)
        };
        if splits && depth < MAX_SPLIT_DEPTH {
            return write_granules(dev, cs, fresh.cluster, &sources, p.off, data)
                .await
                .map(Some);
        }
        fill_from_split(dev, cs, fresh, &sources, p.off, data).await?;
        Ok(None)
    }

    async fn write_at(
        &self,
        offset: ByteOffset,
        buf: &[u8],
        durability: Durability,
    ) -> BlockResult {
        if self.read_only {
            return Err(BlockError::ReadOnly);
        }
        check_range(offset, buf.len() as u64, self.size())?;
        let mut changed = false;
        let mut ph = Phases::new();
        for p in pieces(offset.get(), buf.len() as u64, self.pool.cluster_size()) {
            let data = &buf[p.at..p.at + p.len as usize];
            changed |= self.write_piece_gated(p, data, &mut ph).await?;
        }
        let r = self.finish_durability(changed, durability).await;
        ph.finish(&self.name);
        r
    }

    /// One piece under the I/O gate; a pool found full with clusters
    /// pending is committed (they become free) and the piece tried again.
    async fn write_piece_gated(&self, p: Piece, data: &[u8], ph: &mut Phases) -> BlockResult<bool> {
        let gate = self.pool.gate.read().await;
        ph.mark(Phase::Gate);
        let r = self.write_piece(p, data, ph).await;
        drop(gate);
        match r {
            Err(PoolError::NoSpace) if self.has_pending().await => {
                self.pool.flush().await.map_err(|e| self.err(e))?;
                let _gate = self.pool.gate.read().await;
                self.write_piece(p, data, ph).await.map_err(|e| self.err(e))
            }
            r => r.map_err(|e| self.err(e)),
        }
    }

    async fn has_pending(&self) -> bool {
        !self.pool.meta.lock().await.pending.is_empty()
    }

    async fn finish_durability(&self, changed: bool, durability: Durability) -> BlockResult {
        if durability == Durability::Normal {
            return Ok(());
        }
        if changed {
            let m = self.pool.meta.lock().await;
            self.pool.commit_released(m).await.map_err(|e| self.err(e))
        } else {
            self.pool.dev.flush().await
        }
    }

    async fn clear_at(&self, offset: ByteOffset, len: u64) -> BlockResult {
        if self.read_only {
            return Err(BlockError::ReadOnly);
        }
        check_range(offset, len, self.size())?;
        let cs = self.pool.cluster_size();
        for p in pieces(offset.get(), len, cs) {
            if p.len == cs {
                let _gate = self.pool.gate.read().await;
                let mut m = self.pool.meta.lock().await;
                let i = m.by_id(self.id).map_err(|e| self.err(e))?;
                m.unmap(i, p.vc).await.map_err(|e| self.err(e))?;
                let r = self.pool.safe_point_released(m).await;
                r.map_err(|e| self.err(e))?;
            } else if self
                .lookup(p.vc)
                .await
                .map_err(|e| self.err(e))?
                .cluster
                .is_some()
            {
                // As a write: a full pool with clusters pending frees them.
                let zeros = vec![0u8; p.len as usize];
                self.write_piece_gated(p, &zeros, &mut Phases::new())
                    .await?;
            }
        }
        Ok(())
    }
}

impl BlockDevice for ThinVolume {
    fn name(&self) -> &str {
        &self.name
    }

    /// `base:allocation` for NBD: unmapped clusters are zero holes.
    fn allocation(
        &self,
        offset: ByteOffset,
        len: u64,
    ) -> crate::block::BoxFuture<'_, BlockResult<crate::block::AllocationMap>> {
        use crate::block::{push_extent, Allocation};
        crate::block::BoxFuture::new(async move {
            let mut map = Vec::new();
            for (n, mapped) in ThinVolume::allocation(self, offset.0, len).await? {
                let state = if mapped {
                    Allocation::DATA
                } else {
                    Allocation::HOLE_ZERO
                };
                push_extent(&mut map, n, state);
            }
            Ok(map)
        })
    }

    fn size(&self) -> u64 {
        self.size.load(Ordering::Acquire)
    }

    fn read<'a>(&'a self, offset: ByteOffset, buf: &'a mut [u8]) -> IoFuture<'a> {
        crate::block::BoxFuture::new(self.read_at(offset, buf))
    }

    fn write<'a>(
        &'a self,
        offset: ByteOffset,
        buf: &'a [u8],
        durability: Durability,
    ) -> IoFuture<'a> {
        crate::block::BoxFuture::new(self.write_at(offset, buf, durability))
    }

    fn flush(&self) -> IoFuture<'_> {
        crate::block::BoxFuture::new(
            async move { self.pool.flush().await.map_err(|e| self.err(e)) },
        )
    }

    fn discard(&self, offset: ByteOffset, len: u64) -> IoFuture<'_> {
        crate::block::BoxFuture::new(self.clear_at(offset, len))
    }

    fn write_zeroes(&self, offset: ByteOffset, len: u64, _may_unmap: bool) -> IoFuture<'_> {
        crate::block::BoxFuture::new(self.clear_at(offset, len))
    }
}
