//! Red-team tests of remote (NBD) members as a careless user and a hostile
//! network would treat them: one export spelled two ways in one array,
//! URIs with odd syntax, exports too small, FLUSH/FUA reaching the remote
//! server, the server killed and restarted inside `member_timeout` under
//! fio verify, and many reconnects without leaking descriptors.

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use raid_tests::*;

/// Bytes of every member.
const MEMBER: &str = "64M";

/// An nbdkit the test runs on 127.0.0.1, killed (SIGKILL) when dropped.
struct Nbdkit {
    child: Child,
    port: u16,
}

impl Nbdkit {
    fn start(port: u16, args: &[&str]) -> Nbdkit {
        let child = Command::new("nbdkit")
            .args(["-f", "-i", "127.0.0.1", "-p", &port.to_string()])
            .args(args)
            .stdin(Stdio::null())
            .spawn()
            .expect("spawn nbdkit");
        let mut n = Nbdkit { child, port };
        let deadline = Instant::now() + Duration::from_secs(30);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(n.child.try_wait().unwrap().is_none(), "nbdkit exited");
            assert!(Instant::now() < deadline, "nbdkit not up in 30 s");
            std::thread::sleep(Duration::from_millis(20));
        }
        n
    }

    fn uri(&self) -> String {
        format!("nbd://127.0.0.1:{}/", self.port)
    }
}

impl Drop for Nbdkit {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `vraid create --level 1` of `members`; the output, success or not.
fn try_create(members: &[&str]) -> Output {
    let mut c = vraid(&[
        "create",
        "--level",
        "1",
        "--chunk-size",
        "64K",
        "--member-size",
        MEMBER,
        "--name",
        "vol0",
    ]);
    c.args(members);
    run(c)
}

/// Asserts `out` failed and its stderr contains `want`.
fn assert_refused(out: &Output, want: &str, what: &str) {
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{what}: accepted\n{err}");
    assert!(err.contains(want), "{what}: no {want:?} in:\n{err}");
}

fn sparse_file(path: &Path, size: u64) {
    std::fs::File::create(path).unwrap().set_len(size).unwrap();
}

fn wait_until(secs: u64, what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !cond() {
        assert!(Instant::now() < deadline, "{what}: not within {secs} s");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn serve(members: &[&str], control: &Path, timeout: &str) -> Server {
    let mut args: Vec<&str> = members.to_vec();
    let c = control.to_str().unwrap();
    args.extend(["--control", c]);
    Server::start_with_env(&args, &[("VRAID_MEMBER_TIMEOUT", timeout)])
}

#[test]
fn one_export_spelled_localhost_and_127_0_0_1_is_refused() {
    let dir = scratch_dir("rt-remote-twice");
    let remote = Nbdkit::start(free_port(), &["memory", "128M"]);
    let local = dir.path().join("local.img");
    let by_ip = remote.uri();
    let by_name = format!("nbd://localhost:{}/", remote.port);

    let out = try_create(&[local.to_str().unwrap(), &by_ip, &by_name]);

    assert_refused(&out, "are the same device", "localhost and 127.0.0.1");
}

#[test]
fn odd_member_uris_get_clear_errors_and_create_no_files() {
    let dir = scratch_dir("rt-remote-uris");
    let local = dir.path().join("local.img");
    let cases = [
        ("nbd://127.0.0.1:99999/x", "bad port"),
        ("nbd://127.0.0.1:/x", "bad port"),
        ("nbd:///x", "no host"),
        ("nbd://[::1/x", "no host"),
        ("nbd+unix:///x", "needs ?socket=PATH"),
        ("nbd+unix:///x?sock=/tmp/s", "unknown query parameter"),
        ("nbd://127.0.0.1:1/x", "cannot connect"),
        ("nbdx://127.0.0.1/x", "not an nbd://"),
        ("http://127.0.0.1/x", "not an nbd://"),
    ];
    for (uri, want) in cases {
        let out = Command::new(vraid_bin())
            .current_dir(dir.path())
            .args(["create", "--level", "1", "--member-size", MEMBER])
            .args(["--name", "vol0"])
            .arg(&local)
            .arg(uri)
            .output()
            .unwrap();
        assert_refused(&out, want, uri);
    }
    let left: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .filter(|n| n != "local.img")
        .collect();
    assert!(left.is_empty(), "a URI became a local file: {left:?}");
}

#[test]
fn exports_too_small_or_empty_are_refused() {
    let small = Nbdkit::start(free_port(), &["memory", "1M"]);
    let empty = Nbdkit::start(free_port(), &["memory", "0"]);
    let dir = scratch_dir("rt-remote-small");
    let local = dir.path().join("local.img");
    let l = local.to_str().unwrap();

    let too_small = try_create(&[l, &small.uri()]);
    let zero = try_create(&[l, &empty.uri()]);

    assert_refused(&too_small, "is too small", "a 1 MiB export");
    assert_refused(&zero, "is too small", "an empty export");
}

/// Bytes of `file` on disk (it grows as writes reach the remote).
fn allocated(file: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(file).unwrap().blocks() * 512
}

/// A RAID-1 `vol0` of `local` and an nbdkit file export of `remote`
/// (sparse, created here), served with `member_timeout`; whole after a
/// first start, so the bitmap is kept.
fn mirror_with_file_remote(dir: &Path, timeout: &str) -> (Nbdkit, Server, PathBuf, PathBuf) {
    let (local, file) = (dir.join("local.img"), dir.join("remote.img"));
    sparse_file(&file, 96 << 20);
    let remote = Nbdkit::start(free_port(), &["file", file.to_str().unwrap()]);
    let uri = remote.uri();
    create_array(
        1,
        "64K",
        MEMBER,
        "vol0",
        &[local.clone(), PathBuf::from(&uri)],
    );
    let control = dir.join("ctl.sock");
    let members = [local.to_str().unwrap(), uri.as_str()];
    assert_eq!(serve(&members, &control, timeout).stop(), 0);
    (remote, serve(&members, &control, timeout), local, file)
}

#[test]
fn remote_killed_and_restarted_within_member_timeout_loses_and_repeats_nothing() {
    // Arrange
    let dir = scratch_dir("rt-remote-restart");
    let (mut remote, server, local, file) = mirror_with_file_remote(dir.path(), "60s");
    let control = dir.path().join("ctl.sock");
    let port = remote.port;
    let mut fio = fio_verify_cmd(&server.uri("vol0"), "restart", "32M", "0")
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();

    // Act: SIGKILL the remote (up to twice) while fio writes, restarting
    // it at once.
    let mut kills = 0;
    while kills < 2 {
        let before = allocated(&file);
        let mut fio_done = false;
        wait_until(60, "writes reaching the remote", || {
            fio_done = fio.try_wait().unwrap().is_some();
            fio_done || allocated(&file) > before + (256 << 10)
        });
        if fio_done {
            break;
        }
        drop(remote);
        remote = Nbdkit::start(port, &["file", file.to_str().unwrap()]);
        kills += 1;
    }
    assert_fio_clean(fio);
    assert!(kills >= 1, "fio ended before the remote was killed");

    // Assert: no client error, the member never failed, mirrors equal.
    let status = volume_status(&control, "vol0");
    assert_eq!(server.stop(), 0);
    assert_eq!(member_states(&status), vec!["active", "active"]);
    assert!(member_data(&local) == member_data(&file), "mirrors differ");
    drop(remote);
}

#[test]
fn many_reconnects_do_not_leak_descriptors() {
    // Arrange
    let dir = scratch_dir("rt-remote-fds");
    let (mut remote, server, _local, file) = mirror_with_file_remote(dir.path(), "60s");
    let port = remote.port;
    let uri = server.uri("vol0");
    let write = |i: usize| {
        let cmds = [format!("write -P {} 0 64k", i % 250 + 1)];
        let (ok, out) = qemu_io_try(&uri, &cmds);
        assert!(ok, "write {i}: {out}");
    };
    write(0);
    let base = fd_count(server.pid());

    // Act: kill and restart the remote 12 times, writing after each.
    for i in 1..=12 {
        drop(remote);
        remote = Nbdkit::start(port, &["file", file.to_str().unwrap()]);
        write(i);
    }

    // Assert
    let after = fd_count(server.pid());
    let (ok, out) = qemu_io_try(&uri, &["read -P 13 0 64k"]);
    assert!(ok, "{out}");
    assert!(after <= base + 2, "descriptors grew from {base} to {after}");
    assert_eq!(server.stop(), 0);
    drop(remote);
}

/// The lines of nbdkit's log filter output so far.
fn log_lines(log: &Path) -> Vec<String> {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .map(str::to_string)
        .collect()
}

/// Whether the remote got the last write of 4 KiB at `at` with FUA set
/// (a later FLUSH would not do: qemu-io flushes when it closes anyway).
fn fua_write_at(lines: &[String], at: u64) -> bool {
    let place = format!("offset={at:#x} count=0x1000 ");
    lines
        .iter()
        .rfind(|l| l.contains(" Write id=") && l.contains(&place))
        .is_some_and(|l| l.contains("fua=1"))
}

/// Whether a FLUSH reached the remote after the last write at `at`.
fn flushed_after(lines: &[String], at: u64) -> bool {
    let place = format!("offset={at:#x} count=0x1000 ");
    lines
        .iter()
        .rposition(|l| l.contains(" Write id=") && l.contains(&place))
        .is_some_and(|i| lines[i..].iter().any(|l| l.contains(" Flush id=")))
}

#[test]
fn fua_and_flush_reach_the_remote_server() {
    // Arrange: the remote logs every request (nbdkit's log filter).
    let dir = scratch_dir("rt-remote-fua");
    let log = dir.path().join("nbdkit.log");
    let logfile = format!("logfile={}", log.display());
    let remote = Nbdkit::start(free_port(), &["--filter=log", "memory", "128M", &logfile]);
    let local = dir.path().join("local.img");
    let uri = remote.uri();
    create_array(
        1,
        "64K",
        MEMBER,
        "vol0",
        &[local.clone(), PathBuf::from(&uri)],
    );
    let control = dir.path().join("ctl.sock");
    let server = serve(&[local.to_str().unwrap(), &uri], &control, "30s");
    let data_offset = examine(&local)["data_offset"].as_u64().unwrap();
    let vol = server.uri("vol0");
    let writeback = |cmds: &[&str]| {
        let mut c = Command::new("qemu-io");
        c.args(["-f", "raw", "-t", "writeback"]);
        for cmd in cmds {
            c.arg("-c").arg(cmd);
        }
        let out = run(c.arg(&vol));
        assert!(out.status.success(), "{out:?}");
    };

    // Act: a FUA write at 1 MiB; a plain write at 2 MiB, then a flush.
    writeback(&["write -f -P 7 1M 4k"]);
    let after_fua = log_lines(&log);
    writeback(&["write -P 8 2M 4k", "flush"]);
    let after_flush = log_lines(&log);

    // Assert
    let fua_at = data_offset + (1 << 20);
    let plain_at = data_offset + (2 << 20);
    assert!(
        fua_write_at(&after_fua, fua_at),
        "FUA lost:\n{}",
        after_fua.join("\n")
    );
    assert!(
        flushed_after(&after_flush, plain_at),
        "FLUSH lost:\n{}",
        after_flush.join("\n")
    );
    assert_eq!(server.stop(), 0);
}

#[test]
fn a_remote_export_of_a_local_member_is_refused_at_create() {
    // nbdkit serves the very file that is also the local member.
    let dir = scratch_dir("rt-remote-alias");
    let local = dir.path().join("local.img");
    sparse_file(&local, 80 << 20);
    let remote = Nbdkit::start(free_port(), &["file", local.to_str().unwrap()]);

    let out = try_create(&[local.to_str().unwrap(), &remote.uri()]);

    // Refused: by the read-back of the superblocks, or earlier when the
    // server fails a request racing the local member's on the same file.
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "an aliased member was accepted");
    assert!(
        err.contains("are the same device") || err.contains("metadata I/O failed"),
        "{err}"
    );
}

#[test]
fn replace_by_another_spelling_of_a_live_remote_member_is_refused_even_forced() {
    // Arrange: a RAID-1 of a local file and an export on 127.0.0.1.
    let dir = scratch_dir("rt-remote-replace");
    let (remote, server, local, _file) = mirror_with_file_remote(dir.path(), "30s");
    let control = dir.path().join("ctl.sock");
    let alias = format!("nbd://localhost:{}", remote.port);

    // Act: replace the local member by the remote one, spelled otherwise.
    let out = vraid_ctl(&control, &["replace", "vol0", "0", &alias, "--force"]);

    // Assert: refused; the local member still serves role 0.
    assert_refused(&out, "is already a member", "replace by an alias");
    let status = volume_status(&control, "vol0");
    assert_eq!(status["members"][0]["path"], local.to_str().unwrap());
    assert_eq!(server.stop(), 0);
    drop(remote);
}

#[test]
fn a_remote_member_turned_slow_is_failed_and_io_goes_on_locally() {
    // Arrange: a healthy mirror holding a pattern, then the remote comes
    // back slower than the request timeout (5 s per request; member_timeout
    // 2 s, so requests time out after 1 s on connections that do connect).
    let dir = scratch_dir("rt-remote-slow");
    let (remote, server, _local, file) = mirror_with_file_remote(dir.path(), "2s");
    let control = dir.path().join("ctl.sock");
    let vol = server.uri("vol0");
    let (ok, out) = qemu_io_try(&vol, &["write -P 90 0 4M"]);
    assert!(ok, "{out}");
    let port = remote.port;
    drop(remote);
    let f = file.to_str().unwrap();
    let slow = Nbdkit::start(port, &["--filter=delay", "file", f, "rdelay=5", "wdelay=5"]);

    // Act: reads and a write through the array (bounded by `timeout` so a
    // stall is a failure, not a hung test).
    let out = run(Command::new("timeout")
        .args(["120", "qemu-io", "-f", "raw"])
        .args([
            "-c",
            "read -P 90 0 4M",
            "-c",
            "write -P 107 0 64k",
            "-c",
            "read -P 107 0 64k",
            &vol,
        ]));

    // Assert: no client error; the slow member failed, the local serves.
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    assert!(
        !text.contains("error") && !text.contains("Pattern"),
        "{text}"
    );
    wait_until(60, "the slow member failed", || {
        member_states(&volume_status(&control, "vol0"))[1] == "failed"
    });
    assert_eq!(member_states(&volume_status(&control, "vol0"))[0], "active");
    assert_eq!(server.stop(), 0);
    drop(slow);
}
