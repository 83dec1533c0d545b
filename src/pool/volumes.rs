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
        {
            let _gate = self.gate.write().await;
            let mut m = self.meta.lock().await;
            commit_and_discard(&mut m, self.dev.as_ref()).await?;
            let s = m.slots[m.find(src)?].rec.clone();
            let mut rec = new_record(&m, name, s.size)?;
            rec.flags = if writable { 0 } else { SNAPSHOT };
            (rec.root, rec.depth, rec.mapped, rec.parent) = (s.root, s.depth, s.mapped, s.id);
            if s.root != 0 {
                m.add_mcount(s.root, 1).await?;
            }
            add_record(&mut m, rec).await?;
            m.commit().await?;
        }
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
        finish_delete(&mut m, i).await?;
        commit_and_discard(&mut m, self.dev.as_ref()).await
    }

    /// Grows a volume (live: open thin volumes see the new size).
    pub async fn resize(&self, name: &str, size: u64) -> Result<VolumeInfo, PoolError> {
        {
            let _gate = self.gate.write().await;
            let mut m = self.meta.lock().await;
            let i = m.find(name)?;
            let rec = m.slots[i].rec.clone();
            if size < rec.size {
                return Err(PoolError::Invalid(format!(
                    "{name}: shrinking is not supported"
                )));
            }
            if !size.is_multiple_of(512) {
                return Err(PoolError::Invalid("size must be a multiple of 512".into()));
            }
            grow(&mut m, i, size).await?;
            m.commit().await?;
            self.size_cell(rec.id, size);
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
    let clusters = size.div_ceil(m.geo().cluster_size());
    if clusters > MAP_FANOUT.pow(crate::pool::format::MAX_DEPTH) {
        return Err(PoolError::Invalid("volume too large".into()));
    }
    m.grow_tree(i, clusters).await?;
    m.slots[i].rec.size = size;
    m.save_slot(i).await
}
