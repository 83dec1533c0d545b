//! Which device a member is, and the claim vraid holds on it.
//!
//! ```text
//!  identity : DeviceId::Block { rdev }        (any node of one block device)
//!             DeviceId::File { dev, ino }     (any path, link or bind mount)
//!  claim    : block device ─► O_EXCL at open (the kernel refuses others: EBUSY)
//!             regular file ─► flock(LOCK_EX) on the member's descriptor
//!  probe    : in_use_elsewhere(path) ─► the same test, without claiming
//! ```
//!
//! "Held exclusively" for a regular file means an exclusive `flock` held
//! by another process: every vraid process takes one on each member it
//! opens for writing, and other programs can do the same (`flock(1)`).
//! Claims of this process are counted in a registry, so opening a member
//! twice in one daemon (a failed member added back) is not "in use";
//! whether it is already part of an array is the array's question.

use std::collections::HashMap;
use std::fmt;
use std::fs::{File, Metadata, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::Path;
use std::sync::{Mutex, OnceLock};

/// A device by identity, never by path string.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum DeviceId {
    /// A block device: its device number.
    Block {
        /// `st_rdev`.
        rdev: u64,
    },
    /// A regular file: filesystem device and inode.
    File {
        /// `st_dev`.
        dev: u64,
        /// `st_ino`.
        ino: u64,
    },
}

impl DeviceId {
    /// The identity of what `meta` describes.
    pub fn of_metadata(meta: &Metadata) -> DeviceId {
        if meta.file_type().is_block_device() {
            DeviceId::Block { rdev: meta.rdev() }
        } else {
            DeviceId::File {
                dev: meta.dev(),
                ino: meta.ino(),
            }
        }
    }

    /// The identity of the file `path` names (symlinks followed).
    pub fn of_path(path: &Path) -> io::Result<DeviceId> {
        std::fs::metadata(path).map(|m| DeviceId::of_metadata(&m))
    }

    /// The identity of an open file.
    pub fn of_file(file: &File) -> io::Result<DeviceId> {
        file.metadata().map(|m| DeviceId::of_metadata(&m))
    }
}

impl fmt::Display for DeviceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            DeviceId::Block { rdev } => {
                write!(
                    f,
                    "block device {}:{}",
                    libc::major(rdev),
                    libc::minor(rdev)
                )
            }
            DeviceId::File { dev, ino } => write!(
                f,
                "inode {ino} on device {}:{}",
                libc::major(dev),
                libc::minor(dev)
            ),
        }
    }
}

/// Claims this process holds, by device.
fn held() -> &'static Mutex<HashMap<DeviceId, usize>> {
    static HELD: OnceLock<Mutex<HashMap<DeviceId, usize>>> = OnceLock::new();
    HELD.get_or_init(|| Mutex::new(HashMap::new()))
}

fn held_here(id: DeviceId) -> bool {
    held()
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .contains_key(&id)
}

/// This process's claim on one member; released when the member closes.
#[derive(Debug)]
pub struct Claim {
    id: DeviceId,
}

impl Claim {
    /// The claimed device.
    pub fn id(&self) -> DeviceId {
        self.id
    }
}

impl Drop for Claim {
    fn drop(&mut self) {
        let mut held = held().lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = held.get_mut(&self.id) {
            *n -= 1;
            if *n == 0 {
                held.remove(&self.id);
            }
        }
    }
}

/// Another process holds the device exclusively.
#[derive(Debug, thiserror::Error)]
#[error("held exclusively by another process")]
pub struct Busy;

/// Claims an opened member: a regular file gets an exclusive `flock` on
/// `file` (block devices were opened `O_EXCL`, which is their claim).
/// Fails only when another process holds the file.
pub fn claim(file: &File, id: DeviceId) -> Result<Claim, Busy> {
    if matches!(id, DeviceId::File { .. }) {
        match flock(file, libc::LOCK_EX) {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(libc::EWOULDBLOCK) => {
                if !held_here(id) {
                    return Err(Busy);
                }
            }
            // A filesystem without flock: nothing to claim or probe.
            Err(_) => {}
        }
    }
    *held()
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .entry(id)
        .or_insert(0) += 1;
    Ok(Claim { id })
}

/// Whether another process holds `path` exclusively (a vraid serving it,
/// a `flock -x`, a mounted or md-claimed block device). Claims of this
/// process do not count.
pub fn in_use_elsewhere(path: &Path) -> io::Result<bool> {
    let meta = std::fs::metadata(path)?;
    let id = DeviceId::of_metadata(&meta);
    if held_here(id) {
        return Ok(false);
    }
    if meta.file_type().is_block_device() {
        return match OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_EXCL)
            .open(path)
        {
            Ok(_) => Ok(false),
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) => Ok(true),
            Err(e) => Err(e),
        };
    }
    let file = File::open(path)?;
    match flock(&file, libc::LOCK_SH) {
        Ok(()) => Ok(false),
        Err(e) if e.raw_os_error() == Some(libc::EWOULDBLOCK) => Ok(true),
        Err(_) => Ok(false),
    }
}

/// `flock(fd, op | LOCK_NB)`; a shared probe lock is dropped with `file`.
fn flock(file: &File, op: libc::c_int) -> io::Result<()> {
    // SAFETY: `file` owns a valid descriptor for the duration of the call;
    // flock has no memory effects.
    let rc = unsafe { libc::flock(file.as_raw_fd(), op | libc::LOCK_NB) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}
