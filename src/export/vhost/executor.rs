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

use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use futures::stream::StreamExt;
use futures::task::ArcWake;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::export::request_set::RequestSet;

/// A request future.
pub type Task = crate::block::BoxFuture<'static, ()>;

/// Wakes the worker thread: one eventfd write until the next poll.
#[derive(Debug)]
struct WakeFd {
    fd: EventFd,
    pending: AtomicBool,
}

impl ArcWake for WakeFd {
    fn wake_by_ref(arc_self: &Arc<Self>) {
        if !arc_self.pending.swap(true, Ordering::SeqCst) {
            // A full counter (impossible: we read it on every poll) would
            // only mean a wake-up is already pending.
            let _ = arc_self.fd.write(1);
        }
    }
}

/// Requests a queue's set has room for before it grows (its virtqueue
/// size, as a guest sets it up by default).
const TASKS: usize = 256;

/// The futures of one queue, in reused slots (no allocation per request).
pub struct QueueExecutor {
    tasks: Mutex<RequestSet<()>>,
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
            tasks: Mutex::new(RequestSet::with_capacity(TASKS)),
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
        self.run_inner(|| {});
    }

    /// [`QueueExecutor::run`], calling `between` after the notification is
    /// consumed and before the wake flag is re-armed (a test seam for the
    /// race between the two).
    fn run_inner(&self, between: impl FnOnce()) {
        // Consume the notification first, then re-arm: a wake that lands
        // between the two is either polled below (it queued its future
        // before we poll) or, once re-armed, writes the eventfd again. The
        // other order could leave `pending` set with the eventfd drained,
        // and every later wake-up of this queue would be lost.
        // Non-blocking: EAGAIN just means nothing was written yet.
        let _ = self.wake.fd.read();
        between();
        self.wake.pending.store(false, Ordering::SeqCst);
        let waker = futures::task::waker(self.wake.clone());
        let mut cx = Context::from_waker(&waker);
        let mut tasks = self.tasks.lock().unwrap_or_else(|e| e.into_inner());
        while let Poll::Ready(Some(())) = tasks.poll_next_unpin(&mut cx) {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;
    use std::time::{Duration, Instant};

    /// Waits until the executor's eventfd is readable; false after `timeout`.
    fn wait_readable(fd: RawFd, timeout: Duration) -> bool {
        let mut pfd = libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: `pfd` is a valid pollfd for the duration of the call and
        // nfds is 1.
        let n = unsafe { libc::poll(&mut pfd, 1, timeout.as_millis() as i32) };
        n > 0
    }

    /// A future that stays pending until woken once, keeping its waker.
    fn parked(slot: Arc<Mutex<Option<std::task::Waker>>>) -> Task {
        let mut polled = false;
        crate::block::BoxFuture::new(std::future::poll_fn(move |cx| {
            if polled {
                return Poll::Ready(());
            }
            polled = true;
            *slot.lock().unwrap() = Some(cx.waker().clone());
            Poll::Pending
        }))
    }

    #[test]
    fn wake_during_run_does_not_swallow_the_next_wake() {
        // Arrange: two parked futures.
        let exec = QueueExecutor::new().unwrap();
        let (w1, w2) = (Arc::new(Mutex::new(None)), Arc::new(Mutex::new(None)));
        exec.push(parked(w1.clone()));
        exec.push(parked(w2.clone()));
        exec.run();

        // Act: the first is woken while a run is under way, the second after it.
        let wake1 = w1.lock().unwrap().take().unwrap();
        exec.run_inner(|| wake1.wake());
        w2.lock().unwrap().take().unwrap().wake();

        // Assert: the second wake-up reaches the worker's epoll.
        assert!(
            wait_readable(exec.wake_fd(), Duration::from_millis(200)),
            "the eventfd was not written: the wake-up is lost"
        );
    }

    #[test]
    fn wakes_from_another_thread_are_never_lost() {
        // Arrange: futures completed by another thread at random moments,
        // while this thread runs the executor exactly as a vring worker
        // does (epoll on the eventfd, then run).
        let exec = QueueExecutor::new().unwrap();
        let done = Arc::new(AtomicUsize::new(0));
        let (tx, rx) = std::sync::mpsc::channel::<tokio::sync::oneshot::Sender<()>>();
        const N: usize = 20_000;
        let completer = std::thread::spawn(move || {
            let mut x = 88172645463325252u64;
            for s in rx {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                if x.is_multiple_of(64) {
                    std::thread::yield_now();
                }
                let _ = s.send(());
            }
        });

        // Act
        for _ in 0..N {
            let (s, r) = tokio::sync::oneshot::channel();
            tx.send(s).unwrap();
            let done = done.clone();
            exec.push(crate::block::BoxFuture::new(async move {
                let _ = r.await;
                done.fetch_add(1, Ordering::SeqCst);
            }));
            exec.run();
        }
        drop(tx);
        let deadline = Instant::now() + Duration::from_secs(30);
        while done.load(Ordering::SeqCst) < N && Instant::now() < deadline {
            if wait_readable(exec.wake_fd(), Duration::from_secs(5)) {
                exec.run();
            } else {
                break; // no wake-up for 5 s: one was lost
            }
        }
        completer.join().unwrap();

        // Assert
        assert_eq!(done.load(Ordering::SeqCst), N, "a wake-up was lost");
    }
}
