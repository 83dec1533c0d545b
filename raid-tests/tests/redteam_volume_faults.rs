//! Red-team tests of volume faults and the volatile write cache: odd
//! orders of requests from real NBD clients (nbdsh/libnbd), each one a
//! break found (and fixed) or a promise checked the hard way: flushed
//! data survives later unflushed overwrites and power cuts, a FLUSH on
//! one connection covers writes completed on another, a stalled zeroing
//! released after the switch to write-through is durable, memory stays
//! near the budget when FUA writes trim big cached ones.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use raid_tests::*;
use serde_json::Value;

/// A RAID-1 of two sparse 64M members served with its own control socket.
struct Vol {
    _dir: tempfile::TempDir,
    control: PathBuf,
    server: Server,
    uri: String,
}

fn serve_vol(test: &str) -> Vol {
    let dir = scratch_dir(test);
    let paths = member_paths(dir.path(), 2);
    create_array(1, "64K", "64M", "vol0", &paths);
    let control = dir.path().join("control.sock");
    let mut args: Vec<&str> = paths.iter().map(|p| p.to_str().unwrap()).collect();
    args.extend(["--control", control.to_str().unwrap()]);
    let server = Server::start(&args);
    let uri = server.uri("vol0");
    Vol {
        _dir: dir,
        control,
        server,
        uri,
    }
}

fn nbdsh_command(uri: &str, script: &str) -> Command {
    // nbdsh runs `python3` from PATH; the `nbd` module is installed for
    // the distribution's interpreter, which a pyenv shim may shadow.
    let path = std::env::var("PATH").unwrap_or_default();
    let mut c = Command::new("nbdsh");
    c.env("PATH", format!("/usr/bin:{path}"));
    c.args(["-u", uri, "-c", script]);
    c
}

/// nbdsh running `script` (which ends with `h.shutdown()`, so no FLUSH
/// is sent at disconnect); its stdout.
fn nbdsh(uri: &str, script: &str) -> Vec<u8> {
    let out = run(nbdsh_command(uri, script));
    assert!(
        out.status.success(),
        "nbdsh: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

fn read_unflushed(uri: &str, at: u64, len: usize) -> Vec<u8> {
    let script =
        format!("import sys\nsys.stdout.buffer.write(h.pread({len}, {at}))\nh.shutdown()\n");
    nbdsh(uri, &script)
}

fn powercut(control: &Path, keep: &str, seed: u64) -> Value {
    let seed = seed.to_string();
    let args = [
        "fault", "powercut", "vol0", "--json", "--keep", keep, "--seed", &seed,
    ];
    serde_json::from_str(&vraid_ctl_ok(control, &args)).unwrap()
}

fn wait_status(control: &Path, what: &str, f: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let v = volume_status(control, "vol0");
        if f(&v) {
            return v;
        }
        assert!(Instant::now() < deadline, "{what} not seen in 30s: {v}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn volatile(control: &Path, size: &str) {
    vraid_ctl_ok(
        control,
        &["set", "vol0", "--cache", "volatile", "--cache-size", size],
    );
}

#[test]
fn flushed_bytes_come_back_after_a_cut_drops_later_partial_overwrites() {
    // Arrange: A flushed over 0..64K; B, C unflushed over parts of it.
    let v = serve_vol("rt-overlap");
    volatile(&v.control, "8M");
    nbdsh(
        &v.uri,
        "h.pwrite(b'\\x0a' * 65536, 0)\nh.flush()\n\
         h.pwrite(b'\\x0b' * 8192, 4096)\nh.pwrite(b'\\x0c' * 100, 60000)\n\
         h.shutdown()\n",
    );
    let seen = read_unflushed(&v.uri, 0, 65536);
    assert_eq!(seen[4096..12288], [0x0b; 8192], "reads see cached bytes");
    assert_eq!(seen[60000..60100], [0x0c; 100]);
    // Act
    let cut = powercut(&v.control, "none", 5);
    // Assert
    assert_eq!(cut["dropped_writes"], 2, "{cut}");
    assert_eq!(read_unflushed(&v.uri, 0, 65536), vec![0x0a; 65536]);
    assert!(v.server.log().find("panicked").is_none());
}

#[test]
fn a_flush_on_one_connection_covers_writes_completed_on_another() {
    // Arrange: connection 1 writes and stays open; connection 2 flushes.
    let v = serve_vol("rt-twoconn");
    volatile(&v.control, "8M");
    let mut writer = nbdsh_command(
        &v.uri,
        "import sys\nh.pwrite(b'\\x5a' * 4096, 1 << 20)\n\
         print('written', flush=True)\nsys.stdin.readline()\nh.shutdown()\n",
    )
    .stdin(Stdio::piped())
    .stdout(Stdio::piped())
    .spawn()
    .unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(writer.stdout.as_mut().unwrap()),
        &mut line,
    )
    .unwrap();
    assert_eq!(line.trim(), "written");
    // Act
    nbdsh(&v.uri, "h.flush()\nh.shutdown()\n");
    let cut = powercut(&v.control, "none", 1);
    drop(writer.stdin.take());
    assert!(writer.wait().unwrap().success());
    // Assert
    assert_eq!(cut["dropped_writes"], 0, "{cut}");
    assert_eq!(read_unflushed(&v.uri, 1 << 20, 4096), vec![0x5a; 4096]);
}

/// Break: `WriteCache::write_zeroes`/`discard` chose between caching and
/// writing through when the request was built, not when it ran; a zeroing
/// stalled by a volume rule while the cache was volatile, released after
/// `set --cache writethrough`, was acknowledged yet only cached, and the
/// next power cut dropped it (old bytes came back).
#[test]
fn a_stalled_zeroing_released_after_the_switch_to_writethrough_survives_a_cut() {
    // Arrange
    let v = serve_vol("rt-stallzero");
    nbdsh(
        &v.uri,
        "h.pwrite(b'\\x11' * 65536, 0)\nh.flush()\nh.shutdown()\n",
    );
    volatile(&v.control, "8M");
    let out = vraid_ctl_ok(
        &v.control,
        &[
            "fault", "add", "vol0", "--volume", "--kind", "stall", "--op", "write",
        ],
    );
    let id = out.split_whitespace().nth(1).unwrap().to_string();
    let mut zeroer = nbdsh_command(&v.uri, "h.zero(65536, 0)\nh.shutdown()\n")
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    wait_status(&v.control, "the stalled zeroing", |s| {
        s["volume_faults"]["stalled"] == 1
    });
    // Act
    vraid_ctl_ok(&v.control, &["set", "vol0", "--cache", "writethrough"]);
    vraid_ctl_ok(&v.control, &["fault", "clear", &id]);
    assert!(zeroer.wait().unwrap().success());
    let cut = powercut(&v.control, "none", 2);
    // Assert
    assert_eq!(cut["dropped_writes"], 0, "{cut}");
    assert_eq!(read_unflushed(&v.uri, 0, 65536), vec![0; 65536]);
}

/// Break: a FUA write over most of a big cached write trimmed the cached
/// piece to its edges, but the edges kept the whole write's buffer alive
/// while the budget charged only their bytes: 40 rounds of a 4M cached
/// write + a FUA write over all but 1K of it held 160M under an 8M budget.
#[test]
fn fua_writes_trimming_big_cached_writes_keep_memory_near_the_budget() {
    // Arrange
    let v = serve_vol("rt-trimmem");
    volatile(&v.control, "8M");
    let pid = v.server.pid();
    nbdsh(&v.uri, "h.pwrite(b'\\x01' * (4 << 20), 0)\nh.shutdown()\n");
    let before = proc_status_kib(pid, "VmRSS");
    // Act
    nbdsh(
        &v.uri,
        "import nbd\nbig = b'\\x01' * (4 << 20)\nfua = b'\\x02' * ((4 << 20) - 1024)\n\
         for i in range(40):\n    h.pwrite(big, 0)\n    \
         h.pwrite(fua, 512, nbd.CMD_FLAG_FUA)\nh.shutdown()\n",
    );
    let after = proc_status_kib(pid, "VmRSS");
    // Assert: the data is right and memory grew by at most budget + slack.
    let st = volume_status(&v.control, "vol0");
    assert!(
        st["cache"]["dirty_bytes"].as_u64().unwrap() <= 8 << 20,
        "{st}"
    );
    let got = read_unflushed(&v.uri, 0, 4 << 20);
    assert_eq!(got[..512], [1; 512]);
    assert!(got[512..(4 << 20) - 512].iter().all(|&b| b == 2));
    assert_eq!(got[(4 << 20) - 512..], [1; 512]);
    let grown_kib = after.saturating_sub(before);
    assert!(
        grown_kib < 40 << 10,
        "RSS grew by {grown_kib} KiB (from {before} KiB) under an 8M cache"
    );
}

/// Break: a write that found the cache full while the volume failed every
/// write-back got EIO but stayed cached, so a client retrying writes grew
/// the cache without bound (200 x 1M writes: 200M dirty under a 1M
/// budget). A write whose room cannot be made now fails and is not kept.
#[test]
fn writes_failing_on_a_dead_volume_do_not_pile_up_in_the_cache() {
    // Arrange: both members fail writes, the cache is 1M.
    let v = serve_vol("rt-deadvol");
    volatile(&v.control, "1M");
    for member in ["0", "1"] {
        vraid_ctl_ok(
            &v.control,
            &[
                "fault", "add", "vol0", member, "--kind", "error", "--op", "write",
            ],
        );
    }
    let pid = v.server.pid();
    let before = proc_status_kib(pid, "VmRSS");
    // Act
    let out = nbdsh(
        &v.uri,
        "failed = 0\nfor i in range(64):\n    try:\n        \
         h.pwrite(b'\\x07' * (1 << 20), (i % 32) << 20)\n    \
         except nbd.Error:\n        failed += 1\nprint(failed)\nh.shutdown()\n",
    );
    // Assert
    assert_eq!(String::from_utf8_lossy(&out).trim(), "64");
    let st = volume_status(&v.control, "vol0");
    let dirty = st["cache"]["dirty_bytes"].as_u64().unwrap();
    assert!(dirty <= 1 << 20, "{dirty} dirty bytes under a 1M budget");
    let grown_kib = proc_status_kib(pid, "VmRSS").saturating_sub(before);
    assert!(grown_kib < 24 << 10, "RSS grew by {grown_kib} KiB");
    assert!(v.server.log().find("panicked").is_none());
}

/// Break: each cached piece was charged 64 bytes on top of its data but
/// costs about 200 (two B-tree entries, the `Arc` header): a client
/// writing single bytes without a FLUSH held 3x the budget (50M of RSS
/// under a 16M cache).
#[test]
fn one_byte_writes_without_flush_keep_memory_near_the_budget() {
    // Arrange
    let v = serve_vol("rt-tinywrites");
    volatile(&v.control, "8M");
    let pid = v.server.pid();
    nbdsh(&v.uri, "h.pwrite(b'x', 0)\nh.shutdown()\n");
    let before = proc_status_kib(pid, "VmRSS");
    // Act: 150k 1-byte writes, 64 in flight, never a FLUSH.
    nbdsh(
        &v.uri,
        "buf = nbd.Buffer.from_bytearray(bytearray(b'x'))\n\
         for i in range(150000):\n    h.aio_pwrite(buf, (i * 7919) % (60 << 20))\n    \
         while h.aio_in_flight() > 64:\n        h.poll(-1)\n\
         while h.aio_in_flight() > 0:\n    h.poll(-1)\nh.shutdown()\n",
    );
    // Assert
    let st = volume_status(&v.control, "vol0");
    assert!(st["cache"]["dirty_writes"].as_u64().unwrap() > 1000, "{st}");
    let grown_kib = proc_status_kib(pid, "VmRSS").saturating_sub(before);
    assert!(
        grown_kib < 14 << 10,
        "RSS grew by {grown_kib} KiB under an 8M cache"
    );
}

/// Breaks: `--probability nan` and `--probability 1e309` were accepted
/// and installed as "always" (the CLI sent JSON `null`); a volume rule
/// starting past the end of the volume was installed and never fired.
#[test]
fn nonsense_probabilities_and_rules_past_the_end_are_refused() {
    let v = serve_vol("rt-badinput");
    for (args, needle) in [
        (
            vec!["--kind", "error", "--probability", "nan"],
            "probability",
        ),
        (
            vec!["--kind", "error", "--probability", "1e309"],
            "probability",
        ),
        (vec!["--kind", "error", "--probability=-0.5"], "probability"),
        (
            vec!["--kind", "bad-sector", "--offset", "1T", "--length", "4K"],
            "beyond the end",
        ),
    ] {
        let mut all = vec!["fault", "add", "vol0", "--volume"];
        all.extend(&args);
        let out = vraid_ctl(&v.control, &all);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} succeeded");
        assert!(err.contains(needle), "{args:?}: {err}");
    }
    let list = vraid_ctl_ok(&v.control, &["fault", "list", "--json"]);
    let list: Value = serde_json::from_str(&list).unwrap();
    assert_eq!(list["volume_faults"].as_array().unwrap().len(), 0, "{list}");
    assert!(v.server.log().find("panicked").is_none());
}
