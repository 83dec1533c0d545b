//! The control socket's pool methods (docs/FORMAT.md §11):
//!
//! | method            | params                                   | result |
//! |-------------------|------------------------------------------|--------|
//! | `pool.create`     | `array`, `cluster_size?`, `force?`       | `PoolListing` |
//! | `pool.list`       |                                          | `[PoolListing]` |
//! | `pool.check`      | `pool`, `repair?`, `force?`              | `CheckReport` |
//! | `volume.create`   | `pool`, `name`, `size`                   | `VolumeInfo` |
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
                ..CreateOptions::default()
            };
            result(pools.create_pool(&p.array, opts).await)
        }
        "pool.list" => result(Ok(pools.list().await)),
        "pool.check" => {
            let p: PoolParams = params(p)?;
            result(pools.check(&p.pool, p.repair, p.force).await)
        }
        "volume.create" => {
            let p: VolumeCreateParams = params(p)?;
            result(pools.create_volume(&p.pool, &p.name, p.size).await)
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
