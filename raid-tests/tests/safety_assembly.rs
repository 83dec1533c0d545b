//! Assembly safety (issue 16, items 2, 3, 4 and 11) against the real binary
//! over NBD: a member re-added at start-up gets a journal ring, a stale copy
//! of a member put back is not served, a RAID-0 member offline for a moment
//! comes back, `--force-assemble` recovers members marked failed, and a
//! SIGKILL loop through start-up keeps every member and every byte.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use raid_tests::*;

const MIB: usize = 1 << 20;
const WAIT: Duration = Duration::from_secs(60);

fn strs(paths: &[PathBuf]) -> Vec<String> {
    paths
        .iter()
        .map(|p| p.to_str().unwrap().to_string())
        .collect()
}

/// `vraid serve --control CTL [EXTRA...] MEMBERS...`.
fn serve(ctl: &Path, members: &[PathBuf], extra: &[&str]) -> Server {
    let mut args = vec!["--control".to_string(), ctl.to_str().unwrap().to_string()];
    args.extend(extra.iter().map(|s| s.to_string()));
    args.extend(strs(members));
    Server::start(&args.iter().map(String::as_str).collect::<Vec<_>>())
}

/// `vraid serve` run to its exit (an assembly that is refused).
fn serve_refused(ctl: &Path, members: &[PathBuf]) -> String {
    let out = vraid(&["serve", "--nbd", &format!("127.0.0.1:{}", free_port())])
        .arg("--control")
        .arg(ctl)
        .args(members)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(!out.status.success(), "serve should have been refused");
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// The first `len` bytes of the export.
fn read_prefix(server: &Server, dir: &Path, len: usize) -> Vec<u8> {
    let mut all = read_export(&server.uri("vol0"), dir);
    all.truncate(len);
    all
}

fn assert_same(got: &[u8], want: &[u8], what: &str) {
    if let Some(at) = got.iter().zip(want).position(|(a, b)| a != b) {
        panic!("{what}: first difference at byte {at}");
    }
    assert_eq!(got.len(), want.len(), "{what}: length");
}

#[test]
fn raid0_member_offline_then_cleared_assembles_at_restart() {
    // Arrange: a RAID-0 with data; member 1 goes offline, a read fails it,
    // the fault is cleared.
    let dir = scratch_dir("raid0_offline_cleared");
    let ctl = dir.path().join("ctl.sock");
    let paths = member_paths(dir.path(), 3);
    create_array(0, "64K", "64M", "vol0", &paths);
    let data = pseudo_random(8 * MIB, 11);
    let server = serve(&ctl, &paths, &[]);
    write_export(&server.uri("vol0"), &data, dir.path());
    let m1 = paths[1].to_str().unwrap();
    vraid_ctl_ok(&ctl, &["fault", "add", "vol0", m1, "--kind", "offline"]);
    let (ok, _) = qemu_io_try(&server.uri("vol0"), &["read 64k 64k"]);
    assert!(!ok, "a read from the offline member must fail");
    server.wait_log("member 1 failed", WAIT);
    vraid_ctl_ok(&ctl, &["fault", "clear"]);
    assert_eq!(server.stop(), 0);

    // Act
    let server = serve(&ctl, &paths, &[]);

    // Assert: every member back, every byte as written.
    assert!(
        !server.log().contains("members missing"),
        "{}",
        server.log()
    );
    assert_same(
        &read_prefix(&server, dir.path(), data.len()),
        &data,
        "raid0",
    );
    assert_eq!(server.stop(), 0);
}

#[test]
fn stale_copy_of_a_member_put_back_is_not_served() {
    // Arrange: m2 copied while the array is stopped, the volume then
    // overwritten, the old copy put back.
    let dir = scratch_dir("stale_copy");
    let ctl = dir.path().join("ctl.sock");
    let paths = member_paths(dir.path(), 4);
    create_array(5, "64K", "64M", "vol0", &paths);
    let old = pseudo_random(8 * MIB, 1);
    let new = pseudo_random(8 * MIB, 2);
    let server = serve(&ctl, &paths, &[]);
    write_export(&server.uri("vol0"), &old, dir.path());
    assert_eq!(server.stop(), 0);
    let copy = dir.path().join("m2.copy");
    run_ok(
        Command::new("cp")
            .arg("--sparse=always")
            .arg(&paths[2])
            .arg(&copy),
    );
    let server = serve(&ctl, &paths, &[]);
    write_export(&server.uri("vol0"), &new, dir.path());
    assert_eq!(server.stop(), 0);
    run_ok(
        Command::new("cp")
            .arg("--sparse=always")
            .arg(&copy)
            .arg(&paths[2]),
    );

    // Act
    let server = serve(&ctl, &paths, &[]);

    // Assert: the volume reads what was written last; the copy is left out.
    assert_same(
        &read_prefix(&server, dir.path(), new.len()),
        &new,
        "volume after the stale copy came back",
    );
    server.wait_log("missed writes", WAIT);
    assert_eq!(server.stop(), 0);
}

/// The volume bytes after `writes` of `(offset, byte)` 4 KiB patterns.
/// `vraid fail vol0 0`, then one 4 KiB write at `offset` into each of the
/// first 8 stripes of the 4 × 64K RAID-5 (so some have their parity on
/// member 2), recorded in `data`: (qemu-io succeeded, its output).
fn fail_member_0_then_write_partial_stripes(
    server: &Server,
    ctl: &Path,
    data: &mut [u8],
    offset: usize,
    pattern: u8,
) -> (bool, String) {
    vraid_ctl_ok(ctl, &["fail", "vol0", "0"]);
    let stripe = 3 * 64 * 1024;
    let writes: Vec<(usize, u8)> = (0..8)
        .map(|s| (s * stripe + offset, pattern + s as u8))
        .collect();
    let cmds: Vec<String> = writes
        .iter()
        .map(|(at, b)| format!("write -P {b} {at} 4k"))
        .collect();
    let result = qemu_io_try(&server.uri("vol0"), &cmds);
    apply(data, &writes);
    result
}

fn apply(data: &mut [u8], writes: &[(usize, u8)]) {
    for &(at, byte) in writes {
        data[at..at + 4096].fill(byte);
    }
}

#[test]
fn member_readded_at_startup_holds_parity_through_a_second_failure() {
    // Arrange: member 2 failed while data changed; at the next start it is
    // re-added from the bitmap and catches up.
    let dir = scratch_dir("readd_journal");
    let ctl = dir.path().join("ctl.sock");
    let paths = member_paths(dir.path(), 4);
    create_array(5, "64K", "64M", "vol0", &paths);
    let mut data = pseudo_random(8 * MIB, 3);
    let server = serve(&ctl, &paths, &[]);
    write_export(&server.uri("vol0"), &data, dir.path());
    vraid_ctl_ok(&ctl, &["fail", "vol0", "2"]);
    let degraded = pseudo_random(MIB, 4);
    data[..MIB].copy_from_slice(&degraded);
    write_export(&server.uri("vol0"), &degraded, dir.path());
    assert_eq!(server.stop(), 0);
    let server = serve(&ctl, &paths, &[]);
    server.wait_log("re-adding", WAIT);
    server.wait_log("recovery of member 2 finished", WAIT);

    // Act: another member fails, then partial-stripe writes, some of them
    // to stripes whose parity is on member 2 (stripe s: member 3 - s % 4).
    let (ok, out) = fail_member_0_then_write_partial_stripes(&server, &ctl, &mut data, 8192, 0x40);

    // Assert: the writes succeed, the data reads back, and the array
    // assembles again (degraded: member 0 failed).
    assert!(ok, "degraded writes failed:\n{out}\n{}", server.log());
    assert!(
        !server.log().contains("no journal on this member"),
        "{}",
        server.log()
    );
    assert_same(
        &read_prefix(&server, dir.path(), data.len()),
        &data,
        "running",
    );
    assert_eq!(server.stop(), 0);
    let server = serve(&ctl, &paths, &[]);
    assert_same(
        &read_prefix(&server, dir.path(), data.len()),
        &data,
        "restarted",
    );
    assert_eq!(server.stop(), 0);
}

#[test]
fn member_added_into_a_role_missing_at_startup_holds_parity_through_a_second_failure() {
    // Arrange: member 2 absent at start-up; a new member added at run time
    // is rebuilt into its role.
    let dir = scratch_dir("added_journal");
    let ctl = dir.path().join("ctl.sock");
    let paths = member_paths(dir.path(), 4);
    create_array(5, "64K", "64M", "vol0", &paths);
    std::fs::remove_file(&paths[2]).unwrap();
    let mut data = pseudo_random(8 * MIB, 6);
    let server = serve(&ctl, &paths, &[]);
    write_export(&server.uri("vol0"), &data, dir.path());
    let new = dir.path().join("new.img");
    std::fs::File::create(&new)
        .unwrap()
        .set_len(64 << 20)
        .unwrap();
    vraid_ctl_ok(&ctl, &["add", "vol0", new.to_str().unwrap()]);
    server.wait_log("rebuild of member 2 finished", WAIT);

    // Act: another member fails, then partial-stripe writes with parity on
    // member 2 among them.
    let (ok, out) = fail_member_0_then_write_partial_stripes(&server, &ctl, &mut data, 4096, 0x60);

    // Assert
    assert!(ok, "degraded writes failed:\n{out}\n{}", server.log());
    assert_same(
        &read_prefix(&server, dir.path(), data.len()),
        &data,
        "running",
    );
    assert_eq!(server.stop(), 0);
    let mut members = paths.clone();
    members[2] = new;
    let server = serve(&ctl, &members, &[]);
    assert_same(
        &read_prefix(&server, dir.path(), data.len()),
        &data,
        "restarted",
    );
    assert_eq!(server.stop(), 0);
}

#[test]
fn replaced_member_is_no_longer_written_and_its_successor_journals() {
    // Arrange: member 1 replaced by a new file while the array runs.
    let dir = scratch_dir("replace_journal");
    let ctl = dir.path().join("ctl.sock");
    let paths = member_paths(dir.path(), 4);
    create_array(5, "64K", "64M", "vol0", &paths);
    let mut data = pseudo_random(4 * MIB, 7);
    let server = serve(&ctl, &paths, &[]);
    write_export(&server.uri("vol0"), &data, dir.path());
    let new = dir.path().join("new.img");
    std::fs::File::create(&new)
        .unwrap()
        .set_len(64 << 20)
        .unwrap();
    vraid_ctl_ok(&ctl, &["replace", "vol0", "1", new.to_str().unwrap()]);
    server.wait_log("replace of member 1 finished", WAIT);
    let old_before = std::fs::read(&paths[1]).unwrap();

    // Act: partial-stripe writes, with parity on role 1 among them
    // (stripe s: member 3 - s % 4), then a second failure.
    let stripe = 3 * 64 * 1024;
    let writes: Vec<(usize, u8)> = (0..8)
        .map(|s| (s * stripe + 12288, 0x70 + s as u8))
        .collect();
    let cmds: Vec<String> = writes
        .iter()
        .map(|(at, b)| format!("write -P {b} {at} 4k"))
        .collect();
    qemu_io(&server.uri("vol0"), &cmds);
    apply(&mut data, &writes);
    vraid_ctl_ok(&ctl, &["fail", "vol0", "3"]);
    let (ok, out) = qemu_io_try(&server.uri("vol0"), &["write -P 9 12288 4k"]);
    apply(&mut data, &[(12288, 9)]);

    // Assert: the old member's bytes did not change (its journal area
    // included); the new one holds the role with a journal of its own.
    let old_after = std::fs::read(&paths[1]).unwrap();
    assert!(old_before == old_after, "the replaced member was written");
    assert!(ok, "degraded write failed:\n{out}\n{}", server.log());
    assert_same(
        &read_prefix(&server, dir.path(), data.len()),
        &data,
        "running",
    );
    assert_eq!(server.stop(), 0);
}

#[test]
fn force_assemble_recovers_members_marked_failed_beyond_redundancy() {
    // Arrange: RAID-5 with data; member 1 failed by the operator, member 2
    // goes offline and a read fails it: two of four down.
    let dir = scratch_dir("force_assemble");
    let ctl = dir.path().join("ctl.sock");
    let paths = member_paths(dir.path(), 4);
    create_array(5, "64K", "64M", "vol0", &paths);
    let data = pseudo_random(8 * MIB, 5);
    let server = serve(&ctl, &paths, &[]);
    write_export(&server.uri("vol0"), &data, dir.path());
    vraid_ctl_ok(&ctl, &["fail", "vol0", "1"]);
    let m2 = paths[2].to_str().unwrap();
    vraid_ctl_ok(&ctl, &["fault", "add", "vol0", m2, "--kind", "offline"]);
    let _ = qemu_io_try(&server.uri("vol0"), &["read 0 1M"]);
    server.wait_log("member 2 failed", WAIT);
    assert_eq!(server.stop(), 0);

    // Act
    let refused = serve_refused(&ctl, &paths);
    let server = serve(&ctl, &paths, &["--force-assemble"]);

    // Assert: refused without the flag, naming it; with it, the log says
    // what was trusted and the data is intact.
    assert!(refused.contains("2 of 4 members missing"), "{refused}");
    assert!(refused.contains("--force-assemble"), "{refused}");
    let log = server.wait_log("--force-assemble: trusting member", WAIT);
    assert!(log.contains("at event"), "{log}");
    assert_same(
        &read_prefix(&server, dir.path(), data.len()),
        &data,
        "forced",
    );
    assert_eq!(server.stop(), 0);
    // Written so: the next start needs no flag.
    let server = serve(&ctl, &paths, &[]);
    assert_same(
        &read_prefix(&server, dir.path(), data.len()),
        &data,
        "after",
    );
    assert_eq!(server.stop(), 0);
}

/// Starts `vraid serve` and SIGKILLs it as soon as it logs `trigger` (a
/// point in its start-up); panics if it does not within a minute.
fn kill_at(ctl: &Path, members: &[PathBuf], trigger: &str) {
    use std::io::{BufRead, BufReader};
    let mut child = vraid(&["serve", "--nbd", &format!("127.0.0.1:{}", free_port())])
        .arg("--control")
        .arg(ctl)
        .args(members)
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut log = String::new();
    loop {
        match rx.recv_timeout(WAIT) {
            Ok(line) => {
                let hit = line.contains(trigger);
                log.push_str(&line);
                log.push('\n');
                if hit {
                    break;
                }
            }
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("start-up never logged {trigger:?}:\n{log}");
            }
        }
    }
    let _ = child.kill();
    let _ = child.wait();
}

#[test]
fn sigkill_loop_through_startup_keeps_every_member_and_byte() {
    // Arrange: RAID-5; each round writes and crashes (SIGKILL) while dirty,
    // then crashes again during the next start-up: right after the journal
    // replay (barriers, bitmap, mark_dirty under way), right after
    // mark_dirty, or while the crash resync runs (crash cases 3, 14, 36).
    let dir = scratch_dir("sigkill_loop");
    let ctl = dir.path().join("ctl.sock");
    let paths = member_paths(dir.path(), 4);
    create_array(5, "64K", "64M", "vol0", &paths);
    let triggers = [
        "partial-parity records",
        "was not shut down cleanly",
        "dirty bytes in",
    ];
    let mut want = vec![0u8; 2 * MIB];
    for round in 0..9u64 {
        let server = serve(&ctl, &paths, &[]);
        let log = server.log();
        assert!(
            !log.contains("excluding member") && !log.contains("running degraded"),
            "round {round}: a member was left out:\n{log}"
        );
        assert_same(
            &read_prefix(&server, dir.path(), want.len()),
            &want,
            &format!("round {round}"),
        );
        want = pseudo_random(2 * MIB, 100 + round);
        write_export(&server.uri("vol0"), &want, dir.path());
        server.kill();
        kill_at(&ctl, &paths, triggers[round as usize % triggers.len()]);
    }
    let server = serve(&ctl, &paths, &[]);
    assert!(
        !server.log().contains("excluding member"),
        "{}",
        server.log()
    );
    assert_same(
        &read_prefix(&server, dir.path(), want.len()),
        &want,
        "final",
    );
    assert_eq!(server.stop(), 0);
}
