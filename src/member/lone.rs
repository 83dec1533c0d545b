//! Queue-depth-1 requests run on the caller's thread (issue 10).
//!
//! Through the ring a request takes two thread hand-offs: the caller wakes
//! the ring thread (eventfd), which submits and waits; the completion wakes
//! the ring thread, which wakes the caller. On a loaded machine each
//! wake-up waits for a CPU, so a lone request pays twice for a scheduler.
//! When the engine has nothing in flight and the caller starts nothing else
//! in the meantime, the request is one `preadv2`/`pwritev2` on the caller's
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
//! A request inline blocks a runtime worker for the device's latency, so
//! it is bounded (session 16; a held member must not freeze the daemon):
//! - only members whose [`Gate`] is open: regular files on a local disk
//!   file system (ext4, XFS, btrfs, F2FS), never a block device node, a
//!   FUSE, network or memory file system;
//! - one request inline at a time per engine (the process shares one):
//!   a stalled member holds at most one runtime worker, the others serve
//!   the control socket, the other volumes and every timeout;
//! - the syscall carries `RWF_NOWAIT`: where the kernel would block (an
//!   allocating write into a hole, a contended inode lock, no free device
//!   tag, a buffered read missing the page cache) it refuses with EAGAIN
//!   and the request goes to the ring; a refusal as not supported closes
//!   the member's gate for good. A partial transfer finishes inline
//!   without the flag;
//! - a request that took over 20 ms inline (a stalling device) sends every
//!   request to the ring for a second.
//!
//! Only reads and writes of at most [`LONE_MAX`] bytes qualify: not
//! flushes, FUA writes or fallocate. A write of the widening logic that
//! asked for `RWF_NOWAIT` itself (off the 4 KiB granule, session 17) gets
//! the inline refusal as its EAGAIN at once, not after a ring round trip. The syscall finishes inside one poll, so dropping the future
//! cannot leave the kernel holding the caller's memory.
//! `VRAID_LONE_INLINE=0` turns it off.

use std::cell::Cell;
use std::fs::File;
use std::future::Future;
use std::os::fd::AsRawFd;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
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
/// Lone requests the kernel refused with EAGAIN (sent to the ring).
static REFUSED: AtomicU64 = AtomicU64::new(0);

thread_local! {
    /// Member requests begun on this thread (any engine path).
    static BEGUN: Cell<u64> = const { Cell::new(0) };
    /// Requests run inline on this thread (tests).
    static INLINE_HERE: Cell<u64> = const { Cell::new(0) };
    /// Inline tries refused on this thread (tests).
    static REFUSED_HERE: Cell<u64> = const { Cell::new(0) };
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

/// Lone requests the kernel refused inline (`RWF_NOWAIT`: it would have
/// blocked), run on the ring instead.
pub fn refused_runs() -> u64 {
    REFUSED.load(Ordering::Relaxed)
}

/// Requests run inline so far on the calling thread.
#[cfg(test)]
pub(crate) fn inline_runs_here() -> u64 {
    INLINE_HERE.with(Cell::get)
}

/// Inline tries refused (EAGAIN) so far on the calling thread.
#[cfg(test)]
pub(crate) fn refused_runs_here() -> u64 {
    REFUSED_HERE.with(Cell::get)
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
        Op::Write { buf, fua, .. } => !fua && buf.len() <= LONE_MAX,
        Op::ReadV { iov, .. } => iov.len() <= LONE_MAX,
        Op::WriteV { iov, fua, .. } => !fua && iov.len() <= LONE_MAX,
        Op::Flush | Op::Fallocate { .. } => false,
    }
}

/// Runs `op` on `file`: inline if it is a lone request the bounds allow
/// (module header), else on `ring`.
pub(crate) async fn run(ring: &UringEngine, gate: &Gate, file: &Arc<File>, op: Op) -> OpResult {
    let mark = begin();
    if !(gate.is_open() && ring.lone_inline() && qualifies(&op) && ring.idle() && !backing_off()) {
        return ring.run(Arc::clone(file), op).await;
    }
    YieldOnce(false).await;
    if now() != mark || !ring.idle() {
        return ring.run(Arc::clone(file), op).await;
    }
    let Some(_slot) = Slot::claim(ring) else {
        return ring.run(Arc::clone(file), op).await;
    };
    let started = Instant::now();
    let op = match try_nowait(file, op) {
        Tried::Done(result) => {
            INLINE_RUNS.fetch_add(1, Ordering::Relaxed);
            INLINE_HERE.with(|c| c.set(c.get() + 1));
            if started.elapsed() > SLOW {
                back_off();
            }
            return result;
        }
        Tried::WouldBlock(op) => {
            REFUSED.fetch_add(1, Ordering::Relaxed);
            REFUSED_HERE.with(|c| c.set(c.get() + 1));
            if matches!(op, Op::Write { nowait: true, .. }) {
                // The caller asked for RWF_NOWAIT itself (a write off the
                // granule): the refusal is its answer; the ring would only
                // be refused again, a round trip later.
                return Err(std::io::Error::from_raw_os_error(libc::EAGAIN));
            }
            op
        }
        Tried::Unsupported(op) => {
            gate.close();
            op
        }
    };
    drop(_slot);
    ring.run(Arc::clone(file), op).await
}

/// Whether a member's lone requests may run inline: decided at open from
/// what the member is, closed for good when the kernel refuses
/// `RWF_NOWAIT` on it as not supported.
#[derive(Debug)]
pub(crate) struct Gate(AtomicBool);

impl Gate {
    /// Open for a regular file on a local disk file system
    /// ([`local_disk_fs`]); closed for a block device node or anything else.
    pub(crate) fn for_member(file: &File, is_block_device: bool) -> Gate {
        Gate(AtomicBool::new(!is_block_device && local_disk_fs(file)))
    }

    /// Whether lone requests of this member may run inline.
    pub(crate) fn is_open(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }

    fn close(&self) {
        if self.0.swap(false, Ordering::Relaxed) {
            tracing::debug!("RWF_NOWAIT not supported: the member's requests stay on the ring");
        }
    }
}

/// Whether `file` is on a local disk file system whose direct I/O honours
/// `RWF_NOWAIT`: ext4, XFS, btrfs, F2FS. FUSE (a user-space server can
/// hold a request for ever), network and memory file systems are not.
fn local_disk_fs(file: &File) -> bool {
    const EXT4: i64 = 0xEF53;
    const XFS: i64 = 0x5846_5342;
    const BTRFS: i64 = 0x9123_683E;
    const F2FS: i64 = 0xF2F5_2010;
    let mut st = std::mem::MaybeUninit::<libc::statfs>::zeroed();
    // SAFETY: a valid descriptor and room for one statfs.
    if unsafe { libc::fstatfs(file.as_raw_fd(), st.as_mut_ptr()) } != 0 {
        return false;
    }
    // SAFETY: fstatfs succeeded, so it filled `st`.
    // `f_type` is i64 here, but i32/u32 on other targets.
    #[allow(clippy::unnecessary_cast)]
    let kind = unsafe { st.assume_init() }.f_type as i64;
    [EXT4, XFS, BTRFS, F2FS].contains(&kind)
}

/// The engine's one inline request, held while its syscall runs.
struct Slot<'a>(&'a AtomicBool);

impl<'a> Slot<'a> {
    /// The slot, unless another lone request is inline now.
    fn claim(ring: &'a UringEngine) -> Option<Slot<'a>> {
        let flag = ring.lone_running();
        flag.compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed)
            .ok()
            .map(|_| Slot(flag))
    }
}

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Release);
    }
}

/// What an inline try with `RWF_NOWAIT` came to.
enum Tried {
    /// Done (all of it, or the rest finished without the flag).
    Done(OpResult),
    /// The kernel would have blocked: the op, untouched, for the ring.
    WouldBlock(Op),
    /// The file does not support `RWF_NOWAIT`: the op for the ring.
    Unsupported(Op),
}

/// One `preadv2`/`pwritev2` of `op` with `RWF_NOWAIT` on the calling
/// thread; a partial transfer is finished by the plain inline engine.
fn try_nowait(file: &File, mut op: Op) -> Tried {
    let mut single = libc::iovec {
        iov_base: std::ptr::null_mut(),
        iov_len: 0,
    };
    if matches!(op, Op::Flush | Op::Fallocate { .. }) {
        return Tried::Done(sync::run_inline(file, op));
    }
    let write = matches!(op, Op::Write { .. } | Op::WriteV { .. });
    let (offset, segs): (u64, &[libc::iovec]) = match &mut op {
        Op::Read { offset, buf } | Op::Write { offset, buf, .. } => {
            single.iov_base = buf.as_mut_slice().as_mut_ptr().cast();
            single.iov_len = buf.len();
            (*offset, std::slice::from_ref(&single))
        }
        Op::ReadV { offset, iov } | Op::WriteV { offset, iov, .. } => (*offset, iov.rest()),
        Op::Flush | Op::Fallocate { .. } => unreachable!("returned above"),
    };
    let (fd, ptr, count) = (file.as_raw_fd(), segs.as_ptr(), segs.len() as libc::c_int);
    let Ok(at) = i64::try_from(offset) else {
        return Tried::Done(sync::run_inline(file, op));
    };
    // SAFETY: the segments are the op's own buffer or memory its caller
    // keeps borrowed for the whole call (`IoVecs`' contract); the fd is
    // kept open by `file`; the call ends before this function returns.
    let n = unsafe {
        if write {
            libc::pwritev2(fd, ptr, count, at, libc::RWF_NOWAIT)
        } else {
            libc::preadv2(fd, ptr, count, at, libc::RWF_NOWAIT)
        }
    };
    if n < 0 {
        let e = std::io::Error::last_os_error();
        return match e.raw_os_error() {
            Some(libc::EAGAIN) => Tried::WouldBlock(op),
            Some(libc::EOPNOTSUPP) => Tried::Unsupported(op),
            _ => Tried::Done(Err(e)),
        };
    }
    Tried::Done(finish(file, op, n as usize))
}

/// Finishes `op` after `done` bytes went through: nothing left, or the
/// rest (a short transfer; a read at end-of-file) on the inline engine.
fn finish(file: &File, op: Op, done: usize) -> OpResult {
    if done == op.len() {
        return Ok(match op {
            Op::Read { buf, .. } => Some(buf),
            _ => None,
        });
    }
    match op {
        Op::ReadV { offset, mut iov } => {
            iov.advance(done);
            sync::run_inline(
                file,
                Op::ReadV {
                    offset: offset + done as u64,
                    iov,
                },
            )
        }
        Op::WriteV {
            offset,
            mut iov,
            fua,
        } => {
            iov.advance(done);
            let offset = offset + done as u64;
            sync::run_inline(file, Op::WriteV { offset, iov, fua })
        }
        op => sync::finish_owned(file, op, done),
    }
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
