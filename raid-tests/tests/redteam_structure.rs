//! Red-team checks of the structure refactor (issue 9) against the real
//! daemon: hostile control parameters, a replace whose old member fails
//! mid-copy (the one state enum), NBD clients dropping mid-handshake on
//! both listeners of the merged accept loop, and the humantime durations
//! at their extremes.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use raid_tests::*;
use serde_json::Value;

/// A RAID-5 `vol0` of 3 members with a control socket, metrics and an
/// NBD Unix socket; `extra` goes to `serve`.
fn serve(dir: &Path, extra: &[&str]) -> (Server, PathBuf, String, PathBuf, Vec<PathBuf>) {
    let paths = member_paths(dir, 3);
    create_array(5, "64K", "32M", "vol0", &paths);
    let control = dir.join("control.sock");
    let nbd_sock = dir.join("nbd.sock");
    let metrics = format!("127.0.0.1:{}", free_port());
    let mut args: Vec<&str> = paths.iter().map(|p| p.to_str().unwrap()).collect();
    args.extend([
        "--control",
        control.to_str().unwrap(),
        "--metrics",
        &metrics,
        "--nbd-socket",
        nbd_sock.to_str().unwrap(),
    ]);
    args.extend(extra);
    let server = Server::start(&args);
    (server, control, metrics, nbd_sock, paths)
}

/// Polls vol0's status until `done` holds (at most two minutes).
fn wait_for(control: &Path, what: &str, done: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let v = volume_status(control, "vol0");
        if done(&v) {
            return v;
        }
        assert!(Instant::now() < deadline, "no {what} after 120 s: {v}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Every sample line of an exposition, counted by series (name and labels).
fn series(text: &str) -> BTreeMap<String, usize> {
    let mut seen = BTreeMap::new();
    for line in text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        let name = line.rsplit_once(' ').map_or(line, |(s, _)| s);
        *seen.entry(name.to_string()).or_insert(0) += 1;
    }
    seen
}

#[test]
fn hostile_member_params_are_refused_as_invalid_and_the_daemon_keeps_serving() {
    // Arrange
    let dir = scratch_dir("rt9-hostile-params");
    let (server, control, _metrics, _sock, _) = serve(dir.path(), &[]);
    let bad = [
        r#"{"member":-1}"#,
        r#"{"member":1.5}"#,
        r#"{"member":true}"#,
        r#"{"member":null}"#,
        r#"{"member":1e30}"#,
        r#"{"member":99999999999999999999}"#,
        r#"{}"#,
        r#"{"member":0,"extra":1}"#,
    ];

    for member in bad {
        // Act
        let mut params: Value = serde_json::from_str(member).unwrap();
        params["volume"] = "vol0".into();
        let line =
            serde_json::json!({"jsonrpc": "2.0", "id": 7, "method": "fail", "params": params});
        let reply = control_request(&control, line.to_string().as_bytes());

        // Assert
        assert_eq!(reply["error"]["code"], -32602, "{member}: {reply}");
        assert_eq!(reply["id"], 7, "{member}: {reply}");
    }
    let v = volume_status(&control, "vol0");
    assert_eq!(v["state"], "optimal", "{v}");
    assert_eq!(member_states(&v), ["active", "active", "active"]);
    assert_eq!(server.stop(), 0);
}

#[test]
fn replace_whose_old_member_fails_mid_copy_ends_optimal_on_the_new_member() {
    // Arrange
    let dir = scratch_dir("rt9-replace-fail");
    let (server, control, metrics, _sock, _) = serve(dir.path(), &[]);
    qemu_io(&server.uri("vol0"), &["write -P 7 0 4M".into()]);
    let new = dir.path().join("new.img");
    std::fs::File::create(&new)
        .unwrap()
        .set_len(32 << 20)
        .unwrap();
    vraid_ctl_ok(&control, &["set", "vol0", "--rebuild-max-mbps", "1"]);
    vraid_ctl_ok(&control, &["replace", "vol0", "2", new.to_str().unwrap()]);

    // Act
    vraid_ctl_ok(&control, &["fail", "vol0", "2"]);
    let during = volume_status(&control, "vol0");
    let scraped = scrape(&metrics);
    vraid_ctl_ok(&control, &["set", "vol0", "--rebuild-max-mbps", "0"]);
    let end = wait_for(&control, "end of the replace", |v| {
        v["replace"].is_null() && v["sync"].is_null()
    });

    // Assert
    assert_eq!(during["state"], "rebuilding", "{during}");
    assert_eq!(during["replace"]["member"], 2, "{during}");
    let dups: Vec<_> = series(&scraped)
        .into_iter()
        .filter(|(_, n)| *n > 1)
        .collect();
    assert!(dups.is_empty(), "duplicate series: {dups:?}");
    assert_eq!(end["state"], "optimal", "{end}");
    assert_eq!(member_states(&end), ["active", "active", "active"]);
    assert_eq!(end["members"][2]["path"], new.to_str().unwrap(), "{end}");
    qemu_io(&server.uri("vol0"), &["read -P 7 0 4M".into()]);
    assert_eq!(server.stop(), 0);
}

/// Opens `n` connections with `connect`, each reading at most the first
/// 8 bytes of the greeting (or nothing) before closing.
fn drop_mid_handshake<S: Read + Write>(n: usize, connect: impl Fn() -> S) {
    for i in 0..n {
        let mut s = connect();
        if i % 2 == 0 {
            let mut magic = [0u8; 8];
            let _ = s.read_exact(&mut magic);
        }
        if i % 3 == 0 {
            // A truncated client flags word, then gone.
            let _ = s.write_all(&[0, 0]);
        }
    }
}

#[test]
fn nbd_clients_dropping_mid_handshake_on_tcp_and_unix_leave_no_descriptors() {
    // Arrange
    let dir = scratch_dir("rt9-handshake-drop");
    let (server, _control, _metrics, sock, _) = serve(dir.path(), &[]);
    qemu_io(&server.uri("vol0"), &["write -P 3 0 64k".into()]);
    let base = fd_count(server.pid());
    let addr = server.addr;

    // Act
    drop_mid_handshake(150, || std::net::TcpStream::connect(addr).unwrap());
    drop_mid_handshake(150, || {
        std::os::unix::net::UnixStream::connect(&sock).unwrap()
    });

    // Assert
    let deadline = Instant::now() + Duration::from_secs(30);
    while fd_count(server.pid()) > base + 2 {
        assert!(
            Instant::now() < deadline,
            "descriptors {} > {base} after the clients left",
            fd_count(server.pid())
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    qemu_io(&server.uri("vol0"), &["read -P 3 0 64k".into()]);
    let unix = format!("nbd+unix:///vol0?socket={}", sock.display());
    qemu_io(&unix, &["read -P 3 0 64k".into()]);
    assert_eq!(server.stop(), 0);
}

#[test]
fn extreme_durations_parse_and_an_oversized_fault_delay_is_refused() {
    // Arrange
    let dir = scratch_dir("rt9-durations");
    let (server, control, _metrics, _sock, _) = serve(
        dir.path(),
        &[
            "--nbd-handshake-timeout",
            "100000000000h",
            "--nbd-write-timeout",
            " 1.5h",
        ],
    );

    // Act
    let huge = vraid_ctl(
        &control,
        &[
            "fault",
            "add",
            "vol0",
            "0",
            "--kind",
            "delay",
            "--delay",
            "100000000000h",
        ],
    );
    let bare = vraid_ctl(
        &control,
        &[
            "fault", "add", "vol0", "0", "--kind", "delay", "--delay", "50",
        ],
    );

    // Assert
    assert!(!huge.status.success());
    let err = String::from_utf8_lossy(&huge.stderr);
    assert!(err.contains("between 1us and 60s"), "{err}");
    assert_eq!(bare.status.code(), Some(2), "{bare:?}");
    let list = vraid_ctl_ok(&control, &["fault", "list", "--json"]);
    let faults: Value = serde_json::from_str(&list).unwrap();
    assert_eq!(faults["faults"].as_array().map(Vec::len), Some(0), "{list}");
    qemu_io(
        &server.uri("vol0"),
        &["write -P 9 0 64k".into(), "read -P 9 0 64k".into()],
    );
    assert_eq!(server.stop(), 0);
}
