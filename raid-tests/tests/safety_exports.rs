//! Exports bound what a client can take (issue 16, items 6-8): vhost-user
//! connections release every descriptor, NBD clients that never read their
//! replies pin bounded memory, idle and flooding NBD clients are timed out
//! and refused, and accept keeps going at the descriptor limit.
//!
//! The hostile NBD clients are raw sockets doing the real handshake (no
//! stock tool misbehaves on purpose); the well-behaved client is qemu-io.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use blkio::Blkio;
use raid_tests::nbd_raw::{
    connect_from, nbd_handshake, qemu_io_read_within, raid5_vol0, serve_members, wait_until,
};
use raid_tests::{fd_count, proc_status_kib, qemu_io, scratch_dir, wait_for_socket};

const MIB: u64 = 1024 * 1024;

// ------------------------------------------------------------ vhost-user

/// The server's descriptor count once it has not changed for a second.
/// Between frontends the accept thread drops the old connection's daemon,
/// builds the next one (its worker threads' epoll sets and eventfds) and
/// waits in accept: only that resting state is comparable.
fn steady_fd_count(pid: u32) -> usize {
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut last = fd_count(pid);
    let mut same = 0;
    while same < 20 {
        assert!(Instant::now() < deadline, "descriptor count never settled");
        std::thread::sleep(Duration::from_millis(50));
        let now = fd_count(pid);
        same = if now == last { same + 1 } else { 0 };
        last = now;
    }
    last
}

/// Connects a libblkio virtio-blk-vhost-user frontend with `queues` queues,
/// reads one block, and disconnects.
fn blkio_connect_cycle(sock: &Path, queues: i32) {
    let mut b = Blkio::new("virtio-blk-vhost-user").expect("blkio new");
    b.set_str("path", sock.to_str().unwrap()).unwrap();
    b.connect().expect("blkio connect");
    b.set_i32("num-queues", queues).unwrap();
    b.start().expect("blkio start");
    assert!(b.get_u64("capacity").unwrap() > 0);
}

#[test]
fn vhost_user_connect_cycles_leave_the_descriptor_count_flat() {
    let dir = scratch_dir("safety-vhost-fds");
    let members = raid5_vol0(dir.path());
    let sock = dir.path().join("vol0.sock");
    let sock_arg = sock.display().to_string();
    let server = serve_members(
        &members,
        &["--vhost-user-blk", &sock_arg, "--vhost-queues", "4"],
    );
    wait_for_socket(&sock);
    let pid = server.pid();
    // One cycle first: whatever the first frontend sets up once stays.
    blkio_connect_cycle(&sock, 4);
    server.wait_log("frontend disconnected", Duration::from_secs(30));
    let before = steady_fd_count(pid);

    for _ in 0..50 {
        blkio_connect_cycle(&sock, 4);
    }
    // The server tears each connection down on its accept thread; wait for
    // the 51st teardown, then for the count to come back (bounded).
    wait_until("51 disconnects logged", Duration::from_secs(60), || {
        server.log().matches("frontend disconnected").count() >= 51
    });
    let after = steady_fd_count(pid);
    assert_eq!(
        after, before,
        "descriptors before 50 connect cycles: {before}, after: {after}"
    );
}

// ------------------------------------------------------------ raw NBD

/// Sends `n` NBD_CMD_READ requests of `len` bytes at offset 0.
fn send_reads(s: &mut TcpStream, n: u64, len: u32) {
    let mut out = Vec::new();
    for cookie in 0..n {
        out.extend_from_slice(&0x2560_9513u32.to_be_bytes());
        out.extend_from_slice(&0u16.to_be_bytes()); // flags
        out.extend_from_slice(&0u16.to_be_bytes()); // NBD_CMD_READ
        out.extend_from_slice(&cookie.to_be_bytes());
        out.extend_from_slice(&0u64.to_be_bytes());
        out.extend_from_slice(&len.to_be_bytes());
    }
    s.write_all(&out).unwrap();
}

/// Reads until EOF or error; true if the peer closed within `limit`.
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

// ------------------------------------------------------------ item 7

/// RSS growth allowed above the stated bound: allocator slack, the NBD
/// server's 16 MiB device budget (member bounce copies of requests in
/// flight), the members' buffer pool and the thread stacks of a loaded
/// server.
const RSS_SLACK_MIB: u64 = 64;

/// Two raw clients send 40 reads of 32 MiB each (2.5 GiB asked for) and
/// never read a reply. With `--nbd-connection-memory 64M` the server may
/// hold 2 x 64 MiB for them; it must not grow past that (plus slack), and
/// qemu-io on a third connection is served meanwhile.
#[test]
fn nbd_clients_that_never_read_replies_pin_at_most_their_connection_memory() {
    let dir = scratch_dir("safety-nbd-rss");
    let members = raid5_vol0(dir.path());
    let server = serve_members(&members, &["--nbd-connection-memory", "64M"]);
    let pid = server.pid();
    qemu_io(&server.uri("vol0"), &["read 0 32M".to_string()]);
    let baseline = proc_status_kib(pid, "VmRSS") / 1024;
    let bound = 2 * 64;
    // The members' bounce copies of reads in flight come from the NBD
    // server's fixed 16 MiB device budget, inside the slack. 2.5 GiB were
    // asked for.
    let limit = bound;

    let mut hostile: Vec<TcpStream> = (0..2)
        .map(|_| {
            let mut s = TcpStream::connect(server.addr).unwrap();
            assert!(nbd_handshake(&mut s, "vol0") >= 32 * MIB);
            send_reads(&mut s, 40, 32 << 20);
            s
        })
        .collect();

    // Wait until the pools are full (RSS up by most of the bound and
    // steady), failing at once if it passes the bound.
    let over = |rss: u64| rss > baseline + limit + RSS_SLACK_MIB;
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut last = 0;
    let mut steady = 0;
    while steady < 6 {
        let rss = proc_status_kib(pid, "VmRSS") / 1024;
        assert!(
            !over(rss),
            "server RSS {rss} MiB, baseline {baseline} MiB, limit {limit} MiB + {RSS_SLACK_MIB}"
        );
        assert!(
            Instant::now() < deadline,
            "RSS never settled (at {rss} MiB)"
        );
        let loaded = rss >= baseline + bound * 3 / 4;
        steady = if loaded && rss.abs_diff(last) <= 4 {
            steady + 1
        } else {
            0
        };
        last = rss;
        std::thread::sleep(Duration::from_millis(250));
    }

    let (served, out) = qemu_io_read_within(&server.uri("vol0"), Duration::from_secs(60));
    assert!(
        served,
        "qemu-io not served beside non-reading clients:\n{out}"
    );
    let peak = proc_status_kib(pid, "VmHWM") / 1024;
    println!("peak RSS {peak} MiB, baseline {baseline} MiB, limit {limit} MiB + {RSS_SLACK_MIB}");
    assert!(
        !over(peak),
        "server peak RSS {peak} MiB, baseline {baseline} MiB, limit {limit} MiB + {RSS_SLACK_MIB}"
    );
    hostile.clear();
}

/// The server-wide pool holds too: three non-reading clients with a
/// 256 MiB pool each but `--nbd-memory 96M` pin at most 96 MiB together.
#[test]
fn nbd_clients_that_never_read_replies_pin_at_most_the_server_memory() {
    let dir = scratch_dir("safety-nbd-rss-global");
    let members = raid5_vol0(dir.path());
    let server = serve_members(&members, &["--nbd-memory", "96M"]);
    let pid = server.pid();
    qemu_io(&server.uri("vol0"), &["read 0 32M".to_string()]);
    let baseline = proc_status_kib(pid, "VmRSS") / 1024;
    let bound = 96;

    let _hostile: Vec<TcpStream> = (0..3)
        .map(|_| {
            let mut s = TcpStream::connect(server.addr).unwrap();
            nbd_handshake(&mut s, "vol0");
            send_reads(&mut s, 20, 32 << 20);
            s
        })
        .collect();

    let deadline = Instant::now() + Duration::from_secs(60);
    let mut last = 0;
    let mut steady = 0;
    while steady < 6 {
        let rss = proc_status_kib(pid, "VmRSS") / 1024;
        assert!(
            rss <= baseline + bound + RSS_SLACK_MIB,
            "server RSS {rss} MiB, baseline {baseline} MiB, bound {bound} MiB + {RSS_SLACK_MIB}"
        );
        assert!(
            Instant::now() < deadline,
            "RSS never settled (at {rss} MiB)"
        );
        let loaded = rss >= baseline + bound / 2;
        steady = if loaded && rss.abs_diff(last) <= 4 {
            steady + 1
        } else {
            0
        };
        last = rss;
        std::thread::sleep(Duration::from_millis(250));
    }
    let peak = proc_status_kib(pid, "VmHWM") / 1024;
    println!("peak RSS {peak} MiB, baseline {baseline} MiB, bound {bound} MiB + {RSS_SLACK_MIB}");
    assert!(
        peak <= baseline + bound + RSS_SLACK_MIB,
        "peak RSS {peak} MiB"
    );
}

/// Non-reading clients that fill the server-wide pool do not lock others
/// out for good: a reply not written within `--nbd-write-timeout` (2 s)
/// ends its connection and gives its bytes back, so qemu-io is served.
#[test]
fn nbd_clients_that_never_read_replies_are_dropped_after_the_write_timeout() {
    let dir = scratch_dir("safety-nbd-write-timeout");
    let members = raid5_vol0(dir.path());
    let server = serve_members(
        &members,
        &["--nbd-memory", "96M", "--nbd-write-timeout", "2s"],
    );
    let mut hostile: Vec<TcpStream> = (0..3)
        .map(|_| {
            let mut s = TcpStream::connect(server.addr).unwrap();
            nbd_handshake(&mut s, "vol0");
            send_reads(&mut s, 20, 32 << 20);
            s
        })
        .collect();
    server.wait_log("not reading replies for 2s", Duration::from_secs(30));

    let (served, out) = qemu_io_read_within(&server.uri("vol0"), Duration::from_secs(60));
    assert!(served, "qemu-io locked out by non-reading clients:\n{out}");
    for s in &mut hostile {
        assert!(closed_within(s, Duration::from_secs(30)), "not dropped");
    }
}

// ------------------------------------------------------------ item 8

/// 300 connections from 127.0.0.2 that never send a byte: 20 are admitted
/// (the per-client limit), the rest are closed at once with a log line;
/// qemu-io from 127.0.0.1 is served meanwhile; the admitted ones are
/// dropped by the (8 s) handshake timeout.
#[test]
fn idle_connection_flood_is_refused_over_the_limit_and_timed_out() {
    let dir = scratch_dir("safety-nbd-flood");
    let members = raid5_vol0(dir.path());
    let server = serve_members(
        &members,
        &[
            "--nbd-max-connections-per-client",
            "20",
            "--nbd-handshake-timeout",
            // Long enough that no admitted connection times out before the
            // whole flood has been accepted on a loaded 2-core machine.
            "8s",
        ],
    );
    let flooder = Ipv4Addr::new(127, 0, 0, 2);
    let started = Instant::now();
    let mut flood: Vec<TcpStream> = (0..300)
        .map(|_| connect_from(flooder, server.addr).expect("connect"))
        .collect();

    // A refused connection is closed before any greeting; an admitted one
    // gets the 18-byte greeting first.
    let mut greeted = Vec::new();
    let mut refused = 0;
    for mut s in flood.drain(..) {
        s.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
        let mut g = [0u8; 18];
        match s.read_exact(&mut g) {
            Ok(()) => greeted.push(s),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                panic!("connection neither greeted nor closed within 1 s")
            }
            Err(_) => refused += 1,
        }
    }
    assert_eq!(greeted.len(), 20, "admitted from one address");
    assert_eq!(refused, 280);
    server.wait_log("NBD connection refused", Duration::from_secs(5));

    let (served, out) = qemu_io_read_within(&server.uri("vol0"), Duration::from_secs(30));
    assert!(served, "qemu-io not served during the flood:\n{out}");

    for s in &mut greeted {
        assert!(
            closed_within(s, Duration::from_secs(30)),
            "idle client not dropped"
        );
    }
    assert!(
        started.elapsed() >= Duration::from_millis(7900),
        "dropped before the handshake timeout"
    );
    server.wait_log(
        "not finished within the handshake timeout",
        Duration::from_secs(5),
    );
}

/// An idle client that has the greeting and sends nothing is dropped once
/// the (1 s) handshake timeout passes, not before.
#[test]
fn idle_handshaking_client_is_dropped_after_the_handshake_timeout() {
    let dir = scratch_dir("safety-nbd-hs-timeout");
    let members = raid5_vol0(dir.path());
    let server = serve_members(&members, &["--nbd-handshake-timeout", "1s"]);
    let mut s = TcpStream::connect(server.addr).unwrap();
    let t0 = Instant::now();
    let mut greeting = [0u8; 18];
    s.read_exact(&mut greeting).unwrap();
    assert!(
        closed_within(&mut s, Duration::from_secs(15)),
        "idle client still connected"
    );
    let took = t0.elapsed();
    assert!(
        took >= Duration::from_millis(900),
        "dropped after {took:?}, before the 1 s timeout"
    );
    server.wait_log(
        "not finished within the handshake timeout",
        Duration::from_secs(5),
    );
}

/// The connection limit is checked before any byte is exchanged: with
/// `--nbd-max-connections 3`, a fourth connection is closed at once.
#[test]
fn connections_over_the_server_limit_are_refused_promptly() {
    let dir = scratch_dir("safety-nbd-max");
    let members = raid5_vol0(dir.path());
    let server = serve_members(&members, &["--nbd-max-connections", "3"]);
    // The harness's readiness probe may still hold a slot for a moment.
    let mut held: Vec<TcpStream> = Vec::new();
    wait_until("three admitted", Duration::from_secs(10), || {
        let mut s = TcpStream::connect(server.addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        let mut g = [0u8; 18];
        if s.read_exact(&mut g).is_ok() {
            held.push(s);
        }
        held.len() == 3
    });
    let mut fourth = TcpStream::connect(server.addr).unwrap();
    let t0 = Instant::now();
    assert!(closed_within(&mut fourth, Duration::from_secs(5)));
    assert!(t0.elapsed() < Duration::from_secs(2), "refusal not prompt");
    server.wait_log("connections open, the server limit", Duration::from_secs(5));
    drop(held);
    // Slots come back once the server has seen the connections close.
    wait_until("qemu-io served", Duration::from_secs(30), || {
        qemu_io_read_within(&server.uri("vol0"), Duration::from_secs(10)).0
    });
}

/// With RLIMIT_NOFILE lowered under the server (prlimit), a flood from
/// eight addresses runs it out of descriptors: accept fails (EMFILE), backs
/// off, and once the handshake timeout drops the idle clients, qemu-io is
/// served. The server never stops accepting.
#[test]
fn accept_keeps_going_at_the_descriptor_limit() {
    let dir = scratch_dir("safety-nbd-emfile");
    let members = raid5_vol0(dir.path());
    let server = serve_members(&members, &["--nbd-handshake-timeout", "2s"]);
    let pid = server.pid();
    let limit = fd_count(pid) as u64 + 60;
    let lim = libc::rlimit {
        rlim_cur: limit,
        rlim_max: limit,
    };
    // SAFETY: prlimit(2) on our child with a valid new limit and no old one.
    let rc = unsafe {
        libc::prlimit(
            pid as libc::pid_t,
            libc::RLIMIT_NOFILE,
            &lim,
            std::ptr::null_mut(),
        )
    };
    assert_eq!(rc, 0, "prlimit: {}", std::io::Error::last_os_error());

    let _flood: Vec<TcpStream> = (2..10u8)
        .flat_map(|host| {
            let from = Ipv4Addr::new(127, 0, 0, host);
            (0..30).map(move |_| from)
        })
        .map(|from| connect_from(from, server.addr).expect("connect"))
        .collect();
    server.wait_log("NBD accept failed", Duration::from_secs(20));

    let (served, out) = qemu_io_read_within(&server.uri("vol0"), Duration::from_secs(60));
    assert!(served, "qemu-io not served at the descriptor limit:\n{out}");
}

/// `vraid serve` started with RLIMIT_NOFILE set to `nofile` (soft and
/// hard), its log in `log`; killed when dropped.
struct LimitedServer {
    child: std::process::Child,
    log: PathBuf,
    addr: SocketAddr,
}

impl LimitedServer {
    fn start(dir: &Path, nofile: u64, extra: &[&str], members: &[PathBuf]) -> LimitedServer {
        use std::os::unix::process::CommandExt;
        let addr: SocketAddr = format!("127.0.0.1:{}", raid_tests::free_port())
            .parse()
            .unwrap();
        let log = dir.join("serve.log");
        let mut cmd = Command::new(raid_tests::vraid_bin());
        cmd.arg("serve")
            .arg("--nbd")
            .arg(addr.to_string())
            .args(extra)
            .args(members)
            .env("RUST_LOG", "info")
            .env("VRAID_CONTROL", dir.join("control.sock"))
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap());
        let lim = libc::rlimit {
            rlim_cur: nofile,
            rlim_max: nofile,
        };
        // SAFETY: the closure runs in the forked child before exec and only
        // calls setrlimit(2), which is async-signal-safe.
        unsafe {
            cmd.pre_exec(move || {
                if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd.spawn().expect("spawn vraid serve");
        let server = LimitedServer { child, log, addr };
        server.wait_log("NBD server listening on TCP");
        server
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn wait_log(&self, needle: &str) -> String {
        let mut log = String::new();
        wait_until(needle, Duration::from_secs(30), || {
            log = self.log();
            log.contains(needle)
        });
        log
    }
}

impl Drop for LimitedServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Started under a low RLIMIT_NOFILE, the server lowers its connection
/// limit to fit (and says so): a flood larger than that limit is refused
/// promptly, accept never runs out of descriptors, and once the handshake
/// timeout has dropped the idle clients qemu-io is served.
#[test]
fn connection_limit_is_fitted_under_the_descriptor_limit() {
    let dir = scratch_dir("safety-nbd-fit-nofile");
    let members = raid5_vol0(dir.path());
    let server = LimitedServer::start(
        dir.path(),
        200,
        &["--nbd-handshake-timeout", "3s"],
        &members,
    );
    let log = server.wait_log("NBD connection limit lowered from 256 to ");
    let fitted: usize = log
        .split("NBD connection limit lowered from 256 to ")
        .nth(1)
        .and_then(|t| t.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .expect("fitted limit in the log");
    assert!(fitted < 200, "fitted limit {fitted}");

    let flood: Vec<TcpStream> = (2..10u8)
        .flat_map(|host| std::iter::repeat_n(Ipv4Addr::new(127, 0, 0, host), 25))
        .map(|from| connect_from(from, server.addr).expect("connect"))
        .collect();
    // Kept open until the end: a closed one would give its place back.
    let mut greeted = 0;
    let mut refused = 0;
    for s in &flood {
        let mut s = s;
        s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        let mut g = [0u8; 18];
        match s.read_exact(&mut g) {
            Ok(()) => greeted += 1,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                panic!("connection neither greeted nor refused within 2 s")
            }
            Err(_) => refused += 1,
        }
    }
    let quiet = |log: String| -> String {
        log.lines()
            .filter(|l| !l.contains("NBD client connected"))
            .collect::<Vec<_>>()
            .join("\n")
    };
    assert_eq!(
        greeted,
        fitted,
        "admitted: the fitted limit\n{}",
        quiet(server.log())
    );
    assert_eq!(refused, 200 - fitted);
    assert!(
        !server.log().contains("NBD accept failed"),
        "accept ran out of descriptors:\n{}",
        server.log()
    );
    let uri = format!("nbd://{}/vol0", server.addr);
    wait_until("qemu-io served", Duration::from_secs(60), || {
        qemu_io_read_within(&uri, Duration::from_secs(20)).0
    });
    drop(flood);
}
