//! `vraid scrub` against the real daemon, in both worlds. With checksums
//! (the default): blocks damaged straight in member files are found as
//! `checksum` errors on their own member (exact counts), a check writes
//! nothing, `--repair` rebuilds them from redundancy (the good copy wins,
//! whichever mirror it is on) and a second scrub finds nothing; a block
//! never written has no checksum and falls back to a mismatch. With
//! `--no-checksums`: md semantics, flipped bytes are mismatches and repair
//! copies the first mirror or rewrites parity. Also: a scrub under fio
//! load finds no false mismatches; progress shows while it runs; bad
//! requests and a scrub during a rebuild are refused; a scrub schedule in
//! the config starts scrubs by itself.

use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use raid_tests::*;
use serde_json::Value;

const CHUNK: u64 = 64 << 10;
const BLOCK: u64 = 4096;

fn args_of<'a>(ctl: &'a Path, paths: &'a [PathBuf]) -> Vec<&'a str> {
    let mut a = vec!["--control", ctl.to_str().unwrap()];
    a.extend(paths.iter().map(|p| p.to_str().unwrap()));
    a
}

/// Which world a test runs in: per-block checksums (the default) or
/// `vraid serve --no-checksums` (md semantics only).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Checksums {
    On,
    Off,
}

fn serve(ctl: &Path, paths: &[PathBuf], checksums: Checksums) -> Server {
    let mut args = args_of(ctl, paths);
    if checksums == Checksums::Off {
        args.push("--no-checksums");
    }
    Server::start(&args)
}

/// Flips one byte at data-area offset `at` of a member file.
fn flip(member: &Path, at: u64) {
    let data_offset = examine(member)["data_offset"].as_u64().unwrap();
    flip_byte(member, data_offset + at);
}

/// Overwrites the 4 KiB block at data-area offset `at` of a member file.
fn overwrite_block(member: &Path, at: u64, bytes: &[u8]) {
    assert_eq!((at % BLOCK, bytes.len() as u64), (0, BLOCK));
    let data_offset = examine(member)["data_offset"].as_u64().unwrap();
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(member)
        .unwrap();
    f.write_all_at(bytes, data_offset + at).unwrap();
    f.sync_all().unwrap();
}

fn all_member_data(paths: &[PathBuf]) -> Vec<Vec<u8>> {
    paths.iter().map(|p| member_data(p)).collect()
}

/// The 4 KiB block holding data-area offset `at` of a member's data.
fn block_of(data: &[u8], at: u64) -> &[u8] {
    let b = (at / BLOCK * BLOCK) as usize;
    &data[b..b + BLOCK as usize]
}

fn scrub_json(ctl: &Path, extra: &[&str]) -> Value {
    let mut args = vec!["scrub", "vol0", "--json"];
    args.extend_from_slice(extra);
    let out = vraid_ctl_ok(ctl, &args);
    let v: Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
    v["scrub"].clone()
}

fn vol0(ctl: &Path) -> Value {
    status_json(ctl)["volumes"][0].clone()
}

/// Per-member values of `key` in a scrub report.
fn per_member(report: &Value, key: &str) -> Vec<u64> {
    report["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m[key].as_u64().unwrap())
        .collect()
}

/// fio's verify pass over what `fio_verify_cmd(.., "fill", "8M", "0")` wrote.
fn fio_verify_only(uri: &str) {
    let child = fio_verify_cmd(uri, "fill", "8M", "0")
        .arg("--verify_only=1")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    assert_fio_clean(child);
}

fn spawn_fio(uri: &str, name: &str, size: &str, offset: &str) -> Child {
    fio_verify_cmd(uri, name, size, offset)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// A fresh array with fio's 8 MiB written and verified, stopped cleanly.
fn array_with_fio_data(
    tag: &str,
    level: u32,
    members: usize,
) -> (tempfile::TempDir, Vec<PathBuf>, PathBuf) {
    let dir = scratch_dir(tag);
    let paths = member_paths(dir.path(), members);
    create_array(level, "64K", "32M", "vol0", &paths);
    let ctl = dir.path().join("ctl.sock");
    let server = Server::start(&args_of(&ctl, &paths));
    assert_fio_clean(spawn_fio(&server.uri("vol0"), "fill", "8M", "0"));
    assert_eq!(server.stop(), 0);
    for (role, p) in paths.iter().enumerate() {
        assert_eq!(examine(p)["role"], role);
    }
    (dir, paths, ctl)
}

/// RAID-5, 3 members, left-symmetric: the parity member of stripe `s`.
fn raid5_parity_member(s: u64) -> usize {
    (2 - s % 3) as usize
}

/// How a member block is damaged behind the daemon's back.
#[derive(Clone, Copy)]
enum Damage {
    /// One byte flipped at the offset.
    Flip,
    /// The whole block replaced by the member's block at this offset (a
    /// well-formed block from the wrong place, like a misdirected write).
    CopyOf(u64),
}

/// Checksums on: every damaged block fio wrote fails its checksum. A check
/// counts each as `checksum` on its own member, and nothing else, and
/// writes nothing; `--repair` rebuilds each from redundancy (the good
/// copy, or data and parity) so every member file holds its original bytes
/// again; a second check is clean and fio's data verifies.
fn checksummed_bad_blocks_are_found_on_their_member_and_rebuilt(
    level: u32,
    members: usize,
    damage: &[(usize, u64, Damage)],
) {
    // Arrange
    let (_dir, paths, ctl) = array_with_fio_data(&format!("scrub-csum-r{level}"), level, members);
    let before = all_member_data(&paths);
    let data_members = if level == 5 { members - 1 } else { 1 };
    let fio_member_bytes = (8 << 20) / data_members as u64;
    for &(m, at, how) in damage {
        assert!(at < fio_member_bytes, "outside fio's data: {at}");
        let old = block_of(&before[m], at);
        assert!(old.iter().any(|&b| b != 0), "never written: {m} {at}");
        match how {
            Damage::Flip => flip(&paths[m], at),
            Damage::CopyOf(from) => overwrite_block(&paths[m], at, block_of(&before[m], from)),
        }
    }
    let damaged = all_member_data(&paths);
    for &(m, at, _) in damage {
        assert_ne!(block_of(&damaged[m], at), block_of(&before[m], at));
    }
    let mut want = vec![0u64; members];
    for &(m, _, _) in damage {
        want[m] += 1;
    }
    let n = damage.len() as u64;
    let zeros = vec![0u64; members];
    // No client read between the damage and the check: a read through the
    // volume would repair what it finds.
    let server = serve(&ctl, &paths, Checksums::On);

    // Act
    let text = vraid_ctl_ok(&ctl, &["scrub", "vol0"]);
    let check = vol0(&ctl)["last_scrub"].clone();
    let after_check = all_member_data(&paths);
    let errors: Vec<u64> = vol0(&ctl)["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["checksum_errors"].as_u64().unwrap())
        .collect();
    let repair = scrub_json(&ctl, &["--repair"]);
    let again = scrub_json(&ctl, &[]);
    fio_verify_only(&server.uri("vol0"));
    assert_eq!(server.stop(), 0);
    let after_repair = all_member_data(&paths);

    // Assert: the check found each bad block on its own member, as a
    // checksum error (never as a mismatch), and wrote nothing.
    assert!(
        text.contains(&format!(
            "0 mismatches, {n} checksum errors, 0 read errors, 0 repaired"
        )),
        "{text}"
    );
    assert_eq!(per_member(&check, "checksum"), want, "{check}");
    for key in ["mismatch", "io", "repaired"] {
        assert_eq!(per_member(&check, key), zeros, "{key}: {check}");
    }
    assert_eq!(
        (check["found"].as_u64(), check["mismatches"].as_u64()),
        (Some(n), Some(0))
    );
    assert_eq!(check["outcome"], "finished");
    for m in 0..members {
        assert!(after_check[m] == damaged[m], "check wrote member {m}");
        // The member's `checksum_errors` counts each bad block once, though
        // the scrub reads it twice (its step, then block by block).
        assert_eq!(errors[m], want[m], "{errors:?} vs {want:?}");
    }
    // Repair rebuilt exactly those blocks, on their members.
    assert_eq!(per_member(&repair, "checksum"), want, "{repair}");
    assert_eq!(per_member(&repair, "repaired"), want, "{repair}");
    assert_eq!(per_member(&repair, "mismatch"), zeros, "{repair}");
    assert_eq!(again["found"], 0, "{again}");
    for m in 0..members {
        assert!(after_repair[m] == before[m], "member {m} not restored");
    }
    if level == 5 {
        assert_eq!(
            bad_parity_stripes(&paths, CHUNK as usize),
            Vec::<usize>::new()
        );
    }
}

#[test]
fn raid5_checksum_scrub_finds_bad_data_and_parity_blocks_on_their_member_and_rebuilds_them() {
    // Member 1, inside fio's 8 MiB (member stripes < 64): three data
    // blocks and two parity blocks.
    let damage = [
        (1, 4096 + 3, Damage::Flip),
        (1, 2 * CHUNK + 5 * 4096 + 100, Damage::Flip),
        (1, 30 * CHUNK + 2 * 4096, Damage::Flip),
        (1, CHUNK + 3 * 4096 + 7, Damage::Flip),
        (1, 61 * CHUNK + 15 * 4096 + 4095, Damage::Flip),
    ];
    let parity: Vec<bool> = damage
        .iter()
        .map(|&(m, at, _)| raid5_parity_member(at / CHUNK) == m)
        .collect();
    assert_eq!(parity, [false, false, false, true, true]);
    checksummed_bad_blocks_are_found_on_their_member_and_rebuilt(5, 3, &damage);
}

#[test]
fn raid1_checksum_scrub_finds_bad_copies_on_either_mirror_and_the_good_copy_wins() {
    // Member 1: flipped bytes. Member 0 (the mirror md's repair copies
    // from): whole blocks replaced by other fio blocks, so the copies
    // disagree and only the checksum tells which one is right. Nothing in
    // the first 8 KiB: the pool probe at start-up reads (and so repairs)
    // the two pool-header blocks there.
    let damage = [
        (1, 3 * 4096 + 3, Damage::Flip),
        (1, 5 * 4096 + 100, Damage::Flip),
        (1, (1 << 20) + 2 * 4096, Damage::Flip),
        (1, (3 << 20) + 7, Damage::Flip),
        (1, 6 << 20, Damage::CopyOf(0)),
        (0, 9 * 4096, Damage::CopyOf(10 * 4096)),
        (0, (2 << 20) + 4096, Damage::CopyOf(7 << 20)),
    ];
    checksummed_bad_blocks_are_found_on_their_member_and_rebuilt(1, 2, &damage);
}

#[test]
fn with_checksums_a_block_never_written_has_no_checksum_and_counts_as_a_mismatch() {
    // Arrange: a RAID-1 block past fio's 8 MiB was never written since
    // create, so its checksum is unknown (0) and not verified.
    let (_dir, paths, ctl) = array_with_fio_data("scrub-csum-unknown", 1, 2);
    let at = (20 << 20) + 4096 + 11;
    assert!(block_of(&member_data(&paths[1]), at)
        .iter()
        .all(|&b| b == 0));
    flip(&paths[1], at);
    let server = serve(&ctl, &paths, Checksums::On);

    // Act
    let check = scrub_json(&ctl, &[]);
    let repair = scrub_json(&ctl, &["--repair"]);
    let again = scrub_json(&ctl, &[]);
    assert_eq!(server.stop(), 0);

    // Assert: md semantics for that block: a mismatch on the second mirror,
    // repaired by copying the first.
    assert_eq!(per_member(&check, "mismatch"), [0, 1], "{check}");
    assert_eq!(per_member(&check, "checksum"), [0, 0], "{check}");
    assert_eq!(per_member(&repair, "repaired"), [0, 1], "{repair}");
    assert_eq!(again["found"], 0, "{again}");
    assert!(
        member_data(&paths[0]) == member_data(&paths[1]),
        "mirrors differ"
    );
}

/// Member-data offsets to flip without checksums: `(member, offset)`; all
/// distinct 4 KiB blocks. RAID-5 (3 members, left-symmetric): member 0 is
/// parity of stripe 2; its data blocks are flipped outside fio's 8 MiB
/// (stripes >= 64), since without checksums a parity repair keeps wrong
/// data (md semantics). RAID-1: the second mirror, inside fio's data
/// (repair copies mirror 0).
fn flips(level: u32) -> Vec<(usize, u64)> {
    match level {
        5 => vec![
            (0, 100 * CHUNK + 4096 + 3),
            (0, 100 * CHUNK + 5 * 4096 + 100),
            (0, 301 * CHUNK + 2 * 4096),
            (0, 2 * CHUNK + 3 * 4096 + 7), // parity
        ],
        _ => vec![
            (1, 4096 + 3),
            (1, 5 * 4096 + 100),
            (1, (1 << 20) + 2 * 4096),
            (1, (3 << 20) + 7),
        ],
    }
}

/// `--no-checksums`: md semantics. Flipped blocks read well, so a check
/// counts them as mismatches (RAID-1: on the mirror that differs from the
/// first; RAID-5: on the stripe's parity member) and `--repair` copies the
/// first mirror / rewrites parity from the data.
fn flipped_blocks_without_checksums_are_mismatches_and_repair_is_md(level: u32, members: usize) {
    // Arrange: fio data written and verified, clean stop, bytes flipped.
    let (_dir, paths, ctl) = array_with_fio_data(&format!("scrub-r{level}"), level, members);
    let flips = flips(level);
    for &(m, at) in &flips {
        flip(&paths[m], at);
    }
    let server = serve(&ctl, &paths, Checksums::Off);

    // Act
    let text = vraid_ctl_ok(&ctl, &["scrub", "vol0"]);
    let check = vol0(&ctl)["last_scrub"].clone();
    let events = status_json(&ctl)["events"].clone();
    let repair = scrub_json(&ctl, &["--repair"]);
    let again = scrub_json(&ctl, &[]);
    fio_verify_only(&server.uri("vol0"));
    let status_text = vraid_ctl_ok(&ctl, &["status"]);
    assert_eq!(server.stop(), 0);

    // Assert
    let n = flips.len() as u64;
    assert!(
        text.contains(&format!("{n} mismatches, 0 checksum errors")),
        "{text}"
    );
    assert_eq!(check["mismatches"], n, "{check}");
    assert_eq!(check["found"], n, "{check}");
    assert_eq!(check["repaired"], 0, "{check}");
    assert_eq!(check["outcome"], "finished");
    let data_size = examine(&paths[0])["data_size"].as_u64().unwrap();
    assert_eq!(
        check["bytes_checked"].as_u64().unwrap(),
        members as u64 * (data_size - data_size % CHUNK)
    );
    let mut want = vec![0u64; members];
    for &(m, at) in &flips {
        want[if level == 5 {
            raid5_parity_member(at / CHUNK)
        } else {
            m
        }] += 1;
    }
    assert_eq!(per_member(&check, "mismatch"), want, "{check}");
    let kinds: Vec<&str> = events
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["kind"].as_str())
        .collect();
    assert!(kinds.contains(&"scrub_started"), "{kinds:?}");
    assert!(kinds.contains(&"scrub_finished"), "{kinds:?}");
    assert_eq!(
        (repair["mismatches"].as_u64(), repair["repaired"].as_u64()),
        (Some(n), Some(n))
    );
    assert_eq!(per_member(&repair, "repaired"), want, "{repair}");
    assert_eq!(again["found"], 0, "{again}");
    assert!(
        status_text.contains("last scrub finished (check)"),
        "{status_text}"
    );
    assert!(examine(&paths[0])["scrub_time"].as_u64().unwrap() > 0);
    if level == 5 {
        assert_eq!(
            bad_parity_stripes(&paths, CHUNK as usize),
            Vec::<usize>::new()
        );
    } else {
        assert!(
            member_data(&paths[0]) == member_data(&paths[1]),
            "mirrors differ"
        );
    }
}

#[test]
fn raid5_without_checksums_scrub_counts_mismatches_on_parity_and_repair_rewrites_it() {
    flipped_blocks_without_checksums_are_mismatches_and_repair_is_md(5, 3);
}

#[test]
fn raid1_without_checksums_scrub_counts_mismatches_and_repair_copies_the_first_mirror() {
    flipped_blocks_without_checksums_are_mismatches_and_repair_is_md(1, 2);
}

#[test]
fn unreadable_blocks_are_counted_as_io_on_their_member_and_fail_nothing() {
    // Arrange: reads of 8 KiB of member 1 fail.
    let dir = scratch_dir("scrub-io");
    let paths = member_paths(dir.path(), 3);
    create_array(5, "64K", "16M", "vol0", &paths);
    let ctl = dir.path().join("ctl.sock");
    let server = Server::start(&args_of(&ctl, &paths));
    qemu_io(&server.uri("vol0"), &["write -P 0x3c 0 4M".into()]);
    vraid_ctl_ok(
        &ctl,
        &[
            "fault", "add", "vol0", "1", "--kind", "error", "--op", "read", "--offset", "1M",
            "--length", "8K",
        ],
    );

    // Act
    let check = scrub_json(&ctl, &[]);
    let v = vol0(&ctl);
    assert_eq!(server.stop(), 0);

    // Assert
    assert_eq!(check["members"][1]["io"], 2, "{check}");
    assert_eq!(
        (check["found"].as_u64(), check["mismatches"].as_u64()),
        (Some(2), Some(0))
    );
    assert_eq!(v["state"], "optimal", "{v}");
}

#[test]
fn scrub_under_fio_writes_finds_nothing_and_shows_progress() {
    // Arrange: throttled so the scrub overlaps fio and is seen running.
    let dir = scratch_dir("scrub-load");
    let paths = member_paths(dir.path(), 3);
    create_array(5, "64K", "48M", "vol0", &paths);
    let ctl = dir.path().join("ctl.sock");
    let server = Server::start(&args_of(&ctl, &paths));
    let uri = server.uri("vol0");
    vraid_ctl_ok(&ctl, &["set", "vol0", "--rebuild-max-mbps", "40"]);
    // Region 0 (all of these members) written before the scrub starts: it
    // skips regions never written (FORMAT.md §10).
    qemu_io(&uri, &["write -P 5 0 1M".into(), "flush".into()]);

    // Act
    let fio = spawn_fio(&uri, "under-scrub", "24M", "0");
    let started = vraid_ctl_ok(&ctl, &["scrub", "vol0", "--repair", "--no-wait"]);
    let busy = vraid_ctl(&ctl, &["scrub", "vol0"]);
    let mut seen = None;
    let deadline = Instant::now() + Duration::from_secs(120);
    let last = loop {
        let v = vol0(&ctl);
        if v["sync"]["kind"] == "scrub" && seen.is_none() {
            seen = Some((v["sync"].clone(), vraid_ctl_ok(&ctl, &["status"])));
        }
        if v["last_scrub"].is_object() {
            break v["last_scrub"].clone();
        }
        assert!(Instant::now() < deadline, "scrub did not finish: {v}");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_fio_clean(fio);
    let after = scrub_json(&ctl, &[]);
    assert_eq!(server.stop(), 0);

    // Assert
    assert!(started.contains("scrub started"), "{started}");
    let err = String::from_utf8_lossy(&busy.stderr);
    assert!(
        !busy.status.success() && err.contains("already running"),
        "{err}"
    );
    let (sync, text) = seen.expect("scrub progress never shown in status");
    assert!(sync["total_bytes"].as_u64().unwrap() > 0, "{sync}");
    assert!(text.contains("  scrub: ") && text.contains("% "), "{text}");
    assert_eq!(last["outcome"], "finished", "{last}");
    assert_eq!(last["found"], 0, "{last}");
    assert_eq!(after["found"], 0, "{after}");
    assert_eq!(
        bad_parity_stripes(&paths, CHUNK as usize),
        Vec::<usize>::new()
    );
}

#[test]
fn scrub_refuses_bad_requests_and_a_rebuild_cancels_it() {
    // Arrange: a RAID-1 whose scrub crawls at 1 MB/s.
    let dir = scratch_dir("scrub-bad");
    let paths = member_paths(dir.path(), 2);
    create_array(1, "64K", "32M", "mirror", &paths);
    let ctl = dir.path().join("ctl.sock");
    let server = Server::start(&args_of(&ctl, &paths));
    vraid_ctl_ok(&ctl, &["set", "mirror", "--rebuild-max-mbps", "1"]);
    // Written, or the scrub skips it all (FORMAT.md §10).
    qemu_io(
        &server.uri("mirror"),
        &["write -P 5 0 1M".into(), "flush".into()],
    );
    let new = dir.path().join("new.img");
    std::fs::File::create(&new)
        .unwrap()
        .set_len(32 << 20)
        .unwrap();

    // Act
    let unknown = vraid_ctl(&ctl, &["scrub", "nosuch"]);
    let no_scrub = vraid_ctl(&ctl, &["scrub", "mirror", "--cancel"]);
    vraid_ctl_ok(&ctl, &["scrub", "mirror", "--no-wait"]);
    vraid_ctl_ok(&ctl, &["fail", "mirror", "1"]);
    vraid_ctl_ok(&ctl, &["remove", "mirror", "1"]);
    vraid_ctl_ok(&ctl, &["add", "mirror", new.to_str().unwrap()]);
    let deadline = Instant::now() + Duration::from_secs(30);
    let cancelled = loop {
        let v = status_json(&ctl)["volumes"][0].clone();
        if v["last_scrub"].is_object() {
            break v;
        }
        assert!(Instant::now() < deadline, "scrub not cancelled: {v}");
        std::thread::sleep(Duration::from_millis(50));
    };
    let during_rebuild = vraid_ctl(&ctl, &["scrub", "mirror"]);
    assert_eq!(server.stop(), 0);

    // Assert
    for (out, needle) in [
        (&unknown, "nosuch"),
        (&no_scrub, "no scrub is running"),
        (&during_rebuild, "a rebuild is running"),
    ] {
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "succeeded: {needle}");
        assert!(err.contains(needle), "{needle}: {err}");
        assert!(!err.contains("panicked"), "{err}");
    }
    assert_eq!(
        cancelled["last_scrub"]["outcome"], "cancelled",
        "{cancelled}"
    );
    assert_eq!(cancelled["sync"]["kind"], "rebuild", "{cancelled}");
    assert_eq!(
        examine(&paths[0])["scrub_time"],
        0,
        "a cancelled scrub is not recorded"
    );
}

#[test]
fn scrub_interval_in_the_config_starts_scrubs_by_itself() {
    // Arrange
    let dir = scratch_dir("scrub-schedule");
    let d = dir.path().display();
    let cfg = dir.path().join("vraid.toml");
    std::fs::write(
        &cfg,
        format!(
            r#"
[server]
control = "{d}/ctl.sock"

[[volume]]
name = "vol0"
level = 5
members = ["{d}/m0.img", "{d}/m1.img", "{d}/m2.img"]
create = {{ member_size = "16M" }}
scrub_interval = "1s"
"#
        ),
    )
    .unwrap();
    let ctl = dir.path().join("ctl.sock");

    // Act
    let server = Server::start(&["--config", cfg.to_str().unwrap()]);
    let deadline = Instant::now() + Duration::from_secs(30);
    let events = loop {
        let events = status_json(&ctl)["events"].clone();
        let finished = events
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["kind"] == "scrub_finished")
            .count();
        if finished >= 2 {
            break events;
        }
        assert!(Instant::now() < deadline, "no scheduled scrubs: {events}");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(server.stop(), 0);

    // Assert
    let started: Vec<&str> = events
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["kind"] == "scrub_started")
        .filter_map(|e| e["message"].as_str())
        .collect();
    assert!(
        started.iter().all(|m| m.contains("scheduled")),
        "{started:?}"
    );
    let recorded = examine(&dir.path().join("m1.img"))["scrub_time"]
        .as_u64()
        .unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    assert!(now - recorded < 60, "scrub_time {recorded} vs now {now}");
}
