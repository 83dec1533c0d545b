//! Red team of the RAID-6 write-hole journal (docs/FORMAT.md §9, cases
//! 66-71): ring contents left by a run with the journal must not be
//! replayed after a run served with `--no-journal` rewrote those blocks;
//! a replay must not make a block that rotted while the daemon was down
//! (it fails its checksum) the truth of its P and Q.

use std::path::PathBuf;
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
    let dir = scratch_dir("rt6-stale-ring");
    let paths = member_paths(dir.path(), 5);
    create_array(6, "64K", "48M", "vol0", &paths);
    let ctl = dir.path().join("ctl.sock");
    let ctl = ctl.to_str().unwrap();
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
    let dir = scratch_dir("rt6-rot-replay");
    let paths = member_paths(dir.path(), 5);
    create_array(6, "64K", "48M", "vol0", &paths);
    let ctl = dir.path().join("ctl.sock");
    let ctl = ctl.to_str().unwrap();
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
    // (blocks of a region dirty at the crash are trusted only after it:
    // STATUS known gaps).
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
