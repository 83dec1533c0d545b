//! The write log (`vraid log ...`, docs/FAULTS.md "Write log") with real
//! clients: qemu-io's writes and flushes replay exactly to each flush and
//! mark; ext4 made and used through nbdfuse + loop is recorded, and
//! `vraid log check` finds it e2fsck-clean at every flush point and at
//! seeded subsets of the unflushed writes between them, and the full
//! replay equals the volume byte for byte; torn, corrupt and foreign
//! logs get clear errors.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use raid_tests::fuse_loop::FuseLoop;
use raid_tests::*;
use serde_json::Value;

/// A RAID-1 of two sparse 64M members served with its own control socket.
struct Vol {
    dir: tempfile::TempDir,
    control: PathBuf,
    _server: Server,
    uri: String,
}

fn serve_vol(test: &str) -> Vol {
    serve_vol_with(test, &[])
}

fn serve_vol_with(test: &str, extra: &[&str]) -> Vol {
    let dir = scratch_dir(test);
    let paths = member_paths(dir.path(), 2);
    create_array(1, "64K", "64M", "vol0", &paths);
    let control = dir.path().join("control.sock");
    let mut args: Vec<&str> = paths.iter().map(|p| p.to_str().unwrap()).collect();
    args.extend(["--control", control.to_str().unwrap()]);
    args.extend(extra);
    let server = Server::start(&args);
    let uri = server.uri("vol0");
    Vol {
        dir,
        control,
        _server: server,
        uri,
    }
}

impl Vol {
    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}

/// `vraid log ARGS...` (offline verbs): (success, stdout + stderr).
fn vraid_log(args: &[&str]) -> (bool, String) {
    let mut all = vec!["log"];
    all.extend(args);
    let out = run(vraid(&all));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

fn list_json(log: &Path) -> Value {
    let (ok, text) = vraid_log(&["list", "--json", log.to_str().unwrap()]);
    assert!(ok, "{text}");
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"))
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[test]
fn qemu_io_writes_replay_exactly_to_each_flush_and_mark() {
    // Arrange: a log of three rounds of writes, each closed by a flush,
    // a mark after the second, and an unflushed tail.
    let v = serve_vol("wlog-qemu");
    let log = v.path("qemu.wlog");
    vraid_ctl_ok(&v.control, &["log", "start", "vol0", s(&log)]);
    qemu_io(&v.uri, &["write -P 0x11 0 64k".into(), "flush".into()]);
    qemu_io(&v.uri, &["write -P 0x22 64k 64k".into(), "flush".into()]);
    vraid_ctl_ok(&v.control, &["log", "mark", "vol0", "two"]);
    qemu_io(
        &v.uri,
        &[
            "write -P 0x33 0 4k".into(),
            "write -z 1M 64k".into(),
            "discard 64k 4k".into(),
        ],
    );
    let stopped = vraid_ctl_ok(&v.control, &["log", "stop", "vol0"]);
    assert!(stopped.contains("stopped"), "{stopped}");
    // A write after the stop is not recorded.
    qemu_io(&v.uri, &["write -P 0x44 2M 4k".into()]);
    let listed = list_json(&log);
    assert_eq!(listed["complete"], true, "{listed}");
    let flushes = listed["flushes"].as_array().unwrap().len();
    assert!(flushes >= 2, "{listed}");

    // Act + assert: the image after the mark holds both rounds and
    // nothing later; the full replay holds the tail too and equals the
    // volume but for the write after the stop.
    let img = v.path("img");
    let (ok, text) = vraid_log(&["replay", s(&log), s(&img), "--to-mark", "two"]);
    assert!(ok, "{text}");
    let bytes = std::fs::read(&img).unwrap();
    assert_eq!(bytes.len() as u64, listed["volume_size"].as_u64().unwrap());
    assert!(bytes[..65536].iter().all(|&b| b == 0x11));
    assert!(bytes[65536..131072].iter().all(|&b| b == 0x22));
    assert!(bytes[131072..].iter().all(|&b| b == 0));
    let (ok, text) = vraid_log(&["replay", s(&log), s(&img), "--to-flush", "0"]);
    assert!(ok, "{text}");
    let full = v.path("full");
    let (ok, text) = vraid_log(&["replay", s(&log), s(&full)]);
    assert!(ok, "{text}");
    let mut volume = read_export(&v.uri, v.dir.path());
    volume[2 << 20..(2 << 20) + 4096].fill(0);
    assert!(
        std::fs::read(&full).unwrap() == volume,
        "full replay != volume"
    );
}

/// A metrics sample's value.
fn sample(text: &str, name: &str) -> f64 {
    let line = text
        .lines()
        .find(|l| l.starts_with(name) && l[name.len()..].starts_with('{'))
        .unwrap_or_else(|| panic!("no {name} in:\n{text}"));
    line.rsplit(' ').next().unwrap().parse().unwrap()
}

#[test]
fn the_running_log_shows_in_status_and_metrics() {
    // Arrange
    let metrics = format!("127.0.0.1:{}", free_port());
    let v = serve_vol_with("wlog-status", &["--metrics", &metrics]);
    let log = v.path("st.wlog");
    let st = volume_status(&v.control, "vol0");
    assert!(st.get("write_log").is_none(), "no log yet: {st}");
    assert_eq!(
        sample(&scrape(&metrics), "vraid_volume_write_log_active"),
        0.0
    );
    // Act
    vraid_ctl_ok(&v.control, &["log", "start", "vol0", s(&log)]);
    qemu_io(&v.uri, &["write -P 0x11 0 64k".into(), "flush".into()]);
    // Assert: JSON, text and metrics name the file, entries and bytes.
    let st = volume_status(&v.control, "vol0");
    let wl = &st["write_log"];
    assert_eq!(wl["path"], s(&log), "{st}");
    assert_eq!(wl["active"], true, "{st}");
    // A write, then flushes (qemu-io's and the one at its close).
    let entries = wl["entries"].as_u64().unwrap();
    assert!(entries >= 2, "{st}");
    let bytes = wl["bytes"].as_u64().unwrap();
    assert_eq!(bytes, 512 + 40 * entries + 65536, "{st}");
    let text = vraid_ctl_ok(&v.control, &["status"]);
    let line = format!("write log: {} (recording), {entries} entries", s(&log));
    assert!(text.contains(&line), "{text}");
    let m = scrape(&metrics);
    assert_eq!(sample(&m, "vraid_volume_write_log_active"), 1.0);
    assert_eq!(sample(&m, "vraid_volume_write_log_entries"), entries as f64);
    assert_eq!(sample(&m, "vraid_volume_write_log_bytes"), bytes as f64);
    vraid_ctl_ok(&v.control, &["log", "stop", "vol0"]);
    assert!(volume_status(&v.control, "vol0").get("write_log").is_none());
}

#[test]
fn torn_corrupt_and_foreign_logs_get_clear_errors() {
    // Arrange: a small complete log.
    let v = serve_vol("wlog-bad");
    let log = v.path("a.wlog");
    vraid_ctl_ok(&v.control, &["log", "start", "vol0", s(&log)]);
    let again = vraid_ctl(&v.control, &["log", "start", "vol0", s(&v.path("b.wlog"))]);
    assert!(!again.status.success(), "a second log on one volume");
    qemu_io(&v.uri, &["write -P 0x5a 0 128k".into(), "flush".into()]);
    qemu_io(&v.uri, &["write -P 0x5b 128k 4k".into(), "flush".into()]);
    vraid_ctl_ok(&v.control, &["log", "stop", "vol0"]);
    let good = std::fs::read(&log).unwrap();
    let img = v.path("img");
    let bad = v.path("bad.wlog");
    let replay = |extra: &[&str]| {
        let mut args = vec!["replay", s(&bad), s(&img)];
        args.extend(extra);
        vraid_log(&args)
    };

    // A truncated log: refused, named, usable with --allow-torn.
    std::fs::write(&bad, &good[..good.len() - 100]).unwrap();
    let (ok, text) = replay(&[]);
    assert!(
        !ok && text.contains("unfinished") && text.contains("--allow-torn"),
        "{text}"
    );
    let (ok, text) = replay(&["--allow-torn"]);
    assert!(ok, "{text}");
    // A flipped payload byte: the checksum names it.
    let mut flipped = good.clone();
    flipped[512 + 40 + 1000] ^= 0x40;
    std::fs::write(&bad, &flipped).unwrap();
    let (ok, text) = replay(&[]);
    assert!(!ok && text.contains("entry 0: checksum mismatch"), "{text}");
    // Not a log at all; a point not in the log.
    std::fs::write(&bad, b"just some file\n").unwrap();
    let (ok, text) = replay(&[]);
    assert!(!ok && text.contains("not a vraid write log"), "{text}");
    std::fs::write(&bad, &good).unwrap();
    let (ok, text) = replay(&["--to-mark", "nope"]);
    assert!(!ok && text.contains("no mark \"nope\""), "{text}");
    let (ok, text) = replay(&["--to-flush", "99"]);
    assert!(!ok && text.contains("flushes"), "{text}");
    let (ok, text) = vraid_log(&["crashpoints", s(&bad), "--subsets", "2"]);
    assert!(ok && text.contains("flush:0"), "{text}");
}

/// Writes a file and fsyncs it and its directory.
fn write_synced(path: &Path, data: &[u8]) {
    std::fs::write(path, data).unwrap();
    std::fs::File::open(path).unwrap().sync_all().unwrap();
    let dir = std::fs::File::open(path.parent().unwrap()).unwrap();
    dir.sync_all().unwrap();
}

/// The check `vraid log check` runs on each state: replay the journal
/// (what mounting does), then a read-only full check that must be clean.
const FSCK: &str = "e2fsck -E journal_only -y \"$VRAID_LOG_IMAGE\" >/dev/null 2>&1; \
                    e2fsck -fn \"$VRAID_LOG_IMAGE\"";

#[test]
fn ext4_workload_is_e2fsck_clean_at_every_flush_point_and_crash_subset() {
    // Arrange: mkfs, a mark, then files written, fsynced, renamed and
    // removed through nbdfuse + loop, all recorded.
    let v = serve_vol("wlog-ext4");
    let log = v.path("ext4.wlog");
    let (mnt, fsdir) = (v.path("fuse"), v.path("fuse.fs"));
    std::fs::create_dir_all(&fsdir).unwrap();
    vraid_ctl_ok(&v.control, &["log", "start", "vol0", s(&log)]);
    {
        let fl = FuseLoop::attach(&v.uri, &mnt);
        run_ok(Command::new("mkfs.ext4").args(["-q", "-F"]).arg(fl.dev()));
        vraid_ctl_ok(&v.control, &["log", "mark", "vol0", "mkfs-done"]);
        run_ok(Command::new("mount").arg(fl.dev()).arg(&fsdir));
        for i in 0..8u64 {
            let data = pseudo_random(3000 + (i as usize * 70_000) % 400_000, i);
            write_synced(&fsdir.join(format!("f{i}")), &data);
            if i % 3 == 1 {
                std::fs::rename(fsdir.join(format!("f{i}")), fsdir.join(format!("g{i}"))).unwrap();
            }
            if i % 4 == 3 {
                std::fs::remove_file(fsdir.join(format!("f{}", i - 1))).unwrap();
            }
        }
        std::fs::create_dir(fsdir.join("d")).unwrap();
        write_synced(&fsdir.join("d/last"), b"last file");
        run_ok(Command::new("umount").arg(&fsdir));
    }
    let stopped = vraid_ctl_ok(&v.control, &["log", "stop", "vol0"]);
    let listed = list_json(&log);
    let flushes = listed["flushes"].as_array().unwrap().len();
    assert!(
        flushes >= 10,
        "only {flushes} flushes in {stopped}: {listed}"
    );

    // Act: every flush point after mkfs, and 3 seeded subsets of the
    // unflushed writes of each window between flushes.
    let img = v.path("check.img");
    let (ok, text) = vraid_log(&[
        "check",
        s(&log),
        "--image",
        s(&img),
        "--after-mark",
        "mkfs-done",
        "--subsets",
        "3",
        "--seed",
        "7",
        "--",
        "sh",
        "-c",
        FSCK,
    ]);

    // Assert: all clean, flush points and subsets both checked.
    assert!(ok, "{text}");
    let count = |what: &str| {
        text.lines()
            .filter(|l| l.starts_with("ok") && l.contains(what))
            .count()
    };
    assert!(count(" flush:") >= 5, "{text}");
    assert!(count(" subset:") >= 5, "{text}");
    eprintln!("{}", text.lines().last().unwrap_or(""));
    // The same check finds the broken states: a crash in the middle of
    // mkfs (its first flush points, subsets of its writes) is not clean.
    // Bounded by the mark, not by a count: flush points come first, and
    // how many the mkfs and the files make depends on the machine.
    let (ok, text) = vraid_log(&[
        "check",
        s(&log),
        "--image",
        s(&img),
        "--subsets",
        "5",
        "--before-mark",
        "mkfs-done",
        "--",
        "sh",
        "-c",
        FSCK,
    ]);
    assert!(!ok && text.contains("FAILED subset:"), "{text}");
    assert!(text.contains("Bad magic number"), "{text}");
    assert!(text.contains("crash points failed the check"), "{text}");
    // The full replay is the volume, byte for byte.
    let full = v.path("full.img");
    let (ok, text) = vraid_log(&["replay", s(&log), s(&full)]);
    assert!(ok, "{text}");
    assert!(std::fs::read(&full).unwrap() == read_export(&v.uri, v.dir.path()));
}

/// `nbdkit [OPTS] memory SIZE` on a Unix socket in `dir`: (child, its URI).
fn nbdkit_memory(
    dir: &Path,
    tag: &str,
    opts: &[&str],
    size: &str,
) -> (std::process::Child, String) {
    let sock = dir.join(format!("{tag}.sock"));
    let child = Command::new("nbdkit")
        .args(["-f", "--exit-with-parent", "-U"])
        .arg(&sock)
        .args(opts)
        .args(["memory", size])
        .stdin(Stdio::null())
        .spawn()
        .expect("spawn nbdkit (package nbdkit)");
    let deadline = Instant::now() + Duration::from_secs(20);
    while !sock.exists() {
        assert!(Instant::now() < deadline, "nbdkit did not come up");
        std::thread::sleep(Duration::from_millis(20));
    }
    (child, format!("nbd+unix:///?socket={}", sock.display()))
}

#[test]
fn replay_onto_another_volume_and_nbdkit_equals_the_file_replay() {
    // Arrange: a qemu-io workload on vol0 of one daemon with data, a
    // zeroed range, a discard and an unflushed tail; a second daemon's
    // fresh volume of the same geometry; nbdkit memory exports.
    let v = serve_vol("wlog-nbd-src");
    let log = v.path("nbd.wlog");
    vraid_ctl_ok(&v.control, &["log", "start", "vol0", s(&log)]);
    qemu_io(
        &v.uri,
        &[
            "write -P 0x11 0 64k".into(),
            "write -P 0x55 1M 128k".into(),
            "write -P 0x66 3M 64k".into(),
            "flush".into(),
        ],
    );
    qemu_io(
        &v.uri,
        &[
            "write -P 0x22 64k 64k".into(),
            "write -z 1M 64k".into(),
            "discard 3M 64k".into(),
            "flush".into(),
        ],
    );
    qemu_io(&v.uri, &["write -P 0x33 0 4k".into()]);
    vraid_ctl_ok(&v.control, &["log", "stop", "vol0"]);
    let listed = list_json(&log);
    let flushes = listed["flushes"].as_array().unwrap().len();
    // Each qemu-io also flushes at its close: the tail's close is the
    // last flush, so the one before it ends the second round.
    assert!(flushes >= 4, "{listed}");
    let k = (flushes - 2).to_string();
    let size = listed["volume_size"].as_u64().unwrap();
    let other = serve_vol("wlog-nbd-dst");
    let (mut kit, kit_uri) = nbdkit_memory(other.dir.path(), "kit", &[], "64M");
    let (mut small, small_uri) = nbdkit_memory(other.dir.path(), "small", &[], "1M");
    let (mut ro, ro_uri) = nbdkit_memory(other.dir.path(), "ro", &["-r"], "64M");

    // Act: the flush point ending the second round replayed onto a file, the other volume
    // and nbdkit; then onto an export too small.
    let img = v.path("img");
    let to_k = format!("flush:{k}");
    let to = ["--to", to_k.as_str()];
    let replay = |target: &str| vraid_log(&[&["replay", s(&log), target][..], &to[..]].concat());
    let (ok, text) = vraid_log(&["replay", s(&log), s(&img), "--to-flush", &k]);
    assert!(ok, "{text}");
    let (ok, text) = replay(&other.uri);
    assert!(ok, "{text}");
    assert!(text.contains(&other.uri), "{text}");
    let (ok, text) = replay(&kit_uri);
    assert!(ok, "{text}");
    let (ok, too_small) = replay(&small_uri);
    let (ro_ok, read_only) = replay(&ro_uri);

    // Assert: the file holds both rounds (zeroed and discarded ranges
    // read zero, the tail absent); the volume and nbdkit equal it.
    let file = std::fs::read(&img).unwrap();
    assert_eq!(file.len() as u64, size);
    assert!(file[..131072].iter().all(|&b| b != 0), "rounds missing");
    assert!(file[..4096].iter().all(|&b| b == 0x11), "tail replayed");
    assert!(file[1 << 20..(1 << 20) + 65536].iter().all(|&b| b == 0));
    assert!(file[(1 << 20) + 65536..(1 << 20) + 131072]
        .iter()
        .all(|&b| b == 0x55));
    assert!(file[3 << 20..(3 << 20) + 65536].iter().all(|&b| b == 0));
    assert!(
        read_export(&other.uri, other.dir.path()) == file,
        "volume != file replay"
    );
    let cmp = run(Command::new("qemu-img").args([
        "compare",
        "-f",
        "raw",
        "-F",
        "raw",
        s(&img),
        &kit_uri,
    ]));
    assert!(
        cmp.status.success(),
        "nbdkit != file replay: {}",
        String::from_utf8_lossy(&cmp.stdout)
    );
    assert!(!ok, "a 1M export took a {size}-byte replay: {too_small}");
    assert!(
        too_small.contains("smaller than the log's volume"),
        "{too_small}"
    );
    // `log check --each-flush` still builds its states on a file: every
    // flush point (the log ends at one: the tail's close).
    let scratch = v.path("check.img");
    let (ok, text) = vraid_log(&[
        "check",
        s(&log),
        "--image",
        s(&scratch),
        "--each-flush",
        "--",
        "test",
        "-f",
        "{}",
    ]);
    assert!(ok, "{text}");
    assert!(
        text.contains(&format!("{flushes} crash points checked, 0 failed")),
        "{text}"
    );
    assert!(!ro_ok, "a read-only export took the replay: {read_only}");
    assert!(read_only.contains("read-only"), "{read_only}");
    for c in [&mut kit, &mut small, &mut ro] {
        let _ = c.kill();
        let _ = c.wait();
    }
}
