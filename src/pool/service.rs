//! The daemon's pools: which arrays hold one, and every operation of the
//! control socket's `pool.*` / `volume.*` methods, keeping the exports in
//! step (each volume its own export, named as the volume; an array that
//! holds a pool is not exported itself). Knows no transport: exports are
//! added and removed through an [`ExportSink`].

use std::sync::Arc;

use crate::block::BlockDevice;
use crate::export::nbd::meta::MetaContexts;
use crate::pool::check::CheckReport;
use crate::pool::contexts::PoolContexts;
use crate::pool::pool::CreateOptions;
use crate::pool::store::DEFAULT_CACHE_PAGES;
use crate::pool::{Pool, PoolError, PoolSpace, VolumeInfo};

/// Where volume exports go (the NBD export table).
pub trait ExportSink: Send + Sync {
    /// Adds or replaces an export offering `contexts` beside
    /// `base:allocation`.
    fn add(
        &self,
        name: &str,
        description: String,
        device: Arc<dyn BlockDevice>,
        read_only: bool,
        contexts: MetaContexts,
    );
    /// Removes an export.
    fn remove(&self, name: &str);
    /// Clients connected to export `name` now (NBD connections, a
    /// vhost-user frontend); 0 if the sink cannot tell. A shrink or revert
    /// of a volume in use needs `--force`.
    fn clients(&self, name: &str) -> usize {
        let _ = name;
        0
    }
    /// Renames an export, keeping its device (and what wraps it); false
    /// when the sink cannot (the caller then removes and adds).
    fn rename(&self, old: &str, new: &str) -> bool {
        let _ = (old, new);
        false
    }
}

/// One pool as listed.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct PoolListing {
    /// Pool name (the array's).
    pub pool: String,
    /// Space.
    pub space: PoolSpace,
    /// Volumes and snapshots.
    pub volumes: Vec<VolumeInfo>,
    /// Used space, percent of the data clusters.
    #[serde(default)]
    pub used_percent: f64,
    /// Provisioned (the writable volumes' sizes) over the pool's data
    /// space: above 1.0 the volumes can ask for more than there is.
    #[serde(default)]
    pub overcommit: f64,
    /// Percent-full thresholds that raise `pool_fill` events.
    #[serde(default)]
    pub fill_events: Vec<u8>,
    /// Header version: 2, or 3 for a pool with split clusters
    /// (FORMAT.md §11); 0 from a daemon older than the field.
    #[serde(default)]
    pub version: u32,
}

impl PoolListing {
    fn new(pool: &Pool, name: &str, space: PoolSpace, fill_events: Vec<u8>) -> Self {
        let ratio = |a: u64, b: u64| if b == 0 { 0.0 } else { a as f64 / b as f64 };
        let volumes = Vec::new();
        PoolListing {
            pool: name.to_string(),
            version: pool.version(),
            used_percent: 100.0 * ratio(space.used_bytes, space.total_bytes),
            overcommit: ratio(space.provisioned_bytes, space.total_bytes),
            space,
            volumes,
            fill_events,
        }
    }
}

/// The pools of a daemon.
pub struct PoolService {
    arrays: Vec<(String, Arc<dyn BlockDevice>)>,
    pools: tokio::sync::Mutex<Vec<(String, Arc<Pool>)>>,
    /// Arrays whose pool could not be opened, and why: neither the array
    /// nor its volumes are exported; the other arrays serve on.
    broken: std::sync::Mutex<Vec<(String, String)>>,
    pub(crate) sink: Arc<dyn ExportSink>,
    /// Fill thresholds and their state.
    fill: crate::pool::fill::FillWatch,
}

impl std::fmt::Debug for PoolService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PoolService")
            .field("arrays", &self.arrays.len())
            .finish()
    }
}

fn describe(pool: &str, v: &VolumeInfo) -> String {
    match (&v.parent, v.snapshot) {
        (Some(p), true) => format!("vraid snapshot of {p} in pool {pool}"),
        (Some(p), false) => format!("vraid thin volume in pool {pool}, cloned from {p}"),
        _ => format!("vraid thin volume in pool {pool}"),
    }
}

impl PoolService {
    /// Opens the pool of every array that holds one and exports its
    /// volumes (instead of the array). A pool that cannot be opened
    /// (corrupt metadata) is logged and left out, its array unexported;
    /// the other arrays and pools serve on. An array whose header cannot
    /// be read is served itself.
    pub async fn open(
        arrays: Vec<(String, Arc<dyn BlockDevice>)>,
        sink: Arc<dyn ExportSink>,
    ) -> Result<Arc<PoolService>, (String, PoolError)> {
        let mut pools = Vec::new();
        let mut broken = Vec::new();
        for (name, dev) in &arrays {
            match Pool::open(dev.clone(), DEFAULT_CACHE_PAGES).await {
                Ok(pool) => {
                    pool.start_completer();
                    pools.push((name.clone(), pool));
                }
                Err(PoolError::NoPool(_)) => {}
                // Unreadable (say block 0 lost on a degraded array): it
                // cannot be told whether a pool is there, so the array is
                // served as it was before pools, with the reason logged.
                Err(PoolError::Io(e)) => {
                    tracing::error!(array = %name, error = %e, "cannot read the pool header; serving the array itself");
                }
                Err(e) => {
                    tracing::error!(array = %name, error = %e, "pool not opened; array not exported");
                    sink.remove(name);
                    broken.push((name.clone(), e.to_string()));
                }
            }
        }
        let service = Arc::new(PoolService {
            arrays,
            pools: tokio::sync::Mutex::new(pools.clone()),
            broken: std::sync::Mutex::new(broken),
            sink,
            fill: Default::default(),
        });
        let mut taken: std::collections::HashSet<String> =
            service.arrays.iter().map(|(n, _)| n.clone()).collect();
        for (name, pool) in &pools {
            service
                .export_pool(name, pool, &mut taken)
                .await
                .map_err(|e| (name.clone(), e))?;
        }
        Ok(service)
    }

    /// Exports the volumes of `pool` whose names no array and no earlier
    /// pool's volume holds (pools laid by different daemons may share a
    /// name): a volume that would shadow another export is left out and
    /// logged, so the export and `volume.*` always mean the same volume.
    async fn export_pool(
        &self,
        name: &str,
        pool: &Arc<Pool>,
        taken: &mut std::collections::HashSet<String>,
    ) -> Result<(), PoolError> {
        self.sink.remove(name);
        for v in pool.volumes().await {
            if !taken.insert(v.name.clone()) {
                tracing::error!(pool = %name, volume = %v.name,
                    "volume not exported: an array or another pool's volume has its name");
                continue;
            }
            self.export(name, pool, &v).await?;
        }
        Ok(())
    }

    pub(crate) async fn export(
        &self,
        pool_name: &str,
        pool: &Arc<Pool>,
        v: &VolumeInfo,
    ) -> Result<(), PoolError> {
        let dev = Arc::new(pool.open_volume(&v.name).await?);
        let contexts = MetaContexts::default().with_source(Arc::new(PoolContexts::new(pool, v.id)));
        self.sink
            .add(&v.name, describe(pool_name, v), dev, v.snapshot, contexts);
        Ok(())
    }

    /// Why the pool on `array` could not be opened, if it could not.
    pub fn broken_reason(&self, array: &str) -> Option<String> {
        let broken = self.broken.lock().unwrap_or_else(|e| e.into_inner());
        broken
            .iter()
            .find(|(n, _)| n == array)
            .map(|(_, why)| why.clone())
    }

    /// Names of the arrays that hold a pool.
    pub async fn pooled(&self) -> Vec<String> {
        self.pools
            .lock()
            .await
            .iter()
            .map(|(n, _)| n.clone())
            .collect()
    }

    pub(crate) async fn pool(&self, name: &str) -> Result<Arc<Pool>, PoolError> {
        let pools = self.pools.lock().await;
        if let Some((_, p)) = pools.iter().find(|(n, _)| n == name) {
            return Ok(p.clone());
        }
        let broken = self.broken.lock().unwrap_or_else(|e| e.into_inner());
        match broken.iter().find(|(n, _)| n == name) {
            Some((_, why)) => Err(PoolError::Invalid(format!(
                "the pool on array {name:?} could not be opened: {why}"
            ))),
            None => Err(PoolError::Invalid(format!("no pool on array {name:?}"))),
        }
    }

    /// The pool holding volume `name`, and the pool's name.
    pub(crate) async fn holder(&self, name: &str) -> Result<(String, Arc<Pool>), PoolError> {
        let pools = self.pools.lock().await.clone();
        for (n, p) in pools {
            if p.volumes().await.iter().any(|v| v.name == name) {
                return Ok((n, p));
            }
        }
        Err(PoolError::NotFound(name.to_string()))
    }

    pub(crate) async fn check_free_name(&self, name: &str) -> Result<(), PoolError> {
        match self.holder(name).await {
            Ok(_) => Err(PoolError::Exists(name.to_string())),
            Err(_) if self.arrays.iter().any(|(a, _)| a == name) => {
                Err(PoolError::Exists(name.to_string()))
            }
            Err(_) => Ok(()),
        }
    }

    /// `vraid pool create`: lays a pool on an array and opens it; the
    /// array's own export goes.
    pub async fn create_pool(
        &self,
        array: &str,
        opts: CreateOptions,
    ) -> Result<PoolListing, PoolError> {
        let dev = self
            .arrays
            .iter()
            .find(|(n, _)| n == array)
            .map(|(_, d)| d.clone())
            .ok_or_else(|| PoolError::Invalid(format!("no array named {array:?}")))?;
        // Held through the create: two racing creates on one array must
        // not both lay a pool and open it.
        let mut pools = self.pools.lock().await;
        if pools.iter().any(|(n, _)| n == array) {
            return Err(PoolError::Exists(format!("pool on {array}")));
        }
        self.check_takeover(array, dev.as_ref(), opts).await?;
        // The array's own exports go first: a client still on them (cut
        // off with --force) must not write over what is laid now.
        self.sink.remove(array);
        Pool::create(dev.as_ref(), opts).await?;
        let pool = Pool::open(dev, DEFAULT_CACHE_PAGES).await?;
        pool.start_completer();
        self.broken
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|(n, _)| n != array);
        pools.push((array.to_string(), pool));
        drop(pools);
        self.listing(array).await
    }

    /// Refuses to lay a pool over what `array` holds or serves, unless
    /// `--force`: clients connected to its own export, a known signature
    /// or any non-zero byte in its first or last MiB (`meta::signature`);
    /// a cluster size the array cannot take.
    async fn check_takeover(
        &self,
        array: &str,
        dev: &dyn BlockDevice,
        opts: CreateOptions,
    ) -> Result<(), PoolError> {
        if !opts.cluster_size.is_power_of_two() {
            return Err(PoolError::Invalid(
                "cluster size must be a power of two".into(),
            ));
        }
        crate::pool::format::Geometry::plan(dev.size(), opts.cluster_size.trailing_zeros())
            .map_err(|e| {
                PoolError::Invalid(format!(
                    "cannot lay a pool with {} KiB clusters on array {array:?}: {e}",
                    opts.cluster_size >> 10
                ))
            })?;
        if opts.force {
            return Ok(());
        }
        let clients = self.sink.clients(array);
        if clients > 0 {
            return Err(PoolError::Invalid(format!(
                "{clients} client(s) are connected to array {array:?}'s own export (NBD or \
                 vhost-user-blk) and would write over the pool: disconnect them, or use --force \
                 to cut them off"
            )));
        }
        if let Some(why) = self.broken_reason(array) {
            return Err(PoolError::Invalid(format!(
                "array {array:?} holds a pool that cannot be opened ({why}); use --force to \
                 lay a new, empty pool over it"
            )));
        }
        let found = crate::meta::signature::scan(dev).await?;
        if !found.is_empty() {
            return Err(PoolError::Invalid(format!(
                "array {array:?} holds {} (its first and last MiB were checked); use --force \
                 to lay the pool over it",
                crate::meta::signature::describe(&found)
            )));
        }
        Ok(())
    }

    async fn listing(&self, name: &str) -> Result<PoolListing, PoolError> {
        let pool = self.pool(name).await?;
        let mut l = PoolListing::new(&pool, name, pool.space().await, self.fill.thresholds(name));
        l.volumes = pool.volumes().await;
        Ok(l)
    }

    /// `vraid pool set POOL --fill-events ...`: the thresholds of a pool
    /// (re-armed: levels already passed are reported once more).
    pub async fn set_fill_events(
        &self,
        pool: &str,
        thresholds: Vec<u8>,
    ) -> Result<PoolListing, PoolError> {
        crate::pool::fill::check_thresholds(&thresholds).map_err(PoolError::Invalid)?;
        self.pool(pool).await?;
        self.fill.set(pool, thresholds);
        self.listing(pool).await
    }

    /// Sets the thresholds of `pool` before it is open (the config's).
    pub fn preset_fill_events(&self, pool: &str, thresholds: Vec<u8>) {
        self.fill.set(pool, thresholds);
    }

    /// The fill thresholds every pool crossed since the last call.
    pub async fn fill_crossings(&self) -> Vec<(PoolListing, crate::pool::fill::FillEvent)> {
        let mut out = Vec::new();
        for l in self.list().await {
            let s = &l.space;
            for e in self.fill.observe(&l.pool, s.used_bytes, s.total_bytes) {
                out.push((l.clone(), e));
            }
        }
        out
    }

    /// Every pool with its space and volumes.
    pub async fn list(&self) -> Vec<PoolListing> {
        let mut out = Vec::new();
        for name in self.pooled().await {
            if let Ok(l) = self.listing(&name).await {
                out.push(l);
            }
        }
        out
    }

    /// `vraid pool check` (`--repair`: reclaim leaks; `force`: also raise
    /// counts below their references).
    pub async fn check(
        &self,
        pool: &str,
        repair: bool,
        force: bool,
    ) -> Result<CheckReport, PoolError> {
        let p = self.pool(pool).await?;
        match repair {
            true => p.repair(force).await,
            false => p.check().await,
        }
    }

    /// Commits every pool (at shutdown).
    pub async fn flush_all(&self) {
        let pools = self.pools.lock().await.clone();
        for (name, pool) in pools {
            if let Err(e) = pool.flush().await {
                tracing::warn!(pool = name, error = %e, "pool flush at shutdown failed");
            }
        }
    }
}
