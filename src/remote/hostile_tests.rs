//! Red-team tests: RemoteMember against a hostile NBD server in this
//! process. The server does a correct handshake (export size, flags and
//! block sizes chosen by the test) and then answers each request with the
//! bytes a script returns: short READ replies, data outside the request,
//! replies for unknown handles, silence, a close mid-reply. The client
//! never panics, never returns bytes the server did not send for the
//! request, and fails with an error instead.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::{RemoteMember, RemoteOptions};
use crate::block::{BlockDevice, Durability};
use crate::export::nbd::proto::{self, Command, Request};
use crate::units::ByteOffset;

/// What the server does with one request.
enum Act {
    /// Sends these bytes and goes on.
    Send(Vec<u8>),
    /// Sends these bytes and closes the connection.
    SendAndClose(Vec<u8>),
    /// Never answers (the connection stays open).
    Silent,
}

/// The script: request, connection number (0 = the first) → what to do.
type Script = Arc<dyn Fn(&Request, usize) -> Act + Send + Sync>;

/// How the hostile server presents its export.
struct Export {
    size: u64,
    flags: u16,
    sizes: Option<(u32, u32, u32)>,
    /// Answers GO with `NBD_REP_INFO` replies that never end.
    endless_info: bool,
}

const SIZE: u64 = 1 << 20;

fn plain() -> Export {
    Export {
        size: SIZE,
        flags: proto::TFLAG_HAS_FLAGS | proto::TFLAG_SEND_FLUSH | proto::TFLAG_SEND_FUA,
        sizes: None,
        endless_info: false,
    }
}

/// Starts the server; returns its address and the connection counter.
async fn hostile(export: Export, script: Script) -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let conns = Arc::new(AtomicUsize::new(0));
    let counter = conns.clone();
    let export = Arc::new(export);
    tokio::spawn(async move {
        while let Ok((s, _)) = listener.accept().await {
            let n = counter.fetch_add(1, Ordering::SeqCst);
            let (e, script) = (export.clone(), script.clone());
            tokio::spawn(async move {
                let _ = connection(s, &e, &script, n).await;
            });
        }
    });
    (addr, conns)
}

async fn connection(
    mut s: TcpStream,
    e: &Export,
    script: &Script,
    n: usize,
) -> std::io::Result<()> {
    s.write_all(&proto::greeting()).await?;
    s.read_u32().await?;
    loop {
        let mut head = [0u8; proto::OPTION_HEADER_LEN];
        s.read_exact(&mut head).await?;
        let option = u32::from_be_bytes(head[8..12].try_into().unwrap());
        let len = u32::from_be_bytes(head[12..16].try_into().unwrap());
        let mut payload = vec![0u8; len as usize];
        s.read_exact(&mut payload).await?;
        let mut out = Vec::new();
        if option != proto::OPT_GO {
            proto::encode_option_reply(&mut out, option, proto::REP_ACK, &[]);
            s.write_all(&out).await?;
            continue;
        }
        let info = proto::info_export_payload(e.size, e.flags);
        proto::encode_option_reply(&mut out, option, proto::REP_INFO, &info);
        if e.endless_info {
            loop {
                s.write_all(&out).await?;
            }
        }
        if let Some((min, pref, max)) = e.sizes {
            let info = proto::info_block_size_payload(min, pref, max);
            proto::encode_option_reply(&mut out, option, proto::REP_INFO, &info);
        }
        proto::encode_option_reply(&mut out, option, proto::REP_ACK, &[]);
        s.write_all(&out).await?;
        break;
    }
    transmission(s, script, n).await
}

async fn transmission(mut s: TcpStream, script: &Script, n: usize) -> std::io::Result<()> {
    loop {
        let mut head = [0u8; proto::REQUEST_LEN];
        s.read_exact(&mut head).await?;
        let req = proto::parse_request(&head).unwrap();
        if req.command == Command::Write {
            let mut payload = vec![0u8; req.length as usize];
            s.read_exact(&mut payload).await?;
        }
        if req.command == Command::Disconnect {
            return Ok(());
        }
        match script(&req, n) {
            Act::Send(bytes) => s.write_all(&bytes).await?,
            Act::SendAndClose(bytes) => {
                s.write_all(&bytes).await?;
                return Ok(());
            }
            Act::Silent => std::future::pending::<()>().await,
        }
    }
}

/// One OFFSET_DATA chunk of `data` at `offset` for `cookie`.
fn data_chunk(cookie: u64, offset: u64, data: &[u8], done: bool) -> Vec<u8> {
    let flags = if done { proto::REPLY_FLAG_DONE } else { 0 };
    let len = (data.len() + 8) as u32;
    let mut out = proto::chunk_header(flags, proto::REPLY_TYPE_OFFSET_DATA, cookie, len).to_vec();
    out.extend_from_slice(&offset.to_be_bytes());
    out.extend_from_slice(data);
    out
}

/// A simple reply with no error, READ data appended.
fn simple(cookie: u64, data: &[u8]) -> Vec<u8> {
    let mut out = proto::simple_reply(cookie, 0).to_vec();
    out.extend_from_slice(data);
    out
}

async fn open(addr: SocketAddr, timeout: Duration) -> Arc<RemoteMember> {
    let path = std::path::PathBuf::from(format!("nbd://{addr}/x"));
    let opts = RemoteOptions {
        member_timeout: timeout,
    };
    let m = tokio::task::spawn_blocking(move || RemoteMember::open(&path, opts, false))
        .await
        .unwrap()
        .unwrap();
    Arc::new(m)
}

/// Reads 4 KiB at 0, bounded: the result, never a hang.
async fn read4k(m: &RemoteMember) -> crate::block::BlockResult<Vec<u8>> {
    let mut buf = vec![0x55u8; 4096];
    let r = tokio::time::timeout(Duration::from_secs(20), m.read(ByteOffset(0), &mut buf))
        .await
        .expect("the read neither completed nor failed in 20 s");
    r.map(|()| buf)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_reply_covering_part_of_the_request_is_an_error_not_zeroes() {
    // Half the data, then DONE: the other half was never sent.
    let script: Script = Arc::new(|r, _| {
        let half = vec![0xAAu8; r.length as usize / 2];
        Act::Send(data_chunk(r.cookie, r.offset, &half, true))
    });
    let (addr, _) = hostile(plain(), script).await;
    let m = open(addr, Duration::from_secs(1)).await;

    let r = read4k(&m).await;

    assert!(r.is_err(), "a short READ reply was served as data");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_reply_of_only_a_done_chunk_is_an_error_not_zeroes() {
    let script: Script = Arc::new(|r, _| {
        let none = proto::chunk_header(proto::REPLY_FLAG_DONE, proto::REPLY_TYPE_NONE, r.cookie, 0);
        Act::Send(none.to_vec())
    });
    let (addr, _) = hostile(plain(), script).await;
    let m = open(addr, Duration::from_secs(1)).await;

    let r = read4k(&m).await;

    assert!(
        r.is_err(),
        "a READ answered with no data was served as zeroes"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_bytes_sent_twice_do_not_cover_a_read() {
    // Two chunks of the first half: as many bytes as asked, half missing.
    let script: Script = Arc::new(|r, _| {
        let half = vec![0xAAu8; r.length as usize / 2];
        let mut out = data_chunk(r.cookie, r.offset, &half, false);
        out.extend(data_chunk(r.cookie, r.offset, &half, true));
        Act::Send(out)
    });
    let (addr, _) = hostile(plain(), script).await;
    let m = open(addr, Duration::from_secs(1)).await;

    let r = read4k(&m).await;

    assert!(r.is_err(), "overlapping chunks were taken as a whole READ");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn data_outside_the_request_and_unknown_handles_are_errors() {
    for case in 0..3u8 {
        let script: Script = Arc::new(move |r, _| {
            let data = vec![0xEEu8; r.length as usize];
            Act::Send(match case {
                0 => data_chunk(r.cookie, r.offset + 4096, &data, true),
                1 => data_chunk(r.cookie, u64::MAX - 8, &data, true),
                _ => simple(r.cookie.wrapping_add(1000), &data),
            })
        });
        let (addr, conns) = hostile(plain(), script).await;
        let m = open(addr, Duration::from_secs(1)).await;

        let r = read4k(&m).await;

        assert!(r.is_err(), "case {case}: bad reply served as data");
        assert!(
            conns.load(Ordering::SeqCst) >= 2,
            "case {case}: no reconnect"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_never_replies_fails_the_request_after_member_timeout() {
    let (addr, conns) = hostile(plain(), Arc::new(|_, _| Act::Silent)).await;
    let m = open(addr, Duration::from_secs(1)).await;

    let r = read4k(&m).await;

    let err = r.unwrap_err();
    assert_eq!(err.errno(), libc::EIO, "{err}");
    assert!(
        conns.load(Ordering::SeqCst) >= 2,
        "the request was not sent again"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_closing_mid_reply_gets_the_request_again_and_its_answer_is_used() {
    // Connection 0 sends half the data of a simple reply and closes;
    // connection 1 answers properly with other bytes.
    let script: Script = Arc::new(|r, n| {
        let good = vec![0x11u8; r.length as usize];
        if n == 0 {
            let mut out = simple(r.cookie, &[0xBBu8; 4096]);
            out.truncate(proto::SIMPLE_REPLY_LEN + 2048);
            Act::SendAndClose(out)
        } else {
            Act::Send(simple(r.cookie, &good))
        }
    });
    let (addr, _) = hostile(plain(), script).await;
    let m = open(addr, Duration::from_secs(5)).await;

    let data = read4k(&m).await.unwrap();

    assert!(
        data.iter().all(|&b| b == 0x11),
        "bytes of the cut reply served"
    );
    assert!(m.stats.retries.load(Ordering::Relaxed) >= 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_respect_a_maximum_block_size_below_4k() {
    // A server whose largest request is 1 KiB refuses longer ones.
    let export = Export {
        sizes: Some((512, 512, 1024)),
        ..plain()
    };
    let script: Script = Arc::new(|r, _| {
        if r.length > 1024 {
            return Act::Send(proto::simple_reply(r.cookie, proto::errno::EINVAL).to_vec());
        }
        match r.command {
            Command::Read => Act::Send(simple(r.cookie, &vec![0x22u8; r.length as usize])),
            _ => Act::Send(proto::simple_reply(r.cookie, 0).to_vec()),
        }
    });
    let (addr, _) = hostile(export, script).await;
    let m = open(addr, Duration::from_secs(5)).await;

    let data = read4k(&m).await.unwrap();
    m.write(ByteOffset(0), &[1u8; 8192], Durability::Fua)
        .await
        .unwrap();

    assert!(data.iter().all(|&b| b == 0x22));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_zero_byte_export_opens_and_refuses_io_cleanly() {
    let export = Export { size: 0, ..plain() };
    let (addr, _) = hostile(export, Arc::new(|_, _| Act::Silent)).await;
    let m = open(addr, Duration::from_secs(1)).await;

    assert_eq!(m.size(), 0);
    assert!(read4k(&m).await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_answering_go_with_endless_infos_fails_the_open() {
    let export = Export {
        endless_info: true,
        ..plain()
    };
    let (addr, _) = hostile(export, Arc::new(|_, _| Act::Silent)).await;
    let path = std::path::PathBuf::from(format!("nbd://{addr}/x"));
    let opts = RemoteOptions {
        member_timeout: Duration::from_secs(1),
    };

    let open = tokio::task::spawn_blocking(move || RemoteMember::open(&path, opts, false));
    let r = tokio::time::timeout(Duration::from_secs(20), open).await;

    let r = r.expect("the open never ended").unwrap();
    assert!(r.is_err(), "opened against an endless handshake");
}
