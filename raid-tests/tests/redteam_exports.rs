//! Red-team regressions for the export limits (issue 16, items 6-8): what
//! a hostile client that plays by other rules than the tests of
//! `safety_exports.rs` could still take, run against the real `vraid`
//! binary with raw sockets; the well-behaved client is qemu-io.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpStream};
use std::os::fd::FromRawFd;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use raid_tests::{create_array, member_paths, run, scratch_dir, Server};

/// A RAID-5 of four 64 MiB members (192 MiB volume) named vol0.
fn raid5(dir: &Path) -> Vec<PathBuf> {
    let members = member_paths(dir, 4);
    create_array(5, "64K", "64M", "vol0", &members);
    members
}

fn start(members: &[PathBuf], extra: &[&str]) -> Server {
    let mut args: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
    args.extend(members.iter().map(|m| m.display().to_string()));
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    Server::start(&refs)
}

/// Fixed-newstyle handshake with `NBD_OPT_EXPORT_NAME` (no zeroes).
fn nbd_handshake(s: &mut TcpStream, export: &str) {
    let mut greeting = [0u8; 18];
    s.read_exact(&mut greeting).expect("greeting");
    assert_eq!(&greeting[..16], b"NBDMAGICIHAVEOPT");
    s.write_all(&3u32.to_be_bytes()).unwrap();
    let mut opt = b"IHAVEOPT".to_vec();
    opt.extend_from_slice(&1u32.to_be_bytes());
    opt.extend_from_slice(&(export.len() as u32).to_be_bytes());
    opt.extend_from_slice(export.as_bytes());
    s.write_all(&opt).unwrap();
    let mut info = [0u8; 10];
    s.read_exact(&mut info).expect("export info");
}

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

/// qemu-io reading 1 MiB, killed after `limit`: (finished in time, output).
fn qemu_io_read_within(uri: &str, limit: Duration) -> (bool, String) {
    let secs = limit.as_secs().to_string();
    let out = run(Command::new("timeout").args([
        secs.as_str(),
        "qemu-io",
        "-f",
        "raw",
        "-c",
        "read 0 1M",
        uri,
    ]));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (
        out.status.success() && text.contains("read 1048576/1048576"),
        text,
    )
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
    let members = raid5(dir.path());
    let server = start(&members, &["--nbd-write-timeout", "3s"]);
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
    let members = raid5(dir.path());
    let server = start(&members, &["--nbd-write-timeout", "2s"]);
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

/// Opens a TCP connection to `to` from source address `from` (any address
/// of 127/8 is loopback), so an attack can come from many "clients".
fn connect_from(from: Ipv4Addr, to: SocketAddr) -> std::io::Result<TcpStream> {
    let SocketAddr::V4(to) = to else {
        panic!("IPv4 only")
    };
    let sin = |a: SocketAddrV4| libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: a.port().to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from(*a.ip()).to_be(),
        },
        sin_zero: [0; 8],
    };
    let len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
    // SAFETY: socket(2) takes no pointers; the result is checked.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `fd` is a socket we just created and own; nobody else has it.
    let stream = unsafe { TcpStream::from_raw_fd(fd) };
    let (src, dst) = (sin(SocketAddrV4::new(from, 0)), sin(to));
    // SAFETY: both addresses are live sockaddr_in values of `len` bytes.
    let ok = unsafe {
        libc::bind(fd, (&src as *const libc::sockaddr_in).cast(), len) == 0
            && libc::connect(fd, (&dst as *const libc::sockaddr_in).cast(), len) == 0
    };
    if !ok {
        return Err(std::io::Error::last_os_error());
    }
    Ok(stream)
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
    let members = raid5(dir.path());
    let server = start(&members, &["--nbd-write-timeout", "2s"]);
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

/// Polls `cond` every 50 ms until it holds; panics with `what` after `limit`.
fn wait_until(what: &str, limit: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !cond() {
        assert!(Instant::now() < deadline, "{what} not within {limit:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}
