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
    let tls = ServerTls::load(&super::ServerTlsConfig {
        mode: super::TlsMode::Require,
        cert: p.join("server.pem"),
        key: p.join("server-key.pem"),
        record_layer: super::RecordLayer::Rustls,
        ..super::ServerTlsConfig::default()
    })
    .unwrap();
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
