//! Queue-depth-1 requests run on the caller's thread (issue 10).
//!
//! Through the ring a request takes two thread hand-offs: the caller wakes
//! the ring thread (eventfd), which submits and waits; the completion wakes
//! the ring thread, which wakes the caller. On a loaded machine each
//! wake-up waits for a CPU, so a lone request pays twice for a scheduler.
//! When the engine has nothing in flight and the caller starts nothing else
//! in the meantime, the request is one `preadv`/`pwritev2` on the caller's
//! thread instead: no hand-off at all, as qemu-nbd's one-thread loop does.
//!
//! "Lone" is decided in two polls. The first counts the request in a
//! per-thread tally of member requests begun, and yields once (the task is
//! polled again at once: a join or the NBD connection's request set first
//! polls its other futures, which may begin requests of their own). The
//! second runs it inline only if the tally did not move, the task is still
//! on the same thread and the ring is still idle; otherwise it goes to the
//! ring as any other request, so a batch (a RAID-5 read-modify-write's two
//! reads, a client's 32 queued requests) still reaches the disk at once.
//!
//! Only plain reads and writes of at most [`LONE_MAX`] bytes qualify: not
//! flushes, FUA or `RWF_NOWAIT` writes, fallocate. The syscall finishes
//! inside one poll, so dropping the future cannot leave the kernel holding
//! the caller's memory. A request that takes over 20 ms inline (a stalling
//! device) sends every request to the ring for a second, so a runtime
//! thread is not held by a slow disk twice in a row. `VRAID_LONE_INLINE=0`
//! turns it off.

use std::cell::Cell;
use std::fs::File;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use super::op::{Op, OpResult};
use super::sync;
use super::uring::UringEngine;

/// Largest request run inline (a few blocks; larger ones gain nothing).
pub(crate) const LONE_MAX: usize = 64 << 10;

/// Environment variable: `0` keeps every request on the ring.
pub const ENV: &str = "VRAID_LONE_INLINE";

/// Requests run inline (process-wide; tests and metrics).
static INLINE_RUNS: AtomicU64 = AtomicU64::new(0);

thread_local! {
    /// Member requests begun on this thread (any engine path).
    static BEGUN: Cell<u64> = const { Cell::new(0) };
    /// Requests run inline on this thread (tests).
    static INLINE_HERE: Cell<u64> = const { Cell::new(0) };
}

/// Whether lone requests may run inline by default (`VRAID_LONE_INLINE`,
/// read once); an engine can be set otherwise
/// ([`UringEngine::set_lone_inline`]).
pub(crate) fn enabled_by_env() -> bool {
    static ON: OnceLock<bool> = OnceLock::new();
    *ON.get_or_init(|| std::env::var(ENV).map_or(true, |v| v.trim() != "0"))
}

/// Requests run inline so far in this process.
pub fn inline_runs() -> u64 {
    INLINE_RUNS.load(Ordering::Relaxed)
}

/// Requests run inline so far on the calling thread.
#[cfg(test)]
pub(crate) fn inline_runs_here() -> u64 {
    INLINE_HERE.with(Cell::get)
}

/// Counts one request begun on this thread; returns the tally and the
/// thread's identity (the tally's address).
fn begin() -> (u64, usize) {
    BEGUN.with(|c| {
        let n = c.get().wrapping_add(1);
        c.set(n);
        (n, c as *const Cell<u64> as usize)
    })
}

/// The tally and identity of the current thread.
fn now() -> (u64, usize) {
    BEGUN.with(|c| (c.get(), c as *const Cell<u64> as usize))
}

/// Whether `op` may run on the caller's thread.
fn qualifies(op: &Op) -> bool {
    match op {
        Op::Read { buf, .. } => buf.len() <= LONE_MAX,
        Op::Write {
            buf, fua, nowait, ..
        } => !fua && !nowait && buf.len() <= LONE_MAX,
        Op::ReadV { iov, .. } => iov.len() <= LONE_MAX,
        Op::WriteV { iov, fua, .. } => !fua && iov.len() <= LONE_MAX,
        Op::Flush | Op::Fallocate { .. } => false,
    }
}

/// Runs `op` on `file`: inline if it is a lone request, else on `ring`.
pub(crate) async fn run(ring: &UringEngine, file: &Arc<File>, op: Op) -> OpResult {
    let mark = begin();
    if ring.lone_inline() && qualifies(&op) && ring.idle() && !backing_off() {
        YieldOnce(false).await;
        if now() == mark && ring.idle() {
            INLINE_RUNS.fetch_add(1, Ordering::Relaxed);
            INLINE_HERE.with(|c| c.set(c.get() + 1));
            let started = Instant::now();
            let result = sync::run_inline(file, op);
            if started.elapsed() > SLOW {
                back_off();
            }
            return result;
        }
    }
    ring.run(Arc::clone(file), op).await
}

/// An inline request that took longer than this (a device stalling) sends
/// every request to the ring for [`BACK_OFF`]: a runtime thread blocked
/// in a syscall serves nobody else meanwhile.
const SLOW: Duration = Duration::from_millis(20);
/// See [`SLOW`].
const BACK_OFF: Duration = Duration::from_secs(1);

/// Milliseconds since [`epoch`] until which no request runs inline.
static OFF_UNTIL_MS: AtomicU64 = AtomicU64::new(0);

fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

fn millis() -> u64 {
    epoch().elapsed().as_millis() as u64
}

fn backing_off() -> bool {
    let until = OFF_UNTIL_MS.load(Ordering::Relaxed);
    until != 0 && millis() < until
}

fn back_off() {
    let until = millis() + BACK_OFF.as_millis() as u64;
    OFF_UNTIL_MS.store(until, Ordering::Relaxed);
    tracing::debug!("a member request run inline was slow: every request on the ring for 1 s");
}

/// Pending once (waking itself), then ready.
struct YieldOnce(bool);

impl Future for YieldOnce {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.0 {
            return Poll::Ready(());
        }
        self.0 = true;
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}
