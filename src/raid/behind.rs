//! Write-behind for RAID-1 write-mostly members (docs/FORMAT.md §6,
//! "Write-mostly and write-behind members", crash cases 76-83).
//!
//! ```text
//!  raid1 write (region locks held) ─► admit(len): wait for room under the
//!      lag limits ─► queue a Job (owned copy + intent hold) ─► other
//!      members ─► ack
//!  dispatcher task: jobs in arrival order; a job overlapping one in
//!      flight to the same member waits for it ─► Volume::write_member
//!      ─► lag -= job, intent released, `done` told
//!  FLUSH / reads of a write-behind member ─► drain(): lag == 0
//! ```
//!
//! One dispatcher task per volume, started by
//! [`super::Volume::start_write_behind`]; it holds the volume weakly and
//! ends when the volume is dropped.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};

use futures::stream::{FuturesUnordered, StreamExt};
use tokio::sync::{mpsc, oneshot, watch};

use super::intent::IntentGuard;
use super::layout::MemberIndex;
use super::level::MemberOp;
use super::volume::Volume;
use crate::block::Durability;
use crate::units::ByteOffset;

/// Default bound of the lag in bytes when write-behind is on.
pub const DEFAULT_MAX_BYTES: u64 = 8 << 20;
/// Default bound of the lag in requests.
pub const DEFAULT_MAX_REQUESTS: u64 = 256;

/// How far write-behind members may lag.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BehindLimits {
    /// Bytes queued or in flight (at least one request always passes).
    pub max_bytes: u64,
    /// Requests queued or in flight.
    pub max_requests: u64,
}

impl Default for BehindLimits {
    fn default() -> Self {
        BehindLimits {
            max_bytes: DEFAULT_MAX_BYTES,
            max_requests: DEFAULT_MAX_REQUESTS,
        }
    }
}

/// What the write-behind members have not got yet.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Lag {
    /// Bytes queued or in flight.
    pub bytes: u64,
    /// Requests queued or in flight.
    pub requests: u64,
}

/// A member write owning its payload.
#[derive(Debug)]
pub(super) enum OwnedOp {
    Write(ByteOffset, Vec<u8>, Durability),
    Discard(ByteOffset, u64),
    Zeroes(ByteOffset, u64, bool),
}

impl OwnedOp {
    /// An owned copy of `op` (None for FLUSH, which is never queued).
    pub(super) fn of(op: MemberOp<'_>) -> Option<OwnedOp> {
        Some(match op {
            MemberOp::Write(at, buf, d) => OwnedOp::Write(at, buf.to_vec(), d),
            MemberOp::WriteV(at, bufs, d) => {
                let mut data = vec![0u8; crate::iovec::len(bufs)];
                crate::iovec::gather(bufs, &mut data);
                OwnedOp::Write(at, data, d)
            }
            MemberOp::Discard(at, len) => OwnedOp::Discard(at, len),
            MemberOp::Zeroes(at, len, unmap) => OwnedOp::Zeroes(at, len, unmap),
            MemberOp::Flush => return None,
        })
    }

    fn as_op(&self) -> MemberOp<'_> {
        match self {
            OwnedOp::Write(at, buf, d) => MemberOp::Write(*at, buf, *d),
            OwnedOp::Discard(at, len) => MemberOp::Discard(*at, *len),
            OwnedOp::Zeroes(at, len, unmap) => MemberOp::Zeroes(*at, *len, *unmap),
        }
    }

    /// Member byte range.
    fn span(&self) -> (u64, u64) {
        match self {
            OwnedOp::Write(at, buf, _) => (at.get(), at.get() + buf.len() as u64),
            OwnedOp::Discard(at, len) | OwnedOp::Zeroes(at, len, _) => (at.get(), at.get() + len),
        }
    }

    /// Bytes it counts in the lag (clears count nothing but a request).
    fn weight(&self) -> u64 {
        match self {
            OwnedOp::Write(_, buf, _) => buf.len() as u64,
            _ => 0,
        }
    }
}

/// One queued member write.
pub(super) struct Job {
    pub(super) member: MemberIndex,
    pub(super) op: OwnedOp,
    /// Keeps the span's bitmap regions counted in flight until done.
    pub(super) hold: Option<IntentGuard>,
    /// Told whether the member took it.
    pub(super) done: oneshot::Sender<bool>,
}

/// The queue of one volume's write-behind members.
pub(super) struct Behind {
    max_bytes: AtomicU64,
    max_requests: AtomicU64,
    lag: watch::Sender<Lag>,
    jobs: mpsc::UnboundedSender<Job>,
    /// Writes that went behind, ever.
    pub(super) queued_total: AtomicU64,
}

impl Behind {
    /// The queue and its dispatcher task over `vol`.
    pub(super) fn start(vol: Weak<Volume>, limits: BehindLimits) -> Arc<Behind> {
        let (tx, rx) = mpsc::unbounded_channel();
        let behind = Arc::new(Behind {
            max_bytes: AtomicU64::new(limits.max_bytes),
            max_requests: AtomicU64::new(limits.max_requests.max(1)),
            lag: watch::Sender::new(Lag::default()),
            jobs: tx,
            queued_total: AtomicU64::new(0),
        });
        tokio::spawn(dispatch(vol, rx, Arc::downgrade(&behind)));
        behind
    }

    /// Changes the limits (waiting writers see them at the next change).
    pub(super) fn set_limits(&self, limits: BehindLimits) {
        self.max_bytes.store(limits.max_bytes, Ordering::Relaxed);
        self.max_requests
            .store(limits.max_requests.max(1), Ordering::Relaxed);
        self.lag.send_modify(|_| {});
    }

    /// The limits now.
    pub(super) fn limits(&self) -> BehindLimits {
        BehindLimits {
            max_bytes: self.max_bytes.load(Ordering::Relaxed),
            max_requests: self.max_requests.load(Ordering::Relaxed),
        }
    }

    /// The lag now.
    pub(super) fn lag(&self) -> Lag {
        *self.lag.borrow()
    }

    /// Waits for room for `bytes` more under the limits and counts them.
    /// An empty queue always admits (a request larger than the byte limit
    /// goes alone).
    pub(super) async fn admit(&self, bytes: u64) {
        let mut rx = self.lag.subscribe();
        loop {
            let limits = self.limits();
            let admitted = self.lag.send_if_modified(|l| {
                let fits = l.requests == 0
                    || (l.requests < limits.max_requests
                        && l.bytes.saturating_add(bytes) <= limits.max_bytes);
                if fits {
                    l.requests += 1;
                    l.bytes += bytes;
                }
                fits
            });
            if admitted {
                return;
            }
            // The sender lives in self: changed() cannot fail here.
            let _ = rx.changed().await;
        }
    }

    /// Queues an admitted job.
    pub(super) fn queue(&self, job: Job) {
        self.queued_total.fetch_add(1, Ordering::Relaxed);
        if let Err(e) = self.jobs.send(job) {
            // The dispatcher is gone (the volume is being dropped).
            let job = e.0;
            self.release(job.op.weight());
            let _ = job.done.send(false);
        }
    }

    fn release(&self, bytes: u64) {
        self.lag.send_modify(|l| {
            l.requests = l.requests.saturating_sub(1);
            l.bytes = l.bytes.saturating_sub(bytes);
        });
    }

    /// Waits until nothing is queued or in flight.
    pub(super) async fn drain(&self) {
        let mut rx = self.lag.subscribe();
        let _ = rx.wait_for(|l| l.requests == 0).await;
    }
}

/// Sends the jobs in arrival order; a job overlapping one in flight to the
/// same member waits for it.
async fn dispatch(vol: Weak<Volume>, mut rx: mpsc::UnboundedReceiver<Job>, behind: Weak<Behind>) {
    let mut running = FuturesUnordered::new();
    let mut spans: HashMap<u64, (MemberIndex, u64, u64)> = HashMap::new();
    let mut next_id = 0u64;
    loop {
        let job = tokio::select! {
            job = rx.recv() => match job {
                Some(job) => job,
                None => break,
            },
            Some(id) = running.next(), if !running.is_empty() => {
                spans.remove(&id);
                continue;
            }
        };
        let (a, b) = job.op.span();
        while spans
            .values()
            .any(|&(m, x, y)| m == job.member && x < b && a < y)
        {
            match running.next().await {
                Some(id) => drop(spans.remove(&id)),
                None => break,
            }
        }
        next_id += 1;
        spans.insert(next_id, (job.member, a, b));
        running.push(run(vol.clone(), behind.clone(), job, next_id));
    }
    while running.next().await.is_some() {}
}

/// One job: the member write, then the lag and the intent released.
async fn run(vol: Weak<Volume>, behind: Weak<Behind>, job: Job, id: u64) -> u64 {
    let ok = match vol.upgrade() {
        Some(v) => v.write_member(job.member, job.op.as_op()).await,
        None => false,
    };
    drop(job.hold);
    if let Some(b) = behind.upgrade() {
        b.release(job.op.weight());
    }
    let _ = job.done.send(ok);
    id
}
