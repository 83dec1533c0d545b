//! Pools: many thin volumes on one assembled array (docs/FORMAT.md §11).
//!
//! ```text
//!  ThinVolume (BlockDevice) ──► Pool: I/O gate (RwLock) + Meta (Mutex)
//!                                      │  maps (radix trees), counts, allocator
//!                                      ▼
//!                                    Store: page cache, transaction, journal
//!                                      ▼
//!                               the array's volume (BlockDevice)
//! ```
//!
//! `format` and `page` are the bytes, `store` makes changes crash-safe,
//! `meta` holds the tree and space logic, `pool` the operations users see,
//! `thin` the block device of one volume, `check` the read-only verifier.

pub mod check;
pub mod complete;
mod complete_scan;
pub mod contexts;
pub mod diff;
pub use check::CheckReport;
pub mod fill;
pub mod format;
pub mod meta;
pub mod page;
mod phases;
#[allow(clippy::module_inception)]
pub mod pool;
mod released;
pub mod service;
mod service_volumes;
pub mod split;
pub mod split_meta;
pub(crate) mod split_write;
pub mod store;
mod tail;
pub mod thin;
pub mod tree;
pub mod volumes;

#[cfg(test)]
mod ops_tests;
#[cfg(test)]
mod pause_tests;
#[cfg(test)]
mod redteam_tests;
#[cfg(test)]
mod scale_tests;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod zeroed_tests;

pub use pool::{Pool, PoolSpace, VolumeInfo};
pub use thin::ThinVolume;

use crate::block::BlockError;

/// Errors of pools.
#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    /// Pool metadata bytes are wrong.
    #[error("corrupt pool metadata: {0}")]
    Format(#[from] format::FormatError),
    /// Pool metadata is inconsistent.
    #[error("corrupt pool metadata: {0}")]
    Corrupt(String),
    /// The array failed.
    #[error("array I/O failed")]
    Io(#[from] BlockError),
    /// No free cluster or map page.
    #[error("pool is full")]
    NoSpace,
    /// No such volume.
    #[error("no volume named {0:?}")]
    NotFound(String),
    /// The name is taken.
    #[error("a volume named {0:?} exists")]
    Exists(String),
    /// A bad request.
    #[error("{0}")]
    Invalid(String),
    /// The array is not a pool.
    #[error("no pool on this array: {0}")]
    NoPool(format::FormatError),
    /// The array is smaller than the pool says.
    #[error("array of {have} bytes is shorter than the pool's {need}")]
    ArrayTooSmall {
        /// Array size.
        have: u64,
        /// Pool's recorded size.
        need: u64,
    },
}

impl PoolError {
    /// The error a client of a thin volume sees.
    pub fn into_block(self, volume: &str) -> BlockError {
        match self {
            PoolError::Io(e) => e,
            PoolError::NoSpace => {
                BlockError::io(volume, std::io::Error::from_raw_os_error(libc::ENOSPC))
            }
            other => {
                tracing::error!(volume, error = %other, "pool metadata error");
                BlockError::io(volume, std::io::Error::other(other.to_string()))
            }
        }
    }
}
