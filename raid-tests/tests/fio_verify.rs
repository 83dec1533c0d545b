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
    let out = run_ok(fio_job(&uri, "--do_verify=1"));
    let reverify = run_ok(fio_job(&uri, "--verify_only"));

    // Assert
    for text in [out, reverify] {
        let v: serde_json::Value = serde_json::from_str(&text[text.find('{').unwrap()..]).unwrap();
        for job in v["jobs"].as_array().unwrap() {
            assert_eq!(job["error"], 0, "fio job failed: {job}");
        }
    }
    assert_eq!(server.stop(), 0);
}

/// Two jobs writing disjoint 24 MiB regions with 4k..64k random writes,
/// crc32c-verified; `mode` says whether to write then verify or only verify.
fn fio_job(uri: &str, mode: &str) -> Command {
    let mut c = Command::new("fio");
    c.args([
        "--name=verify",
        "--ioengine=nbd",
        "--rw=randwrite",
        "--bsrange=4k-64k",
        "--iodepth=16",
        "--numjobs=2",
        "--size=24M",
        "--offset_increment=24M",
        "--verify=crc32c",
        mode,
        "--verify_fatal=1",
        "--verify_state_save=0",
        "--output-format=json",
    ])
    .arg(format!("--uri={uri}"));
    c
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

/// 1 KiB random writes (each a part of a 4 KiB checksummed block: with
/// `VRAID_EDGE_BESIDE=1` its edge read runs beside its data write,
/// `src/integrity/beside.rs`) verified by
/// fio, then a scrub check finds no checksum error and no mismatch.
fn fio_verify_1k_then_scrub_clean(level: u32, members: usize) {
    // Arrange
    let dir = scratch_dir(&format!("fio-1k-r{level}"));
    let paths = member_paths(dir.path(), members);
    create_array(level, "64K", "64M", "vol0", &paths);
    let ctl = dir.path().join("ctl.sock");
    let mut args = vec!["--control", ctl.to_str().unwrap()];
    args.extend(paths.iter().map(|p| p.to_str().unwrap()));
    let server = Server::start_with_env(&args, &[("VRAID_EDGE_BESIDE", "1")]);
    let uri = server.uri("vol0");

    // Act: QD1 and QD8 1 KiB random writes over 8 MiB, verified; a re-verify.
    let mut outs = Vec::new();
    for depth in ["1", "8"] {
        let mut job = fio_job(&uri, "--do_verify=1");
        job.args([
            "--bsrange=1k-1k",
            "--size=4M",
            &format!("--iodepth={depth}"),
        ]);
        outs.push(run_ok(job));
    }
    let mut reverify = fio_job(&uri, "--verify_only");
    reverify.args(["--bsrange=1k-1k", "--size=4M"]);
    outs.push(run_ok(reverify));
    let scrub = vraid_ctl_ok(&ctl, &["scrub", "vol0", "--json"]);

    // Assert
    for text in outs {
        let v: serde_json::Value = serde_json::from_str(&text[text.find('{').unwrap()..]).unwrap();
        for job in v["jobs"].as_array().unwrap() {
            assert_eq!(job["error"], 0, "fio job failed: {job}");
        }
    }
    let v: serde_json::Value = serde_json::from_str(&scrub).unwrap();
    assert_eq!(v["scrub"]["outcome"], "finished", "{scrub}");
    assert_eq!(v["scrub"]["found"], 0, "{scrub}");
    let status = status_json(&ctl);
    for m in status["volumes"][0]["members"].as_array().unwrap() {
        assert_eq!(m["checksum_errors"], 0, "{m}");
    }
    assert_eq!(server.stop(), 0);
}

#[test]
fn fio_verify_1k_raid0_then_scrub_clean() {
    fio_verify_1k_then_scrub_clean(0, 4);
}

#[test]
fn fio_verify_1k_raid1_then_scrub_clean() {
    fio_verify_1k_then_scrub_clean(1, 2);
}
