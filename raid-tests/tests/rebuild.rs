//! Rebuild and recovery against the real binary, with fio verify through
//! NBD: a re-added RAID-1 member catches up from the write-intent bitmap;
//! a RAID-5 rebuild onto a config spare is killed with SIGKILL and resumes
//! from its superblock checkpoint, under client load.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use raid_tests::*;

fn args_of(paths: &[PathBuf]) -> Vec<&str> {
    paths.iter().map(|p| p.to_str().unwrap()).collect()
}

/// Runs fio against `uri` and asserts every job succeeded.
fn fio(uri: &str, args: &[&str]) {
    let out = run_ok(
        Command::new("fio")
            .args([
                "--name=job",
                "--ioengine=nbd",
                "--verify=crc32c",
                "--verify_fatal=1",
                "--verify_state_save=0",
                "--output-format=json",
            ])
            .args(args)
            .arg(format!("--uri={uri}")),
    );
    let v: serde_json::Value = serde_json::from_str(&out[out.find('{').unwrap()..]).unwrap();
    for job in v["jobs"].as_array().unwrap() {
        assert_eq!(job["error"], 0, "fio job failed: {job}");
    }
}

/// The number in `... {prefix}N{suffix}` of the first matching log line.
fn logged_number(log: &str, prefix: &str) -> u64 {
    let at = log
        .find(prefix)
        .unwrap_or_else(|| panic!("{prefix:?} not in log:\n{log}"))
        + prefix.len();
    log[at..]
        .chars()
        .take_while(|c| c.is_ascii_digit())
        .collect::<String>()
        .parse()
        .unwrap()
}

/// `vraid examine --json`, or None if the member has no superblock yet.
fn examine_ok(member: &Path) -> Option<serde_json::Value> {
    let out = run(vraid(&["examine", "--json"]).arg(member));
    out.status
        .success()
        .then(|| serde_json::from_slice(&out.stdout).unwrap())
}

fn member_states(member: &Path) -> Vec<String> {
    examine(member)["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["state"].as_str().unwrap().to_string())
        .collect()
}

/// A member away while 8 MiB are written comes back and is caught up from
/// the write-intent bitmap only: the dirty 64 MiB region, not the member.
fn readded_member_catches_up_from_the_bitmap_only(level: u32, count: usize) {
    // Arrange: a whole array, then the last member away during the writes.
    let dir = scratch_dir(&format!("r{level}-readd"));
    let paths = member_paths(dir.path(), count);
    create_array(level, "64K", "256M", "vol0", &paths);
    assert_eq!(Server::start(&args_of(&paths)).stop(), 0);
    let last = count - 1;
    let away = dir.path().join("away.img");
    std::fs::rename(&paths[last], &away).unwrap();
    let server = Server::start(&args_of(&paths));
    fio(
        &server.uri("vol0"),
        &["--rw=randwrite", "--bs=4k", "--size=8M", "--do_verify=1"],
    );
    assert_eq!(server.stop(), 0);
    assert_eq!(member_states(&paths[0])[last], "missing");

    // Act: the member comes back.
    std::fs::rename(&away, &paths[last]).unwrap();
    let server = Server::start(&args_of(&paths));
    let done = format!("recovery of member {last} finished");
    let log = server.wait_log(&done, Duration::from_secs(60));

    // Assert: only the dirty region was copied, the data is intact, and
    // the redundancy is right (mirrors equal, parity of every stripe).
    let copied = logged_number(&log, &format!("{done}: copied "));
    let data_size = examine(&paths[0])["data_size"].as_u64().unwrap();
    assert!(copied > 0 && copied <= 64 << 20, "copied {copied} bytes");
    assert!(copied * 3 < data_size, "copied {copied} of {data_size}");
    fio(
        &server.uri("vol0"),
        &["--rw=randwrite", "--bs=4k", "--size=8M", "--verify_only"],
    );
    assert_eq!(server.stop(), 0);
    assert_eq!(member_states(&paths[last]), vec!["active"; count]);
    if level == 1 {
        assert!(
            member_data(&paths[0]) == member_data(&paths[1]),
            "mirrors differ"
        );
    } else {
        assert_eq!(bad_parity_stripes(&paths, 64 << 10), Vec::<usize>::new());
    }
}

#[test]
fn raid1_readded_member_catches_up_from_the_bitmap_only() {
    readded_member_catches_up_from_the_bitmap_only(1, 2);
}

#[test]
fn raid5_readded_member_catches_up_from_the_bitmap_only() {
    readded_member_catches_up_from_the_bitmap_only(5, 3);
}

#[test]
fn raid5_spare_rebuild_killed_resumes_from_checkpoint_under_load() {
    // Arrange: data written on a whole array, then member 2 lost; a config
    // with a hot spare and a slow rebuild.
    let dir = scratch_dir("r5-rebuild-kill");
    let paths = member_paths(dir.path(), 3);
    create_array(5, "64K", "320M", "vol0", &paths);
    let server = Server::start(&args_of(&paths));
    // Every region written first: the rebuild skips regions never written
    // (FORMAT.md §10), and this test needs one long enough to checkpoint.
    fio(
        &server.uri("vol0"),
        &["--rw=write", "--bs=1M", "--verify=0"],
    );
    fio(
        &server.uri("vol0"),
        &[
            "--rw=randwrite",
            "--bsrange=4k-64k",
            "--size=64M",
            "--do_verify=1",
        ],
    );
    assert_eq!(server.stop(), 0);
    std::fs::remove_file(&paths[2]).unwrap();
    let spare = dir.path().join("spare.img");
    std::fs::File::create(&spare)
        .unwrap()
        .set_len(320 << 20)
        .unwrap();
    let config = dir.path().join("vraid.toml");
    let list = |ps: &[&PathBuf]| {
        ps.iter()
            .map(|p| format!("{:?}", p.display().to_string()))
            .collect::<Vec<_>>()
            .join(", ")
    };
    std::fs::write(
        &config,
        format!(
            "[[volume]]\nname = \"vol0\"\nlevel = 5\nchunk_size = \"64K\"\nmembers = [{}]\nspares = [{}]\nrebuild_max_mbps = 30\n",
            list(&[&paths[0], &paths[1], &paths[2]]),
            list(&[&spare])
        ),
    )
    .unwrap();
    let cfg = ["--config", config.to_str().unwrap()];

    // Act 1: the spare is activated; kill the daemon after a checkpoint.
    let server = Server::start(&cfg);
    server.wait_log("rebuilding member 2 onto", Duration::from_secs(20));
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let checkpoint = loop {
        if let Some(c) = examine(&spare)["rebuild_checkpoint"].as_u64() {
            if c > 0 {
                break c;
            }
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no checkpoint written"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    server.kill();
    assert_eq!(examine(&spare)["role"], 2);
    assert_eq!(member_states(&spare)[2], "rebuilding");

    // Act 2: restart; the rebuild resumes while fio writes and verifies.
    let server = Server::start(&cfg);
    let log = server.wait_log(
        "resuming the rebuild of member 2 at ",
        Duration::from_secs(20),
    );
    let resumed_at = logged_number(&log, "resuming the rebuild of member 2 at ");
    fio(
        &server.uri("vol0"),
        &[
            "--rw=randwrite",
            "--bsrange=4k-64k",
            "--offset=100M",
            "--size=32M",
            "--do_verify=1",
        ],
    );
    let log = server.wait_log("rebuild of member 2 finished", Duration::from_secs(120));

    // Assert: resumed at the checkpoint, copied only the rest, data intact,
    // parity consistent on every stripe, the spare now active in role 2.
    let data_size = examine(&paths[0])["data_size"].as_u64().unwrap();
    assert!(
        resumed_at >= checkpoint,
        "resumed at {resumed_at}, checkpoint {checkpoint}"
    );
    let copied = logged_number(&log, "rebuild of member 2 finished: copied ");
    assert_eq!(copied, data_size - resumed_at);
    for args in [
        ["--bsrange=4k-64k", "--offset=0", "--size=64M"],
        ["--bsrange=4k-64k", "--offset=100M", "--size=32M"],
    ] {
        let mut a = vec!["--rw=randwrite", "--verify_only"];
        a.extend(args);
        fio(&server.uri("vol0"), &a);
    }
    assert_eq!(server.stop(), 0);
    assert_eq!(member_states(&spare), vec!["active"; 3]);
    let members = [paths[0].clone(), paths[1].clone(), spare];
    assert_eq!(bad_parity_stripes(&members, 64 << 10), Vec::<usize>::new());
}

#[test]
fn raid1_member_dying_mid_run_is_replaced_by_the_config_spare_under_load() {
    // Arrange: member 1 behind nbdkit's error filter, a spare in the config.
    let dir = scratch_dir("r1-spare-live");
    let backing = dir.path().join("m1.backing");
    let flaky = FlakyMember::new(dir.path(), "m1", &backing, 96 << 20);
    let m0 = dir.path().join("m0.img");
    std::fs::File::create(&m0)
        .unwrap()
        .set_len(96 << 20)
        .unwrap();
    let members = [m0.clone(), flaky.path()];
    create_array(1, "64K", "96M", "vol0", &members);
    let spare = dir.path().join("spare.img");
    let config = dir.path().join("vraid.toml");
    std::fs::write(
        &config,
        format!(
            "[[volume]]\nname = \"vol0\"\nlevel = 1\nmembers = [{:?}, {:?}]\nspares = [{:?}]\ncreate = {{ member_size = \"96M\" }}\n",
            m0.display().to_string(),
            flaky.path().display().to_string(),
            spare.display().to_string()
        ),
    )
    .unwrap();
    let server = Server::start(&["--config", config.to_str().unwrap()]);
    assert!(spare.exists(), "the missing spare file is created");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while examine_ok(&spare).is_none_or(|v| v["spare"] != true) {
        assert!(
            std::time::Instant::now() < deadline,
            "no spare superblock written"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    fio(
        &server.uri("vol0"),
        &["--rw=randwrite", "--bs=16k", "--size=16M", "--do_verify=1"],
    );

    // Act: the member dies while fio writes.
    flaky.fail();
    fio(
        &server.uri("vol0"),
        &[
            "--rw=randwrite",
            "--bs=16k",
            "--offset=32M",
            "--size=16M",
            "--do_verify=1",
        ],
    );
    let log = server.wait_log("rebuild of member 1 finished", Duration::from_secs(60));

    // Assert: the spare took role 1, the data is intact, the mirrors match.
    assert!(log.contains("activating spare"), "{log}");
    for offset in ["0", "32M"] {
        let off = format!("--offset={offset}");
        fio(
            &server.uri("vol0"),
            &[
                "--rw=randwrite",
                "--bs=16k",
                &off,
                "--size=16M",
                "--verify_only",
            ],
        );
    }
    assert_eq!(server.stop(), 0);
    assert_eq!(member_states(&spare), vec!["active", "active"]);
    assert!(member_data(&m0) == member_data(&spare), "mirrors differ");
}
