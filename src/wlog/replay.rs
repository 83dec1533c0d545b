//! Applying a log onto a target (an image file, a block device, or a
//! volume's file under nbdfuse): a prefix of its entries, or a crash
//! state (a prefix with some entries dropped); and `vraid log check`,
//! which builds every crash state in turn and runs a command on it.
//!
//! The target must hold the volume's image as it was when logging
//! started (a zero-filled file for a new volume). Onto a file: writes go
//! with `pwrite`; trims and zeroing punch a hole in a regular file, else
//! (block devices, FUSE files that cannot punch) write zeroes. Onto an NBD
//! export ([`super::nbd_target`]): NBD WRITE, WRITE_ZEROES (or zero
//! buffers when the server has none), and FLUSH at the end.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};

use super::crash::CrashPoint;
use super::format::RecordKind;
pub use super::nbd_target::NbdTarget;
use super::scan::{Entry, LogIndex};
use super::LogError;

/// Chunk of zeroes written where a hole cannot be punched.
const ZERO_CHUNK: usize = 1 << 20;

/// An open log: its index and the file its payloads are read from.
#[derive(Debug)]
pub struct OpenLog {
    /// The entries.
    pub index: LogIndex,
    file: File,
    path: PathBuf,
}

impl OpenLog {
    /// Opens and scans `path`; refuses an unfinished log unless `allow_torn`.
    pub fn open(path: &Path, allow_torn: bool) -> Result<OpenLog, LogError> {
        let file = File::open(path).map_err(|e| LogError::file(path, e))?;
        let index = LogIndex::scan(std::io::BufReader::with_capacity(1 << 20, &file))?;
        index.require_complete(allow_torn)?;
        Ok(OpenLog {
            index,
            file,
            path: path.to_path_buf(),
        })
    }

    /// Entries `0..n` as a cut, checked against the log's length.
    pub fn entries_cut(&self, n: u64) -> Result<u64, LogError> {
        let have = self.index.entries.len() as u64;
        if n > have {
            return Err(LogError::NoSuchPoint(format!(
                "--to {n}: the log has {have} entries"
            )));
        }
        Ok(n)
    }

    /// The cut right after FLUSH number `k` (from 0).
    pub fn flush_cut(&self, k: u64) -> Result<u64, LogError> {
        let flushes = self.index.flushes();
        flushes.get(k as usize).map(|f| f + 1).ok_or_else(|| {
            LogError::NoSuchPoint(format!(
                "--to-flush {k}: the log has {} flushes (0..{})",
                flushes.len(),
                flushes.len()
            ))
        })
    }

    /// The cut right after the mark `name`.
    pub fn mark_cut(&self, name: &str) -> Result<u64, LogError> {
        self.index
            .mark(name)
            .map(|m| m + 1)
            .ok_or_else(|| LogError::NoSuchPoint(format!("no mark {name:?} in the log")))
    }

    /// Applies entries `from..to` except `dropped` (sorted) onto `target`.
    pub fn apply(
        &self,
        target: &Target,
        from: u64,
        to: u64,
        dropped: &[u64],
    ) -> Result<(), LogError> {
        let mut buf = Vec::new();
        for i in from..to {
            if dropped.binary_search(&i).is_ok() {
                continue;
            }
            self.apply_one(target, &self.index.entries[i as usize], &mut buf)?;
        }
        Ok(())
    }

    fn apply_one(&self, target: &Target, e: &Entry, buf: &mut Vec<u8>) -> Result<(), LogError> {
        let h = &e.head;
        match h.kind {
            RecordKind::Write => {
                buf.resize(h.len as usize, 0);
                self.file
                    .read_exact_at(buf, e.payload_at)
                    .map_err(|err| LogError::file(&self.path, err))?;
                target.write(h.offset, buf)
            }
            RecordKind::Trim | RecordKind::Zero => target.zero(h.offset, h.len),
            RecordKind::Flush | RecordKind::Mark | RecordKind::End => Ok(()),
        }
    }

    /// Writes crash state `p` onto `target` (which holds the start image).
    pub fn apply_point(&self, target: &Target, p: &CrashPoint) -> Result<(), LogError> {
        self.apply(target, 0, p.cut, &p.dropped)
    }
}

/// Where a replay writes: a local file or block device, or an NBD
/// export (another volume, qemu-nbd, nbdkit) reached through the remote
/// member client.
#[derive(Debug)]
pub enum Target {
    /// A file or block device.
    File(FileTarget),
    /// An NBD export.
    Nbd(NbdTarget),
}

impl Target {
    /// Opens `path`: an NBD URI (`nbd://`, `nbd+unix://`, `nbds://`) is
    /// connected to and must hold `size` bytes; anything else is a file
    /// ([`FileTarget::open`]).
    pub fn open(path: &Path, size: u64) -> Result<Target, LogError> {
        if crate::remote::is_nbd_uri(path) {
            return NbdTarget::open(path, size).map(Target::Nbd);
        }
        FileTarget::open(path, size).map(Target::File)
    }

    fn write(&self, at: u64, data: &[u8]) -> Result<(), LogError> {
        match self {
            Target::File(f) => f.write(at, data),
            Target::Nbd(n) => n.write(at, data),
        }
    }

    fn zero(&self, at: u64, len: u64) -> Result<(), LogError> {
        match self {
            Target::File(f) => f.zero(at, len),
            Target::Nbd(n) => n.zero(at, len),
        }
    }

    /// Makes what was written durable (fsync, or NBD FLUSH).
    pub fn sync(&self) -> Result<(), LogError> {
        match self {
            Target::File(f) => f.sync(),
            Target::Nbd(n) => n.sync(),
        }
    }
}

/// A file or block device a replay writes.
#[derive(Debug)]
pub struct FileTarget {
    file: File,
    path: PathBuf,
    regular: bool,
}

impl FileTarget {
    /// Opens `path` (a regular file is created if missing and grown to
    /// `size`; a block device must hold `size` bytes).
    pub fn open(path: &Path, size: u64) -> Result<FileTarget, LogError> {
        let err = |e| LogError::file(path, e);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .map_err(err)?;
        let regular = file.metadata().map_err(err)?.is_file();
        if regular && file.metadata().map_err(err)?.len() < size {
            file.set_len(size).map_err(err)?;
        }
        Ok(FileTarget {
            file,
            path: path.to_path_buf(),
            regular,
        })
    }

    fn write(&self, at: u64, data: &[u8]) -> Result<(), LogError> {
        self.file
            .write_all_at(data, at)
            .map_err(|e| LogError::file(&self.path, e))
    }

    /// Zeroes `at..+len`: a punched hole, else written zeroes.
    fn zero(&self, at: u64, len: u64) -> Result<(), LogError> {
        if self.regular && punch_hole(&self.file, at, len).is_ok() {
            return Ok(());
        }
        let zeroes = vec![0u8; ZERO_CHUNK.min(len as usize)];
        let mut done = 0u64;
        while done < len {
            let n = (len - done).min(zeroes.len() as u64) as usize;
            self.write(at + done, &zeroes[..n])?;
            done += n as u64;
        }
        Ok(())
    }

    fn sync(&self) -> Result<(), LogError> {
        self.file
            .sync_data()
            .map_err(|e| LogError::file(&self.path, e))
    }
}

fn punch_hole(file: &File, at: u64, len: u64) -> std::io::Result<()> {
    let mode = libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE;
    let (Ok(at), Ok(len)) = (i64::try_from(at), i64::try_from(len)) else {
        return Err(std::io::Error::from_raw_os_error(libc::EINVAL));
    };
    // SAFETY: fallocate on a descriptor this File owns; no memory is passed.
    let rc = unsafe { libc::fallocate(file.as_raw_fd(), mode, at, len) };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}
