//! Our record layer (`switch`, `fast`) against a rustls client over
//! in-memory streams: data both ways after the switch, KeyUpdate both ways,
//! close_notify, a tampered record, an oversized record, TLS 1.2 left on
//! rustls. A proxy between the two ends lets a test change or inject bytes.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use rustls::pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream, ReadHalf, WriteHalf};
use tokio::sync::mpsc;

use super::tests::{client, pki, server};
use super::{buffered, switch, FastReader, FastWriter, ServerTls};

type Client = tokio_rustls::client::TlsStream<tokio::io::Join<DuplexStream, DuplexStream>>;
type Ours = (
    FastReader<ReadHalf<DuplexStream>>,
    FastWriter<WriteHalf<DuplexStream>>,
);

/// Client-to-server bytes pass through; `flip` set before the client
/// writes changes the last byte of the next chunk; raw bytes sent on the
/// channel are injected.
struct Tamper {
    flip: Arc<AtomicBool>,
    inject: mpsc::UnboundedSender<Vec<u8>>,
}

fn proxy(mut from: DuplexStream, mut to: DuplexStream) -> Tamper {
    let (tx, mut rx) = mpsc::unbounded_channel::<Vec<u8>>();
    let flip = Arc::new(AtomicBool::new(false));
    let flag = flip.clone();
    tokio::spawn(async move {
        let mut buf = vec![0u8; 1 << 16];
        loop {
            tokio::select! {
                Some(b) = rx.recv() => { let _ = to.write_all(&b).await; }
                n = from.read(&mut buf) => {
                    let Ok(n @ 1..) = n else { let _ = to.shutdown().await; return };
                    if flag.swap(false, Ordering::SeqCst) {
                        buf[n - 1] ^= 0x01;
                    }
                    if to.write_all(&buf[..n]).await.is_err() { return; }
                }
            }
        }
    });
    Tamper { flip, inject: tx }
}

/// A handshake, one exchange over rustls (standing for the NBD options),
/// then the server switched to our record layer.
async fn connected(
    tls: &ServerTls,
    dir: &std::path::Path,
    config: Option<rustls::ClientConfig>,
) -> Setup {
    let (c, p1) = tokio::io::duplex(1 << 16);
    let (p2_write, s_in) = tokio::io::duplex(1 << 16);
    let tamper = proxy(p1, p2_write);
    let (s_out_far, c_in) = tokio::io::duplex(1 << 16);
    // One stream per side: the proxied direction joined with the direct one.
    let client_io = tokio::io::join(c_in, c);
    let server_io = tokio::io::join(s_in, s_out_far);
    let connector = match config {
        Some(c) => tokio_rustls::TlsConnector::from(Arc::new(c)),
        None => client(dir, Some("a")).connector(),
    };
    let name = ServerName::try_from("localhost").unwrap();
    let serving = async {
        let (mut s, capture) = tls.accept_switchable(buffered(server_io)).await.unwrap();
        let mut opt = [0u8; 2];
        s.read_exact(&mut opt).await.unwrap();
        s.write_all(b"go").await.unwrap();
        s.flush().await.unwrap();
        (s, capture.unwrap())
    };
    let asking = async {
        let mut c = connector.connect(name, client_io).await.unwrap();
        c.write_all(b"op").await.unwrap();
        let mut go = [0u8; 2];
        c.read_exact(&mut go).await.unwrap();
        c
    };
    let ((s, capture), c) = tokio::join!(serving, asking);
    Setup {
        client: c,
        server: switch(s, &capture).unwrap(),
        tamper,
    }
}

struct Setup {
    client: Client,
    server: super::Switch<tokio::io::Join<DuplexStream, DuplexStream>>,
    tamper: Tamper,
}

impl Setup {
    fn ours(self) -> (Client, Ours, Tamper) {
        let Ok(sw) = self.server else {
            panic!("rustls kept the connection")
        };
        (self.client, sw.halves(split_join), self.tamper)
    }
}

fn split_join(
    j: tokio::io::Join<DuplexStream, DuplexStream>,
) -> (ReadHalf<DuplexStream>, WriteHalf<DuplexStream>) {
    let (r, w) = j.into_inner();
    (tokio::io::split(r).0, tokio::io::split(w).1)
}

fn pattern(n: usize, seed: u8) -> Vec<u8> {
    (0..n).map(|i| (i as u8).wrapping_mul(31) ^ seed).collect()
}

async fn round_trip(client: &mut Client, ours: &mut Ours, n: usize, seed: u8) {
    let up = pattern(n, seed);
    let down = pattern(n, seed ^ 0x55);
    let (mut got_up, mut got_down) = (vec![0; n], vec![0; n]);
    let ((), ()) = tokio::join!(
        async {
            client.write_all(&up).await.unwrap();
            client.flush().await.unwrap();
            client.read_exact(&mut got_down).await.unwrap();
        },
        async {
            ours.0.read_exact(&mut got_up).await.unwrap();
            ours.1.write_all(&down).await.unwrap();
        }
    );
    assert!(got_up == up && got_down == down);
}

#[tokio::test]
async fn a_rustls_client_and_our_record_layer_exchange_both_ways_then_close() {
    let dir = pki();
    let tls = server(dir.path(), &[]);
    let (mut c, mut ours, _t) = connected(&tls, dir.path(), None).await.ours();

    round_trip(&mut c, &mut ours, 1, 1).await;
    round_trip(&mut c, &mut ours, 300 << 10, 2).await;

    ours.1.shutdown().await.unwrap();
    assert_eq!(
        c.read(&mut [0u8; 8]).await.unwrap(),
        0,
        "close_notify read as EOF"
    );
    c.shutdown().await.unwrap();
    assert_eq!(ours.0.read(&mut [0u8; 8]).await.unwrap(), 0);
}

#[tokio::test]
async fn key_updates_both_ways_keep_the_stream_going() {
    let dir = pki();
    let tls = server(dir.path(), &[]);
    let (mut c, mut ours, _t) = connected(&tls, dir.path(), None).await.ours();

    for round in 0..3u8 {
        // update_requested: our reader follows, our writer answers with its
        // own KeyUpdate before its next record, rustls follows that.
        c.get_mut().1.refresh_traffic_keys().unwrap();
        round_trip(&mut c, &mut ours, 40 << 10, round).await;
    }

    assert_eq!(ours.1.key_updates(), 3, "each request answered");
}

#[tokio::test]
async fn a_tampered_record_ends_the_stream_and_none_of_it_is_read() {
    let dir = pki();
    let tls = server(dir.path(), &[]);
    let (mut c, mut ours, tamper) = connected(&tls, dir.path(), None).await.ours();
    round_trip(&mut c, &mut ours, 1000, 3).await;

    tamper.flip.store(true, Ordering::SeqCst);
    c.write_all(b"write payload").await.unwrap();
    c.flush().await.unwrap();
    let mut buf = [0u8; 64];
    let e = ours.0.read(&mut buf).await.unwrap_err();

    assert_eq!(e.kind(), std::io::ErrorKind::InvalidData);
    assert!(e.to_string().contains("bad_record_mac"), "{e}");
    assert_eq!(buf, [0u8; 64]);
}

#[tokio::test]
async fn a_record_over_the_size_limit_is_refused_from_its_header() {
    let dir = pki();
    let tls = server(dir.path(), &[]);
    let (_c, mut ours, tamper) = connected(&tls, dir.path(), None).await.ours();

    let len = (super::record::MAX_CIPHERTEXT + 1) as u16;
    let [hi, lo] = len.to_be_bytes();
    tamper.inject.send(vec![23, 3, 3, hi, lo]).unwrap();
    let e = ours.0.read(&mut [0u8; 64]).await.unwrap_err();

    assert!(e.to_string().contains("record_overflow"), "{e}");
}

#[tokio::test]
async fn tls_1_2_stays_on_rustls() {
    let dir = pki();
    let tls = server(dir.path(), &[]);
    let roots = super::pem::roots(&dir.path().join("ca.pem")).unwrap();
    let config = rustls::ClientConfig::builder_with_provider(super::provider())
        .with_protocol_versions(&[&rustls::version::TLS12])
        .unwrap()
        .with_root_certificates(roots)
        .with_client_auth_cert(
            super::pem::certs(&dir.path().join("a.pem"), "certificate").unwrap(),
            super::pem::key(&dir.path().join("a-key.pem")).unwrap(),
        )
        .unwrap();

    let setup = connected(&tls, dir.path(), Some(config)).await;

    assert!(setup.server.is_err(), "rustls keeps a TLS 1.2 connection");
}

#[tokio::test]
async fn our_client_side_against_a_rustls_server_follows_its_key_updates() {
    let dir = pki();
    let p = dir.path();
    let tls = super::tests::rustls_only_server(p);
    let (c_io, s_io) = tokio::io::duplex(1 << 16);
    let serving = async {
        let mut s = tls.accept(s_io).await.unwrap();
        let mut opt = [0u8; 2];
        s.read_exact(&mut opt).await.unwrap();
        s.write_all(b"go").await.unwrap();
        s.flush().await.unwrap();
        s
    };
    let roots_only = super::ClientTls::load(&p.join("ca.pem"), None).unwrap();
    let asking = async {
        let (mut c, capture) = roots_only
            .connect_switchable("localhost", buffered(c_io))
            .await
            .unwrap();
        c.write_all(b"op").await.unwrap();
        c.flush().await.unwrap();
        let mut go = [0u8; 2];
        c.read_exact(&mut go).await.unwrap();
        (c, capture)
    };
    let (mut s, (c, capture)) = tokio::join!(serving, asking);
    let Ok(sw) = super::switch_client(c, &capture).unwrap() else {
        panic!("rustls kept the client connection")
    };
    let (mut r, mut w) = sw.halves(tokio::io::split);

    for round in 0..3u8 {
        s.get_mut().1.refresh_traffic_keys().unwrap();
        let (up, down) = (pattern(70 << 10, round), pattern(70 << 10, !round));
        let (mut got_up, mut got_down) = (vec![0; up.len()], vec![0; down.len()]);
        tokio::join!(
            async {
                s.write_all(&down).await.unwrap();
                s.flush().await.unwrap();
                s.read_exact(&mut got_up).await.unwrap();
            },
            async {
                r.read_exact(&mut got_down).await.unwrap();
                w.write_all(&up).await.unwrap();
            }
        );
        assert!(got_up == up && got_down == down, "round {round}");
    }
    assert_eq!(w.key_updates(), 3);
}

#[test]
fn the_fuzz_entry_reads_sealed_chunks_and_stops_at_close_notify_or_garbage() {
    use super::fuzz_receive;
    assert_eq!(fuzz_receive(&[1, 23, 3, b'a', b'b', b'c']).unwrap(), b"abc");
    // Zero padding after the inner type is stripped: "ab" | 23 | 0 0.
    assert_eq!(fuzz_receive(&[1, 0, 4, b'a', b'b', 23, 0]).unwrap(), b"ab");
    let closed = [1, 23, 1, b'x', 21, 2, 1, 0, 23, 1, b'y'];
    assert_eq!(fuzz_receive(&closed).unwrap(), b"x");
    assert!(
        fuzz_receive(&[1, 22, 1, 4]).is_err(),
        "a cut handshake message"
    );
    assert!(
        fuzz_receive(&[0, 23, 3, 3, 0, 20, 1, 2, 3]).is_err(),
        "cut record"
    );
    assert!(
        fuzz_receive(&[0, 22, 3, 3, 0, 1, 0]).is_err(),
        "plaintext handshake"
    );
}

// ---- Red team, session 17 (redtls) ----

/// Records sealed by `tx` from (inner type, content) pairs.
fn seal_all(tx: &mut super::record::Direction, records: &[(u8, &[u8])]) -> Vec<u8> {
    use super::record::{HEADER, TAG};
    let mut wire = Vec::new();
    for (inner, content) in records {
        let at = wire.len();
        wire.resize(at + HEADER + content.len() + 1 + TAG, 0);
        wire[at + HEADER..at + HEADER + content.len()].copy_from_slice(content);
        tx.seal(&mut wire[at..], *inner);
    }
    wire
}

#[test]
fn a_zero_length_handshake_record_is_refused() {
    // RFC 8446 §5.1: zero-length fragments of handshake type are not
    // allowed; FORMAT §14 accepts only KeyUpdate after the handshake.
    let e = super::fuzz_receive(&[1, 22, 0, 23, 1, b'y']).unwrap_err();
    assert!(e.to_string().contains("not allowed"), "{e}");
}

#[test]
fn change_cipher_spec_other_alerts_and_all_padding_records_are_refused() {
    use super::fuzz_receive;
    assert!(fuzz_receive(&[1, 23, 1, b'x', 20, 1, 1]).is_err(), "ccs");
    assert!(
        fuzz_receive(&[1, 23, 1, b'x', 21, 2, 2, 40]).is_err(),
        "fatal"
    );
    assert!(
        fuzz_receive(&[1, 23, 1, b'x', 21, 2, 1, 90]).is_err(),
        "cancel"
    );
    assert!(fuzz_receive(&[1, 0, 3, 0, 0, 0]).is_err(), "all padding");
    // Handshake messages other than KeyUpdate: ClientHello, Finished, a
    // NewSessionTicket at the server.
    for kind in [1u8, 20, 4] {
        let r = fuzz_receive(&[1, 22, 5, kind, 0, 0, 1, 0, 23, 1, b'z']);
        assert!(r.is_err(), "handshake type {kind}");
    }
    // Zero-length application records carry nothing and are skipped.
    assert_eq!(fuzz_receive(&[1, 23, 0, 23, 0, 23, 1, b'q']).unwrap(), b"q");
}

/// Hands out `wire` one byte per read, Pending between bytes.
struct Trickle {
    wire: Vec<u8>,
    at: usize,
    pending: bool,
}

impl tokio::io::AsyncRead for Trickle {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        self.pending = !self.pending;
        if self.pending {
            cx.waker().wake_by_ref();
            return std::task::Poll::Pending;
        }
        if self.at < self.wire.len() {
            buf.put_slice(&[self.wire[self.at]]);
            self.at += 1;
        }
        std::task::Poll::Ready(Ok(()))
    }
}

#[tokio::test]
async fn records_trickled_one_byte_per_read_with_empty_and_key_update_records() {
    use super::record::{Direction, Suite, APPLICATION_DATA as AD, HANDSHAKE};
    let suite = Suite::Chacha20Poly1305;
    let mut tx = Direction::new(suite, vec![9; 32], 77);
    let big = pattern(20_000, 4);
    let mut wire = seal_all(&mut tx, &[(AD, b"he"), (AD, b""), (AD, &big[..16384])]);
    wire.extend(seal_all(&mut tx, &[(HANDSHAKE, &[24, 0, 0, 1, 0])]));
    tx.update();
    wire.extend(seal_all(&mut tx, &[(AD, &big[16384..]), (AD, b"llo")]));
    let shared = Arc::new(super::fast::Shared::default());
    let rx = Direction::new(suite, vec![9; 32], 77);
    let trickle = Trickle {
        wire,
        at: 0,
        pending: false,
    };
    let mut reader = FastReader::new(trickle, rx, shared, &[]);
    let mut got = Vec::new();
    reader.read_to_end(&mut got).await.unwrap();
    let mut want = b"he".to_vec();
    want.extend(&big);
    want.extend(b"llo");
    assert!(got == want, "{} bytes", got.len());
}

#[tokio::test]
async fn a_flood_of_update_requested_key_updates_is_answered_once() {
    let dir = pki();
    let tls = server(dir.path(), &[]);
    let (mut c, mut ours, _t) = connected(&tls, dir.path(), None).await.ours();
    for _ in 0..2000 {
        c.get_mut().1.refresh_traffic_keys().unwrap();
        c.write_all(b"k").await.unwrap();
    }
    c.flush().await.unwrap();
    let mut got = vec![0u8; 2000];
    ours.0.read_exact(&mut got).await.unwrap();
    assert!(got.iter().all(|&b| b == b'k'));
    round_trip(&mut c, &mut ours, 50 << 10, 9).await;
    assert_eq!(ours.1.key_updates(), 1, "no amplification: one answer");
}

#[tokio::test]
async fn close_notify_or_a_cut_inside_a_payload_is_an_error_not_a_short_read() {
    let dir = pki();
    let tls = server(dir.path(), &[]);
    // close_notify after half a 64 KiB payload.
    let (mut c, mut ours, _t) = connected(&tls, dir.path(), None).await.ours();
    c.write_all(&pattern(32 << 10, 1)).await.unwrap();
    c.shutdown().await.unwrap();
    let mut payload = vec![0u8; 64 << 10];
    let e = ours.0.read_exact(&mut payload).await.unwrap_err();
    assert_eq!(e.kind(), std::io::ErrorKind::UnexpectedEof);
    // A cut mid-record (header and part of a body): an error, and it stays
    // one on every later read.
    use super::record::{Direction, Suite};
    let rx = Direction::new(Suite::Aes128Gcm, vec![1; 32], 0);
    let shared = Arc::new(super::fast::Shared::default());
    let cut: &[u8] = &[23, 3, 3, 0, 40, 1, 2, 3];
    let mut reader = FastReader::new(cut, rx, shared, &[]);
    let e = reader.read(&mut [0u8; 8]).await.unwrap_err();
    assert_eq!(e.kind(), std::io::ErrorKind::UnexpectedEof);
    assert!(reader.read(&mut [0u8; 8]).await.is_err(), "sticky");
}

/// `updates` KeyUpdates in a row (each followed by the key change), then
/// one application record, as a wire.
fn key_updates_then_data(tx: &mut super::record::Direction, updates: usize) -> Vec<u8> {
    use super::record::{APPLICATION_DATA, HANDSHAKE};
    let mut wire = Vec::new();
    for _ in 0..updates {
        wire.extend(seal_all(tx, &[(HANDSHAKE, &[24, 0, 0, 1, 1])]));
        tx.update();
    }
    wire.extend(seal_all(tx, &[(APPLICATION_DATA, b"d")]));
    wire
}

#[tokio::test]
async fn more_than_32_key_updates_without_data_between_end_the_connection() {
    use super::record::{Direction, Suite};
    let suite = Suite::Aes128Gcm;
    let read = |wire: Vec<u8>| async move {
        let rx = Direction::new(suite, vec![5; 32], 0);
        let shared = Arc::new(super::fast::Shared::default());
        let mut reader = FastReader::new(&wire[..], rx, shared, &[]);
        let mut got = Vec::new();
        reader.read_to_end(&mut got).await.map(|_| got)
    };
    // As rustls (and BoringSSL): 32 in a row are fine, data resets the count.
    let mut tx = Direction::new(suite, vec![5; 32], 0);
    let mut wire = key_updates_then_data(&mut tx, 32);
    wire.extend(key_updates_then_data(&mut tx, 32));
    assert_eq!(read(wire).await.unwrap(), b"dd");
    let mut tx = Direction::new(suite, vec![5; 32], 0);
    let e = read(key_updates_then_data(&mut tx, 33)).await.unwrap_err();
    assert!(e.to_string().contains("not allowed"), "{e}");
}
