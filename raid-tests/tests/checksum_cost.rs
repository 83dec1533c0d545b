//! Issue 15, the cost of block checksums (engineer P's area): the checksum
//! cache budget a user asks for and the one the daemon uses.
//!
//! - a `--checksum-cache` below the 256 KiB minimum is raised to it with a
//!   warning in the log (it was raised silently), and the raised budget is
//!   what `vraid status` reports; a budget at the minimum draws no warning.

use std::path::{Path, PathBuf};
use std::time::Duration;

use raid_tests::*;

const WARNING: &str = "checksum cache budget below the minimum";

fn serve_args<'a>(paths: &'a [PathBuf], control: &'a Path, cache: &'a str) -> Vec<&'a str> {
    let mut a: Vec<&str> = paths.iter().map(|p| p.to_str().unwrap()).collect();
    a.extend([
        "--control",
        control.to_str().unwrap(),
        "--checksum-cache",
        cache,
    ]);
    a
}

#[test]
fn a_checksum_cache_below_the_minimum_is_raised_with_a_warning() {
    // Arrange
    let dir = scratch_dir("p15-cache-min");
    let paths = member_paths(dir.path(), 2);
    create_array(1, "64K", "16M", "vol0", &paths);
    let ctl = dir.path().join("ctl.sock");

    // Act: 100 KiB asked for.
    let server = Server::start(&serve_args(&paths, &ctl, "100K"));

    // Assert: warned, with what was asked; the budget is the minimum.
    let log = server.wait_log(WARNING, Duration::from_secs(20));
    assert!(
        log.contains("102400"),
        "requested size not in the warning:\n{log}"
    );
    let v = volume_status(&ctl, "vol0");
    assert_eq!(v["checksum_cache"]["budget_bytes"], 256 * 1024, "{v}");
    assert_eq!(server.stop(), 0);
}

#[test]
fn a_checksum_cache_at_the_minimum_draws_no_warning() {
    // Arrange
    let dir = scratch_dir("p15-cache-at-min");
    let paths = member_paths(dir.path(), 2);
    create_array(1, "64K", "16M", "vol0", &paths);
    let ctl = dir.path().join("ctl.sock");

    // Act
    let server = Server::start(&serve_args(&paths, &ctl, "256K"));
    let v = volume_status(&ctl, "vol0");
    qemu_io(&server.uri("vol0"), &["write -P 7 0 64k".to_string()]);
    let log = server.log();
    assert_eq!(server.stop(), 0);

    // Assert
    assert_eq!(v["checksum_cache"]["budget_bytes"], 256 * 1024, "{v}");
    assert!(!log.contains(WARNING), "warned at the minimum:\n{log}");
}
