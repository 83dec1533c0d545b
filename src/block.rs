//! The one block-device trait every layer speaks, and its error type.
//!
//! Members (`member::*`), byte windows onto members ([`Window`]) and RAID
//! volumes (`raid::Volume`) all implement [`BlockDevice`], so levels compose.
//! Exports translate their wire format into calls on this trait and map
//! [`BlockError`] back to a wire status with [`BlockError::errno`].
//!
//! Buffers are borrowed for the duration of the call. Dropping a future
//! mid-flight must always be memory-safe: an implementation that hands a
//! caller's memory to the kernel asynchronously (io_uring) makes the
//! future's drop wait until the kernel is done with it (`member::uring`),
//! or copies into memory it owns.
//!
//! ## Vectored I/O (zero copy)
//!
//! [`BlockDevice::read_vectored`] and [`BlockDevice::write_vectored`] take
//! a scatter-gather list ([`IoSliceMut`] / [`IoSlice`], ABI-compatible with
//! `struct iovec`; helpers in [`crate::iovec`]): the guest memory regions
//! of a vhost-user request, an NBD request or reply buffer. The layers
//! pass sub-lists down without copying (a striped level cuts the list by
//! extent: [`crate::iovec::split_mut`]) and a file member reads or writes
//! straight into the segments with `READV`/`WRITEV` when every segment's
//! address and length and the offset are multiples of its logical block
//! size (what O_DIRECT asks); otherwise it bounces through an aligned
//! buffer and counts the bytes (`vraid_member_bounce_bytes_total`).
//!
//! The contiguous `read`/`write` stay the methods every device implements
//! (the levels' own buffers are contiguous); the vectored methods are
//! provided: a read list of one segment goes to `read` as it is, anything
//! else through a copy. Devices on the data path (members, windows,
//! wrappers, the checksum layer, volumes) override them so that the list
//! reaches the member.
//!
//! Stability: the bytes of a `write` buffer do not change during the call.
//! Those of a `write_vectored` list may (guest memory: a guest kernel
//! rewrites a page under writeback unless the device asks for stable
//! pages, and virtio-blk does not). A device that derives something from
//! the bytes it writes (parity, checksums) copies them first (the default,
//! RAID-5) or checks them again after the write (the checksum layer reads
//! back and seals the blocks that changed). RAID-1 mirrors may then differ
//! in such a block, as md's do, until the guest writes it again.
//! It is not always consistent: a RAID-5 write dropped between its data and
//! parity writes leaves the stripe wrong with no crash to resync it, so
//! exports never drop a write in flight (`export::finish::FinishOnDrop`,
//! NBD requests detached rather than aborted).

use std::io::{self, IoSlice, IoSliceMut};
use std::sync::Arc;

use crate::units::ByteOffset;

/// A type-erased, sendable future (the trait must be object-safe), kept in
/// the thread's future pool rather than a fresh heap box
/// ([`crate::future_pool`]): make one with `BoxFuture::new(fut)`.
pub type BoxFuture<'a, T> = crate::future_pool::PoolBox<'a, T>;

/// Result of a block operation.
pub type BlockResult<T = ()> = Result<T, BlockError>;

/// The future of a block operation.
pub type IoFuture<'a> = BoxFuture<'a, BlockResult>;

/// Whether a write must be on stable storage before it completes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Durability {
    /// Completes when the data is written (may sit in a volatile cache).
    Normal,
    /// Force unit access: completes only once the data is on stable storage.
    Fua,
}

/// Errors of block operations.
#[derive(Debug, thiserror::Error)]
pub enum BlockError {
    /// The backing storage failed.
    #[error("I/O error on {device}")]
    Io {
        /// Device name (member path or volume name).
        device: String,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// The request reaches past the end of the device.
    #[error("request at {offset} of {len} bytes is outside the device of {size} bytes")]
    OutOfRange {
        /// Requested offset.
        offset: u64,
        /// Requested length.
        len: u64,
        /// Device size.
        size: u64,
    },
    /// Too many members are gone to serve this request.
    #[error("data unavailable: too many members of {volume} have failed")]
    DataLost {
        /// Volume name.
        volume: String,
    },
    /// Data read back does not match its stored checksum (silent
    /// corruption): a read error of that member for the RAID layer, which
    /// reconstructs the bytes from redundancy and rewrites them.
    #[error("checksum mismatch on {device}: {blocks} block(s) at {offset}")]
    Corrupt {
        /// Device name (member path).
        device: String,
        /// Offset (of the device) of the first bad 4 KiB block.
        offset: u64,
        /// Bad 4 KiB blocks in the request.
        blocks: u64,
    },
    /// The device is read-only.
    #[error("device is read-only")]
    ReadOnly,
    /// The operation is not supported by this device.
    #[error("operation not supported")]
    Unsupported,
}

impl BlockError {
    /// Convenience constructor for [`BlockError::Io`].
    pub fn io(device: impl Into<String>, source: io::Error) -> Self {
        BlockError::Io {
            device: device.into(),
            source,
        }
    }

    /// True when the storage under the device ran out of space (ENOSPC,
    /// EDQUOT): the device is fine, the request cannot be done now.
    pub fn is_no_space(&self) -> bool {
        matches!(self, BlockError::Io { source, .. }
            if matches!(source.raw_os_error(), Some(libc::ENOSPC | libc::EDQUOT)))
    }

    /// The POSIX errno that best describes this error, for wire protocols.
    pub fn errno(&self) -> i32 {
        match self {
            BlockError::Io { source, .. } => match source.raw_os_error() {
                Some(e @ (libc::ENOSPC | libc::EDQUOT)) => e,
                _ => libc::EIO,
            },
            BlockError::OutOfRange { .. } => libc::EINVAL,
            BlockError::DataLost { .. } => libc::EIO,
            BlockError::Corrupt { .. } => libc::EIO,
            BlockError::ReadOnly => libc::EPERM,
            BlockError::Unsupported => libc::EOPNOTSUPP,
        }
    }
}

/// What a byte range of a device holds, as far as the device knows
/// (NBD's `base:allocation`, `SEEK_HOLE`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Allocation {
    /// Not backed by storage (never written, or given back): a write
    /// there may need space.
    pub hole: bool,
    /// Guaranteed to read as zeroes.
    pub zero: bool,
}

impl Allocation {
    /// Allocated, contents unknown: what a device that knows nothing says.
    pub const DATA: Allocation = Allocation {
        hole: false,
        zero: false,
    };
    /// Never written and reads as zeroes.
    pub const HOLE_ZERO: Allocation = Allocation {
        hole: true,
        zero: true,
    };
}

/// `len` bytes with one [`Allocation`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AllocationExtent {
    /// Bytes (> 0).
    pub len: u64,
    /// What they hold.
    pub state: Allocation,
}

/// The answer to [`BlockDevice::allocation`]: extents in order from the
/// asked offset, covering at least one byte and at most the asked range.
pub type AllocationMap = Vec<AllocationExtent>;

/// Appends `len` bytes of `state` to `map`, merged with the last extent
/// when it has the same state.
pub fn push_extent(map: &mut AllocationMap, len: u64, state: Allocation) {
    if len == 0 {
        return;
    }
    match map.last_mut() {
        Some(last) if last.state == state => last.len += len,
        _ => map.push(AllocationExtent { len, state }),
    }
}

/// Checks `offset + len <= size` without overflow.
pub fn check_range(offset: ByteOffset, len: u64, size: u64) -> BlockResult {
    match offset.get().checked_add(len) {
        Some(end) if end <= size => Ok(()),
        _ => Err(BlockError::OutOfRange {
            offset: offset.get(),
            len,
            size,
        }),
    }
}

/// What [`BlockDevice::hold`] returns: the hold ends when it drops. The
/// guard lives in a pooled box (a future that is never polled and owns
/// it: [`hold_guard`]), so a hold allocates nothing in steady state.
pub type Hold = Option<BoxFuture<'static, ()>>;

/// A [`Hold`] owning `guard` until dropped.
pub fn hold_guard<G: Send + 'static>(guard: G) -> Hold {
    Some(BoxFuture::new(async move {
        let _guard = guard;
    }))
}

/// An asynchronous block device.
///
/// After `discard` or `write_zeroes` the range reads back as zeroes; RAID
/// parity relies on this.
pub trait BlockDevice: Send + Sync {
    /// Human-readable name for logs and errors (path or volume name).
    fn name(&self) -> &str;

    /// Usable size in bytes.
    fn size(&self) -> u64;

    /// Which file or block device this is, by identity (device and inode,
    /// or the block device's number); `None` for devices that are not one
    /// (memory, windows, volumes).
    fn device_id(&self) -> Option<crate::member::DeviceId> {
        None
    }

    /// Most bytes of one vectored transfer of the caller's memory that
    /// this device takes down the same path as a shorter one (in place, on
    /// the same engine): RAID-0 merges a member's consecutive chunks into
    /// one transfer up to it. 0 (the default): keep transfers as they come.
    fn merge_limit(&self) -> u64 {
        0
    }

    /// Reads `buf.len()` bytes at `offset`.
    fn read<'a>(&'a self, offset: ByteOffset, buf: &'a mut [u8]) -> IoFuture<'a>;

    /// Writes `buf` at `offset`.
    fn write<'a>(
        &'a self,
        offset: ByteOffset,
        buf: &'a [u8],
        durability: Durability,
    ) -> IoFuture<'a>;

    /// Reads into the segments of `bufs`, in order, from `offset`.
    /// Default: one segment goes to [`BlockDevice::read`]; more through a
    /// contiguous copy.
    fn read_vectored<'a>(
        &'a self,
        offset: ByteOffset,
        bufs: &'a mut [IoSliceMut<'_>],
    ) -> IoFuture<'a> {
        read_through_copy(self, offset, bufs)
    }

    /// Writes the segments of `bufs`, in order, at `offset`; their bytes
    /// may change during the call (see "Stability" above). Default: through
    /// a contiguous copy to [`BlockDevice::write`].
    fn write_vectored<'a>(
        &'a self,
        offset: ByteOffset,
        bufs: &'a [IoSlice<'a>],
        durability: Durability,
    ) -> IoFuture<'a> {
        write_through_copy(self, offset, bufs, durability)
    }

    /// Makes every completed write durable.
    fn flush(&self) -> IoFuture<'_>;

    /// Records that the 4 KiB blocks holding `offset..offset + len` lost
    /// their data (a rebuild had no good source for them): they are zeroed
    /// and every later read of them fails, until they are written again.
    /// Only devices that keep per-block checksums can do this; the others
    /// answer `Unsupported`.
    fn mark_lost(&self, offset: ByteOffset, len: u64) -> IoFuture<'_> {
        let _ = (offset, len);
        BoxFuture::new(async { Err(BlockError::Unsupported) })
    }

    /// Reserves storage for `offset..offset + len` without changing its
    /// contents (`fallocate` mode 0), so later writes there cannot run out
    /// of space. Devices with nothing to reserve (block devices, memory)
    /// succeed without doing anything.
    fn reserve(&self, offset: ByteOffset, len: u64) -> IoFuture<'_> {
        let _ = (offset, len);
        BoxFuture::new(async { Ok(()) })
    }

    /// Keeps what this device caches about `offset..offset + len` (the
    /// checksum pages of those blocks) in memory until the returned guard
    /// drops: a read-modify-write holds it from its reads to its writes,
    /// so the pages its reads loaded are still there for its update
    /// (docs/FORMAT.md §8 "Page cache"). Default: nothing to keep.
    fn hold(&self, offset: ByteOffset, len: u64) -> Hold {
        let _ = (offset, len);
        None
    }

    /// Deallocates a range; it reads back as zeroes afterwards.
    fn discard(&self, offset: ByteOffset, len: u64) -> IoFuture<'_>;

    /// Zeroes a range. With `may_unmap` the device may deallocate it.
    fn write_zeroes(&self, offset: ByteOffset, len: u64, may_unmap: bool) -> IoFuture<'_>;

    /// How `offset..offset + len` (`len > 0`, inside the device) is
    /// allocated: extents from `offset`, at least one byte, at most `len`
    /// (a shorter answer is fine; the asker asks again from its end).
    /// `zero` only where reads are guaranteed to return zeroes. Default:
    /// all data, contents unknown. Wrappers that change what reads return
    /// or hold writes of their own override it.
    fn allocation(
        &self,
        offset: ByteOffset,
        len: u64,
    ) -> BoxFuture<'_, BlockResult<AllocationMap>> {
        let _ = offset;
        BoxFuture::new(std::future::ready(Ok(vec![AllocationExtent {
            len,
            state: Allocation::DATA,
        }])))
    }

    /// Waits until the device's rate limits (per-volume QoS) let a
    /// request of `bytes` in `dir` start, and charges it. A caller that
    /// holds a shared resource while the request runs (the NBD server's
    /// device budget) waits here first, then makes the request under
    /// [`crate::qos::prepaid`] so it is not charged twice, holding the
    /// [`crate::qos::Admission`] until the request has ended (its place
    /// under the volume's in-flight cap). `None`: nothing to wait for (the
    /// default; no allocation on the request path).
    fn admit(
        &self,
        dir: crate::qos::Direction,
        bytes: u64,
    ) -> Option<BoxFuture<'_, crate::qos::Admission<'_>>> {
        let _ = (dir, bytes);
        None
    }

    /// The array stopped using this device (its member failed, or a
    /// rebuild into it was abandoned): state it caches about the device
    /// (checksum pages) is never written to it again, so an old copy
    /// cannot land over what a later member on the same device wrote
    /// (docs/FORMAT.md §8 crash case 87). Default: nothing cached.
    fn retire(&self) {}

    /// The power gate of a member device (`member::power_gate`): every
    /// member an array opens is one, so that a member `volatile` rule
    /// covers its metadata writes too. `None` for every other device.
    fn power_gate(&self) -> Option<&crate::member::power_gate::PowerGate> {
        None
    }
}

/// [`BlockDevice::read_vectored`] on the device's contiguous `read`: a
/// one-segment list as it is, a longer one through a copy.
pub fn read_through_copy<'a, D: BlockDevice + ?Sized>(
    dev: &'a D,
    offset: ByteOffset,
    bufs: &'a mut [IoSliceMut<'_>],
) -> IoFuture<'a> {
    if let [one] = bufs {
        return dev.read(offset, one);
    }
    BoxFuture::new(async move {
        let mut data = vec![0u8; crate::iovec::len_mut(bufs)];
        dev.read(offset, &mut data).await?;
        crate::iovec::scatter(&data, bufs);
        Ok(())
    })
}

/// [`BlockDevice::write_vectored`] on the device's contiguous `write`,
/// through a copy (which is also a stable image of bytes that may change
/// meanwhile).
pub fn write_through_copy<'a, D: BlockDevice + ?Sized>(
    dev: &'a D,
    offset: ByteOffset,
    bufs: &'a [IoSlice<'a>],
    durability: Durability,
) -> IoFuture<'a> {
    BoxFuture::new(async move {
        let mut data = vec![0u8; crate::iovec::len(bufs)];
        crate::iovec::gather(bufs, &mut data);
        dev.write(offset, &data, durability).await
    })
}

/// Implements the named [`BlockDevice`] methods by handing each call
/// unchanged to the device in field `$inner` (any `BlockDevice`, boxed or
/// not), for wrappers that change only some of them:
///
/// ```ignore
/// impl BlockDevice for Wrapper {
///     forward_to!(inner => name, size, flush, discard, write_zeroes);
///     fn read<'a>(/* the one method this wrapper changes */) { .. }
///     ..
/// }
/// ```
macro_rules! forward_to {
    ($inner:tt => $($method:ident),+ $(,)?) => {
        $( $crate::block::forward_to!(@one $inner $method); )+
    };
    (@one $i:tt name) => {
        fn name(&self) -> &str {
            self.$i.name()
        }
    };
    (@one $i:tt size) => {
        fn size(&self) -> u64 {
            self.$i.size()
        }
    };
    (@one $i:tt device_id) => {
        fn device_id(&self) -> Option<$crate::member::DeviceId> {
            self.$i.device_id()
        }
    };
    (@one $i:tt merge_limit) => {
        fn merge_limit(&self) -> u64 {
            self.$i.merge_limit()
        }
    };
    (@one $i:tt read) => {
        fn read<'a>(
            &'a self,
            offset: $crate::units::ByteOffset,
            buf: &'a mut [u8],
        ) -> $crate::block::IoFuture<'a> {
            self.$i.read(offset, buf)
        }
    };
    (@one $i:tt write) => {
        fn write<'a>(
            &'a self,
            offset: $crate::units::ByteOffset,
            buf: &'a [u8],
            durability: $crate::block::Durability,
        ) -> $crate::block::IoFuture<'a> {
            self.$i.write(offset, buf, durability)
        }
    };
    (@one $i:tt read_vectored) => {
        fn read_vectored<'a>(
            &'a self,
            offset: $crate::units::ByteOffset,
            bufs: &'a mut [std::io::IoSliceMut<'_>],
        ) -> $crate::block::IoFuture<'a> {
            self.$i.read_vectored(offset, bufs)
        }
    };
    (@one $i:tt write_vectored) => {
        fn write_vectored<'a>(
            &'a self,
            offset: $crate::units::ByteOffset,
            bufs: &'a [std::io::IoSlice<'a>],
            durability: $crate::block::Durability,
        ) -> $crate::block::IoFuture<'a> {
            self.$i.write_vectored(offset, bufs, durability)
        }
    };
    (@one $i:tt flush) => {
        fn flush(&self) -> $crate::block::IoFuture<'_> {
            self.$i.flush()
        }
    };
    (@one $i:tt mark_lost) => {
        fn mark_lost(
            &self,
            offset: $crate::units::ByteOffset,
            len: u64,
        ) -> $crate::block::IoFuture<'_> {
            self.$i.mark_lost(offset, len)
        }
    };
    (@one $i:tt reserve) => {
        fn reserve(
            &self,
            offset: $crate::units::ByteOffset,
            len: u64,
        ) -> $crate::block::IoFuture<'_> {
            self.$i.reserve(offset, len)
        }
    };
    (@one $i:tt retire) => {
        fn retire(&self) {
            self.$i.retire()
        }
    };
    (@one $i:tt hold) => {
        fn hold(&self, offset: $crate::units::ByteOffset, len: u64) -> $crate::block::Hold {
            self.$i.hold(offset, len)
        }
    };
    (@one $i:tt discard) => {
        fn discard(
            &self,
            offset: $crate::units::ByteOffset,
            len: u64,
        ) -> $crate::block::IoFuture<'_> {
            self.$i.discard(offset, len)
        }
    };
    (@one $i:tt allocation) => {
        fn allocation(
            &self,
            offset: $crate::units::ByteOffset,
            len: u64,
        ) -> $crate::block::BoxFuture<'_, $crate::block::BlockResult<$crate::block::AllocationMap>>
        {
            self.$i.allocation(offset, len)
        }
    };
    (@one $i:tt admit) => {
        fn admit(
            &self,
            dir: $crate::qos::Direction,
            bytes: u64,
        ) -> Option<$crate::block::BoxFuture<'_, $crate::qos::Admission<'_>>> {
            self.$i.admit(dir, bytes)
        }
    };
    (@one $i:tt write_zeroes) => {
        fn write_zeroes(
            &self,
            offset: $crate::units::ByteOffset,
            len: u64,
            may_unmap: bool,
        ) -> $crate::block::IoFuture<'_> {
            self.$i.write_zeroes(offset, len, may_unmap)
        }
    };
}
pub(crate) use forward_to;

/// A byte window onto another device: `[start, start + len)` of `inner`
/// appears as `[0, len)`. Used to expose a member's data area.
#[derive(Clone)]
pub struct Window {
    inner: Arc<dyn BlockDevice>,
    start: u64,
    len: u64,
}

impl std::fmt::Debug for Window {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Window")
            .field("inner", &self.inner.name())
            .field("start", &self.start)
            .field("len", &self.len)
            .finish()
    }
}

impl Window {
    /// Creates a window; fails if it does not fit inside `inner`.
    pub fn new(inner: Arc<dyn BlockDevice>, start: u64, len: u64) -> BlockResult<Self> {
        check_range(ByteOffset(start), len, inner.size())?;
        Ok(Window { inner, start, len })
    }

    /// The device underneath.
    pub fn inner(&self) -> &Arc<dyn BlockDevice> {
        &self.inner
    }
}

impl BlockDevice for Window {
    forward_to!(inner => name, flush, merge_limit);

    fn size(&self) -> u64 {
        self.len
    }

    // Reads and writes check the range here and hand the inner device's
    // future back as it is: no future of the window's own per request.
    fn read<'a>(&'a self, offset: ByteOffset, buf: &'a mut [u8]) -> IoFuture<'a> {
        match check_range(offset, buf.len() as u64, self.len) {
            Ok(()) => self.inner.read(offset + self.start, buf),
            Err(e) => BoxFuture::new(std::future::ready(Err(e))),
        }
    }

    fn write<'a>(&'a self, at: ByteOffset, buf: &'a [u8], durability: Durability) -> IoFuture<'a> {
        match check_range(at, buf.len() as u64, self.len) {
            Ok(()) => self.inner.write(at + self.start, buf, durability),
            Err(e) => BoxFuture::new(std::future::ready(Err(e))),
        }
    }

    fn read_vectored<'a>(
        &'a self,
        offset: ByteOffset,
        bufs: &'a mut [IoSliceMut<'_>],
    ) -> IoFuture<'a> {
        match check_range(offset, crate::iovec::len_mut(bufs) as u64, self.len) {
            Ok(()) => self.inner.read_vectored(offset + self.start, bufs),
            Err(e) => BoxFuture::new(std::future::ready(Err(e))),
        }
    }

    fn write_vectored<'a>(
        &'a self,
        at: ByteOffset,
        bufs: &'a [IoSlice<'a>],
        durability: Durability,
    ) -> IoFuture<'a> {
        match check_range(at, crate::iovec::len(bufs) as u64, self.len) {
            Ok(()) => self.inner.write_vectored(at + self.start, bufs, durability),
            Err(e) => BoxFuture::new(std::future::ready(Err(e))),
        }
    }

    fn discard(&self, offset: ByteOffset, len: u64) -> IoFuture<'_> {
        BoxFuture::new(async move {
            check_range(offset, len, self.len)?;
            self.inner.discard(offset + self.start, len).await
        })
    }

    fn write_zeroes(&self, offset: ByteOffset, len: u64, may_unmap: bool) -> IoFuture<'_> {
        BoxFuture::new(async move {
            check_range(offset, len, self.len)?;
            self.inner
                .write_zeroes(offset + self.start, len, may_unmap)
                .await
        })
    }
}
