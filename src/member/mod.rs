//! Members: the real storage under a volume.
//!
//! `file` opens files and block devices (O_DIRECT where allowed) and exposes
//! them as [`crate::block::BlockDevice`]; I/O goes through an io_uring engine
//! (`uring`) or the pread/pwrite fallback (`sync`). `buf` owns the aligned
//! bounce buffers (the vhost-user export uses them too), `op` the operations both engines run,
//! `nowait` counts the `RWF_NOWAIT` tries of
//! unaligned direct writes, `lone` runs a queue-depth-1 request on the caller's thread instead of
//! the ring's, `power_gate` the layer every array member sits behind for the `volatile`
//! fault (`volatile`). `memory` is an
//! in-memory device for unit tests only.

pub(crate) mod buf;
pub mod claim;
mod edge_lock;
pub mod fault;
mod file;
pub mod lone;
pub mod nowait;
mod op;
pub mod power_gate;
mod sync;
mod uring;
pub mod volatile;

#[cfg(test)]
mod lone_tests;
#[cfg(test)]
pub mod memory;
#[cfg(test)]
mod tests;

pub use claim::DeviceId;
pub use file::{
    bounce_bytes, create_sparse, open_member, open_member_on, EngineKind, FileMember, MemberError,
    MemberOptions,
};
pub use uring::{UringEngine, DEFAULT_DEPTH};
