//! Red-team regressions of the crash resync's trust rules (issue 16 items
//! 10 and 13, docs/FORMAT.md §8 "Which checksum is trusted where"), against
//! the real daemon with qemu-io.

use std::path::{Path, PathBuf};
use std::time::Duration;

use raid_tests::*;

const M: u64 = 1 << 20;

/// A config serving `paths` as `vol0` with a slow resync (2 MB/s), so a
/// client reaches a region dirty at the crash before the resync does.
fn slow_resync_config(dir: &Path, level: u32, paths: &[PathBuf]) -> PathBuf {
    let members: Vec<String> = paths
        .iter()
        .map(|p| format!("{:?}", p.to_str().unwrap()))
        .collect();
    let cfg = dir.join("vraid.toml");
    std::fs::write(
        &cfg,
        format!(
            "[[volume]]\nname = \"vol0\"\nlevel = {level}\nmembers = [{}]\nrebuild_max_mbps = 2\n",
            members.join(", ")
        ),
    )
    .unwrap();
    cfg
}

/// RAID-1 with `mirrors` mirrors: 16 MiB written and flushed while mirror 0
/// writes the 4 KiB block at 12 MiB wrong (reads are right: its checksum
/// sends them to another mirror); SIGKILL; restarted with a slow resync, a
/// client writes 512 bytes into that block before the resync reaches it.
/// The block must end up as the client wrote it: 512 new bytes, the rest
/// of the flushed write, after the resync and after a repairing scrub.
fn partial_write_into_a_dirty_corrupt_block(mirrors: usize) {
    // Arrange
    let dir = scratch_dir(&format!("rt-r1-pinned-{mirrors}"));
    let paths = member_paths(dir.path(), mirrors);
    create_array(1, "64K", "32M", "vol0", &paths);
    let cfg = slow_resync_config(dir.path(), 1, &paths);
    let control = dir.path().join("control.sock");
    let args = [
        "--config",
        cfg.to_str().unwrap(),
        "--control",
        control.to_str().unwrap(),
    ];
    let server = Server::start(&args);
    let uri = server.uri("vol0");
    qemu_io(&uri, &["write -P 0x11 0 16M".into(), "flush".into()]);
    let at = 12 * M;
    vraid_ctl_ok(
        &control,
        &[
            "fault",
            "add",
            "vol0",
            paths[0].to_str().unwrap(),
            "--kind",
            "corrupt",
            "--op",
            "write",
            "--offset",
            &at.to_string(),
            "--length",
            "4096",
        ],
    );
    qemu_io(&uri, &["write -P 0x22 0 16M".into(), "flush".into()]);
    let read = [
        format!("read -P 0x33 {at} 512"),
        format!("read -P 0x22 {} 3584", at + 512),
    ];
    let (before_ok, text) = qemu_io_try(&uri, &[format!("read -P 0x22 {at} 4K")]);
    assert!(before_ok, "before the crash: {text}");

    // Act: SIGKILL, restart, and 512 bytes written into the corrupt block
    // while its region still waits for the resync.
    server.kill();
    let server = Server::start(&args);
    let uri = server.uri("vol0");
    qemu_io(&uri, &[format!("write -P 0x33 {at} 512"), "flush".into()]);
    assert!(
        !server.log().contains("resync finished"),
        "the write must reach the region before the resync: {}",
        server.log()
    );
    server.wait_log("resync finished", Duration::from_secs(120));
    let (resynced_ok, resynced) = qemu_io_try(&uri, &read);
    let repair = vraid_ctl_ok(&control, &["scrub", "vol0", "--repair"]);
    let (after_ok, after) = qemu_io_try(&uri, &read);

    // Assert: the client's bytes, and every mirror holds them.
    assert!(
        resynced_ok,
        "after the resync: {resynced}\n{}",
        server.log()
    );
    assert!(after_ok, "after the repairing scrub: {after}\n{repair}");
    assert_eq!(server.stop(), 0);
    let first = member_data(&paths[0]);
    for p in &paths[1..] {
        assert!(member_data(p) == first, "mirror {} differs", p.display());
    }
}

#[test]
fn raid1_two_mirrors_partial_write_into_a_dirty_corrupt_block_keeps_the_good_copy() {
    partial_write_into_a_dirty_corrupt_block(2);
}

#[test]
fn raid1_three_mirrors_partial_write_into_a_dirty_corrupt_block_keeps_the_good_copy() {
    partial_write_into_a_dirty_corrupt_block(3);
}
