//! A per-queue executor run by the queue's own vring worker thread: request
//! futures are polled where their chains were popped, and a completion
//! (woken from the io_uring thread) wakes the worker through an eventfd in
//! its epoll set. No hop through another thread pool on the way in or out.
//!
//! ```text
//!  worker thread: kick ─► pop + push futures ─► poll ─► (I/O submitted)
//!  ring thread:   CQE ─► waker ─► eventfd (once until polled) ─► worker epoll
//!  worker thread: wake event ─► poll ─► completions: status, used ring, signal
//! ```
//!
//! Futures run inside the tokio runtime's context (`Handle::enter`), so the
//! volume may use tokio timers and `spawn` as it would on a tokio worker.

use std::future::Future;
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use futures::stream::{FuturesUnordered, StreamExt};
use futures::task::ArcWake;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

/// A request future.
pub type Task = Pin<Box<dyn Future<Output = ()> + Send>>;

/// Wakes the worker thread: one eventfd write until the next poll.
#[derive(Debug)]
struct WakeFd {
    fd: EventFd,
    pending: AtomicBool,
}

impl ArcWake for WakeFd {
    fn wake_by_ref(arc_self: &Arc<Self>) {
        if !arc_self.pending.swap(true, Ordering::AcqRel) {
            // A full counter (impossible: we read it on every poll) would
            // only mean a wake-up is already pending.
            let _ = arc_self.fd.write(1);
        }
    }
}

/// The futures of one queue.
pub struct QueueExecutor {
    tasks: Mutex<FuturesUnordered<Task>>,
    wake: Arc<WakeFd>,
}

impl std::fmt::Debug for QueueExecutor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QueueExecutor")
            .field("wake_fd", &self.wake.fd.as_raw_fd())
            .finish()
    }
}

impl QueueExecutor {
    /// An empty executor with its wake-up eventfd.
    pub fn new() -> io::Result<QueueExecutor> {
        Ok(QueueExecutor {
            tasks: Mutex::new(FuturesUnordered::new()),
            wake: Arc::new(WakeFd {
                fd: EventFd::new(EFD_NONBLOCK)?,
                pending: AtomicBool::new(false),
            }),
        })
    }

    /// The eventfd to watch: readable when futures want polling.
    pub fn wake_fd(&self) -> RawFd {
        self.wake.fd.as_raw_fd()
    }

    /// Adds a future; it is first polled by the next [`QueueExecutor::run`].
    pub fn push(&self, task: Task) {
        self.tasks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(task);
    }

    /// Polls every ready future until none is.
    pub fn run(&self) {
        self.wake.pending.store(false, Ordering::Release);
        // Non-blocking: EAGAIN just means nothing was written yet.
        let _ = self.wake.fd.read();
        let waker = futures::task::waker(self.wake.clone());
        let mut cx = Context::from_waker(&waker);
        let mut tasks = self.tasks.lock().unwrap_or_else(|e| e.into_inner());
        while let Poll::Ready(Some(())) = tasks.poll_next_unpin(&mut cx) {}
    }
}
