//! Issue 16, items 5, 10 and 13, against the real daemon with qemu-io:
//! a read error on a rebuild source costs that block, not the source
//! member; and bytes written wrong to a member (`fault --kind corrupt --op
//! write`) inside a region dirty at a SIGKILL are repaired by the crash
//! resync from redundancy, never sealed as the truth (RAID-5 with checksums
//! and journal, RAID-1 with 2 and 3 mirrors).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use raid_tests::*;
use serde_json::Value;

const K: u64 = 1024;

fn serve_args<'a>(paths: &'a [PathBuf], control: &'a Path) -> Vec<&'a str> {
    let mut a: Vec<&str> = paths.iter().map(|p| p.to_str().unwrap()).collect();
    a.extend(["--control", control.to_str().unwrap()]);
    a
}

fn volume(control: &Path) -> Value {
    status_json(control)["volumes"][0].clone()
}

fn member_state(control: &Path, m: usize) -> String {
    volume(control)["members"][m]["state"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

/// `vraid fault add vol0 PATH --kind KIND --op OP --offset .. --length ..`.
fn add_fault(control: &Path, member: &Path, kind: &str, op: &str, offset: u64, len: u64) {
    vraid_ctl_ok(
        control,
        &[
            "fault",
            "add",
            "vol0",
            member.to_str().unwrap(),
            "--kind",
            kind,
            "--op",
            op,
            "--offset",
            &offset.to_string(),
            "--length",
            &len.to_string(),
        ],
    );
}

/// Waits for the log to say the rebuild ended, either way.
fn wait_rebuild_end(server: &Server) -> String {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let log = server.log();
        if log.contains("rebuild finished") || log.contains("rebuild stopped") {
            return log;
        }
        assert!(Instant::now() < deadline, "no rebuild end:\n{log}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Member `failed` of a running array is failed and removed, a read fault
/// of 8 KiB is put on member 0 at member data offset `at`, and a new file
/// is added: the log once the rebuild ended.
fn rebuild_with_read_fault(
    dir: &Path,
    paths: &[PathBuf],
    control: &Path,
    server: &Server,
    failed: usize,
    at: u64,
) -> String {
    vraid_ctl_ok(control, &["fail", "vol0", &failed.to_string()]);
    vraid_ctl_ok(control, &["remove", "vol0", &failed.to_string()]);
    add_fault(control, &paths[0], "error", "read", at, 8 * K);
    let size = std::fs::metadata(&paths[0]).unwrap().len();
    let new = dir.join("new.img");
    std::fs::File::create(&new).unwrap().set_len(size).unwrap();
    vraid_ctl_ok(control, &["add", "vol0", new.to_str().unwrap()]);
    wait_rebuild_end(server)
}

#[test]
fn raid5_rebuild_over_a_source_read_error_keeps_the_source_and_loses_one_block() {
    // Arrange: RAID-5 of 4 (64 KiB chunks), 8 MiB written. Stripe 19 has
    // its parity on member 0 and data chunk 2 on member 3: a read error on
    // member 0 there leaves nothing to rebuild member 3's bytes from.
    let dir = scratch_dir("sr-r5-readerr");
    let paths = member_paths(dir.path(), 4);
    create_array(5, "64K", "32M", "vol0", &paths);
    let control = dir.path().join("control.sock");
    let server = Server::start(&serve_args(&paths, &control));
    let uri = server.uri("vol0");
    qemu_io(&uri, &["write -P 0x5c 0 8M".into(), "flush".into()]);
    let stripe = 19;
    let at = stripe * 64 * K + 16 * K;
    let lost_at = stripe * 3 * 64 * K + 2 * 64 * K + 16 * K;

    // Act: member 3 replaced while member 0 cannot read 8 KiB of stripe 19.
    let log = rebuild_with_read_fault(dir.path(), &paths, &control, &server, 3, at);

    // Assert: the rebuild finished; the source stays; the volume is whole
    // but for the 8 KiB that had no source left.
    assert!(log.contains("rebuild finished"), "{log}");
    assert!(log.contains("could not be read"), "{log}");
    assert_eq!(member_state(&control, 0), "active", "{}", volume(&control));
    assert_eq!(volume(&control)["state"], "optimal", "{}", volume(&control));
    let before = format!("read -P 0x5c 0 {lost_at}");
    let after = format!(
        "read -P 0x5c {} {}",
        lost_at + 8 * K,
        (8 << 20) - lost_at - 8 * K
    );
    let (rest_ok, text) = qemu_io_try(&uri, &[before.as_str(), after.as_str()]);
    assert!(rest_ok, "{text}");
    let (lost_ok, _) = qemu_io_try(&uri, &[format!("read {lost_at} 8K")]);
    assert!(
        !lost_ok,
        "the lost block reads as an error, never as zeroes"
    );
    let (row_ok, text) = qemu_io_try(&uri, &[format!("read -P 0x5c {} 4K", lost_at + 8 * K)]);
    assert!(row_ok, "{text}");
    assert_eq!(server.stop(), 0);
}

#[test]
fn raid1_rebuild_over_a_source_read_error_reads_the_block_from_the_third_mirror() {
    // Arrange: 3-way RAID-1 with 8 MiB written.
    let dir = scratch_dir("sr-r1-readerr");
    let paths = member_paths(dir.path(), 3);
    create_array(1, "64K", "32M", "vol0", &paths);
    let control = dir.path().join("control.sock");
    let server = Server::start(&serve_args(&paths, &control));
    qemu_io(
        &server.uri("vol0"),
        &["write -P 0x1d 0 8M".into(), "flush".into()],
    );

    // Act: mirror 2 replaced while mirror 0 cannot read 8 KiB at 1 MiB.
    let log = rebuild_with_read_fault(dir.path(), &paths, &control, &server, 2, 1 << 20);

    // Assert: finished, nothing lost, mirror 0 still in; the new member
    // holds mirror 1's bytes.
    assert!(log.contains("rebuild finished"), "{log}");
    assert!(!log.contains("marked lost"), "{log}");
    assert_eq!(member_state(&control, 0), "active");
    assert_eq!(volume(&control)["state"], "optimal");
    assert_eq!(server.stop(), 0);
    let new = dir.path().join("new.img");
    assert!(member_data(&new) == member_data(&paths[1]));
}

/// One crash round: a `corrupt --op write` fault on `victim` over member
/// data `at..at+len`, `pattern` written and flushed over the first 4 MiB
/// and read back right (checksums), SIGKILL, restart, resync, repairing
/// scrub, check scrub: the data must be the client's.
fn corrupt_write_then_sigkill(level: u32, members: usize, victim: usize, at: u64, len: u64) {
    // Arrange
    let dir = scratch_dir(&format!("sr-crash-r{level}-{members}-{at}"));
    let paths = member_paths(dir.path(), members);
    create_array(level, "64K", "32M", "vol0", &paths);
    let control = dir.path().join("control.sock");
    let server = Server::start(&serve_args(&paths, &control));
    let uri = server.uri("vol0");
    qemu_io(&uri, &["write -P 0x11 0 4M".into(), "flush".into()]);
    add_fault(&control, &paths[victim], "corrupt", "write", at, len);
    let pattern = 0x60 + (at / (64 * K)) as u8;
    let read = format!("read -P {pattern} 0 4M");

    // Act: the write lands wrong on the victim; reads are still right
    // (the checksums send them to redundancy); the process is killed while
    // the region is dirty.
    qemu_io(&uri, &[format!("write -P {pattern} 0 4M"), "flush".into()]);
    let (before_ok, text) = qemu_io_try(&uri, &[read.as_str()]);
    assert!(before_ok, "before the crash: {text}");
    server.kill();
    let server = Server::start(&serve_args(&paths, &control));
    server.wait_log("resync finished", Duration::from_secs(60));
    let (resynced_ok, resynced) = qemu_io_try(&server.uri("vol0"), &[read.as_str()]);
    let repair = vraid_ctl_ok(&control, &["scrub", "vol0", "--repair"]);
    let check = vraid_ctl_ok(&control, &["scrub", "vol0"]);
    let (after_ok, after) = qemu_io_try(&server.uri("vol0"), &[read.as_str()]);

    // Assert: the client's data, before and after the scrubs.
    assert!(
        resynced_ok,
        "after the resync: {resynced}\n{}",
        server.log()
    );
    assert!(after_ok, "after the scrubs: {after}\n{repair}\n{check}");
    assert_eq!(server.stop(), 0);
    if level == 1 {
        let first = member_data(&paths[0]);
        for p in &paths[1..] {
            assert!(member_data(p) == first, "mirror {} differs", p.display());
        }
    } else {
        assert_eq!(
            bad_parity_stripes(&paths, 64 * K as usize),
            Vec::<usize>::new()
        );
    }
}

#[test]
fn raid5_data_written_wrong_in_a_dirty_region_survives_sigkill_and_scrub() {
    // Member 1 holds data in stripes 0 and 1 (4 members: parity rotates from
    // member 3 down; stripe 2's parity is on member 1): 8 KiB and a whole
    // chunk of data, and a parity block.
    for (at, len) in [
        (8 * K, 8 * K),
        (64 * K, 64 * K),
        (2 * 64 * K + 4 * K, 4 * K),
    ] {
        corrupt_write_then_sigkill(5, 4, 1, at, len);
    }
}

#[test]
fn raid1_two_mirrors_mirror_0_written_wrong_survives_sigkill_and_scrub() {
    for (at, len) in [(0, 4 << 20), (64 * K, 8 * K), (1 << 20, 1 << 20)] {
        corrupt_write_then_sigkill(1, 2, 0, at, len);
    }
}

#[test]
fn raid1_three_mirrors_mirror_0_written_wrong_survives_sigkill_and_scrub() {
    for (at, len) in [(0, 4 << 20), (12 * K, 4 * K), (2 << 20, 2 << 20)] {
        corrupt_write_then_sigkill(1, 3, 0, at, len);
    }
}
