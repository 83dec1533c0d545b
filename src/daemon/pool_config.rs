//! The config's `[[pool]]` tables applied at start-up, after the pools on
//! disk are open: first every table is checked against what the arrays
//! hold (nothing is written until all pass), then missing pools are laid
//! and missing volumes created, bigger sizes grown, and every declared
//! volume gets its QoS limits and write cache. A volume the config does
//! not name is never touched.
//!
//! ```text
//!  [[pool]] ──check (pool there? cluster size, names free, not a snapshot)──► Step list
//!           ──apply (pool.create, volume.create, resize; qos, cache)────────► exports
//! ```

use std::sync::Arc;

use crate::config::{PoolConfig, PoolVolumeConfig};
use crate::export::pool_volumes::PoolExports;
use crate::pool::pool::CreateOptions;
use crate::pool::service::{PoolListing, PoolService};

use super::DaemonError;

/// What start-up does for one declared volume.
#[derive(Debug, PartialEq, Eq)]
enum VolumeStep {
    /// Create it.
    Create,
    /// Grow it from its size now.
    Grow,
    /// There as declared.
    Keep,
}

/// Checks every `[[pool]]` against the arrays, then lays and creates what
/// is missing.
pub(super) async fn apply(
    pools: &[PoolConfig],
    service: &Arc<PoolService>,
    sink: &PoolExports,
) -> Result<(), DaemonError> {
    for p in pools {
        service.preset_fill_events(&p.array, p.fill_events.clone());
    }
    let listings = service.list().await;
    let mut plans = Vec::with_capacity(pools.len());
    for (i, p) in pools.iter().enumerate() {
        let fail = |why: String| {
            DaemonError::Usage(format!("config pool[{i}] on array {}: {why}", p.array))
        };
        if let Some(why) = service.broken_reason(&p.array) {
            tracing::error!(array = %p.array, "config pool skipped: the pool there cannot be opened: {why}");
            plans.push(None);
            continue;
        }
        let listing = listings.iter().find(|l| l.pool == p.array);
        let steps = check_pool(p, listing, &listings, service)
            .await
            .map_err(fail)?;
        plans.push(Some(steps));
    }
    for ((i, p), steps) in pools.iter().enumerate().zip(plans) {
        let Some(steps) = steps else { continue };
        let fail = |why: String| {
            DaemonError::Usage(format!("config pool[{i}] on array {}: {why}", p.array))
        };
        apply_pool(p, &steps, service, sink).await.map_err(fail)?;
    }
    Ok(())
}

/// The step of each declared volume of `p`, or why the table cannot be
/// applied.
async fn check_pool(
    p: &PoolConfig,
    listing: Option<&PoolListing>,
    all: &[PoolListing],
    service: &PoolService,
) -> Result<Vec<VolumeStep>, String> {
    if let (Some(l), Some(want)) = (listing, p.cluster_size) {
        if l.space.cluster_size != want {
            return Err(format!(
                "the pool there has {} KiB clusters, the config says {} KiB (a pool's cluster \
                 size cannot change)",
                l.space.cluster_size >> 10,
                want >> 10
            ));
        }
    }
    if let (Some(l), Some(split)) = (listing, p.split_clusters) {
        if (l.version == crate::pool::split::SPLIT_VERSION) != split {
            return Err(format!(
                "the pool there is version {}, the config says split_clusters = {split} \
                 (a pool's version cannot change)",
                l.version
            ));
        }
    }
    let mut steps = Vec::with_capacity(p.volumes.len());
    for v in &p.volumes {
        steps.push(check_volume(v, &p.array, listing, all, service).await?);
    }
    Ok(steps)
}

async fn check_volume(
    v: &PoolVolumeConfig,
    array: &str,
    listing: Option<&PoolListing>,
    all: &[PoolListing],
    service: &PoolService,
) -> Result<VolumeStep, String> {
    let elsewhere = all
        .iter()
        .filter(|l| l.pool != array)
        .find(|l| l.volumes.iter().any(|x| x.name == v.name));
    if let Some(other) = elsewhere {
        return Err(format!(
            "volume {:?} is a volume of the pool on array {}, not of this one",
            v.name, other.pool
        ));
    }
    let Some(have) = listing.and_then(|l| l.volumes.iter().find(|x| x.name == v.name)) else {
        service
            .check_free_name(&v.name)
            .await
            .map_err(|e| format!("volume {:?}: {e}", v.name))?;
        return Ok(VolumeStep::Create);
    };
    if have.snapshot {
        return Err(format!(
            "volume {:?} is a snapshot in the pool: declare only writable volumes",
            v.name
        ));
    }
    if v.size > have.size {
        return Ok(VolumeStep::Grow);
    }
    if v.size < have.size {
        tracing::warn!(
            volume = %v.name,
            "the config says {} bytes, the volume has {}: left as it is (volumes do not shrink at start-up)",
            v.size,
            have.size
        );
    }
    Ok(VolumeStep::Keep)
}

async fn apply_pool(
    p: &PoolConfig,
    steps: &[VolumeStep],
    service: &PoolService,
    sink: &PoolExports,
) -> Result<(), String> {
    if !service.pooled().await.contains(&p.array) {
        let opts = CreateOptions {
            cluster_size: p.cluster_size.unwrap_or(1 << 20),
            split: p.split_clusters.unwrap_or(false),
            ..CreateOptions::default()
        };
        service
            .create_pool(&p.array, opts)
            .await
            .map_err(|e| format!("cannot lay the pool: {e}"))?;
        tracing::info!(array = %p.array, "pool laid (config)");
    }
    for (v, step) in p.volumes.iter().zip(steps) {
        let done = match step {
            VolumeStep::Create => service
                .create_volume(&p.array, &v.name, v.size)
                .await
                .map(drop),
            VolumeStep::Grow => service.resize(&v.name, v.size, false).await.map(drop),
            VolumeStep::Keep => Ok(()),
        };
        done.map_err(|e| format!("volume {:?}: {e}", v.name))?;
        if *step == VolumeStep::Create {
            tracing::info!(volume = %v.name, size = v.size, "pool volume created (config)");
        }
        client_settings(v, sink).await?;
    }
    Ok(())
}

/// QoS limits and the write cache of a declared volume; a vhost socket
/// that failed is reported.
async fn client_settings(v: &PoolVolumeConfig, sink: &PoolExports) -> Result<(), String> {
    let Some(stack) = sink.stacks().get(&v.name) else {
        return Err(format!("volume {:?} is not exported", v.name));
    };
    stack.qos.set(v.qos);
    let failed = |e: crate::block::BlockError| format!("volume {:?}: cache: {e}", v.name);
    stack
        .cache
        .set_capacity(v.cache_size)
        .await
        .map_err(failed)?;
    stack.cache.set_mode(v.cache).await.map_err(failed)?;
    if let Some(why) = sink.vhost_error(&v.name) {
        return Err(format!("volume {:?}: {why}", v.name));
    }
    Ok(())
}
