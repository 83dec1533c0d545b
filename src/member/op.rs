//! The operations an I/O engine runs on one open file, shared by the
//! io_uring engine (`uring`) and the pread/pwrite fallback (`sync`).
//!
//! An [`Op`] owns its buffer; the engine hands a read buffer back filled in
//! [`OpResult`]. Engines continue short reads and writes, and a read that
//! reaches end-of-file yields zeroes for the missing tail.

use std::io;

use super::buf::AlignedBuf;

/// One engine operation on one file descriptor.
#[derive(Debug)]
pub(crate) enum Op {
    /// Read `buf.len()` bytes at `offset` into `buf`.
    Read { offset: u64, buf: AlignedBuf },
    /// Write `buf` at `offset`; with `fua`, durably (`RWF_DSYNC`).
    Write {
        offset: u64,
        buf: AlignedBuf,
        fua: bool,
    },
    /// `fdatasync`.
    Flush,
    /// `fallocate(mode, offset, len)`.
    Fallocate { offset: u64, len: u64, mode: i32 },
}

/// Outcome of an [`Op`]: the filled buffer for reads, `None` otherwise.
pub(crate) type OpResult = io::Result<Option<AlignedBuf>>;

/// Largest single kernel request; longer ones are continued like short I/O.
pub(crate) const MAX_CHUNK: usize = 1 << 30;
