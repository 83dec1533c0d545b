//! Network mirrors (issue 13): RAID-1 and RAID-5 arrays with members served
//! by nbdkit in network namespaces the tests make (veth pairs). Links cut
//! for longer than `member_timeout` and servers SIGKILLed under fio verify:
//! no client error, the member fails, then re-joins by itself
//! (`auto_rejoin`, no `vraid add`) copying only the dirty regions, and the
//! mirrors end byte for byte equal. nbdkit's delay filter makes a slow
//! member: `--write-mostly` keeps reads off it, `--write-behind`
//! acknowledges writes before it has them, and FLUSH waits for it.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use raid_tests::netns::Netns;
use raid_tests::*;

/// Data area of every member: one 64 MiB bitmap region is a quarter.
const MEMBER: &str = "256M";
/// Size of the files the remote servers export.
const REMOTE_FILE: u64 = 384 << 20;

fn wait_until(secs: u64, what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !cond() {
        assert!(Instant::now() < deadline, "{what} not within {secs} s");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A sparse file of `REMOTE_FILE` bytes.
fn remote_file(dir: &Path, name: &str) -> PathBuf {
    let f = dir.join(name);
    std::fs::File::create(&f)
        .unwrap()
        .set_len(REMOTE_FILE)
        .unwrap();
    f
}

/// `vraid serve MEMBERS --control CONTROL EXTRA...` with `member_timeout`.
fn serve(members: &[&str], control: &Path, timeout: &str, extra: &[&str]) -> Server {
    let mut args: Vec<&str> = members.to_vec();
    let control = control.to_str().unwrap();
    args.extend(["--control", control]);
    args.extend(extra);
    Server::start_with_env(&args, &[("VRAID_MEMBER_TIMEOUT", timeout)])
}

/// The number after `prefix` in the first log line holding it.
fn logged_number(log: &str, prefix: &str) -> u64 {
    let at = log.find(prefix).unwrap() + prefix.len();
    log[at..]
        .chars()
        .take_while(char::is_ascii_digit)
        .collect::<String>()
        .parse()
        .unwrap()
}

/// Bytes allocated to `file` on disk.
fn allocated(file: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(file).unwrap().blocks() * 512
}

fn state_of(control: &Path, role: usize) -> String {
    member_states(&volume_status(control, "vol0"))[role].clone()
}

/// The kinds of the volume's status events.
fn event_kinds(control: &Path) -> Vec<String> {
    let status = status_json(control);
    let events = status["events"].as_array().cloned().unwrap_or_default();
    events
        .iter()
        .filter_map(|e| e["kind"].as_str().map(str::to_string))
        .collect()
}

/// Waits for the automatic re-join of `role` to finish; returns the
/// bytes its recovery copied.
fn wait_rejoined(server: &Server, control: &Path, role: usize) -> u64 {
    let done = format!("recovery of member {role} finished");
    let log = server.wait_log(&done, Duration::from_secs(180));
    wait_until(60, "the member active again", || {
        state_of(control, role) == "active"
    });
    assert!(log.contains("catching up"), "not a bitmap re-add:\n{log}");
    assert!(
        event_kinds(control).iter().any(|k| k == "member_rejoined"),
        "no member_rejoined event"
    );
    logged_number(&log, &format!("{done}: copied "))
}

/// A RAID-1 of a local file and nbdkit (file plugin) in a namespace,
/// created and started once so the bitmap is kept.
struct Mirror {
    dir: tempfile::TempDir,
    local: PathBuf,
    file: PathBuf,
    ns: Netns,
    uri: String,
    control: PathBuf,
    /// The remote is role 0 (the local file role 1).
    remote_first: bool,
}

const PORT: u16 = 10809;

impl Mirror {
    /// `tag`: the namespace number, one per test (they run in parallel).
    fn new(test: &str, tag: u32) -> Mirror {
        Mirror::ordered(test, tag, false)
    }

    /// With `remote_first`, the remote member is role 0: the first copy
    /// a resync would take without a policy.
    fn ordered(test: &str, tag: u32, remote_first: bool) -> Mirror {
        let dir = scratch_dir(test);
        let local = dir.path().join("local.img");
        let file = remote_file(dir.path(), "remote.img");
        let mut ns = Netns::new(tag);
        ns.nbdkit(PORT, &["file", file.to_str().unwrap()]);
        let uri = ns.uri(PORT);
        let mut members = vec![local.clone(), PathBuf::from(&uri)];
        if remote_first {
            members.reverse();
        }
        create_array(1, "64K", MEMBER, "vol0", &members);
        let control = dir.path().join("ctl.sock");
        let m = Mirror {
            dir,
            local,
            file,
            ns,
            uri,
            control,
            remote_first,
        };
        assert_eq!(m.serve(&[]).stop(), 0);
        m
    }

    /// Served with a `member_timeout` of 2 s.
    fn serve(&self, extra: &[&str]) -> Server {
        self.serve_with("2s", extra)
    }

    fn serve_with(&self, timeout: &str, extra: &[&str]) -> Server {
        let mut members = [self.local.to_str().unwrap(), self.uri.as_str()];
        if self.remote_first {
            members.reverse();
        }
        serve(&members, &self.control, timeout, extra)
    }
}

#[test]
fn raid1_local_and_remote_pass_fio_verify_and_rejoin_by_themselves_after_a_cut() {
    // Arrange
    let m = Mirror::new("mirror-cut", 0);
    let server = m.serve(&[]);
    assert_fio_clean(
        fio_verify_cmd(&server.uri("vol0"), "whole", "16M", "0")
            .stdout(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let before = allocated(&m.file);

    // Act: the link goes down under fio for longer than member_timeout,
    // then up again; nobody runs `vraid add`.
    let fio = fio_verify_cmd(&server.uri("vol0"), "cut", "24M", "0")
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    wait_until(60, "writes reaching the remote", || {
        allocated(&m.file) > before + (1 << 20)
    });
    m.ns.link(false);
    wait_until(60, "the remote member failed", || {
        state_of(&m.control, 1) == "failed"
    });
    assert_fio_clean(fio);
    m.ns.link(true);
    let copied = wait_rejoined(&server, &m.control, 1);

    // Assert: one dirty 64 MiB region copied at most, mirrors equal.
    assert!(copied > 0 && copied <= 64 << 20, "copied {copied}");
    assert_eq!(server.stop(), 0);
    assert!(
        member_data(&m.local) == member_data(&m.file),
        "mirrors differ"
    );
}

#[test]
fn a_sigkilled_remote_server_restarted_rejoins_by_itself() {
    // Arrange
    let mut m = Mirror::new("mirror-kill", 3);
    let server = m.serve(&[]);
    let before = allocated(&m.file);

    // Act: SIGKILL nbdkit under fio, start it again.
    let fio = fio_verify_cmd(&server.uri("vol0"), "kill", "24M", "0")
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    wait_until(60, "writes reaching the remote", || {
        allocated(&m.file) > before + (1 << 20)
    });
    m.ns.kill(PORT);
    assert_fio_clean(fio);
    wait_until(60, "the remote member failed", || {
        state_of(&m.control, 1) == "failed"
    });
    m.ns.restart(PORT);
    let copied = wait_rejoined(&server, &m.control, 1);

    // Assert
    assert!(copied > 0 && copied <= 64 << 20, "copied {copied}");
    assert_eq!(server.stop(), 0);
    assert!(
        member_data(&m.local) == member_data(&m.file),
        "mirrors differ"
    );
    drop(m.dir);
}

#[test]
fn raid5_with_two_remote_members_survives_one_cut_and_serves_from_the_rejoined_one() {
    // Arrange: a RAID-5 of a local file and two nbdkit servers, each in its
    // own namespace.
    let dir = scratch_dir("raid5-remote");
    let local = dir.path().join("local.img");
    let files = [
        remote_file(dir.path(), "r1.img"),
        remote_file(dir.path(), "r2.img"),
    ];
    let mut nss = [Netns::new(1), Netns::new(2)];
    for (ns, f) in nss.iter_mut().zip(&files) {
        ns.nbdkit(PORT, &["file", f.to_str().unwrap()]);
    }
    let uris = [nss[0].uri(PORT), nss[1].uri(PORT)];
    let members = [local.to_str().unwrap(), &uris[0], &uris[1]];
    let paths: Vec<PathBuf> = members.iter().map(PathBuf::from).collect();
    create_array(5, "64K", MEMBER, "vol0", &paths);
    let control = dir.path().join("ctl.sock");
    assert_eq!(serve(&members, &control, "2s", &[]).stop(), 0);
    let server = serve(&members, &control, "2s", &[]);
    let before = allocated(&files[1]);

    // Act: cut the second remote under fio; it re-joins once the link is up.
    let fio = fio_verify_cmd(&server.uri("vol0"), "r5", "24M", "0")
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    wait_until(60, "writes reaching the remote", || {
        allocated(&files[1]) > before + (1 << 20)
    });
    nss[1].link(false);
    wait_until(60, "the cut member failed", || {
        state_of(&control, 2) == "failed"
    });
    // Nothing given up stays queued toward it: the kernel would send it
    // once the link is back, after the catch-up (stale parity).
    wait_until(10, "no request queued toward the cut remote", || {
        queued_toward(&uris[1]) < 1024
    });
    assert_fio_clean(fio);
    nss[1].link(true);
    let copied = wait_rejoined(&server, &control, 2);

    // Assert: a catch-up of dirty regions only; with the local member
    // failed, the data fio wrote is rebuilt from the two remotes.
    assert!(copied > 0 && copied <= 64 << 20, "copied {copied}");
    vraid_ctl_ok(&control, &["fail", "vol0", "0"]);
    let mut check = fio_verify_cmd(&server.uri("vol0"), "r5", "24M", "0");
    check.arg("--verify_only");
    assert_fio_clean(check.stdout(Stdio::piped()).spawn().unwrap());
    assert_eq!(server.stop(), 0);
}

/// The most bytes any TCP socket of this namespace holds unacknowledged
/// toward the server of `uri` (`nbd://A.B.C.D:PORT/`), from
/// `/proc/net/tcp`: a connection given up (even closed, still trying)
/// counts too.
fn queued_toward(uri: &str) -> u64 {
    let hostport = uri.trim_start_matches("nbd://").trim_end_matches('/');
    let (host, port) = hostport.split_once(':').unwrap();
    let ip: std::net::Ipv4Addr = host.parse().unwrap();
    let port: u16 = port.parse().unwrap();
    let want = format!("{:08X}:{port:04X}", u32::from_le_bytes(ip.octets()));
    let table = std::fs::read_to_string("/proc/net/tcp").unwrap();
    table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            let tx = f.get(4)?.split(':').next()?;
            (f.get(2)? == &want).then(|| u64::from_str_radix(tx, 16).unwrap())
        })
        .max()
        .unwrap_or(0)
}

/// A plain NBD client (simple replies) on the export `vol0` of `server`:
/// each call waits for its reply; nothing is flushed unless asked.
struct Client(TcpStream);

impl Client {
    fn new(server: &Server) -> Client {
        let mut s = TcpStream::connect(server.addr).unwrap();
        nbd_raw::nbd_handshake(&mut s, "vol0");
        Client(s)
    }

    /// One request (type 1 WRITE, 3 FLUSH); asserts a reply without error.
    fn call(&mut self, kind: u16, offset: u64, payload: &[u8]) {
        let mut req = 0x2560_9513u32.to_be_bytes().to_vec();
        req.extend_from_slice(&0u16.to_be_bytes());
        req.extend_from_slice(&kind.to_be_bytes());
        req.extend_from_slice(&7u64.to_be_bytes());
        req.extend_from_slice(&offset.to_be_bytes());
        req.extend_from_slice(&(payload.len() as u32).to_be_bytes());
        req.extend_from_slice(payload);
        self.0.write_all(&req).unwrap();
        let mut reply = [0u8; 16];
        self.0.read_exact(&mut reply).unwrap();
        assert_eq!(reply[..4], 0x6744_6698u32.to_be_bytes());
        assert_eq!(reply[4..8], [0, 0, 0, 0], "NBD error reply");
    }

    fn write(&mut self, offset: u64, payload: &[u8]) {
        self.call(1, offset, payload);
    }

    fn flush(&mut self) {
        self.call(3, 0, &[]);
    }
}

/// The write-behind entry of member `role` in the status.
fn behind(control: &Path, role: usize) -> serde_json::Value {
    volume_status(control, "vol0")["members"][role]["behind"].clone()
}

#[test]
fn write_mostly_keeps_reads_off_a_slow_member_and_write_behind_acks_before_it() {
    // Arrange: the remote made slow by nbdkit's delay filter (2 s a
    // write, 200 ms a read), write-mostly and write-behind.
    let mut m = Mirror::new("mirror-slow", 4);
    let file = m.file.to_str().unwrap().to_string();
    m.ns.replace(
        PORT,
        &["--filter=delay", "file", &file, "rdelay=200ms", "wdelay=2"],
    );
    // A request may take 2 s: member_timeout 20 s (request timeout 10 s).
    let server = m.serve_with("20s", &["--write-mostly", "1", "--write-behind", "8M"]);
    let uri = server.uri("vol0");
    let reads_of = |role: usize| {
        volume_status(&m.control, "vol0")["members"][role]["io"]["reads"]
            .as_u64()
            .unwrap()
    };
    let remote_reads = reads_of(1);

    // Act 1: 64 reads.
    let cmds: Vec<String> = (0..64).map(|i| format!("read {} 4k", i * 65536)).collect();
    qemu_io(&uri, &cmds);

    // Assert 1: none went to the slow member.
    assert_eq!(reads_of(1), remote_reads);
    assert!(reads_of(0) >= 64);
    assert_eq!(
        volume_status(&m.control, "vol0")["members"][1]["write_mostly"],
        true
    );

    // Act 2: a write without FLUSH; the remote takes 2 s per write.
    let mut client = Client::new(&server);
    client.write(1 << 20, &[0x5a; 4096]);

    // Assert 2: acknowledged while the remote lacks it, the lag shown.
    let b = behind(&m.control, 1);
    assert!(b["lag_requests"].as_u64().unwrap() >= 1, "{b}");
    assert!(b["lag_bytes"].as_u64().unwrap() >= 4096, "{b}");
    assert_eq!(b["max_bytes"], 8 << 20);

    // Act 3: FLUSH.
    client.flush();

    // Assert 3: it waited for the remote, which holds the write now.
    assert_eq!(behind(&m.control, 1)["lag_requests"], 0);
    let data_offset = examine(&m.local)["data_offset"].as_u64().unwrap();
    assert_eq!(
        peek(&m.file, data_offset + (1 << 20), 4096),
        vec![0x5a; 4096]
    );
    assert_eq!(server.stop(), 0);
    assert!(
        member_data(&m.local) == member_data(&m.file),
        "mirrors differ"
    );
}

#[test]
fn sigkill_while_write_behind_lags_loses_no_flushed_write_and_resyncs_the_lag() {
    // Arrange: a slow write-behind remote (2 s a write).
    let mut m = Mirror::new("behind-crash", 5);
    let file = m.file.to_str().unwrap().to_string();
    m.ns.replace(PORT, &["--filter=delay", "file", &file, "wdelay=2"]);
    let flags = ["--write-mostly", "1", "--write-behind", "8M"];
    let server = m.serve_with("20s", &flags);
    let data_offset = examine(&m.local)["data_offset"].as_u64().unwrap();

    // Act: a flushed write, then unflushed ones still lagging when
    // vraid is SIGKILLed.
    let mut client = Client::new(&server);
    client.write(0, &[0x11; 65536]);
    client.flush();
    for i in 0..4u64 {
        client.write((8 << 20) + i * 4096, &[0x22; 4096]);
    }
    assert!(behind(&m.control, 1)["lag_requests"].as_u64().unwrap() >= 1);
    server.kill();
    let lagging = peek(&m.file, data_offset + (8 << 20), 4096);
    assert_ne!(lagging, vec![0x22; 4096], "the remote was not lagging");
    m.ns.replace(PORT, &["file", &file]);
    let server = m.serve_with("20s", &flags);

    // Assert: the flushed write on both members, the lag resynced from
    // the bitmap (dirty regions only), mirrors equal.
    let log = server.wait_log("resync finished", Duration::from_secs(120));
    let dirty = logged_number(&log, "vol0: resyncing ");
    let rewrote = logged_number(&log, "rewrote ");
    assert!(dirty > 0 && dirty <= 64 << 20, "dirty {dirty}:\n{log}");
    assert!(rewrote > 0, "nothing copied to the lagging member:\n{log}");
    assert_eq!(peek(&m.file, data_offset, 65536), vec![0x11; 65536]);
    assert_eq!(peek(&m.local, data_offset, 65536), vec![0x11; 65536]);
    assert_eq!(server.stop(), 0);
    assert_eq!(
        peek(&m.file, data_offset + (8 << 20), 4096),
        vec![0x22; 4096]
    );
    assert!(
        member_data(&m.local) == member_data(&m.file),
        "mirrors differ"
    );
}

#[test]
fn redteam_a_cut_during_the_rejoin_recovery_is_resumed_from_the_bitmap() {
    // Arrange: the last region written in an earlier run (clean shutdown:
    // no bit set, but in the written-region map), then a
    // failed-then-rejoining remote whose recovery is slowed to 4 MB/s, so
    // the link can be cut while it runs.
    let m = Mirror::new("rejoin-cut", 6);
    let early = m.serve(&[]);
    assert_fio_clean(
        fio_verify_cmd(&early.uri("vol0"), "early", "4M", "192M")
            .stdout(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    assert_eq!(early.stop(), 0);
    let server = m.serve(&[]);
    let before = allocated(&m.file);
    let fio = fio_verify_cmd(&server.uri("vol0"), "first", "24M", "0")
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    wait_until(60, "writes reaching the remote", || {
        allocated(&m.file) > before + (1 << 20)
    });
    m.ns.link(false);
    wait_until(60, "the remote member failed", || {
        state_of(&m.control, 1) == "failed"
    });
    assert_fio_clean(fio);
    vraid_ctl_ok(&m.control, &["set", "vol0", "--rebuild-max-mbps", "4"]);
    m.ns.link(true);
    server.wait_log("catching up", Duration::from_secs(60));

    // Act: cut again while the recovery copies; more writes meanwhile.
    m.ns.link(false);
    assert_fio_clean(
        fio_verify_cmd(&server.uri("vol0"), "second", "8M", "64M")
            .stdout(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    wait_until(60, "the recovery abandoned", || {
        state_of(&m.control, 1) == "failed"
    });
    vraid_ctl_ok(&m.control, &["set", "vol0", "--rebuild-max-mbps", "0"]);
    m.ns.link(true);
    // The second re-join catches up from the bitmap again: the regions
    // the two fio runs wrote (0 and 1, 64 MiB each), not region 3, which
    // was in sync before the first cut (a rebuild of the written regions
    // would copy it too: 192 MiB).
    let copied = wait_rejoined(&server, &m.control, 1);
    assert!(
        copied > 0 && copied <= 128 << 20,
        "the second re-join copied {copied} bytes"
    );
    assert!(
        !server.log().contains("rebuild of member 1 finished"),
        "rebuilt whole"
    );
    let rejoins = event_kinds(&m.control)
        .iter()
        .filter(|k| *k == "member_rejoined")
        .count();
    assert!(rejoins >= 2, "{rejoins} re-joins");

    // Assert: whatever was interrupted, the mirrors agree in the end.
    assert_eq!(server.stop(), 0);
    assert!(
        member_data(&m.local) == member_data(&m.file),
        "mirrors differ"
    );
}

#[test]
fn redteam_a_write_behind_member_cut_while_lagging_fails_rejoins_and_catches_up() {
    // Arrange: write-behind over a remote slowed to 50 ms a write, so it
    // lags under fio when the link goes down.
    let mut m = Mirror::new("behind-cut", 7);
    let file = m.file.to_str().unwrap().to_string();
    m.ns.replace(PORT, &["--filter=delay", "file", &file, "wdelay=50ms"]);
    let server = m.serve(&["--write-mostly", "1", "--write-behind", "4M"]);

    // Act
    let fio = fio_verify_cmd(&server.uri("vol0"), "lag", "24M", "0")
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    wait_until(60, "the remote lagging", || {
        behind(&m.control, 1)["lag_requests"].as_u64().unwrap_or(0) > 0
    });
    m.ns.link(false);
    wait_until(60, "the remote member failed", || {
        state_of(&m.control, 1) == "failed"
    });
    assert_fio_clean(fio);
    m.ns.link(true);
    let copied = wait_rejoined(&server, &m.control, 1);

    // Assert: the lagging writes came back from the bitmap; FLUSH-level
    // agreement after a clean stop.
    assert!(copied > 0 && copied <= 64 << 20, "copied {copied}");
    assert_eq!(server.stop(), 0);
    assert!(
        member_data(&m.local) == member_data(&m.file),
        "mirrors differ"
    );
}

#[test]
fn a_remote_member_unreachable_at_start_up_joins_by_itself_when_it_answers() {
    // Arrange: a whole mirror stopped cleanly, its remote link cut before
    // the next start.
    let m = Mirror::new("mirror-absent", 8);
    m.ns.link(false);
    let server = m.serve(&[]);
    server.wait_log("is unreachable", Duration::from_secs(30));
    assert_ne!(state_of(&m.control, 1), "active");
    assert_fio_clean(
        fio_verify_cmd(&server.uri("vol0"), "absent", "16M", "0")
            .stdout(Stdio::piped())
            .spawn()
            .unwrap(),
    );

    // Act: the link comes up; nobody runs `vraid add`.
    m.ns.link(true);
    let copied = wait_rejoined(&server, &m.control, 1);

    // Assert: only the region written while it was away is copied, and
    // the mirrors end equal.
    assert!(copied > 0 && copied <= 64 << 20, "copied {copied}");
    assert_fio_clean(
        fio_verify_cmd(&server.uri("vol0"), "after", "8M", "32M")
            .stdout(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    assert_eq!(server.stop(), 0);
    assert!(
        member_data(&m.local) == member_data(&m.file),
        "mirrors differ"
    );
}

#[test]
fn a_remote_member_unreachable_at_start_up_is_left_alone_without_auto_rejoin() {
    // Arrange
    let m = Mirror::new("mirror-absent-off", 9);
    m.ns.link(false);
    let server = m.serve(&["--no-auto-rejoin"]);
    server.wait_log("is unreachable", Duration::from_secs(30));
    assert_fio_clean(
        fio_verify_cmd(&server.uri("vol0"), "absent", "8M", "0")
            .stdout(Stdio::piped())
            .spawn()
            .unwrap(),
    );

    // Act: the link comes up and stays up for longer than the first tries.
    m.ns.link(true);
    m.ns.wait_reachable(PORT);
    std::thread::sleep(Duration::from_secs(4));

    // Assert: still out of the array until the operator adds it.
    assert_ne!(state_of(&m.control, 1), "active");
    assert!(!server.log().contains("joining as member"));
    assert_eq!(server.stop(), 0);
}

/// The mirror policies of role `role` as status shows them: write-mostly,
/// and the write-behind limits (bytes, requests) when on.
fn policy_of(control: &Path, role: usize) -> (bool, Option<(u64, u64)>) {
    let member = &volume_status(control, "vol0")["members"][role];
    let behind = &member["behind"];
    let limits = behind["max_bytes"]
        .as_u64()
        .map(|b| (b, behind["max_requests"].as_u64().unwrap()));
    (member["write_mostly"] == true, limits)
}

#[test]
fn write_mostly_and_write_behind_set_live_are_kept_across_restarts() {
    // Arrange
    let m = Mirror::new("policy-set", 10);
    let server = m.serve(&[]);
    assert_eq!(policy_of(&m.control, 1), (false, None));

    // Act 1: set live, then restart without any flag.
    vraid_ctl_ok(
        &m.control,
        &["set", "vol0", "--member", "1", "--write-mostly", "on"],
    );
    vraid_ctl_ok(
        &m.control,
        &[
            "set",
            "vol0",
            "--write-behind",
            "4M",
            "--write-behind-requests",
            "64",
        ],
    );
    let live = policy_of(&m.control, 1);
    assert_eq!(server.stop(), 0);
    let server = m.serve(&[]);

    // Assert 1: shown live and after the restart; role 0 untouched.
    assert_eq!(live, (true, Some((4 << 20, 64))));
    assert_eq!(policy_of(&m.control, 1), (true, Some((4 << 20, 64))));
    assert_eq!(policy_of(&m.control, 0), (false, None));

    // Act 2: both off, restart.
    vraid_ctl_ok(&m.control, &["set", "vol0", "--write-behind", "off"]);
    vraid_ctl_ok(
        &m.control,
        &["set", "vol0", "--member", "1", "--write-mostly", "off"],
    );
    assert_eq!(server.stop(), 0);
    let server = m.serve(&[]);

    // Assert 2: off after the restart, and the superblocks hold no policy
    // (an older build would accept them again).
    assert_eq!(policy_of(&m.control, 1), (false, None));
    assert_eq!(server.stop(), 0);
}

#[test]
fn write_behind_without_a_write_mostly_member_is_refused_by_set() {
    // Arrange
    let m = Mirror::new("policy-refused", 11);
    let server = m.serve(&[]);

    // Act
    let out = vraid_ctl(&m.control, &["set", "vol0", "--write-behind", "4M"]);

    // Assert: a clear refusal, nothing changed.
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(err.contains("write-mostly"), "{err}");
    assert_eq!(policy_of(&m.control, 1), (false, None));
    assert_eq!(server.stop(), 0);
}

#[test]
fn sigkill_while_a_set_write_behind_member_lags_resyncs_from_the_current_copy_without_flags() {
    // Arrange: the slow remote is role 0, the copy a resync would take
    // first without the policy (FORMAT.md case 82); the policy is set live.
    let mut m = Mirror::ordered("behind-kept", 12, true);
    let file = m.file.to_str().unwrap().to_string();
    m.ns.replace(PORT, &["--filter=delay", "file", &file, "wdelay=2"]);
    let server = m.serve_with("20s", &[]);
    vraid_ctl_ok(
        &m.control,
        &["set", "vol0", "--member", "0", "--write-mostly", "on"],
    );
    vraid_ctl_ok(&m.control, &["set", "vol0", "--write-behind", "8M"]);
    let data_offset = examine(&m.local)["data_offset"].as_u64().unwrap();

    // Act: unflushed writes still lagging when vraid is SIGKILLed; the
    // restart names no policy.
    let mut client = Client::new(&server);
    for i in 0..4u64 {
        client.write((8 << 20) + i * 4096, &[0x33; 4096]);
    }
    assert!(behind(&m.control, 0)["lag_requests"].as_u64().unwrap() >= 1);
    server.kill();
    let lagging = peek(&m.file, data_offset + (8 << 20), 4096);
    assert_ne!(lagging, vec![0x33; 4096], "the remote was not lagging");
    m.ns.replace(PORT, &["file", &file]);
    let server = m.serve_with("20s", &[]);

    // Assert: the resync copied the local (current) copy onto the remote.
    let log = server.wait_log("resync finished", Duration::from_secs(120));
    assert!(
        logged_number(&log, "rewrote ") > 0,
        "nothing copied:\n{log}"
    );
    assert!(policy_of(&m.control, 0).0, "write-mostly not kept");
    assert_eq!(server.stop(), 0);
    for member in [&m.local, &m.file] {
        assert_eq!(
            peek(member, data_offset + (8 << 20), 4096),
            vec![0x33; 4096]
        );
    }
    assert!(
        member_data(&m.local) == member_data(&m.file),
        "mirrors differ"
    );
}

#[test]
fn a_write_mostly_remote_replaced_by_a_local_file_does_not_pass_the_policy_on() {
    // Arrange: the remote (role 1) write-mostly with write-behind, set live.
    let m = Mirror::new("policy-replace", 13);
    let server = m.serve(&[]);
    vraid_ctl_ok(
        &m.control,
        &["set", "vol0", "--member", "1", "--write-mostly", "on"],
    );
    vraid_ctl_ok(&m.control, &["set", "vol0", "--write-behind", "4M"]);
    assert!(policy_of(&m.control, 1).0);
    let new = m.dir.path().join("new.img");
    std::fs::File::create(&new)
        .unwrap()
        .set_len(REMOTE_FILE)
        .unwrap();

    // Act: replace the remote by a local file, then restart with no flag.
    vraid_ctl_ok(
        &m.control,
        &["replace", "vol0", m.uri.as_str(), new.to_str().unwrap()],
    );
    wait_until(120, "the replacement in the role", || {
        let v = volume_status(&m.control, "vol0");
        v["members"][1]["path"] == new.to_str().unwrap() && v["replace"].is_null()
    });
    let after_replace = policy_of(&m.control, 1);
    assert_eq!(server.stop(), 0);
    let server = serve(
        &[m.local.to_str().unwrap(), new.to_str().unwrap()],
        &m.control,
        "2s",
        &[],
    );
    let after_restart = policy_of(&m.control, 1);
    // Write-behind was kept (idle): it applies again once a member is
    // write-mostly, with the limits set before.
    vraid_ctl_ok(
        &m.control,
        &["set", "vol0", "--member", "1", "--write-mostly", "on"],
    );
    let again = policy_of(&m.control, 1);
    assert_eq!(server.stop(), 0);

    // Assert: md semantics, the new device is an ordinary member.
    assert_eq!(after_replace, (false, None));
    assert_eq!(after_restart, (false, None));
    assert_eq!(again, (true, Some((4 << 20, 256))));
}
