//! Red-team tests of the NBD data path (issue 10): a hostile raw client
//! (the fixed-newstyle handshake by hand, simple replies) against the real
//! binary. Framing split at every byte, bad requests answered with errors
//! on a connection that goes on, NBD_CMD_DISC behind requests in flight,
//! and clients that never read replies of requests that carry no data.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use raid_tests::nbd_raw::{nbd_handshake, qemu_io_read_within, raid5_vol0, serve_members};
use raid_tests::{proc_status_kib, pseudo_random, scratch_dir};

const READ: u16 = 0;
const WRITE: u16 = 1;
const DISC: u16 = 2;
const FLUSH: u16 = 3;
const FLAG_FUA: u16 = 1;
const FLAG_DF: u16 = 1 << 2;
const EINVAL: u32 = 22;
const ENOSPC: u32 = 28;

/// One request's bytes: header, then the WRITE payload.
fn request(cmd: u16, flags: u16, cookie: u64, offset: u64, len: u32, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(28 + payload.len());
    out.extend_from_slice(&0x2560_9513u32.to_be_bytes());
    out.extend_from_slice(&flags.to_be_bytes());
    out.extend_from_slice(&cmd.to_be_bytes());
    out.extend_from_slice(&cookie.to_be_bytes());
    out.extend_from_slice(&offset.to_be_bytes());
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(payload);
    out
}

/// A simple reply: (error, cookie).
fn reply_head(s: &mut TcpStream) -> (u32, u64) {
    let mut h = [0u8; 16];
    s.read_exact(&mut h).expect("reply header");
    assert_eq!(u32::from_be_bytes(h[..4].try_into().unwrap()), 0x6744_6698);
    let error = u32::from_be_bytes(h[4..8].try_into().unwrap());
    (error, u64::from_be_bytes(h[8..].try_into().unwrap()))
}

/// Reads `n` simple replies; `reads` gives the data length of the cookies
/// that are reads (data follows only a successful read). Returns cookie ->
/// (error, data); a cookie may repeat, so values are lists.
fn replies(
    s: &mut TcpStream,
    n: usize,
    reads: &HashMap<u64, usize>,
) -> HashMap<u64, Vec<(u32, Vec<u8>)>> {
    let mut out: HashMap<u64, Vec<(u32, Vec<u8>)>> = HashMap::new();
    for _ in 0..n {
        let (error, cookie) = reply_head(s);
        let mut data = vec![
            0u8;
            if error == 0 {
                reads.get(&cookie).copied().unwrap_or(0)
            } else {
                0
            }
        ];
        s.read_exact(&mut data).expect("read data");
        out.entry(cookie).or_default().push((error, data));
    }
    out
}

fn connect(server: &raid_tests::Server) -> TcpStream {
    let mut s = TcpStream::connect(server.addr).unwrap();
    s.set_nodelay(true).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    nbd_handshake(&mut s, "vol0");
    s
}

/// True once the server closed `s` (EOF or reset) within `limit`.
fn closed_within(s: &mut TcpStream, limit: Duration) -> bool {
    s.set_read_timeout(Some(limit)).unwrap();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return true,
            Err(_) => return false,
        }
    }
}

/// A batch of writes (unaligned offsets and lengths, FUA), a flush and
/// reads back, sent in chunks of 1, 3, 27, 28, 29, 511 and 4097 bytes
/// (every header and payload cut at many places), is answered in full and
/// reads back what it wrote.
#[test]
fn requests_split_at_any_byte_are_served_whole() {
    let dir = scratch_dir("rt-nbd-split");
    let members = raid5_vol0(dir.path());
    let server = serve_members(&members, &[]);
    for (round, chunk) in [1usize, 3, 27, 28, 29, 511, 4097].into_iter().enumerate() {
        let mut s = connect(&server);
        let base = round as u64 * (1 << 20) + 7;
        let a = pseudo_random(5000, round as u64 * 2 + 1);
        let b = pseudo_random(777, round as u64 * 2 + 2);
        let mut batch = request(WRITE, 0, 1, base, a.len() as u32, &a);
        batch.extend(request(WRITE, FLAG_FUA, 2, base + 6000, b.len() as u32, &b));
        batch.extend(request(FLUSH, 0, 3, 0, 0, &[]));
        batch.extend(request(READ, 0, 4, base, a.len() as u32, &[]));
        batch.extend(request(READ, 0, 5, base + 6000, b.len() as u32, &[]));
        // The reads are sent after the writes' replies: ordering between
        // a read and a write in flight is the client's business.
        let (writes, reads) = batch.split_at(3 * 28 + a.len() + b.len());
        for piece in writes.chunks(chunk) {
            s.write_all(piece).unwrap();
        }
        let got = replies(&mut s, 3, &HashMap::new());
        assert!(got.values().flatten().all(|(e, _)| *e == 0), "{got:?}");
        for piece in reads.chunks(chunk) {
            s.write_all(piece).unwrap();
        }
        let lens = HashMap::from([(4, a.len()), (5, b.len())]);
        let got = replies(&mut s, 2, &lens);
        assert_eq!(got[&4][0], (0, a.clone()), "chunk {chunk}");
        assert_eq!(got[&5][0], (0, b.clone()), "chunk {chunk}");
    }
    assert_eq!(server.stop(), 0);
}

/// Requests the export cannot serve get an error reply and the connection
/// goes on: unknown command, DF without structured replies, past the end,
/// offset overflow, a READ over the maximum block size, a WRITE past the
/// end (its payload still consumed); zero lengths and a duplicate cookie
/// are answered.
#[test]
fn bad_requests_get_errors_and_the_connection_goes_on() {
    let dir = scratch_dir("rt-nbd-bad");
    let members = raid5_vol0(dir.path());
    let server = serve_members(&members, &[]);
    let mut s = TcpStream::connect(server.addr).unwrap();
    let size = nbd_handshake(&mut s, "vol0");
    let junk = pseudo_random(4096, 9);
    let mut batch = Vec::new();
    batch.extend(request(99, 0, 1, 0, 0, &[]));
    batch.extend(request(READ, FLAG_DF, 2, 0, 4096, &[]));
    batch.extend(request(READ, 0, 3, size - 512, 1024, &[]));
    batch.extend(request(READ, 0, 4, u64::MAX - 100, 4096, &[]));
    batch.extend(request(READ, 0, 5, 0, 64 << 20, &[]));
    batch.extend(request(WRITE, 0, 6, size - 512, 4096, &junk));
    batch.extend(request(READ, 0, 7, 0, 0, &[]));
    batch.extend(request(WRITE, 0, 8, 0, 0, &[]));
    batch.extend(request(READ, 0, 9, 4096, 100, &[]));
    batch.extend(request(READ, 0, 9, 8192, 100, &[]));
    s.write_all(&batch).unwrap();
    let reads = HashMap::from([(9, 100)]);
    let got = replies(&mut s, 10, &reads);
    let err = |c: u64| got[&c][0].0;
    assert_eq!(err(1), EINVAL);
    assert_eq!(err(2), EINVAL);
    assert_eq!(err(3), EINVAL);
    assert_eq!(err(4), EINVAL);
    assert_ne!(err(5), 0);
    assert_eq!(err(6), ENOSPC);
    assert_eq!((err(7), err(8)), (0, 0));
    assert_eq!(got[&9].len(), 2);
    assert!(got[&9].iter().all(|(e, d)| *e == 0 && d.len() == 100));
    // The last 512 bytes were not touched by the refused WRITE.
    s.write_all(&request(READ, 0, 10, size - 512, 512, &[]))
        .unwrap();
    let got = replies(&mut s, 1, &HashMap::from([(10, 512)]));
    assert_eq!(got[&10][0], (0, vec![0u8; 512]));
    assert_eq!(server.stop(), 0);
}

/// Bad magic and a WRITE over the maximum block size end only that
/// connection; the server keeps serving the others.
#[test]
fn protocol_violations_close_only_their_connection() {
    let dir = scratch_dir("rt-nbd-magic");
    let members = raid5_vol0(dir.path());
    let server = serve_members(&members, &[]);
    let mut good = connect(&server);
    let mut bad = connect(&server);
    let mut garbage = request(READ, 0, 1, 0, 512, &[]);
    garbage[0] ^= 0xff;
    bad.write_all(&garbage).unwrap();
    assert!(closed_within(&mut bad, Duration::from_secs(10)));
    let mut huge = connect(&server);
    huge.write_all(&request(WRITE, 0, 1, 0, u32::MAX, &[]))
        .unwrap();
    assert!(closed_within(&mut huge, Duration::from_secs(10)));
    good.write_all(&request(READ, 0, 1, 0, 512, &[])).unwrap();
    let got = replies(&mut good, 1, &HashMap::from([(1, 512)]));
    assert_eq!(got[&1][0].0, 0);
    assert_eq!(server.stop(), 0);
}

/// 64 WRITEs of 64 KiB followed by NBD_CMD_DISC in one segment: every
/// write is answered before the server closes, and the data is there for
/// the next connection.
#[test]
fn disconnect_behind_writes_in_flight_answers_them_first() {
    let dir = scratch_dir("rt-nbd-disc");
    let members = raid5_vol0(dir.path());
    let server = serve_members(&members, &[]);
    let mut s = connect(&server);
    let data = pseudo_random(64 << 20 >> 4, 77);
    let mut batch = Vec::new();
    for (i, block) in data.chunks(64 << 10).enumerate() {
        batch.extend(request(
            WRITE,
            0,
            i as u64,
            (i as u64) << 16,
            1 << 16,
            block,
        ));
    }
    batch.extend(request(DISC, 0, 999, 0, 0, &[]));
    s.write_all(&batch).unwrap();
    let got = replies(&mut s, 64, &HashMap::new());
    assert_eq!(got.len(), 64);
    assert!(got.values().flatten().all(|(e, _)| *e == 0));
    assert!(closed_within(&mut s, Duration::from_secs(10)));

    let mut r = connect(&server);
    r.write_all(&request(READ, 0, 1, 0, data.len() as u32, &[]))
        .unwrap();
    let got = replies(&mut r, 1, &HashMap::from([(1, data.len())]));
    assert!(got[&1][0] == (0, data), "data written before DISC lost");
    assert_eq!(server.stop(), 0);
}

/// RSS growth allowed above the memory bound.
const RSS_SLACK_MIB: u64 = 64;

/// A client sends millions of requests that carry no data (zero-length READs) and
/// never reads a reply. Their replies must count against the connection's
/// memory like READ data does: the server's RSS stays under
/// `--nbd-connection-memory` plus slack, and qemu-io is still served.
/// (Before the fix the replies queued without bound: +40 MiB in 1.5 s.)
#[test]
fn dataless_requests_never_read_stay_within_nbd_memory() {
    let dir = scratch_dir("rt-nbd-flood");
    let members = raid5_vol0(dir.path());
    let server = serve_members(
        &members,
        &[
            "--nbd-memory",
            "64M",
            "--nbd-connection-memory",
            "32M",
            "--nbd-write-timeout",
            "120s",
        ],
    );
    let pid = server.pid();
    let (served, out) = qemu_io_read_within(&server.uri("vol0"), Duration::from_secs(30));
    assert!(served, "{out}");
    let baseline = proc_status_kib(pid, "VmRSS") / 1024;
    let limit = baseline + 32 + RSS_SLACK_MIB;

    let mut s = connect(&server);
    let one = request(READ, 0, 1, 0, 0, &[]);
    let batch: Vec<u8> = one
        .iter()
        .copied()
        .cycle()
        .take(one.len() * 16384)
        .collect();
    s.set_write_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    // 12 million requests (336 MB) or 40 s, whichever first: the server
    // either queues their replies (and its RSS passes the limit) or stops
    // reading once its pool is full (and our writes time out).
    let deadline = Instant::now() + Duration::from_secs(40);
    let (mut sent, mut blocked) = (0usize, 0);
    while sent < 12_000_000 * one.len() && Instant::now() < deadline && blocked < 10 {
        // Writes continue where the last one stopped: framing stays whole.
        let at = sent % batch.len();
        match s.write(&batch[at..]) {
            Ok(n) => (sent, blocked) = (sent + n, 0),
            Err(_) => blocked += 1,
        }
        let rss = proc_status_kib(pid, "VmRSS") / 1024;
        assert!(
            rss <= limit,
            "server RSS {rss} MiB > limit {limit} MiB after {sent} bytes"
        );
    }
    println!("sent {sent} bytes, blocked {blocked}");
    let peak = proc_status_kib(pid, "VmHWM") / 1024;
    assert!(
        peak <= limit,
        "server peak RSS {peak} MiB > limit {limit} MiB"
    );
    let (served, out) = qemu_io_read_within(&server.uri("vol0"), Duration::from_secs(60));
    assert!(served, "qemu-io not served beside the flood:\n{out}");
    drop(s);
}

/// Clients that close half-way through a WRITE payload (many, at once)
/// leave the server serving: the data before them reads back and a new
/// client is answered.
#[test]
fn clients_closing_mid_payload_leave_the_server_serving() {
    let dir = scratch_dir("rt-nbd-midpayload");
    let members = raid5_vol0(dir.path());
    let server = serve_members(&members, &[]);
    let data = pseudo_random(1 << 20, 5);
    let mut s = connect(&server);
    s.write_all(&request(WRITE, 0, 1, 4 << 20, 1 << 20, &data))
        .unwrap();
    assert_eq!(replies(&mut s, 1, &HashMap::new())[&1][0].0, 0);
    for i in 0..32u64 {
        let mut c = connect(&server);
        let head = request(
            WRITE,
            0,
            i,
            4 << 20,
            8 << 20,
            &data[..(i as usize + 1) * 3001],
        );
        c.write_all(&head).unwrap();
    }
    s.write_all(&request(READ, 0, 2, 4 << 20, 1 << 20, &[]))
        .unwrap();
    let got = replies(&mut s, 1, &HashMap::from([(2, 1 << 20)]));
    assert!(got[&2][0] == (0, data), "data changed by cut-off WRITEs");
    assert_eq!(server.stop(), 0);
}

/// SIGTERM while one client never reads the replies of 32 MiB READs and
/// another stalls half-way through a WRITE payload: the server exits
/// (bounded by its 3 s write timeout plus the drain), and every WRITE
/// acknowledged before is there after a restart.
#[test]
fn sigterm_with_unread_replies_and_stalled_payload_keeps_acknowledged_writes() {
    let dir = scratch_dir("rt-nbd-sigterm");
    let members = raid5_vol0(dir.path());
    let args = ["--nbd-write-timeout", "3s"];
    let server = serve_members(&members, &args);
    let data = pseudo_random(8 << 20, 11);
    let mut s = connect(&server);
    let mut batch = Vec::new();
    for (i, block) in data.chunks(1 << 20).enumerate() {
        batch.extend(request(
            WRITE,
            0,
            i as u64,
            7 + ((i as u64) << 20),
            1 << 20,
            block,
        ));
    }
    s.write_all(&batch).unwrap();
    let got = replies(&mut s, 8, &HashMap::new());
    assert!(got.values().flatten().all(|(e, _)| *e == 0));
    let mut idle = connect(&server);
    let mut reads = Vec::new();
    for cookie in 0..40 {
        reads.extend(request(READ, 0, cookie, 0, 32 << 20, &[]));
    }
    idle.write_all(&reads).unwrap();
    let mut stalled = connect(&server);
    stalled
        .write_all(&request(WRITE, 0, 1, 0, 1 << 20, &data[..1000]))
        .unwrap();
    // More writes in flight on the first connection, not waited for.
    s.write_all(&batch).unwrap();

    let t0 = Instant::now();
    assert_eq!(server.stop(), 0);
    let took = t0.elapsed();
    assert!(took < Duration::from_secs(60), "shutdown took {took:?}");

    let server = serve_members(&members, &[]);
    let mut r = connect(&server);
    r.write_all(&request(READ, 0, 1, 7, data.len() as u32, &[]))
        .unwrap();
    let got = replies(&mut r, 1, &HashMap::from([(1, data.len())]));
    assert!(got[&1][0] == (0, data), "acknowledged writes lost");
    assert_eq!(server.stop(), 0);
    drop((idle, stalled));
}
