//! Red team of session 12's fixes (`vraid fail` of a member being rebuilt,
//! reads of crash-dirty regions, the start-up join of absent remote
//! members) and of the NBD exports a client could exhaust: an idle client
//! after the handshake, and one reading its replies at a trickle.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use raid_tests::nbd_raw::{nbd_handshake, raid5_vol0, serve_members, wait_until};
use raid_tests::*;

// ---- RAID-6: two members rebuilt in one pass, the operator fails one

/// A RAID-6 `vol0` config over `members` with config `spares`, rebuilt at
/// `mbps` MB/s.
fn raid6_spares_config(dir: &Path, members: &[PathBuf], spares: &[PathBuf], mbps: u64) -> PathBuf {
    let quoted = |ps: &[PathBuf]| {
        ps.iter()
            .map(|p| format!("{:?}", p.display().to_string()))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let config = dir.join("vraid.toml");
    std::fs::write(
        &config,
        format!(
            "[[volume]]\nname = \"vol0\"\nlevel = 6\nchunk_size = \"64K\"\nmembers = [{}]\n\
             spares = [{}]\nwrite_hole_protection = false\nrebuild_max_mbps = {mbps}\n\
             create = {{ member_size = \"64M\" }}\n",
            quoted(members),
            quoted(spares)
        ),
    )
    .unwrap();
    config
}

/// A break found here: a RAID-6 rebuilding two members from two spares in
/// one pass, and the operator fails one of them (`vraid fail vol0 3`, a
/// slow or suspect new disk). The pass stopped and dropped *both* new
/// members (`abort_rebuild` of every role of the pass): the other, sound
/// one was thrown away, the spares list was empty by then, and the array
/// sat with two roles down and no redundancy. md restarts the recovery of
/// the spare left; now the other member goes on in a new pass from its
/// checkpoint and finishes, the failed one stays down.
#[test]
fn raid6_failing_one_of_two_members_rebuilt_together_keeps_the_other() {
    let dir = scratch_dir("rt13-r6-fail-one-of-two");
    let paths = sparse_members(dir.path(), 5, 64 << 20);
    create_array(6, "64K", "64M", "vol0", &paths);
    let ctl = dir.path().join("ctl.sock");
    let ctl_s = ctl.to_str().unwrap();
    let mut args = vec!["--control", ctl_s, "--no-journal"];
    args.extend(paths.iter().map(|p| p.to_str().unwrap()));
    let server = Server::start(&args);
    qemu_io(
        &server.uri("vol0"),
        &["write -P 9 0 24M".to_string(), "flush".into()],
    );
    assert_eq!(server.stop(), 0);
    for role in [1, 3] {
        std::fs::remove_file(&paths[role]).unwrap();
    }
    let spares: Vec<PathBuf> = (0..2)
        .map(|i| dir.path().join(format!("spare{i}.img")))
        .collect();
    let config = raid6_spares_config(dir.path(), &paths, &spares, 1);
    let server = Server::start(&["--config", config.to_str().unwrap(), "--control", ctl_s]);
    server.wait_log("rebuilding member 3 onto", Duration::from_secs(30));
    assert_eq!(
        member_states(&volume_status(&ctl, "vol0"))[1..4],
        ["rebuilding", "active", "rebuilding"]
    );

    // Act: fail one of the two, then lift the rate limit.
    let out = vraid_ctl(&ctl, &["fail", "vol0", "3"]);
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stderr),
        server.log()
    );
    vraid_ctl_ok(&ctl, &["set", "vol0", "--rebuild-max-mbps", "0"]);

    // Assert: member 1 finishes, member 3 stays down; the data reads.
    let log = server.wait_log("rebuild of member 1 finished", Duration::from_secs(60));
    let states = member_states(&volume_status(&ctl, "vol0"));
    assert_eq!(states[1], "active", "{states:?}\n{log}");
    assert_ne!(states[3], "active", "{states:?}\n{log}");
    assert_ne!(states[3], "rebuilding", "{states:?}\n{log}");
    qemu_io(&server.uri("vol0"), &["read -P 9 0 24M".to_string()]);
    assert_eq!(server.stop(), 0);
}

// ---- `vraid fail` of a member being rebuilt: twice, then a crash

/// Serves `members` as RAID-1 vol0 from a config with a 1 MB/s rebuild.
fn serve_raid1_slow(dir: &Path, members: &[&Path], ctl: &Path) -> Server {
    let config = dir.join("slow.toml");
    let list: Vec<String> = members.iter().map(|p| format!("{p:?}")).collect();
    std::fs::write(
        &config,
        format!(
            "[[volume]]\nname = \"vol0\"\nlevel = 1\nmembers = [{}]\nrebuild_max_mbps = 1\n",
            list.join(", ")
        ),
    )
    .unwrap();
    Server::start(&[
        "--config",
        config.to_str().unwrap(),
        "--control",
        ctl.to_str().unwrap(),
    ])
}

/// `vraid fail` of a member being rebuilt, again at once, then SIGKILL
/// right after the reply and a start with the dropped member given back
/// in its role: the abort was on disk when `fail` answered, so the role is
/// neither resumed onto the half-rebuilt member nor taken from it as good
/// data, and the data reads. (A guard: the window it closes is a few ms,
/// the superblock write after the pass let go.)
#[test]
fn fail_of_a_rebuilding_member_is_on_disk_when_it_answers() {
    let dir = scratch_dir("rt13-fail-durable");
    let paths = member_paths(dir.path(), 2);
    create_array(1, "64K", "48M", "vol0", &paths);
    let ctl = dir.path().join("ctl.sock");
    let server = serve_raid1_slow(dir.path(), &[&paths[0], &paths[1]], &ctl);
    qemu_io(
        &server.uri("vol0"),
        &["write -P 5 0 40M".to_string(), "flush".into()],
    );
    let new = dir.path().join("new.img");
    std::fs::File::create(&new)
        .unwrap()
        .set_len(64 << 20)
        .unwrap();
    fail_remove_add(&ctl, "1", &new);
    assert_eq!(member_states(&volume_status(&ctl, "vol0"))[1], "rebuilding");

    // Act: fail it twice, SIGKILL, start with the dropped member back.
    let first = vraid_ctl(&ctl, &["fail", "vol0", "1"]);
    let second = vraid_ctl(&ctl, &["fail", "vol0", "1"]);
    server.kill();
    let server = serve_raid1_slow(dir.path(), &[&paths[0], &new], &ctl);

    // Assert
    assert!(first.status.success(), "{first:?}");
    let second_err = String::from_utf8_lossy(&second.stderr);
    assert!(
        !second.status.success() && second_err.contains("already"),
        "{second_err}"
    );
    let status = volume_status(&ctl, "vol0");
    let state = &member_states(&status)[1];
    assert!(
        state != "active" && state != "rebuilding",
        "{status}\n{}",
        server.log()
    );
    qemu_io(&server.uri("vol0"), &["read -P 5 0 40M".to_string()]);
    assert_eq!(server.stop(), 0);
}

/// `vraid fail` of a member part-way through its rebuild, a write over
/// the part it had already copied, then `vraid add` of the same member at
/// once: the new pass must not trust what the dropped pass copied (the
/// write never reached it). After the rebuild, member 0 is failed so every
/// read comes from the re-added member alone.
#[test]
fn fail_then_add_again_rebuilds_what_the_dropped_pass_had_copied() {
    let dir = scratch_dir("rt13-fail-readd");
    let paths = member_paths(dir.path(), 2);
    create_array(1, "64K", "48M", "vol0", &paths);
    let ctl = dir.path().join("ctl.sock");
    let server = serve_raid1_slow(dir.path(), &[&paths[0], &paths[1]], &ctl);
    let uri = server.uri("vol0");
    qemu_io(&uri, &["write -P 5 0 40M".to_string(), "flush".into()]);
    let new = dir.path().join("new.img");
    std::fs::File::create(&new)
        .unwrap()
        .set_len(64 << 20)
        .unwrap();
    fail_remove_add(&ctl, "1", &new);
    wait_until("rebuild progress", Duration::from_secs(60), || {
        volume_status(&ctl, "vol0")["sync"]["done_bytes"]
            .as_u64()
            .unwrap_or(0)
            >= 2 << 20
    });

    // Act: fail, overwrite the start, add the same file back at once.
    vraid_ctl_ok(&ctl, &["fail", "vol0", "1"]);
    qemu_io(&uri, &["write -P 6 0 1M".to_string(), "flush".into()]);
    vraid_ctl_ok(&ctl, &["add", "vol0", new.to_str().unwrap(), "--force"]);
    vraid_ctl_ok(&ctl, &["set", "vol0", "--rebuild-max-mbps", "0"]);
    wait_until("rebuild", Duration::from_secs(120), || {
        member_states(&volume_status(&ctl, "vol0"))[1] == "active"
    });
    vraid_ctl_ok(&ctl, &["fail", "vol0", "0"]);

    // Assert: the re-added member alone serves the new and the old data.
    qemu_io(
        &uri,
        &["read -P 6 0 1M".to_string(), "read -P 5 1M 39M".to_string()],
    );
    assert_eq!(server.stop(), 0);
}

// ---- start-up join of an absent remote member

/// nbdkit serving `file` on 127.0.0.1:`port` until killed.
fn nbdkit_file(port: u16, file: &Path) -> std::process::Child {
    let child = std::process::Command::new("nbdkit")
        .args(["-f", "-i", "127.0.0.1", "-p", &port.to_string(), "file"])
        .arg(file)
        .stdin(std::process::Stdio::null())
        .spawn()
        .expect("nbdkit");
    wait_until("nbdkit", Duration::from_secs(10), || {
        TcpStream::connect(("127.0.0.1", port)).is_ok()
    });
    child
}

/// The arrangement of the start-up join tests: a RAID-1 `vol0` of a local
/// file and an nbdkit-served remote file, 8 MiB of pattern 4 written and
/// flushed, vraid stopped and the remote's server killed (down).
struct JoinSetup {
    dir: tempfile::TempDir,
    local: PathBuf,
    remote: PathBuf,
    port: u16,
    uri: String,
    ctl: PathBuf,
}

impl JoinSetup {
    fn new(name: &str) -> JoinSetup {
        let dir = scratch_dir(name);
        let local = dir.path().join("local.img");
        let remote = dir.path().join("remote.img");
        std::fs::File::create(&remote)
            .unwrap()
            .set_len(64 << 20)
            .unwrap();
        let port = free_port();
        let mut kit = nbdkit_file(port, &remote);
        let uri = format!("nbd://127.0.0.1:{port}/");
        create_array(
            1,
            "64K",
            "48M",
            "vol0",
            &[local.clone(), PathBuf::from(&uri)],
        );
        let ctl = dir.path().join("ctl.sock");
        let setup = JoinSetup {
            dir,
            local,
            remote,
            port,
            uri,
            ctl,
        };
        let server = setup.serve(&setup.uri);
        qemu_io(
            &server.uri("vol0"),
            &["write -P 4 0 8M".to_string(), "flush".into()],
        );
        assert_eq!(server.stop(), 0);
        kit.kill().unwrap();
        kit.wait().unwrap();
        setup
    }

    /// vol0 served from the local file and the remote under `uri`.
    fn serve(&self, uri: &str) -> Server {
        Server::start(&[
            self.local.to_str().unwrap(),
            uri,
            "--control",
            self.ctl.to_str().unwrap(),
        ])
    }
}

/// A RAID-1 of a local file and a remote member, started while the remote
/// is down (absent at start-up: joined when it answers). Its server comes
/// back serving a member of *another* array. The join must not wipe and
/// rebuild over it: that member's superblock and data stay, vol0 stays
/// degraded and serves its data. (Session 14:) the join is given up at
/// once — logged once, not retried every 10 s forever — with the reason
/// in `status` while the role is down, and `vraid add` of another remote
/// still brings a member into the role.
#[test]
fn startup_join_leaves_another_arrays_member_at_the_url_untouched() {
    let t = JoinSetup::new("rt13-join-foreign");
    let other = member_paths(&t.dir.path().join("b"), 2);
    create_array(1, "64K", "48M", "other", &other);
    let before = (examine(&other[1]), peek(&other[1], 1 << 20, 1 << 20));

    // Act: vol0 starts without its remote; the URL then serves other's
    // member 1.
    let server = t.serve(&t.uri);
    let _kit = KillOnDrop(nbdkit_file(t.port, &other[1]));
    let gave_up = format!("vol0: join of {} given up", t.uri);
    let log = server.wait_log(&gave_up, Duration::from_secs(60));
    let refused = volume_status(&t.ctl, "vol0");
    let text = vraid_ctl_ok(&t.ctl, &["status"]);
    let after = (examine(&other[1]), peek(&other[1], 1 << 20, 1 << 20));
    qemu_io(&server.uri("vol0"), &["read -P 4 0 8M".to_string()]);
    // The operator adds a blank remote instead.
    let blank = t.dir.path().join("blank.img");
    std::fs::File::create(&blank)
        .unwrap()
        .set_len(64 << 20)
        .unwrap();
    let port = free_port();
    let _blank_kit = KillOnDrop(nbdkit_file(port, &blank));
    let blank_uri = format!("nbd://127.0.0.1:{port}/");
    vraid_ctl_ok(&t.ctl, &["add", "vol0", &blank_uri]);
    wait_until("member 1 active", Duration::from_secs(90), || {
        member_states(&volume_status(&t.ctl, "vol0"))[1] == "active"
    });
    let added = volume_status(&t.ctl, "vol0");
    vraid_ctl_ok(&t.ctl, &["fail", "vol0", "0"]);
    qemu_io(&server.uri("vol0"), &["read -P 4 0 8M".to_string()]);
    let end_log = server.log();
    assert_eq!(server.stop(), 0);

    // Assert
    assert!(log.contains("another array"), "{log}");
    assert_eq!(member_states(&refused)[1..], ["missing"], "{log}");
    let why = refused["members"][1]["join_refused"].as_str().unwrap_or("");
    assert!(why.contains("another array"), "{refused}");
    assert!(text.contains("join given up"), "{text}");
    assert!(before == after, "another array's member changed\n{log}");
    assert!(added["members"][1]["join_refused"].is_null(), "{added}");
    let tries = end_log.matches(&format!("vol0: join of {}", t.uri)).count();
    assert_eq!(tries, 1, "one try, given up:\n{end_log}");
}

/// The same start-up join when the remote member is given under another
/// spelling of its URL (`localhost` for `127.0.0.1`) and its server comes
/// back with the right member: its own superblock names role 1, it joins
/// there (and nowhere else), catches up and serves the data alone.
#[test]
fn startup_join_finds_its_role_under_another_spelling_of_the_url() {
    let t = JoinSetup::new("rt13-join-spelling");

    // Act: start with the other spelling while it is down; it comes back.
    let other = format!("nbd://localhost:{}/", t.port);
    let server = t.serve(&other);
    qemu_io(
        &server.uri("vol0"),
        &["write -P 8 0 1M".to_string(), "flush".into()],
    );
    let _kit = KillOnDrop(nbdkit_file(t.port, &t.remote));
    wait_until("member 1 active", Duration::from_secs(90), || {
        member_states(&volume_status(&t.ctl, "vol0"))[1] == "active"
    });
    vraid_ctl_ok(&t.ctl, &["fail", "vol0", "0"]);

    // Assert: the remote alone serves the old and the new data.
    qemu_io(
        &server.uri("vol0"),
        &["read -P 8 0 1M".to_string(), "read -P 4 1M 7M".to_string()],
    );
    assert_eq!(server.stop(), 0);
}

struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

// ---- NBD: idle clients and clients reading their replies at a trickle

const READ: u16 = 0;

fn request(cmd: u16, cookie: u64, offset: u64, len: u32) -> Vec<u8> {
    let mut out = Vec::with_capacity(28);
    out.extend_from_slice(&0x2560_9513u32.to_be_bytes());
    out.extend_from_slice(&0u16.to_be_bytes());
    out.extend_from_slice(&cmd.to_be_bytes());
    out.extend_from_slice(&cookie.to_be_bytes());
    out.extend_from_slice(&offset.to_be_bytes());
    out.extend_from_slice(&len.to_be_bytes());
    out
}

fn connect(server: &Server) -> TcpStream {
    let mut s = TcpStream::connect(server.addr).unwrap();
    s.set_nodelay(true).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    nbd_handshake(&mut s, "vol0");
    s
}

/// Reads what `s` sends, 16 KiB per 10 ms, until the server closes it;
/// returns the bytes read, `None` if it was not closed within `limit`.
fn trickle_until_closed(mut s: TcpStream, limit: Duration) -> Option<u64> {
    let deadline = Instant::now() + limit;
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut buf = vec![0u8; 16 << 10];
    let mut got = 0u64;
    while Instant::now() < deadline {
        match s.read(&mut buf) {
            Ok(0) => return Some(got),
            Ok(n) => got += n as u64,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return Some(got),
            Err(_) => return None,
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    None
}

/// A qemu-io run of `rounds` 1 MiB pattern writes read back at once.
fn qemu_io_rounds(uri: &str, rounds: u64) -> (bool, String) {
    let cmds: Vec<String> = (0..rounds)
        .flat_map(|i| {
            let p = i % 200 + 1;
            [
                format!("write -P {p} {} 1M", (i % 96) << 20),
                format!("read -P {p} {} 1M", (i % 96) << 20),
            ]
        })
        .collect();
    qemu_io_try(uri, &cmds)
}

/// The known gaps (STATUS "NBD:"): a client that finished the handshake
/// and then does nothing held its connection (and its place under the
/// limits) forever, and one that pipelined 32 MiB of READs and read the
/// replies at ~1.6 MB/s (each 64 KiB reply leaving within the write
/// timeout, so the progress-based check never fired) kept its pool. Now
/// `--nbd-idle-timeout` closes the first, `--nbd-min-drain-rate` the
/// second (counted in status and metrics, logged), while qemu-io and
/// nbdinfo on the same export are served throughout.
#[test]
fn idle_and_trickling_nbd_clients_are_dropped_real_clients_served() {
    let dir = scratch_dir("rt13-nbd-exhaust");
    let members = raid5_vol0(dir.path());
    let ctl = dir.path().join("ctl.sock");
    let metrics = format!("127.0.0.1:{}", free_port());
    let server = serve_members(
        &members,
        &[
            "--control",
            ctl.to_str().unwrap(),
            "--metrics",
            &metrics,
            "--nbd-idle-timeout",
            "2s",
            "--nbd-write-timeout",
            "2s",
            "--nbd-min-drain-rate",
            "8M",
        ],
    );
    let uri = server.uri("vol0");
    let mut idle = connect(&server);
    let mut slow = connect(&server);
    for cookie in 0..512 {
        slow.write_all(&request(READ, cookie, cookie % 64 * (64 << 10), 64 << 10))
            .unwrap();
    }
    let trickler = std::thread::spawn(move || trickle_until_closed(slow, Duration::from_secs(60)));

    // Act: a real client works meanwhile, and again after.
    let (ok, out) = qemu_io_rounds(&uri, 150);
    assert!(ok, "{out}\n{}", server.log());
    let read = trickler.join().unwrap();
    let mut b = [0u8; 1];
    idle.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let idle_end = idle.read(&mut b);
    let (ok, out) = qemu_io_rounds(&uri, 20);
    assert!(ok, "{out}");
    let info = run_ok(std::process::Command::new("nbdinfo").args(["--size", &uri]));

    // Assert: both hostile clients dropped, each counted and logged.
    let size: u64 = info.trim().parse().unwrap_or(0);
    assert!(size > 180 << 20, "nbdinfo: {info}");
    assert!(read.is_some_and(|n| n < 32 << 20), "trickler: {read:?}");
    assert!(matches!(idle_end, Ok(0) | Err(_)), "{idle_end:?}");
    let dropped = status_json(&ctl)["nbd_dropped"].clone();
    let counts: HashMap<&str, u64> = ["idle", "slow_drain", "stalled_reply"]
        .into_iter()
        .map(|k| (k, dropped[k].as_u64().unwrap_or(0)))
        .collect();
    assert!(
        counts["idle"] >= 1 && counts["slow_drain"] == 1,
        "{dropped}"
    );
    assert_eq!(counts["stalled_reply"], 0, "{dropped}");
    let text = scrape(&metrics);
    assert!(
        text.contains("vraid_nbd_connections_dropped_total{reason=\"slow_drain\"} 1"),
        "{text}"
    );
    let log = server.log();
    assert!(log.contains("under the minimum"), "{log}");
    assert!(log.contains("idle for"), "{log}");
    assert_eq!(server.stop(), 0);
}

/// A client that keeps reading at full speed but always has replies
/// pending (64 pipelined 1 MiB READs, again and again for 3 write-timeout
/// windows) is never taken for a trickler, and the idle timeout does not
/// touch it between its batches.
#[test]
fn a_busy_fast_nbd_reader_is_not_dropped() {
    let dir = scratch_dir("rt13-nbd-fast");
    let members = raid5_vol0(dir.path());
    let ctl = dir.path().join("ctl.sock");
    let server = serve_members(
        &members,
        &[
            "--control",
            ctl.to_str().unwrap(),
            "--nbd-idle-timeout",
            "1s",
            "--nbd-write-timeout",
            "1s",
            "--nbd-min-drain-rate",
            "4M",
        ],
    );
    let mut s = connect(&server);
    let t0 = Instant::now();
    let mut cookie = 0u64;
    while t0.elapsed() < Duration::from_secs(3) {
        for i in 0..64u64 {
            s.write_all(&request(READ, cookie + i, i << 20, 1 << 20))
                .unwrap();
        }
        let mut head = [0u8; 16];
        let mut data = vec![0u8; 1 << 20];
        for _ in 0..64 {
            s.read_exact(&mut head).expect("reply while busy");
            assert_eq!(u32::from_be_bytes(head[4..8].try_into().unwrap()), 0);
            s.read_exact(&mut data).unwrap();
        }
        cookie += 64;
        std::thread::sleep(Duration::from_millis(300));
    }

    wait_until("status", Duration::from_secs(5), || {
        status_json(&ctl)["volumes"].is_array()
    });
    assert!(
        status_json(&ctl)["nbd_dropped"].is_null(),
        "{}",
        server.log()
    );
    assert_eq!(server.stop(), 0);
}
