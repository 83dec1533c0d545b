//! Handing a server connection from rustls to our record layer after the
//! NBD options (docs/FORMAT.md §14): the traffic secrets captured by a
//! per-connection `KeyLog`, the checks that nothing is left inside rustls,
//! the sequence numbers from `dangerous_extract_secrets`, and the bytes
//! already read from the socket carried over.
//!
//! ```text
//!  TlsStream<BufReader<S>> ─ checks ─► (BufReader<S>, ServerConnection)
//!    ─ extract ─► rx/tx Direction (keys checked against rustls's) ─► Switched<S>
//!  any check failing before extraction: the stream back, rustls goes on
//! ```

use std::fmt;
use std::str::FromStr;
use std::sync::{Arc, Mutex};

use std::ops::DerefMut;

use rustls::client::ClientConnectionData;
use rustls::server::ServerConnectionData;
use rustls::{
    ClientConnection, ConnectionCommon, ConnectionTrafficSecrets, ExtractedSecrets, KeyLog,
    ProtocolVersion, ServerConnection,
};
use tokio::io::{AsyncRead, AsyncWrite, BufReader};

use super::fast::{FastReader, FastWriter, Shared};
use super::record::{derive, next_secret, Direction, Suite};
use super::{ClientTlsStream, ServerTlsStream, TlsError};

/// Who runs the record layer after the options.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum RecordLayer {
    /// Our own (TLS 1.3 with the three suites), rustls otherwise.
    #[default]
    Ours,
    /// rustls throughout.
    Rustls,
}

impl FromStr for RecordLayer {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "ours" => Ok(RecordLayer::Ours),
            "rustls" => Ok(RecordLayer::Rustls),
            other => Err(format!(
                "unknown TLS record layer {other:?}: expected ours or rustls"
            )),
        }
    }
}

impl fmt::Display for RecordLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            RecordLayer::Ours => "ours",
            RecordLayer::Rustls => "rustls",
        })
    }
}

/// The record layer `nbds://` members use (set once by `vraid serve`
/// from `--tls-record-layer`; ours unless told).
static CLIENT_RUSTLS: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Sets the record layer of `nbds://` members.
pub fn set_client_record_layer(layer: RecordLayer) {
    CLIENT_RUSTLS.store(
        layer == RecordLayer::Rustls,
        std::sync::atomic::Ordering::Relaxed,
    );
}

/// The record layer of `nbds://` members.
pub fn client_record_layer() -> RecordLayer {
    if CLIENT_RUSTLS.load(std::sync::atomic::Ordering::Relaxed) {
        RecordLayer::Rustls
    } else {
        RecordLayer::Ours
    }
}

/// (client, server) secrets as logged so far.
type Logged = (Option<Vec<u8>>, Option<Vec<u8>>);

/// The first application traffic secrets of one connection.
#[derive(Default)]
pub struct Capture {
    secrets: Mutex<Logged>,
}

impl fmt::Debug for Capture {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Capture")
    }
}

impl KeyLog for Capture {
    fn log(&self, label: &str, _client_random: &[u8], secret: &[u8]) {
        let mut s = self.secrets.lock().expect("capture lock");
        match label {
            "CLIENT_TRAFFIC_SECRET_0" => s.0 = Some(secret.to_vec()),
            "SERVER_TRAFFIC_SECRET_0" => s.1 = Some(secret.to_vec()),
            _ => {}
        }
    }

    fn will_log(&self, label: &str) -> bool {
        matches!(label, "CLIENT_TRAFFIC_SECRET_0" | "SERVER_TRAFFIC_SECRET_0")
    }
}

impl Capture {
    /// (client, server) secrets, once both were logged.
    fn take(&self) -> Option<(Vec<u8>, Vec<u8>)> {
        let mut s = self.secrets.lock().expect("capture lock");
        match std::mem::take(&mut *s) {
            (Some(c), Some(s)) => Some((c, s)),
            _ => None,
        }
    }
}

/// A connection our record layer now runs.
pub struct Switched<S> {
    io: S,
    carried: Vec<u8>,
    rx: Direction,
    tx: Direction,
    client: bool,
}

impl<S> fmt::Debug for Switched<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Switched")
            .field("carried", &self.carried.len())
            .finish_non_exhaustive()
    }
}

impl<S> Switched<S> {
    /// Other rekey limits for both directions (tests).
    #[cfg(test)]
    pub(crate) fn set_limits(&mut self, send: u64, receive: u64) {
        self.rx.set_limits(send, receive);
        self.tx.set_limits(send, receive);
    }

    /// The socket, bytes carried over, and the (receive, send) directions:
    /// for tests acting as a peer that seals records by hand.
    #[cfg(test)]
    pub(crate) fn into_parts(self) -> (S, Vec<u8>, Direction, Direction) {
        (self.io, self.carried, self.rx, self.tx)
    }

    /// The two halves over `split(socket)`.
    pub fn halves<R, W>(self, split: impl FnOnce(S) -> (R, W)) -> (FastReader<R>, FastWriter<W>) {
        let (r, w) = split(self.io);
        let shared = Arc::new(Shared::default());
        (
            FastReader::new(r, self.rx, shared.clone(), &self.carried).client(self.client),
            FastWriter::new(w, self.tx, shared),
        )
    }
}

/// The outcome of [`switch`]: ours, or rustls's stream back.
pub type Switch<S> = Result<Switched<S>, ServerTlsStream<BufReader<S>>>;

/// The outcome of [`switch_client`]: ours, or rustls's stream back.
pub type ClientSwitch<S> = Result<Switched<S>, ClientTlsStream<BufReader<S>>>;

/// Who we are on a connection: which captured secret is received.
pub trait Side: DerefMut<Target = ConnectionCommon<Self::Data>> + Sized {
    /// rustls's per-side connection data.
    type Data;
    /// The client (receives the server's secret; ignores tickets).
    const CLIENT: bool;
    /// `dangerous_extract_secrets`.
    fn extract(self) -> Result<ExtractedSecrets, rustls::Error>;
}

impl Side for ServerConnection {
    type Data = ServerConnectionData;
    const CLIENT: bool = false;
    fn extract(self) -> Result<ExtractedSecrets, rustls::Error> {
        self.dangerous_extract_secrets()
    }
}

impl Side for ClientConnection {
    type Data = ClientConnectionData;
    const CLIENT: bool = true;
    fn extract(self) -> Result<ExtractedSecrets, rustls::Error> {
        self.dangerous_extract_secrets()
    }
}

/// The suite, if FORMAT §14's conditions hold for `conn` right now.
fn ready<C: Side>(conn: &mut C) -> Option<Suite> {
    let suite = conn
        .negotiated_cipher_suite()
        .and_then(|s| Suite::of(s.suite()))?;
    let quiet = conn
        .process_new_packets()
        .is_ok_and(|s| s.plaintext_bytes_to_read() == 0 && !s.peer_has_closed());
    // A KeyUpdate rustls owes the peer (it received update_requested) sits
    // sealed in a queue of its own until the next write; an empty write
    // moves it to the bytes to send, so `wants_write` sees it (case 150).
    let _ = std::io::Write::write(&mut conn.writer(), &[]);
    let idle = quiet && !conn.wants_write();
    let tls13 = conn.protocol_version() == Some(ProtocolVersion::TLSv1_3);
    (idle && tls13).then_some(suite)
}

/// Extracts `conn`'s sequence numbers and builds both directions.
fn take<C: Side, S: AsyncRead>(
    buffered: BufReader<S>,
    conn: C,
    suite: Suite,
    (client, server): (Vec<u8>, Vec<u8>),
) -> Result<Switched<S>, TlsError> {
    let secrets = conn.extract().map_err(TlsError::Config)?;
    let (ours, theirs) = if C::CLIENT {
        (client, server)
    } else {
        (server, client)
    };
    let rx = checked(suite, theirs, secrets.rx)?;
    let tx = checked(suite, ours, secrets.tx)?;
    let carried = buffered.buffer().to_vec();
    Ok(Switched {
        io: buffered.into_inner(),
        carried,
        rx,
        tx,
        client: C::CLIENT,
    })
}

/// Takes a server connection from rustls if FORMAT §14's conditions hold.
pub fn switch<S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: ServerTlsStream<BufReader<S>>,
    capture: &Capture,
) -> Result<Switch<S>, TlsError> {
    let Some(suite) = ready(stream.get_mut().1) else {
        return Ok(Err(stream));
    };
    let Some(secrets) = capture.take() else {
        return Ok(Err(stream));
    };
    let (buffered, conn) = stream.into_inner();
    take(buffered, conn, suite, secrets).map(Ok)
}

/// Takes a client connection (an `nbds://` member) from rustls likewise.
pub fn switch_client<S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: ClientTlsStream<BufReader<S>>,
    capture: &Capture,
) -> Result<ClientSwitch<S>, TlsError> {
    let Some(suite) = ready(stream.get_mut().1) else {
        return Ok(Err(stream));
    };
    let Some(secrets) = capture.take() else {
        return Ok(Err(stream));
    };
    let (buffered, conn) = stream.into_inner();
    take(buffered, conn, suite, secrets).map(Ok)
}

/// KeyUpdates rustls may have made before the switch that [`checked`]
/// follows (FORMAT.md §14, case 150): rustls accepts as many in a row.
const KEY_UPDATES_BEFORE_SWITCH: usize = 32;

/// Our direction from `secret`, or from the secret after the KeyUpdates
/// rustls already made (each one "traffic upd" step), whichever gives
/// rustls's key and IV.
fn checked(
    suite: Suite,
    mut secret: Vec<u8>,
    (seq, theirs): (u64, ConnectionTrafficSecrets),
) -> Result<Direction, TlsError> {
    let (k, i) = match &theirs {
        ConnectionTrafficSecrets::Aes128Gcm { key: k, iv: i }
        | ConnectionTrafficSecrets::Aes256Gcm { key: k, iv: i }
        | ConnectionTrafficSecrets::Chacha20Poly1305 { key: k, iv: i } => (k, i),
        _ => return Err(mismatch()),
    };
    for _ in 0..=KEY_UPDATES_BEFORE_SWITCH {
        let (key, iv) = derive(suite, &secret);
        if k.as_ref() == key.as_slice() && i.as_ref() == iv.as_slice() {
            return Ok(Direction::new(suite, secret, seq));
        }
        secret = next_secret(suite, &secret);
    }
    Err(mismatch())
}

fn mismatch() -> TlsError {
    TlsError::Usage("TLS record layer: captured secret does not give rustls's key".into())
}
