//! The transmission phase of one connection: pipelined requests, replies out
//! of order, all on the connection's own task.
//!
//! ```text
//!  socket ─ read (batch) ─► Inbox ─ headers ─► charge bytes ─► (WRITE payload) ─► request future
//!                                     ▲ ≤ MAX_IN_FLIGHT              RequestSet       │ volume call
//!  socket ◄─ writev (batch) ◄─ Outbox ◄──────────── Reply (head + data) ◄─────────────┘
//!            written: the reply is dropped, then its bytes go back
//! ```
//!
//! One `select!` loop owns both halves of the socket, the queues and the
//! request futures: no task per request, no channel, no lock. Every branch
//! is cancel-safe (a socket read or `writev` either happened or did not, a
//! request future stays in its set), so whichever wakes first runs.
//!
//! A READ/WRITE holds its bytes from its connection's pool and the
//! server's (see `limits`) from before its payload is read until its reply
//! is written; a WRITE's payload must arrive within the write timeout (else
//! the connection ends): headers alone must not pin the pools. A client
//! that sends large READs and never reads the replies therefore pins at
//! most its connection's pool (and all such clients together at most the
//! server's), however many requests it sends. A reply not written whole
//! within the write timeout ends the connection; so does a client that
//! reads its replies at a trickle: replies pending for a whole write-timeout
//! window while fewer than `min_drain_rate` bytes/s of them left (the
//! window restarts whenever the outbox empties). With an idle timeout, a
//! connection with nothing in flight or pending and no byte from the
//! client for that long is closed (a half-sent header counts as idle).
//!
//! Reading stops on `NBD_CMD_DISC`, end of stream, a protocol violation,
//! a write failure or server shutdown; then the requests in flight finish
//! and their replies go out within [`DRAIN_TIMEOUT`]. Requests still
//! running after it are detached, not dropped (a volume write cut off
//! half-way would leave redundancy wrong); FLUSH needs no ordering here:
//! every write acknowledged before it has completed.

use std::future::Future;
use std::io;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::Arc;

use futures::future::{FutureExt, OptionFuture};
use futures::stream::StreamExt;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::sync::{watch, AcquireError, OwnedSemaphorePermit, Semaphore, TryAcquireError};
use tokio::time::Instant;

use super::catalog::Export;
use super::limits::{DropReason, Drops, NbdLimits};
use super::proto::{self, errno, Command, Request};
use super::request::{self, Charge, Context, Reply};
use super::sink::ReplySink;
use super::wire::{Inbox, Outbox};
use crate::block::BlockError;
use crate::export::in_flight::InFlightRequests;
use crate::export::request_set::RequestSet;
use crate::member::buf::AlignedBuf;

/// Requests in flight per connection before the reader stops reading.
pub const MAX_IN_FLIGHT: usize = 128;
/// How long a closing connection waits for its in-flight requests and
/// replies before dropping them.
pub const DRAIN_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// What one reply costs beside its data while it waits to be written: the
/// `Reply` and its slot in the outbox queue (which grows by doubling).
const REPLY_COST: u32 = 2 * std::mem::size_of::<Reply>() as u32;

/// Why the transmission phase ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ending {
    /// The client sent `NBD_CMD_DISC`.
    Disconnect,
    /// The client closed the connection.
    ClientGone,
    /// The client broke the protocol; the connection was dropped.
    ProtocolError,
    /// The server is shutting down.
    Shutdown,
    /// Replies could no longer be written.
    WriteFailed,
    /// A WRITE payload did not arrive within the write timeout.
    PayloadStalled,
    /// Nothing happened on the connection for the idle timeout.
    Idle,
    /// Replies were drained slower than the minimum drain rate.
    SlowDrain,
}

/// Maps a block error to an NBD error value.
pub fn nbd_error(e: &BlockError) -> u32 {
    errno_to_nbd(e.errno())
}

/// Maps a POSIX errno to the restricted set of NBD error values.
pub fn errno_to_nbd(code: i32) -> u32 {
    match code {
        libc::EPERM | libc::EROFS => errno::EPERM,
        libc::ENOMEM => errno::ENOMEM,
        libc::EINVAL => errno::EINVAL,
        libc::ENOSPC | libc::EDQUOT | libc::EFBIG => errno::ENOSPC,
        libc::EOVERFLOW => errno::EOVERFLOW,
        libc::EOPNOTSUPP => errno::ENOTSUP,
        libc::ESHUTDOWN => errno::ESHUTDOWN,
        _ => errno::EIO,
    }
}

/// One connection in transmission.
#[derive(Debug)]
pub struct Session {
    /// The export chosen during the handshake.
    pub export: Arc<Export>,
    /// Whether structured replies were negotiated.
    pub structured: bool,
    /// The metadata contexts selected for `NBD_CMD_BLOCK_STATUS`.
    pub meta: super::meta::Selection,
    /// Server-wide in-flight request counter.
    pub in_flight: Arc<InFlightRequests>,
    /// The server's limits (this connection's byte pool is sized from them).
    pub limits: NbdLimits,
    /// The server-wide byte pool.
    pub memory: Arc<Semaphore>,
    /// The server-wide budget of bytes in the volume at once.
    pub device_budget: Arc<Semaphore>,
    /// The server's counts of connections it dropped.
    pub drops: Arc<Drops>,
}

/// How the connection ends: `Err` is a socket error other than the
/// client going away.
type End = io::Result<Ending>;

/// Waiting for the server pool's bytes.
type Acquire = crate::block::BoxFuture<'static, Result<OwnedSemaphorePermit, AcquireError>>;

/// A request parsed and waiting for its bytes.
struct Waiting {
    req: Request,
    bytes: u64,
    acquire: Option<Acquire>,
    permit: Option<OwnedSemaphorePermit>,
}

/// A WRITE whose bytes are held and whose payload is being read.
struct Payload {
    req: Request,
    /// Aligned, so the members write it in place.
    data: AlignedBuf,
    filled: usize,
    charge: Charge,
    since: Instant,
}

/// A request ready to run.
struct Start {
    ctx: Arc<Context>,
    req: Request,
    payload: Option<AlignedBuf>,
    charge: Charge,
    guard: crate::export::in_flight::InFlightRequest,
}

impl Start {
    /// The request's future. A panic in it (a bug) fails only this
    /// request with EIO: the connection and its other requests, writes
    /// among them, go on rather than being dropped half-way.
    fn run(self) -> impl Future<Output = Reply> + Send + 'static {
        let (cookie, structured) = (self.req.cookie, self.ctx.structured);
        let held = self.charge.connection;
        let serve = request::serve(self.ctx, self.req, self.payload, self.charge, self.guard);
        AssertUnwindSafe(serve).catch_unwind().map(move |done| {
            done.unwrap_or_else(|_| {
                tracing::error!(cookie, "NBD request panicked, failed with EIO");
                request::panicked(cookie, structured, held)
            })
        })
    }
}

/// What woke the loop.
enum Event {
    Stop,
    Timer,
    Bytes(Option<Result<OwnedSemaphorePermit, AcquireError>>),
    Done(Reply),
    Wrote(io::Result<usize>),
    Read(io::Result<usize>),
    Idle,
}

/// The connection's state outside its request futures.
struct Pipeline<'s, R, W> {
    session: &'s Session,
    ctx: Arc<Context>,
    reader: R,
    inbox: Inbox,
    payload: Option<Payload>,
    waiting: Option<Waiting>,
    writer: W,
    writer_alive: bool,
    outbox: Outbox,
    /// Bytes of the connection's pool held, and its size.
    held: u64,
    pool: u64,
    end: Option<End>,
    drain_until: Option<Instant>,
    /// The last byte read from or written to the client, or reply queued.
    last_active: Instant,
    /// Reply bytes written, all along.
    written: u64,
    /// Since when replies are pending without a break, and `written` then.
    window: Option<(Instant, u64)>,
}

impl Session {
    /// Serves requests until the connection ends; returns why it ended.
    pub async fn run<R, W>(
        self,
        reader: R,
        writer: W,
        mut shutdown: watch::Receiver<bool>,
    ) -> io::Result<Ending>
    where
        R: AsyncRead + Unpin,
        W: ReplySink,
    {
        let mut pl = Pipeline::new(&self, reader, writer);
        let mut inflight = RequestSet::with_capacity(MAX_IN_FLIGHT);
        let stop = shutdown.wait_for(|stop| *stop);
        tokio::pin!(stop);
        let mut stopped = false;
        let timer = tokio::time::sleep_until(Instant::now());
        tokio::pin!(timer);
        loop {
            while pl.end.is_none() {
                match pl.next_start(inflight.len()) {
                    Ok(Some(start)) => inflight.push(crate::block::BoxFuture::new(start.run())),
                    Ok(None) => break,
                    Err(end) => pl.close(end),
                }
            }
            if pl.finished(inflight.is_empty()) {
                break;
            }
            let deadline = pl.next_deadline(inflight.len());
            if let Some(d) = deadline.filter(|d| *d < timer.deadline()) {
                timer.as_mut().reset(d);
            }
            let event = {
                let n = pl.writer_alive && !pl.outbox.is_empty();
                let can_read = pl.can_read(inflight.len());
                let (writer, outbox) = (&mut pl.writer, &mut pl.outbox);
                let writing = std::future::poll_fn(|cx| writer.poll_replies(cx, outbox));
                let acquire = pl.waiting.as_mut().and_then(|w| w.acquire.as_mut());
                let waits = acquire.is_some();
                let acquire = OptionFuture::from(acquire);
                let reading = read_some(&mut pl.reader, &mut pl.inbox, &mut pl.payload);
                tokio::select! {
                    biased;
                    _ = &mut stop, if !stopped => Event::Stop,
                    _ = &mut timer, if deadline.is_some() => Event::Timer,
                    r = acquire, if waits => Event::Bytes(r),
                    Some(reply) = inflight.next(), if !inflight.is_empty() => Event::Done(reply),
                    r = writing, if n => Event::Wrote(r),
                    r = reading, if can_read => Event::Read(r),
                    else => Event::Idle,
                }
            };
            match event {
                Event::Stop => {
                    stopped = true;
                    pl.close(Ok(Ending::Shutdown));
                }
                Event::Timer => {
                    if pl.on_timer(&mut timer, inflight.len()) {
                        detach(inflight, pl.outbox.is_empty());
                        break;
                    }
                }
                Event::Bytes(r) => pl.on_bytes(r),
                Event::Done(reply) => pl.on_done(reply),
                Event::Wrote(r) => pl.on_wrote(r),
                Event::Read(r) => pl.on_read(r),
                Event::Idle => pl.close(Ok(Ending::ClientGone)),
            }
        }
        pl.shut_writer().await;
        pl.end.unwrap_or(Ok(Ending::ClientGone))
    }
}

/// Reads what the client sent: into the WRITE payload being read if it
/// still wants bytes (the inbox is empty then), else into the inbox.
/// Cancel-safe: a read either happened or did not.
async fn read_some<R: AsyncRead + Unpin>(
    reader: &mut R,
    inbox: &mut Inbox,
    payload: &mut Option<Payload>,
) -> io::Result<usize> {
    match payload {
        Some(p) if p.filled < p.data.len() => {
            reader.read(&mut p.data.as_mut_slice()[p.filled..]).await
        }
        _ => reader.read(inbox.space()).await,
    }
}

/// Leaves the requests still running after the drain timeout to finish
/// on their own (unanswered): a volume request cut off half-way (a RAID-5
/// stripe with its data written and its parity not, a journal entry in
/// flight without its stripe lock) would leave redundancy wrong with no
/// crash to resync it.
fn detach(mut inflight: RequestSet<Reply>, replies_written: bool) {
    if !inflight.is_empty() {
        tracing::warn!(
            left = inflight.len(),
            "NBD client not reading replies, leaving its requests to finish unanswered"
        );
        tokio::spawn(async move { while inflight.next().await.is_some() {} });
    }
    if !replies_written {
        tracing::warn!("NBD client not reading replies, closing");
    }
}

impl<'s, R, W> Pipeline<'s, R, W>
where
    R: AsyncRead + Unpin,
    W: ReplySink,
{
    fn new(session: &'s Session, reader: R, writer: W) -> Self {
        let ctx = Arc::new(Context {
            export: session.export.clone(),
            structured: session.structured,
            meta: session.meta.clone(),
            device_budget: session.device_budget.clone(),
        });
        Pipeline {
            session,
            ctx,
            reader,
            inbox: Inbox::new(),
            payload: None,
            waiting: None,
            writer,
            writer_alive: true,
            outbox: Outbox::default(),
            held: 0,
            pool: session.limits.connection_memory,
            end: None,
            drain_until: None,
            last_active: Instant::now(),
            written: 0,
            window: None,
        }
    }

    /// Stops reading requests; the first reason to end is kept.
    fn close(&mut self, end: End) {
        if self.end.is_none() {
            self.end = Some(end);
            self.drain_until = Some(Instant::now() + DRAIN_TIMEOUT);
        }
        if let Some(p) = self.payload.take() {
            self.release(p.charge);
        }
        self.waiting = None;
    }

    fn release(&mut self, charge: Charge) {
        self.held -= charge.connection;
    }

    /// Done once reading stopped, every request ended and every reply
    /// went out (or cannot).
    fn finished(&self, idle: bool) -> bool {
        self.end.is_some() && idle && (self.outbox.is_empty() || !self.writer_alive)
    }

    fn can_read(&self, in_flight: usize) -> bool {
        let wants_payload = self
            .payload
            .as_ref()
            .is_some_and(|p| p.filled < p.data.len());
        self.end.is_none() && self.waiting.is_none() && (wants_payload || in_flight < MAX_IN_FLIGHT)
    }

    /// The earliest of: the first reply's write deadline, the WRITE
    /// payload's, the drain's, the drain-rate window's end, the idle one.
    fn next_deadline(&self, in_flight: usize) -> Option<Instant> {
        let limit = self.session.limits.write_timeout;
        let reply = self
            .outbox
            .waiting_since()
            .filter(|_| self.writer_alive)
            .map(|t| t + limit);
        let payload = self.payload.as_ref().map(|p| p.since + limit);
        let window = self
            .window
            .filter(|_| self.writer_alive && self.session.limits.min_drain_rate > 0)
            .map(|(t, _)| t + limit);
        [
            reply,
            payload,
            self.drain_until,
            window,
            self.idle_until(in_flight),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// When the connection counts as idle, if it is idle now and an idle
    /// timeout is set.
    fn idle_until(&self, in_flight: usize) -> Option<Instant> {
        let idle = self.end.is_none()
            && in_flight == 0
            && self.outbox.is_empty()
            && self.payload.is_none()
            && self.waiting.is_none();
        let limit = self.session.limits.idle_timeout.filter(|_| idle)?;
        Some(self.last_active + limit)
    }

    /// Replies pending since a window's start: keeps it, else starts or
    /// ends one.
    fn track_window(&mut self) {
        if self.outbox.is_empty() || !self.writer_alive {
            self.window = None;
        } else if self.window.is_none() {
            self.window = Some((Instant::now(), self.written));
        }
    }

    /// At a window's end: drops the connection if its replies drained
    /// slower than the minimum rate, else starts the next window.
    fn check_drain_rate(&mut self, now: Instant) {
        let (limit, rate) = (
            self.session.limits.write_timeout,
            self.session.limits.min_drain_rate,
        );
        let Some((start, at)) = self.window.filter(|(t, _)| rate > 0 && *t + limit <= now) else {
            return;
        };
        let drained = self.written - at;
        let secs = now.duration_since(start).as_secs_f64();
        if (drained as f64) < rate as f64 * secs {
            tracing::warn!(
                drained,
                "NBD client drained {drained} reply bytes in {secs:.1}s, under the minimum \
                 {rate} bytes/s, closing"
            );
            self.session.drops.record(DropReason::SlowDrain);
            self.writer_gone(Ending::SlowDrain);
        } else {
            self.window = Some((now, self.written));
        }
    }

    /// Acts on the deadlines that passed; true once the drain is over.
    fn on_timer(&mut self, timer: &mut Pin<&mut tokio::time::Sleep>, in_flight: usize) -> bool {
        let now = Instant::now();
        let limit = self.session.limits.write_timeout;
        if self.drain_until.is_some_and(|d| d <= now) {
            return true;
        }
        let stuck = self
            .outbox
            .waiting_since()
            .is_some_and(|t| t + limit <= now);
        if self.writer_alive && stuck {
            tracing::warn!("NBD client not reading replies for {limit:?}, closing");
            self.session.drops.record(DropReason::StalledReply);
            self.writer_gone(Ending::WriteFailed);
        }
        if self.writer_alive {
            self.check_drain_rate(now);
        }
        if let Some(p) = self.payload.as_ref().filter(|p| p.since + limit <= now) {
            tracing::warn!(
                length = p.req.length,
                "NBD write payload not received within {limit:?}, closing"
            );
            self.session.drops.record(DropReason::StalledPayload);
            self.close(Ok(Ending::PayloadStalled));
        }
        if self.idle_until(in_flight).is_some_and(|d| d <= now) {
            let idle = now.duration_since(self.last_active);
            tracing::info!("NBD client idle for {idle:?}, closing");
            self.session.drops.record(DropReason::Idle);
            self.close(Ok(Ending::Idle));
        }
        if let Some(d) = self.next_deadline(in_flight) {
            timer.as_mut().reset(d);
        }
        false
    }

    fn writer_gone(&mut self, why: Ending) {
        self.writer_alive = false;
        self.window = None;
        self.held -= self.outbox.clear();
        self.close(Ok(why));
    }

    fn on_bytes(&mut self, r: Option<Result<OwnedSemaphorePermit, AcquireError>>) {
        match (r, self.waiting.as_mut()) {
            (Some(Ok(permit)), Some(w)) => {
                w.permit = Some(permit);
                w.acquire = None;
            }
            _ => self.close(Ok(Ending::ProtocolError)),
        }
    }

    fn on_done(&mut self, reply: Reply) {
        if self.writer_alive {
            self.last_active = Instant::now();
            self.outbox.push(reply);
            self.track_window();
        } else {
            self.release(reply.charge);
        }
    }

    fn on_wrote(&mut self, r: io::Result<usize>) {
        match r {
            Ok(0) => self.writer_gone(Ending::WriteFailed),
            Ok(n) => {
                self.held -= self.outbox.advance(n);
                self.written += n as u64;
                self.last_active = Instant::now();
                self.track_window();
            }
            Err(e) => {
                if !is_gone(&e) {
                    tracing::warn!(error = %e, "NBD reply write failed");
                }
                self.writer_gone(Ending::WriteFailed);
            }
        }
    }

    fn on_read(&mut self, r: io::Result<usize>) {
        match r {
            Ok(0) => self.close(Ok(Ending::ClientGone)),
            Ok(n) => {
                self.last_active = Instant::now();
                match &mut self.payload {
                    Some(p) if p.filled < p.data.len() => p.filled += n,
                    _ => self.inbox.filled(n),
                }
            }
            Err(e) if is_gone(&e) => self.close(Ok(Ending::ClientGone)),
            Err(e) => self.close(Err(e)),
        }
    }

    /// The next request that can start, if any: a WRITE whose payload is
    /// all here, a request whose bytes are now held, or a new header.
    fn next_start(&mut self, in_flight: usize) -> Result<Option<Start>, End> {
        loop {
            if let Some(p) = &mut self.payload {
                p.filled += self.inbox.take_into(&mut p.data.as_mut_slice()[p.filled..]);
                if p.filled < p.data.len() {
                    return Ok(None);
                }
                return Ok(self
                    .payload
                    .take()
                    .map(|p| self.start(p.req, Some(p.data), p.charge)));
            }
            if let Some(mut w) = self.waiting.take() {
                let Some(charge) = self.try_charge(&mut w) else {
                    self.waiting = Some(w);
                    return Ok(None);
                };
                if w.req.command != Command::Write {
                    return Ok(Some(self.start(w.req, None, charge)));
                }
                self.payload = Some(Payload {
                    req: w.req,
                    data: AlignedBuf::new(w.req.length as usize),
                    filled: 0,
                    charge,
                    since: Instant::now(),
                });
                continue;
            }
            if in_flight >= MAX_IN_FLIGHT {
                return Ok(None);
            }
            let Some(head) = self.inbox.next_header() else {
                return Ok(None);
            };
            self.waiting = Some(self.parse(&head)?);
        }
    }

    fn parse(&self, head: &[u8; proto::REQUEST_LEN]) -> Result<Waiting, End> {
        let req = proto::parse_request(head).map_err(|e| {
            tracing::warn!(error = %e, "NBD protocol error, closing connection");
            Ok(Ending::ProtocolError)
        })?;
        let bytes = match req.command {
            Command::Disconnect => return Err(Ok(Ending::Disconnect)),
            Command::Write if req.length > proto::MAX_PAYLOAD => {
                tracing::warn!(
                    length = req.length,
                    "NBD write larger than the maximum block size, closing connection"
                );
                return Err(Ok(Ending::ProtocolError));
            }
            // Bounded by MAX_PAYLOAD (WRITE above, READ refused later).
            Command::Read | Command::Write => req.length.min(proto::MAX_PAYLOAD),
            Command::BlockStatus => request::BLOCK_STATUS_BYTES,
            _ => 0,
        };
        // Every reply costs memory until it is written, data or not: a
        // client sending dataless (or tiny) requests and never reading the
        // replies must fill its pool too.
        let bytes = (self.session.limits).request_bytes(bytes.max(REPLY_COST));
        Ok(Waiting {
            req,
            bytes: u64::from(bytes),
            acquire: None,
            permit: None,
        })
    }

    /// Takes the request's bytes from the connection's pool, then from the
    /// server's; `None` (and an acquisition to wait on) if either is short.
    fn try_charge(&mut self, w: &mut Waiting) -> Option<Charge> {
        if w.bytes == 0 {
            return Some(Charge::default());
        }
        // Only this connection takes from its pool: once the bytes fit
        // they stay free while the server pool is awaited.
        if self.held + w.bytes > self.pool {
            return None;
        }
        let n = w.bytes as u32;
        let permit = match w.permit.take() {
            Some(p) => p,
            None => match self.session.memory.clone().try_acquire_many_owned(n) {
                Ok(p) => p,
                Err(TryAcquireError::NoPermits | TryAcquireError::Closed) => {
                    if w.acquire.is_none() {
                        let pool = self.session.memory.clone();
                        w.acquire = Some(crate::block::BoxFuture::new(pool.acquire_many_owned(n)));
                    }
                    return None;
                }
            },
        };
        self.held += w.bytes;
        Some(Charge {
            connection: w.bytes,
            _server: Some(permit),
        })
    }

    fn start(&self, req: Request, payload: Option<AlignedBuf>, charge: Charge) -> Start {
        Start {
            ctx: self.ctx.clone(),
            req,
            payload,
            charge,
            guard: self.session.in_flight.begin(),
        }
    }

    /// Ends the stream to the client, if it can still be written.
    async fn shut_writer(&mut self) {
        if self.writer_alive {
            let limit = self.session.limits.write_timeout;
            let _ = tokio::time::timeout(limit, self.writer.shutdown()).await;
        }
    }
}

fn is_gone(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::UnexpectedEof
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::BrokenPipe
    )
}
