//! Issue 15, "work proportional to data": the written-region map
//! (docs/FORMAT.md §10). Rebuild, resync and scrub of terabyte sparse
//! members touch only the regions ever written and say how much they
//! skipped; arrays without the map (older builds) get it from their
//! members' holes at a clean, whole start (a SIGKILL loop over that
//! upgrade); damaged maps fall back to doing everything.

use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use raid_tests::*;
use serde_json::Value;

const TIB: u64 = 1 << 40;
const GIB: u64 = 1 << 30;
const MIB: u64 = 1 << 20;
/// One written region (= one write-intent region) on members up to 27 TiB.
const REGION: u64 = 64 * MIB;

fn serve(members: &[PathBuf], control: &Path, extra: &[&str]) -> Server {
    let mut args = vec!["--control", control.to_str().unwrap()];
    args.extend_from_slice(extra);
    args.extend(members.iter().map(|m| m.to_str().unwrap()));
    let server = Server::start(&args);
    wait_for_socket(control);
    server
}

/// Polls `cond` every 100 ms until it holds; panics after `limit`.
fn wait_until(what: &str, limit: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !cond() {
        assert!(Instant::now() < deadline, "{what}: not within {limit:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// `len`-byte sequential runs at `at`, each in 32 MiB writes of `pattern`.
fn run_cmds(op: &str, runs: &[(u64, u64, u8)]) -> Vec<String> {
    run_pieces(op, runs, 32 * MIB)
}

/// [`run_cmds`] in requests of `piece` bytes.
fn run_pieces(op: &str, runs: &[(u64, u64, u8)], piece: u64) -> Vec<String> {
    let mut cmds = Vec::new();
    for &(at, len, p) in runs {
        let mut o = 0;
        while o < len {
            let n = piece.min(len - o);
            cmds.push(format!("{op} -P {p} {} {n}", at + o));
            o += n;
        }
    }
    cmds
}

/// Four 256 MiB runs spread over a volume of `size` bytes (1 GiB).
fn spread_runs(size: u64) -> Vec<(u64, u64, u8)> {
    let len = 256 * MIB;
    vec![
        (0, len, 0x11),
        (size / 4 + 3 * MIB, len, 0x22),
        (size / 2 + 7 * MIB, len, 0x33),
        (size - len - MIB, len, 0x44),
    ]
}

/// Waits for the pass of `kind` to have ended (last_sync shows it, nothing
/// runs, every member active) and returns last_sync.
fn finished_pass(control: &Path, kind: &str, members: usize) -> Value {
    let mut last = Value::Null;
    wait_until(kind, Duration::from_secs(600), || {
        let v = volume_status(control, "vol0");
        last = v["last_sync"].clone();
        v["sync"].is_null() && last["kind"] == kind && member_states(&v) == vec!["active"; members]
    });
    last
}

fn scrub(control: &Path) -> Value {
    let out = vraid_ctl_ok(control, &["scrub", "vol0", "--json"]);
    let report: Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
    report["scrub"].clone()
}

fn assert_clean_scrub(s: &Value) {
    assert_eq!(s["outcome"], "finished", "{s}");
    for key in ["found", "mismatches"] {
        assert_eq!(s[key], 0, "{s}");
    }
}

fn u(v: &Value) -> u64 {
    v.as_u64().unwrap_or_else(|| panic!("not a number: {v}"))
}

/// The rebuild copied exactly the regions the map counts as written and
/// skipped the rest of the member.
fn assert_copied_only_written(last: &Value, written: u64, data_size: u64) -> u64 {
    let copied = u(&last["done_bytes"]) - u(&last["skipped_bytes"]);
    eprintln!("rebuild: {last}");
    assert_eq!(u(&last["done_bytes"]), data_size, "{last}");
    assert_eq!(copied, written, "{last}");
    copied
}

#[test]
fn raid5_over_4x4tib_rebuilds_and_scrubs_only_the_written_regions() {
    let dir = scratch_dir("written-r5");
    let members = sparse_members(dir.path(), 4, 4 * TIB);
    create_array(5, "64K", "256M", "vol0", &members);
    assert_eq!(examine(&members[0])["written_map"], true);
    let control = dir.path().join("ctl.sock");
    let server = serve(&members, &control, &[]);
    let v = volume_status(&control, "vol0");
    assert_eq!(v["written_bytes"], 0, "{v}");
    let size = u(&v["size"]);
    let data_size = size / 3;

    // 1 GiB in four sequential runs spread over the 12 TiB volume.
    let runs = spread_runs(size);
    let mut cmds = run_cmds("write", &runs);
    cmds.push("flush".into());
    qemu_io(&server.uri("vol0"), &cmds);
    let written = u(&volume_status(&control, "vol0")["written_bytes"]);
    eprintln!("written regions per member: {} MiB", written / MIB);
    // Each run covers 256/3 MiB of every member: two or three regions.
    assert!(
        (4 * 2 * REGION..=4 * 3 * REGION).contains(&written),
        "{written}"
    );

    // Member 1 failed, removed, and added back (wiped, rebuilt).
    let started = Instant::now();
    fail_remove_add(&control, "1", &members[1]);
    let last = finished_pass(&control, "rebuild", 4);
    eprintln!("rebuild of a 4 TiB member: {:?}", started.elapsed());
    assert_copied_only_written(&last, written, data_size);
    let log = server.wait_log("rebuild of member 1 finished", Duration::from_secs(10));
    assert!(log.contains("skipped"), "{log}");
    qemu_io(&server.uri("vol0"), &run_cmds("read", &runs));

    // The whole 12 TiB volume scrubbed: only the written regions read.
    let started = Instant::now();
    let s = scrub(&control);
    eprintln!("scrub of 4 x 4 TiB: {:?}: {s}", started.elapsed());
    assert_clean_scrub(&s);
    assert_eq!(u(&s["skipped_bytes"]), data_size - written, "{s}");
    assert_eq!(u(&s["bytes_checked"]), 4 * written, "{s}");

    // The rebuilt member holds the data: read with another member failed.
    vraid_ctl_ok(&control, &["fail", "vol0", "0"]);
    qemu_io(&server.uri("vol0"), &run_cmds("read", &runs));
    assert_eq!(server.stop(), 0);
}

/// qemu-io writing `runs` (no flush) in the background, 256 KiB at a time
/// (the restart replays the RAID-5 journal of the writes in flight: a few
/// thousand records of 32 MiB writes take longer than a start may).
fn background_writes(uri: &str, runs: &[(u64, u64, u8)]) -> Child {
    qemu_io_command(uri, &run_pieces("write", runs, 256 << 10))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

#[test]
fn raid5_sigkill_during_writes_resyncs_only_written_regions_and_keeps_flushed_data() {
    let dir = scratch_dir("written-kill");
    let members = sparse_members(dir.path(), 4, 4 * TIB);
    create_array(5, "64K", "256M", "vol0", &members);
    let control = dir.path().join("ctl.sock");
    let server = serve(&members, &control, &[]);
    let size = u(&volume_status(&control, "vol0")["size"]);
    // Small runs: the restart replays the RAID-5 journal of every write
    // since its last checkpoint, ~14 ms a record on this VM (1 GiB in 32 MiB
    // writes took 38 s, longer than a start may take; not this feature).
    let flushed: Vec<_> = spread_runs(size)
        .into_iter()
        .map(|(at, _, p)| (at, 8 * MIB, p))
        .collect();
    let mut cmds = run_cmds("write", &flushed);
    cmds.push("flush".into());
    qemu_io(&server.uri("vol0"), &cmds);
    let before = u(&volume_status(&control, "vol0")["written_bytes"]);

    // More writes elsewhere, killed in the middle.
    let later = vec![(size / 3, 64 * MIB, 0x55), (2 * size / 3, 64 * MIB, 0x66)];
    let mut writer = background_writes(&server.uri("vol0"), &later);
    wait_until("writes under way", Duration::from_secs(60), || {
        u(&volume_status(&control, "vol0")["written_bytes"]) > before
    });
    server.kill();
    let _ = writer.wait();

    let server = serve(&members, &control, &[]);
    let last = finished_pass(&control, "resync", 4);
    let written = u(&volume_status(&control, "vol0")["written_bytes"]);
    eprintln!("resync after SIGKILL: {last}; written {written}");
    let resynced = u(&last["done_bytes"]) - u(&last["skipped_bytes"]);
    assert!(resynced > 0 && resynced <= written, "{last}");
    assert!(written < 2 * GIB, "{written}");
    qemu_io(&server.uri("vol0"), &run_cmds("read", &flushed));
    assert_clean_scrub(&scrub(&control));
    assert_eq!(server.stop(), 0);
}

#[test]
fn raid1_rebuild_and_raid0_scrub_skip_unwritten_regions() {
    let dir = scratch_dir("written-r1");
    let members = sparse_members(dir.path(), 2, TIB);
    create_array(1, "64K", "256M", "vol0", &members);
    let control = dir.path().join("ctl.sock");
    let server = serve(&members, &control, &[]);
    let size = u(&volume_status(&control, "vol0")["size"]);
    let runs = vec![(5 * MIB, 100 * MIB, 0x71), (size / 2, 64 * MIB, 0x72)];
    let mut cmds = run_cmds("write", &runs);
    cmds.push("flush".into());
    qemu_io(&server.uri("vol0"), &cmds);
    let written = u(&volume_status(&control, "vol0")["written_bytes"]);
    // Regions 0 and 1, and the two (or one) under the run at size / 2.
    let second = (size / 2 + 64 * MIB - 1) / REGION - size / 2 / REGION + 1;
    assert_eq!(written, (2 + second) * REGION);
    fail_remove_add(&control, "0", &members[0]);
    let last = finished_pass(&control, "rebuild", 2);
    assert_copied_only_written(&last, written, size);
    vraid_ctl_ok(&control, &["fail", "vol0", "1"]);
    qemu_io(&server.uri("vol0"), &run_cmds("read", &runs));
    assert_eq!(server.stop(), 0);

    // RAID-0 (with checksums, so with the bitmap): scrub reads 2 regions.
    let dir = scratch_dir("written-r0");
    let members = sparse_members(dir.path(), 2, TIB);
    create_array(0, "64K", "256M", "vol0", &members);
    let control = dir.path().join("ctl.sock");
    let server = serve(&members, &control, &[]);
    let size = u(&volume_status(&control, "vol0")["size"]);
    let runs = vec![(size / 3, 64 * MIB, 0x7a)];
    let mut cmds = run_cmds("write", &runs);
    cmds.push("flush".into());
    qemu_io(&server.uri("vol0"), &cmds);
    let written = u(&volume_status(&control, "vol0")["written_bytes"]);
    let s = scrub(&control);
    assert_clean_scrub(&s);
    assert_eq!(u(&s["skipped_bytes"]), size / 2 - written, "{s}");
    assert_eq!(u(&s["bytes_checked"]), 2 * written, "{s}");
    qemu_io(&server.uri("vol0"), &run_cmds("read", &runs));
    assert_eq!(server.stop(), 0);
}

/// CRC32 (IEEE), as the superblock and the written image use.
fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in bytes {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

/// Clears the written-map flag in both superblock copies of `member`, as
/// a build before the map wrote them (FORMAT.md §2: flags at 12, CRC at
/// 4092 over the block with the CRC zeroed).
fn make_old_format(member: &Path) {
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(member)
        .unwrap();
    for copy in [0u64, 4096] {
        let mut sb = vec![0u8; 4096];
        f.read_exact_at(&mut sb, copy).unwrap();
        let flags = u32::from_le_bytes(sb[12..16].try_into().unwrap()) & !0x2;
        sb[12..16].copy_from_slice(&flags.to_le_bytes());
        sb[4092..].fill(0);
        let crc = crc32(&sb);
        sb[4092..].copy_from_slice(&crc.to_le_bytes());
        f.write_all_at(&sb, copy).unwrap();
    }
    f.sync_all().unwrap();
}

/// An array as a build before the map left it: 8 MiB written at 1 MiB of
/// the volume (member region 0), shut down cleanly, flag cleared.
fn old_array_with_data(dir: &Path) -> (Vec<PathBuf>, Vec<(u64, u64, u8)>) {
    let members = sparse_members(dir, 3, 512 * MIB);
    create_array(5, "64K", "256M", "vol0", &members);
    let control = dir.join("ctl-old.sock");
    let server = serve(&members, &control, &[]);
    let runs = vec![(MIB, 8 * MIB, 0x5a)];
    let mut cmds = run_cmds("write", &runs);
    cmds.push("flush".into());
    qemu_io(&server.uri("vol0"), &cmds);
    assert_eq!(server.stop(), 0);
    for m in &members {
        make_old_format(m);
    }
    assert_eq!(examine(&members[0])["written_map"], false);
    (members, runs)
}

#[test]
fn array_without_the_map_gets_it_from_its_holes_at_a_clean_start() {
    // Arrange: an old array with data in member region 0.
    let dir = scratch_dir("written-old");
    let (members, runs) = old_array_with_data(dir.path());
    let text = run_ok(vraid(&["examine"]).arg(&members[0]));
    assert!(text.contains("Written map   : none"), "{text}");
    let control = dir.path().join("ctl.sock");

    // A read-only start does not add it, and says why.
    let server = serve(&members, &control, &["--read-only"]);
    server.wait_log(
        "not added now: the array is served read-only",
        Duration::from_secs(10),
    );
    assert!(volume_status(&control, "vol0")["written_bytes"].is_null());
    assert_eq!(server.stop(), 0);
    assert_eq!(examine(&members[0])["written_map"], false);

    // Act: a read-write start upgrades it.
    let server = serve(&members, &control, &[]);
    server.wait_log("written-region map added", Duration::from_secs(10));

    // Assert: the one region with data counts, every member records it,
    // and a rebuild copies that region only, keeping the data.
    let v = volume_status(&control, "vol0");
    assert_eq!(u(&v["written_bytes"]), REGION, "{v}");
    for m in &members {
        assert_eq!(examine(m)["written_map"], true);
    }
    fail_remove_add(&control, "2", &members[2]);
    let last = finished_pass(&control, "rebuild", 3);
    assert_copied_only_written(&last, REGION, u(&v["size"]) / 2);
    vraid_ctl_ok(&control, &["fail", "vol0", "0"]);
    qemu_io(&server.uri("vol0"), &run_cmds("read", &runs));
    assert_eq!(server.stop(), 0);
}

#[test]
fn an_upgrade_killed_at_any_point_is_redone_and_loses_nothing() {
    // Arrange
    let dir = scratch_dir("written-old-kill");
    let (members, runs) = old_array_with_data(dir.path());
    let control = dir.path().join("ctl.sock");

    // Act: starts killed (SIGKILL) after 0..60 ms, before, during and
    // after the scan, the image writes and the superblock update.
    for delay_ms in [0u64, 2, 5, 8, 12, 16, 20, 30, 45, 60] {
        let mut args = vec!["--control", control.to_str().unwrap()];
        args.extend(members.iter().map(|m| m.to_str().unwrap()));
        let server = Server::start(&args);
        std::thread::sleep(Duration::from_millis(delay_ms));
        server.kill();
        let _ = std::fs::remove_file(&control);
    }

    // Assert: the next start has the map (added now or by a killed run)
    // with exactly the region holding data, which reads back; a scrub
    // finds nothing wrong.
    let server = serve(&members, &control, &[]);
    let v = volume_status(&control, "vol0");
    assert_eq!(u(&v["written_bytes"]), REGION, "{v}");
    for m in &members {
        assert_eq!(examine(m)["written_map"], true, "{}", m.display());
    }
    qemu_io(&server.uri("vol0"), &run_cmds("read", &runs));
    assert_clean_scrub(&scrub(&control));
    assert_eq!(server.stop(), 0);
}

#[test]
fn damaged_maps_are_ignored_per_member_and_all_damaged_means_all_written() {
    let dir = scratch_dir("written-bad");
    let members = sparse_members(dir.path(), 3, GIB);
    create_array(5, "64K", "256M", "vol0", &members);
    let text = run_ok(vraid(&["examine"]).arg(&members[0]));
    assert!(text.contains("Written map   : kept"), "{text}");
    let control = dir.path().join("ctl.sock");
    let server = serve(&members, &control, &[]);
    let size = u(&volume_status(&control, "vol0")["size"]);
    let runs = vec![(0, 4 * MIB, 0x61)];
    let mut cmds = run_cmds("write", &runs);
    cmds.push("flush".into());
    qemu_io(&server.uri("vol0"), &cmds);
    assert_eq!(server.stop(), 0);
    let image_byte = 8192 + 16;

    // One member's image damaged: the others still say one region.
    flip_byte(&members[0], image_byte);
    let server = serve(&members, &control, &[]);
    assert_eq!(volume_status(&control, "vol0")["written_bytes"], REGION);
    server.wait_log("written-region map not used", Duration::from_secs(10));
    assert_eq!(server.stop(), 0);

    // Every image damaged (garbage, not a torn write): all written.
    for m in &members {
        poke(m, 8192, &pseudo_random(4096, 7));
    }
    let server = serve(&members, &control, &[]);
    let v = volume_status(&control, "vol0");
    assert_eq!(u(&v["written_bytes"]), size / 2, "{v}");
    fail_remove_add(&control, "1", &members[1]);
    let last = finished_pass(&control, "rebuild", 3);
    assert_eq!(last["skipped_bytes"], 0, "{last}");
    qemu_io(&server.uri("vol0"), &run_cmds("read", &runs));
    assert_clean_scrub(&scrub(&control));
    assert_eq!(server.stop(), 0);
}
