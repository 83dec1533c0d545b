//! Red team of the RAID-6 write-hole journal (docs/FORMAT.md §9, cases
//! 66-71): ring contents left by a run with the journal must not be
//! replayed after a run served with `--no-journal` rewrote those blocks.

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
