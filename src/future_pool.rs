//! Reusable storage for the futures of [`crate::block::BlockDevice`] calls
//! (issue 10: no heap allocation per request in steady state).
//!
//! The trait is object-safe, so every call returns a type-erased future
//! ([`crate::block::BoxFuture`] = [`PoolBox`]). A `PoolBox` places the
//! future in a block of a per-thread cache of free blocks, in size
//! classes of 64 B to 32 KiB (powers of two, 16-byte aligned): a
//! request's futures take blocks from the cache of the thread that makes
//! them and give them back, on drop, to the cache of the thread that
//! drops them. Once every class a request uses holds enough free blocks
//! (after the first few requests), a request allocates nothing.
//!
//! ```text
//!  PoolBox::new(fut) ─► class of size_of::<F>() ─► pop the thread's free list
//!                                                  (empty: one heap block)
//!  drop(PoolBox)     ─► drop the future in place ─► push the thread's free list
//!                                                  (full: back to the heap)
//! ```
//!
//! Bounded: a thread keeps at most [`CACHE_BYTES`] of free blocks, all
//! classes together (blocks beyond go back to the heap), and frees them
//! all when it exits; a block is at most twice its future's size. Futures
//! larger than the largest class or aligned beyond 16 bytes are boxed as
//! before (optimized builds' request futures take 0.1-2 KiB; debug
//! builds' up to ~20 KiB). Each slow path is counted ([`stats`],
//! exported as `vraid_future_pool_*_total`): blocks taken from the heap,
//! blocks given back to it, futures boxed.

use std::alloc::{self, Layout};
use std::cell::Cell;
use std::future::Future;
use std::pin::Pin;
use std::ptr::{self, NonNull};
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};

/// Alignment of every block (and the largest a pooled future may need).
const ALIGN: usize = 16;
/// The smallest class: 1 << 6 = 64 bytes.
const MIN_SHIFT: u32 = 6;
/// Classes 64, 128, .., 32768 bytes.
const CLASSES: usize = 10;
/// Free blocks a thread keeps, all classes together, in bytes.
pub const CACHE_BYTES: usize = 1 << 20;
/// Marks a future boxed on the heap (no class).
const BOXED: u8 = u8::MAX;

static HEAP_BLOCKS: AtomicU64 = AtomicU64::new(0);
static RELEASED_BLOCKS: AtomicU64 = AtomicU64::new(0);
static BOXED_FUTURES: AtomicU64 = AtomicU64::new(0);

/// The pool's slow paths since the process started.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PoolStats {
    /// Blocks allocated on the heap (the thread's free list was empty).
    pub heap_blocks: u64,
    /// Blocks given back to the heap (the thread's free list was full,
    /// or the thread was exiting).
    pub released_blocks: u64,
    /// Futures boxed on the heap (too large or too aligned for a class).
    pub boxed_futures: u64,
}

/// The counters of the slow paths.
pub fn stats() -> PoolStats {
    PoolStats {
        heap_blocks: HEAP_BLOCKS.load(Ordering::Relaxed),
        released_blocks: RELEASED_BLOCKS.load(Ordering::Relaxed),
        boxed_futures: BOXED_FUTURES.load(Ordering::Relaxed),
    }
}

/// The class of a future of `size` bytes, if one fits it.
const fn class_of(size: usize) -> Option<usize> {
    let class = if size <= 1 << MIN_SHIFT {
        0
    } else {
        ((size - 1).ilog2() + 1 - MIN_SHIFT) as usize
    };
    if class < CLASSES {
        Some(class)
    } else {
        None
    }
}

/// The layout of a block of `class`.
fn layout(class: usize) -> Layout {
    // 64 << class is a power of two <= 32768 and a multiple of ALIGN.
    Layout::from_size_align(1 << (MIN_SHIFT as usize + class), ALIGN).expect("block layout")
}

/// A free block: its first word links to the next free block.
struct Free {
    next: *mut Free,
}

/// One thread's free blocks, a list per class.
struct Cache {
    heads: [Cell<*mut Free>; CLASSES],
    counts: [Cell<usize>; CLASSES],
    /// Bytes of all the free blocks.
    bytes: Cell<usize>,
}

impl Cache {
    fn pop(&self, class: usize) -> Option<NonNull<u8>> {
        let head = NonNull::new(self.heads[class].get())?;
        // SAFETY: every block on a list is a live allocation of the
        // class's layout that only this list owns, whose first word `push`
        // wrote as a `Free` (blocks are 16-aligned and >= 64 bytes).
        let next = unsafe { head.as_ptr().read().next };
        self.heads[class].set(next);
        self.counts[class].set(self.counts[class].get() - 1);
        self.bytes.set(self.bytes.get() - layout(class).size());
        Some(head.cast())
    }

    /// Keeps `block`, or hands it back when the class's list is full.
    fn push(&self, class: usize, block: NonNull<u8>) -> Result<(), NonNull<u8>> {
        let size = layout(class).size();
        if self.bytes.get() + size > CACHE_BYTES {
            return Err(block);
        }
        let free = block.cast::<Free>();
        // SAFETY: `block` is a live allocation of the class's layout that
        // the caller gave up (its future was dropped in place): writing a
        // `Free` (8 bytes, 8-aligned) into it is in bounds and aligned.
        unsafe {
            free.as_ptr().write(Free {
                next: self.heads[class].get(),
            })
        };
        self.heads[class].set(free.as_ptr());
        self.counts[class].set(self.counts[class].get() + 1);
        self.bytes.set(self.bytes.get() + size);
        Ok(())
    }
}

impl Drop for Cache {
    fn drop(&mut self) {
        for class in 0..CLASSES {
            while let Some(block) = self.pop(class) {
                release(block, class);
            }
        }
    }
}

thread_local! {
    static CACHE: Cache = const {
        Cache {
            heads: [const { Cell::new(ptr::null_mut()) }; CLASSES],
            counts: [const { Cell::new(0) }; CLASSES],
            bytes: Cell::new(0),
        }
    };
}

/// A block of `class` for a new future: from the thread's list, else
/// (empty, or the thread is exiting) from the heap.
fn take(class: usize) -> NonNull<u8> {
    if let Ok(Some(block)) = CACHE.try_with(|c| c.pop(class)) {
        return block;
    }
    HEAP_BLOCKS.fetch_add(1, Ordering::Relaxed);
    let layout = layout(class);
    // SAFETY: the layout has a non-zero size.
    let block = unsafe { alloc::alloc(layout) };
    NonNull::new(block).unwrap_or_else(|| alloc::handle_alloc_error(layout))
}

/// Gives back the block of a dropped future: to the thread's list, else
/// (full, or the thread is exiting) to the heap.
fn give(block: NonNull<u8>, class: usize) {
    match CACHE.try_with(|c| c.push(class, block)) {
        Ok(Ok(())) => {}
        Ok(Err(block)) => release(block, class),
        Err(_) => release(block, class),
    }
}

fn release(block: NonNull<u8>, class: usize) {
    RELEASED_BLOCKS.fetch_add(1, Ordering::Relaxed);
    // SAFETY: `block` was allocated by `take` with this class's layout and
    // nothing else refers to it any more.
    unsafe { alloc::dealloc(block.as_ptr(), layout(class)) };
}

/// An owned, pinned, type-erased, sendable future, stored in a block of
/// the thread's cache (or boxed): what `Pin<Box<dyn Future + Send>>` is,
/// without a heap allocation in steady state.
pub struct PoolBox<'a, T> {
    /// The future, never moved after `new` placed it (it is pinned).
    fut: NonNull<dyn Future<Output = T> + Send + 'a>,
    /// Its block's class, or [`BOXED`].
    class: u8,
}

// SAFETY: the future is `Send`, and its storage is plain heap memory that
// any thread may free (`give` pushes it on the dropping thread's list).
unsafe impl<T> Send for PoolBox<'_, T> {}

impl<'a, T> PoolBox<'a, T> {
    /// Places `fut` in a block of its size class (boxes it when none fits).
    pub fn new<F: Future<Output = T> + Send + 'a>(fut: F) -> Self {
        let class = match class_of(size_of::<F>()) {
            Some(class) if align_of::<F>() <= ALIGN => class,
            _ => return Self::boxed(fut),
        };
        let raw = take(class).cast::<F>();
        // SAFETY: the block is a fresh allocation (or a free one nobody
        // else refers to) of at least `size_of::<F>()` bytes, aligned to
        // 16 >= `align_of::<F>()`: writing an `F` there is in bounds and
        // aligned. It stays there, never moved, until `drop`.
        unsafe { raw.as_ptr().write(fut) };
        let fut: NonNull<dyn Future<Output = T> + Send + 'a> = raw;
        PoolBox {
            fut,
            class: class as u8,
        }
    }

    /// Boxes `fut` on the heap (counted).
    pub fn boxed<F: Future<Output = T> + Send + 'a>(fut: F) -> Self {
        BOXED_FUTURES.fetch_add(1, Ordering::Relaxed);
        let boxed: Box<dyn Future<Output = T> + Send + 'a> = Box::new(fut);
        PoolBox {
            fut: NonNull::from(Box::leak(boxed)),
            class: BOXED,
        }
    }

    /// The pinned future, to poll it by hand.
    pub fn as_mut(&mut self) -> Pin<&mut (dyn Future<Output = T> + Send + 'a)> {
        // SAFETY: the future is valid until `drop`, `&mut self` makes this
        // the only reference to it, and it never moves (pinned in place).
        unsafe { Pin::new_unchecked(self.fut.as_mut()) }
    }
}

impl<T> Future for PoolBox<'_, T> {
    type Output = T;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<T> {
        // `PoolBox` is `Unpin`: the future it points to is what is pinned.
        self.get_mut().as_mut().poll(cx)
    }
}

impl<T> Drop for PoolBox<'_, T> {
    fn drop(&mut self) {
        if self.class == BOXED {
            // SAFETY: `boxed` made the pointer with `Box::leak` of this type.
            drop(unsafe { Box::from_raw(self.fut.as_ptr()) });
            return;
        }
        /// Gives the block back even when the future's drop panics.
        struct Give(NonNull<u8>, usize);
        impl Drop for Give {
            fn drop(&mut self) {
                give(self.0, self.1);
            }
        }
        let _give = Give(self.fut.cast(), self.class as usize);
        // SAFETY: `new` wrote a valid future here and nothing dropped it;
        // it is dropped once, in place (it is pinned), and its block is
        // given back only afterwards (by `_give`, also when this panics).
        unsafe { ptr::drop_in_place(self.fut.as_ptr()) };
    }
}

impl<T> std::fmt::Debug for PoolBox<'_, T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PoolBox")
            .field("class", &self.class)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
#[path = "future_pool_tests.rs"]
mod tests;
