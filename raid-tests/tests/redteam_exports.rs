//! Red-team regressions for the export limits (issue 16, items 6-8): what
//! a hostile client that plays by other rules than the tests of
//! `safety_exports.rs` could still take, run against the real `vraid`
//! binary with raw sockets; the well-behaved client is qemu-io.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use raid_tests::nbd_raw::{
    connect_from, nbd_handshake, qemu_io_read_within, raid5_vol0, serve_members, wait_until,
};
use raid_tests::scratch_dir;

/// One NBD request header.
fn request(command: u16, cookie: u64, offset: u64, len: u32) -> Vec<u8> {
    let mut out = 0x2560_9513u32.to_be_bytes().to_vec();
    out.extend_from_slice(&0u16.to_be_bytes());
    out.extend_from_slice(&command.to_be_bytes());
    out.extend_from_slice(&cookie.to_be_bytes());
    out.extend_from_slice(&offset.to_be_bytes());
    out.extend_from_slice(&len.to_be_bytes());
    out
}

/// Reads until EOF or error; true if the peer closed within `limit`.
fn closed_within(s: &mut TcpStream, limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    let mut buf = [0u8; 4096];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return false;
        }
        s.set_read_timeout(Some(left)).unwrap();
        match s.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return true,
            Err(_) => return false,
        }
    }
}

/// Break: a WRITE's bytes are taken from the pools when its header is
/// read, before its payload. 32 connections from one address (under the
/// per-client limit of 64) each sending a 32 MiB WRITE header and no
/// payload took the whole default 1 GiB server pool for as long as they
/// liked, at no memory cost to the server: qemu-io hung forever. Now a
/// payload not received within `--nbd-write-timeout` (3 s here) ends its
/// connection and gives the bytes back.
#[test]
fn write_headers_without_payload_do_not_lock_out_other_clients() {
    let dir = scratch_dir("redteam-nbd-stalled-writes");
    let members = raid5_vol0(dir.path());
    let server = serve_members(&members, &["--nbd-write-timeout", "3s"]);
    let mut stalled: Vec<TcpStream> = (0..32u64)
        .map(|cookie| {
            let mut s = TcpStream::connect(server.addr).unwrap();
            nbd_handshake(&mut s, "vol0");
            s.write_all(&request(1, cookie, 0, 32 << 20)).unwrap();
            s
        })
        .collect();

    let (served, out) = qemu_io_read_within(&server.uri("vol0"), Duration::from_secs(30));
    assert!(
        served,
        "qemu-io locked out by WRITE headers without payload:\n{out}"
    );
    for s in &mut stalled {
        assert!(
            closed_within(s, Duration::from_secs(30)),
            "stalled writer not dropped"
        );
    }
    server.wait_log("write payload not received", Duration::from_secs(5));
}

/// The same with half a 32 MiB payload sent, then a stall: the connection
/// is dropped, the data never written, and a normal write beside it
/// reads back.
#[test]
fn half_a_write_payload_then_a_stall_is_dropped_and_not_written() {
    let dir = scratch_dir("redteam-nbd-half-write");
    let members = raid5_vol0(dir.path());
    let server = serve_members(&members, &["--nbd-write-timeout", "2s"]);
    let uri = server.uri("vol0");
    let mut s = TcpStream::connect(server.addr).unwrap();
    nbd_handshake(&mut s, "vol0");
    s.write_all(&request(1, 1, 0, 32 << 20)).unwrap();
    s.write_all(&vec![0xee; 16 << 20]).unwrap();
    raid_tests::qemu_io(
        &uri,
        &[
            "write -P 0x5a 64M 1M".to_string(),
            "read -P 0x5a 64M 1M".to_string(),
        ],
    );

    assert!(
        closed_within(&mut s, Duration::from_secs(30)),
        "not dropped"
    );
    server.wait_log("write payload not received", Duration::from_secs(5));
    let out = raid_tests::qemu_io(
        &uri,
        &[
            "read -P 0 0 32M".to_string(),
            "read -P 0x5a 64M 1M".to_string(),
        ],
    );
    assert!(!out.contains("Pattern verification failed"), "{out}");
}

/// 40 attackers from eight addresses (1.25 GiB of 32 MiB WRITE headers
/// against the default 1 GiB server pool) send a header, never its
/// payload, and reconnect the moment they are dropped, so the pool is
/// always claimed. qemu-io must still get each of three reads through
/// within a few write timeouts (2 s): a dropped attacker's bytes go to
/// the waiter first. On main the first read never finished.
#[test]
fn reconnecting_stalled_writers_delay_others_by_at_most_the_write_timeout() {
    let dir = scratch_dir("redteam-nbd-stalled-reconnect");
    let members = raid5_vol0(dir.path());
    let server = serve_members(&members, &["--nbd-write-timeout", "2s"]);
    let addr = server.addr;
    let stop = Arc::new(AtomicBool::new(false));
    let rounds = Arc::new(AtomicU64::new(0));
    let attackers: Vec<_> = (0..40u8)
        .map(|i| {
            let (stop, rounds) = (stop.clone(), rounds.clone());
            std::thread::spawn(move || {
                let from = Ipv4Addr::new(127, 0, 0, 2 + i % 8);
                while !stop.load(Ordering::SeqCst) {
                    let Ok(mut s) = connect_from(from, addr) else {
                        std::thread::sleep(Duration::from_millis(50));
                        continue;
                    };
                    nbd_handshake(&mut s, "vol0");
                    if s.write_all(&request(1, 1, 0, 32 << 20)).is_err() {
                        continue;
                    }
                    // Stalled until the server drops it (or the test ends).
                    while !stop.load(Ordering::SeqCst) {
                        if closed_within(&mut s, Duration::from_millis(500)) {
                            rounds.fetch_add(1, Ordering::SeqCst);
                            break;
                        }
                    }
                }
            })
        })
        .collect();
    let _stop_on_panic = StopOnDrop(stop.clone());
    wait_until("attackers connected", Duration::from_secs(30), || {
        server
            .log()
            .matches("NBD client entered transmission")
            .count()
            >= 40
    });

    for n in 0..3 {
        let t0 = Instant::now();
        let (served, out) = qemu_io_read_within(&server.uri("vol0"), Duration::from_secs(20));
        assert!(served, "read {n} not served within 20 s:\n{out}");
        eprintln!("read {n} served in {:?}", t0.elapsed());
    }
    stop.store(true, Ordering::SeqCst);
    for a in attackers {
        a.join().unwrap();
    }
    assert!(
        rounds.load(Ordering::SeqCst) >= 40,
        "attackers were not dropped and back"
    );
    server.wait_log("write payload not received", Duration::from_secs(5));
}

/// Tells the attacker threads to stop, also when the test panics.
struct StopOnDrop(Arc<AtomicBool>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}
