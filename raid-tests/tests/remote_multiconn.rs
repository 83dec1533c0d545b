//! Remote members over several connections (`?connections=N` with servers
//! that advertise `CAN_MULTI_CONN`: nbdkit memory and file, qemu-nbd
//! `--shared`, another vraid) and against servers whose minimum block size
//! is above 512 (nbdkit's blocksize-policy filter refusing unaligned
//! requests): a RAID-1 of a local file and the remote under fio verify
//! through our export, mirrors byte-equal after, the connections counted in
//! status. Red team: a server that advertises multi-conn and refuses a
//! second connection, a server SIGKILLed and restarted under sub-block
//! writes, a 64 KiB minimum block.

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use raid_tests::*;

/// Bytes of every member.
const MEMBER: &str = "256M";

/// A remote NBD server the test runs, SIGKILLed when dropped.
struct Remote {
    child: Option<Child>,
    vraid: Option<Server>,
    port: u16,
    export: String,
}

impl Remote {
    /// `nbdkit ARGS...` on `port`.
    fn nbdkit(port: u16, args: &[&str]) -> Remote {
        let child = Command::new("nbdkit")
            .args(["-f", "-i", "127.0.0.1", "-p", &port.to_string()])
            .args(args)
            .stdin(Stdio::null())
            .spawn()
            .expect("spawn nbdkit");
        Remote::ready(child, port, "")
    }

    /// `qemu-nbd --shared=SHARED` serving `file` as export `exp`.
    fn qemu_nbd(file: &Path, shared: u32) -> Remote {
        let port = free_port();
        let child = Command::new("qemu-nbd")
            .args(["-f", "raw", "-t", "-b", "127.0.0.1", "-x", "exp"])
            .args(["-p", &port.to_string(), "-e", &shared.to_string()])
            .arg(file)
            .stdin(Stdio::null())
            .spawn()
            .expect("spawn qemu-nbd");
        Remote::ready(child, port, "exp")
    }

    /// Another vraid serving a RAID-1 of two files in `dir` as `rvol`.
    fn vraid(dir: &Path) -> Remote {
        let paths = vec![dir.join("r0.img"), dir.join("r1.img")];
        create_array(1, "64K", "288M", "rvol", &paths);
        let control = dir.join("rctl.sock");
        let server = Server::start(&[
            paths[0].to_str().unwrap(),
            paths[1].to_str().unwrap(),
            "--control",
            control.to_str().unwrap(),
        ]);
        Remote {
            child: None,
            port: server.addr.port(),
            vraid: Some(server),
            export: "rvol".into(),
        }
    }

    fn ready(mut child: Child, port: u16, export: &str) -> Remote {
        let deadline = Instant::now() + Duration::from_secs(30);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(child.try_wait().unwrap().is_none(), "NBD server exited");
            assert!(Instant::now() < deadline, "NBD server not up in 30 s");
            std::thread::sleep(Duration::from_millis(20));
        }
        Remote {
            child: Some(child),
            vraid: None,
            port,
            export: export.into(),
        }
    }

    /// The export's URI as libnbd and qemu know it.
    fn uri(&self) -> String {
        format!("nbd://127.0.0.1:{}/{}", self.port, self.export)
    }

    /// The member path: the URI with `?connections=N`.
    fn member(&self, connections: usize) -> String {
        format!("{}?connections={connections}", self.uri())
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        if let Some(s) = self.vraid.take() {
            s.kill();
        }
    }
}

impl Drop for Remote {
    fn drop(&mut self) {
        self.kill();
    }
}

fn sparse(path: &Path, size: u64) {
    std::fs::File::create(path).unwrap().set_len(size).unwrap();
}

fn serve(members: &[&str], control: &Path, timeout: &str) -> Server {
    let mut args: Vec<&str> = members.to_vec();
    args.extend(["--control", control.to_str().unwrap()]);
    Server::start_with_env(&args, &[("VRAID_MEMBER_TIMEOUT", timeout)])
}

/// Polls `cond` every 50 ms for at most `secs` seconds.
fn wait_until(secs: u64, what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !cond() {
        assert!(Instant::now() < deadline, "{what} not within {secs} s");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A fio verify job of `bs`-sized random writes (`bs` may be below 4k).
fn fio_small(uri: &str, name: &str, bs: &str, size: &str) -> Child {
    Command::new("fio")
        .args([
            &format!("--name={name}"),
            "--ioengine=nbd",
            "--rw=randwrite",
            &format!("--bs={bs}"),
            "--iodepth=16",
            &format!("--size={size}"),
            "--verify=crc32c",
            "--do_verify=1",
            "--verify_fatal=1",
            "--verify_state_save=0",
            "--output-format=json",
        ])
        .arg(format!("--uri={uri}"))
        .stdout(Stdio::piped())
        .spawn()
        .unwrap()
}

/// The remote member's entry in the status of `vol0`.
fn remote_status(control: &Path) -> serde_json::Value {
    volume_status(control, "vol0")["members"][1]["remote"].clone()
}

/// A RAID-1 of a local file and `member` (a remote's URI), created and
/// served; returns the server and the local file.
fn mirror(member: &str, dir: &Path, timeout: &str) -> (Server, PathBuf) {
    let local = dir.join("local.img");
    create_array(
        1,
        "64K",
        MEMBER,
        "vol0",
        &[local.clone(), PathBuf::from(member)],
    );
    let control = dir.join("ctl.sock");
    (
        serve(&[local.to_str().unwrap(), member], &control, timeout),
        local,
    )
}

/// Both mirrors hold the same bytes (the remote copied out with nbdcopy).
fn assert_mirrors_equal(remote: &Remote, local: &Path, dir: &Path) {
    let dump = dir.join("remote.dump");
    run_ok(Command::new("nbdcopy").arg(remote.uri()).arg(&dump));
    assert!(member_data(local) == member_data(&dump), "mirrors differ");
    std::fs::remove_file(dump).unwrap();
}

/// fio verify (4k-64k and 512-byte writes) over a RAID-1 whose remote
/// member uses `connections`; the connections live are `want`.
fn mirror_over(remote: &Remote, dir: &Path, connections: usize, want: u64) {
    // Arrange
    let (server, local) = mirror(&remote.member(connections), dir, "30s");
    let control = dir.join("ctl.sock");

    // Act
    let uri = server.uri("vol0");
    assert_fio_clean(
        fio_verify_cmd(&uri, "multi", "16M", "0")
            .stdout(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    assert_fio_clean(fio_small(&uri, "small", "512", "2M"));
    let status = volume_status(&control, "vol0");
    assert_eq!(server.stop(), 0);

    // Assert
    assert_eq!(member_states(&status), vec!["active", "active"]);
    let r = &status["members"][1]["remote"];
    assert_eq!(r["connections"], want, "{r}");
    assert_eq!(r["reconnects"], 0, "{r}");
    assert_mirrors_equal(remote, &local, dir);
}

#[test]
fn nbdkit_memory_over_four_connections_mirrors_byte_for_byte() {
    let dir = scratch_dir("multi-nbdkit-mem");
    let remote = Remote::nbdkit(free_port(), &["memory", "384M"]);
    mirror_over(&remote, dir.path(), 4, 4);
}

#[test]
fn nbdkit_file_over_three_connections_mirrors_byte_for_byte() {
    let dir = scratch_dir("multi-nbdkit-file");
    let file = dir.path().join("remote.img");
    sparse(&file, 384 << 20);
    let remote = Remote::nbdkit(free_port(), &["file", file.to_str().unwrap()]);
    mirror_over(&remote, dir.path(), 3, 3);
}

#[test]
fn qemu_nbd_shared_over_four_connections_mirrors_byte_for_byte() {
    let dir = scratch_dir("multi-qemu-nbd");
    let file = dir.path().join("remote.img");
    sparse(&file, 384 << 20);
    // nbdcopy's dump needs a connection of its own: 5 clients.
    let remote = Remote::qemu_nbd(&file, 5);
    mirror_over(&remote, dir.path(), 4, 4);
}

#[test]
fn vraid_export_over_four_connections_mirrors_byte_for_byte() {
    let dir = scratch_dir("multi-vraid");
    let remote = Remote::vraid(dir.path());
    mirror_over(&remote, dir.path(), 4, 4);
}

/// A RAID-1 over qemu-nbd `--shared=SHARED` asking for four connections
/// gets `want` of them.
fn qemu_nbd_connections(shared: u32, want: u64) {
    let dir = scratch_dir(&format!("multi-qemu-nbd-{shared}"));
    let file = dir.path().join("remote.img");
    sparse(&file, 384 << 20);
    let remote = Remote::qemu_nbd(&file, shared);
    let (server, local) = mirror(&remote.member(4), dir.path(), "30s");
    let control = dir.path().join("ctl.sock");
    assert_fio_clean(
        fio_verify_cmd(&server.uri("vol0"), "few", "8M", "0")
            .stdout(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let status = volume_status(&control, "vol0");
    assert_eq!(server.stop(), 0);
    assert_eq!(member_states(&status), vec!["active", "active"]);
    let r = &status["members"][1]["remote"];
    assert_eq!(r["connections"], want, "{r}");
    assert_eq!(r["reconnects"], 0, "{r}");
    assert_mirrors_equal(&remote, &local, dir.path());
}

#[test]
fn qemu_nbd_without_sharing_gets_one_connection() {
    // One client: no CAN_MULTI_CONN.
    qemu_nbd_connections(1, 1);
}

#[test]
fn qemu_nbd_sharing_two_clients_gets_two_of_four_connections() {
    // CAN_MULTI_CONN, and the third and fourth connections refused.
    qemu_nbd_connections(2, 2);
}

#[test]
fn a_server_that_advertises_multi_conn_and_refuses_a_second_connection_serves_on_one() {
    // nbdkit's limit filter: one client at a time, multi-conn still
    // advertised by the memory plugin.
    let dir = scratch_dir("multi-refused");
    let remote = Remote::nbdkit(
        free_port(),
        &["--filter=limit", "memory", "384M", "limit=1"],
    );
    let (server, _local) = mirror(&remote.member(4), dir.path(), "30s");
    let control = dir.path().join("ctl.sock");

    assert_fio_clean(
        fio_verify_cmd(&server.uri("vol0"), "refused", "16M", "0")
            .stdout(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let status = volume_status(&control, "vol0");
    assert_eq!(server.stop(), 0);

    assert_eq!(member_states(&status), vec!["active", "active"]);
    let r = &status["members"][1]["remote"];
    assert_eq!(r["connections"], 1, "{r}");
    assert_eq!(r["reconnects"], 0, "{r}");
}

#[test]
fn a_server_briefly_over_its_client_limit_is_waited_for_at_open() {
    // Arrange: nbdkit's limit filter, its one place held by a client that
    // leaves 300 ms later (as `vraid create`'s connection may still be
    // counted when `vraid serve` connects).
    let dir = scratch_dir("multi-limit-open");
    let remote = Remote::nbdkit(
        free_port(),
        &["--filter=limit", "memory", "384M", "limit=1"],
    );
    let holder = nbd_client_holding(&remote.uri());
    let turned_away = Command::new("nbdinfo")
        .arg("--size")
        .arg(remote.uri())
        .output()
        .unwrap();
    assert!(!turned_away.status.success(), "the place was not held");
    let leaves = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(300));
        drop(holder);
    });

    // Act: create (its open waits for the place), then serve at once.
    let (server, _local) = mirror(&remote.member(1), dir.path(), "30s");
    leaves.join().unwrap();
    let status = volume_status(&dir.path().join("ctl.sock"), "vol0");
    assert_eq!(server.stop(), 0);

    // Assert
    assert_eq!(member_states(&status), vec!["active", "active"]);
}

/// An NBD client (nbdsh) connected to `uri` until the child is dropped;
/// tried again while the server still counts the readiness probe.
fn nbd_client_holding(uri: &str) -> KillOnDrop {
    use std::io::BufRead;
    for _ in 0..50 {
        // nbdsh runs `python3` from PATH; the `nbd` module is installed
        // for the distribution's interpreter, which a pyenv shim may shadow.
        let path = std::env::var("PATH").unwrap_or_default();
        let mut child = KillOnDrop(
            Command::new("nbdsh")
                .env("PATH", format!("/usr/bin:{path}"))
                .args([
                    "-u",
                    uri,
                    "-c",
                    "import sys; print('in', flush=True); sys.stdin.read()",
                ])
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::null())
                .spawn()
                .expect("spawn nbdsh"),
        );
        let mut line = String::new();
        let out = child.0.stdout.take().unwrap();
        std::io::BufReader::new(out).read_line(&mut line).unwrap();
        if line.trim() == "in" {
            return child;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("nbdsh could not connect to {uri}");
}

/// A child process killed and reaped when dropped.
struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// nbdkit with a minimum block size it enforces (EINVAL otherwise).
fn blocksize_policy(min: u32, plugin: &[&str]) -> Vec<String> {
    let mut a = vec!["--filter=blocksize-policy".to_string()];
    a.extend(plugin.iter().map(|s| s.to_string()));
    a.push(format!("blocksize-minimum={min}"));
    a.push(format!("blocksize-preferred={}", min.max(4096)));
    a.push("blocksize-error-policy=error".into());
    a
}

fn nbdkit_args(port: u16, args: &[String]) -> Remote {
    let a: Vec<&str> = args.iter().map(String::as_str).collect();
    Remote::nbdkit(port, &a)
}

#[test]
fn a_4k_minimum_block_server_takes_512_byte_writes() {
    // Arrange
    let dir = scratch_dir("rmw-4k");
    let remote = nbdkit_args(free_port(), &blocksize_policy(4096, &["memory", "384M"]));
    let (server, local) = mirror(&remote.member(2), dir.path(), "30s");
    let control = dir.path().join("ctl.sock");
    let uri = server.uri("vol0");

    // Act: sub-block writes, then qemu-io patterns at odd offsets.
    assert_fio_clean(fio_small(&uri, "rmw", "512", "4M"));
    qemu_io(&uri, &["write -P 0x5a 1536 1024".to_string()]);
    qemu_io(&uri, &["write -P 0xa5 8191 3".to_string()]);
    qemu_io(
        &uri,
        &[
            "read -P 0x5a 1536 1024".to_string(),
            "read -P 0xa5 8191 3".to_string(),
        ],
    );
    let status = volume_status(&control, "vol0");
    assert_eq!(server.stop(), 0);

    // Assert
    assert_eq!(member_states(&status), vec!["active", "active"]);
    assert_mirrors_equal(&remote, &local, dir.path());
}

#[test]
fn a_64k_minimum_block_server_takes_4k_writes() {
    let dir = scratch_dir("rmw-64k");
    let remote = nbdkit_args(free_port(), &blocksize_policy(65536, &["memory", "384M"]));
    let (server, local) = mirror(&remote.member(2), dir.path(), "30s");
    let control = dir.path().join("ctl.sock");

    assert_fio_clean(
        fio_verify_cmd(&server.uri("vol0"), "rmw64", "8M", "0")
            .stdout(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    assert_fio_clean(fio_small(&server.uri("vol0"), "rmw64s", "512", "1M"));
    let status = volume_status(&control, "vol0");
    assert_eq!(server.stop(), 0);

    assert_eq!(member_states(&status), vec!["active", "active"]);
    assert_mirrors_equal(&remote, &local, dir.path());
}

#[test]
fn a_4k_minimum_block_server_killed_under_sub_block_writes_and_restarted_loses_nothing() {
    // Arrange: nbdkit's file plugin (the file outlives the process).
    let dir = scratch_dir("rmw-kill");
    let file = dir.path().join("remote.img");
    sparse(&file, 384 << 20);
    let port = free_port();
    let args = blocksize_policy(4096, &["file", file.to_str().unwrap()]);
    let mut remote = nbdkit_args(port, &args);
    let (server, local) = mirror(&remote.member(2), dir.path(), "60s");
    let control = dir.path().join("ctl.sock");

    // Act: SIGKILL the server mid-run, start it again within member_timeout.
    let fio = fio_small(&server.uri("vol0"), "cut", "512", "8M");
    wait_until(60, "remote requests answered", || {
        remote_status(&control)["requests"].as_u64().unwrap_or(0) > 200
    });
    remote.kill();
    let remote = nbdkit_args(port, &args);
    assert_fio_clean(fio);
    qemu_io(&server.uri("vol0"), &["write -P 0x3c 4097 100".to_string()]);
    let r = remote_status(&control);
    let status = volume_status(&control, "vol0");
    assert_eq!(server.stop(), 0);

    // Assert: no member failed, the requests cut were sent again.
    assert_eq!(member_states(&status), vec!["active", "active"]);
    assert!(r["reconnects"].as_u64().unwrap() >= 1, "{r}");
    assert_mirrors_equal(&remote, &local, dir.path());
    assert!(member_data(&local) == member_data(&file));
}
