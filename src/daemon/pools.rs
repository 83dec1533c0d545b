//! The daemon's side of pools: the NBD export table as the pools'
//! [`ExportSink`] (each volume behind its own
//! [`crate::volfault::ClientStack`], kept by name in a
//! [`NamedStacks`] the control plane reads), and opening the pools of
//! the assembled arrays.

use std::sync::Arc;

use crate::block::BlockDevice;
use crate::export::nbd::meta::MetaContexts;
use crate::export::nbd::{Export, ExportTable};
use crate::pool::service::{ExportSink, PoolService};
use crate::volfault::named::NamedStacks;
use crate::volfault::ClientStack;

use super::bringup::Assembled;
use super::DaemonError;

/// NBD exports of pool volumes, each over its client stack.
struct NbdSink {
    table: ExportTable,
    stacks: NamedStacks,
}

impl ExportSink for NbdSink {
    fn add(
        &self,
        name: &str,
        description: String,
        device: Arc<dyn BlockDevice>,
        read_only: bool,
        contexts: MetaContexts,
    ) {
        let stack = ClientStack::new(device);
        self.stacks.insert(name, stack.clone());
        self.table.insert(Export {
            name: name.to_string(),
            description,
            device: stack.device,
            read_only,
            preferred_block: 4096,
            multi_conn: true,
            contexts,
        });
    }

    fn clients(&self, name: &str) -> usize {
        self.table.clients(name)
    }

    fn remove(&self, name: &str) {
        self.table.remove(name);
        self.stacks.remove(name);
    }

    fn rename(&self, old: &str, new: &str) -> bool {
        let Some(export) = self.table.remove(old) else {
            return false;
        };
        self.stacks.rename(old, new);
        self.table.insert(Export {
            name: new.to_string(),
            description: export.description.clone(),
            device: export.device.clone(),
            read_only: export.read_only,
            preferred_block: export.preferred_block,
            multi_conn: export.multi_conn,
            contexts: export.contexts.clone(),
        });
        true
    }
}

/// Opens the pool of every array that holds one; their volumes replace
/// the arrays in `table`, their client stacks go into `stacks`.
pub(super) async fn open_pools<S>(
    volumes: &[(Assembled, S)],
    table: ExportTable,
    stacks: NamedStacks,
) -> Result<Arc<PoolService>, DaemonError> {
    let arrays = volumes
        .iter()
        .map(|(a, _)| (a.assembly.name.clone(), a.handle.client.device.clone()))
        .collect();
    PoolService::open(arrays, Arc::new(NbdSink { table, stacks }))
        .await
        .map_err(|(array, source)| DaemonError::Pool { array, source })
}
