//! Operations that outlive the daemon, against the real binary with fio
//! verify through NBD: a `vraid replace` killed with SIGKILL resumes from
//! its superblock checkpoint (or is dropped when the new member is absent),
//! a `vraid fail` of the new member stops a replace for good, a `vraid
//! remove` keeps the member out after a restart, and `vraid status`
//! names the member holding each role now (also under `--watch`).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use raid_tests::*;
use serde_json::Value;

const MEMBER: u64 = 256 << 20;

fn volume(status: &Value) -> Value {
    status["volumes"][0].clone()
}

fn strs(paths: &[&Path]) -> Vec<String> {
    paths
        .iter()
        .map(|p| p.to_str().unwrap().to_string())
        .collect()
}

/// `vraid serve --control CTL MEMBERS...`.
fn serve(ctl: &Path, members: &[&Path]) -> Server {
    let mut args = vec!["--control".to_string(), ctl.to_str().unwrap().to_string()];
    args.extend(strs(members));
    Server::start(&args.iter().map(String::as_str).collect::<Vec<_>>())
}

/// The number right after `prefix` in the first log line holding it.
fn logged_number(log: &str, prefix: &str) -> u64 {
    let at = log
        .find(prefix)
        .unwrap_or_else(|| panic!("{prefix:?} not in log:\n{log}"))
        + prefix.len();
    log[at..]
        .chars()
        .take_while(char::is_ascii_digit)
        .collect::<String>()
        .parse()
        .unwrap()
}

/// Runs fio verify of `size` at `offset` to completion.
fn fio_ok(uri: &str, name: &str, size: &str, offset: &str, verify_only: bool) {
    let mut cmd = fio_verify_cmd(uri, name, size, offset);
    if verify_only {
        cmd.arg("--verify_only");
    }
    assert_fio_clean(
        cmd.stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
}

/// A RAID-5 of three members with fio data at 0..64M, a slow rebuild rate,
/// and `vraid replace` of member 0 onto `new.img` killed with SIGKILL once a
/// checkpoint is on disk. Returns (members, new member, checkpoint).
fn replace_killed_mid_copy(dir: &Path, ctl: &Path) -> (Vec<PathBuf>, PathBuf, u64) {
    let paths = member_paths(dir, 3);
    create_array(5, "64K", "256M", "vol", &paths);
    let refs: Vec<&Path> = paths.iter().map(PathBuf::as_path).collect();
    let server = serve(ctl, &refs);
    // Every region written first: a replace skips regions never written
    // (FORMAT.md §10), and this needs one long enough to checkpoint.
    run_ok(std::process::Command::new("fio").args([
        "--name=fill",
        "--ioengine=nbd",
        &format!("--uri={}", server.uri("vol")),
        "--rw=write",
        "--bs=1M",
    ]));
    fio_ok(&server.uri("vol"), "before", "64M", "0", false);
    // A clean stop: no bitmap bit left to resync, so the resume point is the
    // checkpoint itself.
    assert_eq!(server.stop(), 0);
    let server = serve(ctl, &refs);
    let new = dir.join("new.img");
    std::fs::File::create(&new)
        .unwrap()
        .set_len(MEMBER)
        .unwrap();
    vraid_ctl_ok(ctl, &["set", "vol", "--rebuild-max-mbps", "40"]);
    vraid_ctl_ok(
        ctl,
        &[
            "replace",
            "vol",
            paths[0].to_str().unwrap(),
            new.to_str().unwrap(),
        ],
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    let checkpoint = loop {
        let c = examine(&new)["rebuild_checkpoint"].as_u64().unwrap_or(0);
        if c > 0 {
            break c;
        }
        assert!(Instant::now() < deadline, "no replace checkpoint written");
        std::thread::sleep(Duration::from_millis(100));
    };
    server.kill();
    (paths, new, checkpoint)
}

#[test]
fn replace_killed_mid_copy_resumes_from_its_checkpoint_and_completes() {
    // Arrange
    let dir = scratch_dir("persist-replace");
    let ctl = dir.path().join("ctl.sock");
    let (paths, new, checkpoint) = replace_killed_mid_copy(dir.path(), &ctl);
    let old = examine(&paths[0]);
    assert_eq!(old["replace"]["role"], 0, "replace not recorded: {old}");
    assert_eq!(old["members"][0]["state"], "active");

    // Act: restart with the old members and the new one; write meanwhile.
    let server = serve(&ctl, &[&paths[0], &paths[1], &paths[2], &new]);
    let prefix = format!(
        "resuming the replace of member 0 onto {} at ",
        new.display()
    );
    let log = server.wait_log(&prefix, Duration::from_secs(20));
    let resumed_at = logged_number(&log, &prefix);
    let fio = fio_verify_cmd(&server.uri("vol"), "during", "32M", "100M")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let during = volume(&status_json(&ctl));
    let watch = Command::new("timeout")
        .args(["3", "script", "-qc"])
        .arg(format!(
            "{} status --watch --control {}",
            vraid_bin().display(),
            ctl.display()
        ))
        .arg("/dev/null")
        .output()
        .unwrap();
    assert_fio_clean(fio);
    let log = server.wait_log("replace of member 0 finished", Duration::from_secs(120));
    let after = volume(&status_json(&ctl));
    assert_eq!(server.stop(), 0);

    // Assert: resumed at the checkpoint (not from 0), copied only the rest.
    assert!(
        resumed_at > 0 && resumed_at >= checkpoint,
        "resumed at {resumed_at}, checkpoint {checkpoint}"
    );
    let data_size = examine(&paths[1])["data_size"].as_u64().unwrap();
    let copied = logged_number(&log, "replace of member 0 finished: copied ");
    assert_eq!(copied, data_size - resumed_at);
    // While copying, the old member serves and holds the role's path.
    assert_eq!(
        during["members"][0]["path"],
        paths[0].to_str().unwrap(),
        "{during}"
    );
    assert_eq!(during["replace"]["path"], new.to_str().unwrap(), "{during}");
    let drawn = String::from_utf8_lossy(&watch.stdout);
    assert!(
        drawn.contains("replace of member 0") && drawn.contains('%'),
        "watch drew:\n{drawn}"
    );
    // Afterwards the new member holds role 0, the old one is out.
    assert_eq!(after["state"], "optimal", "{after}");
    assert_eq!(
        after["members"][0]["path"],
        new.to_str().unwrap(),
        "{after}"
    );
    assert!(after["replace"].is_null(), "{after}");
    let sb = examine(&new);
    assert_eq!(sb["role"], 0);
    assert_eq!(sb["members"][0]["member_uuid"], sb["member_uuid"]);
    assert_eq!(sb["members"][0]["state"], "active");
    assert!(
        sb["replace"].is_null() && sb["rebuild_checkpoint"].is_null(),
        "{sb}"
    );
    let members = [new.clone(), paths[1].clone(), paths[2].clone()];
    assert_eq!(bad_parity_stripes(&members, 64 << 10), Vec::<usize>::new());
    // A restart given the old member too leaves it out and verifies.
    let server = serve(&ctl, &[&paths[0], &paths[1], &paths[2], &new]);
    let log = server.log();
    assert!(
        log.contains(&format!("left out {}: stale", paths[0].display())),
        "{log}"
    );
    assert_eq!(volume(&status_json(&ctl))["state"], "optimal");
    fio_ok(&server.uri("vol"), "before", "64M", "0", true);
    fio_ok(&server.uri("vol"), "during", "32M", "100M", true);
    assert_eq!(server.stop(), 0);
}

#[test]
fn replace_whose_new_member_is_absent_at_restart_is_dropped() {
    // Arrange
    let dir = scratch_dir("persist-replace-drop");
    let ctl = dir.path().join("ctl.sock");
    let (paths, _new, _) = replace_killed_mid_copy(dir.path(), &ctl);

    // Act: restart without the new member.
    let server = serve(&ctl, &[&paths[0], &paths[1], &paths[2]]);
    let v = volume(&status_json(&ctl));
    let events = status_json(&ctl)["events"].clone();
    fio_ok(&server.uri("vol"), "before", "64M", "0", true);
    assert_eq!(server.stop(), 0);

    // Assert: optimal with the old member, the replace forgotten on disk.
    assert_eq!(v["state"], "optimal", "{v}");
    assert!(v["sync"].is_null() && v["replace"].is_null(), "{v}");
    assert_eq!(v["members"][0]["path"], paths[0].to_str().unwrap());
    assert!(
        events
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["kind"] == "replace_dropped"),
        "{events}"
    );
    for p in &paths {
        let sb = examine(p);
        assert!(
            sb["replace"].is_null() && sb["rebuild_checkpoint"].is_null(),
            "{sb}"
        );
        assert_eq!(sb["members"][0]["state"], "active");
    }
    assert_eq!(bad_parity_stripes(&paths, 64 << 10), Vec::<usize>::new());
}

/// Starts `vraid replace vol <members[0]> <new>` at 20 MB/s and waits
/// until it has copied something.
fn start_slow_replace(ctl: &Path, members: &[PathBuf], new: &Path) {
    vraid_ctl_ok(ctl, &["set", "vol", "--rebuild-max-mbps", "20"]);
    vraid_ctl_ok(
        ctl,
        &[
            "replace",
            "vol",
            members[0].to_str().unwrap(),
            new.to_str().unwrap(),
        ],
    );
    raid_tests::nbd_raw::wait_until("replace progress", Duration::from_secs(60), || {
        volume(&status_json(ctl))["sync"]["done_bytes"]
            .as_u64()
            .unwrap_or(0)
            > 0
    });
}

/// `vraid fail VOL NEW` of the new member of a replace (md's `--fail` of
/// a replacement device) stops the replace and keeps the old member:
/// once with fio verify writing across it, once with SIGKILL right after
/// the reply and a restart that is given the new member too: the replace
/// is neither resumed onto it nor is it trusted.
#[test]
fn failing_the_new_member_of_a_replace_stops_it_and_keeps_the_old_member() {
    // Arrange: a RAID-5 written whole, fio data at 0..64M, a replace running.
    let dir = scratch_dir("persist-replace-fail-new");
    let ctl = dir.path().join("ctl.sock");
    let paths = member_paths(dir.path(), 3);
    create_array(5, "64K", "256M", "vol", &paths);
    let refs: Vec<&Path> = paths.iter().map(PathBuf::as_path).collect();
    let server = serve(&ctl, &refs);
    let uri = server.uri("vol");
    run_ok(Command::new("fio").args([
        "--name=fill",
        "--ioengine=nbd",
        &format!("--uri={uri}"),
        "--rw=write",
        "--bs=1M",
    ]));
    fio_ok(&uri, "before", "64M", "0", false);
    let new = dir.path().join("new.img");
    std::fs::File::create(&new)
        .unwrap()
        .set_len(MEMBER)
        .unwrap();
    start_slow_replace(&ctl, &paths, &new);

    // Act 1: fail the new member while fio writes and verifies.
    let fio = fio_verify_cmd(&uri, "during", "32M", "100M")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stopped = vraid_ctl_ok(&ctl, &["fail", "vol", new.to_str().unwrap()]);
    let after_stop = volume(&status_json(&ctl));
    assert_fio_clean(fio);

    // Act 2: the same replace again, failed, SIGKILL at once; restart
    // with the new member given too.
    start_slow_replace(&ctl, &paths, &new);
    let second = vraid_ctl(&ctl, &["fail", "vol", new.to_str().unwrap()]);
    server.kill();
    let server = serve(&ctl, &[&paths[0], &paths[1], &paths[2], &new]);
    let restarted = volume(&status_json(&ctl));
    let log = server.log();
    fio_ok(&server.uri("vol"), "before", "64M", "0", true);
    fio_ok(&server.uri("vol"), "during", "32M", "100M", true);
    assert_eq!(server.stop(), 0);

    // Assert: the old member kept role 0 both times; nothing resumed.
    assert!(stopped.contains("stopped"), "{stopped}");
    assert!(second.status.success(), "{second:?}");
    assert_eq!(after_stop["state"], "optimal", "{after_stop}");
    assert!(after_stop["sync"].is_null(), "{after_stop}");
    // After the SIGKILL only the crash resync runs (the array was dirty).
    let kind = &restarted["sync"]["kind"];
    assert!(kind.is_null() || kind == "resync", "{restarted}\n{log}");
    for v in [&after_stop, &restarted] {
        assert!(v["replace"].is_null(), "{v}\n{log}");
        assert_eq!(v["members"][0]["path"], paths[0].to_str().unwrap());
        assert_eq!(v["members"][0]["state"], "active");
    }
    assert!(!log.contains("resuming the replace"), "{log}");
    assert!(
        log.contains("left out"),
        "the new member is not trusted\n{log}"
    );
    for p in &paths {
        let sb = examine(p);
        assert!(sb["replace"].is_null(), "{sb}");
    }
}

#[test]
fn removed_raid1_member_stays_out_after_a_restart() {
    // Arrange
    let dir = scratch_dir("persist-remove");
    let paths = member_paths(dir.path(), 2);
    create_array(1, "64K", "64M", "mirror", &paths);
    let ctl = dir.path().join("ctl.sock");
    let server = serve(&ctl, &[&paths[0], &paths[1]]);
    fio_ok(&server.uri("mirror"), "data", "16M", "0", false);

    // Act: fail and remove member 1, write more, restart with both paths.
    vraid_ctl_ok(&ctl, &["fail", "mirror", "1"]);
    vraid_ctl_ok(&ctl, &["remove", "mirror", paths[1].to_str().unwrap()]);
    fio_ok(&server.uri("mirror"), "later", "8M", "32M", false);
    assert_eq!(server.stop(), 0);
    let server = serve(&ctl, &[&paths[0], &paths[1]]);
    let v = volume(&status_json(&ctl));
    let log = server.log();
    fio_ok(&server.uri("mirror"), "data", "16M", "0", true);
    fio_ok(&server.uri("mirror"), "later", "8M", "32M", true);
    assert_eq!(server.stop(), 0);

    // Assert: left out with the reason, not re-added from the bitmap.
    assert!(
        log.contains(&format!("left out {}: removed", paths[1].display())),
        "{log}"
    );
    assert!(!log.contains("re-adding"), "{log}");
    assert_eq!(v["state"], "degraded", "{v}");
    assert_eq!(v["members"][1]["state"], "missing", "{v}");
    assert!(v["members"][1]["path"].is_null(), "{v}");
    assert!(v["sync"].is_null(), "{v}");
    let table = &examine(&paths[0])["members"][1];
    assert_eq!(table["state"], "missing");
    assert_eq!(table["member_uuid"], "00000000-0000-0000-0000-000000000000");
}
