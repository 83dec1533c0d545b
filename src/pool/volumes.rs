//! Volume management on an open pool: create, delete, snapshot, clone,
//! resize, rename, open. Each waits for the requests in flight (the I/O
//! gate, exclusively), commits before and after: one transaction each
//! (crash cases P-9, P-10 in docs/FORMAT.md §11).

use std::sync::Arc;

use crate::pool::format::{FLAG_DELETING, MAP_FANOUT};
use crate::pool::meta::Meta;
use crate::pool::pool::{add_record, commit_and_discard, finish_delete, new_record, SNAPSHOT};
use crate::pool::thin::ThinVolume;
use crate::pool::{Pool, PoolError, VolumeInfo};

impl Pool {
    async fn info(&self, name: &str) -> Result<VolumeInfo, PoolError> {
        self.volumes()
            .await
            .into_iter()
            .find(|v| v.name == name)
            .ok_or_else(|| PoolError::NotFound(name.to_string()))
    }

    /// Creates an empty thin volume of `size` bytes.
    pub async fn create_volume(&self, name: &str, size: u64) -> Result<VolumeInfo, PoolError> {
        {
            let _gate = self.gate.write().await;
            let mut m = self.meta.lock().await;
            let rec = new_record(&m, name, size)?;
            add_record(&mut m, rec).await?;
            m.commit().await?;
            self.publish(&m);
        }
        self.info(name).await
    }

    /// Snapshot (`writable` false) or clone (true) of `src` named `name`:
    /// shares `src`'s map (its root's count + 1); nothing is copied.
    pub async fn share(
        &self,
        src: &str,
        name: &str,
        writable: bool,
    ) -> Result<VolumeInfo, PoolError> {
        // Only `src`'s writes are drained (its write gate): in-place
        // writes in flight would change the shared clusters. The other
        // volumes go on; the pool gate is held shared so management
        // operations (which take it exclusively) keep out. The commit runs
        // with both the write gate and the metadata lock released: writes
        // after the change see the clusters shared and copy on write.
        let _gate = self.gate.read().await;
        let id = {
            let m = self.meta.lock().await;
            m.slots[m.find(src)?].rec.id
        };
        let vgate = self.vol_gate(id);
        let t0 = std::time::Instant::now();
        let drained = vgate.write().await;
        let t_drain = t0.elapsed();
        let mut m = self.meta.lock().await;
        let t_lock = t0.elapsed();
        let s = m.slots[m.by_id(id)?].rec.clone();
        if s.flags & FLAG_DELETING != 0 || s.name != src {
            return Err(PoolError::NotFound(src.to_string()));
        }
        let mut rec = new_record(&m, name, s.size)?;
        rec.flags = if writable { 0 } else { SNAPSHOT };
        (rec.root, rec.depth, rec.mapped, rec.parent) = (s.root, s.depth, s.mapped, s.id);
        if s.root != 0 {
            m.add_mcount(s.root, 1).await?;
        }
        add_record(&mut m, rec).await?;
        self.publish(&m);
        drop(drained);
        let t_resume = t0.elapsed();
        self.commit_released(m).await?;
        log_phases(src, name, [t_drain, t_lock, t_resume, t0.elapsed()]);
        self.info(name).await
    }

    /// Read-only snapshot of `src`.
    pub async fn snapshot(&self, src: &str, name: &str) -> Result<VolumeInfo, PoolError> {
        self.share(src, name, false).await
    }

    /// Writable clone of `src` (usually a snapshot).
    pub async fn clone_volume(&self, src: &str, name: &str) -> Result<VolumeInfo, PoolError> {
        self.share(src, name, true).await
    }

    /// Deletes a volume; its clusters return to the pool once no other
    /// volume shares them.
    pub async fn delete_volume(&self, name: &str) -> Result<(), PoolError> {
        let _gate = self.gate.write().await;
        let mut m = self.meta.lock().await;
        let i = m.find(name)?;
        m.slots[i].rec.flags |= FLAG_DELETING;
        m.save_slot(i).await?;
        m.commit().await?;
        self.publish(&m);
        finish_delete(&mut m, i).await?;
        commit_and_discard(&mut m, self.dev.as_ref()).await
    }

    /// Grows or shrinks a volume (live: open thin volumes see the new
    /// size). A shrink commits the size, then unmaps the clusters past
    /// the end (crash case P-14); a snapshot is never shrunk. The size it
    /// has already is a no-op.
    pub async fn resize(&self, name: &str, size: u64) -> Result<VolumeInfo, PoolError> {
        {
            let _gate = self.gate.write().await;
            let mut m = self.meta.lock().await;
            let i = m.find(name)?;
            let rec = m.slots[i].rec.clone();
            if size == 0 || !size.is_multiple_of(512) {
                return Err(PoolError::Invalid(
                    "size must be a positive multiple of 512".into(),
                ));
            }
            if size == rec.size {
                // Nothing to do, for a snapshot as for any volume.
            } else if size < rec.size {
                if rec.is_snapshot() {
                    return Err(PoolError::Invalid(format!(
                        "{name} is a snapshot (read-only): it cannot shrink"
                    )));
                }
                m.slots[i].rec.size = size;
                m.save_slot(i).await?;
                m.commit().await?;
                self.size_cell(rec.id, size);
                m.cut_tail(i).await?;
                commit_and_discard(&mut m, self.dev.as_ref()).await?;
            } else {
                grow(&mut m, i, size).await?;
                m.commit().await?;
                self.size_cell(rec.id, size);
            }
        }
        self.info(name).await
    }

    /// Makes volume `name` hold snapshot `snap`'s bytes and size (one
    /// transaction; its old map is released as a delete releases it:
    /// crash case P-13). `snap` must be a snapshot taken of `name`.
    pub async fn revert(&self, name: &str, snap: &str) -> Result<VolumeInfo, PoolError> {
        {
            let _gate = self.gate.write().await;
            let mut m = self.meta.lock().await;
            commit_and_discard(&mut m, self.dev.as_ref()).await?;
            let (vi, si) = (m.find(name)?, m.find(snap)?);
            let (v, s) = (m.slots[vi].rec.clone(), m.slots[si].rec.clone());
            if v.is_snapshot() {
                return Err(PoolError::Invalid(format!(
                    "{name} is a snapshot (read-only): it cannot be reverted"
                )));
            }
            if !s.is_snapshot() || s.parent != v.id {
                return Err(PoolError::Invalid(format!(
                    "{snap} is not a snapshot of {name}"
                )));
            }
            let mut old = v.clone();
            (old.id, old.flags, old.parent) = (m.summary.next_volume_id, FLAG_DELETING, 0);
            let d = add_record(&mut m, old).await?;
            if s.root != 0 {
                m.add_mcount(s.root, 1).await?;
            }
            let r = &mut m.slots[vi].rec;
            (r.root, r.depth, r.mapped, r.size) = (s.root, s.depth, s.mapped, s.size);
            m.save_slot(vi).await?;
            m.commit().await?;
            self.size_cell(v.id, s.size);
            finish_delete(&mut m, d).await?;
            commit_and_discard(&mut m, self.dev.as_ref()).await?;
        }
        self.info(name).await
    }

    /// Renames a volume.
    pub async fn rename(&self, name: &str, new_name: &str) -> Result<VolumeInfo, PoolError> {
        {
            let _gate = self.gate.write().await;
            let mut m = self.meta.lock().await;
            let i = m.find(name)?;
            new_record(&m, new_name, 512)?;
            m.slots[i].rec.name = new_name.to_string();
            m.save_slot(i).await?;
            m.commit().await?;
            self.publish(&m);
        }
        self.info(new_name).await
    }

    /// A block device onto volume `name`.
    pub async fn open_volume(self: &Arc<Self>, name: &str) -> Result<ThinVolume, PoolError> {
        let m = self.meta.lock().await;
        let rec = m.slots[m.find(name)?].rec.clone();
        drop(m);
        let size = self.size_cell(rec.id, rec.size);
        let ro = rec.is_snapshot();
        Ok(ThinVolume::new(self.clone(), rec.id, rec.name, size, ro))
    }
}

async fn grow(m: &mut Meta, i: usize, size: u64) -> Result<(), PoolError> {
    let cs = m.geo().cluster_size();
    let clusters = size.div_ceil(cs);
    if clusters > MAP_FANOUT.pow(crate::pool::format::MAX_DEPTH) {
        return Err(PoolError::Invalid("volume too large".into()));
    }
    let old = m.slots[i].rec.size;
    if !old.is_multiple_of(cs) && size > old {
        // A shrink may have left bytes past the old end: grown space reads zero.
        let (vc, off) = (old / cs, old % cs);
        let n = (cs - off).min(size - old);
        if m.lookup(i, vc).await?.cluster.is_some() {
            m.write_slow(i, vc, off, &vec![0u8; n as usize]).await?;
        }
    }
    m.grow_tree(i, clusters).await?;
    m.slots[i].rec.size = size;
    m.save_slot(i).await
}

/// The phases of one snapshot or clone, cumulative from the wait for the
/// source's writes: drained, metadata locked, writes resumed, committed.
fn log_phases(src: &str, name: &str, t: [std::time::Duration; 4]) {
    let us = |d: std::time::Duration| d.as_micros() as u64;
    tracing::info!(
        src,
        name,
        drain_us = us(t[0]),
        lock_us = us(t[1] - t[0]),
        paused_us = us(t[2]),
        commit_us = us(t[3] - t[2]),
        "snapshot phases"
    );
}
