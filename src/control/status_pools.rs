//! The pool volumes' part of `status` (`pool_volumes`): each volume of a
//! pool listing joined with its export's client stack, counters and
//! vhost-user-blk socket. A volume not exported (its name shadowed by an
//! array or another pool's volume) is left out.

use super::status::PoolVolumeStatus;
use super::Registry;
use crate::pool::service::PoolListing;

/// Every exported volume of `listings`, in pool then volume order.
pub fn pool_volumes(reg: &Registry, listings: &[PoolListing]) -> Vec<PoolVolumeStatus> {
    let clients = reg.pool_volume_clients();
    let mut out = Vec::new();
    for l in listings {
        for v in &l.volumes {
            let Some((_, c)) = clients.iter().find(|(n, _)| *n == v.name) else {
                continue;
            };
            out.push(PoolVolumeStatus {
                name: v.name.clone(),
                pool: l.pool.clone(),
                size: v.size,
                mapped_bytes: v.mapped_bytes,
                unmapped_bytes: v.size.saturating_sub(v.mapped_bytes),
                snapshot: v.snapshot,
                parent: v.parent.clone(),
                io: c.stats.summary(),
                cache: c.stack.cache.status(),
                volume_faults: c.stack.faults.status(),
                qos: c.stack.qos.status(),
                vhost_socket: c.vhost.as_ref().map(|p| p.display().to_string()),
            });
        }
    }
    out
}
