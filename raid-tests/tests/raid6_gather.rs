//! RAID-6 write gathering over NBD (src/raid/gather.rs): fio writes
//! sequential 1 MiB requests (which end mid-stripe over 3 data members of
//! 64 KiB chunks: 192 KiB stripes) and 768 KiB ones (stripe-aligned) at
//! queue depths 4 to 16, crc32c-verified, with and without the write-hole
//! journal, and with a member failed; then P and Q of every stripe are
//! checked in the member files. The daemon's debug log shows how many
//! stripes were gathered: at least one for the 1 MiB streams.

use std::path::{Path, PathBuf};
use std::process::Stdio;

use raid_tests::*;

const CHUNK: usize = 64 << 10;

/// Sequential writes of `bs` at `qd`, verified as written and again.
fn fio_sequential(uri: &str, bs: &str, qd: u32) {
    for verify_only in [false, true] {
        let mut c = std::process::Command::new("fio");
        c.args([
            "--name=seq",
            "--ioengine=nbd",
            "--rw=write",
            &format!("--bs={bs}"),
            &format!("--iodepth={qd}"),
            "--size=24M",
            "--verify=crc32c",
            "--do_verify=1",
            "--verify_fatal=1",
            "--verify_state_save=0",
            "--output-format=json",
        ])
        .arg(format!("--uri={uri}"));
        if verify_only {
            c.arg("--verify_only=1");
        }
        let child = c
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        assert_fio_clean(child);
    }
}

fn serve(ctl: &Path, paths: &[PathBuf], journal: bool) -> Server {
    let mut args = vec!["--control", ctl.to_str().unwrap()];
    if !journal {
        args.push("--no-journal");
    }
    args.extend(paths.iter().map(|p| p.to_str().unwrap()));
    Server::start_with_env(&args, &[("RUST_LOG", "info,vraid::raid::gather=debug")])
}

/// Serves a 5-member RAID-6 (`failed`: that member failed first), runs
/// the sequential jobs, stops, and checks P and Q; returns the number of
/// gathered stripes the log shows.
fn gather_run(tag: &str, journal: bool, failed: Option<&str>, jobs: &[(&str, u32)]) -> usize {
    // Arrange
    let dir = scratch_dir(tag);
    let paths = sparse_members(dir.path(), 5, 32 << 20);
    create_array(6, "64K", "32M", "vol0", &paths);
    let ctl = dir.path().join("ctl.sock");
    let server = serve(&ctl, &paths, journal);
    if let Some(role) = failed {
        vraid_ctl_ok(&ctl, &["fail", "vol0", role]);
    }

    // Act
    for &(bs, qd) in jobs {
        fio_sequential(&server.uri("vol0"), bs, qd);
    }

    // Assert
    let gathered = server.log().matches("gathered a full stripe").count();
    assert_eq!(server.stop(), 0);
    if failed.is_none() {
        assert_eq!(bad_syndrome_stripes(&paths, CHUNK), Vec::<usize>::new());
    }
    gathered
}

#[test]
fn raid6_sequential_1m_and_768k_writes_verify_without_the_journal() {
    let jobs = [("1M", 4), ("1M", 16), ("768k", 4), ("768k", 16)];
    let gathered = gather_run("r6-gather-nj", false, None, &jobs);
    assert!(gathered > 0, "no stripe gathered");
}

#[test]
fn raid6_sequential_1m_and_768k_writes_verify_with_the_journal() {
    let jobs = [("1M", 4), ("1M", 16), ("768k", 8)];
    let gathered = gather_run("r6-gather-j", true, None, &jobs);
    assert!(gathered > 0, "no stripe gathered");
}

#[test]
fn raid6_sequential_1m_writes_verify_with_a_member_failed() {
    let jobs = [("1M", 8), ("768k", 4)];
    let gathered = gather_run("r6-gather-failed", true, Some("2"), &jobs);
    assert!(gathered > 0, "no stripe gathered");
}
