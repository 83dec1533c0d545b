//! The transmission phase of one connection: pipelined requests, replies out
//! of order.
//!
//! ```text
//!  socket ─► reader loop ─ parse header (+ WRITE payload) ─► spawn request future
//!                 ▲ permit (≤ MAX_IN_FLIGHT)                        │ BlockDevice call
//!                 └──────────── released when the future ends ◄─────┤
//!  socket ◄─ writer task ◄──────── mpsc of encoded replies ◄────────┘
//!                 └─ byte permits (connection + server pools) released
//!                    once the reply is written, not when it is queued
//! ```
//!
//! A WRITE's bytes are taken before its payload is read, so the payload
//! must arrive within the write timeout too (else the connection ends):
//! headers alone must not pin the pools.
//!
//! A client that sends large READs and never reads the replies therefore
//! pins at most its connection's byte pool (and all such clients together
//! at most the server's pool), however many requests it sends.
//!
//! The reader stops on `NBD_CMD_DISC`, end of stream, a protocol violation or
//! server shutdown; in every case the in-flight futures finish before the
//! writer is told to close, and each future's in-flight count is released by
//! a guard even if the future is dropped.

use std::io;
use std::sync::Arc;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufWriter};
use tokio::sync::{mpsc, oneshot, watch, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;

use super::catalog::Export;
use super::limits::NbdLimits;
use super::proto::{self, errno, Command, Request};
use crate::block::{BlockError, Durability};
use crate::export::in_flight::InFlightRequests;
use crate::units::ByteOffset;

/// Requests in flight per connection before the reader stops reading.
pub const MAX_IN_FLIGHT: usize = 128;
/// How long a closing connection waits for its in-flight requests and
/// replies before dropping them.
pub const DRAIN_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

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

/// A failed request: NBD error value and a message for the client.
#[derive(Debug)]
struct Failure {
    error: u32,
    message: String,
}

impl Failure {
    fn new(error: u32, message: impl Into<String>) -> Self {
        Failure {
            error,
            message: message.into(),
        }
    }
}

impl From<BlockError> for Failure {
    fn from(e: BlockError) -> Self {
        Failure::new(nbd_error(&e), e.to_string())
    }
}

/// The byte permits of one READ/WRITE: its connection's and the server's.
type BytePermits = (OwnedSemaphorePermit, OwnedSemaphorePermit);

/// An encoded reply and the byte permits it holds until it is written.
type Outgoing = (Vec<u8>, BytePermits);

/// One connection in transmission.
#[derive(Debug)]
pub struct Session {
    /// The export chosen during the handshake.
    pub export: Arc<Export>,
    /// Whether structured replies were negotiated.
    pub structured: bool,
    /// Server-wide in-flight request counter.
    pub in_flight: Arc<InFlightRequests>,
    /// The server's limits (this connection's byte pool is sized from them).
    pub limits: NbdLimits,
    /// The server-wide byte pool.
    pub memory: Arc<Semaphore>,
}

/// How a step of the reader loop ends the connection: `Err` carries what
/// [`Session::run`] returns.
type Step<T> = Result<T, io::Result<Ending>>;

/// What stops the reader whatever it is waiting for: server shutdown, or
/// the writer task gone (replies can no longer be written).
struct Stops {
    shutdown: watch::Receiver<bool>,
    writer_dead: oneshot::Receiver<()>,
}

impl Stops {
    /// Runs `fut` unless a stop comes first.
    async fn or_stop<T>(&mut self, fut: impl std::future::Future<Output = T>) -> Step<T> {
        tokio::select! {
            v = fut => Ok(v),
            _ = self.shutdown.wait_for(|stop| *stop) => Err(Ok(Ending::Shutdown)),
            _ = &mut self.writer_dead => Err(Ok(Ending::WriteFailed)),
        }
    }
}

/// The connection's limits on what its requests hold: requests in flight
/// and bytes buffered.
struct ConnectionPools {
    requests: Arc<Semaphore>,
    bytes: Arc<Semaphore>,
}

impl Session {
    /// Serves requests until the connection ends; returns why it ended.
    pub async fn run<R, W>(
        self,
        mut reader: R,
        writer: W,
        shutdown: watch::Receiver<bool>,
    ) -> io::Result<Ending>
    where
        R: AsyncRead + Unpin,
        W: AsyncWrite + Unpin + Send + 'static,
    {
        let session = Arc::new(self);
        let (tx, rx) = mpsc::channel::<Outgoing>(MAX_IN_FLIGHT);
        let (dead_tx, writer_dead) = oneshot::channel::<()>();
        let limit = session.limits.write_timeout;
        let writer_task = tokio::spawn(write_replies(writer, rx, dead_tx, limit));
        let mut stops = Stops {
            shutdown,
            writer_dead,
        };
        let bytes = usize::try_from(session.limits.connection_memory).unwrap_or(usize::MAX);
        let pools = ConnectionPools {
            requests: Arc::new(Semaphore::new(MAX_IN_FLIGHT)),
            bytes: Arc::new(Semaphore::new(bytes.min(Semaphore::MAX_PERMITS))),
        };
        let mut tasks = JoinSet::new();
        let ending = loop {
            while tasks.try_join_next().is_some() {}
            let step = session
                .start_next(&mut reader, &mut stops, &pools, &tx, &mut tasks)
                .await;
            if let Err(ending) = step {
                break ending;
            }
        };
        drain(tasks, tx, writer_task).await;
        ending
    }

    /// Reads the next request (with its WRITE payload) and starts it.
    async fn start_next<R: AsyncRead + Unpin>(
        self: &Arc<Self>,
        reader: &mut R,
        stops: &mut Stops,
        pools: &ConnectionPools,
        tx: &mpsc::Sender<Outgoing>,
        tasks: &mut JoinSet<()>,
    ) -> Step<()> {
        let permit = stops
            .or_stop(pools.requests.clone().acquire_owned())
            .await?;
        let permit = permit.map_err(|_| Ok(Ending::ProtocolError))?;
        let req = read_request(reader, stops).await?;
        // Bounded by MAX_PAYLOAD below (WRITE) or refused in validate (READ).
        let buffered = match req.command {
            Command::Read | Command::Write => self
                .limits
                .request_bytes(req.length.min(proto::MAX_PAYLOAD)),
            _ => 0,
        };
        let byte_permits = stops
            .or_stop(acquire_bytes(&pools.bytes, &self.memory, buffered))
            .await?
            .ok_or(Ok(Ending::ProtocolError))?;
        let payload = self.read_payload(reader, stops, &req).await?;
        let guard = self.in_flight.begin();
        let tx = tx.clone();
        let session = self.clone();
        tasks.spawn(async move {
            let _permit = permit;
            let _guard = guard;
            let reply = session.execute(req, payload).await;
            // The writer is gone only if the client is; nothing to tell.
            let _ = tx.send((reply, byte_permits)).await;
        });
        Ok(())
    }

    /// Reads a WRITE's payload (nothing for other commands). Its bytes are
    /// already held from both pools: a client that sends the header and
    /// then stalls would pin them (and with enough connections the whole
    /// server pool) forever. It gets the write timeout to deliver them,
    /// and shutdown does not wait for it.
    async fn read_payload<R: AsyncRead + Unpin>(
        &self,
        reader: &mut R,
        stops: &mut Stops,
        req: &Request,
    ) -> Step<Vec<u8>> {
        if req.command != Command::Write {
            return Ok(Vec::new());
        }
        if req.length > proto::MAX_PAYLOAD {
            tracing::warn!(
                length = req.length,
                "NBD write larger than the maximum block size, closing connection"
            );
            return Err(Ok(Ending::ProtocolError));
        }
        let mut buf = vec![0u8; req.length as usize];
        let limit = self.limits.write_timeout;
        let got = stops
            .or_stop(tokio::time::timeout(limit, reader.read_exact(&mut buf)))
            .await?;
        match got {
            Ok(Ok(_)) => Ok(buf),
            Ok(Err(e)) if is_gone(&e) => Err(Ok(Ending::ClientGone)),
            Ok(Err(e)) => Err(Err(e)),
            Err(_) => {
                tracing::warn!(
                    length = req.length,
                    "NBD write payload not received within {limit:?}, closing"
                );
                Err(Ok(Ending::PayloadStalled))
            }
        }
    }

    /// Runs one request and encodes its reply.
    async fn execute(&self, req: Request, payload: Vec<u8>) -> Vec<u8> {
        let result = match self.validate(&req) {
            Ok(()) => self.perform(&req, payload).await,
            Err(f) => Err(f),
        };
        match result {
            Ok(reply) => reply,
            Err(f) => {
                tracing::debug!(cookie = req.cookie, error = f.error, message = %f.message, "NBD request failed");
                self.error_reply(req.cookie, &f)
            }
        }
    }

    fn validate(&self, req: &Request) -> Result<(), Failure> {
        let cmd = req.command;
        if let Command::Unknown(code) = cmd {
            return Err(Failure::new(
                errno::EINVAL,
                format!("unknown command {code}"),
            ));
        }
        let df_ok = self.structured || req.flags & proto::CMD_FLAG_DF == 0;
        if req.flags & !cmd.allowed_flags() != 0 || !df_ok {
            let msg = format!("flags {:#x} not valid for {cmd:?}", req.flags);
            return Err(Failure::new(errno::EINVAL, msg));
        }
        let writes = matches!(cmd, Command::Write | Command::Trim | Command::WriteZeroes);
        if writes && self.export.read_only {
            return Err(Failure::new(errno::EPERM, "export is read-only"));
        }
        if cmd == Command::Read && req.length > proto::MAX_PAYLOAD {
            let error = if req.flags & proto::CMD_FLAG_DF != 0 {
                errno::EOVERFLOW
            } else {
                errno::EINVAL
            };
            return Err(Failure::new(
                error,
                "read larger than the maximum block size",
            ));
        }
        if matches!(
            cmd,
            Command::Read | Command::Write | Command::Trim | Command::WriteZeroes | Command::Cache
        ) {
            let size = self.export.device.size();
            let end = req.offset.checked_add(u64::from(req.length));
            if end.is_none_or(|end| end > size) {
                let error = if matches!(cmd, Command::Write | Command::WriteZeroes) {
                    errno::ENOSPC
                } else {
                    errno::EINVAL
                };
                let msg = format!(
                    "request at {} of {} bytes is past the end of the export ({size} bytes)",
                    req.offset, req.length
                );
                return Err(Failure::new(error, msg));
            }
        }
        Ok(())
    }

    async fn perform(&self, req: &Request, payload: Vec<u8>) -> Result<Vec<u8>, Failure> {
        let dev = &self.export.device;
        let offset = ByteOffset(req.offset);
        let len = u64::from(req.length);
        let fua = req.flags & proto::CMD_FLAG_FUA != 0;
        match req.command {
            Command::Read => return self.read(req).await,
            Command::Write => {
                let durability = if fua {
                    Durability::Fua
                } else {
                    Durability::Normal
                };
                dev.write(offset, &payload, durability).await?;
            }
            Command::Flush => dev.flush().await?,
            Command::Trim => {
                if len > 0 {
                    dev.discard(offset, len).await?;
                    if fua {
                        dev.flush().await?;
                    }
                }
            }
            Command::WriteZeroes => {
                if len > 0 {
                    let may_unmap = req.flags & proto::CMD_FLAG_NO_HOLE == 0;
                    dev.write_zeroes(offset, len, may_unmap).await?;
                    if fua {
                        dev.flush().await?;
                    }
                }
            }
            // Range already validated; there is no cache to warm.
            Command::Cache => {}
            Command::Disconnect | Command::Unknown(_) => {
                return Err(Failure::new(errno::EINVAL, "unexpected command"));
            }
        }
        Ok(proto::simple_reply(req.cookie, 0).to_vec())
    }

    /// Reads straight into the reply buffer, behind its header.
    async fn read(&self, req: &Request) -> Result<Vec<u8>, Failure> {
        if req.length == 0 {
            let mut out = Vec::new();
            if self.structured {
                proto::encode_none(&mut out, req.cookie);
            } else {
                out.extend_from_slice(&proto::simple_reply(req.cookie, 0));
            }
            return Ok(out);
        }
        let prefix = if self.structured {
            proto::OFFSET_DATA_PREFIX
        } else {
            proto::SIMPLE_REPLY_LEN
        };
        let mut buf = vec![0u8; prefix + req.length as usize];
        self.export
            .device
            .read(ByteOffset(req.offset), &mut buf[prefix..])
            .await?;
        if self.structured {
            proto::fill_offset_data_prefix(&mut buf, req.cookie, req.offset, true)
                .ok_or_else(|| Failure::new(errno::EINVAL, "read too large for one chunk"))?;
        } else {
            buf[..prefix].copy_from_slice(&proto::simple_reply(req.cookie, 0));
        }
        Ok(buf)
    }

    fn error_reply(&self, cookie: u64, f: &Failure) -> Vec<u8> {
        if self.structured {
            let mut out = Vec::new();
            proto::encode_error_chunk(&mut out, cookie, f.error, &f.message);
            out
        } else {
            proto::simple_reply(cookie, f.error).to_vec()
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

/// Reads and parses the next request header; a disconnect ends the
/// connection here.
async fn read_request<R: AsyncRead + Unpin>(reader: &mut R, stops: &mut Stops) -> Step<Request> {
    let mut head = [0u8; proto::REQUEST_LEN];
    match stops.or_stop(reader.read_exact(&mut head)).await? {
        Ok(_) => {}
        Err(e) if is_gone(&e) => return Err(Ok(Ending::ClientGone)),
        Err(e) => return Err(Err(e)),
    }
    let req = proto::parse_request(&head).map_err(|e| {
        tracing::warn!(error = %e, "NBD protocol error, closing connection");
        Ok(Ending::ProtocolError)
    })?;
    if req.command == Command::Disconnect {
        return Err(Ok(Ending::Disconnect));
    }
    Ok(req)
}

/// Lets the requests of an ending connection finish and their replies go
/// out, within [`DRAIN_TIMEOUT`] (a client that stops reading replies
/// would stall the drain forever).
async fn drain(
    mut tasks: JoinSet<()>,
    tx: mpsc::Sender<Outgoing>,
    mut writer_task: tokio::task::JoinHandle<io::Result<()>>,
) {
    let deadline = tokio::time::Instant::now() + DRAIN_TIMEOUT;
    let drained = tokio::time::timeout_at(deadline, async {
        while tasks.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        // Detached, not aborted: a volume request cut off half-way (a
        // RAID-5 stripe with its data written and its parity not, a
        // journal entry in flight without its stripe lock) would leave
        // redundancy wrong with no crash to resync it. They finish on
        // their own; only their replies go nowhere.
        tracing::warn!(
            left = tasks.len(),
            "NBD client not reading replies, leaving its requests to finish unanswered"
        );
        tasks.detach_all();
    }
    drop(tx);
    match tokio::time::timeout_at(deadline, &mut writer_task).await {
        Ok(Ok(Ok(()))) => {}
        Ok(Ok(Err(e))) if is_gone(&e) => {}
        Ok(Ok(Err(e))) => tracing::warn!(error = %e, "NBD reply write failed"),
        Ok(Err(e)) => tracing::warn!(error = %e, "NBD writer task failed"),
        Err(_) => {
            tracing::warn!("NBD client not reading replies, closing");
            writer_task.abort();
        }
    }
}

/// Takes `n` bytes from the connection's pool, then from the server's;
/// `None` if a pool is closed (never: they live as long as the session).
async fn acquire_bytes(
    connection: &Arc<Semaphore>,
    server: &Arc<Semaphore>,
    n: u32,
) -> Option<BytePermits> {
    let mine = connection.clone().acquire_many_owned(n).await.ok()?;
    let shared = server.clone().acquire_many_owned(n).await.ok()?;
    Some((mine, shared))
}

/// Writes encoded replies in completion order; flushes when the queue is
/// empty. A reply's byte permits go back once its bytes are in the socket
/// (or in the writer's fixed 64 KiB buffer), not before. One reply (or the
/// final flush) not written whole within `limit` fails the writer, however
/// much of it went out: the queued replies and their permits are dropped
/// with it. So a client must take a 32 MiB reply at more than
/// 32 MiB / `limit` (about 1.1 MiB/s at the default 30 s) to stay.
async fn write_replies<W: AsyncWrite + Unpin>(
    writer: W,
    mut rx: mpsc::Receiver<Outgoing>,
    _dead: oneshot::Sender<()>,
    limit: std::time::Duration,
) -> io::Result<()> {
    let mut w = BufWriter::with_capacity(64 * 1024, writer);
    while let Some((reply, permits)) = rx.recv().await {
        within(limit, w.write_all(&reply)).await?;
        drop((reply, permits));
        while let Ok((reply, permits)) = rx.try_recv() {
            within(limit, w.write_all(&reply)).await?;
            drop((reply, permits));
        }
        within(limit, w.flush()).await?;
    }
    w.shutdown().await
}

/// Runs a socket write, failing with `TimedOut` if it takes over `limit`.
async fn within(
    limit: std::time::Duration,
    write: impl std::future::Future<Output = io::Result<()>>,
) -> io::Result<()> {
    match tokio::time::timeout(limit, write).await {
        Ok(r) => r,
        Err(_) => {
            tracing::warn!("NBD client not reading replies for {limit:?}, closing");
            Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "client not reading replies",
            ))
        }
    }
}
