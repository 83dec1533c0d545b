//! Red-team of the issue 16 fixes (items 4a, 9, 12, 15b) against the real
//! daemon: what a careless operator or a broken daemon still got through.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use raid_tests::*;
use serde_json::Value;

/// `vraid ARGS --control CONTROL` run in working directory `cwd`.
fn ctl_in(cwd: &Path, control: &Path, args: &[&str]) -> Output {
    let mut c = vraid(args);
    c.arg("--control").arg(control).current_dir(cwd);
    run(c)
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[test]
fn a_relative_member_path_names_the_file_in_the_callers_directory() {
    // Arrange: a daemon started in the members' directory with relative
    // paths; elsewhere an unrelated file of the same name.
    let dir = scratch_dir("redteam-relpath");
    let members = dir.path().join("members");
    let other = dir.path().join("elsewhere");
    std::fs::create_dir_all(&members).unwrap();
    std::fs::create_dir_all(&other).unwrap();
    let paths = member_paths(&members, 3);
    create_array(5, "64K", "32M", "vol0", &paths);
    std::fs::File::create(other.join("m1.img"))
        .unwrap()
        .set_len(32 << 20)
        .unwrap();
    let control = dir.path().join("control.sock");
    let server = Server::start_in(
        &members,
        &[
            "m0.img",
            "m1.img",
            "m2.img",
            "--control",
            control.to_str().unwrap(),
        ],
    );

    // Act 1: `vraid fail vol0 m1.img` where m1.img is another file.
    let wrong = ctl_in(&other, &control, &["fail", "vol0", "m1.img"]);
    let wrong_fault = ctl_in(
        &other,
        &control,
        &["fault", "add", "vol0", "m1.img", "--kind", "offline"],
    );

    // Assert 1: both refused; no member of vol0 touched.
    assert!(!wrong.status.success(), "{}", text(&wrong));
    assert!(text(&wrong).contains("no member"), "{}", text(&wrong));
    assert!(!wrong_fault.status.success(), "{}", text(&wrong_fault));
    let v = volume_status(&control, "vol0");
    assert_eq!(member_states(&v), vec!["active"; 3], "{v}");
    let faults: Value =
        serde_json::from_str(&vraid_ctl_ok(&control, &["fault", "list", "--json"])).unwrap();
    assert_eq!(faults["faults"], Value::Array(vec![]), "{faults}");

    // Act 2: the right file by relative paths from the caller's directory.
    let right = ctl_in(
        dir.path(),
        &control,
        &[
            "fault",
            "add",
            "vol0",
            "members/./m2.img",
            "--kind",
            "error",
            "--op",
            "write",
        ],
    );
    let right_fail = ctl_in(dir.path(), &control, &["fail", "vol0", "members/m1.img"]);

    // Assert 2: the fault is on member 2, member 1 failed.
    assert!(right.status.success(), "{}", text(&right));
    assert!(text(&right).contains("member 2"), "{}", text(&right));
    assert!(right_fail.status.success(), "{}", text(&right_fail));
    let v = volume_status(&control, "vol0");
    assert_eq!(member_states(&v), vec!["active", "failed", "active"], "{v}");
    assert_eq!(server.stop(), 0);
}

#[test]
fn a_relative_member_path_reaches_a_daemon_started_with_absolute_paths() {
    // Arrange
    let dir = scratch_dir("redteam-abspath");
    let paths = member_paths(dir.path(), 3);
    create_array(5, "64K", "32M", "vol0", &paths);
    let control = dir.path().join("control.sock");
    let mut args: Vec<&str> = paths.iter().map(|p| p.to_str().unwrap()).collect();
    args.extend(["--control", control.to_str().unwrap()]);
    let server = Server::start(&args);

    // Act: the operator in the members' directory names one by file name.
    let out = ctl_in(
        dir.path(),
        &control,
        &[
            "fault", "add", "vol0", "m2.img", "--kind", "delay", "--delay", "1ms",
        ],
    );

    // Assert
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("member 2"), "{}", text(&out));
    assert_eq!(server.stop(), 0);
}

#[test]
fn read_only_crashed_raid5_refuses_a_fail_that_would_rebuild_from_unsynced_parity() {
    // Arrange: a RAID-5 written and SIGKILLed, then a torn stripe: data
    // chunk 1 of stripe 0 (member 1) holds new bytes its parity never saw.
    let dir = scratch_dir("redteam-ro-fail");
    let paths = member_paths(dir.path(), 3);
    create_array(5, "64K", "32M", "vol0", &paths);
    let server = Server::start(
        &paths
            .iter()
            .map(|p| p.to_str().unwrap())
            .collect::<Vec<_>>(),
    );
    qemu_io(
        &server.uri("vol0"),
        &["write -P 0x3c 0 8M".into(), "flush".into()],
    );
    server.kill();
    let data_offset = examine(&paths[0])["data_offset"].as_u64().unwrap();
    poke(&paths[1], data_offset, &[0x99; 64 << 10]);
    let before: Vec<Vec<u8>> = paths.iter().map(|p| std::fs::read(p).unwrap()).collect();
    let control = dir.path().join("control.sock");
    let mut args: Vec<&str> = paths.iter().map(|p| p.to_str().unwrap()).collect();
    args.extend(["--read-only", "--control", control.to_str().unwrap()]);
    let server = Server::start(&args);
    let uri = server.uri("vol0");

    // Act: the operator fails member 0 (whose chunk 0 would be rebuilt
    // from member 1 and the stale parity).
    let out = vraid_ctl(&control, &["fail", "vol0", "0"]);

    // Assert: refused; chunk 0 still reads what was written.
    assert!(!out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("not shut down cleanly"),
        "{}",
        text(&out)
    );
    let v = volume_status(&control, "vol0");
    assert_eq!(member_states(&v), vec!["active"; 3], "{v}");
    run_ok(Command::new("qemu-io").args(["-r", "-f", "raw", "-c", "read -P 0x3c 0 64k", &uri]));
    assert_eq!(server.stop(), 0);
    for (p, b) in paths.iter().zip(&before) {
        assert!(std::fs::read(p).unwrap() == *b, "{} changed", p.display());
    }
}

#[test]
fn read_only_crashed_raid5_never_serves_data_rebuilt_from_unsynced_parity() {
    // Arrange: as above, a torn stripe 0 on a SIGKILLed RAID-5, served
    // read-only.
    let dir = scratch_dir("redteam-ro-offline");
    let paths = member_paths(dir.path(), 3);
    create_array(5, "64K", "32M", "vol0", &paths);
    let server = Server::start(
        &paths
            .iter()
            .map(|p| p.to_str().unwrap())
            .collect::<Vec<_>>(),
    );
    qemu_io(
        &server.uri("vol0"),
        &["write -P 0x3c 0 8M".into(), "flush".into()],
    );
    server.kill();
    let data_offset = examine(&paths[0])["data_offset"].as_u64().unwrap();
    poke(&paths[1], data_offset, &[0x99; 64 << 10]);
    let control = dir.path().join("control.sock");
    let mut args: Vec<&str> = paths.iter().map(|p| p.to_str().unwrap()).collect();
    args.extend(["--read-only", "--control", control.to_str().unwrap()]);
    let server = Server::start(&args);
    let uri = server.uri("vol0");

    // Act: member 0's disk goes away under a read.
    vraid_ctl_ok(
        &control,
        &["fault", "add", "vol0", "0", "--kind", "offline"],
    );
    let out =
        run(Command::new("qemu-io").args(["-r", "-f", "raw", "-c", "read -P 0x3c 0 64k", &uri]));

    // Assert: an error, or the data written; never member 1's torn bytes.
    let read = text(&out);
    assert!(
        read.contains("read failed") || out.status.success(),
        "{read}"
    );
    assert!(!read.contains("Pattern verification"), "{read}");
    let v = volume_status(&control, "vol0");
    assert_eq!(member_states(&v)[0], "failed", "{v}");
    assert_eq!(server.stop(), 0);
}

#[test]
fn cli_shows_only_the_start_of_an_oversized_bad_reply() {
    use std::io::{Read, Write};
    // Arrange: a "daemon" that answers with 8 MiB of garbage and hangs up.
    let dir = scratch_dir("redteam-bigreply");
    let sock = dir.path().join("fake.sock");
    let listener = std::os::unix::net::UnixListener::bind(&sock).unwrap();
    let fake = std::thread::spawn(move || {
        let (mut c, _) = listener.accept().unwrap();
        let mut buf = [0u8; 4096];
        let _ = c.read(&mut buf);
        let _ = c.write_all(&vec![b'x'; 8 << 20]);
    });

    // Act
    let out = run(vraid(&["status", "--control"]).arg(&sock));
    fake.join().unwrap();

    // Assert: an error naming the problem, a few hundred bytes long.
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        &stderr[..stderr.len().min(500)]
    );
    assert!(
        stderr.contains("unexpected reply"),
        "{}",
        &stderr[..stderr.len().min(500)]
    );
    assert!(
        stderr.len() < 1000,
        "{} bytes of error message",
        stderr.len()
    );
}

/// A tmpfs of a given size mounted on a directory; unmounted when dropped.
struct TmpfsMount {
    dir: PathBuf,
}

impl TmpfsMount {
    fn new(dir: &Path, size: &str) -> TmpfsMount {
        std::fs::create_dir_all(dir).unwrap();
        run_ok(
            Command::new("mount")
                .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
                .arg(dir),
        );
        TmpfsMount {
            dir: dir.to_path_buf(),
        }
    }
}

impl Drop for TmpfsMount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.dir).status();
    }
}

/// Fills the filesystem of `dir` with a file until it is full.
fn fill(dir: &Path) {
    use std::io::Write;
    let mut f = std::fs::File::create(dir.join("filler")).unwrap();
    let block = vec![0xffu8; 64 << 10];
    while f.write_all(&block).is_ok() {}
}

#[test]
fn enospc_on_the_parity_member_alone_then_a_member_failure_returns_no_foreign_bytes() {
    // Arrange: RAID-5, members 0 and 1 on the real disk, member 2 (parity
    // of stripe 0) on a small tmpfs; 4K written at volume offset 0 (data
    // chunk 0, allocating parity page 0), then the tmpfs filled.
    let dir = scratch_dir("redteam-enospc-parity");
    let mnt = dir.path().join("mnt");
    let _mount = TmpfsMount::new(&mnt, "8M");
    let paths = vec![
        dir.path().join("m0.img"),
        dir.path().join("m1.img"),
        mnt.join("m2.img"),
    ];
    create_array(5, "64K", "32M", "vol0", &paths);
    let control = dir.path().join("control.sock");
    let mut args: Vec<&str> = paths.iter().map(|p| p.to_str().unwrap()).collect();
    args.extend(["--control", control.to_str().unwrap()]);
    let server = Server::start(&args);
    let uri = server.uri("vol0");
    qemu_io(&uri, &["write -P 0xaa 0 4k".into(), "flush".into()]);
    fill(&mnt);

    // Act: 4K into data chunk 1, page 1: its parity page needs a new block
    // on the full tmpfs (ENOSPC there only); then member 0 fails.
    let (ok, out) = qemu_io_try(&uri, &["write -P 0xbb 68k 4k"]);
    assert!(!ok, "{out}");
    assert!(out.contains("No space left on device"), "{out}");
    vraid_ctl_ok(&control, &["fail", "vol0", "0"]);

    // Assert: page 1 of chunk 0, never written, must not read as the
    // failed write's bytes (zeros, or an error, are acceptable); degraded
    // reads of stripes it did not touch still work.
    let (_, read) = qemu_io_try(&uri, &["read -P 0 4k 4k"]);
    assert!(!read.contains("Pattern verification"), "{read}");
    qemu_io(
        &uri,
        &[
            "read -P 0xaa 0 4k".into(),
            "read -P 0 8k 56k".into(),
            "read -P 0 1M 1M".into(),
        ],
    );
    assert_eq!(server.stop(), 0);
}

#[test]
fn a_complete_repairing_scrub_after_enospc_makes_degraded_reads_work_again() {
    // Arrange: as above, a write that ran out of space on the parity
    // member alone; then the space comes back.
    let dir = scratch_dir("redteam-enospc-scrub");
    let mnt = dir.path().join("mnt");
    let _mount = TmpfsMount::new(&mnt, "8M");
    let paths = vec![
        dir.path().join("m0.img"),
        dir.path().join("m1.img"),
        mnt.join("m2.img"),
    ];
    create_array(5, "64K", "32M", "vol0", &paths);
    let control = dir.path().join("control.sock");
    let mut args: Vec<&str> = paths.iter().map(|p| p.to_str().unwrap()).collect();
    args.extend(["--control", control.to_str().unwrap()]);
    let server = Server::start(&args);
    let uri = server.uri("vol0");
    qemu_io(&uri, &["write -P 0xaa 0 4k".into(), "flush".into()]);
    fill(&mnt);
    let (ok, out) = qemu_io_try(&uri, &["write -P 0xbb 68k 4k"]);
    assert!(!ok, "{out}");
    std::fs::remove_file(mnt.join("filler")).unwrap();

    // Act: a repairing scrub to the end, then member 0 fails.
    let report = vraid_ctl_ok(&control, &["scrub", "vol0", "--repair"]);
    vraid_ctl_ok(&control, &["fail", "vol0", "0"]);

    // Assert: chunk 0 is rebuilt from the repaired parity: what was
    // written, zeros where nothing was.
    qemu_io(
        &uri,
        &[
            "read -P 0xaa 0 4k".into(),
            "read -P 0 4k 60k".into(),
            "read -P 0xbb 68k 4k".into(),
        ],
    );
    assert!(report.contains("repaired"), "{report}");
    assert_eq!(server.stop(), 0);
}

#[test]
fn a_crash_resync_stopped_by_enospc_does_not_block_scrub_for_the_rest_of_the_run() {
    // Arrange: RAID-1, mirror 0 on the real disk, mirror 1 on a small
    // tmpfs; a write runs out of space on mirror 1 only, the array is
    // stopped (left dirty), then started while the tmpfs is still full:
    // its crash resync stops for lack of space.
    let dir = scratch_dir("redteam-resync-enospc");
    let mnt = dir.path().join("mnt");
    let _mount = TmpfsMount::new(&mnt, "8M");
    let paths = vec![dir.path().join("m0.img"), mnt.join("m1.img")];
    create_array(1, "64K", "16M", "vol0", &paths);
    let control = dir.path().join("control.sock");
    let mut args: Vec<&str> = paths.iter().map(|p| p.to_str().unwrap()).collect();
    args.extend(["--control", control.to_str().unwrap()]);
    let server = Server::start(&args);
    fill(&mnt);
    let (ok, out) = qemu_io_try(&server.uri("vol0"), &["write -P 0x55 0 4M"]);
    assert!(!ok, "{out}");
    assert_eq!(server.stop(), 0);
    assert_eq!(examine(&paths[0])["state"], "dirty");
    let server = Server::start(&args);
    server.wait_log("resync stopped", Duration::from_secs(30));

    // Act: space comes back; the operator repairs with a scrub.
    std::fs::remove_file(mnt.join("filler")).unwrap();
    let scrub = vraid_ctl(&control, &["scrub", "vol0", "--repair"]);

    // Assert: the scrub ran (nothing else runs) and left the mirrors equal;
    // the stop shows in the events.
    assert!(scrub.status.success(), "{}", text(&scrub));
    let status = vraid_ctl_ok(&control, &["status"]);
    assert!(status.contains("resync stopped"), "{status}");
    assert_eq!(server.stop(), 0);
    assert!(
        member_data(&paths[0]) == member_data(&paths[1]),
        "mirrors differ"
    );
}

#[test]
fn fail_and_remove_by_the_path_of_a_replaced_member_do_not_hit_its_successor() {
    // Arrange: a RAID-5 whose member 0 was replaced onto new.img.
    let dir = scratch_dir("redteam-replaced-path");
    let paths = member_paths(dir.path(), 3);
    create_array(5, "64K", "32M", "vol0", &paths);
    let new = dir.path().join("new.img");
    std::fs::File::create(&new)
        .unwrap()
        .set_len(32 << 20)
        .unwrap();
    let control = dir.path().join("control.sock");
    let mut args: Vec<&str> = paths.iter().map(|p| p.to_str().unwrap()).collect();
    args.extend(["--control", control.to_str().unwrap()]);
    let server = Server::start(&args);
    let uri = server.uri("vol0");
    qemu_io(&uri, &["write -P 0x11 0 8M".into()]);
    vraid_ctl_ok(&control, &["replace", "vol0", "0", new.to_str().unwrap()]);
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let v = volume_status(&control, "vol0");
        if v["members"][0]["path"] == new.to_str().unwrap() && v["replace"].is_null() {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "replace not done: {v}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    // Act: the operator names the old disk.
    let m0 = paths[0].to_str().unwrap();
    let fail = vraid_ctl(&control, &["fail", "vol0", m0]);
    let remove = vraid_ctl(&control, &["remove", "vol0", m0]);

    // Assert: both refused; the new member serves on.
    assert!(!fail.status.success(), "{}", text(&fail));
    assert!(
        text(&fail).contains("no longer holds member 0"),
        "{}",
        text(&fail)
    );
    assert!(!remove.status.success(), "{}", text(&remove));
    let v = volume_status(&control, "vol0");
    assert_eq!(member_states(&v), vec!["active"; 3], "{v}");
    assert_eq!(v["state"], "optimal", "{v}");
    qemu_io(&uri, &["read -P 0x11 0 8M".into()]);
    assert_eq!(server.stop(), 0);
}
