//! Per-block checksums end to end (real binary, NBD clients): bytes
//! flipped in member files and injected `corrupt` faults are caught,
//! counted exactly per member, served correctly from redundancy and
//! repaired in place; a crash that tears data from its checksum is not
//! reported as corruption; RAID-0 returns EIO for a bad block only.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use raid_tests::*;
use serde_json::Value;

const BLOCK: u64 = 4096;
const CHUNK: u64 = 64 << 10;

fn serve_args<'a>(paths: &'a [PathBuf], control: &'a Path) -> Vec<&'a str> {
    let mut a: Vec<&str> = paths.iter().map(|p| p.to_str().unwrap()).collect();
    a.extend(["--control", control.to_str().unwrap()]);
    a
}

fn volume(control: &Path) -> Value {
    status_json(control)["volumes"][0].clone()
}

fn csum_errors(control: &Path) -> Vec<u64> {
    volume(control)["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["checksum_errors"].as_u64().unwrap())
        .collect()
}

/// A new array of `members` members in a scratch dir, written with
/// `pattern` ("0xNN OFFSET LEN" for qemu-io), flushed and stopped cleanly:
/// (the dir, the member paths, the control socket path).
fn written_array(
    tag: &str,
    level: u32,
    members: usize,
    pattern: &str,
) -> (tempfile::TempDir, Vec<PathBuf>, PathBuf) {
    let dir = scratch_dir(tag);
    let paths = member_paths(dir.path(), members);
    create_array(level, "64K", "32M", "vol0", &paths);
    let control = dir.path().join("control.sock");
    let server = Server::start(&serve_args(&paths, &control));
    qemu_io(
        &server.uri("vol0"),
        &[format!("write -P {pattern}"), "flush".into()],
    );
    assert_eq!(server.stop(), 0);
    (dir, paths, control)
}

fn data_offset(member: &Path) -> u64 {
    examine(member)["data_offset"].as_u64().unwrap()
}

/// RAID-5 (3 members, left-symmetric): is member data block `block` of
/// member `m` a data block (not parity)?
fn raid5_data_block(m: u64, block: u64) -> bool {
    let stripe = block * BLOCK / CHUNK;
    2 - stripe % 3 != m
}

/// Member data blocks of member 1 to corrupt: distinct, spread out, inside
/// the written 8 MiB, data (not parity) on RAID-5.
fn victims(level: u32) -> Vec<u64> {
    [3u64, 40, 100, 517, 777, 1000, 1013]
        .into_iter()
        .filter(|&b| level != 5 || raid5_data_block(1, b))
        .take(5)
        .collect()
}

fn flipped_blocks_are_counted_exactly_served_right_and_repaired(level: u32) {
    // Arrange: a pattern written and the array stopped cleanly.
    let members = if level == 5 { 3 } else { 2 };
    let (_dir, paths, control) =
        written_array(&format!("csum-flip-r{level}"), level, members, "0x5a 0 8M");
    let blocks = victims(level);
    assert_eq!(blocks.len(), 5);
    let base = data_offset(&paths[1]);
    for &b in &blocks {
        flip_byte(&paths[1], base + b * BLOCK + 123);
    }

    // Act: read everything back.
    let server = Server::start(&serve_args(&paths, &control));
    let uri = server.uri("vol0");
    if level == 1 {
        // Reads rotate over the mirrors: two reads of a block reach both.
        let reads: Vec<String> = blocks
            .iter()
            .flat_map(|b| vec![format!("read -P 0x5a {} 4K", b * BLOCK); 2])
            .collect();
        qemu_io(&uri, &reads);
    }
    qemu_io(&uri, &["read -P 0x5a 0 8M".into()]);

    // Assert: exact count on member 1 only, stable on re-reading, and the
    // member file holds the right bytes again.
    let errors = csum_errors(&control);
    assert_eq!(errors[1], blocks.len() as u64, "{errors:?}");
    assert!(errors.iter().enumerate().all(|(m, &e)| m == 1 || e == 0));
    qemu_io(
        &uri,
        &["read -P 0x5a 0 8M".into(), "read -P 0x5a 0 8M".into()],
    );
    assert_eq!(csum_errors(&control)[1], blocks.len() as u64);
    for &b in &blocks {
        let bytes = peek(&paths[1], base + b * BLOCK, BLOCK as usize);
        assert!(bytes.iter().all(|&x| x == 0x5a), "block {b} not repaired");
    }
    let states: Vec<Value> = volume(&control)["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["state"].clone())
        .collect();
    assert!(states.iter().all(|s| s == "active"), "{states:?}");
    let metrics_free = server.stop();
    assert_eq!(metrics_free, 0);
}

#[test]
fn raid5_flipped_member_bytes_are_counted_exactly_and_repaired() {
    flipped_blocks_are_counted_exactly_served_right_and_repaired(5);
}

#[test]
fn raid1_flipped_member_bytes_are_counted_exactly_and_repaired() {
    flipped_blocks_are_counted_exactly_served_right_and_repaired(1);
}

#[test]
fn injected_read_corruption_is_served_right_and_counted() {
    // Arrange
    let dir = scratch_dir("csum-fault");
    let paths = member_paths(dir.path(), 3);
    create_array(5, "64K", "32M", "vol0", &paths);
    let control = dir.path().join("control.sock");
    let server = Server::start(&serve_args(&paths, &control));
    let uri = server.uri("vol0");
    qemu_io(&uri, &["write -P 0x3c 0 4M".into(), "flush".into()]);
    // Stripe 0: parity on member 2, data chunk 1 on member 1 = volume
    // bytes 64K..128K. Corrupt 8 KiB (two blocks) of it, for the read and
    // the checksum layer's re-read (a mismatch gone on re-reading is taken
    // for a race, not for bad media): 2 firings.
    vraid_ctl_ok(
        &control,
        &[
            "fault",
            "add",
            "vol0",
            paths[1].to_str().unwrap(),
            "--kind",
            "corrupt",
            "--op",
            "read",
            "--offset",
            "8K",
            "--length",
            "8K",
            "--count",
            "2",
        ],
    );

    // Act
    qemu_io(&uri, &["read -P 0x3c 0 4M".into()]);

    // Assert
    assert_eq!(csum_errors(&control), vec![0, 2, 0]);
    let faults: Value =
        serde_json::from_str(&vraid_ctl_ok(&control, &["fault", "list", "--json"])).unwrap();
    assert_eq!(faults["faults"][0]["hits"], 2, "{faults}");
    qemu_io(&uri, &["read -P 0x3c 0 4M".into()]);
    assert_eq!(csum_errors(&control), vec![0, 2, 0]);
    let metrics = volume(&control);
    assert_eq!(metrics["state"], "optimal", "{metrics}");
    // The read rewrote the blocks: a repairing scrub finds nothing left.
    let out = vraid_ctl_ok(&control, &["scrub", "vol0", "--repair", "--json"]);
    let report: Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
    for m in report["scrub"]["members"].as_array().unwrap() {
        for key in ["checksum", "io", "mismatch", "repaired"] {
            assert_eq!(m[key], 0, "{report}");
        }
    }
    assert_eq!(server.stop(), 0);
}

#[test]
fn raid1_disagreeing_copies_resolve_to_the_one_with_the_good_checksum() {
    // Arrange: A written everywhere, then member 1's copy of one block
    // replaced by other bytes (its checksum still says A).
    let (_dir, paths, control) = written_array("csum-disagree", 1, 2, "0x11 0 1M");
    let block = 77u64;
    poke(
        &paths[1],
        data_offset(&paths[1]) + block * BLOCK,
        &[0x22; BLOCK as usize],
    );

    // Act: whichever mirror the rotation picks first, A comes back.
    let server = Server::start(&serve_args(&paths, &control));
    let reads: Vec<String> = (0..4)
        .map(|_| format!("read -P 0x11 {} 4K", block * BLOCK))
        .collect();
    qemu_io(&server.uri("vol0"), &reads);

    // Assert
    assert_eq!(csum_errors(&control), vec![0, 1]);
    let copy = peek(&paths[1], data_offset(&paths[1]) + block * BLOCK, 4096);
    assert!(copy.iter().all(|&b| b == 0x11), "member 1 not repaired");
    assert_eq!(server.stop(), 0);
}

/// Waits until every member's checksum errors are read and returns them,
/// after the resync of a crashed array finished.
fn after_resync(server: &Server, control: &Path) -> Vec<u64> {
    server.wait_log("resync finished", Duration::from_secs(60));
    csum_errors(control)
}

#[test]
fn data_torn_from_its_checksum_by_a_crash_is_not_reported() {
    for level in [1u32, 5] {
        // Arrange: A written and settled (checksums on disk), then B
        // written and flushed, and the daemon killed before the bitmap's
        // cleaner wrote B's checksums back: data B, checksums A on disk.
        let members = if level == 5 { 3 } else { 2 };
        let (dir, paths, control) =
            written_array(&format!("csum-torn-r{level}"), level, members, "0x0a 0 4M");
        let server = Server::start(&serve_args(&paths, &control));
        let t = Instant::now();
        qemu_io(
            &server.uri("vol0"),
            &["write -P 0x0b 0 4M".into(), "flush".into()],
        );
        assert!(t.elapsed() < Duration::from_secs(4), "too slow to tear");
        server.kill();
        let b_on_disk = peek(&paths[0], data_offset(&paths[0]), 4096);
        assert!(b_on_disk.iter().all(|&x| x == 0x0b), "B was flushed");

        // Act: restart with a slow resync, so the reads below run while
        // the torn region is still being settled.
        let config = dir.path().join("slow.toml");
        let list: Vec<String> = paths.iter().map(|p| format!("{p:?}")).collect();
        std::fs::write(
            &config,
            format!(
                "[[volume]]\nname = \"vol0\"\nlevel = {level}\nmembers = [{}]\nrebuild_max_mbps = 4\n",
                list.join(", ")
            ),
        )
        .unwrap();
        let server = Server::start(&[
            "--config",
            config.to_str().unwrap(),
            "--control",
            control.to_str().unwrap(),
        ]);
        let uri = server.uri("vol0");
        let reads: Vec<String> = (0..members).map(|_| "read -P 0x0b 0 4M".into()).collect();
        qemu_io(&uri, &reads);
        let during = volume(&control);
        assert!(
            during["sync"].is_object(),
            "the resync still runs: {during}"
        );
        assert_eq!(during["state"], "resyncing", "{during}");
        let errors = after_resync(&server, &control);
        qemu_io(&uri, &reads);

        // Assert: nothing counted, and after a clean stop the resealed
        // checksums verify the data.
        assert_eq!(errors, vec![0; members], "level {level}");
        assert_eq!(csum_errors(&control), vec![0; members]);
        assert_eq!(server.stop(), 0);
        let server = Server::start(&serve_args(&paths, &control));
        qemu_io(&server.uri("vol0"), &reads);
        assert_eq!(csum_errors(&control), vec![0; members]);
        assert_eq!(server.stop(), 0);
    }
}

#[test]
fn a_corrupt_checksum_entry_is_counted_and_rewritten_from_redundancy() {
    // Arrange: a clean RAID-1; one entry of member 0's checksum area flipped.
    let (_dir, paths, control) = written_array("csum-entry", 1, 2, "0x44 0 1M");
    let block = 9u64;
    let csum_offset = examine(&paths[0])["csum_offset"].as_u64().unwrap();
    let entry_at = csum_offset + block * 4;
    let before = peek(&paths[0], entry_at, 4);
    assert_ne!(before, vec![0; 4], "the entry was written back at shutdown");
    flip_byte(&paths[0], entry_at + 1);

    // Act: the bad entry looks like bad data; the block is rewritten from
    // the mirror, which rewrites the entry too.
    let server = Server::start(&serve_args(&paths, &control));
    let reads: Vec<String> = (0..4)
        .map(|_| format!("read -P 0x44 {} 4K", block * BLOCK))
        .collect();
    qemu_io(&server.uri("vol0"), &reads);
    assert_eq!(csum_errors(&control), vec![1, 0]);
    assert_eq!(server.stop(), 0);

    // Assert: the entry on disk is right again.
    assert_eq!(peek(&paths[0], entry_at, 4), before);
}

#[test]
fn raid0_bad_block_fails_only_its_own_reads() {
    // Arrange
    let (_dir, paths, control) = written_array("csum-r0", 0, 2, "0x66 0 1M");
    // Member 0's block 2 = volume bytes 8K..12K.
    flip_byte(&paths[0], data_offset(&paths[0]) + 2 * BLOCK + 5);

    // Act
    let server = Server::start(&serve_args(&paths, &control));
    let uri = server.uri("vol0");
    let (bad, text) = qemu_io_try(&uri, &["read -P 0x66 8K 4K"]);
    let (left, _) = qemu_io_try(&uri, &["read -P 0x66 0 8K"]);
    let (right, _) = qemu_io_try(&uri, &["read -P 0x66 12K 1012K"]);

    // Assert
    assert!(!bad, "the bad block read succeeded:\n{text}");
    assert!(text.contains("Input/output error"), "{text}");
    assert!(left && right, "neighbouring blocks stay readable");
    assert_eq!(csum_errors(&control)[0], 1, "one bad block, read once");
    assert_eq!(volume(&control)["state"], "optimal");
    assert_eq!(server.stop(), 0);
}

#[test]
fn checksums_need_the_bitmap_and_can_be_turned_off() {
    // A config asking for checksums without the bitmap is refused.
    let dir = scratch_dir("csum-config");
    let paths = member_paths(dir.path(), 2);
    create_array(1, "64K", "32M", "vol0", &paths);
    let config = dir.path().join("vraid.toml");
    std::fs::write(
        &config,
        format!(
            "[[volume]]\nname = \"vol0\"\nlevel = 1\nmembers = [{:?}, {:?}]\nbitmap = false\nchecksums = true\n",
            paths[0], paths[1]
        ),
    )
    .unwrap();
    let out = run(vraid(&["serve", "--config", config.to_str().unwrap()]));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("checksums need the write-intent bitmap"),
        "{err}"
    );

    // --no-checksums: a flipped byte is served as it is (not verified), and
    // the superblock records that the checksums are no longer maintained.
    let control = dir.path().join("control.sock");
    let server = Server::start(&serve_args(&paths, &control));
    qemu_io(
        &server.uri("vol0"),
        &["write -P 0x77 0 64K".into(), "flush".into()],
    );
    assert_eq!(server.stop(), 0);
    let mut args = serve_args(&paths, &control);
    args.push("--no-checksums");
    let server = Server::start(&args);
    assert_eq!(examine(&paths[0])["checksums_valid"], false);
    assert_eq!(server.stop(), 0);
    // Back on: the whole array is resealed, then valid again.
    let server = Server::start(&serve_args(&paths, &control));
    server.wait_log("block checksums resealed", Duration::from_secs(60));
    qemu_io(&server.uri("vol0"), &["read -P 0x77 0 64K".into()]);
    assert_eq!(server.stop(), 0);
    assert_eq!(examine(&paths[0])["checksums_valid"], true);
}

#[test]
fn a_rebuilt_member_gets_checksums_even_over_a_garbage_area() {
    // Arrange: member 1 fails; a new file whose whole metadata region is
    // garbage (a disk from an earlier life) is added and rebuilt.
    let dir = scratch_dir("csum-rebuilt");
    let paths = member_paths(dir.path(), 2);
    create_array(1, "64K", "32M", "vol0", &paths);
    let control = dir.path().join("control.sock");
    let server = Server::start(&serve_args(&paths, &control));
    qemu_io(
        &server.uri("vol0"),
        &["write -P 0x3e 0 4M".into(), "flush".into()],
    );
    vraid_ctl_ok(&control, &["fail", "vol0", "1"]);
    vraid_ctl_ok(&control, &["remove", "vol0", "1"]);
    let new = dir.path().join("new.img");
    std::fs::write(&new, vec![0xffu8; 32 << 20]).unwrap();
    // Non-zero bytes: the pre-write check wants --force (README).
    vraid_ctl_ok(&control, &["add", "vol0", new.to_str().unwrap(), "--force"]);
    let deadline = Instant::now() + Duration::from_secs(120);
    while volume(&control)["state"] != "optimal" || !volume(&control)["sync"].is_null() {
        assert!(
            Instant::now() < deadline,
            "no rebuild: {}",
            volume(&control)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(server.stop(), 0);
    let members = [paths[0].clone(), new.clone()];

    // Act 1: the garbage was never trusted: nothing is reported.
    let server = Server::start(&serve_args(&members, &control));
    let uri = server.uri("vol0");
    qemu_io(
        &uri,
        &["read -P 0x3e 0 4M".into(), "read -P 0x3e 0 4M".into()],
    );
    assert_eq!(csum_errors(&control), vec![0, 0]);
    assert_eq!(server.stop(), 0);
    // Act 2: a flipped byte on the rebuilt member is caught.
    flip_byte(&new, data_offset(&new) + 21 * BLOCK + 9);
    let server = Server::start(&serve_args(&members, &control));
    let reads: Vec<String> = (0..2)
        .map(|_| format!("read -P 0x3e {} 4K", 21 * BLOCK))
        .collect();
    qemu_io(&server.uri("vol0"), &reads);

    // Assert
    assert_eq!(csum_errors(&control), vec![0, 1]);
    assert_eq!(server.stop(), 0);
}

#[test]
fn raid5_rebuild_over_a_bad_source_block_loses_only_that_block() {
    // Arrange: RAID-5 written, member 2's file gone, and the first data
    // block of member 0 (volume bytes 0..4K, stripe 0: parity on member 2)
    // silently flipped: nothing is left to rebuild that row from.
    let (dir, paths, control) = written_array("csum-lost", 5, 3, "0x77 0 4M");
    flip_byte(&paths[0], data_offset(&paths[0]) + 100);
    let size = std::fs::metadata(&paths[2]).unwrap().len();
    std::fs::remove_file(&paths[2]).unwrap();
    let server = Server::start(&serve_args(&paths, &control));
    let new = dir.path().join("new.img");
    std::fs::File::create(&new).unwrap().set_len(size).unwrap();

    // Act: rebuild onto a new member.
    vraid_ctl_ok(&control, &["add", "vol0", new.to_str().unwrap()]);
    let deadline = Instant::now() + Duration::from_secs(120);
    while !(volume(&control)["state"] == "optimal" && volume(&control)["sync"].is_null()) {
        assert!(
            Instant::now() < deadline,
            "no rebuild: {}",
            volume(&control)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let uri = server.uri("vol0");
    let (row, _) = qemu_io_try(&uri, &["read -P 0x77 0 4K"]);
    let (rest, text) = qemu_io_try(&uri, &["read -P 0x77 4K 4092K"]);
    let log = server.wait_log("marked lost", Duration::from_secs(5));
    qemu_io(
        &uri,
        &["write -P 0x78 0 4K".into(), "read -P 0x78 0 4K".into()],
    );
    let (healed, text2) = qemu_io_try(&uri, &["read -P 0x78 0 4K", "read -P 0x77 4K 60K"]);

    // Assert: the rebuild finished; only the lost row fails, and a write
    // makes it whole again.
    assert!(!row, "the lost row must not read back as data");
    assert!(rest, "{text}");
    assert!(log.contains("marked lost"));
    assert!(healed, "{text2}");
    assert_eq!(server.stop(), 0);
}
