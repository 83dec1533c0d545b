//! RAID-5 partial-parity log (docs/FORMAT.md §9): the write-path hook, the
//! per-member group committer over the journal ring, checkpoints, and the
//! replay that makes torn stripes consistent at assembly.
//!
//! ```text
//!  write_stripe: reads ─► PP ─► ParityLog::log(parity member, records)
//!                                   │ queue ─► commit slot (2 per member) ─► placement
//!                                   │   lock: everything queued ─► batch(es), seq,
//!                                   │   durable_below ─► unlock ─► FUA write
//!                                   ◄── ticket (held until data+parity are written)
//!               ─► data + parity writes ─► drop ticket
//!  ring > half full or overlap ─► checkpoint: earlier commits durable, tickets
//!                                 drained, every member flushed
//!  assembly: journal::scan_ring ─► replay(vol, records) ─► parity := PP ^ current data
//! ```
//!
//! The byte format of a batch lives in `meta::journal` (behind
//! [`BatchEncoder`]), so `raid/` does not depend on `meta/`.

use std::collections::{BTreeSet, VecDeque};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};

use futures::future::join_all;
use futures::StreamExt;
use tokio::sync::{oneshot, Notify};

use super::layout::{MemberIndex, StripeIndex};
use super::level::MemberOp;
use super::parity::xor_into;
use super::volume::Volume;
use crate::block::{BlockDevice, BlockError, BlockResult, BoxFuture, Durability};
use crate::units::ByteOffset;

/// Most entries in one batch (one 4 KiB header block).
pub const MAX_BATCH_ENTRIES: usize = 125;
/// Bytes of a batch header block.
pub const BATCH_HEADER: usize = 4096;
/// Commits (groups of batches) one member's committer may have in flight:
/// while one group's FUA write is under way the next is placed and written,
/// so a write waits for its own batch, not also for the one before it.
pub const COMMITS_IN_FLIGHT: usize = 2;

/// One journal entry: the write of `[start, start + len)` of a stripe's
/// data, and the partial parity of its rows `[rlo, rhi)`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PplRecord {
    /// The stripe.
    pub stripe: u64,
    /// First written byte within the stripe's data.
    pub start: u64,
    /// Bytes written.
    pub len: u32,
    /// First parity row (chunk-relative byte) this entry fixes.
    pub rlo: u32,
    /// End of those rows.
    pub rhi: u32,
    /// A full-stripe write or clear: parity = XOR of all data, no PP.
    pub full: bool,
    /// The partial parity of rows `[rlo, rhi)` (empty when `full`).
    pub pp: Vec<u8>,
}

impl PplRecord {
    /// Bytes of PP this entry carries.
    pub fn pp_len(&self) -> usize {
        if self.full {
            0
        } else {
            (self.rhi.saturating_sub(self.rlo)) as usize
        }
    }
}

/// The write-path hook: records must be durable before the stripe's data
/// and parity writes start.
pub trait ParityLog: Send + Sync {
    /// Appends `records` (all for stripes whose parity is on `member`) to
    /// that member's journal; resolves once they are durable. The ticket
    /// must be held until the stripe's data and parity writes completed.
    fn log(
        &self,
        member: MemberIndex,
        records: Vec<PplRecord>,
    ) -> BoxFuture<'_, BlockResult<PplTicket>>;

    /// Like [`ParityLog::log`], but resolves to a [`PplClaim`]: a ticket
    /// that checkpoints neither wait for nor keep (FORMAT.md §9, "RAID-6",
    /// order). For a write that logs to two rings at once and holds no
    /// ticket while it waits. Default: the ticket of [`ParityLog::log`]
    /// (a log without checkpoints).
    fn claim(
        &self,
        member: MemberIndex,
        records: Vec<PplRecord>,
    ) -> BoxFuture<'_, BlockResult<PplClaim>> {
        let logged = self.log(member, records);
        crate::block::BoxFuture::new(async move {
            logged.await.map(|t| PplClaim(Claim::Held { _ticket: t }))
        })
    }

    /// Largest PP one entry for `member` may carry; longer row ranges are
    /// split into several entries.
    fn max_entry_pp(&self, _member: MemberIndex) -> usize {
        usize::MAX
    }

    /// Counters for `status` and metrics (`None`: not an on-disk log).
    fn counters(&self) -> Option<JournalCounters> {
        None
    }
}

/// What a journal has done since assembly.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct JournalCounters {
    /// Batches written (FUA).
    pub batches: u64,
    /// Entries in them.
    pub entries: u64,
    /// Checkpoints taken (every member flushed).
    pub checkpoints: u64,
}

/// Held by a write from the moment its record is durable until its data
/// and parity writes completed; a checkpoint waits for every ticket.
#[derive(Debug, Default)]
pub struct PplTicket(Option<Arc<Inflight>>);

impl PplTicket {
    /// A ticket nobody waits for (test logs).
    pub fn detached() -> PplTicket {
        PplTicket(None)
    }
}

impl Drop for PplTicket {
    fn drop(&mut self) {
        if let Some(f) = self.0.take() {
            if f.count.fetch_sub(1, Ordering::AcqRel) == 1 {
                f.zero.notify_waiters();
            }
        }
    }
}

/// A durable entry whose writes may not start yet: a checkpoint of its
/// ring neither waits for it nor keeps it (it invalidates it). It becomes
/// a ticket with [`PplClaim::ticket`] while no checkpoint passed it.
#[derive(Debug)]
pub struct PplClaim(Claim);

#[derive(Debug)]
enum Claim {
    /// A ticket of a log without claims (held until the claim is dropped).
    Held { _ticket: PplTicket },
    /// On a ring: its tickets and the checkpoint generation it was made in.
    Ring(Arc<Inflight>, u64),
}

impl PplClaim {
    /// A ticket for the claimed entry, unless a checkpoint of its ring
    /// invalidated the claim (then log the entry again). The claim stays
    /// valid (or not) after the ticket is dropped.
    pub fn ticket(&self) -> Option<PplTicket> {
        match &self.0 {
            Claim::Held { .. } => Some(PplTicket::detached()),
            Claim::Ring(inflight, generation) => inflight.ticket_of(*generation),
        }
    }
}

/// Writes with a durable record whose member writes are not complete.
#[derive(Debug, Default)]
pub struct Inflight {
    count: AtomicUsize,
    zero: Notify,
    /// Checkpoint generation: claims of an older one are invalid.
    generation: Mutex<u64>,
}

impl Inflight {
    fn ticket(self: &Arc<Self>) -> PplTicket {
        self.count.fetch_add(1, Ordering::AcqRel);
        PplTicket(Some(self.clone()))
    }

    fn claim(self: &Arc<Self>) -> PplClaim {
        let generation = *self.generation.lock().unwrap_or_else(|e| e.into_inner());
        PplClaim(Claim::Ring(self.clone(), generation))
    }

    /// A ticket, counted under the generation's lock so that a checkpoint
    /// that invalidated the claim before cannot miss it.
    fn ticket_of(self: &Arc<Self>, generation: u64) -> Option<PplTicket> {
        let current = self.generation.lock().unwrap_or_else(|e| e.into_inner());
        (*current == generation).then(|| self.ticket())
    }

    /// Invalidates every claim made so far (a checkpoint starts draining).
    fn invalidate_claims(&self) {
        *self.generation.lock().unwrap_or_else(|e| e.into_inner()) += 1;
    }

    async fn drained(&self) {
        loop {
            let notified = self.zero.notified();
            if self.count.load(Ordering::Acquire) == 0 {
                return;
            }
            notified.await;
        }
    }
}

/// Encodes one batch (header block + PP bytes, padded to 4 KiB).
pub trait BatchEncoder: Send + Sync {
    /// The bytes of batch `seq` of `member`'s ring holding `records`
    /// (at most [`MAX_BATCH_ENTRIES`]); every batch of the ring below
    /// `durable_below` is durable.
    fn encode(
        &self,
        member: MemberIndex,
        seq: u64,
        durable_below: u64,
        records: &[&PplRecord],
    ) -> Vec<u8>;
}

/// An in-memory log for tests: keeps every record, durable at once.
#[derive(Debug, Default)]
pub struct MemParityLog {
    /// `(parity member, record)` in log order.
    pub records: Mutex<Vec<(MemberIndex, PplRecord)>>,
}

impl ParityLog for MemParityLog {
    fn log(
        &self,
        member: MemberIndex,
        records: Vec<PplRecord>,
    ) -> BoxFuture<'_, BlockResult<PplTicket>> {
        let mut log = self.records.lock().unwrap_or_else(|e| e.into_inner());
        log.extend(records.into_iter().map(|r| (member, r)));
        crate::block::BoxFuture::new(async { Ok(PplTicket::detached()) })
    }
}

/// A queued request: its records and where to send the outcome.
struct Pending {
    /// Tells a requester's own request apart in the queue.
    id: u64,
    records: Vec<PplRecord>,
    /// A claim instead of a ticket ([`ParityLog::claim`]).
    claim: bool,
    reply: oneshot::Sender<Result<Granted, String>>,
}

/// What a durable request gets.
enum Granted {
    Ticket(PplTicket),
    Claim(PplClaim),
}

/// Placement state of one member's ring (held while batches are placed,
/// not while they are written).
struct RingState {
    next_seq: u64,
    head: u64,
    /// Batches whose writes may not be settled: `(offset, len)`.
    live: VecDeque<(u64, u64)>,
    live_bytes: u64,
}

/// Sequence numbers placed whose write has not completed.
#[derive(Debug, Default)]
struct Writing {
    seqs: Mutex<BTreeSet<u64>>,
    changed: Notify,
}

impl Writing {
    fn oldest(&self) -> Option<u64> {
        self.seqs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .first()
            .copied()
    }

    fn insert(&self, seq: u64) {
        self.seqs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(seq);
    }

    fn remove(&self, seqs: &[u64]) {
        let mut set = self.seqs.lock().unwrap_or_else(|e| e.into_inner());
        for s in seqs {
            set.remove(s);
        }
        drop(set);
        self.changed.notify_waiters();
    }

    /// Waits until no batch below `seq` is being written.
    async fn none_below(&self, seq: u64) {
        loop {
            let notified = self.changed.notified();
            if self.oldest().is_none_or(|o| o >= seq) {
                return;
            }
            notified.await;
        }
    }
}

/// One member's journal ring.
struct MemberRing {
    dev: Arc<dyn BlockDevice>,
    len: u64,
    queue: Mutex<Vec<Pending>>,
    next_id: AtomicU64,
    state: tokio::sync::Mutex<RingState>,
    /// Tickets: writes whose batch is durable and whose member writes run.
    inflight: Arc<Inflight>,
    /// Batches placed and not yet durable.
    writing: Writing,
    /// Commits in flight ([`COMMITS_IN_FLIGHT`]).
    slots: Arc<tokio::sync::Semaphore>,
}

/// Counters of the committers, for measurements.
#[derive(Debug, Default)]
pub struct RingStats {
    /// Batches written.
    pub batches: AtomicUsize,
    /// Entries written.
    pub entries: AtomicUsize,
    /// Checkpoints taken.
    pub checkpoints: AtomicUsize,
}

/// The on-disk partial-parity log: one ring per member (a window onto its
/// journal area), group commit, checkpoints. Commits run as their own
/// tasks: a writer whose future is dropped (a client gone, requests
/// aborted) never leaves a batch placed but unwritten, nor the writes it
/// carries for others unanswered.
#[derive(Debug)]
pub struct RingLog {
    inner: Arc<LogInner>,
}

impl std::ops::Deref for RingLog {
    type Target = LogInner;

    fn deref(&self) -> &LogInner {
        &self.inner
    }
}

/// What a [`RingLog`] and its commit tasks share.
pub struct LogInner {
    /// One ring per role; a member that joins during the run gets its own
    /// ([`LogInner::attach_ring`]).
    rings: Vec<std::sync::RwLock<Option<Arc<MemberRing>>>>,
    encoder: Arc<dyn BatchEncoder>,
    /// Flushed by checkpoints (every member, rebuild targets included).
    volume: Weak<Volume>,
    /// Batch and checkpoint counters.
    pub stats: RingStats,
}

impl std::fmt::Debug for LogInner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RingLog")
            .field(
                "rings",
                &(0..self.rings.len())
                    .map(|m| self.ring(MemberIndex(m)).is_some())
                    .collect::<Vec<_>>(),
            )
            .field("stats", &self.stats)
            .finish()
    }
}

/// Errors of the journal.
#[derive(Debug, thiserror::Error)]
pub enum PplError {
    /// A journal area too small to hold a batch.
    #[error("journal area of {0} bytes is too small (needs 16 KiB)")]
    TooSmall(u64),
    /// Writing a barrier failed.
    #[error("writing the journal barrier failed")]
    Barrier(#[source] BlockError),
}

impl RingLog {
    /// A log over the journal windows of the members (`None`: no journal,
    /// e.g. a missing member) whose checkpoints flush only the rings. Call
    /// [`RingLog::write_barriers`] before use.
    pub fn new(
        journals: Vec<Option<Arc<dyn BlockDevice>>>,
        encoder: Arc<dyn BatchEncoder>,
    ) -> Result<RingLog, PplError> {
        RingLog::for_volume(journals, encoder, Weak::new())
    }

    /// A log whose checkpoints flush every member of `volume` (the volume
    /// that owns it: build both with `Arc::new_cyclic`).
    pub fn for_volume(
        journals: Vec<Option<Arc<dyn BlockDevice>>>,
        encoder: Arc<dyn BatchEncoder>,
        volume: Weak<Volume>,
    ) -> Result<RingLog, PplError> {
        let mut rings = Vec::with_capacity(journals.len());
        for j in journals {
            let ring = j.map(MemberRing::new).transpose()?.map(Arc::new);
            rings.push(std::sync::RwLock::new(ring));
        }
        Ok(RingLog {
            inner: Arc::new(LogInner {
                rings,
                encoder,
                volume,
                stats: RingStats::default(),
            }),
        })
    }
}

impl MemberRing {
    /// A ring over a member's journal window (at least 16 KiB).
    fn new(dev: Arc<dyn BlockDevice>) -> Result<MemberRing, PplError> {
        let len = dev.size() / 4096 * 4096;
        if len < 16 << 10 {
            return Err(PplError::TooSmall(len));
        }
        Ok(MemberRing {
            dev,
            len,
            queue: Mutex::new(Vec::new()),
            next_id: AtomicU64::new(0),
            state: tokio::sync::Mutex::new(RingState {
                next_seq: 1,
                head: 0,
                live: VecDeque::new(),
                live_bytes: 0,
            }),
            inflight: Arc::new(Inflight::default()),
            writing: Writing::default(),
            slots: Arc::new(tokio::sync::Semaphore::new(COMMITS_IN_FLIGHT)),
        })
    }
}

impl LogInner {
    /// The ring of `member`, if it has one.
    fn ring(&self, member: MemberIndex) -> Option<Arc<MemberRing>> {
        let slot = self.rings.get(member.0)?;
        slot.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Whether `member` has a ring.
    pub fn has_ring(&self, member: MemberIndex) -> bool {
        self.ring(member).is_some()
    }

    /// Gives `member` a new ring over `journal` (a member that joined the
    /// array during the run: rebuilt, a spare, a replacement): writes its
    /// barrier, then makes it the role's ring. Call before the member holds
    /// parity (while it is not active); the encoder must already name the
    /// new member.
    pub async fn attach_ring(
        &self,
        member: MemberIndex,
        journal: Arc<dyn BlockDevice>,
    ) -> Result<(), PplError> {
        let Some(slot) = self.rings.get(member.0) else {
            return Ok(());
        };
        let ring = Arc::new(MemberRing::new(journal)?);
        self.write_barrier(member, &ring).await?;
        *slot.write().unwrap_or_else(|e| e.into_inner()) = Some(ring);
        Ok(())
    }

    /// Writes one ring's barrier (an empty batch, seq 1, at offset 0) with FUA.
    async fn write_barrier(&self, member: MemberIndex, r: &MemberRing) -> Result<(), PplError> {
        let mut st = r.state.lock().await;
        let bytes = self.encoder.encode(member, 1, 1, &[]);
        r.dev
            .write(ByteOffset(0), &bytes, Durability::Fua)
            .await
            .map_err(PplError::Barrier)?;
        st.next_seq = 2;
        st.head = bytes.len() as u64;
        Ok(())
    }

    /// Writes every ring's barrier (an empty batch, seq 1, at offset 0)
    /// with FUA: from now on older entries are never replayed.
    pub async fn write_barriers(&self) -> Result<(), PplError> {
        let writes = (0..self.rings.len()).filter_map(|i| {
            let r = self.ring(MemberIndex(i))?;
            Some(async move { self.write_barrier(MemberIndex(i), &r).await })
        });
        join_all(writes).await.into_iter().collect()
    }

    /// Commits the records of `batch` (placement under the ring's lock,
    /// then the FUA writes) and answers every request in it.
    async fn commit(&self, member: MemberIndex, ring: &MemberRing, batch: Vec<Pending>) {
        let mut st = ring.state.lock().await;
        let placed = self.place(member, ring, &mut st, &batch).await;
        // The next commit may be placed while this one is written.
        drop(st);
        self.write_placed(ring, batch, placed).await;
    }

    /// Places the records of `batch` as one or more batches (sequence
    /// numbers, ring positions, checkpoints): `(seq, offset, bytes)`.
    async fn place(
        &self,
        member: MemberIndex,
        ring: &MemberRing,
        st: &mut RingState,
        batch: &[Pending],
    ) -> Vec<(u64, u64, Vec<u8>)> {
        let max_data = (ring.len / 4) as usize - BATCH_HEADER;
        let records: Vec<&PplRecord> = batch.iter().flat_map(|p| &p.records).collect();
        let first_seq = st.next_seq;
        let mut placed = Vec::new();
        let mut at = 0;
        while at < records.len() {
            let mut end = at;
            let mut data = 0;
            while end < records.len()
                && end - at < MAX_BATCH_ENTRIES
                && (end == at || data + records[end].pp_len() <= max_data)
            {
                data += records[end].pp_len();
                end += 1;
            }
            let group = &records[at..end];
            let len = (BATCH_HEADER + data.div_ceil(4096) * 4096) as u64;
            let mut pos = st.head;
            if pos + len > ring.len {
                pos = 0;
            }
            if st.live_bytes + len > ring.len / 2 || overlaps(&st.live, pos, len) {
                self.checkpoint(ring, st, first_seq).await;
            }
            let seq = st.next_seq;
            let durable_below = ring.writing.oldest().unwrap_or(seq).min(seq);
            let bytes = self.encoder.encode(member, seq, durable_below, group);
            debug_assert_eq!(bytes.len() as u64, len);
            ring.writing.insert(seq);
            // The sequence and position advance even if the write fails: it
            // may have landed, and a sequence number is never reused.
            st.next_seq += 1;
            st.head = pos + len;
            st.live.push_back((pos, len));
            st.live_bytes += len;
            self.stats.batches.fetch_add(1, Ordering::Relaxed);
            self.stats.entries.fetch_add(group.len(), Ordering::Relaxed);
            placed.push((seq, pos, bytes));
            at = end;
        }
        placed
    }

    /// Writes placed batches with FUA, then answers every request of the
    /// commit (with a ticket when all are durable). Tickets exist before
    /// the batches leave `writing`, so a checkpoint that saw them leave
    /// also waits for those tickets.
    async fn write_placed(
        &self,
        ring: &MemberRing,
        batch: Vec<Pending>,
        placed: Vec<(u64, u64, Vec<u8>)>,
    ) {
        let writes = placed
            .iter()
            .map(|(_, pos, bytes)| ring.dev.write(ByteOffset(*pos), bytes, Durability::Fua));
        let result = join_all(writes)
            .await
            .into_iter()
            .collect::<Result<Vec<()>, _>>()
            .map_err(|e| match &e {
                // The source keeps a remote member's "(member_timeout)".
                BlockError::Io { source, .. } => format!("{e}: {source}"),
                _ => e.to_string(),
            });
        let answers: Vec<_> = batch
            .into_iter()
            .map(|p| {
                let answer = match &result {
                    Ok(_) if p.claim => Ok(Granted::Claim(ring.inflight.claim())),
                    Ok(_) => Ok(Granted::Ticket(ring.inflight.ticket())),
                    Err(e) => Err(e.clone()),
                };
                (p.reply, answer)
            })
            .collect();
        let seqs: Vec<u64> = placed.iter().map(|(seq, ..)| *seq).collect();
        // A failed batch leaves `writing` too: its member is failed by the
        // write path and its ring is never replayed from.
        ring.writing.remove(&seqs);
        for (reply, answer) in answers {
            // A cancelled requester drops the ticket with the message.
            let _ = reply.send(answer);
        }
    }

    /// Settles every batch placed before `own` (the first batch of the
    /// commit taking the checkpoint, whose writes have not started): waits
    /// until they are durable and their writes are done, then flushes every
    /// member.
    async fn checkpoint(&self, ring: &MemberRing, st: &mut RingState, own: u64) {
        ring.writing.none_below(own).await;
        // Every entry placed before is durable and answered: claims on them
        // may not become tickets from now on (their writes have not
        // started; they log again), tickets are waited for.
        ring.inflight.invalidate_claims();
        ring.inflight.drained().await;
        let volume = self.volume.upgrade();
        let flushed = match volume {
            Some(v) => v.flush().await,
            None => ring.dev.flush().await,
        };
        if let Err(e) = flushed {
            // A member that failed its flush is failed by the volume and
            // not replayed from; the others are flushed.
            tracing::warn!(%e, "journal checkpoint: flush failed");
        }
        st.live.clear();
        st.live_bytes = 0;
        let n = self.stats.checkpoints.fetch_add(1, Ordering::Relaxed) + 1;
        tracing::debug!(
            checkpoints = n,
            batches = self.stats.batches.load(Ordering::Relaxed),
            entries = self.stats.entries.load(Ordering::Relaxed),
            "journal checkpoint"
        );
    }
}

impl RingLog {
    async fn log_to(
        &self,
        member: MemberIndex,
        records: Vec<PplRecord>,
        claim: bool,
    ) -> BlockResult<Granted> {
        let Some(ring) = self.ring(member) else {
            return Err(BlockError::io(
                format!("journal of member {}", member.0),
                std::io::Error::other("no journal on this member"),
            ));
        };
        let (reply, mut rx) = oneshot::channel();
        let id = ring.next_id.fetch_add(1, Ordering::Relaxed);
        ring.queue
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(Pending {
                id,
                records,
                claim,
                reply,
            });
        // If this future is dropped while the request is still queued, the
        // request leaves the queue: its writer let go of the stripe lock,
        // and an entry logged later than a newer write of the same stripe
        // would be replayed over it with stale partial parity.
        let _unqueue = Unqueue { ring: &ring, id };
        let answered = |r: Result<Result<Granted, String>, _>| match r {
            Ok(r) => r.map_err(|e| journal_error(&ring, e)),
            Err(_) => Err(journal_error(&ring, "journal commit abandoned".into())),
        };
        // Whoever gets a commit slot while its request is still queued
        // starts a commit of everything queued (group commit), up to
        // COMMITS_IN_FLIGHT at once. The commit is a task of its own, so
        // it completes even if this future is dropped, and the task that
        // waits in a checkpoint for tickets never holds one itself.
        let permit = tokio::select! {
            biased;
            answer = &mut rx => return answered(answer),
            permit = ring.slots.clone().acquire_owned() => permit,
        };
        let Ok(permit) = permit else {
            return Err(journal_error(&ring, "journal closed".into()));
        };
        let batch = {
            let mut queue = ring.queue.lock().unwrap_or_else(|e| e.into_inner());
            // Not queued any more: a commit took it; its answer comes.
            queue
                .iter()
                .any(|p| p.id == id)
                .then(|| std::mem::take(&mut *queue))
        };
        match batch {
            None => drop(permit),
            Some(batch) => {
                let inner = self.inner.clone();
                let ring = ring.clone();
                tokio::spawn(async move {
                    inner.commit(member, &ring, batch).await;
                    drop(permit);
                });
            }
        }
        answered(rx.await)
    }
}

/// A ticket answered for a claim or the other way round (never: each
/// request says which it wants).
fn mixed_up() -> BlockError {
    BlockError::io("journal", std::io::Error::other("journal answer mixed up"))
}

/// Removes a request from its ring's queue when dropped (see `log_to`).
struct Unqueue<'a> {
    ring: &'a MemberRing,
    id: u64,
}

impl Drop for Unqueue<'_> {
    fn drop(&mut self) {
        let mut queue = self.ring.queue.lock().unwrap_or_else(|e| e.into_inner());
        queue.retain(|p| p.id != self.id);
    }
}

fn overlaps(live: &VecDeque<(u64, u64)>, pos: u64, len: u64) -> bool {
    live.iter().any(|&(p, l)| pos < p + l && p < pos + len)
}

fn journal_error(ring: &MemberRing, message: String) -> BlockError {
    BlockError::io(
        ring.dev.name().to_string(),
        std::io::Error::new(
            journal_error_kind(&message),
            format!("journal write failed: {message}"),
        ),
    )
}

/// A remote member unreachable for `member_timeout` stays a timeout
/// through the journal (the message is all that is left of the error), so
/// the member is re-joined automatically like one failed by a data write.
fn journal_error_kind(message: &str) -> std::io::ErrorKind {
    if message.contains("(member_timeout)") {
        std::io::ErrorKind::TimedOut
    } else {
        std::io::ErrorKind::Other
    }
}

#[cfg(test)]
#[test]
fn a_journal_write_that_timed_out_stays_a_timeout() {
    let e = "I/O error on nbd://h/: unreachable for more than 2s (member_timeout): x";
    assert_eq!(journal_error_kind(e), std::io::ErrorKind::TimedOut);
    assert_eq!(journal_error_kind("EIO"), std::io::ErrorKind::Other);
}

impl ParityLog for RingLog {
    fn log(
        &self,
        member: MemberIndex,
        records: Vec<PplRecord>,
    ) -> BoxFuture<'_, BlockResult<PplTicket>> {
        crate::block::BoxFuture::new(async move {
            match self.log_to(member, records, false).await? {
                Granted::Ticket(t) => Ok(t),
                Granted::Claim(_) => Err(mixed_up()),
            }
        })
    }

    fn claim(
        &self,
        member: MemberIndex,
        records: Vec<PplRecord>,
    ) -> BoxFuture<'_, BlockResult<PplClaim>> {
        crate::block::BoxFuture::new(async move {
            match self.log_to(member, records, true).await? {
                Granted::Claim(c) => Ok(c),
                Granted::Ticket(_) => Err(mixed_up()),
            }
        })
    }

    fn counters(&self) -> Option<JournalCounters> {
        let get = |c: &AtomicUsize| c.load(Ordering::Relaxed) as u64;
        Some(JournalCounters {
            batches: get(&self.stats.batches),
            entries: get(&self.stats.entries),
            checkpoints: get(&self.stats.checkpoints),
        })
    }

    /// A quarter of the ring minus the header, so any entry fits a batch.
    fn max_entry_pp(&self, member: MemberIndex) -> usize {
        self.ring(member)
            .map_or(usize::MAX, |r| (r.len / 4) as usize - BATCH_HEADER)
    }
}

/// Logs FULL entries for whole stripes `first..first+count` (a clear) in
/// their parity members' journals; the tickets are held until the clear
/// is written. A parity member whose journal fails is failed.
pub(super) async fn log_full_stripes(
    vol: &Volume,
    first: StripeIndex,
    count: u64,
) -> Vec<PplTicket> {
    let Some(log) = vol.parity_log() else {
        return Vec::new();
    };
    let g = vol.geometry();
    let chunk = g.chunk().get();
    let mut by_member: Vec<Vec<PplRecord>> = vec![Vec::new(); g.members()];
    for s in first.0..first.0 + count {
        // RAID-6: the P and the Q member's rings both get the entry.
        let rings = [g.parity_member(StripeIndex(s)), g.q_member(StripeIndex(s))];
        for pm in rings.into_iter().flatten().filter(|&m| vol.is_active(m)) {
            by_member[pm.0].push(PplRecord {
                stripe: s,
                start: 0,
                len: (g.data_members() as u64 * chunk) as u32,
                rlo: 0,
                rhi: chunk as u32,
                full: true,
                pp: Vec::new(),
            });
        }
    }
    // One member after the other, in member order: a task holds tickets
    // only of rings below the one it waits for, so two clears can never
    // each hold a ticket the other's ring checkpoint waits for (which
    // logging them all at once, tickets kept until the last is durable,
    // could).
    let mut tickets = Vec::new();
    for (m, records) in by_member.into_iter().enumerate() {
        if records.is_empty() {
            continue;
        }
        match log.log(MemberIndex(m), records).await {
            Ok(t) => tickets.push(t),
            Err(e) => vol.fail_member(MemberIndex(m), &e).await,
        }
    }
    tickets
}

/// What a replay did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ReplayStats {
    /// Entries whose parity rows were recomputed and written.
    pub replayed: usize,
    /// Entries skipped (every row of theirs was being written to the
    /// missing member, or inconsistent with the geometry).
    pub skipped: usize,
}

/// Rows `[lo, hi)` of data chunk `d` a write of `[start, start+len)` of the
/// stripe's data touches, clipped to `[rlo, rhi)`.
pub(super) fn touched(
    chunk: u64,
    start: u64,
    len: u64,
    d: usize,
    rlo: u64,
    rhi: u64,
) -> Option<(u64, u64)> {
    let base = d as u64 * chunk;
    let lo = start.max(base).saturating_sub(base).max(rlo);
    let hi = (start + len)
        .min(base + chunk)
        .saturating_sub(base)
        .min(rhi);
    (lo < hi).then_some((lo, hi))
}

/// Journal entries replayed at once after a crash.
const REPLAY_DEPTH: usize = 16;

/// Replays `records` (each with the member whose journal held it, in log
/// order) onto `vol`: parity rows := PP XOR the current data of the
/// chunks each entry wrote. The volume must not serve yet. Flushes at the
/// end.
pub async fn replay(
    vol: &Volume,
    records: &[(MemberIndex, PplRecord)],
) -> BlockResult<ReplayStats> {
    let mut stats = ReplayStats::default();
    // Newest first: each parity row is decided by the newest entry whose
    // rows cover it; older entries never write a row a newer one covers
    // (the newer one may not be replayable, and the older PP is stale).
    // Per ring: a RAID-6 stripe's P rows are decided by the P ring, its Q
    // rows by the Q ring (FORMAT.md §9, "RAID-6").
    let mut claimed: std::collections::HashMap<(usize, u64), Vec<(u64, u64)>> = Default::default();
    let mut work = Vec::new();
    for (member, rec) in records.iter().rev() {
        let taken = claimed.entry((member.0, rec.stripe)).or_default();
        let window = (u64::from(rec.rlo), u64::from(rec.rhi));
        let free = subtract(window, taken);
        taken.push(window);
        if !free.is_empty() {
            work.push((*member, rec, free));
        }
    }
    // The rows left to each entry are disjoint from every other entry's
    // (and entries of one stripe take its lock), so they replay in any
    // order: several at once, as each is a few dependent member I/Os.
    let replays = work
        .iter()
        .map(|(member, rec, free)| replay_one(vol, *member, rec, free));
    let mut done = futures::stream::iter(replays).buffer_unordered(REPLAY_DEPTH);
    while let Some(replayed) = done.next().await {
        if replayed {
            stats.replayed += 1;
        } else {
            stats.skipped += 1;
        }
    }
    drop(done);
    if stats.replayed > 0 {
        vol.flush().await?;
    }
    Ok(stats)
}

/// `window` minus every interval of `taken`, as disjoint intervals.
pub(super) fn subtract(window: (u64, u64), taken: &[(u64, u64)]) -> Vec<(u64, u64)> {
    let mut free = vec![window];
    for &(a, b) in taken {
        free = free
            .into_iter()
            .flat_map(|(lo, hi)| [(lo, hi.min(a)), (lo.max(b), hi)])
            .filter(|(lo, hi)| lo < hi)
            .collect();
    }
    free
}

/// Recomputes the parity rows `rows` (inside the entry's window) of one
/// entry. False when nothing could be written.
async fn replay_one(
    vol: &Volume,
    member: MemberIndex,
    rec: &PplRecord,
    rows: &[(u64, u64)],
) -> bool {
    let stripe = StripeIndex(rec.stripe);
    let g = vol.geometry();
    if g.level() == super::Level::Raid6 {
        return super::ppl6::replay_one(vol, member, rec, rows).await;
    }
    if !record_fits(vol, rec) || g.parity_member(stripe) != Some(member) || !vol.is_active(member) {
        return false;
    }
    let _guard = vol.locks().lock(stripe).await;
    let Some((parity, unknown)) = fold_data(vol, rec).await else {
        return false;
    };
    // Rows where a missing member's chunk was being written cannot be
    // fixed (that chunk was never acknowledged); every other row can.
    let writable: Vec<(u64, u64)> = match unknown {
        Some(u) => rows.iter().flat_map(|&r| subtract(r, &[u])).collect(),
        None => rows.to_vec(),
    };
    !writable.is_empty() && write_parity(vol, member, rec, &parity, writable).await
}

/// The record describes a stripe of this array and a row range of a chunk.
pub(super) fn record_fits(vol: &Volume, rec: &PplRecord) -> bool {
    let g = vol.geometry();
    let chunk = g.chunk().get();
    let (rlo, rhi, len) = (u64::from(rec.rlo), u64::from(rec.rhi), u64::from(rec.len));
    rec.stripe < g.stripe_count()
        && rlo < rhi
        && rhi <= chunk
        && len > 0
        && rec
            .start
            .checked_add(len)
            .is_some_and(|e| e <= g.data_members() as u64 * chunk)
        && rec.pp.len() == rec.pp_len()
}

/// The parity of the record's rows: its partial parity (zeros for a full
/// write) XOR the data members' rows it covers, and the rows of the one
/// missing member among them, if any. `None`: a read failed, or two
/// members it covers are missing.
async fn fold_data(vol: &Volume, rec: &PplRecord) -> Option<(Vec<u8>, Option<(u64, u64)>)> {
    let g = vol.geometry();
    let chunk = g.chunk().get();
    let stripe = StripeIndex(rec.stripe);
    let (rlo, rhi, len) = (u64::from(rec.rlo), u64::from(rec.rhi), u64::from(rec.len));
    let mut parity = if rec.full {
        vec![0u8; (rhi - rlo) as usize]
    } else {
        rec.pp.clone()
    };
    let mut unknown: Option<(u64, u64)> = None;
    for d in 0..g.data_members() {
        let range = if rec.full {
            Some((rlo, rhi))
        } else {
            touched(chunk, rec.start, len, d, rlo, rhi)
        };
        let Some((lo, hi)) = range else { continue };
        let m = g.data_member(stripe, d);
        if !vol.is_active(m) {
            if unknown.is_some() {
                return None;
            }
            unknown = Some((lo, hi));
            continue;
        }
        let mut buf = vec![0u8; (hi - lo) as usize];
        let at = ByteOffset(rec.stripe * chunk + lo);
        vol.read_member(m, at, &mut buf).await.ok()?;
        xor_into(&mut parity[(lo - rlo) as usize..(hi - rlo) as usize], &buf);
    }
    Some((parity, unknown))
}

/// Writes the replayed parity of `rows` onto the parity member, block by
/// block, keeping the parity where a data block fails its checksum.
async fn write_parity(
    vol: &Volume,
    member: MemberIndex,
    rec: &PplRecord,
    parity: &[u8],
    rows: Vec<(u64, u64)>,
) -> bool {
    let rlo = u64::from(rec.rlo);
    let base = rec.stripe * vol.geometry().chunk().get();
    let mut ok = true;
    let mut kept = 0;
    for (lo, hi) in rows.into_iter().flat_map(|(lo, hi)| blocks_of(lo, hi)) {
        // A data block written wrong (it fails its checksum, and the
        // parity on disk still rebuilds the block it should be) must not
        // become the truth of its parity (docs/FORMAT.md §8).
        if vol
            .parity_holds_truth(member, base + lo / BLOCK * BLOCK)
            .await
        {
            kept += 1;
            continue;
        }
        let bytes = &parity[(lo - rlo) as usize..(hi - rlo) as usize];
        let op = MemberOp::Write(ByteOffset(base + lo), bytes, Durability::Normal);
        ok &= vol.member_op(member, op).await;
    }
    if kept > 0 {
        tracing::warn!(
            stripe = rec.stripe,
            blocks = kept,
            "replay: parity kept over data blocks that fail their checksums (the resync restores them)"
        );
    }
    ok
}

/// Bytes of one checksummed block.
const BLOCK: u64 = 4096;

/// `lo..hi` cut at 4 KiB boundaries.
pub(super) fn blocks_of(lo: u64, hi: u64) -> impl Iterator<Item = (u64, u64)> {
    let mut pos = lo;
    std::iter::from_fn(move || {
        (pos < hi).then(|| {
            let end = ((pos / BLOCK + 1) * BLOCK).min(hi);
            let r = (pos, end);
            pos = end;
            r
        })
    })
}
