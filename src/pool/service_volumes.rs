//! The `volume.*` operations of [`PoolService`]: each changes the pool,
//! then the exports (a new volume, snapshot or clone is exported at once;
//! a deleted or renamed one's export goes first).

use crate::pool::service::PoolService;
use crate::pool::{PoolError, VolumeInfo};

impl PoolService {
    /// `vraid volume create POOL NAME --size SIZE`.
    pub async fn create_volume(
        &self,
        pool: &str,
        name: &str,
        size: u64,
    ) -> Result<VolumeInfo, PoolError> {
        self.check_free_name(name).await?;
        let p = self.pool(pool).await?;
        let v = p.create_volume(name, size).await?;
        self.export(pool, &p, &v).await?;
        Ok(v)
    }

    /// `vraid volume delete NAME`.
    pub async fn delete_volume(&self, name: &str) -> Result<(), PoolError> {
        let (_, p) = self.holder(name).await?;
        self.sink.remove(name);
        p.delete_volume(name).await
    }

    /// `vraid volume resize NAME --size SIZE`: grow (live), or shrink
    /// (refused while a client is connected unless `force`).
    pub async fn resize(
        &self,
        name: &str,
        size: u64,
        force: bool,
    ) -> Result<VolumeInfo, PoolError> {
        let (_, p) = self.holder(name).await?;
        let now = p.volumes().await.into_iter().find(|v| v.name == name);
        if now.is_some_and(|v| size < v.size) {
            self.refuse_in_use(name, "shrink", force)?;
        }
        p.resize(name, size).await
    }

    /// `vraid volume revert NAME SNAP`: the volume becomes the snapshot's
    /// bytes and size (refused while a client is connected unless
    /// `force`: the clients then see the disk change under them).
    pub async fn revert(
        &self,
        name: &str,
        snap: &str,
        force: bool,
    ) -> Result<VolumeInfo, PoolError> {
        let (_, p) = self.holder(name).await?;
        self.refuse_in_use(name, "revert", force)?;
        p.revert(name, snap).await
    }

    fn refuse_in_use(&self, name: &str, what: &str, force: bool) -> Result<(), PoolError> {
        match self.sink.clients(name) {
            0 => Ok(()),
            _ if force => Ok(()),
            n => Err(PoolError::Invalid(format!(
                "{name} has {n} client(s) connected: refusing to {what} a volume in use \
                 (--force does it anyway; the clients see the disk change under them)"
            ))),
        }
    }

    /// `vraid volume rename NAME NEW`.
    pub async fn rename(&self, name: &str, new_name: &str) -> Result<VolumeInfo, PoolError> {
        self.check_free_name(new_name).await?;
        let (pool, p) = self.holder(name).await?;
        let v = p.rename(name, new_name).await?;
        if !self.sink.rename(name, new_name) {
            self.sink.remove(name);
            self.export(&pool, &p, &v).await?;
        }
        Ok(v)
    }

    /// `vraid volume snapshot VOL SNAP` / `vraid volume clone SNAP NEW`.
    pub async fn share(
        &self,
        name: &str,
        new_name: &str,
        writable: bool,
    ) -> Result<VolumeInfo, PoolError> {
        self.check_free_name(new_name).await?;
        let (pool, p) = self.holder(name).await?;
        let v = p.share(name, new_name, writable).await?;
        self.export(&pool, &p, &v).await?;
        Ok(v)
    }
}
