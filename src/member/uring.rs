//! The io_uring engine: one ring, driven by one dedicated OS thread, shared by
//! any number of members.
//!
//! ```text
//!  async caller ── Request{file, op, reply slot} ──► queue (Mutex: requests
//!        ▲                                          │  and reply slots)
//!        │ reply slot + waker                       ▼ eventfd write (coalesced)
//!        └──────────────── ring thread: drain queue → backlog → SQEs
//!                          submit_and_wait(1) ◄─ CQEs (I/O done or eventfd read)
//! ```
//!
//! Replies go through a slab of reply slots kept under the queue's lock
//! (no channel allocated per request): the ring thread stores each result
//! in its slot and wakes the caller's waker the next time it takes the
//! lock (at the top of its loop, where it also takes new requests), so one
//! lock round serves both directions.
//!
//! The ring thread keeps a read on the eventfd in flight, so one
//! `submit_and_wait(1)` wakes for both completions and new work. Callers only
//! write the eventfd when the ring thread has announced (under the queue
//! lock) that it is going to sleep; while it is awake they just queue, and a
//! burst of requests costs at most one wake-up.
//!
//! Ownership: a request's buffer and file handle live in the in-flight slab
//! (keyed by `user_data`) until its completion is reaped. If the caller's
//! future was dropped the result is discarded; the kernel never sees freed
//! memory. A vectored request (`Op::ReadV`/`Op::WriteV`) points into memory
//! its caller only borrows: dropping its future blocks the dropping thread
//! until the kernel has completed it (the ring thread signals a condition
//! variable), so the borrow cannot end while the kernel still uses the
//! memory. Exports never drop requests in flight, so that wait is rare. At most `depth - 1` operations are in the ring; the rest wait in a
//! backlog (back-pressure, not an error). Short reads/writes are resubmitted
//! for the remainder; a read at end-of-file fills the rest with zeroes.
//!
//! Dropping the last [`UringEngine`] handle stops the thread once every
//! in-flight operation has completed.

use std::collections::VecDeque;
use std::fs::File;
use std::future::Future;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, Weak};
use std::task::{Context, Poll, Waker};
use std::thread::JoinHandle;

use io_uring::{opcode, squeue, types, IoUring};
use slab::Slab;

use super::op::{Op, OpResult, MAX_CHUNK};

/// Default ring size (submission queue entries).
pub const DEFAULT_DEPTH: u32 = 256;
/// `user_data` of the eventfd read.
const EVENTFD_KEY: u64 = u64::MAX;

/// A request handed to the ring thread.
struct Request {
    file: Arc<File>,
    op: Op,
    /// Its slot in [`Queue::replies`].
    reply: usize,
}

/// Where a request's outcome waits for its caller.
enum Reply {
    /// In flight; the waker of the caller's last poll.
    Waiting(Option<Waker>),
    /// Done; the caller takes it (and frees the slot).
    Done(OpResult),
    /// The caller's future was dropped: the ring thread frees the slot.
    Abandoned,
}

/// Requests waiting for the ring thread, and the replies of those taken.
#[derive(Default)]
struct Queue {
    items: Vec<Request>,
    replies: Slab<Reply>,
    /// The ring thread found the queue empty and blocks (or is about to)
    /// until a completion or an eventfd write; the next caller must kick.
    sleeping: bool,
    /// The ring thread has exited: no reply still waiting will come.
    stopped: bool,
    /// Dropped futures of vectored requests waiting on [`Shared::done`]
    /// for the kernel to finish with their caller's memory.
    blocked: usize,
}

/// State shared between handles and the ring thread.
struct Shared {
    queue: Mutex<Queue>,
    /// Signalled when results are delivered while `Queue::blocked > 0`.
    done: Condvar,
    shutdown: AtomicBool,
    eventfd: OwnedFd,
    /// Requests queued or in the ring (not yet finished by the kernel).
    busy: AtomicUsize,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn kick(&self) {
        let one: u64 = 1;
        // SAFETY: writes 8 bytes from a live local to an eventfd we own; an
        // eventfd write cannot block here (the counter never nears u64::MAX
        // because the ring thread drains it).
        let rc = unsafe {
            libc::write(
                self.eventfd.as_raw_fd(),
                (&one as *const u64).cast(),
                std::mem::size_of::<u64>(),
            )
        };
        if rc < 0 {
            tracing::error!(error = %io::Error::last_os_error(), "cannot wake the io_uring thread");
        }
    }
}

/// A handle on one io_uring and its thread. Share it with `Arc`.
pub struct UringEngine {
    shared: Arc<Shared>,
    depth: u32,
    /// Lone requests may run on the caller's thread (`member::lone`).
    lone_inline: AtomicBool,
    /// A lone request is running on some caller's thread now: at most one
    /// at a time, so a stalled member blocks one runtime worker, not all.
    lone_running: AtomicBool,
    thread: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for UringEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UringEngine")
            .field("depth", &self.depth)
            .finish()
    }
}

static SHARED_ENGINE: Mutex<Weak<UringEngine>> = Mutex::new(Weak::new());

impl UringEngine {
    /// Sets up a ring of `depth` entries (at least 2) and starts its thread.
    /// Fails if io_uring is unavailable (disabled, seccomp, old kernel).
    pub fn new(depth: u32) -> io::Result<Arc<Self>> {
        let depth = depth.max(2).next_power_of_two();
        // SAFETY: plain syscall; the returned fd is checked before use.
        let efd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC) };
        if efd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `efd` is a fresh descriptor owned by nobody else.
        let eventfd = unsafe { OwnedFd::from_raw_fd(efd) };
        let shared = Arc::new(Shared {
            queue: Mutex::new(Queue::default()),
            done: Condvar::new(),
            shutdown: AtomicBool::new(false),
            eventfd,
            busy: AtomicUsize::new(0),
        });
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let thread_shared = Arc::clone(&shared);
        let thread = std::thread::Builder::new()
            .name("vraid-uring".into())
            .spawn(move || {
                // The ring is created on its own thread (SINGLE_ISSUER binds
                // it to the creating task).
                match build_ring(depth) {
                    Ok(ring) => {
                        let _ = ready_tx.send(Ok(()));
                        RingThread::new(ring, thread_shared, depth as usize).run();
                    }
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                    }
                }
            })?;
        let ready = ready_rx
            .recv()
            .unwrap_or_else(|_| Err(io::Error::other("io_uring thread died during setup")));
        if let Err(e) = ready {
            let _ = thread.join();
            return Err(e);
        }
        Ok(Arc::new(UringEngine {
            shared,
            depth,
            lone_inline: AtomicBool::new(super::lone::enabled_by_env()),
            lone_running: AtomicBool::new(false),
            thread: Some(thread),
        }))
    }

    /// The process-wide engine, created on first use and stopped when the
    /// last handle is dropped.
    pub fn shared() -> io::Result<Arc<Self>> {
        let mut slot = SHARED_ENGINE.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(engine) = slot.upgrade() {
            return Ok(engine);
        }
        let engine = UringEngine::new(DEFAULT_DEPTH)?;
        *slot = Arc::downgrade(&engine);
        Ok(engine)
    }

    /// Ring size.
    pub fn depth(&self) -> u32 {
        self.depth
    }

    /// Whether a lone request may run on the caller's thread
    /// (`member::lone`; default from `VRAID_LONE_INLINE`).
    pub fn lone_inline(&self) -> bool {
        self.lone_inline.load(Ordering::Relaxed)
    }

    /// Lets lone requests run on the caller's thread, or sends every
    /// request through the ring.
    pub fn set_lone_inline(&self, on: bool) {
        self.lone_inline.store(on, Ordering::Relaxed);
    }

    /// The flag of the one lone request allowed to run inline at a time
    /// (`member::lone::Slot`).
    pub(crate) fn lone_running(&self) -> &AtomicBool {
        &self.lone_running
    }

    /// True when no request is queued or in the ring.
    pub(crate) fn idle(&self) -> bool {
        self.shared.busy.load(Ordering::Acquire) == 0
    }

    /// Runs `op` on `file` through the ring.
    pub(crate) async fn run(&self, file: Arc<File>, op: Op) -> OpResult {
        let borrows = op.borrows();
        self.shared.busy.fetch_add(1, Ordering::AcqRel);
        let (reply, kick) = {
            let mut queue = self.shared.lock();
            let reply = queue.replies.insert(Reply::Waiting(None));
            queue.items.push(Request { file, op, reply });
            (reply, std::mem::replace(&mut queue.sleeping, false))
        };
        if kick {
            self.shared.kick();
        }
        Completion {
            shared: &self.shared,
            reply: Some(reply),
            borrows,
        }
        .await
    }
}

/// The caller's side of a request: resolves to the result in its reply
/// slot. Dropped before that, it marks the slot abandoned.
struct Completion<'a> {
    shared: &'a Shared,
    /// The slot, until its result is taken.
    reply: Option<usize>,
    /// The op points into the caller's memory: a drop waits for the kernel.
    borrows: bool,
}

impl Future for Completion<'_> {
    type Output = OpResult;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<OpResult> {
        let Some(key) = self.reply else {
            return Poll::Ready(Err(io::Error::other("io_uring reply polled twice")));
        };
        let mut queue = self.shared.lock();
        let stopped = queue.stopped;
        let Some(slot) = queue.replies.get_mut(key) else {
            return Poll::Ready(Err(io::Error::other("io_uring reply slot lost")));
        };
        match slot {
            Reply::Done(_) => {
                let Reply::Done(result) = queue.replies.remove(key) else {
                    unreachable!("matched Done above");
                };
                drop(queue);
                self.reply = None;
                Poll::Ready(result)
            }
            _ if stopped => {
                queue.replies.remove(key);
                drop(queue);
                self.reply = None;
                Poll::Ready(Err(io::Error::other("io_uring engine stopped")))
            }
            Reply::Waiting(waker) => {
                match waker {
                    Some(w) if w.will_wake(cx.waker()) => {}
                    _ => *waker = Some(cx.waker().clone()),
                }
                Poll::Pending
            }
            Reply::Abandoned => Poll::Pending,
        }
    }
}

impl Drop for Completion<'_> {
    fn drop(&mut self) {
        let Some(key) = self.reply.take() else {
            return;
        };
        let mut queue = self.shared.lock();
        if self.borrows {
            queue = self.wait_done(queue, key);
        }
        let stopped = queue.stopped;
        // Whatever leaves the slot (a result, a waker) is dropped outside
        // the lock.
        let done = match queue.replies.get_mut(key) {
            None => None,
            Some(Reply::Waiting(_)) if !stopped => queue
                .replies
                .get_mut(key)
                .map(|slot| std::mem::replace(slot, Reply::Abandoned)),
            Some(_) => Some(queue.replies.remove(key)),
        };
        drop(queue);
        // A finished read's buffer goes back to its pool outside the lock.
        drop(done);
    }
}

impl<'a> Completion<'a> {
    /// Blocks until the request in slot `key` is no longer in the kernel's
    /// hands (its result is delivered, or the engine stopped).
    fn wait_done(&self, mut queue: MutexGuard<'a, Queue>, key: usize) -> MutexGuard<'a, Queue> {
        while matches!(queue.replies.get(key), Some(Reply::Waiting(_))) && !queue.stopped {
            queue.blocked += 1;
            queue = self
                .shared
                .done
                .wait(queue)
                .unwrap_or_else(|p| p.into_inner());
            queue.blocked -= 1;
        }
        queue
    }
}

impl Drop for UringEngine {
    fn drop(&mut self) {
        self.shared.shutdown.store(true, Ordering::SeqCst);
        self.shared.kick();
        if let Some(thread) = self.thread.take() {
            if thread.join().is_err() {
                tracing::error!("io_uring thread panicked");
            }
        }
    }
}

fn build_ring(depth: u32) -> io::Result<IoUring> {
    let tuned = IoUring::builder()
        .setup_single_issuer()
        .setup_defer_taskrun()
        .build(depth);
    match tuned {
        Ok(ring) => Ok(ring),
        Err(_) => IoUring::new(depth),
    }
}

/// One operation in the ring, with its progress.
struct RingOp {
    req: Request,
    /// Bytes already transferred (short I/O continues from here).
    done: usize,
}

/// The ring thread's state.
struct RingThread {
    ring: IoUring,
    shared: Arc<Shared>,
    inflight: Slab<RingOp>,
    /// Requests received but not yet in the ring.
    backlog: VecDeque<Request>,
    /// Slab keys whose SQE must be (re)pushed.
    pending: Vec<usize>,
    incoming: Vec<Request>,
    outbox: Outbox,
    /// Reaped completions (user_data, result), reused across rounds.
    cqes: Vec<(u64, i32)>,
    /// The eventfd read's target; boxed so its address is stable.
    efd_buf: Box<u64>,
    efd_armed: bool,
    max_inflight: usize,
}

impl RingThread {
    fn new(ring: IoUring, shared: Arc<Shared>, depth: usize) -> Self {
        RingThread {
            ring,
            shared,
            inflight: Slab::with_capacity(depth),
            backlog: VecDeque::new(),
            pending: Vec::with_capacity(depth),
            incoming: Vec::with_capacity(depth),
            outbox: Outbox {
                finished: Vec::with_capacity(depth),
                wakers: Vec::with_capacity(depth),
                discarded: Vec::with_capacity(depth),
            },
            cqes: Vec::with_capacity(depth),
            efd_buf: Box::new(0),
            efd_armed: false,
            max_inflight: depth - 1,
        }
    }

    fn run(mut self) {
        self.arm_eventfd();
        loop {
            let idle = self.take_incoming();
            self.push_sqes();
            if self.finished() {
                break;
            }
            // Block only after a round that found no new work (announced
            // under the queue lock); otherwise submit and look again, so
            // requests queued meanwhile are not held up behind slow I/O.
            match self.ring.submit_and_wait(usize::from(idle)) {
                Ok(_) => {}
                Err(e) => match e.raw_os_error() {
                    Some(libc::EINTR | libc::EBUSY | libc::EAGAIN) => {}
                    _ => {
                        tracing::error!(error = %e, "io_uring_enter failed");
                        // An unexpected kernel error: nothing notifies its
                        // end, so back off a little rather than spin.
                        std::thread::sleep(std::time::Duration::from_millis(1));
                    }
                },
            }
            self.reap();
        }
    }

    fn finished(&self) -> bool {
        self.shared.shutdown.load(Ordering::SeqCst)
            && !self.efd_armed
            && self.inflight.is_empty()
            && self.backlog.is_empty()
            && self.outbox.finished.is_empty()
    }

    /// Delivers the finished requests' results and moves queued requests
    /// into the ring's backlog and the in-flight table, under one lock.
    /// Returns true (and marks the thread sleeping) if there were none.
    fn take_incoming(&mut self) -> bool {
        let idle = {
            let mut queue = self.shared.lock();
            self.outbox.deliver(&mut queue);
            if queue.blocked > 0 {
                self.shared.done.notify_all();
            }
            std::mem::swap(&mut queue.items, &mut self.incoming);
            let idle = self.incoming.is_empty();
            queue.sleeping = idle;
            idle
        };
        self.outbox.wake();
        self.backlog.extend(self.incoming.drain(..));
        while self.inflight.len() < self.max_inflight {
            let Some(req) = self.backlog.pop_front() else {
                break;
            };
            let key = self.inflight.insert(RingOp { req, done: 0 });
            self.pending.push(key);
        }
        idle
    }

    fn arm_eventfd(&mut self) {
        let entry = opcode::Read::new(
            types::Fd(self.shared.eventfd.as_raw_fd()),
            (&mut *self.efd_buf as *mut u64).cast(),
            8,
        )
        .build()
        .user_data(EVENTFD_KEY);
        // SAFETY: the target is `efd_buf`, a heap u64 owned by this thread
        // state for the life of the ring (the ring field is dropped first, and
        // we never exit while `efd_armed`); the eventfd is owned by `shared`,
        // which outlives the ring.
        let pushed = unsafe { self.ring.submission().push(&entry) };
        if pushed.is_err() {
            // Make room and try again: the SQ holds at most `depth` entries
            // and at most `depth - 1` I/Os are outstanding.
            let _ = self.ring.submit();
            // SAFETY: as above.
            let again = unsafe { self.ring.submission().push(&entry) };
            if again.is_err() {
                tracing::error!("cannot arm the io_uring eventfd read");
                return;
            }
        }
        self.efd_armed = true;
    }

    fn push_sqes(&mut self) {
        let mut sq = self.ring.submission();
        let mut stalled = Vec::new();
        for key in self.pending.drain(..) {
            let Some(entry) = self.inflight.get_mut(key) else {
                continue;
            };
            let sqe = build_sqe(entry).user_data(key as u64);
            // SAFETY: the SQE points into `entry.req.op`'s buffer (heap memory
            // owned by the slab entry, which is only removed after its CQE is
            // reaped) or, for a vectored op, at its iovec array (owned by the
            // entry) and the caller's memory (kept borrowed until the CQE is
            // delivered: `Completion::drop` waits), and at `entry.req.file`'s
            // fd (kept open by the Arc in the same entry).
            if unsafe { sq.push(&sqe) }.is_err() {
                stalled.push(key);
            }
        }
        drop(sq);
        if !stalled.is_empty() {
            // SQ full: submit what is there; the rest goes next round.
            let _ = self.ring.submit();
            self.pending = stalled;
        }
    }

    fn reap(&mut self) {
        let mut cqes = std::mem::take(&mut self.cqes);
        cqes.extend(self.ring.completion().map(|c| (c.user_data(), c.result())));
        for &(key, res) in &cqes {
            if key == EVENTFD_KEY {
                self.efd_armed = false;
                if !self.shared.shutdown.load(Ordering::SeqCst) {
                    self.arm_eventfd();
                }
            } else {
                self.complete(key as usize, res);
            }
        }
        cqes.clear();
        self.cqes = cqes;
    }

    fn complete(&mut self, key: usize, res: i32) {
        let Some(entry) = self.inflight.get_mut(key) else {
            return;
        };
        let nowait = matches!(entry.req.op, Op::Write { nowait: true, .. });
        if res == -libc::EINTR || (res == -libc::EAGAIN && !nowait) {
            self.pending.push(key);
            return;
        }
        if res < 0 {
            self.finish(key, Err(io::Error::from_raw_os_error(-res)));
            return;
        }
        let n = res as usize;
        let outcome = match &mut entry.req.op {
            Op::Read { buf, .. } => {
                if n == 0 {
                    // End of file: the rest reads as zeroes.
                    buf.as_mut_slice()[entry.done..].fill(0);
                    Some(Ok(()))
                } else {
                    entry.done += n;
                    (entry.done >= buf.len()).then_some(Ok(()))
                }
            }
            Op::Write { buf, .. } => {
                if n == 0 {
                    Some(Err(io::Error::from(io::ErrorKind::WriteZero)))
                } else {
                    entry.done += n;
                    (entry.done >= buf.len()).then_some(Ok(()))
                }
            }
            Op::ReadV { iov, .. } => {
                if n == 0 {
                    iov.zero_rest();
                } else {
                    entry.done += n;
                    iov.advance(n);
                }
                iov.is_done().then_some(Ok(()))
            }
            Op::WriteV { iov, .. } => {
                if n == 0 {
                    Some(Err(io::Error::from(io::ErrorKind::WriteZero)))
                } else {
                    entry.done += n;
                    iov.advance(n);
                    iov.is_done().then_some(Ok(()))
                }
            }
            Op::Flush | Op::Fallocate { .. } => Some(Ok(())),
        };
        match outcome {
            Some(result) => self.finish(key, result),
            None => self.pending.push(key),
        }
    }

    fn finish(&mut self, key: usize, result: io::Result<()>) {
        let entry = self.inflight.remove(key);
        self.shared.busy.fetch_sub(1, Ordering::AcqRel);
        let result = result.map(|()| match entry.req.op {
            Op::Read { buf, .. } => Some(buf),
            _ => None,
        });
        self.outbox.finished.push((entry.req.reply, result));
    }
}

impl Drop for RingThread {
    /// The thread is leaving (shutdown or a panic): every caller still
    /// waiting is woken to find the engine stopped.
    fn drop(&mut self) {
        self.drain_inflight();
        let mut queue = self.shared.lock();
        self.outbox.deliver(&mut queue);
        queue.stopped = true;
        self.shared.done.notify_all();
        for (_, slot) in queue.replies.iter_mut() {
            if let Reply::Waiting(waker) = slot {
                self.outbox.wakers.extend(waker.take());
            }
        }
        drop(queue);
        self.outbox.wake();
    }
}

impl RingThread {
    /// Waits (bounded) for every operation still in the kernel before the
    /// thread leaves after a panic: a vectored op points into its caller's
    /// memory, which the caller may free once it sees the engine stopped.
    fn drain_inflight(&mut self) {
        // Those waiting for (re)submission are not in the kernel.
        for key in std::mem::take(&mut self.pending) {
            self.inflight.try_remove(key);
        }
        for _ in 0..10_000 {
            if self.inflight.is_empty() {
                return;
            }
            if self.ring.submit_and_wait(1).is_err() {
                // The ring cannot wait (nothing else notifies completions):
                // back off rather than spin, bounded by the 10 000 rounds.
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
            let done: Vec<u64> = self.ring.completion().map(|c| c.user_data()).collect();
            for key in done {
                if key != EVENTFD_KEY {
                    self.inflight.try_remove(key as usize);
                }
            }
        }
        tracing::error!("io_uring thread left with operations in flight");
    }
}

/// Results on their way to the callers' reply slots.
struct Outbox {
    /// Finished requests (reply slot, result), delivered at the next lock.
    finished: Vec<(usize, OpResult)>,
    /// Callers to wake once the lock is released; reused across rounds.
    wakers: Vec<Waker>,
    /// Results of abandoned requests, dropped outside the lock.
    discarded: Vec<OpResult>,
}

impl Outbox {
    /// Stores each finished result in its reply slot (the queue's lock is
    /// held) and collects the wakers to wake; abandoned slots are freed.
    fn deliver(&mut self, queue: &mut Queue) {
        for (key, result) in self.finished.drain(..) {
            let Some(slot) = queue.replies.get_mut(key) else {
                continue;
            };
            match std::mem::replace(slot, Reply::Done(result)) {
                Reply::Waiting(waker) => self.wakers.extend(waker),
                Reply::Abandoned => {
                    if let Reply::Done(result) = queue.replies.remove(key) {
                        self.discarded.push(result);
                    }
                }
                Reply::Done(_) => {}
            }
        }
    }

    /// Wakes the callers collected by [`Outbox::deliver`] and frees the
    /// abandoned results (after the lock is released).
    fn wake(&mut self) {
        for waker in self.wakers.drain(..) {
            waker.wake();
        }
        self.discarded.clear();
    }
}

/// The SQE for the remaining part of `entry` (without user_data).
fn build_sqe(entry: &mut RingOp) -> squeue::Entry {
    let fd = types::Fd(entry.req.file.as_raw_fd());
    let done = entry.done;
    match &mut entry.req.op {
        Op::Read { offset, buf } => {
            let rest = &mut buf.as_mut_slice()[done..];
            let len = rest.len().min(MAX_CHUNK) as u32;
            opcode::Read::new(fd, rest.as_mut_ptr(), len)
                .offset(*offset + done as u64)
                .build()
        }
        Op::Write {
            offset,
            buf,
            fua,
            nowait,
        } => {
            let rest = &buf.as_slice()[done..];
            let len = rest.len().min(MAX_CHUNK) as u32;
            let mut flags = if *fua { libc::RWF_DSYNC } else { 0 };
            if *nowait {
                flags |= libc::RWF_NOWAIT;
            }
            opcode::Write::new(fd, rest.as_ptr(), len)
                .offset(*offset + done as u64)
                .rw_flags(flags)
                .build()
        }
        Op::ReadV { offset, iov } => {
            let rest = iov.rest();
            opcode::Readv::new(fd, rest.as_ptr(), rest.len() as u32)
                .offset(*offset + done as u64)
                .build()
        }
        Op::WriteV { offset, iov, fua } => {
            let rest = iov.rest();
            let flags = if *fua { libc::RWF_DSYNC } else { 0 };
            opcode::Writev::new(fd, rest.as_ptr(), rest.len() as u32)
                .offset(*offset + done as u64)
                .rw_flags(flags)
                .build()
        }
        Op::Flush => opcode::Fsync::new(fd)
            .flags(types::FsyncFlags::DATASYNC)
            .build(),
        Op::Fallocate { offset, len, mode } => opcode::Fallocate::new(fd, *len)
            .offset(*offset)
            .mode(*mode)
            .build(),
    }
}
