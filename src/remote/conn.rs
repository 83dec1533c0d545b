//! One NBD connection in transmission: pipelined requests matched to their
//! replies by handle.
//!
//! ```text
//!  call() ─ waiter(handle) into Pending ─ request bytes ─► writer task ─► socket
//!  socket ─► reader task ─ header ─► Pending[handle] ─ chunks ─► data / error
//!                                     └ DONE ─► the caller's oneshot
//! ```
//!
//! Small requests go to the socket from a task of their own (several per
//! flush). A WRITE of [`DIRECT_WRITE`] bytes or more is written by its
//! caller straight from the caller's buffer (no copy of the payload),
//! under the same lock; a caller dropped halfway (a timeout) closes the
//! connection, so half a request on the wire is never followed by another.
//! READ data lands in a buffer the waiter owns (never a buffer the server
//! sized: every chunk is placed inside the request it answers or the
//! connection is dropped), taken from the connection's spare reply buffers
//! and given back when the caller drops the [`Reply`] (no allocation,
//! page faults or zeroing per request). When either task ends, every
//! waiter gets [`CallError::Closed`]: a request is answered, or known not
//! to be.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use super::handshake::Negotiated;
use super::reply::{self, ReplyError, ReplyHeader};
use crate::export::nbd::proto::{self, Command, Request};

/// How a call ended without data.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CallError {
    /// The server answered with an NBD error value.
    #[error("the server answered error {0}")]
    Server(u32),
    /// The connection is gone; the request may or may not have been done.
    #[error("the connection closed before the reply")]
    Closed,
}

/// One request waiting for its reply.
struct Waiter {
    offset: u64,
    read: bool,
    data: Vec<u8>,
    error: Option<u32>,
    /// READ bytes the reply has placed so far, by start (chunks may not
    /// overlap, and DONE needs them to cover the whole request).
    covered: BTreeMap<usize, usize>,
    done: Option<Done>,
}

type Done = oneshot::Sender<Result<Vec<u8>, CallError>>;

/// WRITE payloads of at least this many bytes are written from the
/// caller's buffer; smaller ones are copied and batched by the writer task.
pub const DIRECT_WRITE: usize = 64 << 10;
/// Spare READ reply buffers kept per connection, and the largest kept.
const SPARES: usize = 32;
const SPARE_MAX: usize = 4 << 20;

/// READ reply buffers given back, for the next replies.
type Spares = Arc<Mutex<Vec<Vec<u8>>>>;

/// A reply buffer of `len` bytes: a spare when there is one (its old bytes
/// are overwritten: a READ completes only once the reply covered all).
fn reply_buffer(spares: &Spares, len: usize) -> Vec<u8> {
    let spare = spares.lock().unwrap_or_else(|e| e.into_inner()).pop();
    let mut data = spare.unwrap_or_default();
    if data.len() >= len {
        data.truncate(len);
    } else {
        data.resize(len, 0);
    }
    data
}

/// The data of a READ reply (empty for other commands); its buffer goes
/// back to the connection's spares when dropped.
pub struct Reply {
    data: Vec<u8>,
    spares: Spares,
}

impl std::fmt::Debug for Reply {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reply")
            .field("len", &self.data.len())
            .finish_non_exhaustive()
    }
}

impl std::ops::Deref for Reply {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        &self.data
    }
}

impl Drop for Reply {
    fn drop(&mut self) {
        let data = std::mem::take(&mut self.data);
        if data.is_empty() || data.capacity() > SPARE_MAX {
            return;
        }
        let mut spares = self.spares.lock().unwrap_or_else(|e| e.into_inner());
        if spares.len() < SPARES {
            spares.push(data);
        }
    }
}

impl Waiter {
    fn new(read: bool, offset: u64, length: u32, done: Done, spares: &Spares) -> Waiter {
        let data = if read {
            reply_buffer(spares, length as usize)
        } else {
            Vec::new()
        };
        Waiter {
            offset,
            read,
            data,
            error: None,
            covered: BTreeMap::new(),
            done: Some(done),
        }
    }

    /// Records that the reply filled `at`; a chunk over bytes already
    /// filled is a protocol error.
    fn cover(&mut self, at: &std::ops::Range<usize>) -> Result<(), ReplyError> {
        let before = self.covered.range(..=at.start).next_back();
        let after = self.covered.range(at.start..).next();
        let overlaps = before.is_some_and(|(_, &end)| end > at.start)
            || after.is_some_and(|(&start, _)| start < at.end);
        if overlaps {
            return Err(ReplyError::Overlap);
        }
        self.covered.insert(at.start, at.end);
        Ok(())
    }

    /// Whether a successful READ reply has filled every byte asked for.
    fn complete(&self) -> bool {
        let filled: usize = self.covered.iter().map(|(s, e)| e - s).sum();
        !self.read || self.error.is_some() || filled == self.data.len()
    }

    fn finish(mut self) {
        let result = match self.error {
            Some(e) => Err(CallError::Server(e)),
            None => Ok(std::mem::take(&mut self.data)),
        };
        if let Some(tx) = self.done.take() {
            let _ = tx.send(result);
        }
    }
}

/// Requests sent and not yet answered.
#[derive(Default)]
pub(crate) struct Pending {
    waiters: HashMap<u64, Waiter>,
    next: u64,
    closed: bool,
    spares: Spares,
}

type Shared = Arc<Mutex<Pending>>;

fn lock(p: &Shared) -> std::sync::MutexGuard<'_, Pending> {
    p.lock().unwrap_or_else(|e| e.into_inner())
}

/// Marks the connection closed and answers every waiter `Closed`.
fn close(p: &Shared) {
    let waiters: Vec<Waiter> = {
        let mut g = lock(p);
        g.closed = true;
        g.waiters.drain().map(|(_, w)| w).collect()
    };
    drop(waiters);
}

/// The socket's sending half, shared by the writer task and the callers
/// of large WRITEs.
type Writer = Arc<tokio::sync::Mutex<Box<dyn AsyncWrite + Unpin + Send>>>;

/// A connection in transmission.
pub struct Conn {
    tx: mpsc::UnboundedSender<Vec<u8>>,
    writer: Writer,
    pending: Shared,
    tasks: [JoinHandle<()>; 2],
    /// What the handshake settled.
    pub info: Negotiated,
}

impl std::fmt::Debug for Conn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Conn")
            .field("info", &self.info)
            .finish_non_exhaustive()
    }
}

impl Drop for Conn {
    fn drop(&mut self) {
        self.close();
    }
}

impl Conn {
    /// Starts the reader and writer tasks on a connection past its handshake.
    pub fn start<R, W>(reader: R, writer: W, info: Negotiated) -> Conn
    where
        R: AsyncRead + Unpin + Send + 'static,
        W: AsyncWrite + Unpin + Send + 'static,
    {
        let pending = Shared::default();
        let (tx, rx) = mpsc::unbounded_channel();
        let p = pending.clone();
        let writer: Writer = Arc::new(tokio::sync::Mutex::new(Box::new(writer)));
        let w = writer.clone();
        let read = tokio::spawn(async move {
            if let Err(e) = read_replies(reader, &p).await {
                if lock(&p).waiters.is_empty() {
                    tracing::debug!(error = %e, "NBD member connection closed");
                } else {
                    tracing::warn!(error = %e, "NBD member connection dropped");
                }
            }
            close(&p);
            // Our side's end: over TLS close_notify, or the alert for a
            // record our reader refused (FORMAT.md §14).
            let _ = tokio::time::timeout(SHUTDOWN_WAIT, async { w.lock().await.shutdown().await })
                .await;
        });
        let p = pending.clone();
        let w = writer.clone();
        let write = tokio::spawn(async move {
            let _ = write_requests(&w, rx).await;
            close(&p);
        });
        Conn {
            tx,
            writer,
            pending,
            tasks: [read, write],
            info,
        }
    }

    /// Whether the connection is gone.
    pub fn is_closed(&self) -> bool {
        lock(&self.pending).closed
    }

    /// Requests sent and not yet answered; `None` once closed.
    pub fn in_flight(&self) -> Option<usize> {
        let g = lock(&self.pending);
        (!g.closed).then_some(g.waiters.len())
    }

    /// Sends one request and waits for its reply: READ data, or nothing.
    pub async fn call(
        &self,
        command: Command,
        flags: u16,
        offset: u64,
        length: u32,
        payload: &[u8],
    ) -> Result<Reply, CallError> {
        let read = command == Command::Read;
        let (done, rx) = oneshot::channel();
        let (handle, spares) = {
            let mut g = lock(&self.pending);
            if g.closed {
                return Err(CallError::Closed);
            }
            let handle = g.next;
            g.next = g.next.wrapping_add(1);
            let waiter = Waiter::new(read, offset, length, done, &g.spares);
            g.waiters.insert(handle, waiter);
            (handle, g.spares.clone())
        };
        let request = Request {
            flags,
            command,
            cookie: handle,
            offset,
            length,
        };
        let head = proto::encode_request(&request);
        let sent = if payload.len() >= DIRECT_WRITE {
            self.send_direct(handle, &head, payload).await
        } else {
            let mut bytes = Vec::with_capacity(proto::REQUEST_LEN + payload.len());
            bytes.extend_from_slice(&head);
            bytes.extend_from_slice(payload);
            self.tx.send(bytes).is_ok()
        };
        if !sent {
            lock(&self.pending).waiters.remove(&handle);
            return Err(CallError::Closed);
        }
        let data = rx.await.unwrap_or(Err(CallError::Closed))?;
        Ok(Reply { data, spares })
    }

    /// Writes a request and its payload from the caller's buffer, under
    /// the writer's lock. Dropped while it waits for the lock, it forgets
    /// the request (nothing was sent); dropped halfway, or failing, it
    /// closes the connection (half a request is on the wire). False when
    /// closed.
    async fn send_direct(&self, handle: u64, head: &[u8], payload: &[u8]) -> bool {
        /// What dropping the send leaves to undo.
        struct Unfinished<'a> {
            conn: &'a Conn,
            handle: u64,
            started: bool,
            done: bool,
        }
        impl Drop for Unfinished<'_> {
            fn drop(&mut self) {
                match (self.done, self.started) {
                    (true, _) => {}
                    (false, true) => self.conn.close(),
                    (false, false) => drop(lock(&self.conn.pending).waiters.remove(&self.handle)),
                }
            }
        }
        let mut guard = Unfinished {
            conn: self,
            handle,
            started: false,
            done: false,
        };
        let mut w = self.writer.lock().await;
        if self.is_closed() {
            return false;
        }
        guard.started = true;
        let written = async {
            w.write_all(head).await?;
            w.write_all(payload).await?;
            w.flush().await
        };
        guard.done = written.await.is_ok();
        guard.done
    }

    /// Ends the connection now: both tasks stop, every request waiting
    /// gets [`CallError::Closed`] (it may or may not have been done).
    pub fn close(&self) {
        for t in &self.tasks {
            t.abort();
        }
        close(&self.pending);
    }

    /// Sends `NBD_CMD_DISC` (best effort; the server closes).
    pub fn disconnect(&self) {
        let request = Request {
            flags: 0,
            command: Command::Disconnect,
            cookie: u64::MAX,
            offset: 0,
            length: 0,
        };
        let _ = self.tx.send(proto::encode_request(&request).to_vec());
    }
}

/// How long a reader that stopped waits to end the sending side.
const SHUTDOWN_WAIT: std::time::Duration = std::time::Duration::from_secs(1);

/// Writes queued requests, several per flush when they queue up.
async fn write_requests(
    w: &Writer,
    mut rx: mpsc::UnboundedReceiver<Vec<u8>>,
) -> std::io::Result<()> {
    while let Some(first) = rx.recv().await {
        let mut w = w.lock().await;
        w.write_all(&first).await?;
        while let Ok(more) = rx.try_recv() {
            w.write_all(&more).await?;
        }
        w.flush().await?;
    }
    Ok(())
}

/// Why the reader stopped.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// The socket failed or closed.
    #[error("connection lost: {0}")]
    Io(#[from] std::io::Error),
    /// The server broke the protocol.
    #[error("protocol error: {0}")]
    Reply(#[from] ReplyError),
}

/// Reads replies until the connection fails or the server errs.
pub(crate) async fn read_replies<R: AsyncRead + Unpin>(
    mut r: R,
    pending: &Shared,
) -> Result<(), ReadError> {
    loop {
        let mut head = [0u8; proto::CHUNK_HEADER_LEN];
        r.read_exact(&mut head[..4]).await?;
        let len = reply::reply_kind([head[0], head[1], head[2], head[3]])?.header_len();
        r.read_exact(&mut head[4..len]).await?;
        let h = reply::parse_reply_header(&head[..len])?;
        let mut w = lock(pending)
            .waiters
            .remove(&h.handle)
            .ok_or(ReplyError::UnknownHandle(h.handle))?;
        if h.structured {
            read_chunk(&mut r, &h, &mut w).await?;
        } else if h.error != 0 {
            w.error = Some(h.error);
        } else if w.read {
            r.read_exact(&mut w.data).await?;
            w.cover(&(0..w.data.len()))?;
        }
        if h.done() {
            if !w.complete() {
                return Err(ReplyError::ShortRead(h.handle).into());
            }
            w.finish();
        } else {
            lock(pending).waiters.insert(h.handle, w);
        }
    }
}

/// Reads one structured chunk's payload into its waiter.
async fn read_chunk<R: AsyncRead + Unpin>(
    r: &mut R,
    h: &ReplyHeader,
    w: &mut Waiter,
) -> Result<(), ReadError> {
    match h.kind {
        proto::REPLY_TYPE_NONE if h.length == 0 => Ok(()),
        proto::REPLY_TYPE_OFFSET_DATA if w.read && h.length > 8 => {
            let offset = r.read_u64().await?;
            let len = u64::from(h.length - 8);
            let at = reply::place(offset, len, w.offset, w.data.len() as u64)?;
            w.cover(&at)?;
            r.read_exact(&mut w.data[at]).await?;
            Ok(())
        }
        reply::REPLY_TYPE_OFFSET_HOLE if w.read && h.length == 12 => {
            let mut p = [0u8; 12];
            r.read_exact(&mut p).await?;
            let (offset, len) = reply::parse_hole(&p)?;
            let at = reply::place(offset, u64::from(len), w.offset, w.data.len() as u64)?;
            w.cover(&at)?;
            w.data[at].fill(0);
            Ok(())
        }
        kind if kind & 0x8000 != 0 && h.length <= reply::MAX_OPTION_REPLY => {
            let mut p = vec![0u8; h.length as usize];
            r.read_exact(&mut p).await?;
            let e = reply::parse_error_payload(&p)?;
            w.error = Some(if e == 0 { proto::errno::EIO } else { e });
            Ok(())
        }
        proto::REPLY_TYPE_NONE | proto::REPLY_TYPE_OFFSET_DATA | reply::REPLY_TYPE_OFFSET_HOLE => {
            Err(ReplyError::BadLength("reply chunk").into())
        }
        _ => Err(ReplyError::Unexpected("reply chunk type").into()),
    }
}

/// Feeds `bytes` as server replies to requests with handles `0..n`
/// (`reads[i]`: request `i` is a READ of `len` bytes at `offset`); returns
/// how many were answered. For the fuzz target.
#[doc(hidden)]
pub fn decode_for_fuzz(bytes: &[u8], reads: &[(bool, u64, u32)]) -> usize {
    let pending = Shared::default();
    let mut answers = Vec::new();
    {
        let mut g = lock(&pending);
        for (i, &(read, offset, len)) in reads.iter().enumerate() {
            let (done, rx) = oneshot::channel();
            let waiter = Waiter::new(read, offset, len, done, &g.spares);
            g.waiters.insert(i as u64, waiter);
            answers.push(rx);
        }
    }
    let _ = futures::executor::block_on(read_replies(bytes, &pending));
    close(&pending);
    answers
        .into_iter()
        .filter_map(|mut rx| rx.try_recv().ok())
        .filter(Result::is_ok)
        .count()
}
