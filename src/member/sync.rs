//! The synchronous engines: `pread`/`pwrite`/`fdatasync`/`fallocate` on
//! tokio's blocking thread pool, or on the calling thread.
//!
//! The pool (`sync`) is used when `VRAID_IO_ENGINE=sync` or when io_uring
//! cannot be set up (`kernel.io_uring_disabled`, seccomp). Its closure owns
//! the file handle and the buffer, so a dropped future merely lets the
//! syscall finish unseen.
//!
//! The calling thread (`inline`) serves members on memory filesystems:
//! there a request is a copy of a few microseconds, cheaper than any
//! hand-off (io_uring punts tmpfs I/O to its worker threads, as tmpfs has
//! no `RWF_NOWAIT`: caller → ring thread → io-wq worker → ring thread →
//! caller). It also takes the vectored ops, as the caller's borrow outlives
//! the syscall. Transfers over 64 KiB go to the ring all the same
//! (`file::INLINE_MAX`).

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::sync::Arc;

use super::op::{IoVecs, Op, OpResult, MAX_CHUNK};

/// Runs `op` on `file` on the blocking pool.
pub(crate) async fn run(file: Arc<File>, op: Op) -> OpResult {
    match tokio::task::spawn_blocking(move || run_blocking(&file, op)).await {
        Ok(result) => result,
        Err(join) => Err(io::Error::other(join)),
    }
}

/// Runs `op` on `file` on the calling thread, vectored ops included.
pub(crate) fn run_inline(file: &File, op: Op) -> OpResult {
    match op {
        Op::ReadV { offset, mut iov } => {
            vectored(file, offset, &mut iov, false, false)?;
            Ok(None)
        }
        Op::WriteV {
            offset,
            mut iov,
            fua,
        } => {
            vectored(file, offset, &mut iov, true, fua)?;
            Ok(None)
        }
        op => run_blocking(file, op),
    }
}

/// `preadv`/`pwritev2` of `iov` at `offset` until all of it is done;
/// a read past end-of-file fills the rest with zeroes.
fn vectored(file: &File, offset: u64, iov: &mut IoVecs, write: bool, fua: bool) -> io::Result<()> {
    let mut pos = offset;
    let flags = if fua { libc::RWF_DSYNC } else { 0 };
    while !iov.is_done() {
        let rest = iov.rest();
        let at = i64::try_from(pos).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
        let count = rest.len() as libc::c_int;
        // SAFETY: the segments are memory the caller keeps borrowed for the
        // whole call (readable for a write, writable for a read: `IoVecs`'
        // contract); the fd is kept open by `file`.
        let n = unsafe {
            if write {
                libc::pwritev2(file.as_raw_fd(), rest.as_ptr(), count, at, flags)
            } else {
                libc::preadv(file.as_raw_fd(), rest.as_ptr(), count, at)
            }
        };
        match n {
            0 if write => return Err(io::Error::from(io::ErrorKind::WriteZero)),
            0 => iov.zero_rest(),
            n if n > 0 => {
                iov.advance(n as usize);
                pos += n as u64;
            }
            _ => {
                let e = io::Error::last_os_error();
                if e.kind() != io::ErrorKind::Interrupted {
                    return Err(e);
                }
            }
        }
    }
    Ok(())
}

/// Runs `op` on `file` on the calling thread.
pub(crate) fn run_blocking(file: &File, op: Op) -> OpResult {
    match op {
        Op::Read { offset, mut buf } => {
            read_full(file, offset, buf.as_mut_slice())?;
            Ok(Some(buf))
        }
        Op::Write {
            offset, buf, fua, ..
        } => {
            write_full(file, offset, buf.as_slice(), fua)?;
            Ok(None)
        }
        // A blocking-pool thread would outlive a dropped caller's borrow:
        // the file member bounces instead (`FileMember::read_vectored`).
        Op::ReadV { .. } | Op::WriteV { .. } => Err(io::Error::from_raw_os_error(libc::EOPNOTSUPP)),
        Op::Flush => {
            file.sync_data()?;
            Ok(None)
        }
        Op::Fallocate { offset, len, mode } => {
            fallocate(file, mode, offset, len)?;
            Ok(None)
        }
    }
}

/// Finishes an owned read or write of which the first `done` bytes went
/// through already (`member::lone`'s short transfers).
pub(crate) fn finish_owned(file: &File, op: Op, done: usize) -> OpResult {
    match op {
        Op::Read { offset, mut buf } => {
            read_full(file, offset + done as u64, &mut buf.as_mut_slice()[done..])?;
            Ok(Some(buf))
        }
        Op::Write {
            offset, buf, fua, ..
        } => {
            write_full(file, offset + done as u64, &buf.as_slice()[done..], fua)?;
            Ok(None)
        }
        op => run_blocking(file, op),
    }
}

/// Reads all of `buf`; bytes past end-of-file read as zeroes.
fn read_full(file: &File, offset: u64, buf: &mut [u8]) -> io::Result<()> {
    let mut done = 0;
    while done < buf.len() {
        let end = buf.len().min(done + MAX_CHUNK);
        match file.read_at(&mut buf[done..end], offset + done as u64) {
            Ok(0) => {
                buf[done..].fill(0);
                return Ok(());
            }
            Ok(n) => done += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Writes all of `buf`, continuing short writes.
fn write_full(file: &File, offset: u64, buf: &[u8], fua: bool) -> io::Result<()> {
    let mut done = 0;
    while done < buf.len() {
        let end = buf.len().min(done + MAX_CHUNK);
        let chunk = &buf[done..end];
        let pos = offset + done as u64;
        let written = if fua {
            pwrite_dsync(file, chunk, pos)
        } else {
            file.write_at(chunk, pos)
        };
        match written {
            Ok(0) => return Err(io::Error::from(io::ErrorKind::WriteZero)),
            Ok(n) => done += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// `pwritev2(.., RWF_DSYNC)`: a write that is durable when it returns.
fn pwrite_dsync(file: &File, buf: &[u8], offset: u64) -> io::Result<usize> {
    let iov = libc::iovec {
        iov_base: buf.as_ptr() as *mut libc::c_void,
        iov_len: buf.len(),
    };
    let offset = i64::try_from(offset).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    // SAFETY: `iov` describes `buf`, which is borrowed for the whole call and
    // only read by the kernel; the fd is kept open by `file`.
    let n = unsafe { libc::pwritev2(file.as_raw_fd(), &iov, 1, offset, libc::RWF_DSYNC) };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

/// `fallocate(2)`.
fn fallocate(file: &File, mode: i32, offset: u64, len: u64) -> io::Result<()> {
    let einval = || io::Error::from_raw_os_error(libc::EINVAL);
    let offset = i64::try_from(offset).map_err(|_| einval())?;
    let len = i64::try_from(len).map_err(|_| einval())?;
    loop {
        // SAFETY: plain syscall on an fd kept open by `file`; no memory is
        // passed.
        let rc = unsafe { libc::fallocate(file.as_raw_fd(), mode, offset, len) };
        if rc == 0 {
            return Ok(());
        }
        let err = io::Error::last_os_error();
        if err.kind() != io::ErrorKind::Interrupted {
            return Err(err);
        }
    }
}
