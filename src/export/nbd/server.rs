//! Listeners and connection lifecycle: accept, handshake, transmission,
//! shutdown and the counters behind [`NbdServer::stats`].
//!
//! ```text
//!  serve_tcp / serve_unix ─ accept ─► admission (connection limits; refused: closed)
//!        (until shutdown)               └─► connection task
//!                                            handshake (Negotiation, within the
//!                                            handshake timeout) ─► Session::run
//!                                            (STARTTLS: TLS handshake, the rest
//!                                            of it and Session::run over TLS)
//!  accept errors (EMFILE...): logged at most once a second, 100 ms back-off
//!  shutdown(): listeners stop; idle connections close; busy ones drain first
//!  wait_idle(): resolves once the connection count is back to zero
//! ```

use std::fmt;
use std::io;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, UnixListener};
use tokio::sync::{watch, Notify, Semaphore};
use tokio::time::Instant;

use super::catalog::{Export, ExportTable};
use super::handshake::{Negotiation, Step, TlsState};
use super::limits::{Admission, Admitted, DropReason, Drops, LogGate, NbdLimits, DEVICE_BUDGET};
use super::meta::Selection;
use super::proto;
use super::sink::{Plain, ReplySink};
use super::transmission::{Ending, Session};
use crate::export::in_flight::InFlightRequests;
use crate::tls::{Capture, Flushed, ServerTls, ServerTlsStream, TlsMode};

/// Largest oversized option payload we read and discard to keep the
/// handshake going; beyond it the connection is dropped.
const MAX_DISCARD: u32 = 16 * 1024 * 1024;
/// Pause after a failed accept (out of descriptors, most likely).
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// A snapshot of the server's counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NbdStats {
    /// Connections open now (handshake or transmission).
    pub connections: u64,
    /// Connections accepted since the server started.
    pub connections_total: u64,
    /// Requests being served now, over all connections.
    pub in_flight: u64,
    /// READ/WRITE bytes held now (requests being served and replies not
    /// yet written), over all connections.
    pub buffered_bytes: u64,
    /// Connections closed for the idle timeout.
    pub dropped_idle: u64,
    /// Connections closed for draining replies under the minimum rate.
    pub dropped_slow_drain: u64,
    /// Connections closed for replies or WRITE payloads stalled for the
    /// write timeout.
    pub dropped_stalled: u64,
}

struct Shared {
    exports: ExportTable,
    shutdown: watch::Sender<bool>,
    connections: AtomicU64,
    connections_total: AtomicU64,
    in_flight: Arc<InFlightRequests>,
    idle: Notify,
    limits: NbdLimits,
    admission: Admission,
    memory: Arc<Semaphore>,
    device_budget: Arc<Semaphore>,
    drops: Arc<Drops>,
    refusals: LogGate,
    accept_errors: LogGate,
    /// TLS on offer (`allow` or `require`), if any.
    tls: Option<ServerTls>,
}

/// An NBD server over a fixed set of exports.
pub struct NbdServer {
    shared: Arc<Shared>,
}

impl fmt::Debug for NbdServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NbdServer")
            .field("exports", &self.shared.exports)
            .field("stats", &self.stats())
            .finish()
    }
}

/// Counts a connection for as long as it lives.
struct ConnectionGuard(Arc<Shared>);

impl ConnectionGuard {
    fn new(shared: &Arc<Shared>) -> Self {
        shared.connections.fetch_add(1, Ordering::SeqCst);
        shared.connections_total.fetch_add(1, Ordering::SeqCst);
        ConnectionGuard(shared.clone())
    }
}

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        self.0.connections.fetch_sub(1, Ordering::SeqCst);
        self.0.idle.notify_waiters();
    }
}

/// A connection's socket, split into owned halves (no lock between them).
trait Split: AsyncRead + AsyncWrite + Unpin + Send + 'static {
    /// The reading half.
    type Reader: AsyncRead + Unpin + Send;
    /// The writing half.
    type Writer: AsyncWrite + Unpin + Send;

    fn halves(self) -> (Self::Reader, Self::Writer);
}

impl Split for tokio::net::TcpStream {
    type Reader = tokio::net::tcp::OwnedReadHalf;
    type Writer = tokio::net::tcp::OwnedWriteHalf;

    fn halves(self) -> (Self::Reader, Self::Writer) {
        self.into_split()
    }
}

impl Split for tokio::net::UnixStream {
    type Reader = tokio::net::unix::OwnedReadHalf;
    type Writer = tokio::net::unix::OwnedWriteHalf;

    fn halves(self) -> (Self::Reader, Self::Writer) {
        self.into_split()
    }
}

/// What the accept loop needs of a listening socket, TCP or Unix.
trait Listener {
    /// A connection.
    type Stream: Split;

    /// The next connection, with the client's address (for the per-client
    /// limit; none on a Unix socket) and its name for the log.
    fn next(
        &self,
    ) -> impl std::future::Future<Output = io::Result<(Self::Stream, Option<IpAddr>, String)>> + Send;

    /// Socket options for an admitted connection.
    fn tune(_stream: &Self::Stream) {}
}

impl Listener for TcpListener {
    type Stream = tokio::net::TcpStream;

    async fn next(&self) -> io::Result<(Self::Stream, Option<IpAddr>, String)> {
        let (stream, peer) = self.accept().await?;
        Ok((stream, Some(peer.ip()), peer.to_string()))
    }

    fn tune(stream: &Self::Stream) {
        if let Err(e) = stream.set_nodelay(true) {
            tracing::debug!(error = %e, "could not set TCP_NODELAY");
        }
    }
}

impl Listener for UnixListener {
    type Stream = tokio::net::UnixStream;

    async fn next(&self) -> io::Result<(Self::Stream, Option<IpAddr>, String)> {
        let (stream, _) = self.accept().await?;
        Ok((stream, None, "unix".to_string()))
    }
}

impl NbdServer {
    /// A server offering `exports` under the default limits.
    pub fn new(exports: Vec<Export>) -> Self {
        Self::with_limits(exports, NbdLimits::default())
    }

    /// A server offering `exports` under `limits`.
    pub fn with_limits(exports: Vec<Export>, limits: NbdLimits) -> Self {
        Self::with_tls(exports, limits, None)
    }

    /// A server offering `exports` under `limits`, with TLS as `tls` says
    /// (`None`: `NBD_OPT_STARTTLS` is unsupported).
    pub fn with_tls(exports: Vec<Export>, limits: NbdLimits, tls: Option<ServerTls>) -> Self {
        let (shutdown, _) = watch::channel(false);
        let memory = usize::try_from(limits.memory).unwrap_or(usize::MAX);
        NbdServer {
            shared: Arc::new(Shared {
                exports: ExportTable::new(exports),
                shutdown,
                connections: AtomicU64::new(0),
                connections_total: AtomicU64::new(0),
                in_flight: Arc::new(InFlightRequests::default()),
                idle: Notify::new(),
                limits,
                admission: Admission::new(
                    limits.max_connections,
                    limits.max_connections_per_client,
                ),
                memory: Arc::new(Semaphore::new(memory.min(Semaphore::MAX_PERMITS))),
                device_budget: Arc::new(Semaphore::new(DEVICE_BUDGET)),
                drops: Arc::default(),
                refusals: LogGate::default(),
                accept_errors: LogGate::default(),
                tls,
            }),
        }
    }

    fn buffered_bytes(&self) -> u64 {
        let pool = usize::try_from(self.shared.limits.memory).unwrap_or(usize::MAX);
        let free = self.shared.memory.available_permits();
        u64::try_from(pool.min(Semaphore::MAX_PERMITS) - free).unwrap_or(u64::MAX)
    }

    /// A handle onto the export table (add and remove exports live).
    pub fn exports(&self) -> ExportTable {
        self.shared.exports.clone()
    }

    /// The limits this server enforces.
    pub fn limits(&self) -> NbdLimits {
        self.shared.limits
    }

    /// Current counters.
    pub fn stats(&self) -> NbdStats {
        NbdStats {
            connections: self.shared.connections.load(Ordering::SeqCst),
            connections_total: self.shared.connections_total.load(Ordering::SeqCst),
            in_flight: self.shared.in_flight.get() as u64,
            buffered_bytes: self.buffered_bytes(),
            dropped_idle: self.shared.drops.get(DropReason::Idle),
            dropped_slow_drain: self.shared.drops.get(DropReason::SlowDrain),
            dropped_stalled: self.shared.drops.get(DropReason::StalledReply)
                + self.shared.drops.get(DropReason::StalledPayload),
        }
    }

    /// Accepts TCP connections until [`NbdServer::shutdown`].
    pub async fn serve_tcp(self: Arc<Self>, listener: TcpListener) -> io::Result<()> {
        tracing::info!(addr = ?listener.local_addr().ok(), "NBD server listening on TCP");
        self.accept_loop(listener).await
    }

    /// Accepts Unix-socket connections until [`NbdServer::shutdown`].
    pub async fn serve_unix(self: Arc<Self>, listener: UnixListener) -> io::Result<()> {
        tracing::info!(addr = ?listener.local_addr().ok(), "NBD server listening on Unix socket");
        self.accept_loop(listener).await
    }

    /// Admits and serves connections from `listener` until shutdown.
    async fn accept_loop<L: Listener>(self: Arc<Self>, listener: L) -> io::Result<()> {
        let mut stop = self.shared.shutdown.subscribe();
        loop {
            let accepted = tokio::select! {
                r = listener.next() => r,
                _ = stop.wait_for(|s| *s) => return Ok(()),
            };
            match accepted {
                Ok((stream, ip, peer)) => {
                    let Some(admitted) = self.admit(ip, &peer) else {
                        continue;
                    };
                    L::tune(&stream);
                    self.spawn_connection(stream, peer, admitted);
                }
                Err(e) => self.accept_failed(e).await,
            }
        }
    }

    /// Stops accepting; connections finish their in-flight requests, then close.
    pub fn shutdown(&self) {
        self.shared.shutdown.send_replace(true);
    }

    /// Resolves when no connection is open.
    pub async fn wait_idle(&self) {
        loop {
            let notified = self.shared.idle.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.shared.connections.load(Ordering::SeqCst) == 0 {
                return;
            }
            notified.await;
        }
    }

    /// Counts a new connection against the limits; a refused one is
    /// dropped (closed) by the caller at once.
    fn admit(&self, ip: Option<IpAddr>, peer: &str) -> Option<Admitted> {
        match self.shared.admission.admit(ip) {
            Ok(admitted) => Some(admitted),
            Err(why) => {
                if let Some(unlogged) = self.shared.refusals.pass() {
                    tracing::warn!(
                        %peer,
                        refused_before = unlogged,
                        "NBD connection refused: {why}"
                    );
                }
                None
            }
        }
    }

    fn spawn_connection<S: Split>(&self, stream: S, peer: String, admitted: Admitted) {
        let guard = ConnectionGuard::new(&self.shared);
        tokio::spawn(async move {
            tracing::info!(%peer, "NBD client connected");
            let shared = guard.0.clone();
            match serve_connection(&shared, stream).await {
                Ok(ending) => tracing::info!(%peer, %ending, "NBD client disconnected"),
                Err(e) => tracing::info!(%peer, error = %e, "NBD client connection failed"),
            }
            drop(admitted);
            drop(guard);
        });
    }

    /// EMFILE and friends are transient (connections close, the handshake
    /// timeout frees idle ones): back off instead of spinning or quitting,
    /// and log at most once a second.
    async fn accept_failed(&self, e: io::Error) {
        if let Some(unlogged) = self.shared.accept_errors.pass() {
            tracing::warn!(error = %e, failed_before = unlogged, "NBD accept failed");
        }
        tokio::time::sleep(ACCEPT_BACKOFF).await;
    }
}

/// Why a connection ended, for the log.
#[derive(Debug)]
enum ConnectionEnd {
    Handshake(&'static str),
    Transmission(Ending),
}

impl fmt::Display for ConnectionEnd {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConnectionEnd::Handshake(why) => write!(f, "during handshake: {why}"),
            ConnectionEnd::Transmission(ending) => write!(f, "in transmission: {ending:?}"),
        }
    }
}

async fn serve_connection<S: Split>(
    shared: &Arc<Shared>,
    mut stream: S,
) -> io::Result<ConnectionEnd> {
    let mut stop = shared.shutdown.subscribe();
    // A client may sit in the handshake forever: shutdown or the handshake
    // timeout (over both the plain and the TLS part) closes it there.
    let deadline = Instant::now() + shared.limits.handshake_timeout;
    let plain = async {
        let mut neg = match greet(shared, &mut stream).await? {
            Ok(neg) => neg,
            Err(why) => return Ok(Err(why)),
        };
        let haggled = option_loop(&mut neg, &mut stream).await?;
        Ok(Ok((neg, haggled)))
    };
    let (neg, haggled) = match guarded(deadline, &mut stop, plain).await? {
        Ok(chosen) => chosen,
        Err(why) => return Ok(close_plain(stream, why).await),
    };
    match haggled {
        Haggled::Close(why) => Ok(close_plain(stream, why).await),
        Haggled::Transmit(chosen) => {
            let (reader, writer) = stream.halves();
            transmit(shared, chosen, reader, Plain(writer), stop).await
        }
        Haggled::StartTls => {
            let Some(tls) = shared.tls.as_ref() else {
                return Ok(close_plain(stream, "STARTTLS without TLS").await);
            };
            let upgraded = guarded(deadline, &mut stop, over_tls(tls, neg, stream)).await?;
            match upgraded {
                Ok((tls_stream, capture, chosen)) => {
                    transmit_tls(shared, chosen, tls_stream, capture, stop).await
                }
                Err(why) => Ok(ConnectionEnd::Handshake(why)),
            }
        }
    }
}

/// Ends a plain-text handshake: the write side is shut down, then closed.
async fn close_plain<S: AsyncWrite + Unpin>(mut stream: S, why: &'static str) -> ConnectionEnd {
    let _ = stream.shutdown().await;
    ConnectionEnd::Handshake(why)
}

/// Runs a handshake step until `deadline` or server shutdown, whichever
/// comes first; either is a reason to close.
async fn guarded<T>(
    deadline: Instant,
    stop: &mut watch::Receiver<bool>,
    step: impl std::future::Future<Output = io::Result<Result<T, &'static str>>>,
) -> io::Result<Result<T, &'static str>> {
    tokio::select! {
        r = tokio::time::timeout_at(deadline, step) => match r {
            Ok(r) => r,
            Err(_) => Ok(Err("not finished within the handshake timeout")),
        },
        _ = stop.wait_for(|s| *s) => Ok(Err("server shutdown")),
    }
}

/// The transmission phase over TLS: our record layer when it can take the
/// connection from rustls (FORMAT.md §14), else rustls.
async fn transmit_tls<S: Split>(
    shared: &Arc<Shared>,
    chosen: Chosen,
    tls_stream: ServerTlsStream<BufReader<S>>,
    capture: Option<Arc<Capture>>,
    stop: watch::Receiver<bool>,
) -> io::Result<ConnectionEnd> {
    let tls_stream = match capture {
        None => tls_stream,
        Some(capture) => match crate::tls::switch(tls_stream, &capture) {
            Ok(Ok(ours)) => {
                tracing::info!("NBD TLS record layer: ours");
                let (reader, writer) = ours.halves(Split::halves);
                return transmit(shared, chosen, reader, writer, stop).await;
            }
            Ok(Err(rustls)) => rustls,
            Err(e) => {
                tracing::warn!(error = %e, "NBD TLS record layer switch failed");
                return Ok(ConnectionEnd::Handshake("TLS record layer switch failed"));
            }
        },
    };
    tracing::info!("NBD TLS record layer: rustls");
    // The transmission loop writes only when it has replies: each write
    // must leave nothing in the TLS buffer.
    let (reader, writer) = tokio::io::split(tls_stream);
    let writer = Plain(Flushed::new(writer));
    transmit(shared, chosen, reader, writer, stop).await
}

/// What the TLS part of a handshake gives the transmission phase.
type OverTls<S> = (ServerTlsStream<BufReader<S>>, Option<Arc<Capture>>, Chosen);

/// The TLS handshake after `NBD_OPT_STARTTLS`, then the rest of option
/// haggling over TLS. A failed TLS handshake drops the connection.
async fn over_tls<'a, S: Split>(
    tls: &ServerTls,
    mut neg: Negotiation<'a>,
    stream: S,
) -> io::Result<Result<OverTls<S>, &'static str>> {
    let (mut tls_stream, capture) = match tls.accept_switchable(crate::tls::buffered(stream)).await
    {
        Ok(s) => s,
        Err(e) => {
            let cause = std::error::Error::source(&e).map(|c| c.to_string());
            tracing::warn!(
                error = cause.as_deref().unwrap_or(""),
                "NBD TLS handshake failed"
            );
            return Ok(Err("TLS handshake failed"));
        }
    };
    neg.tls_started();
    match option_loop(&mut neg, &mut tls_stream).await? {
        Haggled::Transmit(chosen) => Ok(Ok((tls_stream, capture, chosen))),
        Haggled::Close(why) => {
            let _ = tls_stream.shutdown().await;
            Ok(Err(why))
        }
        Haggled::StartTls => Ok(Err("STARTTLS over TLS")),
    }
}

/// Serves the transmission phase over `reader` and `writer`.
async fn transmit<R, W>(
    shared: &Arc<Shared>,
    chosen: Chosen,
    reader: R,
    writer: W,
    stop: watch::Receiver<bool>,
) -> io::Result<ConnectionEnd>
where
    R: AsyncRead + Unpin,
    W: ReplySink,
{
    let Chosen {
        export,
        structured,
        meta,
    } = chosen;
    tracing::info!(export = %export.name, structured, "NBD client entered transmission");
    let _attached = shared.exports.attach(&export);
    let session = Session {
        export,
        structured,
        meta,
        in_flight: shared.in_flight.clone(),
        limits: shared.limits,
        memory: shared.memory.clone(),
        device_budget: shared.device_budget.clone(),
        drops: shared.drops.clone(),
    };
    let ending = session.run(reader, writer, stop).await?;
    Ok(ConnectionEnd::Transmission(ending))
}

/// What option haggling chose for the transmission phase.
struct Chosen {
    export: Arc<Export>,
    /// Structured replies were negotiated.
    structured: bool,
    /// The metadata contexts selected for `export`.
    meta: Selection,
}

/// How option haggling ended.
enum Haggled {
    /// Transmission with what was chosen.
    Transmit(Chosen),
    /// `NBD_OPT_STARTTLS` was accepted: the TLS handshake comes next.
    StartTls,
    /// The connection closes, for this reason.
    Close(&'static str),
}

/// Sends the greeting and reads the client flags; `Ok(Err(why))` means the
/// connection must close.
async fn greet<'a, S>(
    shared: &'a Shared,
    stream: &mut S,
) -> io::Result<Result<Negotiation<'a>, &'static str>>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    stream.write_all(&proto::greeting()).await?;
    let mut flags = [0u8; 4];
    stream.read_exact(&mut flags).await?;
    let client = match proto::parse_client_flags(&flags) {
        Ok(client) => client,
        Err(e) => {
            tracing::warn!(error = %e, "NBD handshake refused");
            return Ok(Err("bad client flags"));
        }
    };
    let tls = match &shared.tls {
        None => TlsState::Off,
        Some(tls) => TlsState::Offered {
            required: tls.mode() == TlsMode::Require,
        },
    };
    Ok(Ok(Negotiation::new(&shared.exports, client).with_tls(tls)))
}

/// Runs option haggling until transmission, STARTTLS or a close.
async fn option_loop<S>(neg: &mut Negotiation<'_>, stream: &mut S) -> io::Result<Haggled>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    loop {
        let mut head = [0u8; proto::OPTION_HEADER_LEN];
        stream.read_exact(&mut head).await?;
        let header = match proto::parse_option_header(&head) {
            Ok(h) => h,
            Err(e) => {
                tracing::warn!(error = %e, "NBD protocol error in handshake, closing connection");
                return Ok(Haggled::Close("bad option magic"));
            }
        };
        let mut out = Vec::new();
        let step = if header.length > proto::MAX_OPTION_PAYLOAD {
            if header.length > MAX_DISCARD {
                tracing::warn!(
                    option = header.option,
                    length = header.length,
                    "NBD option payload far too large, closing connection"
                );
                return Ok(Haggled::Close("option too large"));
            }
            tracing::warn!(
                option = header.option,
                length = header.length,
                "NBD option payload too large, refused"
            );
            let mut skip = (&mut *stream).take(u64::from(header.length));
            tokio::io::copy(&mut skip, &mut tokio::io::sink()).await?;
            neg.refuse_too_big(header, &mut out)
        } else {
            let mut payload = vec![0u8; header.length as usize];
            stream.read_exact(&mut payload).await?;
            neg.handle(header, &payload, &mut out)
        };
        stream.write_all(&out).await?;
        let haggled = match step {
            Step::Continue => continue,
            Step::Close => Haggled::Close("client aborted or chose an unknown export"),
            Step::Transmit(export) => Haggled::Transmit(Chosen {
                meta: neg.selection(&export),
                structured: neg.structured(),
                export,
            }),
            Step::StartTls => Haggled::StartTls,
        };
        stream.flush().await?;
        return Ok(haggled);
    }
}
