//! [`FileMember`]: a whole regular file or block device as a
//! [`BlockDevice`], opened with O_DIRECT where the filesystem allows it.
//!
//! ```text
//!  read/write, every segment and the offset block-aligned ─► READV/WRITEV
//!            straight into the caller's segments (O_DIRECT fd; buffered fd
//!            when O_DIRECT is refused)
//!  otherwise (bounced, counted in `bounce_bytes`):
//!  read  any range ─► aligned superset ─► O_DIRECT fd ─► bounce buffer ─► copy out
//!  write aligned   ─► owned aligned copy ─► O_DIRECT fd
//!  write unaligned ─► head/tail ─► buffered fd   (aligned middle ─► O_DIRECT fd)
//!  flush ─► fdatasync   discard / write_zeroes ─► fallocate (else write zeroes)
//! ```
//!
//! Writes are "aligned" at the larger of the logical block size and the page
//! size, so a direct write never shares a page-cache page with a buffered
//! write of another request; the kernel writes back and invalidates the page
//! cache around direct I/O, which keeps both descriptors coherent. A write
//! of whole logical blocks goes direct as it is (an inline-checksum member
//! issues only such writes: docs/FORMAT.md §8 "Inline layout").
//!
//! I/O runs on the shared io_uring engine ([`UringEngine`]) or, when that is
//! unavailable or `VRAID_IO_ENGINE=sync`, on the pread/pwrite fallback.

use std::fmt;
use std::fs::{File, Metadata, OpenOptions};
use std::io::{self, IoSlice, IoSliceMut};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use super::buf::AlignedBuf;
use super::claim::{claim, held_by_this_process, Claim, DeviceId};
use super::edge_lock::EdgeLocks;
use super::lone;
use super::nowait;
use super::op::{IoVecs, Op, OpResult};
use super::sync;
use super::uring::UringEngine;
use crate::block::{check_range, BlockDevice, BlockError, BlockResult, Durability, IoFuture};
use crate::units::ByteOffset;

/// `BLKGETSIZE64`: device size in bytes (`_IOR(0x12, 114, u64)`).
const BLKGETSIZE64: libc::c_ulong = 0x8008_1272;
/// `BLKSSZGET`: logical block size (`_IO(0x12, 104)`).
const BLKSSZGET: libc::c_ulong = 0x1268;
/// Largest read or write handed to the engine at once (bounds the bounce
/// buffer); longer requests are split at multiples of it.
const MAX_IO: u64 = 8 << 20;
/// Zeroes written per request when fallocate cannot zero a range.
const ZERO_CHUNK: usize = 1 << 20;
static ZEROES: [u8; ZERO_CHUNK] = [0; ZERO_CHUNK];
/// Bytes every file member copied through a bounce buffer.
static BOUNCED: AtomicU64 = AtomicU64::new(0);

/// Bytes the file members of this process copied through a bounce buffer
/// (I/O not aligned for O_DIRECT, or on the pread/pwrite fallback), read
/// and write together; aligned I/O on io_uring adds nothing.
pub fn bounce_bytes() -> u64 {
    BOUNCED.load(Ordering::Relaxed)
}

/// Which I/O engine a member uses (`--io-engine`, `[server] io_engine`,
/// `VRAID_IO_ENGINE`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum EngineKind {
    /// io_uring if it can be set up, else the synchronous fallback.
    #[default]
    Auto,
    /// io_uring only; opening fails if it is unavailable.
    Uring,
    /// pread/pwrite on the blocking thread pool.
    Sync,
    /// preadv/pwritev on the calling thread: no hand-off to another
    /// thread (transfers up to 64 KiB; larger ones on io_uring). `Auto`
    /// picks it for members on memory filesystems (tmpfs,
    /// ramfs), whose I/O is a copy that io_uring would hand to its worker
    /// threads (they do not support `RWF_NOWAIT`); elsewhere a request
    /// blocks a runtime thread for the device's latency.
    Inline,
}

impl EngineKind {
    /// Environment variable read by [`EngineKind::from_env`].
    pub const ENV: &'static str = "VRAID_IO_ENGINE";

    /// `VRAID_IO_ENGINE=uring|sync|auto`; unset or unknown means `Auto`.
    pub fn from_env() -> Self {
        match std::env::var(Self::ENV) {
            Ok(text) => text.parse().unwrap_or_else(|_| {
                tracing::warn!(value = %text, "unknown {}, using auto", Self::ENV);
                EngineKind::Auto
            }),
            Err(_) => EngineKind::Auto,
        }
    }
}

impl fmt::Display for EngineKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            EngineKind::Auto => "auto",
            EngineKind::Uring => "uring",
            EngineKind::Sync => "sync",
            EngineKind::Inline => "inline",
        })
    }
}

impl FromStr for EngineKind {
    type Err = MemberError;

    fn from_str(s: &str) -> Result<Self, MemberError> {
        match s.trim().to_ascii_lowercase().as_str() {
            "auto" | "" => Ok(EngineKind::Auto),
            "uring" | "io_uring" | "io-uring" => Ok(EngineKind::Uring),
            "sync" => Ok(EngineKind::Sync),
            "inline" => Ok(EngineKind::Inline),
            _ => Err(MemberError::UnknownEngine(s.to_string())),
        }
    }
}

/// How to open a member.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MemberOptions {
    /// I/O engine.
    pub engine: EngineKind,
    /// Use O_DIRECT where the filesystem allows it.
    pub direct: bool,
    /// Claim the member: block devices O_EXCL, regular files an exclusive
    /// `flock` (`member::claim`). Off only for inspection (`vraid
    /// examine`), which must work on a member a daemon is serving.
    pub exclusive: bool,
    /// Open read-only (`O_RDONLY`): every write, flush-with-data or
    /// fallocate fails with EBADF, so nothing can change the member (a
    /// `--read-only` volume, `vraid examine`).
    pub read_only: bool,
    /// Timeouts of remote (NBD) members.
    pub remote: crate::remote::RemoteOptions,
}

impl Default for MemberOptions {
    /// O_DIRECT, exclusive, engine from `VRAID_IO_ENGINE` (`Auto` when unset).
    fn default() -> Self {
        MemberOptions {
            engine: EngineKind::from_env(),
            direct: true,
            exclusive: true,
            read_only: false,
            remote: crate::remote::RemoteOptions::from_env(),
        }
    }
}

/// Errors opening or creating a member.
#[derive(Debug, thiserror::Error)]
pub enum MemberError {
    /// The file or device cannot be opened.
    #[error("cannot open member {path}")]
    Open {
        /// Member path.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// The block device is mounted or claimed by another exclusive user.
    #[error("member {path} is in use (mounted or claimed by another program)")]
    InUse {
        /// Member path.
        path: PathBuf,
    },
    /// The path is neither a regular file nor a block device.
    #[error("member {path} is neither a regular file nor a block device")]
    NotFileOrDevice {
        /// Member path.
        path: PathBuf,
    },
    /// Size or block size of a device cannot be read.
    #[error("cannot query the geometry of member {path}")]
    Geometry {
        /// Member path.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// The backing file cannot be created.
    #[error("cannot create member file {path}")]
    Create {
        /// Member path.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// The file exists with another size than requested.
    #[error("member file {path} exists with {actual} bytes, not {expected}")]
    SizeMismatch {
        /// Member path.
        path: PathBuf,
        /// Requested size.
        expected: u64,
        /// Size on disk.
        actual: u64,
    },
    /// The path exists but is not a regular file.
    #[error("{path} exists and is not a regular file")]
    NotRegularFile {
        /// Member path.
        path: PathBuf,
    },
    /// io_uring was required but cannot be set up.
    #[error("cannot set up io_uring for member {path}")]
    Uring {
        /// Member path.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// `VRAID_IO_ENGINE` or a config value names no engine.
    #[error("unknown I/O engine {0:?}: expected uring, sync, inline or auto")]
    UnknownEngine(String),
    /// A remote (NBD) member cannot be reached or used.
    #[error("remote member {path}")]
    Remote {
        /// Member path (the URI as given).
        path: PathBuf,
        /// Why.
        #[source]
        source: crate::remote::LinkError,
    },
}

/// The engine a member actually runs on.
#[derive(Clone, Debug)]
enum Engine {
    Uring(Arc<UringEngine>),
    Sync,
    /// On the calling thread; transfers over [`INLINE_MAX`] on the ring
    /// when there is one.
    Inline(Option<Arc<UringEngine>>),
}

/// Largest transfer the inline engine copies on the calling thread: larger
/// ones go to the ring, whose worker threads copy several at once (one
/// 1 MiB copy per request on the connection's thread halved 1 MiB read
/// throughput on the loaded 2-core VM, session 14).
const INLINE_MAX: usize = 64 << 10;

impl Engine {
    /// Runs `op`; on io_uring a lone request may run inline if `lone` is
    /// open (`member::lone`).
    async fn run(&self, lone: &lone::Gate, file: &Arc<File>, op: Op) -> OpResult {
        match self {
            Engine::Uring(ring) => lone::run(ring, lone, file, op).await,
            Engine::Sync => sync::run(Arc::clone(file), op).await,
            Engine::Inline(Some(ring)) if op.len() > INLINE_MAX => {
                ring.run(Arc::clone(file), op).await
            }
            Engine::Inline(_) => sync::run_inline(file, op),
        }
    }

    fn kind(&self) -> EngineKind {
        match self {
            Engine::Uring(_) => EngineKind::Uring,
            Engine::Sync => EngineKind::Sync,
            Engine::Inline(_) => EngineKind::Inline,
        }
    }

    /// Whether the engine can run `ReadV`/`WriteV` (memory the caller
    /// only borrows): the blocking pool cannot (its thread would outlive
    /// a dropped caller's borrow).
    fn vectored(&self) -> bool {
        !matches!(self, Engine::Sync)
    }
}

/// A regular file or block device used as a RAID member. Block devices are
/// opened exclusively (`O_EXCL`), so a mounted or claimed device is refused.
#[derive(Debug)]
pub struct FileMember {
    path: PathBuf,
    name: String,
    size: u64,
    is_block_device: bool,
    /// Logical block size (O_DIRECT offset/length granule).
    block_size: u64,
    /// Granule of direct writes: max(block size, page size).
    write_align: u64,
    /// Edge blocks of direct writes not on `write_align` (see
    /// [`FileMember::widens`]).
    edges: EdgeLocks,
    /// Direct writes the kernel would have blocked on, written widened.
    widened: AtomicU64,
    /// Recent `RWF_NOWAIT` refusals: whether the next such write tries.
    streak: nowait::Streak,
    /// The file system holding a member file (`st_dev`): where an
    /// `RWF_NOWAIT` refusal as not supported is remembered.
    fs_dev: u64,
    /// The O_DIRECT descriptor, if the filesystem accepted O_DIRECT.
    direct: Option<Arc<File>>,
    /// A buffered descriptor: unaligned writes, flush, fallocate.
    buffered: Arc<File>,
    engine: Engine,
    /// Whether a lone request may run on the caller's thread.
    lone: lone::Gate,
    /// Which device this is (not which path named it).
    id: DeviceId,
    /// This process's claim (O_EXCL or flock), when opened exclusively.
    _claim: Option<Claim>,
    /// Bytes this member copied through a bounce buffer.
    bounced: AtomicU64,
}

/// Creates a sparse regular file of `size` bytes at `path` if it is absent.
/// An existing regular file of exactly `size` bytes is accepted as is.
pub fn create_sparse(path: &Path, size: u64) -> Result<(), MemberError> {
    match std::fs::metadata(path) {
        Ok(meta) if !meta.file_type().is_file() => Err(MemberError::NotRegularFile {
            path: path.to_path_buf(),
        }),
        Ok(meta) if meta.len() != size => Err(MemberError::SizeMismatch {
            path: path.to_path_buf(),
            expected: size,
            actual: meta.len(),
        }),
        Ok(_) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            let create = |source| MemberError::Create {
                path: path.to_path_buf(),
                source,
            };
            let file = OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(path)
                .map_err(create)?;
            file.set_len(size).map_err(create)
        }
        Err(source) => Err(MemberError::Open {
            path: path.to_path_buf(),
            source,
        }),
    }
}

/// Opens `path` as a member with the engine chosen by `opts.engine`.
pub fn open_member(path: &Path, opts: &MemberOptions) -> Result<Arc<FileMember>, MemberError> {
    let engine = match opts.engine {
        EngineKind::Sync => Engine::Sync,
        EngineKind::Inline => Engine::Inline(UringEngine::shared().ok()),
        EngineKind::Auto if on_memory_fs(path) => Engine::Inline(UringEngine::shared().ok()),
        EngineKind::Uring => match UringEngine::shared() {
            Ok(ring) => Engine::Uring(ring),
            Err(source) => {
                return Err(MemberError::Uring {
                    path: path.to_path_buf(),
                    source,
                })
            }
        },
        EngineKind::Auto => match UringEngine::shared() {
            Ok(ring) => Engine::Uring(ring),
            Err(e) => {
                tracing::warn!(
                    path = %path.display(),
                    error = %e,
                    "io_uring unavailable, using the pread/pwrite fallback"
                );
                Engine::Sync
            }
        },
    };
    let access = Access {
        direct: opts.direct,
        exclusive: opts.exclusive,
        writable: !opts.read_only,
    };
    FileMember::open(path, access, engine).map(Arc::new)
}

/// Whether `path` is a regular file on a memory filesystem (tmpfs, ramfs):
/// its I/O is a copy the calling thread makes faster than any hand-off to
/// the ring. A device node is not, though `statfs` of one under /dev
/// reports devtmpfs, whose magic is tmpfs's: its I/O waits for a device,
/// which must never hold a runtime thread.
pub(super) fn on_memory_fs(path: &Path) -> bool {
    const RAMFS_MAGIC: libc::c_long = 0x8584_58f6;
    if !std::fs::metadata(path).is_ok_and(|m| m.is_file()) {
        return false;
    }
    let Ok(c) = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()) else {
        return false;
    };
    let mut st = std::mem::MaybeUninit::<libc::statfs>::zeroed();
    // SAFETY: `c` is a NUL-terminated path and `st` room for one statfs.
    if unsafe { libc::statfs(c.as_ptr(), st.as_mut_ptr()) } != 0 {
        return false;
    }
    // SAFETY: statfs succeeded, so it filled `st`.
    let kind = unsafe { st.assume_init() }.f_type;
    kind == libc::TMPFS_MAGIC || kind == RAMFS_MAGIC
}

/// Opens `path` as a member on the given io_uring engine (several members
/// may share one engine).
pub fn open_member_on(
    path: &Path,
    direct: bool,
    engine: Arc<UringEngine>,
) -> Result<Arc<FileMember>, MemberError> {
    let access = Access {
        direct,
        exclusive: true,
        writable: true,
    };
    FileMember::open(path, access, Engine::Uring(engine)).map(Arc::new)
}

/// How [`FileMember::open`] opens the file.
#[derive(Clone, Copy, Debug)]
struct Access {
    direct: bool,
    exclusive: bool,
    writable: bool,
}

/// Opens the member for buffered I/O. O_EXCL on a block device: refuse
/// devices that are mounted or claimed by another exclusive user (md,
/// another vraid). One this process claims already (a member opened again
/// under another node) opens plainly: whether it may join is the array's
/// question.
fn open_buffered(path: &Path, meta: &Metadata, access: Access) -> Result<File, MemberError> {
    let is_block_device = meta.file_type().is_block_device();
    let ours = is_block_device && held_by_this_process(DeviceId::of_metadata(meta));
    let exclusive = if is_block_device && access.exclusive && !ours {
        libc::O_EXCL
    } else {
        0
    };
    OpenOptions::new()
        .read(true)
        .write(access.writable)
        .custom_flags(exclusive)
        .open(path)
        .map_err(|e| match e.raw_os_error() {
            Some(libc::EBUSY) if is_block_device => MemberError::InUse {
                path: path.to_path_buf(),
            },
            _ => MemberError::Open {
                path: path.to_path_buf(),
                source: e,
            },
        })
}

/// Size and logical block size: a block device's from its ioctls, a
/// file's from its length and what O_DIRECT accepts (4096 without it).
fn geometry(
    path: &Path,
    buffered: &File,
    meta: &Metadata,
    direct: Option<&File>,
) -> Result<(u64, u64), MemberError> {
    let geometry_err = |source| MemberError::Geometry {
        path: path.to_path_buf(),
        source,
    };
    if meta.file_type().is_block_device() {
        let size = ioctl_u64(buffered, BLKGETSIZE64).map_err(geometry_err)?;
        let block_size = ioctl_int(buffered, BLKSSZGET).map_err(geometry_err)?;
        Ok((size, u64::from(block_size.max(512))))
    } else {
        let size = meta.len();
        Ok((size, direct.map_or(4096, |d| probe_block_size(d, size))))
    }
}

impl FileMember {
    fn open(path: &Path, access: Access, engine: Engine) -> Result<Self, MemberError> {
        let open_err = |source| MemberError::Open {
            path: path.to_path_buf(),
            source,
        };
        let meta = std::fs::metadata(path).map_err(open_err)?;
        let is_block_device = meta.file_type().is_block_device();
        if !is_block_device && !meta.file_type().is_file() {
            return Err(MemberError::NotFileOrDevice {
                path: path.to_path_buf(),
            });
        }
        let buffered = open_buffered(path, &meta, access)?;
        let id = DeviceId::of_file(&buffered).map_err(open_err)?;
        let claim = if access.exclusive {
            Some(claim(&buffered, id).map_err(|_| MemberError::InUse {
                path: path.to_path_buf(),
            })?)
        } else {
            None
        };
        let direct = if access.direct {
            open_direct(path, access.writable).map_err(open_err)?
        } else {
            None
        };
        let (size, block_size) = geometry(path, &buffered, &meta, direct.as_ref())?;
        if direct.is_some() && !is_block_device {
            drop_cached_pages(&buffered);
        }
        let write_align = block_size.max(page_size());
        tracing::debug!(
            path = %path.display(),
            size,
            block_size,
            direct = direct.is_some(),
            engine = %engine.kind(),
            "member opened"
        );
        Ok(FileMember {
            path: path.to_path_buf(),
            name: path.display().to_string(),
            size,
            is_block_device,
            block_size,
            write_align,
            edges: EdgeLocks::new(),
            widened: AtomicU64::new(0),
            streak: nowait::Streak::default(),
            fs_dev: meta.dev(),
            direct: direct.map(Arc::new),
            lone: lone::Gate::for_member(&buffered, is_block_device),
            buffered: Arc::new(buffered),
            engine,
            id,
            _claim: claim,
            bounced: AtomicU64::new(0),
        })
    }

    /// The device's identity.
    pub fn id(&self) -> DeviceId {
        self.id
    }

    /// The member's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The engine this member actually uses (`Uring` or `Sync`).
    pub fn engine_kind(&self) -> EngineKind {
        self.engine.kind()
    }

    /// Whether I/O bypasses the page cache (O_DIRECT was accepted).
    pub fn is_direct(&self) -> bool {
        self.direct.is_some()
    }

    /// The O_DIRECT-refused decision, for tests.
    #[cfg(test)]
    pub(crate) fn direct_or_buffered_for_test(
        path: &Path,
        opened: io::Result<File>,
    ) -> io::Result<Option<File>> {
        direct_or_buffered(path, opened)
    }

    /// The O_DIRECT descriptor, for tests that inspect its flags.
    #[cfg(test)]
    pub(crate) fn direct_fd(&self) -> Option<std::os::fd::RawFd> {
        self.direct.as_ref().map(|f| f.as_raw_fd())
    }

    /// Logical block size used for O_DIRECT alignment.
    pub fn block_size(&self) -> u64 {
        self.block_size
    }

    /// Bytes this member copied through a bounce buffer (see
    /// [`bounce_bytes`]).
    pub fn bounced_bytes(&self) -> u64 {
        self.bounced.load(Ordering::Relaxed)
    }

    /// Direct writes off the write granule that were widened to whole
    /// blocks because the kernel would have blocked on them (holes).
    pub fn widened_writes(&self) -> u64 {
        self.widened.load(Ordering::Relaxed)
    }

    fn count_bounce(&self, len: usize) {
        self.bounced.fetch_add(len as u64, Ordering::Relaxed);
        BOUNCED.fetch_add(len as u64, Ordering::Relaxed);
    }

    fn io_err(&self, source: io::Error) -> BlockError {
        BlockError::io(self.name.clone(), source)
    }

    /// Reads `out` at `offset` in pieces of at most [`MAX_IO`] bytes.
    async fn read_at(&self, offset: u64, out: &mut [u8]) -> io::Result<()> {
        let mut pos = 0;
        while pos < out.len() {
            let n = piece_len(offset + pos as u64, out.len() - pos);
            self.read_piece(offset + pos as u64, &mut out[pos..pos + n])
                .await?;
            pos += n;
        }
        Ok(())
    }

    /// Writes `data` at `offset` in pieces of at most [`MAX_IO`] bytes.
    async fn write_at(&self, offset: u64, data: &[u8], fua: bool) -> io::Result<()> {
        let mut pos = 0;
        while pos < data.len() {
            let n = piece_len(offset + pos as u64, data.len() - pos);
            self.write_piece(offset + pos as u64, &data[pos..pos + n], fua)
                .await?;
            pos += n;
        }
        Ok(())
    }

    async fn read_piece(&self, offset: u64, out: &mut [u8]) -> io::Result<()> {
        let len = out.len() as u64;
        let a = self.block_size;
        let (start, end) = (offset / a * a, (offset + len).div_ceil(a) * a);
        // A file whose size is not block-aligned: its tail goes through the
        // page cache rather than relying on how the filesystem treats an
        // O_DIRECT read across end-of-file.
        let (file, start, end) = match &self.direct {
            Some(direct) if end <= self.size => (direct, start, end),
            _ => (&self.buffered, offset, offset + len),
        };
        let buf = AlignedBuf::new((end - start) as usize);
        self.count_bounce(out.len());
        let buf = self
            .engine
            .run(&self.lone, file, Op::Read { offset: start, buf })
            .await?
            .ok_or_else(|| io::Error::other("engine returned no read buffer"))?;
        let skip = (offset - start) as usize;
        out.copy_from_slice(&buf.as_slice()[skip..skip + out.len()]);
        Ok(())
    }

    async fn write_via(
        &self,
        file: &Arc<File>,
        offset: u64,
        data: &[u8],
        fua: bool,
    ) -> io::Result<()> {
        if data.is_empty() {
            return Ok(());
        }
        self.bounced_write(file, offset, data, fua, false)
            .await
            .map(drop)
    }

    /// Writes a copy of `data` in an aligned buffer (counted as bounced);
    /// with `nowait`, refused with EAGAIN where the kernel would block.
    async fn bounced_write(
        &self,
        file: &Arc<File>,
        offset: u64,
        data: &[u8],
        fua: bool,
        nowait: bool,
    ) -> OpResult {
        let buf = AlignedBuf::copy_from(data);
        self.count_bounce(data.len());
        let op = Op::Write {
            offset,
            buf,
            fua,
            nowait,
        };
        self.engine.run(&self.lone, file, op).await
    }

    /// True when direct writes not on `write_align` may be *widened*: a
    /// regular file on io_uring, whose filesystem serializes such a write
    /// into a hole or unwritten extent (ext4 drains every direct I/O of the
    /// file and waits). Such writes try `RWF_NOWAIT` first and, when the
    /// kernel says it would block, are written as whole blocks instead.
    fn widens(&self) -> bool {
        !self.is_block_device
            && matches!(self.engine, Engine::Uring(_))
            && !nowait::unsupported(self.fs_dev)
    }

    /// The edge blocks of `[offset, end)` held shared, on a member that
    /// widens (a write or punch that changes bytes of blocks it shares).
    async fn edge_guard(&self, offset: u64, end: u64) -> Option<super::edge_lock::Shared<'_>> {
        if !self.widens() {
            return None;
        }
        Some(self.edges.shared(offset, end, self.write_align).await)
    }

    /// A direct write of whole logical blocks that is not on
    /// `write_align` (docs/FORMAT.md §8 "Writes into holes"): as it is if
    /// the kernel takes it without blocking, else widened.
    async fn write_unaligned_direct(
        &self,
        direct: &Arc<File>,
        offset: u64,
        data: &[u8],
        fua: bool,
    ) -> io::Result<()> {
        let (a, end) = (self.write_align, offset + data.len() as u64);
        if self.streak.should_try() {
            let _edges = self.edges.shared(offset, end, a).await;
            nowait::count_try();
            match self.bounced_write(direct, offset, data, fua, true).await {
                Err(e) if e.raw_os_error() == Some(libc::EAGAIN) => {
                    nowait::count_would_block();
                    self.streak.refused();
                }
                // A filesystem without RWF_NOWAIT: written as it is, and
                // never tried again on it.
                Err(e) if e.raw_os_error() == Some(libc::EOPNOTSUPP) => {
                    nowait::refused_unsupported(self.fs_dev);
                    return self.write_via(direct, offset, data, fua).await;
                }
                done => {
                    self.streak.taken();
                    return done.map(drop);
                }
            }
        }
        let _edges = self.edges.exclusive(offset, end, a).await;
        self.widened.fetch_add(1, Ordering::Relaxed);
        nowait::count_widened();
        self.write_widened(direct, offset, data, fua).await
    }

    /// Writes `data` at `offset` as the whole `write_align` blocks around
    /// it: the bytes of its edge blocks outside it are read first and
    /// written back unchanged (the caller holds those blocks exclusive).
    /// An aligned direct write into a hole only allocates; it does not
    /// drain the file's other I/O.
    async fn write_widened(
        &self,
        direct: &Arc<File>,
        offset: u64,
        data: &[u8],
        fua: bool,
    ) -> io::Result<()> {
        let a = self.write_align;
        let end = offset + data.len() as u64;
        let (start, stop) = (offset / a * a, end.div_ceil(a) * a);
        if stop > self.size {
            // The file's unaligned tail: written as it is.
            return self.write_via(direct, offset, data, fua).await;
        }
        let mut wide = AlignedBuf::new((stop - start) as usize);
        let head = (offset - start) as usize;
        // One read when the edges are the whole span or adjacent, else the
        // partial edge blocks.
        let spans = if stop - start <= 2 * a {
            [Some((start, stop)), None]
        } else {
            [
                (start < offset).then_some((start, start + a)),
                (end < stop).then_some((stop - a, stop)),
            ]
        };
        for (from, to) in spans.into_iter().flatten() {
            let read = Op::Read {
                offset: from,
                buf: AlignedBuf::new((to - from) as usize),
            };
            nowait::count_edge_read();
            let got = self.engine.run(&self.lone, direct, read).await?;
            let got = got.ok_or_else(|| io::Error::other("engine returned no read buffer"))?;
            let at = (from - start) as usize;
            wide.as_mut_slice()[at..at + got.len()].copy_from_slice(got.as_slice());
        }
        wide.as_mut_slice()[head..head + data.len()].copy_from_slice(data);
        self.count_bounce(wide.len());
        let op = Op::Write {
            offset: start,
            buf: wide,
            fua,
            nowait: false,
        };
        self.engine.run(&self.lone, direct, op).await.map(drop)
    }

    async fn write_piece(&self, offset: u64, data: &[u8], fua: bool) -> io::Result<()> {
        let Some(direct) = &self.direct else {
            return self.write_via(&self.buffered, offset, data, fua).await;
        };
        let b = self.block_size;
        if b < self.write_align && offset.is_multiple_of(b) && (data.len() as u64).is_multiple_of(b)
        {
            // Whole logical blocks (an inline-checksum member's 4608-byte
            // units): straight to O_DIRECT, which takes them. Only a write
            // that is not block-aligned goes through the page cache.
            let on_granule = offset.is_multiple_of(self.write_align)
                && (data.len() as u64).is_multiple_of(self.write_align);
            if self.widens() && !on_granule {
                return self.write_unaligned_direct(direct, offset, data, fua).await;
            }
            return self.write_via(direct, offset, data, fua).await;
        }
        let a = self.write_align;
        let end = offset + data.len() as u64;
        let mid_start = offset.div_ceil(a) * a;
        let mid_end = end / a * a;
        if mid_start >= mid_end {
            let _edges = self.edge_guard(offset, end).await;
            return self.write_via(&self.buffered, offset, data, fua).await;
        }
        let head = (mid_start - offset) as usize;
        let mid = (mid_end - mid_start) as usize;
        let (head_data, rest) = data.split_at(head);
        let (mid_data, tail_data) = rest.split_at(mid);
        let _edges = self.edge_guard(offset, end).await;
        let (h, m, t) = futures::join!(
            self.write_via(&self.buffered, offset, head_data, fua),
            self.write_via(direct, mid_start, mid_data, fua),
            self.write_via(&self.buffered, mid_end, tail_data, fua),
        );
        h.and(m).and(t)
    }

    /// The descriptor that can take a vectored transfer of `segs` at
    /// `offset` straight, if any: the O_DIRECT one when the offset and
    /// every segment are block-aligned, or the buffered one when O_DIRECT
    /// was refused (io_uring or the inline engine).
    fn zero_copy<'s>(
        &self,
        offset: u64,
        segs: impl IntoIterator<Item = &'s [u8]>,
    ) -> Option<&Arc<File>> {
        if !self.engine.vectored() {
            return None;
        }
        match &self.direct {
            None => Some(&self.buffered),
            Some(direct) => {
                let b = self.block_size;
                (offset.is_multiple_of(b) && crate::iovec::is_aligned(segs, b)).then_some(direct)
            }
        }
    }

    /// Reads into `bufs` at `offset` (in range, not empty).
    async fn read_segments(&self, offset: u64, bufs: &mut [IoSliceMut<'_>]) -> io::Result<()> {
        if let Some(file) = self.zero_copy(offset, bufs.iter().map(|b| &**b)) {
            let iov = IoVecs::new(bufs.iter_mut().map(|b| (b.as_mut_ptr(), b.len())));
            let op = Op::ReadV { offset, iov };
            return self.engine.run(&self.lone, file, op).await.map(drop);
        }
        if let [one] = bufs {
            return self.read_at(offset, one).await;
        }
        let mut buf = AlignedBuf::new(crate::iovec::len_mut(bufs));
        self.read_at(offset, buf.as_mut_slice()).await?;
        crate::iovec::scatter(buf.as_slice(), bufs);
        Ok(())
    }

    /// Writes `bufs` at `offset` (in range, not empty).
    async fn write_segments(&self, offset: u64, bufs: &[IoSlice<'_>], fua: bool) -> io::Result<()> {
        let a = self.write_align;
        let len = crate::iovec::len(bufs) as u64;
        let on_granule = offset.is_multiple_of(a) && len.is_multiple_of(a);
        // Off the granule on a member that widens: through `write_piece`.
        let straight = on_granule || !self.widens() || self.direct.is_none();
        if let Some(file) = straight
            .then(|| self.zero_copy(offset, bufs.iter().map(|b| &**b)))
            .flatten()
        {
            let iov = IoVecs::new(bufs.iter().map(|b| (b.as_ptr().cast_mut(), b.len())));
            let op = Op::WriteV { offset, iov, fua };
            return self.engine.run(&self.lone, file, op).await.map(drop);
        }
        if let [one] = bufs {
            return self.write_at(offset, one, fua).await;
        }
        let mut buf = AlignedBuf::new(crate::iovec::len(bufs));
        crate::iovec::gather(bufs, buf.as_mut_slice());
        self.write_at(offset, buf.as_slice(), fua).await
    }

    async fn read_checked(&self, offset: ByteOffset, bufs: &mut [IoSliceMut<'_>]) -> BlockResult {
        let len = crate::iovec::len_mut(bufs) as u64;
        check_range(offset, len, self.size)?;
        if len == 0 {
            return Ok(());
        }
        self.read_segments(offset.get(), bufs)
            .await
            .map_err(|e| self.io_err(e))
    }

    async fn write_checked(
        &self,
        at: ByteOffset,
        bufs: &[IoSlice<'_>],
        d: Durability,
    ) -> BlockResult {
        let len = crate::iovec::len(bufs) as u64;
        check_range(at, len, self.size)?;
        if len == 0 {
            return Ok(());
        }
        self.write_segments(at.get(), bufs, d == Durability::Fua)
            .await
            .map_err(|e| self.io_err(e))
    }

    async fn write_zero_bytes(&self, mut offset: u64, len: u64) -> io::Result<()> {
        let end = offset + len;
        while offset < end {
            let n = (end - offset).min(ZERO_CHUNK as u64);
            self.write_at(offset, &ZEROES[..n as usize], false).await?;
            offset += n;
        }
        Ok(())
    }

    /// Zeroes `[offset, offset + len)` with `fallocate(mode)`, or by writing
    /// zeroes where the mode is unsupported. Block devices only take
    /// block-aligned ranges, so their unaligned edges are written.
    async fn zero_range(&self, offset: u64, len: u64, mode: i32) -> io::Result<()> {
        if len == 0 {
            return Ok(());
        }
        let end = offset + len;
        let (mid_start, mid_end) = if self.is_block_device {
            let a = self.block_size;
            (offset.div_ceil(a) * a, end / a * a)
        } else {
            (offset, end)
        };
        if mid_start >= mid_end {
            return self.write_zero_bytes(offset, len).await;
        }
        self.write_zero_bytes(offset, mid_start - offset).await?;
        self.write_zero_bytes(mid_end, end - mid_end).await?;
        let op = Op::Fallocate {
            offset: mid_start,
            len: mid_end - mid_start,
            mode,
        };
        let done = {
            // Its partial edge blocks change too: not under a widening.
            let _edges = self.edge_guard(mid_start, mid_end).await;
            self.engine.run(&self.lone, &self.buffered, op).await
        };
        match done {
            Ok(_) => Ok(()),
            Err(e) if e.raw_os_error() == Some(libc::EOPNOTSUPP) => {
                tracing::debug!(path = %self.name, mode, "fallocate unsupported, writing zeroes");
                self.write_zero_bytes(mid_start, mid_end - mid_start).await
            }
            Err(e) => Err(e),
        }
    }
}

impl BlockDevice for FileMember {
    fn name(&self) -> &str {
        &self.name
    }

    fn size(&self) -> u64 {
        self.size
    }

    fn device_id(&self) -> Option<DeviceId> {
        Some(self.id)
    }

    /// Aligned lists go to the engine as they are up to the length that
    /// keeps them on its path: the inline engine's [`INLINE_MAX`] (longer
    /// transfers go to the ring), else [`MAX_IO`]; the blocking pool
    /// copies every list (0).
    fn merge_limit(&self) -> u64 {
        match &self.engine {
            Engine::Sync => 0,
            Engine::Inline(_) => INLINE_MAX as u64,
            Engine::Uring(_) => MAX_IO,
        }
    }

    fn read<'a>(&'a self, offset: ByteOffset, buf: &'a mut [u8]) -> IoFuture<'a> {
        crate::block::BoxFuture::new(async move {
            let mut one = [IoSliceMut::new(buf)];
            self.read_checked(offset, &mut one).await
        })
    }

    fn write<'a>(&'a self, at: ByteOffset, buf: &'a [u8], durability: Durability) -> IoFuture<'a> {
        crate::block::BoxFuture::new(async move {
            let one = [IoSlice::new(buf)];
            self.write_checked(at, &one, durability).await
        })
    }

    fn read_vectored<'a>(
        &'a self,
        offset: ByteOffset,
        bufs: &'a mut [IoSliceMut<'_>],
    ) -> IoFuture<'a> {
        crate::block::BoxFuture::new(self.read_checked(offset, bufs))
    }

    fn write_vectored<'a>(
        &'a self,
        at: ByteOffset,
        bufs: &'a [IoSlice<'a>],
        durability: Durability,
    ) -> IoFuture<'a> {
        crate::block::BoxFuture::new(self.write_checked(at, bufs, durability))
    }

    fn flush(&self) -> IoFuture<'_> {
        crate::block::BoxFuture::new(async move {
            self.engine
                .run(&self.lone, &self.buffered, Op::Flush)
                .await
                .map(drop)
                .map_err(|e| self.io_err(e))
        })
    }

    fn reserve(&self, offset: ByteOffset, len: u64) -> IoFuture<'_> {
        crate::block::BoxFuture::new(async move {
            check_range(offset, len, self.size)?;
            if self.is_block_device || len == 0 {
                return Ok(());
            }
            let op = Op::Fallocate {
                offset: offset.get(),
                len,
                mode: libc::FALLOC_FL_KEEP_SIZE,
            };
            match self.engine.run(&self.lone, &self.buffered, op).await {
                Ok(_) => Ok(()),
                // Filesystems without fallocate: nothing can be reserved.
                Err(e) if e.raw_os_error() == Some(libc::EOPNOTSUPP) => Ok(()),
                Err(e) => Err(self.io_err(e)),
            }
        })
    }

    fn discard(&self, offset: ByteOffset, len: u64) -> IoFuture<'_> {
        crate::block::BoxFuture::new(async move {
            check_range(offset, len, self.size)?;
            let mode = libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE;
            self.zero_range(offset.get(), len, mode)
                .await
                .map_err(|e| self.io_err(e))
        })
    }

    /// Holes of a regular file from `SEEK_DATA`/`SEEK_HOLE` (reads there
    /// return zeroes); a block device, or a filesystem that cannot say,
    /// answers all data.
    fn allocation(
        &self,
        offset: ByteOffset,
        len: u64,
    ) -> crate::block::BoxFuture<'_, BlockResult<crate::block::AllocationMap>> {
        let map = check_range(offset, len, self.size).map(|()| {
            if self.is_block_device {
                return vec![data_extent(len)];
            }
            seek_extents(self.buffered.as_raw_fd(), offset.get(), len)
                .unwrap_or_else(|_| vec![data_extent(len)])
        });
        crate::block::BoxFuture::new(std::future::ready(map))
    }

    fn write_zeroes(&self, offset: ByteOffset, len: u64, may_unmap: bool) -> IoFuture<'_> {
        crate::block::BoxFuture::new(async move {
            check_range(offset, len, self.size)?;
            let mode = if may_unmap {
                libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE
            } else {
                libc::FALLOC_FL_ZERO_RANGE | libc::FALLOC_FL_KEEP_SIZE
            };
            self.zero_range(offset.get(), len, mode)
                .await
                .map_err(|e| self.io_err(e))
        })
    }
}

fn data_extent(len: u64) -> crate::block::AllocationExtent {
    crate::block::AllocationExtent {
        len,
        state: crate::block::Allocation::DATA,
    }
}

/// `lseek` with `whence` from `at`: `None` when there is nothing of that
/// kind up to the end of the file (`ENXIO`).
fn seek(fd: i32, at: u64, whence: i32) -> io::Result<Option<u64>> {
    let at = libc::off_t::try_from(at).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    // SAFETY: lseek on a descriptor this member owns; no memory is passed.
    let r = unsafe { libc::lseek(fd, at, whence) };
    if r >= 0 {
        return Ok(Some(r as u64));
    }
    let e = io::Error::last_os_error();
    match e.raw_os_error() {
        Some(libc::ENXIO) => Ok(None),
        _ => Err(e),
    }
}

/// Most extents one [`seek_extents`] answer gives.
const MAX_EXTENTS: usize = 4;

/// Holes and data of `offset..offset + len` of the file `fd`, in order.
/// `lseek` moves the descriptor's offset, which no I/O of this member uses
/// (every transfer is positioned).
fn seek_extents(fd: i32, offset: u64, len: u64) -> io::Result<crate::block::AllocationMap> {
    use crate::block::{push_extent, Allocation};
    let end = offset + len;
    let mut map = Vec::new();
    let mut pos = offset;
    // A short answer is fine (the asker asks again from its end): a few
    // extents, not every one of a fragmented file.
    while pos < end && map.len() < MAX_EXTENTS {
        let data = seek(fd, pos, libc::SEEK_DATA)?.unwrap_or(end).min(end);
        push_extent(&mut map, data - pos, Allocation::HOLE_ZERO);
        if data >= end {
            break;
        }
        let hole = seek(fd, data, libc::SEEK_HOLE)?.unwrap_or(end).min(end);
        push_extent(&mut map, hole - data, Allocation::DATA);
        pos = hole.max(data + 1);
    }
    Ok(map)
}

/// Bytes from `offset` up to the next multiple of [`MAX_IO`], at most `left`.
/// Drops the clean page-cache pages of a member file opened for direct
/// I/O (written through the page cache before: a `dd` or `cp` of it). The
/// kernel refuses an `RWF_NOWAIT` direct write over any cached page of its
/// range (it would have to invalidate it), so each such write was widened
/// (docs/FORMAT.md §8 "Writes into holes") although its blocks are written;
/// direct writes invalidate their range anyway. Advice only: a failure
/// changes nothing but speed.
fn drop_cached_pages(file: &File) {
    // SAFETY: a valid descriptor; the advice reads no memory of ours.
    let rc = unsafe { libc::posix_fadvise(file.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
    if rc != 0 {
        tracing::debug!(error = %io::Error::from_raw_os_error(rc), "fadvise(DONTNEED) failed");
    }
}

fn piece_len(offset: u64, left: usize) -> usize {
    let boundary = (offset / MAX_IO + 1) * MAX_IO;
    ((boundary - offset) as usize).min(left)
}

/// Opens `path` with O_DIRECT; `None` (with a warning) if the filesystem
/// refuses O_DIRECT.
fn open_direct(path: &Path, writable: bool) -> io::Result<Option<File>> {
    let opened = OpenOptions::new()
        .read(true)
        .write(writable)
        .custom_flags(libc::O_DIRECT)
        .open(path);
    direct_or_buffered(path, opened)
}

/// EINVAL from an O_DIRECT open means "filesystem refuses O_DIRECT" (ramfs,
/// some FUSE filesystems): fall back to buffered I/O. Other errors stand.
fn direct_or_buffered(path: &Path, opened: io::Result<File>) -> io::Result<Option<File>> {
    match opened {
        Ok(file) => Ok(Some(file)),
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
            tracing::warn!(
                path = %path.display(),
                "filesystem refuses O_DIRECT, using buffered I/O (flushes still fdatasync)"
            );
            Ok(None)
        }
        Err(e) => Err(e),
    }
}

/// O_DIRECT granule of a regular file: 512 if a 512-byte direct read works,
/// else 4096 (also for files too short to probe).
fn probe_block_size(direct: &File, size: u64) -> u64 {
    if size < 4096 {
        return 4096;
    }
    let probe = Op::Read {
        offset: 0,
        buf: AlignedBuf::new(512),
    };
    match sync::run_blocking(direct, probe) {
        Ok(_) => 512,
        Err(_) => 4096,
    }
}

fn page_size() -> u64 {
    // SAFETY: sysconf has no memory-safety preconditions.
    let n = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    u64::try_from(n).ok().filter(|&n| n > 0).unwrap_or(4096)
}

fn ioctl_u64(file: &File, request: libc::c_ulong) -> io::Result<u64> {
    let mut value: u64 = 0;
    // SAFETY: `request` is BLKGETSIZE64, which writes one u64 to the
    // pointer; `value` is a live local of that type.
    let rc = unsafe { libc::ioctl(file.as_raw_fd(), request as _, &mut value as *mut u64) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(value)
}

fn ioctl_int(file: &File, request: libc::c_ulong) -> io::Result<u32> {
    let mut value: libc::c_int = 0;
    // SAFETY: `request` is BLKSSZGET, which writes one c_int to the pointer;
    // `value` is a live local of that type.
    let rc = unsafe {
        libc::ioctl(
            file.as_raw_fd(),
            request as _,
            &mut value as *mut libc::c_int,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    u32::try_from(value).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))
}
