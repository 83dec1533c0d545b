//! `nbds://` members: the plain greeting, `NBD_OPT_STARTTLS`, the TLS
//! upgrade with [`ClientTls`], then the rest of the handshake and the
//! transmission phase over TLS. A server that refuses STARTTLS fails the
//! connection: there is no fall back to plain text. The socket is read
//! through a [`crate::tls::READ_BUFFER`] buffer under rustls (which asks
//! for 4 KiB at a time), as the server's is.
//!
//! ```text
//!  blocking socket ─ greet ─ STARTTLS ─ ACK ─► tokio socket ─ 64 KiB read
//!  buffer ─ TLS ─► Bridge
//!  Bridge (sync Read/Write over the TLS stream) ─ options ─► Conn
//!    (over our record layer after the options, FORMAT.md §14, unless
//!    `--tls-record-layer=rustls` or the server chose TLS 1.2)
//! ```

use std::io::{self, Read, Write};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::runtime::Handle;

use super::conn::Conn;
use super::handshake::{self, HandshakeError};
use super::link::{tcp_connect, Deadline, LinkError, Timed};
use super::uri::{Endpoint, NbdUri};
use crate::tls::{buffered, ClientTls, Flushed, RecordLayer};

/// The connector of `uri` and the name its server must prove.
fn client_tls(uri: &NbdUri) -> Result<(ClientTls, String), LinkError> {
    let shown = uri.to_string();
    let dir = uri
        .tls_certificates
        .as_deref()
        .ok_or_else(|| LinkError::TlsSetup(shown.clone(), "nbds:// needs ?tls-certificates=DIR"))?;
    let cert = dir.join("client-cert.pem");
    let key = dir.join("client-key.pem");
    let identity = cert.exists().then_some((cert.as_path(), key.as_path()));
    let tls =
        ClientTls::load(&dir.join("ca-cert.pem"), identity).map_err(|source| LinkError::Tls {
            uri: shown.clone(),
            source,
        })?;
    let name = match (&uri.tls_hostname, &uri.endpoint) {
        (Some(n), _) => n.clone(),
        (None, Endpoint::Tcp { host, .. }) => host.clone(),
        (None, Endpoint::Unix(_)) => "localhost".to_string(),
    };
    Ok((tls, name))
}

/// Connects, upgrades and runs the handshake. Blocks: call from a thread
/// that may block (`spawn_blocking`, `block_in_place`) inside the runtime.
pub fn connect_blocking(uri: &NbdUri, timeout: Duration) -> Result<Conn, LinkError> {
    let (tls, name) = client_tls(uri)?;
    let shown = uri.to_string();
    let connect = |source| LinkError::Connect {
        uri: shown.clone(),
        source,
    };
    let up = Upgrade {
        tls,
        name,
        uri,
        timeout,
    };
    match &uri.endpoint {
        Endpoint::Tcp { host, port } => {
            let mut s = tcp_connect(host, *port, timeout).map_err(connect)?;
            s.set_read_timeout(Some(timeout)).map_err(connect)?;
            s.set_write_timeout(Some(timeout)).map_err(connect)?;
            s.set_nodelay(true).map_err(connect)?;
            up.plain_part(&mut s)?;
            prepare(&s).map_err(connect)?;
            up.finish(tokio::net::TcpStream::from_std(s).map_err(connect)?)
        }
        Endpoint::Unix(path) => {
            let mut s = std::os::unix::net::UnixStream::connect(path).map_err(connect)?;
            s.set_read_timeout(Some(timeout)).map_err(connect)?;
            s.set_write_timeout(Some(timeout)).map_err(connect)?;
            up.plain_part(&mut s)?;
            s.set_nonblocking(true).map_err(connect)?;
            up.finish(tokio::net::UnixStream::from_std(s).map_err(connect)?)
        }
    }
}

fn prepare(s: &std::net::TcpStream) -> io::Result<()> {
    s.set_read_timeout(None)?;
    s.set_write_timeout(None)?;
    s.set_nonblocking(true)?;
    super::link::discard_unsent_on_close(s)
}

/// One upgrade in progress.
struct Upgrade<'a> {
    tls: ClientTls,
    name: String,
    uri: &'a NbdUri,
    timeout: Duration,
}

impl Upgrade<'_> {
    fn shake(&self, source: HandshakeError) -> LinkError {
        LinkError::Handshake {
            uri: self.uri.to_string(),
            source: super::link::stalled(source, self.timeout),
        }
    }

    /// Greeting, flags and STARTTLS on the plain socket.
    fn plain_part<S: Read + Write + Timed>(&self, s: &mut S) -> Result<(), LinkError> {
        let mut s = Deadline::new(s, self.timeout);
        handshake::greet(&mut s).map_err(|e| self.shake(e))?;
        handshake::start_tls(&mut s).map_err(|e| self.shake(e))
    }

    /// The TLS handshake, the options over TLS, the connection.
    fn finish<S: Halves>(self, stream: S) -> Result<Conn, LinkError> {
        let stream = buffered(stream);
        let handle = Handle::current();
        let (tls, capture) = handle
            .block_on(async {
                let connect = self.tls.connect_switchable(&self.name, stream);
                tokio::time::timeout(self.timeout, connect).await
            })
            .map_err(|_| self.shake(io::Error::from(io::ErrorKind::TimedOut).into()))?
            .map_err(|source| LinkError::Tls {
                uri: self.uri.to_string(),
                source,
            })?;
        let mut bridge = Bridge {
            stream: tls,
            handle,
            end: tokio::time::Instant::now() + self.timeout,
        };
        let info = handshake::options(&mut bridge, &self.uri.export).map_err(|e| self.shake(e))?;
        let stream = match crate::tls::client_record_layer() {
            RecordLayer::Rustls => bridge.stream,
            RecordLayer::Ours => match crate::tls::switch_client(bridge.stream, &capture) {
                Ok(Ok(ours)) => {
                    tracing::info!(uri = %self.uri, "nbds:// member: TLS record layer: ours");
                    let (r, w) = ours.halves(Halves::halves);
                    return Ok(Conn::start(r, w, info));
                }
                Ok(Err(rustls)) => rustls,
                Err(source) => {
                    return Err(LinkError::Tls {
                        uri: self.uri.to_string(),
                        source,
                    })
                }
            },
        };
        let (r, w) = tokio::io::split(stream);
        Ok(Conn::start(r, Flushed::new(w), info))
    }
}

/// A socket split into owned halves for our record layer.
trait Halves: AsyncRead + AsyncWrite + Unpin + Send + 'static {
    type R: AsyncRead + Unpin + Send + 'static;
    type W: AsyncWrite + Unpin + Send + 'static;
    fn halves(self) -> (Self::R, Self::W);
}

impl Halves for tokio::net::TcpStream {
    type R = tokio::net::tcp::OwnedReadHalf;
    type W = tokio::net::tcp::OwnedWriteHalf;
    fn halves(self) -> (Self::R, Self::W) {
        self.into_split()
    }
}

impl Halves for tokio::net::UnixStream {
    type R = tokio::net::unix::OwnedReadHalf;
    type W = tokio::net::unix::OwnedWriteHalf;
    fn halves(self) -> (Self::R, Self::W) {
        self.into_split()
    }
}

/// Blocking `Read + Write` over an async stream, every step ending by
/// `end` (the handshake code is synchronous; one deadline for them all,
/// so a server trickling its replies cannot stretch it).
struct Bridge<S> {
    stream: S,
    handle: Handle,
    end: tokio::time::Instant,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Read for Bridge<S> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let (h, end) = (self.handle.clone(), self.end);
        let s = &mut self.stream;
        h.block_on(tokio::time::timeout_at(end, s.read(buf)))
            .map_err(|_| io::Error::from(io::ErrorKind::TimedOut))?
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> Write for Bridge<S> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let (h, end) = (self.handle.clone(), self.end);
        let s = &mut self.stream;
        h.block_on(tokio::time::timeout_at(end, s.write(buf)))
            .map_err(|_| io::Error::from(io::ErrorKind::TimedOut))?
    }

    fn flush(&mut self) -> io::Result<()> {
        let (h, end) = (self.handle.clone(), self.end);
        let s = &mut self.stream;
        h.block_on(tokio::time::timeout_at(end, s.flush()))
            .map_err(|_| io::Error::from(io::ErrorKind::TimedOut))?
    }
}
