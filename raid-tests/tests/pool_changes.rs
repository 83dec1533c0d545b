//! Pool snapshots as a backup source (issue 11) against the real daemon and
//! real clients: the `qemu:dirty-bitmap:SNAP` context over NBD after an
//! ext4 file changed (nbdfuse + loop + mkfs.ext4 + debugfs, nbdinfo
//! --map, an incremental copy with qemu-img dd); `volume revert` and
//! shrinking `volume resize`, refused while a client is connected unless
//! `--force`; `pool check --repair`.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use raid_tests::fuse_loop::FuseLoop;
use raid_tests::*;

const CLUSTER: u64 = 64 << 10;

/// A RAID-5 array `vol0` of three 128M members with a pool of `cluster`
/// clusters, served with a control socket.
fn pool_server(dir: &Path, cluster: &str) -> (Server, PathBuf) {
    let paths = member_paths(dir, 3);
    create_array(5, "64K", "128M", "vol0", &paths);
    let control = dir.join("control.sock");
    let mut args: Vec<&str> = paths.iter().map(|p| p.to_str().unwrap()).collect();
    args.extend(["--control", control.to_str().unwrap()]);
    let server = Server::start(&args);
    vraid_ctl_ok(
        &control,
        &["pool", "create", "vol0", "--cluster-size", cluster],
    );
    (server, control)
}

/// `nbdinfo --map=CONTEXT --json`: the byte ranges whose type has bit 0.
fn dirty_ranges(uri: &str, context: &str) -> Vec<(u64, u64)> {
    let out = run_ok(Command::new("nbdinfo").args([&format!("--map={context}"), "--json", uri]));
    let v: serde_json::Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
    v.as_array()
        .unwrap()
        .iter()
        .filter(|e| e["type"].as_u64().unwrap() & 1 == 1)
        .map(|e| (e["offset"].as_u64().unwrap(), e["length"].as_u64().unwrap()))
        .collect()
}

fn clusters_of(ranges: &[(u64, u64)]) -> BTreeSet<u64> {
    ranges
        .iter()
        .flat_map(|&(off, len)| off / CLUSTER..(off + len).div_ceil(CLUSTER))
        .collect()
}

/// The 4 KiB file system blocks of `path` (debugfs on the unmounted device).
fn file_blocks(dev: &str, path: &str) -> Vec<(u64, u64)> {
    let out = run_ok(Command::new("debugfs").args(["-R", &format!("blocks {path}"), dev]));
    let blocks: Vec<u64> = out
        .split_whitespace()
        .map(|b| b.parse().unwrap_or_else(|e| panic!("debugfs: {e}: {out}")))
        .collect();
    assert!(!blocks.is_empty(), "debugfs found no blocks of {path}");
    blocks.iter().map(|b| (b * 4096, 4096)).collect()
}

fn mount(fl: &FuseLoop) -> PathBuf {
    let at = fl.fs_dir();
    std::fs::create_dir_all(&at).unwrap();
    run_ok(Command::new("mount").arg(fl.dev()).arg(&at));
    at
}

fn umount(fl: &FuseLoop) {
    fl.umount_fs();
}

/// Bytes `off..off + len` of an export, read with `qemu-img dd`.
fn read_range(uri: &str, off: u64, len: u64, scratch: &Path) -> Vec<u8> {
    let out = scratch.join("range.raw");
    let _ = std::fs::remove_file(&out);
    let (bs, skip, count) = (CLUSTER, off / CLUSTER, len.div_ceil(CLUSTER));
    assert!(
        off.is_multiple_of(CLUSTER),
        "dirty extents are cluster-aligned: {off}"
    );
    run_ok(Command::new("qemu-img").args([
        "dd",
        "-f",
        "raw",
        "-O",
        "raw",
        &format!("if={uri}"),
        &format!("of={}", out.display()),
        &format!("bs={bs}"),
        &format!("skip={skip}"),
        // qemu-img dd counts the skipped blocks in `count`.
        &format!("count={}", skip + count),
    ]));
    let mut data = std::fs::read(&out).unwrap();
    data.truncate(len as usize);
    data
}

#[test]
fn an_ext4_file_changed_after_a_snapshot_is_what_the_dirty_bitmap_shows() {
    // Arrange: ext4 with eight files on a thin volume, then a snapshot.
    let dir = scratch_dir("pool-dirty");
    let (server, control) = pool_server(dir.path(), "64K");
    vraid_ctl_ok(
        &control,
        &["volume", "create", "vol0", "fs", "--size", "64M"],
    );
    let fuse = dir.path().join("fuse");
    let fl = FuseLoop::attach(&server.uri("fs"), &fuse);
    run_ok(
        Command::new("mkfs.ext4")
            .args(["-q", "-F", "-b", "4096"])
            .args(["-E", "lazy_itable_init=0,lazy_journal_init=0", fl.dev()]),
    );
    let root = mount(&fl);
    for i in 0..8u64 {
        std::fs::write(root.join(format!("f{i}")), pseudo_random(200_000, i)).unwrap();
    }
    umount(&fl);
    drop(fl);
    vraid_ctl_ok(&control, &["volume", "snapshot", "fs", "base"]);

    // Act: one file rewritten in place.
    let fl = FuseLoop::attach(&server.uri("fs"), &fuse);
    let root = mount(&fl);
    {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .open(root.join("f3"))
            .unwrap();
        f.write_all(&pseudo_random(200_000, 99)).unwrap();
        f.sync_all().unwrap();
    }
    umount(&fl);
    let changed = clusters_of(&file_blocks(fl.dev(), "/f3"));
    let others: Vec<BTreeSet<u64>> = [0, 1, 2, 4, 5, 6, 7]
        .iter()
        .map(|i| clusters_of(&file_blocks(fl.dev(), &format!("/f{i}"))))
        .collect();
    drop(fl);
    let info = run_ok(Command::new("nbdinfo").args(["--json", &server.uri("fs")]));
    let dirty_ranges = dirty_ranges(&server.uri("fs"), "qemu:dirty-bitmap:base");
    let dirty = clusters_of(&dirty_ranges);
    let mut backup = read_export(&server.uri("base"), dir.path());
    for &(off, len) in &dirty_ranges {
        let piece = read_range(&server.uri("fs"), off, len, dir.path());
        backup[off as usize..(off + len) as usize].copy_from_slice(&piece);
    }
    let now = read_export(&server.uri("fs"), dir.path());

    // Assert
    assert!(
        info.contains("qemu:dirty-bitmap:base"),
        "not offered: {info}"
    );
    assert!(
        changed.is_subset(&dirty),
        "file clusters {changed:?} not all in {dirty:?}"
    );
    for o in &others {
        let clean: Vec<&u64> = o.difference(&changed).collect();
        assert!(
            clean.iter().all(|c| !dirty.contains(c)),
            "an unchanged file is dirty: {o:?} in {dirty:?}"
        );
    }
    let extra = dirty.len() - changed.len();
    eprintln!(
        "dirty clusters: {} (the file's {}, ext4 metadata {extra}): {dirty:?}",
        dirty.len(),
        changed.len()
    );
    assert!(
        extra <= 16,
        "{extra} clusters beyond the file's: {dirty:?} (file {changed:?})"
    );
    assert!(
        backup == now,
        "base + the dirty ranges differs from the volume"
    );
    vraid_ctl_ok(&control, &["pool", "check", "vol0"]);
    assert_eq!(server.stop(), 0);
}

/// Runs a control verb until it succeeds (a closed client's connection
/// ends asynchronously); panics after 10 s.
fn ctl_eventually(control: &Path, args: &[&str]) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let out = vraid_ctl(control, args);
        if out.status.success() {
            return String::from_utf8_lossy(&out.stdout).into_owned();
        }
        assert!(
            Instant::now() < deadline,
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn size_of(uri: &str) -> u64 {
    run_ok(Command::new("nbdinfo").args(["--size", uri]))
        .trim()
        .parse()
        .unwrap()
}

#[test]
fn revert_and_shrink_refuse_a_volume_in_use_unless_forced_and_give_space_back() {
    // Arrange
    let dir = scratch_dir("pool-revert");
    let (server, control) = pool_server(dir.path(), "1M");
    vraid_ctl_ok(
        &control,
        &["volume", "create", "vol0", "v", "--size", "32M"],
    );
    qemu_io(
        &server.uri("v"),
        &["write -P 1 0 8M".into(), "flush".into()],
    );
    vraid_ctl_ok(&control, &["volume", "snapshot", "v", "s"]);
    qemu_io(
        &server.uri("v"),
        &[
            "write -P 2 0 4M".into(),
            "write -P 3 20M 1M".into(),
            "flush".into(),
        ],
    );

    // Act: with a client connected, then without.
    let fl = FuseLoop::attach(&server.uri("v"), &dir.path().join("fuse"));
    let busy_revert = vraid_ctl(&control, &["volume", "revert", "v", "s"]);
    let busy_shrink = vraid_ctl(&control, &["volume", "resize", "v", "--size", "16M"]);
    vraid_ctl_ok(&control, &["volume", "resize", "v", "--size", "48M"]);
    drop(fl);
    ctl_eventually(&control, &["volume", "revert", "v", "s"]);
    let after_revert = size_of(&server.uri("v"));
    qemu_io(
        &server.uri("v"),
        &["read -P 1 0 8M".into(), "read -P 0 8M 24M".into()],
    );
    vraid_ctl_ok(&control, &["volume", "resize", "v", "--size", "4M"]);
    let after_shrink = size_of(&server.uri("v"));
    let list = vraid_ctl_ok(&control, &["pool", "list", "--json"]);
    let fl = FuseLoop::attach(&server.uri("v"), &dir.path().join("fuse2"));
    vraid_ctl_ok(&control, &["volume", "revert", "v", "s", "--force"]);
    drop(fl);
    let repaired = vraid_ctl_ok(&control, &["pool", "check", "vol0", "--repair"]);

    // Assert
    for out in [&busy_revert, &busy_shrink] {
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && err.contains("connected") && err.contains("--force"),
            "{err}"
        );
    }
    assert_eq!(after_revert, 32 << 20);
    assert_eq!(after_shrink, 4 << 20);
    let v: serde_json::Value = serde_json::from_str(&list).unwrap();
    let vol = v[0]["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["name"] == "v")
        .unwrap()
        .clone();
    assert_eq!(vol["mapped_bytes"], 4 << 20, "{vol}");
    assert_eq!(size_of(&server.uri("v")), 32 << 20);
    qemu_io(&server.uri("v"), &["read -P 1 0 8M".into()]);
    assert!(
        !repaired.contains("repaired:"),
        "a clean pool needed repairs: {repaired}"
    );
    assert_eq!(server.stop(), 0);
}
