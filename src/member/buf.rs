//! Owned, 4096-aligned I/O buffers with a small process-wide pool.
//!
//! Every member I/O copies the caller's data into (or out of) an
//! [`AlignedBuf`]. The buffer is owned by the request until the kernel is done
//! with it, so a dropped future never leaves the kernel writing into freed
//! memory, and its alignment satisfies O_DIRECT on every device we know.
//!
//! The vhost-user export takes its bounce buffers from here too (one pool
//! for the process).
//!
//! Buffers up to [`POOL_MAX`] bytes come from size classes (4 KiB, 8 KiB, ...,
//! 4 MiB) and go back to their class on drop, so the hot path neither calls
//! the allocator nor faults in and zeroes fresh pages.

use std::alloc::{alloc_zeroed, dealloc, handle_alloc_error, Layout};
use std::ptr::NonNull;
use std::sync::Mutex;

/// Alignment of every buffer: enough for O_DIRECT on 4Kn devices.
pub(crate) const ALIGN: usize = 4096;
/// Largest pooled buffer.
const POOL_MAX: usize = 4 << 20;
/// Number of size classes: 4K << 0 ..= 4K << 10.
const CLASSES: usize = 11;
/// Bytes kept per size class at most.
const CLASS_BYTES: usize = 8 << 20;
/// Buffers kept per size class at most.
const CLASS_COUNT: usize = 128;

/// A raw aligned allocation of `cap` bytes (a multiple of [`ALIGN`]).
struct Raw {
    ptr: NonNull<u8>,
    cap: usize,
}

// SAFETY: `Raw` is a uniquely owned heap allocation with no thread affinity;
// moving it between threads is like moving a `Box<[u8]>`.
unsafe impl Send for Raw {}

static POOL: [Mutex<Vec<Raw>>; CLASSES] = [const { Mutex::new(Vec::new()) }; CLASSES];

fn class_of(cap: usize) -> Option<usize> {
    if cap > POOL_MAX {
        return None;
    }
    let class = (cap / ALIGN).next_power_of_two().trailing_zeros() as usize;
    Some(class)
}

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

/// An owned, [`ALIGN`]-aligned, initialized byte buffer of `len` bytes.
pub(crate) struct AlignedBuf {
    raw: Option<Raw>,
    len: usize,
}

impl std::fmt::Debug for AlignedBuf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AlignedBuf")
            .field("len", &self.len)
            .finish()
    }
}

impl AlignedBuf {
    /// A buffer of `len` bytes. The contents are initialized but unspecified
    /// (zeroes or data of an earlier request).
    pub(crate) fn new(len: usize) -> Self {
        let want = len.max(1).div_ceil(ALIGN) * ALIGN;
        let raw = match class_of(want) {
            Some(class) => {
                let cap = ALIGN << class;
                let pooled = POOL[class].lock().ok().and_then(|mut v| v.pop());
                pooled.unwrap_or_else(|| alloc_raw(cap))
            }
            None => alloc_raw(want),
        };
        AlignedBuf {
            raw: Some(raw),
            len,
        }
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
        let Some(raw) = self.raw.take() else { return };
        if let Some(class) = class_of(raw.cap) {
            let cap = ALIGN << class;
            if cap == raw.cap {
                if let Ok(mut pool) = POOL[class].lock() {
                    if pool.len() < CLASS_COUNT.min(CLASS_BYTES / cap) {
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
            POOL_MAX,
            POOL_MAX + 1,
            3 << 20,
        ] {
            let buf = AlignedBuf::new(len);
            assert_eq!(buf.len(), len);
            assert_eq!(buf.as_ptr() as usize % ALIGN, 0);
        }
    }

    #[test]
    fn copy_from_keeps_the_bytes() {
        let data: Vec<u8> = (0..10_000u32).map(|i| i as u8).collect();
        let buf = AlignedBuf::copy_from(&data);
        assert_eq!(buf.as_slice(), &data[..]);
    }
}
