//! Red team, issue 15: the bounded checksum page cache and the inline
//! checksum layout, attacked with real clients (qemu-io over NBD, `vraid`
//! subcommands, `dd` on the members).
//!
//! - `vraid examine` names the checksum layout of a member (it said only
//!   "maintained", for inline and separate members alike);
//! - a block + tag copied over another block's place (misdirected) on one
//!   mirror of an inline RAID-1 is caught and repaired; on both mirrors the
//!   read is EIO, never the wrong block's data;
//! - garbage `--checksum-cache` values are refused; 0 is raised to the
//!   documented minimum; a tiny cache under writes spread over > 64 pages
//!   stays within its budget, a SIGKILL loses no flushed write, and a
//!   scrub after the restart's resync finds nothing.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use raid_tests::*;

const MIB: u64 = 1 << 20;
const STRIDE: u64 = 4608;

fn serve_args<'a>(paths: &'a [PathBuf], control: &'a Path, extra: &[&'a str]) -> Vec<&'a str> {
    let mut a: Vec<&str> = paths.iter().map(|p| p.to_str().unwrap()).collect();
    a.extend(["--control", control.to_str().unwrap()]);
    a.extend_from_slice(extra);
    a
}

fn create_inline_raid1(paths: &[PathBuf]) {
    let mut c = vraid(&[
        "create",
        "--level",
        "1",
        "--chunk-size",
        "64K",
        "--member-size",
        "40M",
        "--name",
        "vol0",
        "--checksum-layout",
        "inline",
    ]);
    c.args(paths);
    run_ok(&mut c);
}

/// Waits (bounded) until vol0 is optimal with no resync running.
fn wait_optimal(ctl: &Path) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(40);
    loop {
        let v = volume_status(ctl, "vol0");
        if v["state"] == "optimal" {
            return v;
        }
        assert!(Instant::now() < deadline, "never optimal: {v}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Copies `len` bytes of `member` from `from` to `to` (same file).
fn copy_within(member: &Path, from: u64, to: u64, len: usize) {
    let bytes = peek(member, from, len);
    poke(member, to, &bytes);
}

#[test]
fn examine_names_the_checksum_layout_of_inline_and_separate_members() {
    let dir = scratch_dir("rt15-examine-layout");
    let inline = member_paths(dir.path(), 2);
    create_inline_raid1(&inline);
    let sep: Vec<PathBuf> = (0..2)
        .map(|i| dir.path().join(format!("s{i}.img")))
        .collect();
    create_array(1, "64K", "40M", "vol1", &sep);

    assert_eq!(examine(&inline[0])["checksum_layout"], "inline");
    assert_eq!(examine(&sep[0])["checksum_layout"], "separate");
    let text = run_ok(vraid(&["examine"]).arg(&inline[1]));
    assert!(
        text.contains("inline"),
        "examine text says no layout:\n{text}"
    );
    let text = run_ok(vraid(&["examine"]).arg(&sep[1]));
    assert!(
        text.contains("separate"),
        "examine text says no layout:\n{text}"
    );
}

#[test]
fn inline_raid1_misdirected_block_is_repaired_from_the_mirror_and_on_both_is_eio() {
    let dir = scratch_dir("rt15-misdirect");
    let paths = member_paths(dir.path(), 2);
    create_inline_raid1(&paths);
    let data_offset = examine(&paths[0])["data_offset"].as_u64().unwrap();
    let ctl = dir.path().join("ctl.sock");

    let server = Server::start(&serve_args(&paths, &ctl, &[]));
    let uri = server.uri("vol0");
    qemu_io(
        &uri,
        &[
            "write -P 0xaa 0 4k".into(),
            "write -P 0xbb 4k 4k".into(),
            "write -P 0xcc 8k 4k".into(),
            "flush".into(),
        ],
    );
    assert_eq!(server.stop(), 0);

    // Block 0 (data + its tag) lands where block 1 belongs, on mirror 0.
    copy_within(
        &paths[0],
        data_offset,
        data_offset + STRIDE,
        STRIDE as usize,
    );
    // Block 0 lands on block 2's place on both mirrors.
    for p in &paths {
        copy_within(p, data_offset, data_offset + 2 * STRIDE, STRIDE as usize);
    }

    let server = Server::start(&serve_args(&paths, &ctl, &[]));
    let uri = server.uri("vol0");
    for _ in 0..3 {
        let (ok, out) = qemu_io_try(&uri, &["read -P 0xbb 4k 4k"]);
        assert!(ok, "misdirected block on one mirror served wrong:\n{out}");
    }
    let (ok, out) = qemu_io_try(&uri, &["read -P 0xaa 8k 4k"]);
    assert!(
        !ok,
        "a misdirected block on every mirror was served:\n{out}"
    );
    let (ok, out) = qemu_io_try(&uri, &["read -P 0xcc 8k 4k"]);
    assert!(
        !ok,
        "a block whose copies are all misdirected was served:\n{out}"
    );
    assert!(out.contains("Input/output error"), "{out}");
    let errs: u64 = volume_status(&ctl, "vol0")["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["checksum_errors"].as_u64().unwrap())
        .sum();
    assert!(errs >= 2, "checksum errors not counted: {errs}");
    assert_eq!(server.stop(), 0);
    // Mirror 0's block 1 was rewritten from mirror 1 (data and tag).
    assert_eq!(
        peek(&paths[0], data_offset + STRIDE, STRIDE as usize),
        peek(&paths[1], data_offset + STRIDE, STRIDE as usize)
    );
}

#[test]
fn garbage_checksum_cache_values_are_refused_and_zero_is_raised_to_the_minimum() {
    let dir = scratch_dir("rt15-cache-cli");
    let paths = member_paths(dir.path(), 2);
    create_array(1, "64K", "16M", "vol0", &paths);
    let ctl = dir.path().join("ctl.sock");
    for bad in ["-1", "abc", "1.5M", ""] {
        let mut c = vraid(&["serve"]);
        c.args(serve_args(&paths, &ctl, &["--checksum-cache", bad]));
        let out = run(c);
        assert!(
            !out.status.success(),
            "--checksum-cache {bad:?} accepted: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let server = Server::start(&serve_args(&paths, &ctl, &["--checksum-cache", "0"]));
    let v = volume_status(&ctl, "vol0");
    assert_eq!(v["checksum_cache"]["budget_bytes"], 256 * 1024, "{v}");
    assert_eq!(server.stop(), 0);
}

#[test]
fn tiny_cache_raid5_sigkill_keeps_flushed_writes_and_scrub_is_clean() {
    let dir = scratch_dir("rt15-tiny-cache");
    let paths = member_paths(dir.path(), 3);
    // 300 MiB members: > 64 checksum pages (4 MiB of data each) per member.
    create_array(5, "64K", "300M", "vol0", &paths);
    let ctl = dir.path().join("ctl.sock");
    let args = serve_args(&paths, &ctl, &["--checksum-cache", "0"]);
    let pages = 140u64;
    let at = |i: u64| i * 4 * MIB + 512;
    let pat = |i: u64| i % 250 + 1;

    for round in 0..2u64 {
        let server = Server::start(&args);
        let uri = server.uri("vol0");
        let mut cmds = Vec::new();
        for i in 0..pages {
            // Unaligned, so every write merges a partial block.
            let p = (pat(i) + round) % 250 + 1;
            if i % 7 == 0 {
                cmds.push(format!("write -f -P {p} {} 4096", at(i)));
            } else {
                cmds.push(format!("write -P {p} {} 4096", at(i)));
            }
        }
        cmds.push("flush".into());
        qemu_io(&uri, &cmds);
        let cache = volume_status(&ctl, "vol0")["checksum_cache"].clone();
        assert!(
            cache["resident_bytes"].as_u64().unwrap() <= cache["budget_bytes"].as_u64().unwrap(),
            "{cache}"
        );
        assert!(cache["evictions"].as_u64().unwrap() > 0, "{cache}");
        server.kill();

        let server = Server::start(&args);
        let uri = server.uri("vol0");
        let reads: Vec<String> = (0..pages)
            .map(|i| format!("read -P {} {} 4096", (pat(i) + round) % 250 + 1, at(i)))
            .collect();
        let (ok, out) = qemu_io_try(&uri, &reads);
        assert!(
            ok,
            "flushed writes lost after SIGKILL (round {round}):\n{out}"
        );
        wait_optimal(&ctl);
        let out = vraid_ctl_ok(&ctl, &["scrub", "vol0", "--json"]);
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        let s = &v["scrub"];
        assert_eq!(s["outcome"], "finished", "{s}");
        assert_eq!(s["found"], 0, "scrub after SIGKILL found bad blocks: {s}");
        assert_eq!(s["mismatches"], 0, "{s}");
        let cache = volume_status(&ctl, "vol0")["checksum_cache"].clone();
        assert!(
            cache["resident_bytes"].as_u64().unwrap() <= cache["budget_bytes"].as_u64().unwrap(),
            "{cache}"
        );
        assert_eq!(server.stop(), 0);
    }
}

/// A tiny checksum cache (`--checksum-cache 0`, raised to 256 KiB) under
/// a RAID-1 rebuild onto a re-added member after scattered fio writes:
/// the rebuild finishes and writes go on. Seen once by hand stuck at 64.2 %
/// (192 of 299 MiB) for minutes with client writes hanging; not reproduced
/// since (8 runs), so this guards the path rather than a known bug.
#[test]
fn tiny_cache_raid1_rebuild_after_fail_remove_add_finishes() {
    let dir = scratch_dir("rt15-tiny-rebuild");
    let paths = member_paths(dir.path(), 2);
    create_array(1, "64K", "300M", "vol0", &paths);
    let ctl = dir.path().join("ctl.sock");
    let server = Server::start(&serve_args(&paths, &ctl, &["--checksum-cache", "0"]));
    let uri = server.uri("vol0");
    let mut child = fio_verify_cmd(&uri, "tiny", "290M", "0")
        .arg("--io_size=60M")
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    assert!(child.wait().unwrap().success(), "fio verify failed");
    let m1 = paths[1].to_str().unwrap();
    vraid_ctl_ok(&ctl, &["fail", "vol0", "1"]);
    vraid_ctl_ok(&ctl, &["remove", "vol0", "1"]);
    vraid_ctl_ok(&ctl, &["add", "vol0", m1]);
    // A scrub asked for during the rebuild is refused...
    let out = vraid_ctl(&ctl, &["scrub", "vol0"]);
    assert!(!out.status.success());
    // ...and the rebuild still finishes.
    let v = wait_optimal(&ctl);
    assert_eq!(member_states(&v), ["active", "active"], "{v}");
    let (ok, out) = qemu_io_try(&uri, &["write -P 0x42 0 64k", "read -P 0x42 0 64k"]);
    assert!(ok, "{out}");
    assert_eq!(server.stop(), 0);
}
