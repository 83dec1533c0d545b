//! Red team of the RAID-6 write-hole journal (docs/FORMAT.md §9, cases
//! 66-71): ring contents left by a run with the journal must not be
//! replayed after a run served with `--no-journal` rewrote those blocks;
//! a replay must not make a block that rotted while the daemon was down
//! (it fails its checksum) the truth of its P and Q; rings this build
//! wrote must not be replayed after an older build served the array
//! unlogged (cases 84-85); reads of a region dirty at a crash, before its
//! resync, must not return a block that fails its checksum.

use std::path::{Path, PathBuf};
use std::time::Duration;

use raid_tests::*;

const CHUNK: u64 = 64 << 10;
/// Data bytes of one stripe (5 members: 3 data chunks).
const SDS: u64 = 3 * CHUNK;
const STRIPES: u64 = 32;

/// The 4K block of stripe `s` written in every run.
fn block(s: u64) -> u64 {
    s * SDS + (s % 3) * CHUNK + (s % 5) * 4096
}

fn serve(paths: &[PathBuf], ctl: &str, journal: bool) -> Server {
    let mut args = vec!["--control", ctl];
    if !journal {
        args.push("--no-journal");
    }
    args.extend(paths.iter().map(|p| p.to_str().unwrap()));
    Server::start(&args)
}

/// Writes pattern `p` to every stripe's block, flushed.
/// A fresh 5-member RAID-6 (64K chunks, 48M members) named vol0 in a
/// scratch directory: the directory, the member paths and the control
/// socket path.
fn raid6_array(test: &str) -> (tempfile::TempDir, Vec<PathBuf>, String) {
    let dir = scratch_dir(test);
    let paths = member_paths(dir.path(), 5);
    create_array(6, "64K", "48M", "vol0", &paths);
    let ctl = dir.path().join("ctl.sock").to_str().unwrap().to_string();
    (dir, paths, ctl)
}

fn write_blocks(uri: &str, p: u8) {
    let mut cmds: Vec<String> = (0..STRIPES)
        .map(|s| format!("write -P {p} {} 4k", block(s)))
        .collect();
    cmds.push("flush".into());
    qemu_io(uri, &cmds);
}

#[test]
fn raid6_stale_ring_from_before_a_no_journal_run_is_not_replayed() {
    // Arrange: run 1 with the journal logs partial P/Q for every stripe
    // and is SIGKILLed; run 2 (--no-journal) replays it, rewrites the
    // same blocks and is SIGKILLed after a flush (nothing torn).
    let (_dir, paths, ctl) = raid6_array("rt6-stale-ring");
    let ctl = ctl.as_str();
    let server = serve(&paths, ctl, true);
    qemu_io(
        &server.uri("vol0"),
        &[format!("write -P 90 0 {}", STRIPES * SDS), "flush".into()],
    );
    write_blocks(&server.uri("vol0"), 1);
    server.kill();
    let server = serve(&paths, ctl, false);
    server.wait_log("write-hole protection is off", Duration::from_secs(30));
    write_blocks(&server.uri("vol0"), 2);
    server.kill();

    // Act: run 3 with the journal and two members gone (every read of
    // their chunks comes from P and Q).
    for p in &paths[1..=2] {
        std::fs::remove_file(p).unwrap();
    }
    let left = [paths[0].clone(), paths[3].clone(), paths[4].clone()];
    let server = serve(&left, ctl, true);

    // Assert: run 1's ring was not replayed; every byte is run 2's.
    let log = server.log();
    assert!(!log.contains("replaying the write-hole journal"), "{log}");
    let mut reads = Vec::new();
    for s in 0..STRIPES {
        let (w, start, end) = (block(s), s * SDS, (s + 1) * SDS);
        reads.push(format!("read -P 90 {start} {}", w - start));
        reads.push(format!("read -P 2 {w} 4k"));
        if end > w + 4096 {
            reads.push(format!("read -P 90 {} {}", w + 4096, end - w - 4096));
        }
    }
    let out = qemu_io(&server.uri("vol0"), &reads);
    assert!(!out.contains("verification failed"), "{out}\n{log}");
    assert_eq!(server.stop(), 0);
}

/// Another data chunk of stripe `s`, same rows as [`block`]: a write there
/// changes bytes that `block`'s journal entry took as untouched.
fn block2(s: u64) -> u64 {
    s * SDS + ((s + 1) % 3) * CHUNK + (s % 5) * 4096
}

/// Rewrites both superblock copies of `member` as a build without the
/// live-journal flag leaves them after serving a RAID-6 `--no-journal`:
/// `journal_state` 1 as it found it, `flags` bit 2 clear (FORMAT.md §9,
/// case 84). Returns the flags found.
fn as_older_build(member: &Path) -> u32 {
    let mut found = 0;
    for copy in [0u64, 4096] {
        let mut sb = peek(member, copy, 4096);
        let flags = u32::from_le_bytes(sb[12..16].try_into().unwrap());
        found |= flags;
        sb[12..16].copy_from_slice(&(flags & !0x4).to_le_bytes());
        sb[176..180].copy_from_slice(&1u32.to_le_bytes());
        sb[4092..].fill(0);
        let crc = crc32fast::hash(&sb);
        sb[4092..].copy_from_slice(&crc.to_le_bytes());
        poke(member, copy, &sb);
    }
    found
}

/// `flags` of both superblock copies of `member`, ORed.
fn sb_flags(member: &Path) -> u32 {
    [0u64, 4096]
        .iter()
        .map(|&c| u32::from_le_bytes(peek(member, c + 12, 4).try_into().unwrap()))
        .fold(0, |a, f| a | f)
}

#[test]
fn raid6_ring_left_before_an_older_builds_run_is_not_replayed() {
    // Arrange: run 1 with the journal logs a partial write per stripe and
    // stops cleanly; run 2 stands for an older build: `--no-journal`
    // writes other chunks of the same rows (the entries' "untouched"
    // bytes), SIGKILL after a flush, then its superblocks as that build
    // leaves them (journal_state 1, no live-journal bit).
    let (_dir, paths, ctl) = raid6_array("rt6-older-build");
    let ctl = ctl.as_str();
    let server = serve(&paths, ctl, true);
    qemu_io(
        &server.uri("vol0"),
        &[format!("write -P 90 0 {}", STRIPES * SDS), "flush".into()],
    );
    write_blocks(&server.uri("vol0"), 1);
    assert_eq!(server.stop(), 0);
    assert!(paths.iter().all(|p| sb_flags(p) & 0x4 == 0), "clean stop");
    let server = serve(&paths, ctl, false);
    server.wait_log("write-hole protection is off", Duration::from_secs(30));
    let mut cmds: Vec<String> = (0..STRIPES)
        .map(|s| format!("write -P 2 {} 4k", block2(s)))
        .collect();
    cmds.push("flush".into());
    qemu_io(&server.uri("vol0"), &cmds);
    server.kill();
    for p in &paths {
        as_older_build(p);
    }

    // Act: this build, two members gone.
    for p in &paths[1..=2] {
        std::fs::remove_file(p).unwrap();
    }
    let left = [paths[0].clone(), paths[3].clone(), paths[4].clone()];
    let server = serve(&left, ctl, true);

    // Assert: run 1's ring was not replayed; every byte is as written.
    let log = server.log();
    assert!(log.contains("crash case 84"), "{log}");
    assert!(!log.contains("replaying the write-hole journal"), "{log}");
    let mut reads = Vec::new();
    for s in 0..STRIPES {
        let (mut at, end) = (s * SDS, (s + 1) * SDS);
        let mut written = [(block(s), 1), (block2(s), 2)];
        written.sort();
        for (w, p) in written {
            reads.push(format!("read -P 90 {at} {}", w - at));
            reads.push(format!("read -P {p} {w} 4k"));
            at = w + 4096;
        }
        reads.push(format!("read -P 90 {at} {}", end - at));
    }
    let (ok, out) = qemu_io_try(&server.uri("vol0"), &reads);
    assert!(ok && !out.contains("verification failed"), "{out}\n{log}");
    assert_eq!(server.stop(), 0);
}

#[test]
fn raid6_members_of_a_crashed_journal_run_carry_the_bit_older_builds_refuse() {
    // Arrange: a run with the journal writes and is SIGKILLed.
    let (_dir, paths, ctl) = raid6_array("rt6-live-bit");
    let ctl = ctl.as_str();
    let server = serve(&paths, ctl, true);
    write_blocks(&server.uri("vol0"), 1);
    server.kill();

    // Assert: every member says "RAID-6 journal live" (flags bit 2, which
    // builds before it refuse: FORMAT.md §9 case 85) ...
    let flags: Vec<u32> = paths.iter().map(|p| sb_flags(p)).collect();
    assert!(flags.iter().all(|f| f & 0x4 != 0), "{flags:?}");

    // ... until this build replays and stops cleanly; a run without the
    // journal never sets it.
    let server = serve(&paths, ctl, true);
    server.wait_log("replaying the write-hole journal", Duration::from_secs(30));
    // (A stop before the crash resync ends leaves the array dirty.)
    server.wait_log("resync finished", Duration::from_secs(120));
    assert_eq!(server.stop(), 0);
    let flags: Vec<u32> = paths.iter().map(|p| sb_flags(p)).collect();
    assert!(flags.iter().all(|f| f & 0x4 == 0), "{flags:?}");
    let server = serve(&paths, ctl, false);
    write_blocks(&server.uri("vol0"), 2);
    server.kill();
    assert!(paths.iter().all(|p| sb_flags(p) & 0x4 == 0));
}

/// Member holding data chunk 0 of stripe `s` (5 members, md's
/// left-symmetric layout: P on `4 - s % 5`, Q after it, data after Q).
fn chunk0_member(s: u64) -> usize {
    ((4 - s % 5 + 2) % 5) as usize
}

/// Acknowledged 4K writes, SIGKILL, the blocks rot, restart (with
/// `journal` in both runs): the `read -P` output of those blocks, and the
/// restart's log.
fn rot_after_crash(journal: bool) -> (bool, String, String) {
    // Arrange: an acknowledged, flushed 4K write at the start of each of
    // 10 stripes (their journal entries still in the rings), SIGKILL,
    // then one byte of every written block flipped on its member.
    let (_dir, paths, ctl) = raid6_array("rt6-rot-replay");
    let ctl = ctl.as_str();
    let server = serve(&paths, ctl, journal);
    qemu_io(
        &server.uri("vol0"),
        &[format!("write -P 90 0 {}", STRIPES * SDS), "flush".into()],
    );
    let mut cmds: Vec<String> = (0..10)
        .map(|s| format!("write -P 7 {} 4k", s * SDS))
        .collect();
    cmds.push("flush".into());
    qemu_io(&server.uri("vol0"), &cmds);
    server.kill();
    for s in 0..10 {
        let m = &paths[chunk0_member(s)];
        let base = examine(m)["data_offset"].as_u64().unwrap();
        flip_byte(m, base + s * CHUNK + 100);
    }

    // Act: restart with every member; read once the crash resync is over
    // (reads before it: `raid6_read_before_the_crash_resync_...`).
    let server = serve(&paths, ctl, journal);
    server.wait_log("resync finished", Duration::from_secs(120));
    let reads: Vec<String> = (0..10)
        .map(|s| format!("read -P 7 {} 4k", s * SDS))
        .collect();
    let (ok, out) = qemu_io_try(&server.uri("vol0"), &reads);
    let log = server.log();
    assert_eq!(server.stop(), 0);
    (ok, out, log)
}

/// A break found here (fixed in ppl6.rs `write_checked`): the replay
/// folded the rotten block into P and Q (rule 1 had no RAID-5-style "keep
/// parity over a block failing its checksum"), the crash resync then found
/// data, P and Q agreeing and adopted the rotten bytes: every acknowledged
/// block silently read back wrong.
#[test]
fn raid6_replay_keeps_p_and_q_over_a_data_block_that_fails_its_checksum() {
    let (ok, out, log) = rot_after_crash(true);
    assert!(log.contains("replaying the write-hole journal"), "{log}");
    assert!(ok, "{out}\n{log}");
}

/// The control: the same crash and rot without the journal is repaired
/// (checksum-guided, from P and Q), so the loss above is the replay's.
#[test]
fn raid6_without_the_journal_a_rotten_block_after_a_crash_is_repaired() {
    let (ok, out, log) = rot_after_crash(false);
    assert!(ok, "{out}\n{log}");
}

/// Serves `paths` from a config with a slow resync (1 MB/s), so reads of
/// the members' last stripes run long before the resync reaches them.
fn serve_slow_resync(dir: &Path, paths: &[PathBuf], level: u32, ctl: &str) -> Server {
    let config = dir.join("slow.toml");
    let list: Vec<String> = paths.iter().map(|p| format!("{p:?}")).collect();
    std::fs::write(
        &config,
        format!(
            "[[volume]]\nname = \"vol0\"\nlevel = {level}\nmembers = [{}]\nrebuild_max_mbps = 1\n",
            list.join(", ")
        ),
    )
    .unwrap();
    Server::start(&["--config", config.to_str().unwrap(), "--control", ctl])
}

#[test]
fn raid6_read_before_the_crash_resync_serves_a_rotten_block_from_p_and_q() {
    // Arrange: acknowledged, flushed 4K writes at the start of the last
    // 10 stripes, SIGKILL, then one byte of every written block flipped
    // on its member (rot while the daemon was down).
    let (dir, paths, ctl) = raid6_array("rt6-rot-early");
    let ctl = ctl.as_str();
    let stripes = examine(&paths[0])["data_size"].as_u64().unwrap() / CHUNK;
    let written = stripes - 10..stripes;
    let server = serve(&paths, ctl, true);
    // Everything written: the resync skips nothing (FORMAT.md §10).
    let mut cmds = vec![format!("write -P 90 0 {}", stripes * SDS)];
    cmds.extend(
        written
            .clone()
            .map(|s| format!("write -P 7 {} 4k", s * SDS)),
    );
    cmds.push("flush".into());
    qemu_io(&server.uri("vol0"), &cmds);
    server.kill();
    for s in written.clone() {
        let m = &paths[chunk0_member(s)];
        let base = examine(m)["data_offset"].as_u64().unwrap();
        flip_byte(m, base + s * CHUNK + 100);
    }

    // Act: restart; read the blocks while the crash resync is still far
    // from them.
    let server = serve_slow_resync(dir.path(), &paths, 6, ctl);
    let reads: Vec<String> = written
        .map(|s| format!("read -P 7 {} 4k", s * SDS))
        .collect();
    let (ok, out) = qemu_io_try(&server.uri("vol0"), &reads);
    let log = server.log();

    // Assert: every block as written, served from P/Q, before the resync.
    assert!(!log.contains("resync finished"), "{log}");
    assert!(ok && !out.contains("verification failed"), "{out}\n{log}");
    assert!(log.contains("served from P/Q"), "{log}");
    assert_eq!(server.stop(), 0);
}

#[test]
fn raid1_read_before_the_crash_resync_serves_the_mirror_that_passes() {
    // Arrange: acknowledged, flushed writes at the end of a RAID-1,
    // SIGKILL, then one byte of each written block flipped on mirror 0.
    let dir = scratch_dir("rt1-rot-early");
    let paths = member_paths(dir.path(), 2);
    create_array(1, "64K", "48M", "vol0", &paths);
    let ctl = dir.path().join("ctl.sock");
    let ctl = ctl.to_str().unwrap();
    let size = examine(&paths[0])["data_size"].as_u64().unwrap();
    let blocks: Vec<u64> = (1..=8).map(|i| size - i * 64 * 1024).collect();
    let server = serve(&paths, ctl, true);
    let mut cmds = vec![format!("write -P 90 0 {size}")];
    cmds.extend(blocks.iter().map(|b| format!("write -P 7 {b} 4k")));
    cmds.push("flush".into());
    qemu_io(&server.uri("vol0"), &cmds);
    server.kill();
    let base = examine(&paths[0])["data_offset"].as_u64().unwrap();
    for b in &blocks {
        flip_byte(&paths[0], base + b + 100);
    }

    // Act: restart; read each block twice (both mirrors take turns) while
    // the crash resync is still far from them.
    let server = serve_slow_resync(dir.path(), &paths, 1, ctl);
    let reads: Vec<String> = blocks
        .iter()
        .flat_map(|b| [format!("read -P 7 {b} 4k"), format!("read -P 7 {b} 4k")])
        .collect();
    let (ok, out) = qemu_io_try(&server.uri("vol0"), &reads);
    let log = server.log();

    // Assert: every read as written, before the resync ended.
    assert!(!log.contains("resync finished"), "{log}");
    assert!(ok && !out.contains("verification failed"), "{out}\n{log}");
    assert_eq!(server.stop(), 0);
}
