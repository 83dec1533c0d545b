//! Linux md arrays, served from their members' images or devices in
//! userspace, read-only: md's superblocks (0.90 in either byte order, 1.0,
//! 1.1, 1.2), what `vraid examine` shows of them, the assembly of an array
//! from its members (grouped by array UUID, ordered by role, stale members
//! left out by event count) and a read-only [`crate::block::BlockDevice`]
//! over the members that maps array bytes through md's own layouts
//! (`raid::md_layout`) and reconstructs what missing members held.
//!
//! ```text
//!  member bytes ─► superblock::read / parse ─► MdSuperblock (checksum checked)
//!                                               │
//!  examine::MdReport ◄──────────────────────────┤ (vraid examine)
//!  assemble::assemble(members) ─► MdArray ──────┘ (freshest events, roles)
//!  volume::MdVolume::new(MdArray) ─► BlockDevice (read-only) ─► NBD export
//!  MdVolume::writable(MdArray) ─► write (RMW, mirrors) + writable (superblocks)
//! ```
//!
//! Nothing here writes to a member unless the volume was built with
//! `MdVolume::writable` (`--md-writable`, docs/FORMAT.md §12): then
//! `write` carries writes through md's layouts and `writable` keeps md's
//! superblocks (events, clean/dirty, checksum) as the kernel's md does.

pub mod assemble;
pub mod bitmap;
pub mod examine;
mod intent;
mod plan;
pub mod superblock;
mod superblock0;
mod superblock1;
pub mod volume;
pub mod writable;
mod write;
pub mod zones;

#[cfg(test)]
mod bitmap_tests;
#[cfg(test)]
mod degraded_tests;
#[cfg(test)]
mod encode;
#[cfg(test)]
mod redteam_tests;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod write_tests;

pub use assemble::{assemble, MdArray, MdAssembleError};
pub use examine::MdReport;
pub use superblock::{MdSuperblock, MdSuperblockError, MdVersion, Role};
pub use volume::MdVolume;
