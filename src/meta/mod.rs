//! On-disk metadata: superblock codec, array creation, examination and assembly.
//!
//! The format is documented byte by byte in `docs/FORMAT.md`.
//!
//! ```text
//! create_array(devices, spec) ──► superblocks on every member (A then B, flushed)
//! examine(device)             ──► ExamineReport (JSON / text)
//! assemble(paths+devices)     ──► Assembly { members by role, data windows, ArrayMetadata }
//!                                    └─ mark_dirty / mark_clean / record_member_failed
//! ```
//!
//! Everything here speaks [`crate::block::BlockDevice`] on the raw member
//! (offset 0 = superblock A); opening files is the member layer's job.

pub mod assemble;
pub mod bitmap;
pub mod bitmap_image;
pub mod create;
mod examine;
pub mod journal;
pub mod layout;
pub mod signature;
pub mod superblock;
mod update;
pub mod written;
pub mod written_upgrade;

pub use assemble::{
    assemble, assemble_with, AssembleError, AssembleOptions, AssembledMember, Assembly, Excluded,
    RebuildTarget,
};
pub use bitmap::DiskBitmap;
pub use create::{create_array, create_array_with, ArrayInfo, CreateSpec};
pub use examine::{examine, ExamineReport, ForeignReport};
pub use superblock::{
    metadata_layout, read_superblock, ArrayState, CopyId, MemberState, MetaLayout, MirrorPolicy,
    Superblock, SuperblockError,
};
pub use update::{ArrayMetadata, Joining};
pub use written::WrittenMap;

use crate::block::BlockError;
use crate::raid::Level;

/// Errors of create, examine and superblock updates.
#[derive(Debug, thiserror::Error)]
pub enum MetaError {
    /// The array is served read-only: nothing is written to its members.
    #[error("{0} is read-only: its members are not written")]
    ReadOnly(String),
    /// A member's superblock could not be read or is invalid.
    #[error("{device}: cannot use superblock")]
    Superblock {
        /// Member name.
        device: String,
        /// Why.
        #[source]
        source: SuperblockError,
    },
    /// Writing or flushing metadata failed.
    #[error("{device}: metadata I/O failed")]
    Io {
        /// Member name.
        device: String,
        /// Why.
        #[source]
        source: BlockError,
    },
    /// A device already belongs to an array and `force` was not given.
    #[error("{device} already belongs to array {name} ({uuid}); use --force to overwrite it")]
    AlreadyMember {
        /// Member name.
        device: String,
        /// Name of the array found on it.
        name: String,
        /// UUID of that array.
        uuid: uuid::Uuid,
    },
    /// A device holds something else (a filesystem, md, LUKS, data...)
    /// and `force` was not given.
    #[error(
        "{device} holds {found}; refusing to overwrite it (use --force to overwrite it anyway)"
    )]
    Occupied {
        /// Device name.
        device: String,
        /// What was found, as text.
        found: String,
    },
    /// Wrong number of members for the level.
    #[error("{level} needs {min}..={max} members, got {got}")]
    MemberCount {
        /// Requested level.
        level: Level,
        /// Fewest allowed.
        min: usize,
        /// Most allowed.
        max: usize,
        /// Given.
        got: usize,
    },
    /// The same device was given twice.
    #[error("{0} is given twice")]
    DuplicateDevice(String),
    /// The same file or block device was given twice under two names.
    #[error("{0} and {1} are the same device")]
    SameDevice(String, String),
    /// Bad array name.
    #[error("invalid array name {0:?}: use 1..=64 characters from A-Z a-z 0-9 . _ -")]
    InvalidName(String),
    /// Bad chunk size.
    #[error("invalid chunk size {0}: must be a power of two from 4K to 16M")]
    InvalidChunk(u64),
    /// The level cannot be laid out over these members (a RAID-10 whose
    /// copies do not fit, ...).
    #[error("cannot lay out the array: {0}")]
    Geometry(crate::raid::LayoutError),
    /// A member cannot hold the metadata and one chunk.
    #[error("{device} is too small: {size} bytes, needs at least {needed}")]
    TooSmall {
        /// Member name.
        device: String,
        /// Its size.
        size: u64,
        /// Smallest usable size.
        needed: u64,
    },
    /// The role is not part of the array.
    #[error("role {0} is not a member of this array")]
    NoSuchRole(usize),
    /// The role is being rebuilt or replaced.
    #[error("role {0} is being rebuilt or replaced")]
    RoleBusy(usize),
}

/// Seconds since the Unix epoch (0 if the clock is before it).
fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[cfg(test)]
mod changes_tests;
#[cfg(test)]
mod policy_tests;
#[cfg(test)]
mod replace_tests;
#[cfg(test)]
mod tests;
