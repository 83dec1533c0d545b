//! RAID-6 against the real binary over NBD: fio verify on a whole array,
//! with two members failed and removed (reads rebuilt from P and Q, writes
//! made degraded), both rebuilt after `vraid add`, then a clean scrub and
//! P and Q of every stripe checked in the member files against an
//! independent GF(2^8) computation (md's left-symmetric layout). Also:
//! scrub names the member whose byte was flipped, `level = 6` in the
//! config creates and serves an array, two members are rebuilt onto
//! config spares in one pass (and a pass killed mid-way, even twice,
//! resumes both, FORMAT.md §7 crash case 64), and RAID-6 is served with
//! its write-hole journal by default.

use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::Duration;

use raid_tests::*;
use serde_json::Value;

const CHUNK: usize = 64 << 10;

fn args_of<'a>(ctl: &'a Path, paths: &'a [PathBuf]) -> Vec<&'a str> {
    let mut a = vec!["--control", ctl.to_str().unwrap(), "--no-journal"];
    a.extend(paths.iter().map(|p| p.to_str().unwrap()));
    a
}

fn spawn_fio(uri: &str, name: &str, size: &str, offset: &str, verify_only: bool) -> Child {
    let mut c = fio_verify_cmd(uri, name, size, offset);
    if verify_only {
        c.arg("--verify_only=1");
    }
    c.stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

fn fio_ok(uri: &str, name: &str, size: &str, offset: &str, verify_only: bool) {
    assert_fio_clean(spawn_fio(uri, name, size, offset, verify_only));
}

fn bad_syndrome_stripes(members: &[PathBuf]) -> Vec<usize> {
    raid_tests::bad_syndrome_stripes(members, CHUNK)
}

/// Polls `done` (bounded by `timeout`) until it holds.
fn wait_until(timeout: Duration, mut done: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + timeout;
    while !done() {
        assert!(
            std::time::Instant::now() < deadline,
            "condition not met in {timeout:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn vol0(ctl: &Path) -> Value {
    volume_status(ctl, "vol0")
}

fn scrub_json(ctl: &Path, extra: &[&str]) -> Value {
    let mut args = vec!["scrub", "vol0", "--json"];
    args.extend_from_slice(extra);
    let out = vraid_ctl_ok(ctl, &args);
    let v: Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
    v["scrub"].clone()
}

fn per_member(report: &Value, key: &str) -> Vec<u64> {
    report["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m[key].as_u64().unwrap())
        .collect()
}

#[test]
fn raid6_serves_through_two_failures_and_rebuilds_both() {
    // Arrange: 5 members (3 data chunks a stripe), fio data written whole.
    let dir = scratch_dir("r6-two-failures");
    let mut paths = sparse_members(dir.path(), 5, 64 << 20);
    create_array(6, "64K", "64M", "vol0", &paths);
    assert_eq!(examine(&paths[0])["level"], 6);
    let ctl = dir.path().join("ctl.sock");
    let server = Server::start(&args_of(&ctl, &paths));
    let uri = server.uri("vol0");
    fio_ok(&uri, "whole", "12M", "0", false);

    // Act 1: two members failed and removed (a data+data, data+P, data+Q
    // or P+Q pair in every stripe as P and Q rotate).
    for role in ["1", "3"] {
        vraid_ctl_ok(&ctl, &["fail", "vol0", role]);
        vraid_ctl_ok(&ctl, &["remove", "vol0", role]);
    }
    let degraded = member_states(&vol0(&ctl));
    let refused = vraid_ctl(&ctl, &["fail", "vol0", "0"]);

    // Assert 1: the old data reads back, new data writes and reads back.
    assert_eq!(
        degraded,
        vec!["active", "removed", "active", "removed", "active"]
    );
    assert!(!refused.status.success(), "a third failure is refused");
    fio_ok(&uri, "whole", "12M", "0", true);
    fio_ok(&uri, "degraded", "8M", "24M", false);

    // Act 2: two new members added: both are rebuilt.
    let new: Vec<PathBuf> = [1, 3]
        .iter()
        .map(|r| dir.path().join(format!("new{r}.img")))
        .collect();
    for p in &new {
        std::fs::File::create(p).unwrap().set_len(64 << 20).unwrap();
        vraid_ctl_ok(&ctl, &["add", "vol0", p.to_str().unwrap(), "--force"]);
    }
    for role in [1, 3] {
        let done = format!("rebuild of member {role} finished");
        server.wait_log(&done, Duration::from_secs(120));
    }
    let scrub = scrub_json(&ctl, &[]);

    // Assert 2: whole again, data intact, scrub clean, P and Q right.
    assert_eq!(member_states(&vol0(&ctl)), vec!["active"; 5]);
    fio_ok(&uri, "whole", "12M", "0", true);
    fio_ok(&uri, "degraded", "8M", "24M", true);
    assert_eq!(per_member(&scrub, "mismatch"), vec![0; 5], "{scrub}");
    assert_eq!(scrub["degraded"], false, "{scrub}");
    assert_eq!(server.stop(), 0);
    paths[1] = new[0].clone();
    paths[3] = new[1].clone();
    assert_eq!(bad_syndrome_stripes(&paths), Vec::<usize>::new());
}

#[test]
fn raid6_scrub_names_the_member_whose_byte_was_flipped() {
    // Arrange: md semantics (no checksums); stripe 0 of 5 members has P
    // on 4, Q on 0 and data on 1, 2, 3. One byte of member 2 flipped.
    let dir = scratch_dir("r6-scrub-names");
    let paths = sparse_members(dir.path(), 5, 32 << 20);
    create_array(6, "64K", "32M", "vol0", &paths);
    let ctl = dir.path().join("ctl.sock");
    let mut args = args_of(&ctl, &paths);
    args.push("--no-checksums");
    let server = Server::start(&args);
    fio_ok(&server.uri("vol0"), "fill", "4M", "0", false);
    assert_eq!(server.stop(), 0);
    assert_eq!(bad_syndrome_stripes(&paths), Vec::<usize>::new());
    let data_offset = examine(&paths[2])["data_offset"].as_u64().unwrap();
    flip_byte(&paths[2], data_offset + 3 * 4096 + 17);
    let server = Server::start(&args);

    // Act
    let check = scrub_json(&ctl, &[]);
    let repair = scrub_json(&ctl, &["--repair"]);
    let again = scrub_json(&ctl, &[]);

    // Assert: named on member 2 alone; repair makes P and Q match again.
    assert_eq!(
        per_member(&check, "mismatch"),
        vec![0, 0, 1, 0, 0],
        "{check}"
    );
    assert_eq!(
        per_member(&repair, "repaired"),
        vec![0, 0, 1, 0, 0],
        "{repair}"
    );
    assert_eq!(per_member(&again, "mismatch"), vec![0; 5], "{again}");
    assert_eq!(server.stop(), 0);
    assert_eq!(bad_syndrome_stripes(&paths), Vec::<usize>::new());
}

#[test]
fn raid6_from_the_config_is_created_and_served() {
    // Arrange
    let dir = scratch_dir("r6-config");
    let paths = member_paths(dir.path(), 4);
    let list: Vec<String> = paths
        .iter()
        .map(|p| format!("{:?}", p.display().to_string()))
        .collect();
    let config = dir.path().join("vraid.toml");
    std::fs::write(
        &config,
        format!(
            "[[volume]]\nname = \"vol0\"\nlevel = 6\nchunk_size = \"64K\"\nmembers = [{}]\n\
             write_hole_protection = false\ncreate = {{ member_size = \"32M\" }}\n",
            list.join(", ")
        ),
    )
    .unwrap();

    // Act
    let server = Server::start(&["--config", config.to_str().unwrap()]);
    fio_ok(&server.uri("vol0"), "cfg", "8M", "0", false);
    assert_eq!(server.stop(), 0);

    // Assert
    for (role, p) in paths.iter().enumerate() {
        let sb = examine(p);
        assert_eq!(
            (sb["level"].as_u64(), sb["role"].as_u64()),
            (Some(6), Some(role as u64))
        );
    }
    assert_eq!(bad_syndrome_stripes(&paths), Vec::<usize>::new());
}

#[test]
fn raid6_is_served_with_the_write_hole_journal_by_default() {
    // Arrange
    let dir = scratch_dir("r6-journal");
    let paths = sparse_members(dir.path(), 4, 32 << 20);
    create_array(6, "64K", "32M", "vol0", &paths);
    let ctl = dir.path().join("ctl.sock");
    let mut args = vec!["--control", ctl.to_str().unwrap()];
    args.extend(paths.iter().map(|p| p.to_str().unwrap()));

    // Act: served without --no-journal; small (partial-stripe) writes.
    let server = Server::start(&args);
    let writes: Vec<String> = (0..16)
        .map(|i| format!("write -P {} {} 4k", i + 1, i * 200 * 1024))
        .collect();
    qemu_io(&server.uri("vol0"), &writes);

    // Assert: each partial write logged to the P and the Q ring.
    let journal = &vol0(&ctl)["journal"];
    let entries = journal["entries"].as_u64().unwrap_or(0);
    assert!(entries >= 32, "{journal}");
    assert_eq!(server.stop(), 0);
    assert_eq!(bad_syndrome_stripes(&paths), Vec::<usize>::new());
}

/// A config serving `members` as a RAID-6 `vol0` with `spares`, rebuilt
/// at `mbps` MB/s (0: unlimited).
fn spares_config(dir: &Path, members: &[PathBuf], spares: &[PathBuf], mbps: u64) -> PathBuf {
    spares_config_sized(dir, members, spares, mbps, "64M")
}

/// [`spares_config`] for members (and spares) of `size`.
fn spares_config_sized(
    dir: &Path,
    members: &[PathBuf],
    spares: &[PathBuf],
    mbps: u64,
    size: &str,
) -> PathBuf {
    let quoted = |ps: &[PathBuf]| {
        ps.iter()
            .map(|p| format!("{:?}", p.display().to_string()))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let config = dir.join("vraid.toml");
    std::fs::write(
        &config,
        format!(
            "[[volume]]\nname = \"vol0\"\nlevel = 6\nchunk_size = \"64K\"\nmembers = [{}]\n\
             spares = [{}]\nwrite_hole_protection = false\nrebuild_max_mbps = {mbps}\n\
             create = {{ member_size = \"{size}\" }}\n",
            quoted(members),
            quoted(spares)
        ),
    )
    .unwrap();
    config
}

/// A RAID-6 with fio's 16 MiB written, stopped, members 1 and 3 then
/// deleted; returns the scratch dir, member paths and control socket.
fn raid6_missing_two(tag: &str) -> (tempfile::TempDir, Vec<PathBuf>, PathBuf) {
    let dir = scratch_dir(tag);
    let paths = sparse_members(dir.path(), 5, 64 << 20);
    create_array(6, "64K", "64M", "vol0", &paths);
    let ctl = dir.path().join("ctl.sock");
    let server = Server::start(&args_of(&ctl, &paths));
    fio_ok(&server.uri("vol0"), "whole", "16M", "0", false);
    assert_eq!(server.stop(), 0);
    for role in [1, 3] {
        std::fs::remove_file(&paths[role]).unwrap();
    }
    (dir, paths, ctl)
}

/// A two-member pass over config spares at 1 MB/s, SIGKILLed `kills`
/// times mid-pass (each restart resumes it slowly), then finished.
fn two_member_rebuild_killed(kills: usize) {
    // Arrange: two spares rebuilding both roles in one slow pass.
    let (dir, mut paths, ctl) = raid6_missing_two(&format!("r6-one-pass-kill{kills}"));
    let spares: Vec<PathBuf> = (0..2)
        .map(|i| dir.path().join(format!("spare{i}.img")))
        .collect();
    let serve = |mbps: u64| {
        let config = spares_config(dir.path(), &paths, &spares, mbps);
        Server::start(&[
            "--config",
            config.to_str().unwrap(),
            "--control",
            ctl.to_str().unwrap(),
        ])
    };
    let server = serve(1);
    server.wait_log("rebuilding member 3 onto", Duration::from_secs(30));

    // Act: SIGKILL mid-pass (again after a resumed pass made progress),
    // then a restart without the rate limit.
    server.kill();
    for _ in 1..kills {
        let server = serve(1);
        server.wait_log("resuming both", Duration::from_secs(30));
        wait_until(Duration::from_secs(30), || {
            vol0(&ctl)["sync"]["done_bytes"].as_u64().unwrap_or(0) > 0
        });
        server.kill();
    }
    let server = serve(0);
    let log = server.wait_log("rebuild of member 3 finished", Duration::from_secs(120));
    server.wait_log("rebuild of member 1 finished", Duration::from_secs(120));

    // Assert: both resumed in one pass and are active; the data verifies;
    // P and Q are right on the new members.
    assert!(log.contains("resuming both"), "{log}");
    assert_eq!(member_states(&vol0(&ctl)), vec!["active"; 5], "{log}");
    fio_ok(&server.uri("vol0"), "whole", "16M", "0", true);
    assert_eq!(server.stop(), 0);
    paths[1] = spares[0].clone();
    paths[3] = spares[1].clone();
    assert_eq!(bad_syndrome_stripes(&paths), Vec::<usize>::new());
}

#[test]
fn raid6_two_member_rebuild_killed_resumes_both_and_serves_the_data() {
    two_member_rebuild_killed(1);
}

#[test]
fn raid6_two_member_rebuild_killed_twice_resumes_both() {
    two_member_rebuild_killed(2);
}

#[test]
fn raid6_rebuilds_two_missing_members_onto_config_spares_in_one_pass() {
    // Arrange: fio data on a whole array, then members 1 and 3 gone; two
    // spares in the config.
    let (dir, mut paths, ctl) = raid6_missing_two("r6-one-pass");
    let spares: Vec<PathBuf> = (0..2)
        .map(|i| dir.path().join(format!("spare{i}.img")))
        .collect();
    let config = spares_config(dir.path(), &paths, &spares, 0);

    // Act
    let server = Server::start(&[
        "--config",
        config.to_str().unwrap(),
        "--control",
        ctl.to_str().unwrap(),
    ]);
    let mut log = String::new();
    for role in [1, 3] {
        log = server.wait_log(
            &format!("rebuild of member {role} finished"),
            Duration::from_secs(120),
        );
    }

    // Assert: the second rebuild started before the first finished (one
    // pass), the data verifies, P and Q are right on the new members.
    let started_3 = log
        .find("rebuilding member 3 onto")
        .expect("member 3 rebuilt");
    let finished_1 = log.find("rebuild of member 1 finished").unwrap();
    assert!(started_3 < finished_1, "{log}");
    assert_eq!(member_states(&vol0(&ctl)), vec!["active"; 5]);
    fio_ok(&server.uri("vol0"), "whole", "16M", "0", true);
    assert_eq!(server.stop(), 0);
    paths[1] = spares[0].clone();
    paths[3] = spares[1].clone();
    assert_eq!(bad_syndrome_stripes(&paths), Vec::<usize>::new());
}

/// `(member 1 resume point, member 3 resume point)` from a restart's log
/// ("resuming the rebuild of member N at X").
fn resume_points(log: &str) -> (u64, u64) {
    let at = |role: usize| {
        let needle = format!("resuming the rebuild of member {role} at ");
        log.lines()
            .find_map(|l| l.split(&needle).nth(1))
            .and_then(|r| r.split(|c: char| !c.is_ascii_digit()).next())
            .and_then(|n| n.parse::<u64>().ok())
            .unwrap_or_else(|| panic!("no resume of member {role}:\n{log}"))
    };
    (at(1), at(3))
}

/// Volume offset of the 1 MiB written for member checkpoint window `i`
/// (3 data members: member offset `i` × 64 MiB + 1 MiB).
fn spread_at(i: u64) -> u64 {
    i * 3 * (64 << 20) + (3 << 20)
}

/// FORMAT.md §7 case 64 at a real size: 1 GiB sparse members with 1 MiB
/// written in each 64 MiB checkpoint window, a slow two-member pass
/// SIGKILLed twice; each restart resumes BOTH members from the same
/// non-zero checkpoint, the second further on than the first.
#[test]
fn raid6_two_member_rebuild_killed_twice_resumes_both_from_a_nonzero_checkpoint() {
    // Arrange: data spread over 16 checkpoint windows; members 1, 3 gone.
    let dir = scratch_dir("r6-resume-nonzero");
    let mut paths = sparse_members(dir.path(), 5, 1 << 30);
    create_array(6, "64K", "1G", "vol0", &paths);
    let ctl = dir.path().join("ctl.sock");
    let server = Server::start(&args_of(&ctl, &paths));
    let writes: Vec<String> = (0..16)
        .map(|i| format!("write -P {} {} 1M", 0x10 + i, spread_at(i)))
        .collect();
    qemu_io(&server.uri("vol0"), &writes);
    assert_eq!(server.stop(), 0);
    for role in [1, 3] {
        std::fs::remove_file(&paths[role]).unwrap();
    }
    let spares: Vec<PathBuf> = (0..2)
        .map(|i| dir.path().join(format!("spare{i}.img")))
        .collect();
    let serve = |mbps: u64| {
        let config = spares_config_sized(dir.path(), &paths, &spares, mbps, "1G");
        Server::start(&[
            "--config",
            config.to_str().unwrap(),
            "--control",
            ctl.to_str().unwrap(),
        ])
    };
    let done = || vol0(&ctl)["sync"]["done_bytes"].as_u64().unwrap_or(0);

    // Act: kill past the third checkpoint, restart, kill again two
    // checkpoints further on, then finish unthrottled.
    let server = serve(20);
    wait_until(Duration::from_secs(120), || done() > 3 * (64 << 20));
    server.kill();
    let server = serve(20);
    let first = resume_points(
        &server.wait_log("resuming the rebuild of member 3", Duration::from_secs(30)),
    );
    wait_until(Duration::from_secs(120), || done() > 2 * (64 << 20));
    server.kill();
    let server = serve(0);
    let log = server.wait_log("rebuild of member 1 finished", Duration::from_secs(120));
    server.wait_log("rebuild of member 3 finished", Duration::from_secs(120));
    let second = resume_points(&server.log());
    eprintln!("resume points (member 1, member 3): first {first:?}, second {second:?}");

    // Assert: both members resumed together from non-zero checkpoints,
    // the second later; all members active; every written MiB reads back.
    assert!(first.0 > 0 && first.0 == first.1, "{first:?}\n{log}");
    assert!(
        second.0 > first.0 && second.0 == second.1,
        "{first:?} {second:?}\n{log}"
    );
    assert_eq!(member_states(&vol0(&ctl)), vec!["active"; 5], "{log}");
    let reads: Vec<String> = (0..16)
        .map(|i| format!("read -P {} {} 1M", 0x10 + i, spread_at(i)))
        .collect();
    let out = qemu_io(&server.uri("vol0"), &reads);
    assert!(!out.contains("verification failed"), "{out}");
    assert_eq!(server.stop(), 0);
    paths[1] = spares[0].clone();
    paths[3] = spares[1].clone();
}
