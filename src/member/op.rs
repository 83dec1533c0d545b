//! The operations an I/O engine runs on one open file, shared by the
//! io_uring engine (`uring`) and the pread/pwrite fallback (`sync`).
//!
//! An [`Op`] owns its buffer; the engine hands a read buffer back filled in
//! [`OpResult`]. Engines continue short reads and writes, and a read that
//! reaches end-of-file yields zeroes for the missing tail.

use std::io;

use super::buf::AlignedBuf;

/// A caller's scatter-gather list, handed to the kernel as it is
/// (`READV`/`WRITEV`), with the progress of a short transfer.
///
/// It points into memory the caller borrows, not memory the op owns: the
/// engine must not let the caller's future end before the kernel is done
/// with it (`uring::Completion` waits in its drop).
///
/// Up to [`INLINE`] segments are held inline (no allocation per request);
/// the address of the list is stable while the op sits in the ring's
/// in-flight slab (allocated at full depth, never moved).
#[derive(Debug)]
pub(crate) struct IoVecs {
    inline: [libc::iovec; INLINE],
    /// Segments when there are more than [`INLINE`].
    heap: Vec<libc::iovec>,
    /// Segments in all.
    count: usize,
    /// First segment not yet fully transferred.
    first: usize,
}

/// Segments held without allocating.
const INLINE: usize = 4;

// SAFETY: the pointers are plain addresses of memory the submitting caller
// keeps borrowed (and so alive and unaliased) until the op completes; the
// ring thread only hands them to the kernel or fills them after EOF.
unsafe impl Send for IoVecs {}

/// Most segments in one kernel request (`UIO_MAXIOV`); a longer list is
/// continued like a short transfer.
const MAX_SEGMENTS: usize = 1024;

impl IoVecs {
    /// The segments of `segs`, which the caller keeps borrowed until the op
    /// completes.
    pub(crate) fn new(segs: impl IntoIterator<Item = (*mut u8, usize)>) -> Self {
        let empty = libc::iovec {
            iov_base: std::ptr::null_mut(),
            iov_len: 0,
        };
        let mut v = IoVecs {
            inline: [empty; INLINE],
            heap: Vec::new(),
            count: 0,
            first: 0,
        };
        for (base, len) in segs.into_iter().filter(|&(_, len)| len > 0) {
            let seg = libc::iovec {
                iov_base: base.cast(),
                iov_len: len,
            };
            if v.count < INLINE {
                v.inline[v.count] = seg;
            } else {
                if v.heap.is_empty() {
                    v.heap.extend_from_slice(&v.inline);
                }
                v.heap.push(seg);
            }
            v.count += 1;
        }
        v
    }

    fn all(&self) -> &[libc::iovec] {
        match self.count {
            n if n <= INLINE => &self.inline[..n],
            _ => &self.heap,
        }
    }

    fn all_mut(&mut self) -> &mut [libc::iovec] {
        match self.count {
            n if n <= INLINE => &mut self.inline[..n],
            _ => &mut self.heap,
        }
    }

    /// The segments still to transfer (at most [`MAX_SEGMENTS`]).
    pub(crate) fn rest(&self) -> &[libc::iovec] {
        let rest = &self.all()[self.first..];
        &rest[..rest.len().min(MAX_SEGMENTS)]
    }

    /// Bytes left to transfer.
    pub(crate) fn len(&self) -> usize {
        self.all()[self.first..].iter().map(|s| s.iov_len).sum()
    }

    /// True when nothing is left.
    pub(crate) fn is_done(&self) -> bool {
        self.first >= self.count
    }

    /// Records `n` more bytes transferred.
    pub(crate) fn advance(&mut self, mut n: usize) {
        while n > 0 && self.first < self.count {
            let first = self.first;
            let seg = &mut self.all_mut()[first];
            let step = n.min(seg.iov_len);
            // SAFETY: `step <= iov_len`: the pointer stays inside the segment.
            seg.iov_base = unsafe { seg.iov_base.cast::<u8>().add(step) }.cast();
            seg.iov_len -= step;
            n -= step;
            if seg.iov_len == 0 {
                self.first += 1;
            }
        }
    }

    /// Zeroes what is left (a read that reached end-of-file) and ends.
    pub(crate) fn zero_rest(&mut self) {
        for seg in &self.all()[self.first..] {
            // SAFETY: the segment is memory the caller lent for writing and
            // keeps borrowed until the op completes (see the type's contract).
            unsafe { std::ptr::write_bytes(seg.iov_base.cast::<u8>(), 0, seg.iov_len) };
        }
        self.first = self.count;
    }
}

/// One engine operation on one file descriptor.
#[derive(Debug)]
pub(crate) enum Op {
    /// Read `buf.len()` bytes at `offset` into `buf`.
    Read { offset: u64, buf: AlignedBuf },
    /// Write `buf` at `offset`; with `fua`, durably (`RWF_DSYNC`). With
    /// `nowait` (io_uring only), `RWF_NOWAIT`: a write that would block
    /// (on ext4: an unaligned direct write into a hole or unwritten
    /// extent) fails with EAGAIN instead of waiting.
    Write {
        offset: u64,
        buf: AlignedBuf,
        fua: bool,
        nowait: bool,
    },
    /// Read at `offset` into a caller's segments (borrowed memory).
    ReadV { offset: u64, iov: IoVecs },
    /// Write a caller's segments at `offset` (borrowed memory); with
    /// `fua`, durably.
    WriteV { offset: u64, iov: IoVecs, fua: bool },
    /// `fdatasync`.
    Flush,
    /// `fallocate(mode, offset, len)`.
    Fallocate { offset: u64, len: u64, mode: i32 },
}

/// Outcome of an [`Op`]: the filled buffer for reads, `None` otherwise.
pub(crate) type OpResult = io::Result<Option<AlignedBuf>>;

/// Largest single kernel request; longer ones are continued like short I/O.
pub(crate) const MAX_CHUNK: usize = 1 << 30;

impl Op {
    /// Bytes it transfers (0 for a flush or fallocate).
    pub(crate) fn len(&self) -> usize {
        match self {
            Op::Read { buf, .. } | Op::Write { buf, .. } => buf.len(),
            Op::ReadV { iov, .. } | Op::WriteV { iov, .. } => iov.len(),
            Op::Flush | Op::Fallocate { .. } => 0,
        }
    }

    /// True when the op points into memory its caller borrows.
    pub(crate) fn borrows(&self) -> bool {
        matches!(self, Op::ReadV { .. } | Op::WriteV { .. })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn io_vecs_advance_across_segments_inline_and_on_the_heap() {
        for n in [1usize, 3, 4, 5, 9] {
            let mut bufs: Vec<Vec<u8>> = (0..n).map(|_| vec![1u8; 10]).collect();
            let mut v = IoVecs::new(bufs.iter_mut().map(|b| (b.as_mut_ptr(), b.len())));
            assert_eq!(v.rest().len(), n);

            v.advance(15);
            assert_eq!(v.rest().len(), n.saturating_sub(1), "n={n}");
            if n > 1 {
                assert_eq!(v.rest()[0].iov_len, 5);
            }
            v.zero_rest();

            assert!(v.is_done());
            let flat: Vec<u8> = bufs.concat();
            assert!(flat[..15.min(flat.len())].iter().all(|&b| b == 1), "n={n}");
            assert!(flat[15.min(flat.len())..].iter().all(|&b| b == 0), "n={n}");
        }
    }
}
