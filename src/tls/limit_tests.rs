//! The rekey limits reached in a test run (limits set small): both ends
//! send their KeyUpdate and carry on with rustls as the peer; the receive
//! limit refuses the record past it. And the server's alert for a refused
//! record as a rustls client sees it.

use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::record::{Direction, Suite, APPLICATION_DATA as AD, HANDSHAKE};
use super::tests::{client, pki, rustls_only_server, seal_all, server};
use super::{buffered, switch, switch_client, FastReader};

fn pattern(n: usize, seed: u8) -> Vec<u8> {
    (0..n).map(|i| (i as u8).wrapping_mul(13) ^ seed).collect()
}

/// A rustls client of `dir`'s PKI over `io` that reads the server's "go"
/// and answers "op" (the NBD options' stand-in before the switch).
async fn rustls_client_opened(
    dir: &std::path::Path,
    io: tokio::io::DuplexStream,
) -> tokio_rustls::client::TlsStream<tokio::io::DuplexStream> {
    let connector = client(dir, Some("a")).connector();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let mut c = connector.connect(name, io).await.unwrap();
    c.read_exact(&mut [0u8; 2]).await.unwrap();
    c.write_all(b"op").await.unwrap();
    c.flush().await.unwrap();
    c
}

/// 50 records of 16 KiB.
const BULK: usize = 50 << 14;

#[tokio::test]
async fn our_server_rekeys_at_its_send_limit_and_a_rustls_client_reads_on() {
    let dir = pki();
    let tls = server(dir.path(), &[]);
    let (c_io, s_io) = tokio::io::duplex(1 << 16);
    let serving = async {
        let (mut s, capture) = tls.accept_switchable(buffered(s_io)).await.unwrap();
        s.write_all(b"go").await.unwrap();
        s.flush().await.unwrap();
        s.read_exact(&mut [0u8; 2]).await.unwrap();
        let Ok(mut sw) = switch(s, &capture.unwrap()).unwrap() else {
            panic!("rustls kept the connection")
        };
        sw.set_limits(5, 1 << 40);
        sw.halves(tokio::io::split)
    };
    let asking = rustls_client_opened(dir.path(), c_io);
    let ((mut r, mut w), mut c) = tokio::join!(serving, asking);
    let down = pattern(BULK, 1);
    let mut got = vec![0u8; BULK];
    tokio::join!(async { w.write_all(&down).await.unwrap() }, async {
        c.read_exact(&mut got).await.unwrap()
    });
    assert!(got == down);
    // Checked once per write batch (four records): every 8 records here.
    assert!(w.key_updates() >= 6, "{} KeyUpdates", w.key_updates());
    c.write_all(b"still").await.unwrap();
    c.flush().await.unwrap();
    let mut five = [0u8; 5];
    r.read_exact(&mut five).await.unwrap();
    assert_eq!(&five, b"still");
}

#[tokio::test]
async fn our_client_rekeys_at_its_send_limit_and_a_rustls_server_reads_on() {
    let dir = pki();
    let p = dir.path();
    let tls = rustls_only_server(p);
    let (c_io, s_io) = tokio::io::duplex(1 << 16);
    let serving = async {
        let mut s = tls.accept(s_io).await.unwrap();
        s.write_all(b"go").await.unwrap();
        s.flush().await.unwrap();
        s
    };
    let asking = async {
        let roots = super::ClientTls::load(&p.join("ca.pem"), None).unwrap();
        let (mut c, capture) = roots
            .connect_switchable("localhost", buffered(c_io))
            .await
            .unwrap();
        c.read_exact(&mut [0u8; 2]).await.unwrap();
        let Ok(mut sw) = switch_client(c, &capture).unwrap() else {
            panic!("rustls kept the client connection")
        };
        sw.set_limits(5, 1 << 40);
        sw.halves(tokio::io::split)
    };
    let (mut s, (mut r, mut w)) = tokio::join!(serving, asking);
    let up = pattern(BULK, 2);
    let mut got = vec![0u8; BULK];
    tokio::join!(
        async {
            w.write_all(&up).await.unwrap();
            w.flush().await.unwrap();
        },
        async { s.read_exact(&mut got).await.unwrap() }
    );
    assert!(got == up);
    // Checked once per write batch (four records): every 8 records here.
    assert!(w.key_updates() >= 6, "{} KeyUpdates", w.key_updates());
    s.write_all(b"still").await.unwrap();
    s.flush().await.unwrap();
    let mut five = [0u8; 5];
    r.read_exact(&mut five).await.unwrap();
    assert_eq!(&five, b"still");
}

#[tokio::test]
async fn the_record_past_the_receive_limit_is_refused_unless_a_key_update_came_first() {
    let suite = Suite::Aes256Gcm;
    let read = |wire: Vec<u8>| async move {
        let mut rx = Direction::new(suite, vec![8; 48], 0);
        rx.set_limits(1 << 40, 10);
        let shared = Arc::new(super::fast::Shared::default());
        let mut reader = FastReader::new(&wire[..], rx, shared, &[]);
        let mut got = Vec::new();
        reader.read_to_end(&mut got).await.map(|_| got)
    };
    let mut tx = Direction::new(suite, vec![8; 48], 0);
    let ten = vec![(AD, &b"r"[..]); 10];
    let mut wire = seal_all(&mut tx, &ten[..9]);
    wire.extend(seal_all(&mut tx, &[(HANDSHAKE, &[24, 0, 0, 1, 0])]));
    tx.update();
    wire.extend(seal_all(&mut tx, &ten));
    assert_eq!(read(wire).await.unwrap(), [b'r'; 19]);
    let mut tx = Direction::new(suite, vec![8; 48], 0);
    let e = read(seal_all(&mut tx, &[(AD, &b"r"[..]); 11]))
        .await
        .unwrap_err();
    assert!(e.to_string().contains("too many records"), "{e}");
}

#[tokio::test]
async fn a_rustls_client_sees_bad_record_mac_from_our_server() {
    let dir = pki();
    let tls = server(dir.path(), &[]);
    let (c_io, s_io) = tokio::io::duplex(1 << 16);
    let serving = async {
        let (mut s, capture) = tls.accept_switchable(buffered(s_io)).await.unwrap();
        s.write_all(b"go").await.unwrap();
        s.flush().await.unwrap();
        s.read_exact(&mut [0u8; 2]).await.unwrap();
        let Ok(sw) = switch(s, &capture.unwrap()).unwrap() else {
            panic!("rustls kept the connection")
        };
        sw.halves(tokio::io::split)
    };
    let asking = rustls_client_opened(dir.path(), c_io);
    let ((mut r, mut w), mut c) = tokio::join!(serving, asking);
    // A record no key sealed, straight onto the client's socket.
    let mut forged = vec![23, 3, 3, 0, 40];
    forged.extend([7u8; 40]);
    c.get_mut().0.write_all(&forged).await.unwrap();
    let e = r.read(&mut [0u8; 16]).await.unwrap_err();
    assert!(e.to_string().contains("bad_record_mac"), "{e}");
    w.shutdown().await.unwrap();
    let e = c.read(&mut [0u8; 16]).await.unwrap_err();
    let inner = e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>());
    assert_eq!(
        inner,
        Some(&rustls::Error::AlertReceived(
            rustls::AlertDescription::BadRecordMac
        )),
        "{e:?}"
    );
}
