//! Unit tests of the future pool: reuse, drop on another thread, panics in
//! poll and in drop, fallbacks to the heap, the per-class cap.

use std::future::Future;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

use super::*;

fn poll_once<T>(f: &mut PoolBox<'_, T>) -> Poll<T> {
    let mut cx = Context::from_waker(Waker::noop());
    Pin::new(f).poll(&mut cx)
}

fn addr<T>(f: &PoolBox<'_, T>) -> usize {
    f.fut.as_ptr() as *mut u8 as usize
}

#[test]
fn a_dropped_futures_block_serves_the_next_future_of_its_class() {
    let a = PoolBox::new(async { 1u32 });
    let first = addr(&a);
    assert_ne!(a.class, BOXED);
    drop(a);
    let mut b = PoolBox::new(async { 2u32 });
    assert_eq!(addr(&b), first, "the freed block is reused (LIFO)");
    assert_eq!(poll_once(&mut b), Poll::Ready(2));
}

#[test]
fn size_classes_cover_64_bytes_to_32_kib() {
    assert_eq!(class_of(0), Some(0));
    assert_eq!(class_of(64), Some(0));
    assert_eq!(class_of(65), Some(1));
    assert_eq!(class_of(128), Some(1));
    assert_eq!(class_of(4096), Some(6));
    assert_eq!(class_of(32768), Some(9));
    assert_eq!(class_of(32769), None);
    for size in [1, 63, 64, 65, 1000, 4096, 32768] {
        let class = class_of(size).expect("a class");
        assert!(layout(class).size() >= size);
        assert!(class == 0 || layout(class - 1).size() < size);
    }
}

#[test]
fn a_borrowing_future_runs_and_drops_what_it_captured() {
    let owned = Arc::new(5u64);
    let data = [1u8, 2, 3];
    let slice = &data[..];
    let held = owned.clone();
    let mut f = PoolBox::new(async move {
        let _keep = held;
        slice.iter().map(|&b| b as u64).sum::<u64>()
    });
    assert_eq!(Arc::strong_count(&owned), 2);
    assert_eq!(poll_once(&mut f), Poll::Ready(6));
    drop(f);
    assert_eq!(Arc::strong_count(&owned), 1);
}

#[test]
fn a_future_made_on_one_thread_drops_on_another() {
    let owned = Arc::new(());
    let held = owned.clone();
    let mut f = PoolBox::new(async move {
        std::future::pending::<()>().await;
        drop(held);
    });
    assert_eq!(poll_once(&mut f), Poll::Pending);
    let block = addr(&f);
    let reused = std::thread::spawn(move || {
        drop(f);
        // The block is on this thread's list now: the next future of the
        // same class here gets it.
        let g = PoolBox::new(async move {
            std::future::pending::<()>().await;
        });
        addr(&g) == block
    })
    .join()
    .expect("thread");
    assert!(reused);
    assert_eq!(Arc::strong_count(&owned), 1, "its captures were dropped");
}

#[test]
fn a_panic_in_poll_leaves_a_future_that_drops_cleanly() {
    let owned = Arc::new(());
    let held = owned.clone();
    let mut f = PoolBox::new(async move {
        let _keep = held;
        panic!("poll panics");
    });
    let caught = catch_unwind(AssertUnwindSafe(|| poll_once(&mut f)));
    assert!(caught.is_err());
    drop(f);
    assert_eq!(Arc::strong_count(&owned), 1);
    let mut g = PoolBox::new(async { 3u8 });
    assert_eq!(poll_once(&mut g), Poll::Ready(3));
}

struct PanicOnDrop;

impl Drop for PanicOnDrop {
    fn drop(&mut self) {
        panic!("drop panics");
    }
}

#[test]
fn a_panic_in_drop_still_gives_the_block_back() {
    let guard = PanicOnDrop;
    let f = PoolBox::new(async move {
        let _g = guard;
        std::future::pending::<()>().await;
    });
    let block = addr(&f);
    assert!(catch_unwind(AssertUnwindSafe(|| drop(f))).is_err());
    let g = PoolBox::new(async move {
        let _g = [0u8; 1];
        std::future::pending::<()>().await;
    });
    assert_eq!(addr(&g), block, "the block went back to the list");
}

#[test]
fn oversize_and_overaligned_futures_are_boxed() {
    let big = [7u8; 40000];
    let before = stats().boxed_futures;
    let mut f = PoolBox::new(async move { big.iter().map(|&b| b as u64).sum::<u64>() });
    assert_eq!(f.class, BOXED);
    assert_eq!(poll_once(&mut f), Poll::Ready(7 * 40000));
    drop(f);

    #[repr(align(64))]
    struct Aligned(u8);
    let aligned = Aligned(9);
    // Moved whole into the future (a closure would capture only the field).
    let mut g = PoolBox::new(async move {
        let whole = aligned;
        whole.0
    });
    assert_eq!(g.class, BOXED);
    assert_eq!(addr(&g) % 64, 0);
    assert_eq!(poll_once(&mut g), Poll::Ready(9));
    assert!(stats().boxed_futures >= before + 2);
}

#[test]
fn a_thread_keeps_at_most_its_cap_of_free_blocks() {
    std::thread::spawn(|| {
        let class = 3; // 512 bytes
        let cap = CACHE_BYTES / layout(class).size();
        let live: Vec<_> = (0..cap + 10)
            .map(|i| {
                let pad = [i as u8; 300];
                PoolBox::new(async move { pad[0] })
            })
            .collect();
        assert!(live.iter().all(|f| f.class as usize == class));
        let before = stats().released_blocks;
        drop(live);
        assert!(stats().released_blocks >= before + 10);
        CACHE.with(|c| {
            assert_eq!(c.counts[class].get(), cap);
            assert_eq!(c.bytes.get(), CACHE_BYTES);
        });
    })
    .join()
    .expect("thread");
}

#[test]
fn steady_state_takes_nothing_from_the_heap_on_this_thread() {
    std::thread::spawn(|| {
        for _ in 0..2 {
            let live: Vec<_> = (0..32).map(|i| PoolBox::new(async move { i })).collect();
            drop(live);
        }
        CACHE.with(|c| {
            let before = c.counts[0].get();
            let live: Vec<_> = (0..32).map(|i| PoolBox::new(async move { i })).collect();
            assert_eq!(c.counts[0].get(), before - 32, "all 32 from the list");
            drop(live);
            assert_eq!(c.counts[0].get(), before);
        });
    })
    .join()
    .expect("thread");
}
