//! The virtio-blk request parser: one descriptor chain in, one
//! [`BlockRequest`] out. Pure: it reads guest memory but does no I/O and
//! keeps no state, so the fuzz target drives it with a fake guest memory.
//!
//! ```text
//!  descriptors: [ readable ... ][ writable ... ]
//!  readable bytes: header (16: type, reserved, sector) | data-out / range list
//!  writable bytes: data-in                             | status (last byte)
//! ```
//!
//! Framing is free: the header and the status may share descriptors with
//! data, and data may be split anywhere. Every descriptor must lie inside
//! guest memory. When the chain ends in a writable byte, errors carry its
//! address so the caller can answer `VIRTIO_BLK_S_IOERR`; without one the
//! caller can only return the chain unanswered.

use virtio_bindings::virtio_blk::{
    VIRTIO_BLK_T_DISCARD, VIRTIO_BLK_T_FLUSH, VIRTIO_BLK_T_GET_ID, VIRTIO_BLK_T_IN,
    VIRTIO_BLK_T_OUT, VIRTIO_BLK_T_WRITE_ZEROES,
};
use virtio_queue::desc::split::Descriptor;
use vm_memory::{Address, Bytes, GuestAddress, GuestMemory, Permissions};

/// Size of a virtio sector: always 512, whatever `blk_size` says.
pub const SECTOR_SIZE: u64 = 512;
/// Bytes of the request header (type, reserved, sector).
pub const HEADER_LEN: usize = 16;
/// Bytes of one discard / write-zeroes range.
pub const RANGE_LEN: usize = 16;
/// Largest data transfer of one read or write (advertised limits are lower).
pub const MAX_DATA_LEN: u64 = 32 << 20;
/// Most ranges in one discard / write-zeroes request (`max_discard_seg`).
pub const MAX_RANGES: u32 = 16;
/// Most descriptors in one chain.
pub const MAX_DESCRIPTORS: usize = 4096;

/// A virtio sector number (512-byte units).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct Sector(pub u64);

impl Sector {
    /// Byte offset of the sector, or `None` on overflow.
    pub fn byte_offset(self) -> Option<u64> {
        self.0.checked_mul(SECTOR_SIZE)
    }
}

/// A stretch of guest memory holding request data.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Segment {
    /// Guest-physical start.
    pub addr: GuestAddress,
    /// Length in bytes (never zero).
    pub len: u32,
}

/// One range of a discard or write-zeroes request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Range {
    /// First sector.
    pub sector: Sector,
    /// Sectors in the range.
    pub num_sectors: u32,
    /// `VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP` (bit 0) and reserved bits.
    pub flags: u32,
}

/// Range flag: the device may deallocate the zeroed range.
pub const RANGE_FLAG_UNMAP: u32 = 1;

/// What the driver asks for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op {
    /// `VIRTIO_BLK_T_IN`: read into the segments.
    Read(Vec<Segment>),
    /// `VIRTIO_BLK_T_OUT`: write the segments.
    Write(Vec<Segment>),
    /// `VIRTIO_BLK_T_FLUSH`.
    Flush,
    /// `VIRTIO_BLK_T_GET_ID`: the device id string into the segments.
    GetId(Vec<Segment>),
    /// `VIRTIO_BLK_T_DISCARD`.
    Discard(Vec<Range>),
    /// `VIRTIO_BLK_T_WRITE_ZEROES`.
    WriteZeroes(Vec<Range>),
    /// Any other type: answered `VIRTIO_BLK_S_UNSUPP`.
    Unsupported(u32),
}

/// A parsed, well-formed request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BlockRequest {
    /// The operation and its data.
    pub op: Op,
    /// Header sector (reads and writes only).
    pub sector: Sector,
    /// Guest address of the status byte.
    pub status: GuestAddress,
}

/// Why a chain is not a valid request.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    /// The chain has no descriptor.
    #[error("empty descriptor chain")]
    Empty,
    /// The last descriptor is not a writable status byte.
    #[error("chain does not end in a writable status byte")]
    NoStatus,
    /// A descriptor points outside guest memory.
    #[error("descriptor at {addr:#x} of {len} bytes is outside guest memory")]
    OutsideMemory {
        /// Guest address.
        addr: u64,
        /// Length.
        len: u32,
    },
    /// The chain ends in a descriptor that says NEXT: it loops, links
    /// past the descriptor table, passes 4 GiB or has a bad indirect table.
    #[error(
        "chain cut short (loops, links outside the table, over 4 GiB, or a bad indirect table)"
    )]
    Truncated,
    /// The chain is longer than [`MAX_DESCRIPTORS`].
    #[error("chain has more than {MAX_DESCRIPTORS} descriptors")]
    TooManyDescriptors,
    /// A readable descriptor follows a writable one.
    #[error("readable descriptor after a writable one")]
    ReadableAfterWritable,
    /// Fewer than 16 readable bytes.
    #[error("header needs {HEADER_LEN} readable bytes, chain has {0}")]
    ShortHeader(u64),
    /// Data in the wrong direction for the request type.
    #[error("request type {kind} carries {len} bytes of unexpected data")]
    UnexpectedData {
        /// Request type.
        kind: u32,
        /// Stray bytes.
        len: u64,
    },
    /// A read or write of zero bytes or not a multiple of 512.
    #[error("data length {0} is zero or not a multiple of {SECTOR_SIZE}")]
    BadDataLength(u64),
    /// A transfer above [`MAX_DATA_LEN`].
    #[error("data length {0} exceeds {MAX_DATA_LEN}")]
    TooLarge(u64),
    /// A range list that is empty, ragged or too long.
    #[error("range list of {0} bytes is not 1..={MAX_RANGES} ranges of {RANGE_LEN} bytes")]
    BadRangeList(u64),
    /// Guest memory could not be read.
    #[error("guest memory read failed at {0:#x}")]
    MemoryRead(u64),
}

/// A parse failure, with the status byte to answer it if there is one.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{kind}")]
pub struct ChainError {
    /// Where to write `VIRTIO_BLK_S_IOERR`, if the chain has a status byte.
    pub status: Option<GuestAddress>,
    /// What is wrong.
    #[source]
    pub kind: ParseError,
}

/// Parses a descriptor chain read from `mem`.
pub fn parse<M: GuestMemory + ?Sized>(
    mem: &M,
    descriptors: impl IntoIterator<Item = Descriptor>,
) -> Result<BlockRequest, ChainError> {
    let mut readable = Vec::new();
    let mut writable = Vec::new();
    let mut order_error = None;
    let mut range_error = None;
    let mut count = 0usize;
    for d in descriptors {
        count += 1;
        if count > MAX_DESCRIPTORS {
            // The status byte is unknown: the chain was never read to its end.
            return Err(ChainError {
                status: None,
                kind: ParseError::TooManyDescriptors,
            });
        }
        let access = if d.is_write_only() {
            Permissions::Write
        } else {
            Permissions::Read
        };
        if range_error.is_none() && !in_memory(mem, d.addr(), d.len(), access) {
            range_error = Some(ParseError::OutsideMemory {
                addr: d.addr().0,
                len: d.len(),
            });
        }
        let seg = Segment {
            addr: d.addr(),
            len: d.len(),
        };
        if d.is_write_only() {
            writable.push(seg);
        } else {
            if !writable.is_empty() {
                order_error.get_or_insert(ParseError::ReadableAfterWritable);
            }
            readable.push(seg);
        }
    }
    if count == 0 {
        return Err(ChainError {
            status: None,
            kind: ParseError::Empty,
        });
    }
    let status = take_status(mem, &mut writable).ok_or(ChainError {
        status: None,
        kind: ParseError::NoStatus,
    })?;
    let fail = |kind| ChainError {
        status: Some(status),
        kind,
    };
    if let Some(e) = range_error.or(order_error) {
        return Err(fail(e));
    }
    let (header, data_out) = split_off(&readable, HEADER_LEN as u64);
    let header_len = total(&header);
    if header_len < HEADER_LEN as u64 {
        return Err(fail(ParseError::ShortHeader(header_len)));
    }
    let header = read_bytes(mem, &header).map_err(fail)?;
    let kind = u32::from_le_bytes(header[0..4].try_into().unwrap_or_default());
    let sector = Sector(u64::from_le_bytes(
        header[8..16].try_into().unwrap_or_default(),
    ));
    let op = decode(mem, kind, data_out, writable).map_err(fail)?;
    Ok(BlockRequest { op, sector, status })
}

fn decode<M: GuestMemory + ?Sized>(
    mem: &M,
    kind: u32,
    data_out: Vec<Segment>,
    data_in: Vec<Segment>,
) -> Result<Op, ParseError> {
    let no_data = |segs: &[Segment]| match total(segs) {
        0 => Ok(()),
        len => Err(ParseError::UnexpectedData { kind, len }),
    };
    Ok(match kind {
        VIRTIO_BLK_T_IN => {
            no_data(&data_out)?;
            check_transfer(total(&data_in))?;
            Op::Read(data_in)
        }
        VIRTIO_BLK_T_OUT => {
            no_data(&data_in)?;
            check_transfer(total(&data_out))?;
            Op::Write(data_out)
        }
        VIRTIO_BLK_T_FLUSH => Op::Flush,
        VIRTIO_BLK_T_GET_ID => {
            no_data(&data_out)?;
            if total(&data_in) == 0 {
                return Err(ParseError::BadDataLength(0));
            }
            Op::GetId(data_in)
        }
        VIRTIO_BLK_T_DISCARD => {
            no_data(&data_in)?;
            Op::Discard(ranges(mem, &data_out)?)
        }
        VIRTIO_BLK_T_WRITE_ZEROES => {
            no_data(&data_in)?;
            Op::WriteZeroes(ranges(mem, &data_out)?)
        }
        other => Op::Unsupported(other),
    })
}

fn check_transfer(len: u64) -> Result<(), ParseError> {
    if len == 0 || !len.is_multiple_of(SECTOR_SIZE) {
        return Err(ParseError::BadDataLength(len));
    }
    if len > MAX_DATA_LEN {
        return Err(ParseError::TooLarge(len));
    }
    Ok(())
}

fn ranges<M: GuestMemory + ?Sized>(mem: &M, segs: &[Segment]) -> Result<Vec<Range>, ParseError> {
    let len = total(segs);
    let count = len / RANGE_LEN as u64;
    if len == 0 || !len.is_multiple_of(RANGE_LEN as u64) || count > u64::from(MAX_RANGES) {
        return Err(ParseError::BadRangeList(len));
    }
    let bytes = read_bytes(mem, segs)?;
    Ok(bytes
        .chunks_exact(RANGE_LEN)
        .map(|r| Range {
            sector: Sector(u64::from_le_bytes(r[0..8].try_into().unwrap_or_default())),
            num_sectors: u32::from_le_bytes(r[8..12].try_into().unwrap_or_default()),
            flags: u32::from_le_bytes(r[12..16].try_into().unwrap_or_default()),
        })
        .collect())
}

/// Removes the last writable byte (the status) and returns its address.
fn take_status<M: GuestMemory + ?Sized>(
    mem: &M,
    writable: &mut Vec<Segment>,
) -> Option<GuestAddress> {
    while writable.last().is_some_and(|s| s.len == 0) {
        writable.pop();
    }
    let last = writable.last_mut()?;
    let addr = last.addr.checked_add(u64::from(last.len) - 1)?;
    if !in_memory(mem, addr, 1, Permissions::Write) {
        return None;
    }
    last.len -= 1;
    if last.len == 0 {
        writable.pop();
    }
    Some(addr)
}

fn in_memory<M: GuestMemory + ?Sized>(
    mem: &M,
    addr: GuestAddress,
    len: u32,
    access: Permissions,
) -> bool {
    len == 0 || mem.check_range(addr, len as usize, access)
}

/// Total bytes of `segs`.
pub fn total(segs: &[Segment]) -> u64 {
    segs.iter().map(|s| u64::from(s.len)).sum()
}

/// Splits a segment list after `n` bytes; zero-length segments are dropped.
pub fn split_off(segs: &[Segment], n: u64) -> (Vec<Segment>, Vec<Segment>) {
    let mut head = Vec::new();
    let mut tail = Vec::new();
    let mut left = n;
    for s in segs.iter().filter(|s| s.len > 0) {
        if left == 0 {
            tail.push(*s);
        } else if u64::from(s.len) <= left {
            left -= u64::from(s.len);
            head.push(*s);
        } else {
            // left < s.len <= u32::MAX, so both halves fit in u32.
            let first = left as u32;
            head.push(Segment {
                addr: s.addr,
                len: first,
            });
            tail.push(Segment {
                addr: GuestAddress(s.addr.0.wrapping_add(u64::from(first))),
                len: s.len - first,
            });
            left = 0;
        }
    }
    (head, tail)
}

/// Copies the bytes of `segs` out of guest memory.
pub fn read_bytes<M: GuestMemory + ?Sized>(
    mem: &M,
    segs: &[Segment],
) -> Result<Vec<u8>, ParseError> {
    let mut out = vec![0u8; total(segs) as usize];
    let mut at = 0usize;
    for s in segs {
        let end = at + s.len as usize;
        mem.read_slice(&mut out[at..end], s.addr)
            .map_err(|_| ParseError::MemoryRead(s.addr.0))?;
        at = end;
    }
    Ok(out)
}
