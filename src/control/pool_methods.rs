//! The control socket's pool methods (docs/FORMAT.md §11):
//!
//! | method            | params                                   | result |
//! |-------------------|------------------------------------------|--------|
//! | `pool.create`     | `array`, `cluster_size?`, `force?`, `split?` | `PoolListing` |
//! | `pool.list`       |                                          | `[PoolListing]` |
//! | `pool.check`      | `pool`, `repair?`, `force?`              | `CheckReport` |
//! | `pool.set`        | `pool`, `fill_events`                    | `PoolListing` |
//! | `volume.create`   | `pool`, `name`, `size`, `vhost_socket?`, `num_queues?` | `VolumeInfo` |
//! | `volume.delete`   | `name`                                   | `{}` |
//! | `volume.resize`   | `name`, `size`, `force?`                 | `VolumeInfo` |
//! | `volume.revert`   | `name`, `snapshot`, `force?`             | `VolumeInfo` |
//! | `volume.rename`   | `name`, `new_name`                       | `VolumeInfo` |
//! | `volume.snapshot` | `name`, `new_name`                       | `VolumeInfo` |
//! | `volume.clone`    | `name`, `new_name`                       | `VolumeInfo` |

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::handle::Registry;
use super::ControlError;
use crate::pool::pool::CreateOptions;
use crate::pool::PoolError;

/// `pool.create`.
#[derive(Debug, Serialize, Deserialize)]
pub struct PoolCreateParams {
    /// Array name.
    pub array: String,
    /// Cluster size in bytes.
    #[serde(default)]
    pub cluster_size: Option<u64>,
    /// Overwrite an array whose first block is not zero.
    #[serde(default)]
    pub force: bool,
    /// Lay a version-3 pool (split clusters, FORMAT.md §11).
    #[serde(default)]
    pub split: bool,
}

/// `pool.check`.
#[derive(Debug, Serialize, Deserialize)]
pub struct PoolParams {
    /// Pool (array) name.
    pub pool: String,
    /// Reclaim leaked clusters and pages, lower counts above their
    /// references.
    #[serde(default)]
    pub repair: bool,
    /// With `repair`: also raise counts below their references.
    #[serde(default)]
    pub force: bool,
}

/// `volume.revert`.
#[derive(Debug, Serialize, Deserialize)]
pub struct VolumeRevertParams {
    /// Volume name.
    pub name: String,
    /// Snapshot (of that volume) to revert to.
    pub snapshot: String,
    /// Even while clients are connected.
    #[serde(default)]
    pub force: bool,
}

/// `volume.create`.
#[derive(Debug, Serialize, Deserialize)]
pub struct VolumeCreateParams {
    /// Pool (array) name.
    pub pool: String,
    /// Volume name.
    pub name: String,
    /// Size in bytes.
    pub size: u64,
    /// Export it over vhost-user-blk on this socket too (for this run;
    /// the config's `[[pool.volume]] vhost_user_blk` makes it lasting).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vhost_socket: Option<std::path::PathBuf>,
    /// Queues of that export (default 4).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub num_queues: Option<u16>,
}

/// `pool.set`.
#[derive(Debug, Serialize, Deserialize)]
pub struct PoolSetParams {
    /// Pool (array) name.
    pub pool: String,
    /// Percent-full thresholds that raise events (empty: none).
    pub fill_events: Vec<u8>,
}

/// `volume.delete`.
#[derive(Debug, Serialize, Deserialize)]
pub struct VolumeNameParams {
    /// Volume name.
    pub name: String,
}

/// `volume.resize`.
#[derive(Debug, Serialize, Deserialize)]
pub struct VolumeResizeParams {
    /// Volume name.
    pub name: String,
    /// New size in bytes.
    pub size: u64,
    /// Shrink even while clients are connected.
    #[serde(default)]
    pub force: bool,
}

/// `volume.rename`, `volume.snapshot`, `volume.clone`.
#[derive(Debug, Serialize, Deserialize)]
pub struct VolumeNewNameParams {
    /// Volume name.
    pub name: String,
    /// The new (or new volume's) name.
    pub new_name: String,
}

/// `volume.delete`'s reply.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct DeletedReply {}

fn params<T: DeserializeOwned>(v: Value) -> Result<T, ControlError> {
    serde_json::from_value(v).map_err(|e| ControlError::InvalidParams(e.to_string()))
}

fn result<T: Serialize>(r: Result<T, PoolError>) -> Result<Value, ControlError> {
    r.map(|t| serde_json::to_value(t).unwrap_or(Value::Null))
        .map_err(|e| ControlError::Refused(e.to_string()))
}

/// Runs one `pool.*` or `volume.*` method.
pub async fn dispatch(reg: &Registry, method: &str, p: Value) -> Result<Value, ControlError> {
    let pools = reg.pools()?;
    match method {
        "pool.create" => {
            let p: PoolCreateParams = params(p)?;
            let opts = CreateOptions {
                cluster_size: p.cluster_size.unwrap_or(1 << 20),
                force: p.force,
                split: p.split,
                ..CreateOptions::default()
            };
            result(pools.create_pool(&p.array, opts).await)
        }
        "pool.list" => result(Ok(pools.list().await)),
        "pool.check" => {
            let p: PoolParams = params(p)?;
            result(pools.check(&p.pool, p.repair, p.force).await)
        }
        "pool.set" => {
            let p: PoolSetParams = params(p)?;
            result(pools.set_fill_events(&p.pool, p.fill_events).await)
        }
        "volume.create" => {
            let p: VolumeCreateParams = params(p)?;
            match &p.vhost_socket {
                Some(socket) => create_with_vhost(reg, &p, socket).await,
                None => result(pools.create_volume(&p.pool, &p.name, p.size).await),
            }
        }
        "volume.delete" => {
            let p: VolumeNameParams = params(p)?;
            result(pools.delete_volume(&p.name).await.map(|()| DeletedReply {}))
        }
        "volume.resize" => {
            let p: VolumeResizeParams = params(p)?;
            result(pools.resize(&p.name, p.size, p.force).await)
        }
        "volume.revert" => {
            let p: VolumeRevertParams = params(p)?;
            result(pools.revert(&p.name, &p.snapshot, p.force).await)
        }
        _ => new_name_method(reg, method, p).await,
    }
}

async fn new_name_method(reg: &Registry, method: &str, p: Value) -> Result<Value, ControlError> {
    let pools = reg.pools()?;
    let p: VolumeNewNameParams = match method {
        "volume.rename" | "volume.snapshot" | "volume.clone" => params(p)?,
        other => return Err(ControlError::MethodNotFound(other.to_string())),
    };
    match method {
        "volume.rename" => result(pools.rename(&p.name, &p.new_name).await),
        "volume.snapshot" => result(pools.share(&p.name, &p.new_name, false).await),
        _ => result(pools.share(&p.name, &p.new_name, true).await),
    }
}

/// `volume.create` with a vhost-user-blk socket: the socket is checked
/// first (free, not another volume's, not a file), then the volume is
/// created and exported on it; if the socket still fails, the new volume
/// is deleted again and the create refused.
async fn create_with_vhost(
    reg: &Registry,
    p: &VolumeCreateParams,
    socket: &std::path::Path,
) -> Result<Value, ControlError> {
    use crate::export::pool_volumes::VhostPlan;
    let pools = reg.pools()?;
    let exports = reg.pool_exports()?;
    let num_queues = p.num_queues.unwrap_or(crate::config::DEFAULT_NUM_QUEUES);
    if !(1..=crate::config::MAX_NUM_QUEUES).contains(&num_queues) {
        return Err(ControlError::InvalidParams(format!(
            "{num_queues} queues: expected 1 to {}",
            crate::config::MAX_NUM_QUEUES
        )));
    }
    result(pools.check_free_name(&p.name).await)?;
    if let Some(owner) = exports.socket_owner(socket) {
        return Err(ControlError::Refused(format!(
            "vhost-user-blk socket {} is already the socket of volume {owner:?}",
            socket.display()
        )));
    }
    crate::export::vhost::check_socket_free(socket)
        .map_err(|e| ControlError::Refused(crate::daemon::error_chain(&e)))?;
    let plan = VhostPlan {
        socket: socket.to_path_buf(),
        num_queues,
    };
    exports.plan_vhost(&p.name, plan);
    let created = pools.create_volume(&p.pool, &p.name, p.size).await;
    let why = match &created {
        Err(_) => None,
        Ok(_) => exports.vhost_error(&p.name),
    };
    if created.is_err() || why.is_some() {
        exports.drop_plan(&p.name);
    }
    if let Some(why) = why {
        let _ = pools.delete_volume(&p.name).await;
        return Err(ControlError::Refused(format!(
            "volume {:?} not created: {why}",
            p.name
        )));
    }
    result(created)
}
