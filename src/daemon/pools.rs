//! The daemon's side of pools: opening the pools of the assembled arrays
//! with [`PoolExports`] as their export sink (each volume's NBD export and
//! optional vhost-user-blk socket over its own client stack).

use std::sync::Arc;

use crate::export::pool_volumes::PoolExports;
use crate::pool::service::PoolService;

use super::bringup::Assembled;
use super::DaemonError;

/// Opens the pool of every array that holds one; their volumes replace
/// the arrays in the export table.
pub(super) async fn open_pools<S>(
    volumes: &[(Assembled, S)],
    exports: Arc<PoolExports>,
) -> Result<Arc<PoolService>, DaemonError> {
    let arrays = volumes
        .iter()
        .map(|(a, _)| (a.assembly.name.clone(), a.handle.client.device.clone()))
        .collect();
    PoolService::open(arrays, exports)
        .await
        .map_err(|(array, source)| DaemonError::Pool { array, source })
}
