//! fio (`ioengine=nbd`, `verify=crc32c`) against every level, with several
//! jobs writing disjoint regions concurrently over several connections.

use std::process::Command;

use raid_tests::*;

fn fio_verify(level: u32, members: usize) {
    // Arrange
    let dir = scratch_dir(&format!("fio-r{level}"));
    let paths = member_paths(dir.path(), members);
    create_array(level, "64K", "64M", "vol0", &paths);
    let member_args: Vec<&str> = paths.iter().map(|p| p.to_str().unwrap()).collect();
    let server = Server::start(&member_args);
    let uri = server.uri("vol0");

    // Act: random 4k..64k writes with verification, then a re-verify pass.
    let out = run_ok(
        Command::new("fio")
            .args([
                "--name=verify",
                "--ioengine=nbd",
                "--rw=randwrite",
                "--bsrange=4k-64k",
                "--iodepth=16",
                "--numjobs=2",
                "--size=24M",
                "--offset_increment=24M",
                "--verify=crc32c",
                "--do_verify=1",
                "--verify_fatal=1",
                "--output-format=json",
            ])
            .arg(format!("--uri={uri}")),
    );
    let reverify = run_ok(
        Command::new("fio")
            .args([
                "--name=verify",
                "--ioengine=nbd",
                "--rw=randwrite",
                "--bsrange=4k-64k",
                "--iodepth=16",
                "--numjobs=2",
                "--size=24M",
                "--offset_increment=24M",
                "--verify=crc32c",
                "--verify_only",
                "--verify_fatal=1",
                "--output-format=json",
            ])
            .arg(format!("--uri={uri}")),
    );

    // Assert
    for text in [out, reverify] {
        let v: serde_json::Value = serde_json::from_str(&text[text.find('{').unwrap()..]).unwrap();
        for job in v["jobs"].as_array().unwrap() {
            assert_eq!(job["error"], 0, "fio job failed: {job}");
        }
    }
    assert_eq!(server.stop(), 0);
}

#[test]
fn fio_verify_raid0() {
    fio_verify(0, 4);
}

#[test]
fn fio_verify_raid1() {
    fio_verify(1, 2);
}

#[test]
fn fio_verify_raid5() {
    fio_verify(5, 4);
}
