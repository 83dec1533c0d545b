//! Red-team of the assembly fixes of issue 16 (staleness by data, members
//! back at start-up, RAID-0 members back, `--force-assemble`) with the real
//! binary over NBD, as a careless user would: copies of members taken at
//! other moments and put back.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use raid_tests::*;

const MIB: usize = 1 << 20;
const WAIT: Duration = Duration::from_secs(60);

/// `vraid serve --control CTL [EXTRA...] MEMBERS...`.
fn serve(ctl: &Path, members: &[PathBuf], extra: &[&str]) -> Server {
    let mut args = vec!["--control".to_string(), ctl.to_str().unwrap().to_string()];
    args.extend(extra.iter().map(|s| s.to_string()));
    args.extend(members.iter().map(|p| p.to_str().unwrap().to_string()));
    Server::start(&args.iter().map(String::as_str).collect::<Vec<_>>())
}

fn cp(from: &Path, to: &Path) {
    run_ok(Command::new("cp").arg("--sparse=always").arg(from).arg(to));
}

fn assert_same(got: &[u8], want: &[u8], what: &str) {
    if let Some(at) = got.iter().zip(want).position(|(a, b)| a != b) {
        panic!("{what}: first difference at byte {at}");
    }
    assert_eq!(got.len(), want.len(), "{what}: length");
}

/// Waits until `member`'s on-disk write-intent bitmap has no bit set: the
/// running array cleared on disk what the last write set, so it wrote its
/// `events_cleared` update before that (FORMAT.md §6).
fn wait_bitmap_cleared(member: &Path) {
    let deadline = Instant::now() + WAIT;
    loop {
        let sb = examine(member);
        let regions = sb["bitmap_dirty_regions"].as_array().unwrap();
        if regions.is_empty() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "bitmap of {} not cleared within {WAIT:?}: {sb}",
            member.display()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A member copied while the array runs (dirty, after its first bitmap
/// clearing), the volume then overwritten and stopped cleanly, the copy put
/// back: the copy missed the second write and must not be served
/// (FORMAT.md crash case 47). Before the closing update it was one update
/// behind and dirty, accepted as "missed the last superblock update of a
/// run it took part in", and served the old data.
fn copy_taken_while_running(level: u32, count: usize, copied: usize) {
    let dir = scratch_dir(&format!("rt_copy_running_{level}"));
    let ctl = dir.path().join("ctl.sock");
    let paths = member_paths(dir.path(), count);
    create_array(level, "64K", "64M", "vol0", &paths);
    let old = pseudo_random(8 * MIB, 21);
    let new = pseudo_random(8 * MIB, 22);
    let server = serve(&ctl, &paths, &[]);
    write_export(&server.uri("vol0"), &old, dir.path());
    wait_bitmap_cleared(&paths[copied]);
    let copy = dir.path().join("copy.img");
    cp(&paths[copied], &copy);
    write_export(&server.uri("vol0"), &new, dir.path());
    assert_eq!(server.stop(), 0);
    cp(&copy, &paths[copied]);

    let server = serve(&ctl, &paths, &[]);

    let mut got = read_export(&server.uri("vol0"), dir.path());
    got.truncate(new.len());
    assert_same(
        &got,
        &new,
        "volume after a copy taken while running came back",
    );
    server.wait_log("missed writes", WAIT);
    let status = status_json(&ctl);
    assert_eq!(status["volumes"][0]["state"], "degraded", "{status}");
    assert_eq!(server.stop(), 0);
}

#[test]
fn raid5_copy_of_a_member_taken_while_running_is_not_served() {
    copy_taken_while_running(5, 4, 2);
}

#[test]
fn raid1_copy_of_a_mirror_taken_while_running_is_not_served() {
    // RAID-1 with 2 mirrors: the copy is m1; with it left out the volume
    // reads from m0 alone.
    copy_taken_while_running(1, 2, 1);
}

/// A copy of a member taken while the array was stopped is put back in
/// place of that member after it failed at run time, then `vraid add`ed:
/// it missed writes in regions whose bits were cleared since, so it must be
/// rebuilt in full, not "re-added, catching up 0 dirty bytes from the
/// bitmap" (which served its old data).
#[test]
fn old_copy_added_back_at_run_time_is_rebuilt_in_full() {
    // Arrange
    let dir = scratch_dir("rt_old_copy_added");
    let ctl = dir.path().join("ctl.sock");
    let paths = member_paths(dir.path(), 4);
    create_array(5, "64K", "64M", "vol0", &paths);
    let old = pseudo_random(8 * MIB, 31);
    let new = pseudo_random(8 * MIB, 32);
    let server = serve(&ctl, &paths, &[]);
    write_export(&server.uri("vol0"), &old, dir.path());
    assert_eq!(server.stop(), 0);
    let copy = dir.path().join("copy.img");
    cp(&paths[2], &copy);
    let server = serve(&ctl, &paths, &[]);
    write_export(&server.uri("vol0"), &new, dir.path());
    wait_bitmap_cleared(&paths[2]);
    let m2 = paths[2].to_str().unwrap();
    vraid_ctl_ok(&ctl, &["fail", "vol0", m2]);
    cp(&copy, &paths[2]);

    // Act
    let out = vraid_ctl_ok(&ctl, &["add", "vol0", m2]);

    // Assert: a full rebuild; once done, member 0 fails and the volume
    // (now read through the rebuilt member 2) still holds the new data.
    let log = server.wait_log("of member 2 finished", WAIT);
    assert!(
        log.contains("rebuild of member 2 finished") && !log.contains("re-adding"),
        "{out}\n{log}"
    );
    vraid_ctl_ok(&ctl, &["fail", "vol0", "0"]);
    let mut got = read_export(&server.uri("vol0"), dir.path());
    got.truncate(new.len());
    assert_same(&got, &new, "volume after the old copy was added back");
    assert_eq!(server.stop(), 0);
}
