//! The daemon's side of pools: the NBD export table as the pools'
//! [`ExportSink`], and opening the pools of the assembled arrays.

use std::sync::Arc;

use crate::block::BlockDevice;
use crate::export::nbd::{Export, ExportTable};
use crate::pool::service::{ExportSink, PoolService};

use super::bringup::Assembled;
use super::DaemonError;

/// NBD exports of pool volumes.
struct NbdSink(ExportTable);

impl ExportSink for NbdSink {
    fn add(&self, name: &str, description: String, device: Arc<dyn BlockDevice>, read_only: bool) {
        self.0.insert(Export {
            name: name.to_string(),
            description,
            device,
            read_only,
            preferred_block: 4096,
            multi_conn: true,
            contexts: Default::default(),
        });
    }

    fn remove(&self, name: &str) {
        self.0.remove(name);
    }
}

/// Opens the pool of every array that holds one; their volumes replace
/// the arrays in `table`.
pub(super) async fn open_pools<S>(
    volumes: &[(Assembled, S)],
    table: ExportTable,
) -> Result<Arc<PoolService>, DaemonError> {
    let arrays = volumes
        .iter()
        .map(|(a, _)| (a.assembly.name.clone(), a.handle.client.device.clone()))
        .collect();
    PoolService::open(arrays, Arc::new(NbdSink(table)))
        .await
        .map_err(|(array, source)| DaemonError::Pool { array, source })
}
