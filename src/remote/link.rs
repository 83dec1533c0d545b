//! Getting a connection to a remote member's server: TCP or Unix socket,
//! the handshake (blocking, with a timeout, off the async threads), and
//! the TLS seam for `nbds://`.

use std::io;
use std::net::ToSocketAddrs;
use std::time::Duration;

use super::conn::Conn;
use super::handshake::{self, HandshakeError, Negotiated};
use super::tls_link;
use super::uri::{Endpoint, NbdUri, UriError};

/// Why a remote member cannot be reached.
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    /// The member path is not a valid NBD URI.
    #[error("bad NBD URI")]
    Uri(#[from] UriError),
    /// An `nbds://` URI without what TLS needs.
    #[error("{0}: {1}")]
    TlsSetup(String, &'static str),
    /// TLS credentials or the TLS handshake failed.
    #[error("TLS with {uri} failed")]
    Tls {
        /// The URI.
        uri: String,
        /// Why.
        #[source]
        source: crate::tls::TlsError,
    },
    /// The server cannot be reached.
    #[error("cannot connect to {uri}")]
    Connect {
        /// The URI.
        uri: String,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// The handshake failed.
    #[error("NBD handshake with {uri} failed")]
    Handshake {
        /// The URI.
        uri: String,
        /// Why.
        #[source]
        source: HandshakeError,
    },
    /// The export is not the size it was when the member was opened.
    #[error("{uri}: the export is now {now} bytes, was {was}")]
    SizeChanged {
        /// The URI.
        uri: String,
        /// Size at open.
        was: u64,
        /// Size now.
        now: u64,
    },
    /// The server now asks for larger blocks (or allows smaller requests)
    /// than when the member was opened.
    #[error(
        "{uri}: block sizes are now min {now_min} max {now_max}, were min {was_min} max {was_max}"
    )]
    BlockSizesChanged {
        /// The URI.
        uri: String,
        /// Minimum at open.
        was_min: u32,
        /// Maximum at open.
        was_max: u32,
        /// Minimum now.
        now_min: u32,
        /// Maximum now.
        now_max: u32,
    },
    /// An extra connection to a server that no longer advertises
    /// `CAN_MULTI_CONN`.
    #[error("{0}: the server no longer allows several connections")]
    NotMultiConn(String),
    /// Opened outside the async runtime.
    #[error("{0}: a remote member needs the async runtime")]
    NoRuntime(String),
}

/// A connected blocking socket, past its handshake.
enum Socket {
    Tcp(std::net::TcpStream),
    Unix(std::os::unix::net::UnixStream),
}

/// Connects and runs the handshake, blocking for at most about `timeout`
/// per step. Call off the async threads (`spawn_blocking`) or at open.
fn connect_blocking(uri: &NbdUri, timeout: Duration) -> Result<(Socket, Negotiated), LinkError> {
    let shown = uri.to_string();
    let connect = |source| LinkError::Connect {
        uri: shown.clone(),
        source,
    };
    let shake = |source| LinkError::Handshake {
        uri: shown.clone(),
        source: stalled(source, timeout),
    };
    match &uri.endpoint {
        Endpoint::Tcp { host, port } => {
            let mut s = tcp_connect(host, *port, timeout).map_err(connect)?;
            s.set_read_timeout(Some(timeout)).map_err(connect)?;
            s.set_write_timeout(Some(timeout)).map_err(connect)?;
            s.set_nodelay(true).map_err(connect)?;
            let n = handshake::handshake(&mut Deadline::new(&mut s, timeout), &uri.export)
                .map_err(shake)?;
            Ok((Socket::Tcp(s), n))
        }
        Endpoint::Unix(path) => {
            let mut s = std::os::unix::net::UnixStream::connect(path).map_err(connect)?;
            s.set_read_timeout(Some(timeout)).map_err(connect)?;
            s.set_write_timeout(Some(timeout)).map_err(connect)?;
            let n = handshake::handshake(&mut Deadline::new(&mut s, timeout), &uri.export)
                .map_err(shake)?;
            Ok((Socket::Unix(s), n))
        }
    }
}

/// A blocking socket whose reads and writes share one deadline, `timeout`
/// from now: a server trickling its handshake a byte at a time cannot
/// stretch it (a timeout per read starts again with every byte).
pub(super) struct Deadline<'a, S> {
    s: &'a mut S,
    end: std::time::Instant,
}

/// Sockets whose blocking reads and writes can time out.
pub(super) trait Timed {
    /// Sets both the read and the write timeout.
    fn set_timeouts(&self, t: Duration) -> io::Result<()>;
}

impl Timed for std::net::TcpStream {
    fn set_timeouts(&self, t: Duration) -> io::Result<()> {
        self.set_read_timeout(Some(t))?;
        self.set_write_timeout(Some(t))
    }
}

impl Timed for std::os::unix::net::UnixStream {
    fn set_timeouts(&self, t: Duration) -> io::Result<()> {
        self.set_read_timeout(Some(t))?;
        self.set_write_timeout(Some(t))
    }
}

impl<'a, S: Timed> Deadline<'a, S> {
    pub(super) fn new(s: &'a mut S, timeout: Duration) -> Self {
        let end = std::time::Instant::now() + timeout;
        Deadline { s, end }
    }

    /// The socket's timeouts set to the time left (an error once none is).
    fn arm(&self) -> io::Result<()> {
        let left = self
            .end
            .saturating_duration_since(std::time::Instant::now());
        if left < Duration::from_millis(1) {
            return Err(io::ErrorKind::TimedOut.into());
        }
        self.s.set_timeouts(left)
    }
}

impl<S: Timed + io::Read> io::Read for Deadline<'_, S> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.arm()?;
        self.s.read(buf)
    }
}

impl<S: Timed + io::Write> io::Write for Deadline<'_, S> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.arm()?;
        self.s.write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.arm()?;
        self.s.flush()
    }
}

/// A socket timeout in the handshake (`EAGAIN` from `SO_RCVTIMEO`, shown
/// as "Resource temporarily unavailable") named as the timeout it is.
pub(super) fn stalled(e: HandshakeError, timeout: Duration) -> HandshakeError {
    match e {
        HandshakeError::Io(io)
            if matches!(
                io.kind(),
                io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
            ) =>
        {
            HandshakeError::Io(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("the server did not answer within {timeout:?} (timed out)"),
            ))
        }
        other => other,
    }
}

pub(super) fn tcp_connect(
    host: &str,
    port: u16,
    timeout: Duration,
) -> io::Result<std::net::TcpStream> {
    let mut last = io::Error::new(io::ErrorKind::NotFound, "host has no address");
    for addr in (host, port).to_socket_addrs()? {
        match std::net::TcpStream::connect_timeout(&addr, timeout) {
            Ok(s) => return Ok(s),
            Err(e) => last = e,
        }
    }
    Err(last)
}

/// Hands a connected socket to the runtime and starts its connection.
fn start(socket: Socket, info: Negotiated, shown: &str) -> Result<Conn, LinkError> {
    let err = |source| LinkError::Connect {
        uri: shown.to_string(),
        source,
    };
    match socket {
        Socket::Tcp(s) => {
            s.set_read_timeout(None).map_err(err)?;
            s.set_write_timeout(None).map_err(err)?;
            s.set_nonblocking(true).map_err(err)?;
            discard_unsent_on_close(&s).map_err(err)?;
            let (r, w) = tokio::net::TcpStream::from_std(s)
                .map_err(err)?
                .into_split();
            Ok(Conn::start(r, w, info))
        }
        Socket::Unix(s) => {
            s.set_read_timeout(None).map_err(err)?;
            s.set_write_timeout(None).map_err(err)?;
            s.set_nonblocking(true).map_err(err)?;
            let (r, w) = tokio::net::UnixStream::from_std(s)
                .map_err(err)?
                .into_split();
            Ok(Conn::start(r, w, info))
        }
    }
}

/// Makes closing `s` abortive (`SO_LINGER` on, 0 s): the kernel drops the
/// bytes not yet acknowledged by the server and resets the connection,
/// instead of sending them on after the close. A member connection is
/// closed when a request on it timed out (or the member is dropped); a
/// request it carried is then sent again elsewhere or failed, and the RAID
/// layer goes on (degraded, a later write of the same block, a re-join's
/// catch-up). Left queued, the old request would still reach the server
/// once the link is back, whenever the kernel's retransmission backoff
/// next fires — seconds after the link is up — and overwrite whatever
/// was written there since (a parity block or a checksum page the
/// catch-up had just made current: docs/FORMAT.md §6 "Connections given
/// up").
pub(super) fn discard_unsent_on_close(s: &std::net::TcpStream) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: setsockopt on a socket this function borrows, with a pointer
    // to a live `linger` and its exact size.
    let rc = unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&linger as *const libc::linger).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Connects from synchronous code running inside the runtime (member open).
pub fn connect_now(uri: &NbdUri, timeout: Duration) -> Result<Conn, LinkError> {
    if tokio::runtime::Handle::try_current().is_err() {
        return Err(LinkError::NoRuntime(uri.to_string()));
    }
    if uri.tls {
        return match tokio::runtime::Handle::current().runtime_flavor() {
            tokio::runtime::RuntimeFlavor::MultiThread => {
                tokio::task::block_in_place(|| tls_link::connect_blocking(uri, timeout))
            }
            _ => tls_link::connect_blocking(uri, timeout),
        };
    }
    let (socket, info) = connect_blocking(uri, timeout)?;
    start(socket, info, &uri.to_string())
}

/// [`connect_now`], tried again for up to `timeout` while the server turns
/// the connection away in the handshake (closes or resets it before
/// answering): a server briefly over its client limit, such as nbdkit's
/// limit filter still counting a connection just closed (by `vraid
/// create` before `vraid serve`), or one restarting. Anything else is
/// returned at once.
pub fn connect_patiently(uri: &NbdUri, timeout: Duration) -> Result<Conn, LinkError> {
    let deadline = std::time::Instant::now() + timeout;
    let mut wait = Duration::from_millis(50);
    loop {
        match connect_now(uri, timeout) {
            Err(e) if turned_away(&e) && std::time::Instant::now() + wait < deadline => {
                tracing::debug!(%uri, "turned away in the handshake; trying again in {wait:?}");
                std::thread::sleep(wait);
                wait = (wait * 2).min(Duration::from_millis(500));
            }
            done => return done,
        }
    }
}

/// The server closed or reset the connection before the handshake ended.
fn turned_away(e: &LinkError) -> bool {
    use super::handshake::HandshakeError;
    matches!(e, LinkError::Handshake { source: HandshakeError::Io(io), .. }
        if matches!(io.kind(), io::ErrorKind::UnexpectedEof
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::BrokenPipe))
}

/// Connects without blocking the async threads (reconnects).
pub async fn connect(uri: &NbdUri, timeout: Duration) -> Result<Conn, LinkError> {
    let u = uri.clone();
    if uri.tls {
        let joined =
            tokio::task::spawn_blocking(move || tls_link::connect_blocking(&u, timeout)).await;
        return joined.map_err(|e| LinkError::Connect {
            uri: uri.to_string(),
            source: io::Error::other(e.to_string()),
        })?;
    }
    let joined = tokio::task::spawn_blocking(move || connect_blocking(&u, timeout)).await;
    let (socket, info) = joined.map_err(|e| LinkError::Connect {
        uri: uri.to_string(),
        source: io::Error::other(e.to_string()),
    })??;
    start(socket, info, &uri.to_string())
}
