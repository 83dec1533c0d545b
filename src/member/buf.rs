//! Owned, 4096-aligned I/O buffers and the pools they come from.
//!
//! Every member I/O copies the caller's data into (or out of) an
//! [`AlignedBuf`]. The buffer is owned by the request until the kernel is done
//! with it, so a dropped future never leaves the kernel writing into freed
//! memory, and its alignment satisfies O_DIRECT on every device we know.
//!
//! A [`BufPool`] keeps freed buffers in size classes (4 KiB, 8 KiB, ...,
//! 4 MiB) and a buffer goes back to its pool on drop, so the hot path
//! neither calls the allocator nor faults in and zeroes fresh pages. The
//! members share one process-wide pool ([`AlignedBuf::new`]); each
//! vhost-user queue has its own for its bounce buffers, with its own
//! limits ([`PoolLimits`]).

use std::alloc::{alloc_zeroed, dealloc, handle_alloc_error, Layout};
use std::ptr::NonNull;
use std::sync::{Arc, LazyLock, Mutex};

/// Alignment of every buffer: enough for O_DIRECT on 4Kn devices.
pub(crate) const ALIGN: usize = 4096;
/// Number of size classes: 4K << 0 ..= 4K << 10 (4 MiB).
const CLASSES: usize = 11;

/// What a pool keeps of the buffers given back to it.
#[derive(Clone, Copy, Debug)]
pub(crate) struct PoolLimits {
    /// Largest buffer kept (at most 4 MiB, the largest class).
    pub max_len: usize,
    /// Bytes kept per size class at most.
    pub class_bytes: usize,
    /// Buffers kept per size class at most.
    pub class_count: usize,
}

/// The members' pool: buffers up to 4 MiB, 64 MiB or 128 buffers per
/// class. 64 MiB is a rebuild pipeline's worth of its largest buffers (16
/// steps in flight, each with a read and a write of 2 MiB in a member,
/// `raid::rebuild`): a pass reuses them instead of faulting in and zeroing
/// fresh pages per request. The pool keeps only what was once in use at
/// the same time, so idle arrays that never ran such a pass hold little.
const MEMBER_LIMITS: PoolLimits = PoolLimits {
    max_len: 4 << 20,
    class_bytes: 64 << 20,
    class_count: 128,
};

static MEMBER_POOL: LazyLock<Arc<BufPool>> = LazyLock::new(|| BufPool::new(MEMBER_LIMITS));

/// A raw aligned allocation of `cap` bytes (a multiple of [`ALIGN`]).
struct Raw {
    ptr: NonNull<u8>,
    cap: usize,
}

// SAFETY: `Raw` is a uniquely owned heap allocation with no thread affinity;
// moving it between threads is like moving a `Box<[u8]>`.
unsafe impl Send for Raw {}

fn layout(cap: usize) -> Layout {
    // ALIGN is a power of two and cap is a non-zero multiple of it, far below
    // isize::MAX for any request the caller could have allocated itself.
    Layout::from_size_align(cap, ALIGN).unwrap_or_else(|_| handle_alloc_error(Layout::new::<u8>()))
}

fn alloc_raw(cap: usize) -> Raw {
    let layout = layout(cap);
    // SAFETY: `layout` has a non-zero size (cap >= ALIGN).
    let ptr = unsafe { alloc_zeroed(layout) };
    match NonNull::new(ptr) {
        Some(ptr) => Raw { ptr, cap },
        None => handle_alloc_error(layout),
    }
}

/// Freed buffers by size class, reused by later requests. The lock of a
/// class is held only to take or return a buffer, never across I/O.
pub(crate) struct BufPool {
    classes: [Mutex<Vec<Raw>>; CLASSES],
    limits: PoolLimits,
}

impl std::fmt::Debug for BufPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BufPool")
            .field("limits", &self.limits)
            .finish_non_exhaustive()
    }
}

impl BufPool {
    /// An empty pool.
    pub(crate) fn new(limits: PoolLimits) -> Arc<BufPool> {
        Arc::new(BufPool {
            classes: [const { Mutex::new(Vec::new()) }; CLASSES],
            limits,
        })
    }

    /// The size class of a `cap`-byte buffer, if this pool keeps it.
    fn class_of(&self, cap: usize) -> Option<usize> {
        if cap > self.limits.max_len {
            return None;
        }
        let class = (cap / ALIGN).next_power_of_two().trailing_zeros() as usize;
        (class < CLASSES).then_some(class)
    }

    /// A buffer of `len` bytes. The contents are initialized but
    /// unspecified (zeroes or data of an earlier request).
    pub(crate) fn take(self: &Arc<Self>, len: usize) -> AlignedBuf {
        let want = len.max(1).div_ceil(ALIGN) * ALIGN;
        let raw = match self.class_of(want) {
            Some(class) => {
                let cap = ALIGN << class;
                let pooled = self.classes[class].lock().ok().and_then(|mut v| v.pop());
                pooled.unwrap_or_else(|| alloc_raw(cap))
            }
            None => alloc_raw(want),
        };
        AlignedBuf {
            raw: Some(raw),
            len,
            pool: self.clone(),
        }
    }

    /// Keeps `raw` for reuse if it fits the limits; else frees it.
    fn give(&self, raw: Raw) {
        if let Some(class) = self.class_of(raw.cap) {
            let cap = ALIGN << class;
            let keep = self.limits.class_count.min(self.limits.class_bytes / cap);
            if cap == raw.cap {
                if let Ok(mut pool) = self.classes[class].lock() {
                    if pool.len() < keep {
                        pool.push(raw);
                        return;
                    }
                }
            }
        }
        // SAFETY: `raw.ptr` was returned by `alloc_zeroed` with exactly
        // `layout(raw.cap)` and is not referenced anywhere else any more.
        unsafe { dealloc(raw.ptr.as_ptr(), layout(raw.cap)) };
    }
}

impl Drop for BufPool {
    fn drop(&mut self) {
        for class in &self.classes {
            let raws = std::mem::take(&mut *class.lock().unwrap_or_else(|e| e.into_inner()));
            for raw in raws {
                // SAFETY: as in `give`: a pooled allocation nobody references.
                unsafe { dealloc(raw.ptr.as_ptr(), layout(raw.cap)) };
            }
        }
    }
}

/// An owned, [`ALIGN`]-aligned, initialized byte buffer of `len` bytes.
pub(crate) struct AlignedBuf {
    raw: Option<Raw>,
    len: usize,
    /// Where the buffer goes back to when dropped.
    pool: Arc<BufPool>,
}

impl std::fmt::Debug for AlignedBuf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AlignedBuf")
            .field("len", &self.len)
            .finish()
    }
}

impl AlignedBuf {
    /// A buffer of `len` bytes from the members' pool. The contents are
    /// initialized but unspecified (zeroes or data of an earlier request).
    pub(crate) fn new(len: usize) -> Self {
        MEMBER_POOL.take(len)
    }

    /// A buffer holding a copy of `data`.
    pub(crate) fn copy_from(data: &[u8]) -> Self {
        let mut buf = AlignedBuf::new(data.len());
        buf.as_mut_slice().copy_from_slice(data);
        buf
    }

    /// Length in bytes.
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// Start of the buffer, for the kernel.
    pub(crate) fn as_mut_ptr(&mut self) -> *mut u8 {
        self.raw_ptr()
    }

    /// Start of the buffer, for the kernel (read-only use).
    pub(crate) fn as_ptr(&self) -> *const u8 {
        self.raw_ptr()
    }

    fn raw_ptr(&self) -> *mut u8 {
        match &self.raw {
            Some(raw) => raw.ptr.as_ptr(),
            None => NonNull::dangling().as_ptr(),
        }
    }

    /// The bytes.
    pub(crate) fn as_slice(&self) -> &[u8] {
        // SAFETY: `raw` is a live allocation of `cap >= len` bytes that was
        // zero-initialized when allocated and only ever written with bytes
        // since; `&self` guarantees no mutable alias exists.
        unsafe { std::slice::from_raw_parts(self.as_ptr(), self.len) }
    }

    /// The bytes, mutably.
    pub(crate) fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: as in `as_slice`; `&mut self` guarantees uniqueness.
        unsafe { std::slice::from_raw_parts_mut(self.as_mut_ptr(), self.len) }
    }
}

impl Drop for AlignedBuf {
    fn drop(&mut self) {
        if let Some(raw) = self.raw.take() {
            self.pool.give(raw);
        }
    }
}

// SAFETY: `AlignedBuf` uniquely owns its allocation (like `Vec<u8>`); shared
// references only allow reads.
unsafe impl Send for AlignedBuf {}
// SAFETY: see `Send`; `&AlignedBuf` exposes only `&[u8]`.
unsafe impl Sync for AlignedBuf {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffers_are_aligned_and_sized() {
        for len in [
            0,
            1,
            4095,
            4096,
            4097,
            65536,
            MEMBER_LIMITS.max_len,
            MEMBER_LIMITS.max_len + 1,
            3 << 20,
        ] {
            let buf = AlignedBuf::new(len);
            assert_eq!(buf.len(), len);
            assert_eq!(buf.as_ptr() as usize % ALIGN, 0);
        }
    }

    #[test]
    fn a_pool_reuses_what_its_limits_keep_and_frees_the_rest() {
        // Arrange: one 4 KiB or 8 KiB buffer kept per class.
        let pool = BufPool::new(PoolLimits {
            max_len: 8192,
            class_bytes: 1 << 20,
            class_count: 1,
        });
        let first = pool.take(4096);
        let second = pool.take(4096);
        let kept = first.as_ptr();

        // Act
        drop(first);
        drop(second);
        let again = pool.take(100);
        drop(pool.take(8193));

        // Assert
        assert_eq!(again.as_ptr(), kept);
        assert!(pool.classes.iter().all(|c| c.lock().unwrap().is_empty()));
    }

    #[test]
    fn copy_from_keeps_the_bytes() {
        let data: Vec<u8> = (0..10_000u32).map(|i| i as u8).collect();
        let buf = AlignedBuf::copy_from(&data);
        assert_eq!(buf.as_slice(), &data[..]);
    }
}
