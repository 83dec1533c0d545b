//! Red-team tests of the written-region map (docs/FORMAT.md §10): ways a
//! rebuild could skip a region that holds data. Each test writes through
//! the real binary, brings a member in, and reads every written byte back
//! with the other copies gone.

use std::path::{Path, PathBuf};
use std::time::Duration;

use raid_tests::*;

const MIB: u64 = 1 << 20;
const WAIT: Duration = Duration::from_secs(60);

fn serve(members: &[PathBuf], control: &Path) -> Server {
    let mut args = vec!["--control", control.to_str().unwrap()];
    args.extend(members.iter().map(|m| m.to_str().unwrap()));
    let server = Server::start(&args);
    wait_for_socket(control);
    server
}

fn write_flush(server: &Server, at: u64, len: u64, pattern: u8) {
    qemu_io(
        &server.uri("vol0"),
        &[format!("write -P {pattern} {at} {len}"), "flush".into()],
    );
}

fn read_ok(server: &Server, at: u64, len: u64, pattern: u8) -> (bool, String) {
    qemu_io_try(
        &server.uri("vol0"),
        &[format!("read -P {pattern} {at} {len}")],
    )
}

fn written_bytes(control: &Path) -> u64 {
    volume_status(control, "vol0")["written_bytes"]
        .as_u64()
        .unwrap()
}

/// A RAID-1 member away while a new region is first written comes back
/// and is caught up from the bitmap (recovery). Its own written image must
/// learn the region too: later it may be the only copy left, and a
/// rebuild from it alone must not skip the region.
#[test]
fn member_readded_at_start_alone_still_knows_the_regions_written_while_away() {
    readded_member_alone_keeps_regions_written_while_away(false);
}

#[test]
fn member_readded_by_add_alone_still_knows_the_regions_written_while_away() {
    readded_member_alone_keeps_regions_written_while_away(true);
}

fn readded_member_alone_keeps_regions_written_while_away(by_add: bool) {
    // Arrange: region 0 written with both members.
    let dir = scratch_dir("rt-readd");
    let ctl = dir.path().join("ctl.sock");
    let members = sparse_members(dir.path(), 2, 512 * MIB);
    create_array(1, "64K", "512M", "vol0", &members);
    let server = serve(&members, &ctl);
    write_flush(&server, 0, 4 * MIB, 0x11);
    assert_eq!(server.stop(), 0);

    // Member 1 away while region 3 is first written.
    let away = dir.path().join("away.img");
    std::fs::rename(&members[1], &away).unwrap();
    let server = serve(&members, &ctl);
    write_flush(&server, 200 * MIB, 4 * MIB, 0x22);

    // Member 1 back: re-added from the bitmap (by `add`, or at a start).
    std::fs::rename(&away, &members[1]).unwrap();
    let server = if by_add {
        vraid_ctl_ok(&ctl, &["add", "vol0", members[1].to_str().unwrap()]);
        server
    } else {
        assert_eq!(server.stop(), 0);
        serve(&members, &ctl)
    };
    server.wait_log("recovery of member 1 finished", WAIT);
    assert_eq!(server.stop(), 0);

    // Act: member 0 lost for good; a new disk rebuilt from member 1 alone.
    std::fs::remove_file(&members[0]).unwrap();
    let server = serve(&members, &ctl);
    let known = written_bytes(&ctl);
    let spare = dir.path().join("spare.img");
    std::fs::File::create(&spare)
        .unwrap()
        .set_len(512 * MIB)
        .unwrap();
    vraid_ctl_ok(&ctl, &["add", "vol0", spare.to_str().unwrap(), "--force"]);
    server.wait_log("rebuild of member 0 finished", WAIT);
    vraid_ctl_ok(&ctl, &["fail", "vol0", "1"]);

    // Assert: the new disk alone holds both writes.
    let (ok0, out0) = read_ok(&server, 0, 4 * MIB, 0x11);
    let (ok3, out3) = read_ok(&server, 200 * MIB, 4 * MIB, 0x22);
    assert!(ok0, "region 0 lost:\n{out0}");
    assert!(
        ok3,
        "region written while member 1 was away lost after the rebuild \
         (written_bytes seen from member 1 alone: {known}):\n{out3}"
    );
    assert_eq!(server.stop(), 0);
}

fn create_raid5(members: &[PathBuf], layout: &str) {
    let mut c = vraid(&[
        "create",
        "--level",
        "5",
        "--chunk-size",
        "64K",
        "--member-size",
        "256M",
        "--name",
        "vol0",
        "--checksum-layout",
        layout,
    ]);
    c.args(members);
    run_ok(&mut c);
}

/// A file full of `byte` (a disk used before).
fn used_disk(path: &Path, size: u64, byte: u8) {
    use std::io::Write;
    let mut f = std::fs::File::create(path).unwrap();
    let block = vec![byte; MIB as usize];
    for _ in 0..size / MIB {
        f.write_all(&block).unwrap();
    }
    f.sync_all().unwrap();
}

fn scrub_clean(ctl: &Path) {
    let out = vraid_ctl_ok(ctl, &["scrub", "vol0", "--json"]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let s = &v["scrub"];
    assert_eq!(s["outcome"], "finished", "{s}");
    assert_eq!(s["found"], 0, "{s}");
    assert_eq!(s["mismatches"], 0, "{s}");
}

/// A RAID-5 member replaced by a disk full of old bytes: the regions the
/// rebuild skips must read as zeroes, and a partial-stripe write there
/// later (read-modify-write against the skipped parity/data) must survive
/// the loss of another member.
fn used_spare_skipped_regions_are_zero_and_consistent(layout: &str) {
    // Arrange: 4 MiB written in region 0; regions 1.. never written.
    let dir = scratch_dir("rt-used-spare");
    let ctl = dir.path().join("ctl.sock");
    let members = sparse_members(dir.path(), 3, 256 * MIB);
    create_raid5(&members, layout);
    let server = serve(&members, &ctl);
    write_flush(&server, 0, 4 * MIB, 0x11);
    let spare = dir.path().join("used.img");
    used_disk(&spare, 256 * MIB, 0xa5);

    // Act: member 2 replaced by the used disk.
    fail_remove_add(&ctl, "2", &spare);
    let log = server.wait_log("rebuild of member 2 finished", WAIT);
    assert!(!log.contains("skipped 0 bytes"), "{log}");

    // Assert: never-written bytes read as zeroes; scrub clean.
    let at = 300 * MIB;
    let (ok, out) = read_ok(&server, at, 4 * MIB, 0);
    assert!(
        ok,
        "a skipped region of the used disk leaks old bytes:\n{out}"
    );
    scrub_clean(&ctl);
    // Partial-stripe writes in a skipped region, then another member lost.
    qemu_io(
        &server.uri("vol0"),
        &[
            format!("write -P 0x33 {} 4096", at + 4096),
            format!("write -P 0x44 {} 4096", at + 64 * 1024 + 8192),
            "flush".into(),
        ],
    );
    scrub_clean(&ctl);
    vraid_ctl_ok(&ctl, &["fail", "vol0", "0"]);
    let cmds = [
        format!("read -P 0 {at} 4096"),
        format!("read -P 0x33 {} 4096", at + 4096),
        format!("read -P 0 {} {}", at + 8192, 64 * 1024),
        format!("read -P 0x44 {} 4096", at + 64 * 1024 + 8192),
        format!("read -P 0 {} {}", at + 64 * 1024 + 12288, 2 * MIB),
        format!("read -P 0x11 0 {}", 4 * MIB),
    ];
    let (ok, out) = qemu_io_try(&server.uri("vol0"), &cmds);
    assert!(
        ok,
        "degraded read after the rebuild onto a used disk:\n{out}"
    );
    assert_eq!(server.stop(), 0);
}

#[test]
fn used_spare_separate_checksums_skipped_regions_read_zero_and_hold_parity() {
    used_spare_skipped_regions_are_zero_and_consistent("separate");
}

#[test]
fn used_spare_inline_checksums_skipped_regions_read_zero_and_hold_parity() {
    used_spare_skipped_regions_are_zero_and_consistent("inline");
}

/// A run without the write-intent bitmap (`bitmap = false`) cannot track
/// first writes: a region it writes must still be copied by a later
/// rebuild (FORMAT.md §10, W-6).
#[test]
fn region_first_written_by_a_run_without_bitmap_is_rebuilt() {
    // Arrange: region 0 written normally, region 3 by a run without bitmap.
    let dir = scratch_dir("rt-nobitmap");
    let ctl = dir.path().join("ctl.sock");
    let members = sparse_members(dir.path(), 2, 512 * MIB);
    create_array(1, "64K", "512M", "vol0", &members);
    let server = serve(&members, &ctl);
    write_flush(&server, 0, 4 * MIB, 0x11);
    assert_eq!(server.stop(), 0);
    let config = dir.path().join("vraid.toml");
    std::fs::write(
        &config,
        format!(
            "[[volume]]\nname = \"vol0\"\nlevel = 1\nmembers = [{:?}, {:?}]\nbitmap = false\nchecksums = false\n",
            members[0], members[1]
        ),
    )
    .unwrap();
    let server = Server::start(&[
        "--control",
        ctl.to_str().unwrap(),
        "--config",
        config.to_str().unwrap(),
    ]);
    wait_for_socket(&ctl);
    write_flush(&server, 200 * MIB, 4 * MIB, 0x22);
    assert_eq!(server.stop(), 0);

    // Act: back with the bitmap; member 0 replaced by a new disk.
    let server = serve(&members, &ctl);
    std::fs::remove_file(&members[0]).unwrap();
    let fresh = dir.path().join("fresh.img");
    std::fs::File::create(&fresh)
        .unwrap()
        .set_len(512 * MIB)
        .unwrap();
    fail_remove_add(&ctl, "0", &fresh);
    server.wait_log("rebuild of member 0 finished", WAIT);
    vraid_ctl_ok(&ctl, &["fail", "vol0", "1"]);

    // Assert
    let (ok, out) = read_ok(&server, 200 * MIB, 4 * MIB, 0x22);
    assert!(ok, "region written without the bitmap lost:\n{out}");
    let (ok, out) = read_ok(&server, 0, 4 * MIB, 0x11);
    assert!(ok, "{out}");
    assert_eq!(server.stop(), 0);
}

/// First writes at the edges of the map: a write straddling two regions
/// of member data, the last 4 KiB of the volume (the partial last region),
/// a write-zeroes and a discard as the first writes of their regions. A
/// rebuild onto a used disk, then another member lost: every byte reads
/// back.
#[test]
fn straddling_and_last_partial_region_writes_survive_a_rebuild() {
    // Arrange
    let dir = scratch_dir("rt-edges");
    let ctl = dir.path().join("ctl.sock");
    let members = sparse_members(dir.path(), 3, 256 * MIB);
    create_raid5(&members, "separate");
    let server = serve(&members, &ctl);
    let size = volume_status(&ctl, "vol0")["size"].as_u64().unwrap();
    // Member offset 64 MiB (region 1) starts at volume 128 MiB (2 data
    // chunks a stripe).
    let edge = 128 * MIB;
    qemu_io(
        &server.uri("vol0"),
        &[
            format!("write -P 0x5a {} 16384", edge - 8192),
            format!("write -P 0x6b {} 4096", size - 4096),
            format!("write -P 0x7c {} 4096", size - 8192),
            format!("write -z {} 65536", 70 * MIB),
            format!("discard {} 131072", 200 * MIB),
            "flush".into(),
        ],
    );
    let written = written_bytes(&ctl);
    let spare = dir.path().join("used.img");
    used_disk(&spare, 256 * MIB, 0xa5);

    // Act
    fail_remove_add(&ctl, "1", &spare);
    server.wait_log("rebuild of member 1 finished", WAIT);
    scrub_clean(&ctl);
    vraid_ctl_ok(&ctl, &["fail", "vol0", "0"]);

    // Assert
    let cmds = [
        format!("read -P 0 {} 65536", edge - 73728),
        format!("read -P 0x5a {} 16384", edge - 8192),
        format!("read -P 0 {} 65536", edge + 8192),
        format!("read -P 0x7c {} 4096", size - 8192),
        format!("read -P 0x6b {} 4096", size - 4096),
        format!("read -P 0 {} 1048576", size - MIB - 8192),
        format!("read -P 0 {} 1048576", 70 * MIB),
        format!("read -P 0 {} 1048576", 200 * MIB),
    ];
    let (ok, out) = qemu_io_try(&server.uri("vol0"), &cmds);
    assert!(ok, "written {written}:\n{out}");
    assert_eq!(server.stop(), 0);
}

/// SIGKILL during a rebuild onto a used disk that skipped regions, after
/// client writes reached a skipped region (above the last checkpoint) and
/// a region the pass had not reached: the resumed rebuild leaves every
/// byte readable with another member gone.
#[test]
fn rebuild_killed_after_writes_into_skipped_regions_resumes_without_loss() {
    // Arrange: 8 MiB in member regions 0 and 5 of a 3 x 512 MiB RAID-5.
    let dir = scratch_dir("rt-kill-rebuild");
    let ctl = dir.path().join("ctl.sock");
    let members = sparse_members(dir.path(), 3, 512 * MIB);
    let mut c = vraid(&[
        "create",
        "--level",
        "5",
        "--chunk-size",
        "64K",
        "--member-size",
        "512M",
        "--name",
        "vol0",
    ]);
    c.args(&members);
    run_ok(&mut c);
    let region = 128 * MIB; // volume bytes of one 64 MiB member region
    let mut all = members.clone();
    let spare = dir.path().join("used.img");
    used_disk(&spare, 512 * MIB, 0xa5);
    all.push(spare.clone());
    let server = serve(&members, &ctl);
    qemu_io(
        &server.uri("vol0"),
        &[
            format!("write -P 0x11 0 {}", 8 * MIB),
            format!("write -P 0x55 {} {}", 5 * region, 8 * MIB),
            "flush".into(),
        ],
    );
    vraid_ctl_ok(&ctl, &["set", "vol0", "--rebuild-max-mbps", "20"]);

    // Act: member 2 replaced by the used disk; writes into region 2
    // (skipped) and 7 (ahead) while the pass copies region 5; SIGKILL.
    fail_remove_add(&ctl, "2", &spare);
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let v = volume_status(&ctl, "vol0");
        let done = v["sync"]["done_bytes"].as_u64().unwrap_or(0);
        if done > 5 * 64 * MIB {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{v}");
        std::thread::sleep(Duration::from_millis(50));
    }
    qemu_io(
        &server.uri("vol0"),
        &[
            format!("write -P 0x22 {} {}", 2 * region + MIB, 4 * MIB),
            format!("write -P 0x77 {} {}", 7 * region + MIB, 4 * MIB),
            "flush".into(),
        ],
    );
    assert!(
        volume_status(&ctl, "vol0")["sync"].is_object(),
        "the pass ended before the kill; slow it down"
    );
    server.kill();

    // Assert: resumed, finished, and readable without member 0.
    let mut now = members.clone();
    now[2] = spare.clone();
    let server = serve(&now, &ctl);
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let v = volume_status(&ctl, "vol0");
        if v["sync"].is_null() && member_states(&v) == vec!["active"; 3] {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{v}");
        std::thread::sleep(Duration::from_millis(100));
    }
    scrub_clean(&ctl);
    vraid_ctl_ok(&ctl, &["fail", "vol0", "0"]);
    let cmds = [
        format!("read -P 0x11 0 {}", 8 * MIB),
        format!("read -P 0 {} {}", 8 * MIB, MIB),
        format!("read -P 0 {} {}", 2 * region, MIB),
        format!("read -P 0x22 {} {}", 2 * region + MIB, 4 * MIB),
        format!("read -P 0 {} {}", 3 * region, MIB),
        format!("read -P 0x55 {} {}", 5 * region, 8 * MIB),
        format!("read -P 0x77 {} {}", 7 * region + MIB, 4 * MIB),
    ];
    let (ok, out) = qemu_io_try(&server.uri("vol0"), &cmds);
    assert!(ok, "{out}\n{}", server.log());
    assert_eq!(server.stop(), 0);
}

/// `replace` of a live RAID-1 member onto a used disk, with a write into
/// a never-written region while it runs: the new disk alone holds every
/// write and reads zeroes elsewhere.
#[test]
fn replace_onto_a_used_disk_keeps_writes_and_zeroes() {
    // Arrange
    let dir = scratch_dir("rt-replace");
    let ctl = dir.path().join("ctl.sock");
    let members = sparse_members(dir.path(), 2, 512 * MIB);
    create_array(1, "64K", "512M", "vol0", &members);
    let server = serve(&members, &ctl);
    write_flush(&server, 0, 8 * MIB, 0x11);
    let new = dir.path().join("used.img");
    used_disk(&new, 512 * MIB, 0xa5);
    vraid_ctl_ok(&ctl, &["set", "vol0", "--rebuild-max-mbps", "20"]);

    // Act: replace member 1; a first write to region 6 while it copies.
    let m1 = members[1].to_str().unwrap();
    vraid_ctl_ok(
        &ctl,
        &["replace", "vol0", m1, new.to_str().unwrap(), "--force"],
    );
    write_flush(&server, 400 * MIB, 4 * MIB, 0x66);
    server.wait_log("replace of member 1 finished", WAIT);
    vraid_ctl_ok(&ctl, &["fail", "vol0", "0"]);

    // Assert
    let cmds = [
        format!("read -P 0x11 0 {}", 8 * MIB),
        format!("read -P 0 {} {}", 8 * MIB, 4 * MIB),
        format!("read -P 0 {} {}", 200 * MIB, 4 * MIB),
        format!("read -P 0x66 {} {}", 400 * MIB, 4 * MIB),
        format!("read -P 0 {} {}", 404 * MIB, 4 * MIB),
    ];
    let (ok, out) = qemu_io_try(&server.uri("vol0"), &cmds);
    assert!(ok, "{out}");
    assert_eq!(server.stop(), 0);
}
