//! The requests in flight on one NBD connection or vhost-user queue: slots
//! whose futures are polled only when woken, with no allocation per
//! request (issue 10; `FuturesUnordered` allocates a task node for every
//! request it takes).
//!
//! ```text
//!  push(fut) ─► a free slot i (pooled future) ─► i on the ready list
//!  slot i's waker (made once per slot, reused) ─► i on the ready list
//!        (once until polled) ─► wakes the connection's task
//!  poll_next ─► takes the ready list ─► polls those slots ─► the first
//!        that finished: its reply, its slot free again
//! ```
//!
//! The slots, their wakers and both ready lists are made as the set first
//! grows (to at most `MAX_IN_FLIGHT`) and then reused: in steady state a
//! request allocates nothing here (its future lives in the future pool).

use std::future::Future as _;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Wake, Waker};

use futures::task::AtomicWaker;
use futures::Stream;

use crate::block::BoxFuture;

/// What a slot's waker reaches.
struct Shared {
    /// Slots woken since the last poll.
    ready: Mutex<Vec<usize>>,
    /// The task polling the set.
    parent: AtomicWaker,
}

/// A slot's waker: queues the slot once until the set polls it.
struct SlotWaker {
    index: usize,
    /// True while the slot is on a ready list.
    queued: AtomicBool,
    shared: Arc<Shared>,
}

impl Wake for SlotWaker {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        if !self.queued.swap(true, Ordering::AcqRel) {
            let mut ready = self.shared.ready.lock().unwrap_or_else(|p| p.into_inner());
            ready.push(self.index);
            drop(ready);
            self.shared.parent.wake();
        }
    }
}

struct Slot<T> {
    fut: Option<BoxFuture<'static, T>>,
    state: Arc<SlotWaker>,
    waker: Waker,
}

/// Futures in flight, each polled when its own waker fires.
pub(crate) struct RequestSet<T> {
    slots: Vec<Slot<T>>,
    free: Vec<usize>,
    /// Ready slots taken from `shared.ready`, still to poll.
    local: Vec<usize>,
    shared: Arc<Shared>,
    len: usize,
}

impl<T> RequestSet<T> {
    /// An empty set with room for `capacity` before its lists grow.
    pub(crate) fn with_capacity(capacity: usize) -> Self {
        RequestSet {
            slots: Vec::with_capacity(capacity),
            free: Vec::with_capacity(capacity),
            local: Vec::with_capacity(capacity),
            shared: Arc::new(Shared {
                ready: Mutex::new(Vec::with_capacity(capacity)),
                parent: AtomicWaker::new(),
            }),
            len: 0,
        }
    }

    /// Futures not finished yet.
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Adds `fut`; it is polled at the next `poll_next`.
    pub(crate) fn push(&mut self, fut: BoxFuture<'static, T>) {
        let index = self.free.pop().unwrap_or_else(|| self.grow());
        let slot = &mut self.slots[index];
        slot.fut = Some(fut);
        if !slot.state.queued.swap(true, Ordering::AcqRel) {
            self.local.push(index);
        }
        self.len += 1;
    }

    /// A new slot (the set grows only up to its largest size in flight).
    fn grow(&mut self) -> usize {
        let index = self.slots.len();
        let state = Arc::new(SlotWaker {
            index,
            queued: AtomicBool::new(false),
            shared: Arc::clone(&self.shared),
        });
        let waker = Waker::from(Arc::clone(&state));
        self.slots.push(Slot {
            fut: None,
            state,
            waker,
        });
        index
    }

    /// The next ready slot, from the local list or else the shared one.
    fn next_ready(&mut self) -> Option<usize> {
        if self.local.is_empty() {
            let mut ready = self.shared.ready.lock().unwrap_or_else(|p| p.into_inner());
            std::mem::swap(&mut *ready, &mut self.local);
        }
        self.local.pop()
    }
}

impl<T> Stream for RequestSet<T> {
    type Item = T;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<T>> {
        let this = &mut *self;
        if this.len == 0 {
            return Poll::Ready(None);
        }
        this.shared.parent.register(cx.waker());
        // A future that wakes itself at every poll must not keep this
        // loop (and the connection's other work) going forever.
        let mut budget = this.slots.len() + 1;
        while let Some(index) = this.next_ready() {
            let slot = &mut this.slots[index];
            slot.state.queued.store(false, Ordering::Release);
            // A late wake of a slot that finished meanwhile: nothing to poll.
            let Some(fut) = slot.fut.as_mut() else {
                continue;
            };
            if let Poll::Ready(out) = Pin::new(fut).poll(&mut Context::from_waker(&slot.waker)) {
                slot.fut = None;
                this.free.push(index);
                this.len -= 1;
                return Poll::Ready(Some(out));
            }
            budget -= 1;
            if budget == 0 {
                cx.waker().wake_by_ref();
                break;
            }
        }
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::StreamExt;

    #[tokio::test]
    async fn gives_every_output_and_reuses_its_slots() {
        let mut set = RequestSet::with_capacity(4);
        for round in 0..3u32 {
            let (tx, rx): (Vec<_>, Vec<_>) =
                (0..4).map(|_| tokio::sync::oneshot::channel()).unzip();
            for (k, rx) in rx.into_iter().enumerate() {
                set.push(BoxFuture::new(async move { rx.await.unwrap() + k as u32 }));
            }
            assert!(futures::poll!(set.next()).is_pending());
            for (k, tx) in tx.into_iter().enumerate().rev() {
                tx.send(round * 10 + k as u32).unwrap();
            }
            let mut got = Vec::new();
            while got.len() < 4 {
                got.push(set.next().await.unwrap());
            }
            got.sort();
            let want: Vec<u32> = (0..4).map(|k| round * 10 + 2 * k).collect();
            assert_eq!(got, want);
            assert!(set.is_empty());
        }
        assert_eq!(set.slots.len(), 4, "slots reused, not added");
        assert_eq!(set.next().await, None);
    }

    #[tokio::test]
    async fn a_future_that_always_wakes_itself_does_not_starve_the_others() {
        let mut set = RequestSet::with_capacity(2);
        set.push(BoxFuture::new(async {
            let mut polls = 0u32;
            while polls < u32::MAX {
                tokio::task::yield_now().await;
                polls += 1;
            }
            polls
        }));
        set.push(BoxFuture::new(async { 7u32 }));
        assert_eq!(set.next().await, Some(7));
        assert_eq!(set.len(), 1);
    }
}
