//! Server tests: the handshake state machine, raw-socket protocol abuse, and
//! real NBD clients (qemu-io, nbdinfo, nbdcopy, nbdsh) as subprocesses.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UnixListener};
use tokio::process::Command as Process;

use super::handshake::negotiate_bytes;
use super::proto::{self, errno, Command, Request};
use super::{Export, ExportTable, NbdLimits, NbdServer};
use crate::block::BlockDevice;
use crate::member::memory::MemDevice;

pub(super) const MIB: u64 = 1024 * 1024;

pub(super) fn mem_export(name: &str, size: u64, read_only: bool) -> (Arc<MemDevice>, Export) {
    let dev = Arc::new(MemDevice::new(name, size));
    let export = Export {
        name: name.to_string(),
        description: format!("test volume {name}"),
        device: dev.clone() as Arc<dyn BlockDevice>,
        read_only,
        preferred_block: 65536,
        multi_conn: true,
        contexts: Default::default(),
    };
    (dev, export)
}

async fn start_tcp(exports: Vec<Export>) -> (Arc<NbdServer>, SocketAddr) {
    let server = Arc::new(NbdServer::new(exports));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(server.clone().serve_tcp(listener));
    (server, addr)
}

/// Polls `cond` for up to five seconds.
async fn eventually(mut cond: impl FnMut() -> bool) -> bool {
    for _ in 0..500 {
        if cond() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    cond()
}

// ---------------------------------------------------------------- raw client

struct Raw<S> {
    s: S,
}

#[derive(Debug, Default)]
struct Reply {
    cookie: u64,
    error: u32,
    data: Vec<u8>,
}

fn option_bytes(option: u32, payload: &[u8]) -> Vec<u8> {
    let mut b = proto::IHAVEOPT.to_be_bytes().to_vec();
    b.extend_from_slice(&option.to_be_bytes());
    b.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    b.extend_from_slice(payload);
    b
}

pub(super) fn go_payload(name: &str, infos: &[u16]) -> Vec<u8> {
    let mut p = (name.len() as u32).to_be_bytes().to_vec();
    p.extend_from_slice(name.as_bytes());
    p.extend_from_slice(&(infos.len() as u16).to_be_bytes());
    for i in infos {
        p.extend_from_slice(&i.to_be_bytes());
    }
    p
}

fn req(command: Command, cookie: u64, offset: u64, length: u32) -> Request {
    Request {
        flags: 0,
        command,
        cookie,
        offset,
        length,
    }
}

impl Raw<TcpStream> {
    async fn tcp(addr: SocketAddr) -> Self {
        Raw::new(TcpStream::connect(addr).await.unwrap()).await
    }

    /// Connects, negotiates (optionally structured replies) and enters transmission.
    async fn ready(addr: SocketAddr, name: &str, structured: bool) -> Self {
        let mut c = Raw::tcp(addr).await;
        if structured {
            c.send_option(proto::OPT_STRUCTURED_REPLY, &[]).await;
            assert_eq!(c.option_reply().await.1, proto::REP_ACK);
        }
        c.send_option(proto::OPT_GO, &go_payload(name, &[])).await;
        loop {
            let (_, rep, _) = c.option_reply().await;
            if rep == proto::REP_ACK {
                break;
            }
            assert_eq!(rep, proto::REP_INFO);
        }
        c
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> Raw<S> {
    async fn new(mut s: S) -> Self {
        let mut greeting = [0u8; 18];
        s.read_exact(&mut greeting).await.unwrap();
        assert_eq!(greeting, proto::greeting());
        s.write_all(&3u32.to_be_bytes()).await.unwrap();
        Raw { s }
    }

    async fn send_option(&mut self, option: u32, payload: &[u8]) {
        self.s
            .write_all(&option_bytes(option, payload))
            .await
            .unwrap();
    }

    async fn option_reply(&mut self) -> (u32, u32, Vec<u8>) {
        let mut h = [0u8; 20];
        self.s.read_exact(&mut h).await.unwrap();
        assert_eq!(&h[..8], &proto::OPTION_REPLY_MAGIC.to_be_bytes());
        let opt = u32::from_be_bytes(h[8..12].try_into().unwrap());
        let rep = u32::from_be_bytes(h[12..16].try_into().unwrap());
        let len = u32::from_be_bytes(h[16..20].try_into().unwrap());
        let mut data = vec![0u8; len as usize];
        self.s.read_exact(&mut data).await.unwrap();
        (opt, rep, data)
    }

    async fn send(&mut self, r: Request, payload: &[u8]) {
        let mut b = proto::encode_request(&r).to_vec();
        b.extend_from_slice(payload);
        self.s.write_all(&b).await.unwrap();
    }

    /// Reads one complete reply; `simple_read_len` gives the data length
    /// that follows a successful simple reply (reads without structured replies).
    async fn reply(&mut self, simple_read_len: &HashMap<u64, u32>) -> Reply {
        let mut magic = [0u8; 4];
        self.s.read_exact(&mut magic).await.unwrap();
        let magic = u32::from_be_bytes(magic);
        if magic == proto::SIMPLE_REPLY_MAGIC {
            let mut rest = [0u8; 12];
            self.s.read_exact(&mut rest).await.unwrap();
            let error = u32::from_be_bytes(rest[..4].try_into().unwrap());
            let cookie = u64::from_be_bytes(rest[4..].try_into().unwrap());
            let mut data = Vec::new();
            if error == 0 {
                if let Some(&n) = simple_read_len.get(&cookie) {
                    data = vec![0u8; n as usize];
                    self.s.read_exact(&mut data).await.unwrap();
                }
            }
            return Reply {
                cookie,
                error,
                data,
            };
        }
        assert_eq!(magic, proto::STRUCTURED_REPLY_MAGIC);
        let mut reply = Reply::default();
        let mut first = true;
        loop {
            if !first {
                let mut m = [0u8; 4];
                self.s.read_exact(&mut m).await.unwrap();
                assert_eq!(u32::from_be_bytes(m), proto::STRUCTURED_REPLY_MAGIC);
            }
            first = false;
            let mut h = [0u8; 16];
            self.s.read_exact(&mut h).await.unwrap();
            let flags = u16::from_be_bytes(h[..2].try_into().unwrap());
            let kind = u16::from_be_bytes(h[2..4].try_into().unwrap());
            reply.cookie = u64::from_be_bytes(h[4..12].try_into().unwrap());
            let len = u32::from_be_bytes(h[12..16].try_into().unwrap());
            let mut payload = vec![0u8; len as usize];
            self.s.read_exact(&mut payload).await.unwrap();
            match kind {
                proto::REPLY_TYPE_OFFSET_DATA => reply.data.extend_from_slice(&payload[8..]),
                proto::REPLY_TYPE_ERROR => {
                    reply.error = u32::from_be_bytes(payload[..4].try_into().unwrap());
                }
                proto::REPLY_TYPE_NONE => {}
                other => panic!("unexpected chunk type {other}"),
            }
            if flags & proto::REPLY_FLAG_DONE != 0 {
                return reply;
            }
        }
    }

    async fn call(&mut self, r: Request, payload: &[u8]) -> Reply {
        self.send(r, payload).await;
        let lens = if r.command == Command::Read {
            HashMap::from([(r.cookie, r.length)])
        } else {
            HashMap::new()
        };
        let reply = self.reply(&lens).await;
        assert_eq!(reply.cookie, r.cookie);
        reply
    }

    /// True when the server has closed the connection.
    async fn closed(&mut self) -> bool {
        let mut b = [0u8; 1];
        matches!(
            tokio::time::timeout(Duration::from_secs(5), self.s.read(&mut b)).await,
            Ok(Ok(0)) | Ok(Err(_))
        )
    }
}

// ------------------------------------------------------ handshake state machine

pub(super) fn client_bytes(options: &[(u32, Vec<u8>)]) -> Vec<u8> {
    let mut b = 3u32.to_be_bytes().to_vec();
    for (opt, payload) in options {
        b.extend_from_slice(&option_bytes(*opt, payload));
    }
    b
}

/// Splits server output after the greeting into (option, reply type) pairs.
pub(super) fn option_replies(output: &[u8]) -> Vec<(u32, u32)> {
    let mut rest = &output[18..];
    let mut out = Vec::new();
    while rest.len() >= 20 {
        let opt = u32::from_be_bytes(rest[8..12].try_into().unwrap());
        let rep = u32::from_be_bytes(rest[12..16].try_into().unwrap());
        let len = u32::from_be_bytes(rest[16..20].try_into().unwrap()) as usize;
        out.push((opt, rep));
        rest = &rest[20 + len..];
    }
    out
}

#[test]
fn go_on_default_export_sends_info_then_ack_and_enters_transmission() {
    let (_, e) = mem_export("only", MIB, false);
    let table = ExportTable::new(vec![e]);
    let input = client_bytes(&[(
        proto::OPT_GO,
        go_payload("", &[proto::INFO_BLOCK_SIZE, proto::INFO_NAME, 999]),
    )]);

    let t = negotiate_bytes(&table, &input);

    assert_eq!(t.export.as_ref().map(|e| e.name.as_str()), Some("only"));
    let replies = option_replies(&t.output);
    assert_eq!(replies.len(), 4, "EXPORT, BLOCK_SIZE, NAME, ACK");
    assert!(replies[..3]
        .iter()
        .all(|r| *r == (proto::OPT_GO, proto::REP_INFO)));
    assert_eq!(replies[3], (proto::OPT_GO, proto::REP_ACK));
}

#[test]
fn unknown_export_and_unknown_option_are_errors_and_handshake_continues() {
    let (_, a) = mem_export("a", MIB, false);
    let (_, b) = mem_export("b", MIB, false);
    let table = ExportTable::new(vec![a, b]);
    let input = client_bytes(&[
        (proto::OPT_INFO, go_payload("nope", &[])),
        (proto::OPT_GO, go_payload("", &[])),
        (42, vec![0; 8]),
        (proto::OPT_LIST, vec![]),
        (proto::OPT_INFO, vec![1, 2]),
        (proto::OPT_ABORT, vec![]),
        (proto::OPT_GO, go_payload("a", &[])),
    ]);

    let t = negotiate_bytes(&table, &input);

    assert!(t.export.is_none(), "ABORT ends the handshake");
    assert_eq!(
        option_replies(&t.output),
        vec![
            (proto::OPT_INFO, proto::REP_ERR_UNKNOWN),
            (proto::OPT_GO, proto::REP_ERR_UNKNOWN),
            (42, proto::REP_ERR_UNSUP),
            (proto::OPT_LIST, proto::REP_SERVER),
            (proto::OPT_LIST, proto::REP_SERVER),
            (proto::OPT_LIST, proto::REP_ACK),
            (proto::OPT_INFO, proto::REP_ERR_INVALID),
            (proto::OPT_ABORT, proto::REP_ACK),
        ]
    );
}

#[test]
fn export_name_for_unknown_export_closes_without_reply() {
    let (_, a) = mem_export("a", MIB, false);
    let table = ExportTable::new(vec![a]);
    let input = client_bytes(&[(proto::OPT_EXPORT_NAME, b"zzz".to_vec())]);

    let t = negotiate_bytes(&table, &input);

    assert!(t.export.is_none());
    assert_eq!(t.output.len(), 18, "greeting only");
}

#[test]
fn read_only_export_advertises_read_only_and_multi_conn() {
    let (_, e) = mem_export("ro", MIB, true);
    let flags = e.transmission_flags(false);
    assert_ne!(flags & proto::TFLAG_READ_ONLY, 0);
    assert_ne!(flags & proto::TFLAG_CAN_MULTI_CONN, 0);
    assert_eq!(flags & proto::TFLAG_SEND_DF, 0);
    assert_eq!(e.block_sizes(), (1, 65536, 32 * 1024 * 1024));
}

#[test]
fn block_error_maps_to_nbd_errors() {
    use crate::block::BlockError;
    let io = BlockError::io("d", std::io::Error::from_raw_os_error(libc::EIO));
    assert_eq!(super::nbd_error(&io), errno::EIO);
    assert_eq!(super::nbd_error(&BlockError::ReadOnly), errno::EPERM);
    assert_eq!(super::nbd_error(&BlockError::Unsupported), errno::ENOTSUP);
    let oor = BlockError::OutOfRange {
        offset: 1,
        len: 1,
        size: 1,
    };
    assert_eq!(super::nbd_error(&oor), errno::EINVAL);
    assert_eq!(super::errno_to_nbd(libc::EDQUOT), errno::ENOSPC);
    assert_eq!(super::errno_to_nbd(libc::ESHUTDOWN), errno::ESHUTDOWN);
    assert_eq!(super::errno_to_nbd(libc::EOVERFLOW), errno::EOVERFLOW);
    assert_eq!(super::errno_to_nbd(libc::ENOMEM), errno::ENOMEM);
    assert_eq!(super::errno_to_nbd(libc::ENOENT), errno::EIO);
}

// ------------------------------------------------------------ raw-socket tests

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn write_then_read_round_trips_with_simple_and_structured_replies() {
    let (dev, e) = mem_export("v", MIB, false);
    let (_server, addr) = start_tcp(vec![e]).await;
    for structured in [false, true] {
        let mut c = Raw::ready(addr, "v", structured).await;
        let data = vec![0x5a; 8192];

        let w = c.call(req(Command::Write, 1, 4096, 8192), &data).await;
        let r = c.call(req(Command::Read, 2, 4096, 8192), &[]).await;
        let f = c.call(req(Command::Flush, 3, 0, 0), &[]).await;

        assert_eq!((w.error, r.error, f.error), (0, 0, 0));
        assert_eq!(r.data, data);
        assert_eq!(&dev.snapshot()[4096..12288], &data[..]);
    }
    assert!(dev.flushes() >= 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn out_of_range_requests_fail_and_connection_stays_usable() {
    let (_, e) = mem_export("v", MIB, false);
    let (_server, addr) = start_tcp(vec![e]).await;
    let mut c = Raw::ready(addr, "v", true).await;

    let read = c.call(req(Command::Read, 1, MIB - 512, 1024), &[]).await;
    let write = c.call(req(Command::Write, 2, MIB, 512), &[1; 512]).await;
    let zero = c.call(req(Command::WriteZeroes, 3, u64::MAX, 1), &[]).await;
    let trim = c.call(req(Command::Trim, 4, MIB, 1), &[]).await;
    let unknown = c.call(req(Command::Unknown(77), 5, 0, 0), &[]).await;
    let bad_flag = c
        .call(
            Request {
                flags: 1 << 9,
                ..req(Command::Read, 6, 0, 512)
            },
            &[],
        )
        .await;
    let ok = c.call(req(Command::Read, 7, 0, 512), &[]).await;

    assert_eq!(read.error, errno::EINVAL);
    assert_eq!(write.error, errno::ENOSPC);
    assert_eq!(zero.error, errno::ENOSPC);
    assert_eq!(trim.error, errno::EINVAL);
    assert_eq!(unknown.error, errno::EINVAL);
    assert_eq!(bad_flag.error, errno::EINVAL);
    assert_eq!((ok.error, ok.data.len()), (0, 512));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn out_of_range_read_without_structured_replies_sends_no_data() {
    let (_, e) = mem_export("v", MIB, false);
    let (_server, addr) = start_tcp(vec![e]).await;
    let mut c = Raw::ready(addr, "v", false).await;

    let bad = c.call(req(Command::Read, 1, MIB, 512), &[]).await;
    let good = c.call(req(Command::Read, 2, 0, 512), &[]).await;

    assert_eq!(bad.error, errno::EINVAL);
    assert!(bad.data.is_empty());
    assert_eq!((good.error, good.data.len()), (0, 512));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zero_length_requests_succeed_without_data() {
    let (_, e) = mem_export("v", MIB, false);
    let (_server, addr) = start_tcp(vec![e]).await;
    for structured in [false, true] {
        let mut c = Raw::ready(addr, "v", structured).await;

        let r = c.call(req(Command::Read, 1, MIB, 0), &[]).await;
        let w = c.call(req(Command::Write, 2, 0, 0), &[]).await;
        let z = c.call(req(Command::WriteZeroes, 3, 0, 0), &[]).await;

        assert_eq!((r.error, w.error, z.error), (0, 0, 0));
        assert!(r.data.is_empty());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_only_export_refuses_writes_with_eperm() {
    let (_, e) = mem_export("ro", MIB, true);
    let (_server, addr) = start_tcp(vec![e]).await;
    let mut c = Raw::ready(addr, "ro", true).await;

    let w = c.call(req(Command::Write, 1, 0, 512), &[7; 512]).await;
    let t = c.call(req(Command::Trim, 2, 0, 512), &[]).await;
    let r = c.call(req(Command::Read, 3, 0, 512), &[]).await;

    assert_eq!((w.error, t.error, r.error), (errno::EPERM, errno::EPERM, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_device_gives_eio_and_recovers() {
    let (dev, e) = mem_export("v", MIB, false);
    let (_server, addr) = start_tcp(vec![e]).await;
    let mut c = Raw::ready(addr, "v", true).await;

    dev.set_failing(true);
    let bad = c.call(req(Command::Read, 1, 0, 512), &[]).await;
    dev.set_failing(false);
    let good = c.call(req(Command::Read, 2, 0, 512), &[]).await;

    assert_eq!(bad.error, errno::EIO);
    assert!(bad.data.is_empty());
    assert_eq!(good.error, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn write_zeroes_trim_cache_and_fast_zero_succeed() {
    let (dev, e) = mem_export("v", MIB, false);
    let (_server, addr) = start_tcp(vec![e]).await;
    let mut c = Raw::ready(addr, "v", true).await;
    c.call(req(Command::Write, 1, 0, 4096), &[9; 4096]).await;

    let flags = proto::CMD_FLAG_FAST_ZERO | proto::CMD_FLAG_NO_HOLE | proto::CMD_FLAG_FUA;
    let z = c
        .call(
            Request {
                flags,
                ..req(Command::WriteZeroes, 2, 0, 1024)
            },
            &[],
        )
        .await;
    let t = c.call(req(Command::Trim, 3, 1024, 1024), &[]).await;
    let k = c.call(req(Command::Cache, 4, 0, 4096), &[]).await;

    assert_eq!((z.error, t.error, k.error), (0, 0, 0));
    let snap = dev.snapshot();
    assert!(snap[..2048].iter().all(|&b| b == 0));
    assert!(snap[2048..4096].iter().all(|&b| b == 9));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_request_magic_closes_only_that_connection() {
    let (_, e) = mem_export("v", MIB, false);
    let (server, addr) = start_tcp(vec![e]).await;
    let mut good = Raw::ready(addr, "v", true).await;
    let mut bad = Raw::ready(addr, "v", true).await;

    bad.s.write_all(&[0xff; 28]).await.unwrap();

    assert!(bad.closed().await);
    let r = good.call(req(Command::Read, 1, 0, 512), &[]).await;
    assert_eq!(r.error, 0);
    assert!(eventually(|| server.stats().connections == 1).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_write_closes_connection_and_oversized_read_is_refused() {
    let (_, e) = mem_export("v", 64 * MIB, false);
    let (_server, addr) = start_tcp(vec![e]).await;
    let mut c = Raw::ready(addr, "v", true).await;

    let big = proto::MAX_PAYLOAD + 1;
    let read = c.call(req(Command::Read, 1, 0, big), &[]).await;
    let df = Request {
        flags: proto::CMD_FLAG_DF,
        ..req(Command::Read, 2, 0, big)
    };
    let read_df = c.call(df, &[]).await;
    c.send(req(Command::Write, 3, 0, big), &[]).await;

    assert_eq!(read.error, errno::EINVAL);
    assert_eq!(read_df.error, errno::EOVERFLOW);
    assert!(c.closed().await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_and_oversized_options_are_refused_and_handshake_continues() {
    let (_, e) = mem_export("v", MIB, false);
    let (_server, addr) = start_tcp(vec![e]).await;
    let mut c = Raw::tcp(addr).await;

    c.send_option(0x1234, b"whatever").await;
    let unsup = c.option_reply().await;
    c.send_option(proto::OPT_LIST, &vec![0u8; 100 * 1024]).await;
    let too_big = c.option_reply().await;
    c.send_option(proto::OPT_GO, &go_payload("v", &[])).await;
    let info = c.option_reply().await;
    let ack = c.option_reply().await;
    let r = c.call(req(Command::Read, 1, 0, 512), &[]).await;

    assert_eq!((unsup.0, unsup.1), (0x1234, proto::REP_ERR_UNSUP));
    assert_eq!(too_big.1, proto::REP_ERR_TOO_BIG);
    assert_eq!(info.1, proto::REP_INFO);
    assert_eq!(&info.2[10..12], &{ e_flags(false) }.to_be_bytes());
    assert_eq!(ack.1, proto::REP_ACK);
    assert_eq!((r.error, r.data.len()), (0, 512));
}

fn e_flags(read_only: bool) -> u16 {
    mem_export("x", 1, read_only).1.transmission_flags(false)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn export_name_with_no_zeroes_sends_size_and_flags_only() {
    let (_, e) = mem_export("v", 3 * MIB, false);
    let (_server, addr) = start_tcp(vec![e]).await;
    let mut c = Raw::tcp(addr).await;

    c.send_option(proto::OPT_EXPORT_NAME, b"v").await;
    let mut reply = [0u8; 10];
    c.s.read_exact(&mut reply).await.unwrap();
    let r = c.call(req(Command::Read, 1, 0, 512), &[]).await;

    assert_eq!(&reply[..8], &(3 * MIB).to_be_bytes());
    assert_eq!(&reply[8..], &e_flags(false).to_be_bytes());
    assert_eq!(
        (r.error, r.data.len()),
        (0, 512),
        "no zero padding was sent"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_client_flags_close_the_connection() {
    let (_, e) = mem_export("v", MIB, false);
    let (_server, addr) = start_tcp(vec![e]).await;
    let mut s = TcpStream::connect(addr).await.unwrap();
    let mut g = [0u8; 18];
    s.read_exact(&mut g).await.unwrap();

    s.write_all(&0x80u32.to_be_bytes()).await.unwrap();

    let mut b = [0u8; 1];
    assert_eq!(s.read(&mut b).await.unwrap(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_vanishing_mid_write_leaks_no_in_flight_request() {
    let (_, e) = mem_export("v", MIB, false);
    let (server, addr) = start_tcp(vec![e]).await;
    let mut other = Raw::ready(addr, "v", true).await;
    let mut c = Raw::ready(addr, "v", true).await;
    // Many pipelined requests, then a write whose payload never arrives.
    for cookie in 0..32 {
        c.send(req(Command::Read, cookie, 0, 65536), &[]).await;
    }
    c.send(req(Command::Write, 99, 0, 65536), &[1; 1000]).await;

    drop(c);

    assert!(eventually(|| server.stats().connections == 1).await);
    assert!(eventually(|| server.stats().in_flight == 0).await);
    let r = other.call(req(Command::Read, 1, 0, 512), &[]).await;
    assert_eq!(r.error, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_requests_are_all_answered_by_cookie() {
    let (_, e) = mem_export("v", 4 * MIB, false);
    let (_server, addr) = start_tcp(vec![e]).await;
    let mut c = Raw::ready(addr, "v", true).await;
    let n: u64 = 200;

    // Writes go first on a separate round so that reads see their data.
    for i in 0..n {
        c.send(req(Command::Write, i, i * 4096, 4096), &[i as u8; 4096])
            .await;
    }
    let mut seen = HashMap::new();
    for _ in 0..n {
        let r = c.reply(&HashMap::new()).await;
        assert_eq!(r.error, 0);
        *seen.entry(r.cookie).or_insert(0) += 1;
    }
    for i in 0..n {
        c.send(req(Command::Read, 1000 + i, i * 4096, 4096), &[])
            .await;
    }
    let mut reads = HashMap::new();
    for _ in 0..n {
        let r = c.reply(&HashMap::new()).await;
        reads.insert(r.cookie, r.data);
    }

    assert_eq!(seen.len() as u64, n);
    assert!(seen.values().all(|&v| v == 1));
    assert_eq!(reads.len() as u64, n);
    for i in 0..n {
        assert_eq!(reads[&(1000 + i)], vec![i as u8; 4096], "read {i}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disconnect_command_closes_after_answering_in_flight_requests() {
    let (_, e) = mem_export("v", MIB, false);
    let (server, addr) = start_tcp(vec![e]).await;
    let mut c = Raw::ready(addr, "v", true).await;

    c.send(req(Command::Write, 1, 0, 4096), &[3; 4096]).await;
    c.send(req(Command::Disconnect, 2, 0, 0), &[]).await;
    let r = c.reply(&HashMap::new()).await;

    assert_eq!((r.cookie, r.error), (1, 0));
    assert!(c.closed().await);
    assert!(eventually(|| server.stats().connections == 0).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_stops_accepting_and_closes_idle_connections() {
    let (_, e) = mem_export("v", MIB, false);
    let server = Arc::new(NbdServer::new(vec![e]));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let serving = tokio::spawn(server.clone().serve_tcp(listener));
    let mut silent = TcpStream::connect(addr).await.unwrap();
    let mut in_handshake = Raw::tcp(addr).await;
    let mut in_transmission = Raw::ready(addr, "v", true).await;
    assert!(eventually(|| server.stats().connections == 3).await);

    server.shutdown();
    tokio::time::timeout(Duration::from_secs(5), server.wait_idle())
        .await
        .expect("connections drained");

    serving.await.unwrap().unwrap();
    let mut rest = Vec::new();
    silent.read_to_end(&mut rest).await.unwrap();
    assert_eq!(
        rest,
        proto::greeting(),
        "silent client got the greeting, then EOF"
    );
    assert!(in_handshake.closed().await);
    assert!(in_transmission.closed().await);
    assert_eq!(server.stats().connections, 0);
    assert!(TcpStream::connect(addr).await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unix_socket_serves_the_same_protocol() {
    let (_, e) = mem_export("v", MIB, false);
    let server = Arc::new(NbdServer::new(vec![e]));
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("nbd.sock");
    tokio::spawn(
        server
            .clone()
            .serve_unix(UnixListener::bind(&path).unwrap()),
    );
    let mut c = Raw::new(tokio::net::UnixStream::connect(&path).await.unwrap()).await;

    c.send_option(proto::OPT_EXPORT_NAME, b"").await;
    let mut reply = [0u8; 10];
    c.s.read_exact(&mut reply).await.unwrap();
    let w = c.call(req(Command::Write, 1, 0, 512), &[4; 512]).await;

    assert_eq!(&reply[..8], &MIB.to_be_bytes());
    assert_eq!(w.error, 0);
}

/// A device whose reads wait until the test opens the gate.
struct GatedDevice {
    inner: MemDevice,
    gate: tokio::sync::Semaphore,
}

impl BlockDevice for GatedDevice {
    crate::block::forward_to!(inner => name, size, write, flush, discard, write_zeroes);

    fn read<'a>(
        &'a self,
        offset: crate::units::ByteOffset,
        buf: &'a mut [u8],
    ) -> crate::block::BoxFuture<'a, crate::block::BlockResult> {
        crate::block::BoxFuture::new(async move {
            let _pass = self.gate.acquire().await.unwrap();
            self.inner.read(offset, buf).await
        })
    }
}

fn gated_export() -> (Arc<GatedDevice>, Export) {
    let dev = Arc::new(GatedDevice {
        inner: MemDevice::new("gated", MIB),
        gate: tokio::sync::Semaphore::new(0),
    });
    let (_, mut export) = mem_export("g", MIB, false);
    export.device = dev.clone();
    (dev, export)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_waits_for_in_flight_requests_before_closing() {
    let (dev, e) = gated_export();
    let (server, addr) = start_tcp(vec![e]).await;
    let mut c = Raw::ready(addr, "g", true).await;
    c.send(req(Command::Read, 5, 0, 4096), &[]).await;
    assert!(eventually(|| server.stats().in_flight == 1).await);

    server.shutdown();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let still_open = server.stats().connections;
    dev.gate.add_permits(1);
    let r = c.reply(&HashMap::new()).await;

    assert_eq!(still_open, 1, "connection waits for its request");
    assert_eq!((r.cookie, r.error, r.data.len()), (5, 0, 4096));
    assert!(c.closed().await);
    tokio::time::timeout(Duration::from_secs(5), server.wait_idle())
        .await
        .expect("server idle");
    assert_eq!(server.stats().in_flight, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_vanishing_with_requests_in_flight_releases_counters() {
    let (dev, e) = gated_export();
    let (server, addr) = start_tcp(vec![e]).await;
    let mut c = Raw::ready(addr, "g", true).await;
    for cookie in 0..8 {
        c.send(req(Command::Read, cookie, 0, 4096), &[]).await;
    }
    assert!(eventually(|| server.stats().in_flight == 8).await);

    drop(c);
    dev.gate.add_permits(8);

    assert!(eventually(|| server.stats().in_flight == 0).await);
    assert!(eventually(|| server.stats().connections == 0).await);
    assert_eq!(server.stats().connections_total, 1);
}

// --------------------------------------------------------------- real clients

async fn run(program: &str, args: &[&str]) -> String {
    let mut cmd = Process::new(program);
    if program == "nbdsh" {
        // nbdsh runs `python3` from PATH; the `nbd` module is installed for
        // the distribution's interpreter, which a pyenv shim may shadow.
        let path = std::env::var("PATH").unwrap_or_default();
        cmd.env("PATH", format!("/usr/bin:{path}"));
    }
    let out = cmd
        .args(args)
        .output()
        .await
        .unwrap_or_else(|e| panic!("cannot run {program} (is it installed?): {e}"));
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "{program} {args:?} failed: {}\nstdout: {stdout}\nstderr: {stderr}",
        out.status
    );
    stdout
}

async fn qemu_io(url: &str, commands: &[&str]) -> String {
    let mut args = vec!["-f", "raw", url];
    for c in commands {
        args.push("-c");
        args.push(c);
    }
    let out = run("qemu-io", &args).await;
    assert!(!out.contains("failed"), "qemu-io reported: {out}");
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qemu_io_writes_and_reads_back_a_pattern() {
    let (dev, e) = mem_export("vol", 8 * MIB, false);
    let (_server, addr) = start_tcp(vec![e]).await;
    let url = format!("nbd://{addr}/vol");

    let out = qemu_io(
        &url,
        &[
            "write -P 0xab 0 64k",
            "write -f -P 0xcd 1M 128k",
            "read -P 0xab 0 64k",
            "read -P 0xcd 1M 128k",
            "write -z -n 64k 32k",
            "write -z -u 96k 32k",
            "read -P 0 64k 64k",
            "discard 2M 64k",
            "flush",
        ],
    )
    .await;

    assert!(out.contains("wrote 65536/65536"), "{out}");
    assert!(out.contains("read 131072/131072"), "{out}");
    let snap = dev.snapshot();
    assert!(snap[..65536].iter().all(|&b| b == 0xab));
    assert!(snap[1 << 20..(1 << 20) + 131072].iter().all(|&b| b == 0xcd));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qemu_io_uses_the_default_export_and_unix_sockets() {
    let (dev, e) = mem_export("only", 4 * MIB, false);
    let (_server, addr) = start_tcp(vec![e]).await;
    let server = Arc::new(NbdServer::new(vec![mem_export("u", 4 * MIB, false).1]));
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.sock");
    tokio::spawn(
        server
            .clone()
            .serve_unix(UnixListener::bind(&path).unwrap()),
    );

    qemu_io(&format!("nbd://{addr}"), &["write -P 0x11 0 4k"]).await;
    let unix = format!("nbd+unix:///u?socket={}", path.display());
    qemu_io(&unix, &["write -P 0x22 0 4k", "read -P 0x22 0 4k"]).await;

    assert!(dev.snapshot()[..4096].iter().all(|&b| b == 0x11));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nbdinfo_reports_size_flags_and_block_sizes() {
    let (_, rw) = mem_export("rw", 16 * MIB, false);
    let (_, ro) = mem_export("ro", 2 * MIB, true);
    let (_server, addr) = start_tcp(vec![rw, ro]).await;

    let json = run("nbdinfo", &["--json", &format!("nbd://{addr}/rw")]).await;
    let ro_json = run("nbdinfo", &["--json", &format!("nbd://{addr}/ro")]).await;

    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    let e = &v["exports"][0];
    assert_eq!(e["export-size"], 16 * MIB, "{json}");
    assert_eq!(e["is_read_only"], false, "{json}");
    assert_eq!(e["can_flush"], true, "{json}");
    assert_eq!(e["can_fua"], true, "{json}");
    assert_eq!(e["can_trim"], true, "{json}");
    assert_eq!(e["can_zero"], true, "{json}");
    assert_eq!(e["can_fast_zero"], true, "{json}");
    assert_eq!(e["can_cache"], true, "{json}");
    assert_eq!(e["can_multi_conn"], true, "{json}");
    assert_eq!(e["block_size_minimum"], 1, "{json}");
    assert_eq!(e["block_size_preferred"], 65536, "{json}");
    assert_eq!(e["block_size_maximum"], 32 * MIB, "{json}");
    assert_eq!(e["description"], "test volume rw", "{json}");
    let v: serde_json::Value = serde_json::from_str(&ro_json).unwrap();
    assert_eq!(v["exports"][0]["is_read_only"], true, "{ro_json}");
    assert_eq!(v["exports"][0]["export-size"], 2 * MIB, "{ro_json}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nbdinfo_list_shows_every_export() {
    let (_, a) = mem_export("alpha", MIB, false);
    let (_, b) = mem_export("beta", MIB, false);
    let (_server, addr) = start_tcp(vec![a, b]).await;

    let json = run("nbdinfo", &["--list", "--json", &format!("nbd://{addr}")]).await;

    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    let mut names: Vec<_> = v["exports"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["export-name"].as_str().unwrap().to_string())
        .collect();
    names.sort();
    assert_eq!(names, ["alpha", "beta"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nbdcopy_round_trips_a_file_through_the_export() {
    let (dev, e) = mem_export("v", 4 * MIB, false);
    let (_server, addr) = start_tcp(vec![e]).await;
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src.img");
    let dst = dir.path().join("dst.img");
    let content: Vec<u8> = (0..4 * MIB).map(|i| (i * 7 % 251) as u8).collect();
    std::fs::write(&src, &content).unwrap();
    let url = format!("nbd://{addr}/v");

    run("nbdcopy", &[src.to_str().unwrap(), &url]).await;
    run("nbdcopy", &[&url, dst.to_str().unwrap()]).await;

    assert!(dev.snapshot() == content, "export holds the file");
    assert!(std::fs::read(&dst).unwrap() == content, "copy back matches");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nbdsh_pwrite_pread_and_flags() {
    let (dev, e) = mem_export("v", MIB, false);
    let (_server, addr) = start_tcp(vec![e]).await;
    let script = "\
h.pwrite(b'\\x42' * 4096, 8192, nbd.CMD_FLAG_FUA)
assert h.pread(4096, 8192) == b'\\x42' * 4096
h.zero(4096, 8192)
assert h.pread(4096, 8192) == bytes(4096)
h.flush()
assert h.can_multi_conn() and h.can_fua() and not h.is_read_only()
try:
    h.pread(512, 1048576)
    raise SystemExit('read past end succeeded')
except nbd.Error as ex:
    assert 'Invalid argument' in str(ex) or 'EINVAL' in str(ex), str(ex)
print('ok')
";

    let out = run("nbdsh", &["-u", &format!("nbd://{addr}/v"), "-c", script]).await;

    assert!(out.contains("ok"), "{out}");
    assert!(dev.snapshot()[8192..12288].iter().all(|&b| b == 0));
}

// ------------------------------------------------------------ limits

async fn start_limited(exports: Vec<Export>, limits: NbdLimits) -> (Arc<NbdServer>, SocketAddr) {
    let server = Arc::new(NbdServer::with_limits(exports, limits));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(server.clone().serve_tcp(listener));
    (server, addr)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_client_is_dropped_after_the_handshake_timeout() {
    let limits = NbdLimits {
        handshake_timeout: Duration::from_millis(300),
        ..NbdLimits::default()
    };
    let (server, addr) = start_limited(vec![mem_export("a", MIB, false).1], limits).await;
    let t0 = std::time::Instant::now();

    let mut c = Raw::tcp(addr).await;

    assert!(c.closed().await);
    assert!(t0.elapsed() >= Duration::from_millis(300));
    assert!(eventually(|| server.stats().connections == 0).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handshake_timeout_does_not_touch_a_client_in_transmission() {
    let limits = NbdLimits {
        handshake_timeout: Duration::from_millis(200),
        ..NbdLimits::default()
    };
    let (_server, addr) = start_limited(vec![mem_export("a", MIB, false).1], limits).await;
    let mut c = Raw::ready(addr, "a", false).await;

    tokio::time::sleep(Duration::from_millis(400)).await;
    let r = c.call(req(Command::Read, 1, 0, 512), &[]).await;

    assert_eq!(r.error, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_over_the_limit_are_closed_before_the_greeting() {
    let limits = NbdLimits {
        max_connections: 2,
        ..NbdLimits::default()
    };
    let (server, addr) = start_limited(vec![mem_export("a", MIB, false).1], limits).await;
    let _first = Raw::tcp(addr).await;
    let _second = Raw::tcp(addr).await;

    let mut third = TcpStream::connect(addr).await.unwrap();
    let mut b = [0u8; 18];
    let got = tokio::time::timeout(Duration::from_secs(5), third.read(&mut b)).await;

    assert!(matches!(got, Ok(Ok(0)) | Ok(Err(_))), "{got:?}");
    assert_eq!(server.stats().connections, 2);
}

/// 64 reads of 1 MiB, replies not read: the connection holds its 2 MiB
/// pool (replies count until written), then everything is answered once
/// the client reads, and the bytes come back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unread_replies_keep_their_bytes_until_written() {
    let limits = NbdLimits {
        connection_memory: 2 * MIB,
        ..NbdLimits::default()
    };
    let (server, addr) = start_limited(vec![mem_export("a", MIB, false).1], limits).await;
    let mut c = Raw::ready(addr, "a", false).await;

    for cookie in 0..64 {
        c.send(req(Command::Read, cookie, 0, MIB as u32), &[]).await;
    }
    let full = eventually(|| server.stats().buffered_bytes == 2 * MIB).await;
    let lens: HashMap<u64, u32> = (0..64).map(|k| (k, MIB as u32)).collect();
    let mut answered = 0;
    for _ in 0..64 {
        assert_eq!(c.reply(&lens).await.error, 0);
        answered += 1;
    }

    assert!(
        full,
        "pool not held by unwritten replies: {:?}",
        server.stats()
    );
    assert_eq!(answered, 64);
    assert!(eventually(|| server.stats().buffered_bytes == 0).await);
}

/// A client that does not read is dropped after the write timeout and its
/// bytes go back to the server pool.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_not_reading_is_dropped_after_the_write_timeout() {
    let limits = NbdLimits {
        connection_memory: 2 * MIB,
        write_timeout: Duration::from_millis(300),
        ..NbdLimits::default()
    };
    let (server, addr) = start_limited(vec![mem_export("a", MIB, false).1], limits).await;
    let mut c = Raw::ready(addr, "a", false).await;

    for cookie in 0..64 {
        c.send(req(Command::Read, cookie, 0, MIB as u32), &[]).await;
    }

    let gone = eventually(|| server.stats().connections == 0).await;
    assert!(gone, "{:?}", server.stats());
    assert_eq!(server.stats().buffered_bytes, 0);
}

/// With an idle timeout, a client that sits in transmission doing nothing
/// (and one that sent half a header) is closed and counted; one sending a
/// request every 100 ms for twice the timeout is not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_clients_in_transmission_are_closed_busy_ones_kept() {
    let limits = NbdLimits {
        idle_timeout: Some(Duration::from_millis(400)),
        ..NbdLimits::default()
    };
    let (server, addr) = start_limited(vec![mem_export("a", MIB, false).1], limits).await;
    let mut idle = Raw::ready(addr, "a", false).await;
    let mut half = Raw::ready(addr, "a", false).await;
    let mut busy = Raw::ready(addr, "a", false).await;
    half.s
        .write_all(&proto::encode_request(&req(Command::Read, 9, 0, 512))[..13])
        .await
        .unwrap();
    let t0 = std::time::Instant::now();

    let mut cookie = 0;
    while t0.elapsed() < Duration::from_millis(800) {
        let r = busy.call(req(Command::Read, cookie, 0, 512), &[]).await;
        assert_eq!(r.error, 0);
        cookie += 1;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    assert!(idle.closed().await && half.closed().await);
    assert_eq!(
        busy.call(req(Command::Read, 99, 0, 512), &[]).await.error,
        0
    );
    assert!(
        eventually(|| server.stats().dropped_idle == 2).await,
        "{:?}",
        server.stats()
    );
    assert_eq!(server.stats().connections, 1);
}

/// Without an idle timeout (the default) an idle client stays.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_clients_stay_without_an_idle_timeout() {
    let (server, addr) =
        start_limited(vec![mem_export("a", MIB, false).1], NbdLimits::default()).await;
    let mut c = Raw::ready(addr, "a", false).await;

    tokio::time::sleep(Duration::from_millis(500)).await;

    assert_eq!(c.call(req(Command::Read, 1, 0, 512), &[]).await.error, 0);
    assert_eq!(server.stats().dropped_idle, 0);
}

/// A client with 32 MiB of READ replies pending that reads them at a
/// trickle (16 KiB per 10 ms, so a 64 KiB reply leaves well within the
/// write timeout and the progress check never fires) is dropped for its
/// drain rate, its bytes come back; a client reading at full speed at the
/// same time is served whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trickling_reader_is_dropped_for_its_drain_rate_others_served() {
    let limits = NbdLimits {
        write_timeout: Duration::from_secs(1),
        min_drain_rate: 8 * MIB,
        ..NbdLimits::default()
    };
    let (server, addr) = start_limited(vec![mem_export("a", MIB, false).1], limits).await;
    let mut slow = Raw::ready(addr, "a", false).await;
    for cookie in 0..512 {
        slow.send(req(Command::Read, cookie, 0, 64 << 10), &[])
            .await;
    }
    let trickle = tokio::spawn(async move {
        let mut b = vec![0u8; 16 << 10];
        let mut got = 0u64;
        loop {
            match tokio::time::timeout(Duration::from_secs(10), slow.s.read(&mut b)).await {
                Ok(Ok(0)) | Ok(Err(_)) => return Some(got),
                Ok(Ok(n)) => got += n as u64,
                Err(_) => return None,
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    });
    let mut fast = Raw::ready(addr, "a", false).await;
    let lens: HashMap<u64, u32> = (0..32).map(|k| (k, MIB as u32)).collect();
    for round in 0..3 {
        for cookie in 0..32 {
            fast.send(req(Command::Read, cookie, 0, MIB as u32), &[])
                .await;
        }
        for _ in 0..32 {
            let r = fast.reply(&lens).await;
            assert_eq!((r.error, r.data.len()), (0, MIB as usize), "round {round}");
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }

    let read = trickle.await.unwrap();
    assert!(
        read.is_some_and(|n| n < 32 * MIB),
        "trickler not dropped: {read:?}"
    );
    let stats = server.stats();
    assert_eq!(
        (stats.dropped_slow_drain, stats.dropped_stalled),
        (1, 0),
        "{stats:?}"
    );
    assert!(eventually(|| server.stats().buffered_bytes == 0).await);
    assert_eq!(
        fast.call(req(Command::Read, 77, 0, 512), &[]).await.error,
        0
    );
}

// ------------------------------------------------------ red team (stalls)

/// Two clients send a 1 MiB WRITE header and only half its payload, then
/// stall: the server pool (2 MiB) is theirs while they stall. They are
/// dropped after the write timeout, the bytes come back, and a third
/// client's read (waiting on the pool meanwhile) is answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_write_payloads_are_dropped_after_the_write_timeout() {
    let limits = NbdLimits {
        memory: 2 * MIB,
        write_timeout: Duration::from_millis(300),
        ..NbdLimits::default()
    };
    let (server, addr) = start_limited(vec![mem_export("a", 4 * MIB, false).1], limits).await;
    let mut stalled = Vec::new();
    for cookie in 0..2 {
        let mut c = Raw::ready(addr, "a", false).await;
        let half = vec![0xabu8; MIB as usize / 2];
        c.send(req(Command::Write, cookie, 0, MIB as u32), &half)
            .await;
        stalled.push(c);
    }
    assert!(eventually(|| server.stats().buffered_bytes == 2 * MIB).await);
    let mut other = Raw::ready(addr, "a", false).await;

    let r = tokio::time::timeout(
        Duration::from_secs(10),
        other.call(req(Command::Read, 7, 0, 4096), &[]),
    )
    .await;

    assert_eq!(r.expect("read starved by stalled WRITE payloads").error, 0);
    for c in &mut stalled {
        assert!(c.closed().await, "stalled writer not dropped");
    }
    assert!(eventually(|| server.stats().buffered_bytes == 0).await);
    assert!(eventually(|| server.stats().connections == 1).await);
    assert_eq!(server.stats().in_flight, 0);
}

/// Shutdown does not wait for a WRITE payload that never comes: the
/// connection closes at once, well before the (30 s) write timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_does_not_wait_for_a_stalled_write_payload() {
    let (server, addr) = start_limited(
        vec![mem_export("a", 4 * MIB, false).1],
        NbdLimits::default(),
    )
    .await;
    let mut c = Raw::ready(addr, "a", false).await;
    c.send(req(Command::Write, 1, 0, MIB as u32), &[1, 2, 3])
        .await;
    assert!(eventually(|| server.stats().buffered_bytes == MIB).await);

    server.shutdown();

    let idle = tokio::time::timeout(Duration::from_secs(5), server.wait_idle()).await;
    assert!(idle.is_ok(), "shutdown waits for a stalled payload");
    assert_eq!(server.stats().buffered_bytes, 0);
}

// ------------------------------------------------- device budget (issue 10)

/// Counts the bytes inside its calls at once and the largest call.
struct MeteredDevice {
    inner: MemDevice,
    inside: std::sync::atomic::AtomicUsize,
    most_inside: std::sync::atomic::AtomicUsize,
    largest: std::sync::atomic::AtomicUsize,
}

impl MeteredDevice {
    async fn metered<T>(&self, len: usize, op: impl std::future::Future<Output = T>) -> T {
        use std::sync::atomic::Ordering::SeqCst;
        let now = self.inside.fetch_add(len, SeqCst) + len;
        self.most_inside.fetch_max(now, SeqCst);
        self.largest.fetch_max(len, SeqCst);
        // Let every other request reach the device meanwhile.
        tokio::time::sleep(Duration::from_millis(5)).await;
        let out = op.await;
        self.inside.fetch_sub(len, SeqCst);
        out
    }
}

impl BlockDevice for MeteredDevice {
    crate::block::forward_to!(inner => name, size, flush, discard, write_zeroes);

    fn read<'a>(
        &'a self,
        offset: crate::units::ByteOffset,
        buf: &'a mut [u8],
    ) -> crate::block::BoxFuture<'a, crate::block::BlockResult> {
        crate::block::BoxFuture::new(self.metered(buf.len(), self.inner.read(offset, buf)))
    }

    fn write<'a>(
        &'a self,
        offset: crate::units::ByteOffset,
        buf: &'a [u8],
        durability: crate::block::Durability,
    ) -> crate::block::BoxFuture<'a, crate::block::BlockResult> {
        crate::block::BoxFuture::new(
            self.metered(buf.len(), self.inner.write(offset, buf, durability)),
        )
    }
}

/// Three connections with four 12 MiB reads and four writes each in
/// flight (288 MiB asked for) never have more than the 16 MiB device budget
/// inside the volume at once, in pieces of at most 4 MiB, and every
/// request is answered with the right data.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_reach_the_volume_in_pieces_within_the_device_budget() {
    use super::limits::{DEVICE_BUDGET, DEVICE_PIECE};
    use std::sync::atomic::Ordering::SeqCst;
    let size = 64 * MIB;
    let dev = Arc::new(MeteredDevice {
        inner: MemDevice::new("metered", size),
        inside: Default::default(),
        most_inside: Default::default(),
        largest: Default::default(),
    });
    let (_, mut export) = mem_export("m", size, false);
    export.device = dev.clone();
    let (_server, addr) = start_tcp(vec![export]).await;
    let len = 12 * MIB as u32;
    let pattern: Vec<u8> = (0..len).map(|i| (i / 4096) as u8).collect();
    let mut setup = Raw::ready(addr, "m", false).await;
    assert_eq!(
        setup
            .call(req(Command::Write, 0, 0, len), &pattern)
            .await
            .error,
        0
    );

    let clients = (0..3u64).map(|k| {
        let pattern = pattern.clone();
        tokio::spawn(async move {
            let mut c = Raw::ready(addr, "m", k % 2 == 0).await;
            for i in 0..4 {
                c.send(req(Command::Read, i, 0, len), &[]).await;
                c.send(req(Command::Write, 100 + i, 32 * MIB, len), &pattern)
                    .await;
            }
            let lens: HashMap<u64, u32> = (0..4).map(|i| (i, len)).collect();
            let mut good = 0;
            for _ in 0..8 {
                let r = c.reply(&lens).await;
                let data_ok = r.cookie >= 100 || r.data == pattern;
                good += usize::from(r.error == 0 && data_ok);
            }
            good
        })
    });
    let answered: Vec<usize> = futures::future::join_all(clients)
        .await
        .into_iter()
        .map(Result::unwrap)
        .collect();

    assert_eq!(answered, vec![8; 3]);
    assert!(dev.largest.load(SeqCst) <= DEVICE_PIECE);
    let most = dev.most_inside.load(SeqCst);
    assert!(
        (2 * DEVICE_PIECE..=DEVICE_BUDGET).contains(&most),
        "{most} bytes inside the volume at once (budget {DEVICE_BUDGET})"
    );
}

/// Panics on reads at offset 0 (a bug below the export); other calls go
/// to RAM.
struct PanickyDevice(MemDevice);

impl BlockDevice for PanickyDevice {
    crate::block::forward_to!(0 => name, size, write, flush, discard, write_zeroes);

    fn read<'a>(
        &'a self,
        offset: crate::units::ByteOffset,
        buf: &'a mut [u8],
    ) -> crate::block::BoxFuture<'a, crate::block::BlockResult> {
        crate::block::BoxFuture::new(async move {
            tokio::task::yield_now().await;
            assert_ne!(offset.get(), 0, "PanickyDevice: read at 0");
            self.0.read(offset, buf).await
        })
    }
}

/// A request whose future panics fails alone with EIO: the requests
/// pipelined around it on the same connection are answered, and the
/// connection stays usable.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_request_fails_alone_and_the_connection_goes_on() {
    let (_, mut export) = mem_export("p", MIB, false);
    export.device = Arc::new(PanickyDevice(MemDevice::new("p", MIB)));
    let (server, addr) = start_tcp(vec![export]).await;
    let mut c = Raw::ready(addr, "p", false).await;

    c.send(req(Command::Write, 1, 4096, 4096), &[7; 4096]).await;
    c.send(req(Command::Read, 2, 0, 4096), &[]).await;
    c.send(req(Command::Read, 3, 4096, 4096), &[]).await;
    let lens: HashMap<u64, u32> = [(2, 4096), (3, 4096)].into();
    let mut replies = HashMap::new();
    for _ in 0..3 {
        let r = c.reply(&lens).await;
        replies.insert(r.cookie, r);
    }
    let later = c.call(req(Command::Read, 4, 4096, 512), &[]).await;

    assert_eq!(replies[&1].error, 0);
    assert_eq!(replies[&2].error, errno::EIO);
    assert_eq!(
        (replies[&3].error, replies[&3].data.clone()),
        (0, vec![7; 4096])
    );
    assert_eq!((later.error, later.data), (0, vec![7; 512]));
    assert!(eventually(|| server.stats().in_flight == 0).await);
}
