//! Red-team tests of the written-region map (docs/FORMAT.md §10): ways a
//! rebuild could skip a region that holds data. Each test writes through
//! the real binary, brings a member in, and reads every written byte back
//! with the other copies gone.

use std::path::{Path, PathBuf};
use std::time::Duration;

use raid_tests::*;

const MIB: u64 = 1 << 20;
const WAIT: Duration = Duration::from_secs(60);

fn sparse_members(dir: &Path, n: usize, size: u64) -> Vec<PathBuf> {
    let members = member_paths(dir, n);
    for m in &members {
        std::fs::File::create(m).unwrap().set_len(size).unwrap();
    }
    members
}

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
