//! Red-team regressions for the export limits (issue 16, items 6-8): what
//! a hostile client that plays by other rules than the tests of
//! `safety_exports.rs` could still take, run against the real `vraid`
//! binary with raw sockets; the well-behaved client is qemu-io.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::Command;
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
