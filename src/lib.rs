//! vraid: a userspace software-RAID engine.
//!
//! Layers, one direction only (see `docs/FORMAT.md` and the README):
//!
//! ```text
//!  export::nbd ──► BlockDevice (raid::Volume) ──► BlockDevice (member::FileMember)
//!                      │ raid::layout (pure math)        │ io_uring / pread fallback
//!  meta (superblock, assembly) builds Volumes from members on disk
//! ```
//!
//! Everything above `member` speaks only [`block::BlockDevice`].

pub mod block;
pub mod cli;
pub mod config;
pub mod control;
pub mod daemon;
pub mod duration;
pub mod export;
pub mod future_pool;
pub mod integrity;
pub mod iovec;
pub mod md;
pub mod member;
pub mod meta;
pub mod metrics;
pub mod pool;
pub mod qos;
pub mod raid;
pub mod remote;
pub mod tls;
pub mod units;
pub mod volfault;
pub mod wlog;
