//! Runs one parsed [`BlockRequest`] on the volume and answers it in guest
//! memory: data-in into the segments, then the status byte.
//!
//! ```text
//!  BlockRequest ─► range / read-only checks ─► BlockDevice call ─► status byte
//!                        │ refuse: IOERR / UNSUPP
//!  read / write data: the guest's segments as the scatter-gather list
//!        (read_vectored / write_vectored, no copy); a segment list that
//!        overlaps itself or crosses memory regions goes through a buffer
//! ```
//!
//! Guest memory as I/O segments: the memory map is a snapshot (`Arc`) the
//! request holds until it is answered, so the mapping outlives the I/O; a
//! dropped read waits for the kernel (`member::uring`), a write is never
//! dropped ([`FinishOnDrop`]). The guest owns those buffers until the used
//! ring says otherwise; if it changes a write buffer meanwhile, the layers
//! that hash or mirror the bytes cope (`block`, "Stability"). Segments
//! that overlap each other are not handed out as separate `&mut` slices:
//! such a request is copied.

use std::io::{IoSlice, IoSliceMut};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use virtio_bindings::virtio_blk::{VIRTIO_BLK_S_IOERR, VIRTIO_BLK_S_OK, VIRTIO_BLK_S_UNSUPP};
use vm_memory::bitmap::Bitmap;
use vm_memory::{Bytes, GuestAddress, GuestMemory, Permissions};

use super::device::DeviceSpec;
use super::request::{
    total, BlockRequest, Op, Range, Sector, Segment, RANGE_FLAG_UNMAP, SECTOR_SIZE,
};
use crate::block::{BlockDevice, BlockError, Durability};
use crate::export::finish::FinishOnDrop;
use crate::member::buf::{AlignedBuf, BufPool, PoolLimits};
use crate::units::ByteOffset;

/// A virtio-blk status byte.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Status(pub u8);

impl Status {
    /// `VIRTIO_BLK_S_OK`.
    pub const OK: Status = Status(VIRTIO_BLK_S_OK as u8);
    /// `VIRTIO_BLK_S_IOERR`.
    pub const IOERR: Status = Status(VIRTIO_BLK_S_IOERR as u8);
    /// `VIRTIO_BLK_S_UNSUPP`.
    pub const UNSUPP: Status = Status(VIRTIO_BLK_S_UNSUPP as u8);
}

/// The one mapping from a block error to the virtio status byte.
pub fn status_of(e: &BlockError) -> Status {
    match e {
        BlockError::Unsupported => Status::UNSUPP,
        _ => Status::IOERR,
    }
}

/// What every request of one export needs.
pub struct ExportContext {
    /// The volume.
    pub device: Arc<dyn BlockDevice>,
    /// The device as the guest sees it.
    pub spec: DeviceSpec,
    /// Write cache on (writeback); off means every write is FUA.
    pub writeback: AtomicBool,
}

impl std::fmt::Debug for ExportContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExportContext")
            .field("device", &self.device.name())
            .field("spec", &self.spec)
            .finish()
    }
}

/// What a queue's bounce-buffer pool keeps: up to 64 buffers of each size
/// class, up to 4 MiB each, so that large requests neither fault in fresh
/// pages nor zero them each time.
pub(crate) const QUEUE_POOL: PoolLimits = PoolLimits {
    max_len: 4 << 20,
    class_bytes: 64 * (4 << 20),
    class_count: 64,
};

/// Writes `status` to `addr`; returns the bytes the device wrote in all
/// (`data_in` plus the status byte) for the used ring.
pub fn answer<M: GuestMemory + ?Sized>(
    mem: &M,
    addr: GuestAddress,
    status: Status,
    data_in: u32,
) -> u32 {
    match mem.write_obj(status.0, addr) {
        Ok(()) => data_in.saturating_add(1),
        Err(_) => 0,
    }
}

/// Executes `req`; returns the status and the bytes of data written into
/// guest memory.
pub(crate) async fn execute<M: GuestMemory + Send + Sync + 'static>(
    ctx: &ExportContext,
    pool: &Arc<BufPool>,
    mem: &Arc<M>,
    req: &BlockRequest,
) -> (Status, u32) {
    let result = match &req.op {
        Op::Read(segs) => return read(ctx, pool, &**mem, req.sector, segs).await,
        Op::Write(segs) => write(ctx, pool, mem, req.sector, segs).await,
        Op::Flush => ctx.device.flush().await.map_err(|e| status_of(&e)),
        Op::GetId(segs) => return (Status::OK, scatter(&**mem, segs, &ctx.spec.id())),
        Op::Discard(ranges) => clear(ctx, ranges, false).await,
        Op::WriteZeroes(ranges) => clear(ctx, ranges, true).await,
        Op::Unsupported(_) => Err(Status::UNSUPP),
    };
    (result.err().unwrap_or(Status::OK), 0)
}

/// Byte offset of `len` bytes at `sector`, if inside the device.
fn byte_range(ctx: &ExportContext, sector: Sector, len: u64) -> Result<ByteOffset, Status> {
    let size = ctx.spec.size - ctx.spec.size % SECTOR_SIZE;
    match sector.byte_offset() {
        Some(off) if off.checked_add(len).is_some_and(|end| end <= size) => Ok(ByteOffset(off)),
        _ => Err(Status::IOERR),
    }
}

/// The host memory of `segs` as (address, length) pieces, or `None` when
/// a segment is not mapped with `access` or two pieces overlap.
fn host_pieces<M: GuestMemory + ?Sized>(
    mem: &M,
    segs: &[Segment],
    access: Permissions,
) -> Option<Vec<(usize, usize)>> {
    let mut out = Vec::with_capacity(segs.len());
    for s in segs {
        for slice in mem.get_slices(s.addr, s.len as usize, access).ok()? {
            let slice = slice.ok()?;
            out.push((slice.ptr_guard_mut().as_ptr() as usize, slice.len()));
        }
    }
    (!overlapping(&out)).then_some(out)
}

/// True when two of the pieces share a byte.
fn overlapping(pieces: &[(usize, usize)]) -> bool {
    let mut spans: Vec<(usize, usize)> = pieces.iter().map(|&(a, n)| (a, a + n)).collect();
    spans.sort_unstable();
    spans.windows(2).any(|w| w[1].0 < w[0].1)
}

/// Marks the guest pages of `segs` dirty (for a dirty-page log) after the
/// device wrote them.
fn mark_dirty<M: GuestMemory + ?Sized>(mem: &M, segs: &[Segment]) {
    for s in segs {
        let Ok(slices) = mem.get_slices(s.addr, s.len as usize, Permissions::Write) else {
            continue;
        };
        for slice in slices.flatten() {
            slice.bitmap().mark_dirty(0, slice.len());
        }
    }
}

async fn read<M: GuestMemory + ?Sized>(
    ctx: &ExportContext,
    pool: &Arc<BufPool>,
    mem: &M,
    sector: Sector,
    segs: &[Segment],
) -> (Status, u32) {
    let len = total(segs);
    let offset = match byte_range(ctx, sector, len) {
        Ok(o) => o,
        Err(s) => return (s, 0),
    };
    let Some(pieces) = host_pieces(mem, segs, Permissions::Write) else {
        return read_copied(ctx, pool, mem, offset, segs).await;
    };
    // SAFETY: each piece is guest memory mapped for writing by the memory
    // map `mem` borrows (kept alive by the request until it is answered),
    // lent to the device by the guest for this request, and no two pieces
    // overlap; the borrow ends before the request is answered.
    let mut list: Vec<IoSliceMut<'_>> = pieces
        .iter()
        .map(|&(a, n)| IoSliceMut::new(unsafe { std::slice::from_raw_parts_mut(a as *mut u8, n) }))
        .collect();
    drop(pieces);
    let result = ctx.device.read_vectored(offset, &mut list).await;
    drop(list);
    match result {
        Ok(()) => {
            mark_dirty(mem, segs);
            (Status::OK, u32::try_from(len).unwrap_or(u32::MAX))
        }
        Err(e) => (status_of(&e), 0),
    }
}

/// A read through a buffer of the queue's pool, copied into guest memory.
async fn read_copied<M: GuestMemory + ?Sized>(
    ctx: &ExportContext,
    pool: &Arc<BufPool>,
    mem: &M,
    offset: ByteOffset,
    segs: &[Segment],
) -> (Status, u32) {
    let len = total(segs);
    let mut buf = pool.take(len as usize);
    match ctx.device.read(offset, buf.as_mut_slice()).await {
        Ok(()) => match scatter(mem, segs, buf.as_slice()) {
            n if u64::from(n) == len => (Status::OK, n),
            n => (Status::IOERR, n),
        },
        Err(e) => (status_of(&e), 0),
    }
}

async fn write<M: GuestMemory + Send + Sync + 'static>(
    ctx: &ExportContext,
    pool: &Arc<BufPool>,
    mem: &Arc<M>,
    sector: Sector,
    segs: &[Segment],
) -> Result<(), Status> {
    if ctx.spec.read_only {
        return Err(Status::IOERR);
    }
    let len = total(segs);
    let offset = byte_range(ctx, sector, len)?;
    let durability = if ctx.writeback.load(Ordering::Relaxed) {
        Durability::Normal
    } else {
        Durability::Fua
    };
    let Some(pieces) = host_pieces(&**mem, segs, Permissions::Read) else {
        return write_copied(ctx, pool, &**mem, (offset, durability), segs).await;
    };
    // Finished even if this request is dropped, holding the memory map.
    let (device, mem) = (ctx.device.clone(), mem.clone());
    let result = FinishOnDrop::new(async move {
        // SAFETY: guest memory mapped for reading by `mem`, which this
        // future owns, lent by the guest for this request (see the header).
        let list: Vec<IoSlice<'_>> = pieces
            .iter()
            .map(|&(a, n)| IoSlice::new(unsafe { std::slice::from_raw_parts(a as *const u8, n) }))
            .collect();
        let result = device.write_vectored(offset, &list, durability).await;
        drop(list);
        drop(mem);
        result
    })
    .await;
    result.map_err(|e| status_of(&e))
}

/// A write copied out of guest memory into a buffer of the queue's pool.
async fn write_copied<M: GuestMemory + ?Sized>(
    ctx: &ExportContext,
    pool: &Arc<BufPool>,
    mem: &M,
    (offset, durability): (ByteOffset, Durability),
    segs: &[Segment],
) -> Result<(), Status> {
    let len = total(segs);
    let mut buf: AlignedBuf = pool.take(len as usize);
    gather(mem, segs, buf.as_mut_slice())?;
    // Finished even if this request is dropped (queue reset, front-end
    // gone): a write cut off half-way could leave RAID-5 parity wrong.
    let device = ctx.device.clone();
    let result =
        FinishOnDrop::new(async move { device.write(offset, buf.as_slice(), durability).await })
            .await;
    result.map_err(|e| status_of(&e))
}

/// Copies the segments out of guest memory into `out` (exactly their length).
fn gather<M: GuestMemory + ?Sized>(
    mem: &M,
    segs: &[Segment],
    out: &mut [u8],
) -> Result<(), Status> {
    let mut at = 0usize;
    for s in segs {
        let end = at + s.len as usize;
        mem.read_slice(&mut out[at..end], s.addr)
            .map_err(|_| Status::IOERR)?;
        at = end;
    }
    Ok(())
}

async fn clear(ctx: &ExportContext, ranges: &[Range], zeroes: bool) -> Result<(), Status> {
    if ctx.spec.read_only {
        return Err(Status::IOERR);
    }
    for r in ranges {
        let reserved = r.flags & !RANGE_FLAG_UNMAP;
        // Discard with the unmap flag, or any reserved flag: UNSUPP (spec 5.2.6.2).
        if reserved != 0 || (!zeroes && r.flags != 0) {
            return Err(Status::UNSUPP);
        }
        let len = u64::from(r.num_sectors) * SECTOR_SIZE;
        let offset = byte_range(ctx, r.sector, len)?;
        if len == 0 {
            continue;
        }
        let device = ctx.device.clone();
        let may_unmap = r.flags & RANGE_FLAG_UNMAP != 0;
        // Finished even if this request is dropped, like a write.
        let result = FinishOnDrop::new(async move {
            if zeroes {
                device.write_zeroes(offset, len, may_unmap).await
            } else {
                device.discard(offset, len).await
            }
        })
        .await;
        result.map_err(|e| status_of(&e))?;
    }
    Ok(())
}

/// Copies `data` into the segments, as far as both reach; returns bytes copied.
fn scatter<M: GuestMemory + ?Sized>(mem: &M, segs: &[Segment], data: &[u8]) -> u32 {
    let mut at = 0usize;
    for s in segs {
        if at >= data.len() {
            break;
        }
        let end = (at + s.len as usize).min(data.len());
        if mem.write_slice(&data[at..end], s.addr).is_err() {
            break;
        }
        at = end;
    }
    u32::try_from(at).unwrap_or(u32::MAX)
}
