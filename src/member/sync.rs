//! The fallback engine: `pread`/`pwrite`/`fdatasync`/`fallocate` on tokio's
//! blocking thread pool.
//!
//! Used when `VRAID_IO_ENGINE=sync` or when io_uring cannot be set up
//! (`kernel.io_uring_disabled`, seccomp). The closure owns the file handle
//! and the buffer, so a dropped future merely lets the syscall finish unseen.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::sync::Arc;

use super::op::{Op, OpResult, MAX_CHUNK};

/// Runs `op` on `file` on the blocking pool.
pub(crate) async fn run(file: Arc<File>, op: Op) -> OpResult {
    match tokio::task::spawn_blocking(move || run_blocking(&file, op)).await {
        Ok(result) => result,
        Err(join) => Err(io::Error::other(join)),
    }
}

/// Runs `op` on `file` on the calling thread.
pub(crate) fn run_blocking(file: &File, op: Op) -> OpResult {
    match op {
        Op::Read { offset, mut buf } => {
            read_full(file, offset, buf.as_mut_slice())?;
            Ok(Some(buf))
        }
        Op::Write { offset, buf, fua } => {
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

/// Reads into every segment of `bufs` in turn from `offset`, on the
/// calling thread; bytes past end-of-file read as zeroes.
pub(crate) fn read_segments(
    file: &File,
    mut offset: u64,
    bufs: &mut [io::IoSliceMut<'_>],
) -> io::Result<()> {
    for buf in bufs {
        read_full(file, offset, buf)?;
        offset += buf.len() as u64;
    }
    Ok(())
}

/// Writes every segment of `bufs` in turn from `offset`, on the calling
/// thread (each durable when it returns with `fua`).
pub(crate) fn write_segments(
    file: &File,
    mut offset: u64,
    bufs: &[io::IoSlice<'_>],
    fua: bool,
) -> io::Result<()> {
    for buf in bufs {
        write_full(file, offset, buf, fua)?;
        offset += buf.len() as u64;
    }
    Ok(())
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
