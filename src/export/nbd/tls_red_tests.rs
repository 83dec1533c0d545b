//! Red team of the TLS record layer at the NBD server (session 17): a
//! rustls client over real TCP that ends a WRITE payload half-way with
//! close_notify or a bare FIN, pipelines a request in the record of
//! `NBD_OPT_GO`, or asks for STARTTLS again over TLS.

use std::net::SocketAddr;
use std::sync::Arc;

use rustls::pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::proto::{self, Command, Request};
use super::tests::{go_payload, mem_export, MIB};
use super::{NbdLimits, NbdServer};
use crate::member::memory::MemDevice;

type Tls = tokio_rustls::client::TlsStream<TcpStream>;

async fn start(dir: &std::path::Path) -> (Arc<MemDevice>, SocketAddr) {
    start_with(dir, NbdLimits::default()).await
}

async fn start_with(dir: &std::path::Path, limits: NbdLimits) -> (Arc<MemDevice>, SocketAddr) {
    let (dev, export) = mem_export("vol", MIB, false);
    let tls = crate::tls::tests::server(dir, &[]);
    let server = Arc::new(NbdServer::with_tls(vec![export], limits, Some(tls)));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(server.serve_tcp(listener));
    (dev, addr)
}

fn option(option: u32, payload: &[u8]) -> Vec<u8> {
    let mut b = b"IHAVEOPT".to_vec();
    b.extend_from_slice(&option.to_be_bytes());
    b.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    b.extend_from_slice(payload);
    b
}

/// The option reply type, its payload skipped.
async fn option_reply<S: AsyncReadExt + Unpin>(s: &mut S) -> u32 {
    let mut h = [0u8; 20];
    s.read_exact(&mut h).await.unwrap();
    let len = u32::from_be_bytes(h[16..20].try_into().unwrap());
    s.read_exact(&mut vec![0u8; len as usize]).await.unwrap();
    u32::from_be_bytes(h[12..16].try_into().unwrap())
}

/// Greeting, NBD_OPT_STARTTLS acknowledged, the TLS handshake done.
async fn starttls(dir: &std::path::Path, addr: SocketAddr) -> Tls {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.read_exact(&mut [0u8; 18]).await.unwrap();
    s.write_all(&3u32.to_be_bytes()).await.unwrap();
    s.write_all(&option(proto::OPT_STARTTLS, &[]))
        .await
        .unwrap();
    assert_eq!(option_reply(&mut s).await, proto::REP_ACK);
    let connector = crate::tls::tests::client(dir, Some("a")).connector();
    let name = ServerName::try_from("localhost").unwrap();
    connector.connect(name, s).await.unwrap()
}

/// Greeting, STARTTLS, the TLS handshake; `NBD_OPT_GO` then `after` in
/// one write (one TLS record); the GO replies read.
async fn over_tls(dir: &std::path::Path, addr: SocketAddr, after: &[u8]) -> Tls {
    let mut c = starttls(dir, addr).await;
    let mut go = option(proto::OPT_GO, &go_payload("vol", &[]));
    go.extend_from_slice(after);
    c.write_all(&go).await.unwrap();
    c.flush().await.unwrap();
    while option_reply(&mut c).await != proto::REP_ACK {}
    c
}

fn write(cookie: u64, len: u32) -> Vec<u8> {
    let r = Request {
        flags: 0,
        command: Command::Write,
        cookie,
        offset: 0,
        length: len,
    };
    proto::encode_request(&r).to_vec()
}

/// Simple reply: (error, cookie).
async fn simple_reply(c: &mut Tls) -> (u32, u64) {
    let mut r = [0u8; 16];
    c.read_exact(&mut r).await.unwrap();
    let error = u32::from_be_bytes(r[4..8].try_into().unwrap());
    (error, u64::from_be_bytes(r[8..16].try_into().unwrap()))
}

/// Reads until the server closes (EOF or an error).
async fn until_closed(c: &mut Tls) {
    let mut buf = [0u8; 4096];
    while let Ok(1..) = c.read(&mut buf).await {}
}

#[tokio::test]
async fn a_write_cut_by_close_notify_or_a_bare_fin_is_not_applied() {
    let dir = crate::tls::tests::pki();
    let (dev, addr) = start(dir.path()).await;
    let len = 256 << 10;
    let old = vec![0xa5u8; len];
    for bare_fin in [false, true] {
        let mut c = over_tls(dir.path(), addr, &[]).await;
        let mut w = write(1, len as u32);
        w.extend_from_slice(&old);
        c.write_all(&w).await.unwrap();
        assert_eq!(simple_reply(&mut c).await, (0, 1), "acknowledged");
        let mut cut = write(2, len as u32);
        cut.extend_from_slice(&vec![0x5a; len / 2]);
        c.write_all(&cut).await.unwrap();
        c.flush().await.unwrap();
        if bare_fin {
            c.get_mut().0.shutdown().await.unwrap();
        } else {
            c.shutdown().await.unwrap();
        }
        until_closed(&mut c).await;
        assert!(dev.snapshot()[..len] == old[..], "bare FIN {bare_fin}");
    }
}

#[tokio::test]
async fn a_request_in_the_record_of_nbd_opt_go_is_served() {
    let dir = crate::tls::tests::pki();
    let (dev, addr) = start(dir.path()).await;
    let data = vec![0x3cu8; 4096];
    let mut w = write(7, 4096);
    w.extend_from_slice(&data);
    let mut c = over_tls(dir.path(), addr, &w).await;
    assert_eq!(simple_reply(&mut c).await, (0, 7));
    assert!(dev.snapshot()[..4096] == data[..]);
}

#[tokio::test]
async fn starttls_again_over_tls_is_refused_and_go_still_works() {
    let dir = crate::tls::tests::pki();
    let (_dev, addr) = start(dir.path()).await;
    let mut c = starttls(dir.path(), addr).await;
    c.write_all(&option(proto::OPT_STARTTLS, &[]))
        .await
        .unwrap();
    c.flush().await.unwrap();
    // Refused (an error reply, the connection goes on), not a second
    // handshake inside the first.
    let rep = option_reply(&mut c).await;
    assert!(rep & (1 << 31) != 0, "error reply, got {rep:#x}");
    c.write_all(&option(proto::OPT_GO, &go_payload("vol", &[])))
        .await
        .unwrap();
    while option_reply(&mut c).await != proto::REP_ACK {}
}

#[tokio::test]
async fn a_client_sending_reads_and_never_reading_is_closed_by_the_write_timeout() {
    let dir = crate::tls::tests::pki();
    let limits = NbdLimits {
        write_timeout: std::time::Duration::from_secs(1),
        connection_memory: 4 * MIB,
        ..NbdLimits::default()
    };
    let (_dev, addr) = start_with(dir.path(), limits).await;
    let c = over_tls(dir.path(), addr, &[]).await;
    let (_r, mut w) = tokio::io::split(c);
    let read = |cookie| {
        let r = Request {
            flags: 0,
            command: Command::Read,
            cookie,
            offset: 0,
            length: 64 << 10,
        };
        proto::encode_request(&r)
    };
    // Up to 1M READs (64 GiB of replies); the server stops reading once
    // the connection's pool is held, then closes on the write timeout and
    // the client's writes fail.
    let flood = async {
        for cookie in 0..1_000_000u64 {
            if w.write_all(&read(cookie)).await.is_err() || w.flush().await.is_err() {
                return cookie;
            }
        }
        panic!("all 1M READs went through a client that reads nothing");
    };
    let sent = tokio::time::timeout(std::time::Duration::from_secs(30), flood)
        .await
        .expect("the server closed within the bound");
    assert!(sent < 1_000_000);
}
