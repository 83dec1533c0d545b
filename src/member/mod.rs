//! Members: the real storage under a volume.
//!
//! `file` opens files and block devices (O_DIRECT where allowed) and exposes
//! them as [`crate::block::BlockDevice`]; I/O goes through an io_uring engine
//! (`uring`) or the pread/pwrite fallback (`sync`). `memory` is an in-memory
//! device for unit tests only.

#[cfg(test)]
pub mod memory;
