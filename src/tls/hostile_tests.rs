//! Session 18: the writer sealing pieces in place; our client against a
//! hostile server that seals records by hand after the switch (ticket and
//! empty-record floods, refused records answered with their alert, an
//! alert mid-reply, a cut record); KeyUpdates before the switch; the
//! rekey limits reached on both ends.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncReadExt, AsyncWrite, AsyncWriteExt, DuplexStream, ReadHalf, WriteHalf};

use super::record::{Direction, Suite, ALERT, APPLICATION_DATA as AD, HANDSHAKE, HEADER};
use super::tests::{client, pki, seal_all, server};
use super::{buffered, switch, switch_client, FastReader, FastWriter, Piece};

fn pattern(n: usize, seed: u8) -> Vec<u8> {
    (0..n).map(|i| (i as u8).wrapping_mul(29) ^ seed).collect()
}

/// Takes at most `chunk` bytes per write, `Pending` every other call.
struct Slow {
    wire: Vec<u8>,
    chunk: usize,
    pending: bool,
}

impl AsyncWrite for Slow {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        b: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.pending = !self.pending;
        if self.pending {
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        let n = b.len().min(self.chunk);
        self.wire.extend_from_slice(&b[..n]);
        Poll::Ready(Ok(n))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

#[tokio::test]
async fn pieces_sealed_in_place_read_back_whole_through_a_slow_socket() {
    let suite = Suite::Aes128Gcm;
    let secret = vec![4u8; 32];
    let shared = std::sync::Arc::new(super::fast::Shared::default());
    let slow = Slow {
        wire: Vec::new(),
        chunk: 7001,
        pending: false,
    };
    let mut w = FastWriter::new(
        slow,
        Direction::new(suite, secret.clone(), 3),
        shared.clone(),
    );
    // (sealed in place?, bytes): NBD heads, a 1 MiB + 123 READ, a small
    // one, one of exactly two records, a plain body.
    let mut queue: Vec<(bool, Vec<u8>)> = vec![
        (false, pattern(16, 1)),
        (true, pattern((1 << 20) + 123, 2)),
        (false, pattern(20, 3)),
        (true, pattern(5000, 4)),
        (false, pattern(16, 5)),
        (true, pattern(32768, 6)),
        (false, pattern(40, 7)),
    ];
    let want: Vec<u8> = queue.iter().flat_map(|(_, b)| b.clone()).collect();
    let mut written = 0;
    while !queue.is_empty() {
        let mut pieces: Vec<Piece<'_>> = Vec::new();
        let mut skip = written;
        for (in_place, b) in &mut queue {
            let s = skip.min(b.len());
            skip -= s;
            let b = &mut b[s..];
            if !b.is_empty() {
                pieces.push(if *in_place {
                    Piece::InPlace(b)
                } else {
                    Piece::Copy(b)
                });
            }
        }
        let n = std::future::poll_fn(|cx| w.poll_write_pieces(cx, &mut pieces))
            .await
            .unwrap();
        drop(pieces);
        written += n;
        while let Some((_, b)) = queue.first() {
            if written < b.len() {
                break;
            }
            written -= b.len();
            queue.remove(0);
        }
    }
    let wire = std::mem::take(&mut w.inner.wire);
    let mut r = FastReader::new(&wire[..], Direction::new(suite, secret, 3), shared, &[]);
    let mut got = Vec::new();
    r.read_to_end(&mut got).await.unwrap();
    assert!(got == want, "{} of {} bytes", got.len(), want.len());
}

// ---- A hostile server against our client ----

type Ours = (
    FastReader<ReadHalf<DuplexStream>>,
    FastWriter<WriteHalf<DuplexStream>>,
);

/// The server's end after the switch: it seals (and opens) records by hand.
struct Hostile {
    io: DuplexStream,
    rx: Direction,
    tx: Direction,
}

impl Hostile {
    async fn send(&mut self, records: &[(u8, &[u8])]) {
        let wire = seal_all(&mut self.tx, records);
        self.io.write_all(&wire).await.unwrap();
    }

    /// Every record the client sends until it closes: (inner type, content).
    async fn received(&mut self) -> Vec<(u8, Vec<u8>)> {
        let mut wire = Vec::new();
        let read = self.io.read_to_end(&mut wire);
        tokio::time::timeout(std::time::Duration::from_secs(10), read)
            .await
            .expect("the client closes")
            .unwrap();
        let mut out = Vec::new();
        let mut at = 0;
        while at + HEADER <= wire.len() {
            let len = u16::from_be_bytes([wire[at + 3], wire[at + 4]]) as usize;
            let record = &mut wire[at..at + HEADER + len];
            let (t, r) = self.rx.open(record).unwrap();
            if t == HANDSHAKE && record[r.clone()].starts_with(&[24]) {
                self.rx.update();
            }
            out.push((t, record[r].to_vec()));
            at += HEADER + len;
        }
        out
    }

    /// The alert the client ended with.
    async fn alert(&mut self) -> Vec<u8> {
        let got = self.received().await;
        let (t, c) = got.last().expect("an alert").clone();
        assert_eq!(t, ALERT, "{got:?}");
        c
    }
}

/// A rustls server (our ServerTls) and our client, both past "op"/"go"
/// over rustls; the client switched. `before_go` runs on the server's
/// rustls connection before it answers.
async fn hostile_with(
    before_op: bool,
    before_go: impl FnOnce(&mut rustls::ServerConnection),
) -> (
    Hostile,
    Result<Ours, super::ClientTlsStream<tokio::io::BufReader<DuplexStream>>>,
) {
    let dir = pki();
    let tls = server(dir.path(), &[]);
    let (c_io, s_io) = tokio::io::duplex(1 << 20);
    let serving = async {
        let (mut s, capture) = tls.accept_switchable(buffered(s_io)).await.unwrap();
        let mut op = [0u8; 2];
        s.read_exact(&mut op).await.unwrap();
        before_go(s.get_mut().1);
        s.write_all(b"go").await.unwrap();
        s.flush().await.unwrap();
        (s, capture.unwrap())
    };
    let asking = async {
        let c = client(dir.path(), Some("a"));
        let (mut c, capture) = c
            .connect_switchable("localhost", buffered(c_io))
            .await
            .unwrap();
        if before_op {
            c.get_mut().1.refresh_traffic_keys().unwrap();
        }
        c.write_all(b"op").await.unwrap();
        c.flush().await.unwrap();
        let mut go = [0u8; 2];
        c.read_exact(&mut go).await.unwrap();
        (c, capture)
    };
    let ((s, s_capture), (c, c_capture)) = tokio::join!(serving, asking);
    let (io, carried, rx, tx) = match switch(s, &s_capture).unwrap() {
        Ok(sw) => sw.into_parts(),
        Err(_) => panic!("the server stayed on rustls"),
    };
    assert!(carried.is_empty());
    let ours = match switch_client(c, &c_capture).unwrap() {
        Ok(sw) => Ok(sw.halves(tokio::io::split)),
        Err(rustls) => Err(rustls),
    };
    (Hostile { io, rx, tx }, ours)
}

async fn hostile() -> (Hostile, Ours) {
    let (h, ours) = hostile_with(false, |_| {}).await;
    (
        h,
        ours.unwrap_or_else(|_| panic!("the client stayed on rustls")),
    )
}

/// Reads until an error; returns the bytes read and the error.
async fn read_until_error(r: &mut FastReader<ReadHalf<DuplexStream>>) -> (Vec<u8>, io::Error) {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match r.read(&mut buf).await {
            Ok(0) => panic!("clean end after {} bytes", got.len()),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) => return (got, e),
        }
    }
}

#[tokio::test]
async fn floods_of_tickets_or_empty_records_end_the_connection_with_unexpected_message() {
    let ticket: &[u8] = &[4, 0, 0, 4, 0, 0, 0, 1];
    for (name, record) in [("tickets", (HANDSHAKE, ticket)), ("empty", (AD, &[][..]))] {
        // 32 in a row are fine (as BoringSSL's empty records), data resets.
        let (mut h, (mut r, mut w)) = hostile().await;
        let mut flood = vec![(AD, &b"x"[..])];
        flood.extend(std::iter::repeat_n(record, 32));
        flood.push((AD, b"y"));
        flood.extend(std::iter::repeat_n(record, 33));
        flood.push((AD, b"z"));
        h.send(&flood).await;
        // Without the cap the client would read "xyz", then the end.
        h.io.shutdown().await.unwrap();
        let (got, e) = read_until_error(&mut r).await;
        assert_eq!(got, b"xy", "{name}");
        assert!(e.to_string().contains("not allowed"), "{name}: {e}");
        w.shutdown().await.unwrap();
        assert_eq!(h.alert().await, [2, 10], "{name}: unexpected_message");
    }
}

/// (what, the bad bytes sealed by the server's key, the alert expected).
type Case = (&'static str, fn(&mut Direction) -> Vec<u8>, u8);

#[tokio::test]
async fn each_refused_record_is_answered_with_its_alert() {
    let cases: [Case; 5] = [
        (
            "bad MAC",
            |tx| {
                let mut w = seal_all(tx, &[(AD, b"data")]);
                w[HEADER + 1] ^= 1;
                w
            },
            20,
        ),
        ("over 2^14 + 256", |_| [23, 3, 3, 0x41, 1].to_vec(), 22),
        ("change_cipher_spec", |_| [20, 3, 3, 0, 1, 1].to_vec(), 10),
        (
            "cut handshake message",
            |tx| seal_all(tx, &[(HANDSHAKE, &[24, 0, 0, 1])]),
            50,
        ),
        (
            "all padding",
            // Inner plaintext all zeros: inner type 0 after zero content.
            |tx| seal_all(tx, &[(0, &[0, 0, 0])]),
            10,
        ),
    ];
    for (name, wire, alert) in cases {
        let (mut h, (mut r, mut w)) = hostile().await;
        h.send(&[(AD, b"ok")]).await;
        let bad = wire(&mut h.tx);
        h.io.write_all(&bad).await.unwrap();
        let (got, _e) = read_until_error(&mut r).await;
        assert_eq!(got, b"ok", "{name}");
        w.shutdown().await.unwrap();
        assert_eq!(h.alert().await, [2, alert], "{name}");
    }
}

#[tokio::test]
async fn an_alert_mid_reply_or_a_cut_record_ends_the_read_after_the_data_before_it() {
    let (mut h, (mut r, _w)) = hostile().await;
    let data = pattern(20_000, 9);
    h.send(&[
        (AD, &data[..16384]),
        (AD, &data[16384..]),
        (ALERT, &[2, 80]),
    ])
    .await;
    let (got, e) = read_until_error(&mut r).await;
    assert!(got == data && e.to_string().contains("alert 80"), "{e}");

    let (mut h, (mut r, _w)) = hostile().await;
    let whole = seal_all(&mut h.tx, &[(AD, b"first"), (AD, &data[..4000])]);
    h.io.write_all(&whole[..whole.len() - 100]).await.unwrap();
    drop(h);
    let (got, e) = read_until_error(&mut r).await;
    assert_eq!(
        (got.as_slice(), e.kind()),
        (&b"first"[..], io::ErrorKind::UnexpectedEof)
    );
}

#[tokio::test]
async fn a_server_that_never_reads_blocks_our_writes_without_growing_a_buffer() {
    let (_h, (_r, mut w)) = hostile().await;
    let chunk = pattern(1 << 20, 1);
    let mut sent = 0usize;
    let pushing = async {
        loop {
            w.write_all(&chunk).await.unwrap();
            sent += chunk.len();
        }
    };
    let waited = tokio::time::timeout(std::time::Duration::from_millis(300), pushing).await;
    assert!(waited.is_err(), "writes block once the socket is full");
    assert!(
        sent <= 2 << 20,
        "{sent} bytes accepted by a server reading nothing"
    );
    assert!(
        w.out.capacity() <= 128 << 10,
        "{} bytes buffered",
        w.out.capacity()
    );
}

#[tokio::test]
async fn key_updates_before_the_switch_are_followed_or_leave_rustls_the_connection() {
    // Our client asked for a KeyUpdate under rustls (the server answered
    // before "go"): both ends' keys moved once before the switch.
    let (mut h, ours) = hostile_with(true, |_| {}).await;
    let Ok((mut r, mut w)) = ours else {
        panic!("the client stayed on rustls")
    };
    h.send(&[(AD, b"down")]).await;
    let mut got = [0u8; 4];
    r.read_exact(&mut got).await.unwrap();
    w.write_all(b"up").await.unwrap();
    w.shutdown().await.unwrap();
    assert_eq!(&got, b"down");
    assert_eq!(
        h.received().await,
        [(AD, b"up".to_vec()), (ALERT, vec![1, 0])]
    );
    // The server asked for one with "go": our client owes its KeyUpdate,
    // which only rustls can send: rustls keeps the connection.
    let (mut h, ours) = hostile_with(false, |s| s.refresh_traffic_keys().unwrap()).await;
    let Err(mut rustls) = ours else {
        panic!("switched with a KeyUpdate owed")
    };
    h.send(&[(AD, b"down")]).await;
    rustls.read_exact(&mut got).await.unwrap();
    rustls.write_all(b"up").await.unwrap();
    rustls.shutdown().await.unwrap();
    let kinds: Vec<u8> = h.received().await.iter().map(|(t, _)| *t).collect();
    assert_eq!(kinds, [HANDSHAKE, AD, ALERT]);
}

#[tokio::test]
async fn our_nbd_client_answers_a_forged_record_with_bad_record_mac() {
    use crate::remote::conn::Conn;
    use crate::remote::handshake::Negotiated;
    let (mut h, (r, w)) = hostile().await;
    let info = Negotiated {
        size: 1 << 20,
        flags: 0,
        sizes: crate::remote::reply::BlockSizes::default(),
        structured: false,
    };
    let conn = Conn::start(r, w, info);
    let mut forged = vec![23, 3, 3, 0, 40];
    forged.extend([7u8; 40]);
    h.io.write_all(&forged).await.unwrap();
    assert_eq!(
        h.alert().await,
        [2, 20],
        "the reader's stop ends the sending half"
    );
    assert!(conn.is_closed());
}
