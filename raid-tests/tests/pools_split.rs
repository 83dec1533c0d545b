//! Version-3 pools (split clusters, docs/FORMAT.md §11 "Split clusters")
//! against the real daemon and real clients: fio verify on four volumes of
//! one RAID-5 pool with snapshots taken and deleted during the load; a
//! SIGKILL loop (20 rounds) during snapshots, clones, reverts and deletes
//! under fio load, each followed by `vraid pool check` and a read of every
//! flushed marker (written into split clusters); nbdcopy of a volume and
//! its snapshots and `nbdinfo --map=qemu:dirty-bitmap:SNAP` after writes
//! of every split case (a split, a fill, an in-place write into a record,
//! a split on top), before and after a restart; space back after a
//! snapshot's delete once the completer has filled the splits, also for
//! splits left incomplete by a SIGKILL (the walk of the split pages at
//! open).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use raid_tests::*;

const CLUSTER: u64 = 1 << 20;

/// A RAID-5 array `vol0` of three members of `member_size` with a
/// version-3 pool of 1 MiB clusters (64 KiB granules), served with a
/// control socket; the serve arguments for a restart.
fn split_pool(dir: &Path, member_size: &str) -> (Server, PathBuf, Vec<String>) {
    let paths = member_paths(dir, 3);
    create_array(5, "64K", member_size, "vol0", &paths);
    let control = dir.join("control.sock");
    let mut args: Vec<String> = paths
        .iter()
        .map(|p| p.to_str().unwrap().to_string())
        .collect();
    args.extend(["--control".into(), control.to_str().unwrap().into()]);
    let server = start(&args);
    let pool = ["pool", "create", "vol0", "--cluster-size", "1M"];
    vraid_ctl_ok(&control, &[&pool[..], &["--split-clusters"]].concat());
    let list = vraid_ctl_ok(&control, &["pool", "list"]);
    assert!(list.contains("version 3 (split clusters)"), "{list}");
    (server, control, args)
}

fn start(args: &[String]) -> Server {
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    Server::start(&refs)
}

/// `vraid pool check vol0 --json` (panics unless clean): the report.
fn check(control: &Path) -> serde_json::Value {
    let out = vraid_ctl_ok(control, &["pool", "check", "vol0", "--json"]);
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("pool check JSON: {e}\n{out}"))
}

fn spawn_ctl(control: &Path, args: &[&str]) -> Child {
    let mut c = vraid(args);
    c.arg("--control").arg(control);
    c.stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

#[test]
fn fio_verify_on_four_volumes_of_one_split_raid5_pool_with_snapshots_during_the_load() {
    // Arrange
    let dir = scratch_dir("split-fio");
    let (server, control, _) = split_pool(dir.path(), "512M");
    for i in 0..4 {
        let name = format!("v{i}");
        vraid_ctl_ok(
            &control,
            &["volume", "create", "vol0", &name, "--size", "32M"],
        );
    }

    // Act: four fio verify jobs, rate-limited so that their writes last
    // ~3 s, and a snapshot of every volume every 250 ms (the round before
    // the last deleted: records released under the load).
    let mut jobs: Vec<Child> = (0..4)
        .map(|i| {
            fio_verify_cmd(&server.uri(&format!("v{i}")), &format!("v{i}"), "24M", "0")
                .arg("--rate=8m")
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let mut during = 0;
    for round in 0..10 {
        let running = jobs.iter_mut().all(|j| j.try_wait().unwrap().is_none());
        for i in 0..4 {
            let snap = format!("v{i}-s{round}");
            vraid_ctl_ok(&control, &["volume", "snapshot", &format!("v{i}"), &snap]);
            if round >= 2 {
                vraid_ctl_ok(
                    &control,
                    &["volume", "delete", &format!("v{i}-s{}", round - 2)],
                );
            }
        }
        during += usize::from(running);
        std::thread::sleep(Duration::from_millis(250));
    }

    // Assert: every job verified, the pool checks clean with splits in
    // it, and a snapshot taken now reads as its volume.
    for job in jobs {
        assert_fio_clean(job);
    }
    assert!(
        during >= 4,
        "only {during} snapshot rounds ran under all four loads"
    );
    let report = check(&control);
    assert_eq!(report["volumes"], 4 + 4 * 2, "{report}");
    assert!(report["split_records"].as_u64().unwrap() > 0, "{report}");
    for i in 0..4 {
        let (v, s) = (format!("v{i}"), format!("v{i}-last"));
        vraid_ctl_ok(&control, &["volume", "snapshot", &v, &s]);
        run_ok(
            Command::new("qemu-img")
                .args(["compare", "-f", "raw", "-F", "raw"])
                .args([server.uri(&v), server.uri(&s)]),
        );
    }
    assert_eq!(server.stop(), 0);
}

/// Marker `r` of the kill loop: 4 KiB at 32 MiB + 68 KiB × r of `w`, past
/// fio's range, in a granule of its own (two clusters split over rounds).
fn marker(r: u64) -> u64 {
    (32 << 20) + r * (68 << 10)
}

fn marker_reads(round: u64) -> Vec<String> {
    (0..=round)
        .map(|r| format!("read -P {} {} 4k", r + 1, marker(r)))
        .collect()
}

/// fio random writes with fsyncs on `uri` for up to a minute (killed).
/// One process (`--thread`: the job a thread, not a forked worker that
/// would outlive the SIGKILL of its parent).
fn fio_load(uri: &str) -> Child {
    Command::new("fio")
        .args(["--name=load", "--ioengine=nbd", "--rw=randwrite", "--bs=4k"])
        .arg("--thread")
        .args([
            "--iodepth=8",
            "--size=32M",
            "--time_based",
            "--runtime=60",
            "--fsync=32",
        ])
        .arg(format!("--uri={uri}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

/// Writes counted on pool volume `name` (status).
fn writes(control: &Path, name: &str) -> u64 {
    let status = status_json(control);
    let v = status["pool_volumes"]
        .as_array()
        .and_then(|v| v.iter().find(|v| v["name"] == name));
    let v = v.unwrap_or_else(|| panic!("no pool volume {name} in {status}"));
    v["io"]["writes"].as_u64().unwrap()
}

/// Waits (polling status, 30 s at most) until `name` took `more` writes
/// more than `from`.
fn wait_writes(control: &Path, name: &str, from: u64, more: u64) {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while writes(control, name) < from + more {
        assert!(
            std::time::Instant::now() < deadline,
            "{name}: no {more} writes in 30 s"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// One round of the kill loop up to the SIGKILL: load, a flushed marker in
/// a cluster the last snapshot shares (a split), a snapshot, the delete of
/// the previous one, 64 of fio's writes after it (splits of its clusters),
/// then a clone, a forced revert and a resize racing the kill at a moment
/// varied by round.
fn kill_round(s: Server, control: &Path, round: u64) {
    let mut fio = fio_load(&s.uri("w"));
    let mark = vec![
        format!("write -P {} {} 4k", round + 1, marker(round)),
        "flush".to_string(),
    ];
    qemu_io(&s.uri("w"), &mark);
    let snap = format!("s{round}");
    vraid_ctl_ok(control, &["volume", "snapshot", "w", &snap]);
    let from = writes(control, "w");
    if round > 0 {
        vraid_ctl_ok(control, &["volume", "delete", &format!("s{}", round - 1)]);
    }
    wait_writes(control, "w", from, 64);
    let t_size = if round.is_multiple_of(2) { "4M" } else { "8M" };
    let clone = format!("c{round}");
    let mut racing: Vec<Child> = [
        vec!["volume", "clone", &snap, &clone],
        vec!["volume", "revert", "w", &snap, "--force"],
        vec!["volume", "resize", "t", "--size", t_size, "--force"],
    ]
    .iter()
    .map(|a| spawn_ctl(control, a))
    .collect();
    match round % 3 {
        0 => {}
        1 => std::thread::sleep(Duration::from_millis(20)),
        _ => racing.iter_mut().for_each(|r| drop(r.wait())),
    }
    s.kill();
    for r in racing {
        let _ = r.wait_with_output();
    }
    let _ = fio.kill();
    let _ = fio.wait();
}

#[test]
fn sigkill_loop_under_fio_with_snapshots_clones_and_deletes_on_a_split_pool() {
    // Arrange
    let dir = scratch_dir("split-kill");
    let (server, control, args) = split_pool(dir.path(), "1G");
    vraid_ctl_ok(
        &control,
        &["volume", "create", "vol0", "w", "--size", "40M"],
    );
    vraid_ctl_ok(&control, &["volume", "create", "vol0", "t", "--size", "8M"]);
    qemu_io(
        &server.uri("w"),
        &["write -P 9 0 40M".to_string(), "flush".into()],
    );
    qemu_io(
        &server.uri("t"),
        &["write -P 7 0 8M".to_string(), "flush".into()],
    );
    let mut server = Some(server);
    let mut splits = 0;
    for round in 0..20u64 {
        // Act
        kill_round(server.take().unwrap(), &control, round);

        // Assert: the pool checks clean, every flushed marker is in `w`
        // and in the snapshot taken after it, `t` has one of its sizes.
        let s = start(&args);
        s.wait_log("pool journal replayed", Duration::from_secs(30));
        let report = check(&control);
        splits = splits.max(report["split_records"].as_u64().unwrap());
        qemu_io(&s.uri("w"), &marker_reads(round));
        let snap = format!("s{round}");
        let mut ro = Command::new("qemu-io");
        ro.args(["-r", "-f", "raw"]);
        for c in marker_reads(round) {
            ro.args(["-c", &c]);
        }
        run_ok(ro.arg(s.uri(&snap)));
        let t = run_ok(Command::new("nbdinfo").args(["--size", &s.uri("t")]));
        let t: u64 = t.trim().parse().unwrap();
        assert!(
            t == 4 << 20 || t == 8 << 20,
            "round {round}: t is {t} bytes"
        );
        qemu_io(&s.uri("t"), &["read -P 7 0 4M".to_string()]);
        eprintln!("round {round}: {report}");
        let _ = vraid_ctl(&control, &["volume", "delete", &format!("c{round}")]);
        server = Some(s);
    }
    assert!(splits > 0, "no split record seen in 20 rounds");
    check(&control);
    assert_eq!(server.take().unwrap().stop(), 0);
}

/// A write of the copy test: (offset, length, pattern byte).
type Write = (u64, u64, u8);

/// After `s1`: a split of cluster 1 (4 KiB in granule 2, read around),
/// a split of cluster 5 (one whole granule, nothing read), a fill of
/// granule 8 of cluster 1's exclusive record, an in-place write into its
/// mask. After `s2`: a split on top of cluster 1's now shared record, and
/// a split of cluster 9 (shared by both snapshots).
const AFTER_S1: [Write; 4] = [
    (CLUSTER + (136 << 10), 4 << 10, 2),
    (5 * CLUSTER, 64 << 10, 3),
    (CLUSTER + (512 << 10), 8 << 10, 4),
    (CLUSTER + (136 << 10), 4 << 10, 5),
];
const AFTER_S2: [Write; 2] = [
    (CLUSTER + (900 << 10), 4 << 10, 6),
    (9 * CLUSTER + 4096, 4096, 7),
];

fn apply(image: &mut [u8], writes: &[Write]) {
    for &(off, len, p) in writes {
        image[off as usize..(off + len) as usize].fill(p);
    }
}

fn qemu_writes(writes: &[Write]) -> Vec<String> {
    let mut cmds: Vec<String> = writes
        .iter()
        .map(|(off, len, p)| format!("write -P {p} {off} {len}"))
        .collect();
    cmds.push("flush".into());
    cmds
}

/// nbdcopy of `uri` into a file under `scratch`: its bytes.
fn nbdcopy(uri: &str, scratch: &Path) -> Vec<u8> {
    let out = scratch.join("copy.raw");
    let _ = std::fs::remove_file(&out);
    run_ok(Command::new("nbdcopy").arg(uri).arg(&out));
    std::fs::read(&out).unwrap()
}

/// The clusters `nbdinfo --map=qemu:dirty-bitmap:SNAP` marks dirty on `uri`.
fn dirty_clusters(uri: &str, snap: &str) -> BTreeSet<u64> {
    let map = format!("--map=qemu:dirty-bitmap:{snap}");
    let out = run_ok(Command::new("nbdinfo").args([&map, "--json", uri]));
    let v: serde_json::Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
    v.as_array()
        .unwrap()
        .iter()
        .filter(|e| e["type"].as_u64().unwrap() & 1 == 1)
        .flat_map(|e| {
            let (off, len) = (e["offset"].as_u64().unwrap(), e["length"].as_u64().unwrap());
            off / CLUSTER..(off + len).div_ceil(CLUSTER)
        })
        .collect()
}

/// The copies and maps of `v`, `s1` and `s2` against their models.
fn assert_copies_and_maps(s: &Server, scratch: &Path, v: &[u8], s2: &[u8]) {
    let s1 = vec![1u8; v.len()];
    for (name, want) in [("v", v), ("s1", &s1[..]), ("s2", s2)] {
        let got = nbdcopy(&s.uri(name), scratch);
        let bad = got.iter().zip(want).position(|(a, b)| a != b);
        assert!(
            got.len() == want.len() && bad.is_none(),
            "{name}: first difference at {bad:?}"
        );
    }
    let set = |c: &[u64]| c.iter().copied().collect::<BTreeSet<u64>>();
    assert_eq!(dirty_clusters(&s.uri("v"), "s1"), set(&[1, 5, 9]));
    assert_eq!(dirty_clusters(&s.uri("v"), "s2"), set(&[1, 9]));
    assert_eq!(dirty_clusters(&s.uri("s2"), "s1"), set(&[1, 5]));
}

/// A split pool on 128M members with volume `v` (16M) written whole
/// with byte 1 and flushed.
fn split_volume_written_whole(dir: &Path) -> (Server, PathBuf, Vec<String>) {
    let (server, control, args) = split_pool(dir, "128M");
    vraid_ctl_ok(
        &control,
        &["volume", "create", "vol0", "v", "--size", "16M"],
    );
    qemu_io(
        &server.uri("v"),
        &["write -P 1 0 16M".to_string(), "flush".into()],
    );
    (server, control, args)
}

#[test]
fn nbdcopy_and_the_dirty_bitmap_read_split_clusters_as_written() {
    // Arrange: a volume written whole, then a snapshot.
    let dir = scratch_dir("split-copy");
    let (server, control, args) = split_volume_written_whole(dir.path());
    vraid_ctl_ok(&control, &["volume", "snapshot", "v", "s1"]);
    let mut image = vec![1u8; 16 << 20];

    // Act: every split case (above), a second snapshot between them.
    qemu_io(&server.uri("v"), &qemu_writes(&AFTER_S1));
    apply(&mut image, &AFTER_S1);
    vraid_ctl_ok(&control, &["volume", "snapshot", "v", "s2"]);
    let s2 = image.clone();
    qemu_io(&server.uri("v"), &qemu_writes(&AFTER_S2));
    apply(&mut image, &AFTER_S2);

    // Assert: the copies are the models, the maps name the written
    // clusters only; the same from disk after a restart.
    assert_copies_and_maps(&server, dir.path(), &image, &s2);
    let report = check(&control);
    // Four records made; the completer converts the exclusive ones in
    // the background (how many by now is its timing): the one `s2`
    // shares stays.
    assert!(report["split_records"].as_u64().unwrap() >= 1, "{report}");
    assert_eq!(server.stop(), 0);
    let server = start(&args);
    assert_copies_and_maps(&server, dir.path(), &image, &s2);
    check(&control);
    assert_eq!(server.stop(), 0);
}

fn free_bytes(control: &Path) -> u64 {
    let out = vraid_ctl_ok(control, &["pool", "list", "--json"]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
    v[0]["space"]["free_bytes"].as_u64().unwrap()
}

#[test]
fn space_returns_after_a_snapshot_delete_once_the_completer_has_run() {
    // Arrange: 16 clusters written, a snapshot, a 4 KiB write into each
    // (16 splits, each holding its base), the snapshot deleted.
    let dir = scratch_dir("split-space");
    let (server, control, args) = split_volume_written_whole(dir.path());
    let free = free_bytes(&control);
    vraid_ctl_ok(&control, &["volume", "snapshot", "v", "s"]);
    let mut image = vec![1u8; 16 << 20];
    let writes: Vec<Write> = (0..16).map(|c| (c * CLUSTER + 4096, 4096, 2)).collect();
    qemu_io(&server.uri("v"), &qemu_writes(&writes));
    apply(&mut image, &writes);
    vraid_ctl_ok(&control, &["volume", "delete", "s"]);

    // Act: the completer fills the splits in the background (polled).
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while free_bytes(&control) < free {
        assert!(
            std::time::Instant::now() < deadline,
            "space not back in 30 s"
        );
        std::thread::sleep(Duration::from_millis(50));
    }

    // Assert: space as before the snapshot, no split left, the bytes
    // written; the same after a restart.
    assert_eq!(free_bytes(&control), free);
    assert_eq!(check(&control)["split_records"], 0);
    assert_eq!(nbdcopy(&server.uri("v"), dir.path()), image);
    assert_eq!(server.stop(), 0);
    let server = start(&args);
    assert_eq!(nbdcopy(&server.uri("v"), dir.path()), image);
    assert_eq!(check(&control)["split_records"], 0);
    assert_eq!(server.stop(), 0);
}

/// The `completed=N` of the server's "split pages walked" log line.
fn walked_completed(log: &str) -> u64 {
    let line = log.lines().find(|l| l.contains("split pages walked"));
    let line = line.unwrap_or_else(|| panic!("no walk logged:\n{log}"));
    let at = line.find("completed=").expect("completed field") + "completed=".len();
    let digits: String = line[at..]
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    digits.parse().unwrap_or_else(|e| panic!("{e}: {line}"))
}

#[test]
fn splits_left_by_a_sigkill_are_completed_after_the_restart_and_space_returns() {
    // Arrange: as above (16 splits holding their bases), flushed, and
    // the server killed at once: the completer commits its batch only
    // when the batch ends (>= 240 ms of throttled granule copies), so
    // the splits on disk still hold their bases.
    let dir = scratch_dir("split-restart");
    let (server, control, args) = split_volume_written_whole(dir.path());
    let free = free_bytes(&control);
    vraid_ctl_ok(&control, &["volume", "snapshot", "v", "s"]);
    let mut image = vec![1u8; 16 << 20];
    let writes: Vec<Write> = (0..16).map(|c| (c * CLUSTER + 4096, 4096, 2)).collect();
    let mut cmds = qemu_writes(&writes);
    cmds.push("flush".into());
    qemu_io(&server.uri("v"), &cmds);
    apply(&mut image, &writes);
    server.kill();

    // Act: a restart (the walk of the split pages is due at open), the
    // snapshot deleted; polled until the space is back.
    let server = start(&args);
    vraid_ctl_ok(&control, &["volume", "delete", "s"]);
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while free_bytes(&control) < free {
        assert!(
            std::time::Instant::now() < deadline,
            "space not back in 30 s:\n{}",
            server.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }

    // Assert: the walk completed splits made before the restart; space
    // as before the snapshot, the pool clean, the bytes written.
    let log = server.wait_log("split pages walked", Duration::from_secs(30));
    assert!(walked_completed(&log) > 0, "{log}");
    assert_eq!(free_bytes(&control), free);
    check(&control);
    assert_eq!(nbdcopy(&server.uri("v"), dir.path()), image);
    assert_eq!(server.stop(), 0);
}
