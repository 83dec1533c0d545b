//! Writes of a thin volume to an exclusive split record (docs/FORMAT.md
//! §11, "Split clusters", write case 3): the granules in the record's
//! mask are written in place in its `new` cluster; each other touched
//! granule is *filled* — marked busy (another write to it waits), its old
//! bytes read through the record's base, merged with the write, written
//! at its place in `new` with the metadata lock released, then its mask
//! bit set under the lock (P-22). The volume's write gate is held from
//! the lookup until then, so a snapshot never shares the record between
//! a fill's data and its bit (P-19, P-23).

use tokio::sync::{MutexGuard, RwLockReadGuard};

use super::{Piece, ThinVolume};
use crate::block::Durability;
use crate::pool::meta::Meta;
use crate::pool::split::{granule_size, touched, Entry};
use crate::pool::PoolError;
use crate::units::ByteOffset;

/// Granules of a mask.
fn bits(mask: u64) -> impl Iterator<Item = u32> {
    (0..64).filter(move |g| mask >> g & 1 == 1)
}

impl ThinVolume {
    /// Case 3 for piece `p` of split entry `e` (exclusive, found under
    /// `m` and `wgate`). `None`: look up again (a busy granule was waited
    /// for, or the entry changed meanwhile); else whether metadata changed.
    pub(super) async fn write_record(
        &self,
        p: Piece,
        data: &[u8],
        e: u64,
        wgate: RwLockReadGuard<'_, ()>,
        mut m: MutexGuard<'_, Meta>,
    ) -> Result<Option<bool>, PoolError> {
        let cs = self.pool.cluster_size();
        let Entry::Split(r) = Entry::decode(e)? else {
            return Err(PoolError::Corrupt(format!("{e:#x} is not a split entry")));
        };
        let rec = m.record(r).await?;
        let fill = touched(cs, p.off, p.len) & !rec.mask;
        if fill == 0 {
            drop(m);
            let at = self.phys(rec.new, p.off);
            self.pool.dev.write(at, data, Durability::Normal).await?;
            drop(wgate);
            return Ok(Some(false));
        }
        if bits(fill).any(|g| m.busy.contains(&(r, g))) {
            let done = self.pool.fills_done.notified();
            tokio::pin!(done);
            done.as_mut().enable();
            drop((m, wgate));
            self.pool
                .fill_waits
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            done.await;
            return Ok(None);
        }
        let mut sources = Vec::new();
        for g in bits(fill) {
            sources.push((g, m.granule_source(rec.base, g).await?));
        }
        m.busy.extend(bits(fill).map(|g| (r, g)));
        drop(m);
        let io = self.fill_granules(p, data, rec.new, fill, &sources).await;
        let mut m = self.pool.meta.lock().await;
        bits(fill).for_each(|g| {
            m.busy.remove(&(r, g));
        });
        self.pool.fills_done.notify_waiters();
        io?;
        let i = m.by_id(self.id)?;
        let set = m.set_mask(i, p.vc, e, rec.new, fill).await?;
        drop(wgate);
        if !set {
            return Ok(None);
        }
        self.pool.safe_point_released(m).await?;
        Ok(Some(true))
    }

    /// Writes `data` (piece `p`) into record cluster `new`: touched
    /// granules in `fill` whole (their other bytes from `sources`, zero
    /// for `None`), the rest in place.
    async fn fill_granules(
        &self,
        p: Piece,
        data: &[u8],
        new: u64,
        fill: u64,
        sources: &[(u32, Option<u64>)],
    ) -> Result<(), PoolError> {
        let gs = granule_size(self.pool.cluster_size());
        let (start, end) = (p.off, p.off + p.len);
        for g in bits(touched(self.pool.cluster_size(), p.off, p.len)) {
            let (g0, g1) = (u64::from(g) * gs, u64::from(g + 1) * gs);
            let (lo, hi) = (start.max(g0), end.min(g1));
            let part = &data[(lo - start) as usize..(hi - start) as usize];
            let whole = lo == g0 && hi == g1;
            if fill >> g & 1 == 0 || whole {
                let normal = Durability::Normal;
                self.pool
                    .dev
                    .write(self.phys(new, lo), part, normal)
                    .await?;
                continue;
            }
            let mut buf = vec![0u8; gs as usize];
            let src = sources.iter().find(|(x, _)| *x == g).and_then(|(_, c)| *c);
            if let Some(c) = src {
                self.pool
                    .dev
                    .read(ByteOffset(c * self.pool.cluster_size() + g0), &mut buf)
                    .await?;
            }
            buf[(lo - g0) as usize..(hi - g0) as usize].copy_from_slice(part);
            let normal = Durability::Normal;
            self.pool
                .dev
                .write(self.phys(new, g0), &buf, normal)
                .await?;
        }
        Ok(())
    }
}
