//! The control plane against the real daemon: `vraid status` (JSON and
//! text), `vraid fail` / `remove` under fio verify load, bad control
//! requests, the CLI without a daemon, the socket's permissions and the
//! Prometheus endpoint.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use raid_tests::*;
use serde_json::Value;

fn args_of(paths: &[PathBuf]) -> Vec<&str> {
    paths.iter().map(|p| p.to_str().unwrap()).collect()
}

/// A RAID-1 `mirror` (2 members) and a RAID-5 `parity` (3 members) in one config.
fn two_volume_config(dir: &Path, control: &Path) -> (PathBuf, Vec<PathBuf>, Vec<PathBuf>) {
    let mirror: Vec<PathBuf> = (0..2).map(|i| dir.join(format!("r1-{i}.img"))).collect();
    let parity: Vec<PathBuf> = (0..3).map(|i| dir.join(format!("r5-{i}.img"))).collect();
    create_array(1, "64K", "32M", "mirror", &mirror);
    create_array(5, "64K", "32M", "parity", &parity);
    let list = |p: &[PathBuf]| {
        p.iter()
            .map(|p| format!("{:?}", p.to_str().unwrap()))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let config = dir.join("vraid.toml");
    std::fs::write(
        &config,
        format!(
            "[server]\ncontrol = {:?}\n\n[[volume]]\nname = \"mirror\"\nlevel = 1\nmembers = [{}]\n\n[[volume]]\nname = \"parity\"\nlevel = 5\nmembers = [{}]\n",
            control.to_str().unwrap(),
            list(&mirror),
            list(&parity)
        ),
    )
    .unwrap();
    (config, mirror, parity)
}

fn member_states(status: &Value, volume: &str) -> Vec<String> {
    let v = status["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == volume)
        .unwrap_or_else(|| panic!("no volume {volume} in {status}"));
    v["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["state"].as_str().unwrap().to_string())
        .collect()
}

fn volume<'a>(status: &'a Value, name: &str) -> &'a Value {
    status["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == name)
        .unwrap()
}

#[test]
fn status_json_and_text_describe_every_volume_and_member() {
    // Arrange
    let dir = scratch_dir("ops-status");
    let control = dir.path().join("control.sock");
    let (config, mirror, parity) = two_volume_config(dir.path(), &control);
    let server = Server::start(&["--config", config.to_str().unwrap()]);
    qemu_io(&server.uri("mirror"), &["write -P 0x11 0 1M".into()]);

    // Act
    let status = status_json(&control);
    let text = vraid_ctl_ok(&control, &["status"]);

    // Assert
    let m = volume(&status, "mirror");
    assert_eq!(m["level"], 1);
    assert_eq!(m["state"], "optimal");
    assert!(m["size"].as_u64().unwrap() > 0);
    assert_eq!(m["chunk_size"], 65536);
    assert!(m["superblock_events"].as_u64().unwrap() >= 1);
    assert!(m["io"]["writes"].as_u64().unwrap() >= 1);
    assert_eq!(m["io"]["write_bytes"], 1 << 20);
    let members = m["members"].as_array().unwrap();
    assert_eq!(members.len(), 2);
    for (i, member) in members.iter().enumerate() {
        assert_eq!(member["role"], i);
        assert_eq!(member["state"], "active");
        assert_eq!(member["faults"], 0);
        assert!(member["io"]["writes"].as_u64().unwrap() >= 1, "{member}");
        let path = member["path"].as_str().unwrap();
        assert!(mirror.iter().any(|p| p.to_str() == Some(path)), "{path}");
    }
    let p = volume(&status, "parity");
    assert_eq!(
        (p["level"].as_u64(), p["state"].as_str()),
        (Some(5), Some("optimal"))
    );
    assert_eq!(p["members"].as_array().unwrap().len(), parity.len());
    assert!(status["events"].as_array().unwrap().is_empty());
    assert!(text.contains("mirror: raid1, OPTIMAL"), "{text}");
    assert!(text.contains("parity: raid5, OPTIMAL"), "{text}");
    assert!(text.contains(mirror[1].to_str().unwrap()), "{text}");
    let only = vraid_ctl_ok(&control, &["status", "--json", "parity"]);
    let only: Value = serde_json::from_str(&only).unwrap();
    assert_eq!(only["volumes"].as_array().unwrap().len(), 1);
    assert_eq!(server.stop(), 0);
}

#[test]
fn fail_raid1_member_under_fio_verify_keeps_client_clean_and_degrades() {
    // Arrange
    let dir = scratch_dir("ops-fail");
    let paths = member_paths(dir.path(), 2);
    create_array(1, "64K", "64M", "mirror", &paths);
    let control = dir.path().join("control.sock");
    let mut args = args_of(&paths);
    args.extend(["--control", control.to_str().unwrap()]);
    let server = Server::start(&args);
    let events_before = examine(&paths[0])["events"].as_u64().unwrap();
    let mut fio = fio_verify_cmd(&server.uri("mirror"), "fail-load", "48M", "0")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn fio");

    // Act: fail member 1 by its path while fio writes and verifies.
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        fio.try_wait().unwrap().is_none(),
        "fio ended before the failure"
    );
    let out = vraid_ctl_ok(&control, &["fail", "mirror", paths[1].to_str().unwrap()]);
    assert_fio_clean(fio);

    // Assert
    assert!(out.contains("degraded"), "{out}");
    let status = status_json(&control);
    assert_eq!(volume(&status, "mirror")["state"], "degraded");
    assert_eq!(member_states(&status, "mirror"), ["active", "failed"]);
    let kinds: Vec<&str> = status["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["kind"].as_str().unwrap())
        .collect();
    assert!(kinds.contains(&"member_failed"), "{status}");
    assert!(kinds.contains(&"degraded"), "{status}");
    assert!(status["events"][0]["time_ms"].as_u64().unwrap() > 1_600_000_000_000);
    let events_after = examine(&paths[0])["events"].as_u64().unwrap();
    assert!(
        events_after > events_before,
        "superblock event counter {events_before} -> {events_after}"
    );
    // Failing the last mirror is refused; removing an active one too.
    let refused = vraid_ctl(&control, &["fail", "mirror", "0"]);
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("unavailable"));
    let refused = vraid_ctl(&control, &["remove", "mirror", "0"]);
    assert!(String::from_utf8_lossy(&refused.stderr).contains("fail it first"));
    // Removing the failed one marks its slot removed.
    vraid_ctl_ok(&control, &["remove", "mirror", "1"]);
    assert_eq!(
        member_states(&status_json(&control), "mirror"),
        ["active", "removed"]
    );
    qemu_io(&server.uri("mirror"), &["read 0 1M".into()]);
    assert_eq!(server.stop(), 0);
}

fn error_code(reply: &Value) -> i64 {
    reply["error"]["code"]
        .as_i64()
        .unwrap_or_else(|| panic!("expected an error reply, got {reply}"))
}

#[test]
fn bad_control_requests_get_clear_errors_and_change_nothing() {
    // Arrange
    let dir = scratch_dir("ops-bad");
    let control = dir.path().join("control.sock");
    let (config, _, parity) = two_volume_config(dir.path(), &control);
    let server = Server::start(&["--config", config.to_str().unwrap()]);
    let before = status_json(&control);
    let huge = format!(
        "{{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"status\",\"params\":{{\"volume\":\"{}\"}}}}",
        "x".repeat(2 << 20)
    );

    // Act + Assert: each bad request gets its JSON-RPC error.
    let cases: Vec<(&[u8], i64, &str)> = vec![
        (b"{this is not json", -32700, "parse error"),
        (b"[1,2]", -32600, "batch"),
        (br#"{"jsonrpc":"2.0","id":1}"#, -32600, "method"),
        (br#"{"jsonrpc":"2.0","id":2,"method":"explode"}"#, -32601, "explode"),
        (
            br#"{"jsonrpc":"2.0","id":3,"method":"fail","params":{"volume":7,"member":0}}"#,
            -32602,
            "invalid params",
        ),
        (
            br#"{"jsonrpc":"2.0","id":4,"method":"fault.add","params":{"volume":"parity","member":0,"kind":"melt"}}"#,
            -32602,
            "melt",
        ),
        (
            br#"{"jsonrpc":"2.0","id":5,"method":"fault.add","params":{"volume":"parity","member":0,"kind":"error","probability":3}}"#,
            -32602,
            "probability",
        ),
        (
            br#"{"jsonrpc":"2.0","id":6,"method":"fail","params":{"volume":"nope","member":0}}"#,
            -32001,
            "unknown volume",
        ),
        (
            br#"{"jsonrpc":"2.0","id":7,"method":"fail","params":{"volume":"parity","member":9}}"#,
            -32002,
            "no member 9",
        ),
        (
            br#"{"jsonrpc":"2.0","id":8,"method":"remove","params":{"volume":"parity","member":"/no/such/path"}}"#,
            -32002,
            "/no/such/path",
        ),
        (
            br#"{"jsonrpc":"2.0","id":9,"method":"fault.clear","params":{"id":999}}"#,
            -32005,
            "999",
        ),
        (
            br#"{"jsonrpc":"2.0","id":10,"method":"add","params":{"volume":"parity","path":"/nonexistent-vraid/x.img"}}"#,
            -32003,
            "cannot open member /nonexistent-vraid/x.img",
        ),
        (huge.as_bytes(), -32600, "longer than"),
    ];
    for (line, code, needle) in cases {
        let reply = control_request(&control, line);
        assert_eq!(error_code(&reply), code, "{reply}");
        let message = reply["error"]["message"].as_str().unwrap();
        assert!(message.contains(needle), "{message:?} lacks {needle:?}");
        assert_eq!(reply["jsonrpc"], "2.0");
    }
    let reply = control_request(&control, br#"{"jsonrpc":"2.0","id":"abc","method":"nope"}"#);
    assert_eq!(reply["id"], "abc");
    // The CLI prints the daemon's message as one line and fails.
    let out = vraid_ctl(&control, &["fail", "nosuch", "0"]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.trim(), "vraid: error: unknown volume \"nosuch\"");
    let out = vraid_ctl(
        &control,
        &[
            "fault",
            "add",
            "parity",
            parity[0].to_str().unwrap(),
            "--kind",
            "delay",
        ],
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("needs a delay"));

    // Nothing changed, and the daemon still serves.
    let after = status_json(&control);
    assert_eq!(after["events"], before["events"]);
    for v in ["mirror", "parity"] {
        assert_eq!(member_states(&after, v), member_states(&before, v));
        assert_eq!(volume(&after, v)["state"], "optimal");
    }
    assert!(vraid_ctl_ok(&control, &["fault", "list"]).contains("no faults"));
    qemu_io(
        &server.uri("parity"),
        &["write -P 7 0 64K".into(), "read -P 7 0 64K".into()],
    );
    assert_eq!(server.stop(), 0);
}

#[test]
fn cli_without_a_daemon_prints_one_line_error() {
    // Arrange
    let dir = scratch_dir("ops-nodaemon");
    let control = dir.path().join("nobody.sock");
    // Act
    let outs = [
        vraid_ctl(&control, &["status"]),
        vraid_ctl(&control, &["fail", "vol0", "1"]),
        vraid_ctl(&control, &["fault", "list"]),
    ];
    // Assert
    for out in outs {
        assert!(!out.status.success());
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(stderr.lines().count(), 1, "{stderr}");
        assert!(
            stderr.contains("no vraid daemon is listening on") && stderr.contains("nobody.sock"),
            "{stderr}"
        );
    }
}

#[test]
fn control_socket_is_private_and_a_live_one_is_not_taken_over() {
    // Arrange: a stale socket file where the daemon will listen.
    let dir = scratch_dir("ops-sock");
    let paths = member_paths(dir.path(), 2);
    create_array(0, "64K", "16M", "stripe", &paths);
    let control = dir.path().join("control.sock");
    drop(std::os::unix::net::UnixListener::bind(&control).unwrap());
    assert!(control.exists());
    let mut args = args_of(&paths);
    args.extend(["--control", control.to_str().unwrap()]);

    // Act
    let server = Server::start(&args);
    let second = run(vraid(&["serve", "--nbd", "127.0.0.1:0", "--control"])
        .arg(&control)
        .args(&paths));

    // Assert
    let mode = std::fs::metadata(&control).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    assert!(!second.status.success());
    let stderr = String::from_utf8_lossy(&second.stderr);
    assert!(stderr.contains("in use"), "{stderr}");
    assert_eq!(volume(&status_json(&control), "stripe")["state"], "optimal");
    assert_eq!(server.stop(), 0);
    assert!(!control.exists(), "socket removed at shutdown");
}

fn sample(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("no sample {series}"))
}

#[test]
fn metrics_endpoint_serves_prometheus_series() {
    // Arrange
    let dir = scratch_dir("ops-metrics");
    let paths = member_paths(dir.path(), 3);
    create_array(5, "64K", "32M", "vol0", &paths);
    let control = dir.path().join("control.sock");
    let metrics = format!("127.0.0.1:{}", free_port());
    let mut args = args_of(&paths);
    args.extend([
        "--control",
        control.to_str().unwrap(),
        "--metrics",
        &metrics,
    ]);
    let server = Server::start(&args);
    qemu_io(
        &server.uri("vol0"),
        &["write -P 1 0 1M".into(), "read -P 1 0 1M".into()],
    );
    vraid_ctl_ok(
        &control,
        &[
            "fault", "add", "vol0", "2", "--kind", "error", "--op", "write", "--count", "1",
        ],
    );
    vraid_ctl_ok(&control, &["fail", "vol0", "1"]);

    // Act
    let text = scrape(&metrics);

    // Assert
    assert!(text.starts_with("HTTP/1.1 200 OK"), "{text}");
    assert!(text.contains("Content-Type: text/plain; version=0.0.4"));
    assert_eq!(
        sample(&text, r#"vraid_volume_ops_total{volume="vol0",op="write"}"#),
        1.0
    );
    assert_eq!(
        sample(
            &text,
            r#"vraid_volume_bytes_total{volume="vol0",op="read"}"#
        ),
        1048576.0
    );
    assert_eq!(
        sample(
            &text,
            r#"vraid_volume_latency_seconds_bucket{volume="vol0",op="read",le="+Inf"}"#
        ),
        1.0
    );
    assert_eq!(sample(&text, r#"vraid_volume_state{volume="vol0"}"#), 1.0);
    let m1 = format!(
        "volume=\"vol0\",member=\"1\",path=\"{}\"",
        paths[1].to_str().unwrap()
    );
    assert_eq!(sample(&text, &format!("vraid_member_state{{{m1}}}")), 1.0);
    assert!(
        sample(
            &text,
            &format!("vraid_member_ops_total{{{m1},op=\"write\"}}")
        ) >= 1.0
    );
    assert!(text.contains("vraid_fault_hits_total{volume=\"vol0\",member=\"2\""));
    assert!(text.contains("# TYPE vraid_member_latency_seconds histogram"));
    // The RAID-5 write was logged in the write-hole journal.
    assert!(
        sample(
            &text,
            r#"vraid_volume_journal_entries_total{volume="vol0"}"#
        ) >= 1.0,
        "{text}"
    );
    let mut s = TcpStream::connect(&metrics).unwrap();
    s.write_all(b"GET /nope HTTP/1.1\r\n\r\n").unwrap();
    let mut other = String::new();
    s.read_to_string(&mut other).unwrap();
    assert!(other.starts_with("HTTP/1.1 404"), "{other}");
    // A rebuild onto a new member shows as state 3 with its progress.
    let new = dir.path().join("new.img");
    std::fs::File::create(&new)
        .unwrap()
        .set_len(std::fs::metadata(&paths[1]).unwrap().len())
        .unwrap();
    vraid_ctl_ok(&control, &["set", "vol0", "--rebuild-max-mbps", "1"]);
    vraid_ctl_ok(&control, &["remove", "vol0", "1"]);
    vraid_ctl_ok(&control, &["add", "vol0", new.to_str().unwrap()]);
    let rebuilding = scrape(&metrics);
    let sl = r#"volume="vol0",kind="rebuild",member="1""#;
    assert_eq!(
        sample(&rebuilding, r#"vraid_volume_state{volume="vol0"}"#),
        3.0
    );
    let total = sample(
        &rebuilding,
        &format!("vraid_volume_sync_total_bytes{{{sl}}}"),
    );
    let done = sample(
        &rebuilding,
        &format!("vraid_volume_sync_done_bytes{{{sl}}}"),
    );
    assert!(total > 0.0 && done < total, "{rebuilding}");
    assert_eq!(server.stop(), 0);
}

#[test]
fn many_clients_at_once_are_all_answered() {
    // Arrange: one client connects and sends half a line, then stalls.
    let dir = scratch_dir("ops-many");
    let paths = member_paths(dir.path(), 2);
    create_array(1, "64K", "16M", "mirror", &paths);
    let control = dir.path().join("control.sock");
    let mut args = args_of(&paths);
    args.extend(["--control", control.to_str().unwrap()]);
    let server = Server::start(&args);
    let mut stalled = std::os::unix::net::UnixStream::connect(&control).unwrap();
    stalled.write_all(br#"{"jsonrpc":"2.0","#).unwrap();

    // Act: 16 clients, 10 requests each, in parallel.
    let threads: Vec<_> = (0..16)
        .map(|t| {
            let control = control.clone();
            std::thread::spawn(move || {
                for i in 0..10 {
                    let line = format!(
                        r#"{{"jsonrpc":"2.0","id":{},"method":"status","params":{{"volume":"mirror"}}}}"#,
                        t * 100 + i
                    );
                    let reply = control_request(&control, line.as_bytes());
                    assert_eq!(reply["id"], t * 100 + i, "{reply}");
                    assert_eq!(reply["result"]["volumes"][0]["name"], "mirror");
                }
            })
        })
        .collect();

    // Assert
    for t in threads {
        t.join().expect("client thread");
    }
    stalled
        .write_all(b"\"id\":1,\"method\":\"fault.list\"}\n")
        .unwrap();
    let mut reply = String::new();
    std::io::BufRead::read_line(&mut std::io::BufReader::new(&stalled), &mut reply).unwrap();
    assert!(reply.contains("\"faults\":[]"), "{reply}");
    assert_eq!(server.stop(), 0);
}
