//! The inline checksum layout end to end (docs/FORMAT.md §8 "Inline
//! layout"; real binary, NBD clients): `vraid create --checksum-layout
//! inline` says its cost, fio verifies over NBD, a byte flipped with `dd`
//! at a block's physical offset (data or tag sector) is caught, counted,
//! served right and repaired; SIGKILL during flushed writes loses nothing
//! flushed and a scrub finds nothing; a 4K-logical-sector loop device is
//! refused with a clear message.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use raid_tests::*;
use serde_json::Value;

const BLOCK: u64 = 4096;
/// Member bytes per 4 KiB block: data + its 512-byte tag sector.
const STRIDE: u64 = 4608;
const CHUNK: u64 = 64 << 10;

/// `vraid create --checksum-layout inline`; returns its output.
fn create_inline(level: u32, member_size: &str, members: &[PathBuf]) -> String {
    let mut c = vraid(&[
        "create",
        "--level",
        &level.to_string(),
        "--chunk-size",
        "64K",
        "--member-size",
        member_size,
        "--name",
        "vol0",
        "--checksum-layout",
        "inline",
    ]);
    c.args(members);
    run_ok(&mut c)
}

fn serve_args<'a>(paths: &'a [PathBuf], control: &'a Path) -> Vec<&'a str> {
    let mut a: Vec<&str> = paths.iter().map(|p| p.to_str().unwrap()).collect();
    a.extend(["--control", control.to_str().unwrap()]);
    a
}

fn csum_errors(control: &Path) -> Vec<u64> {
    volume_status(control, "vol0")["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["checksum_errors"].as_u64().unwrap())
        .collect()
}

/// Overwrites one byte of `member` at `at` with `dd` (conv=notrunc).
fn dd_byte(member: &Path, at: u64, byte: u8) {
    let src = member.with_extension("byte");
    std::fs::write(&src, [byte]).unwrap();
    let mut c = Command::new("dd");
    c.arg(format!("if={}", src.display()))
        .arg(format!("of={}", member.display()))
        .args(["bs=1", "count=1", "conv=notrunc,fsync", "status=none"])
        .arg(format!("seek={at}"));
    run_ok(&mut c);
}

/// RAID-5 (3 members, left-symmetric): is member block `block` of member
/// `m` a data block (not parity)?
fn raid5_data_block(m: u64, block: u64) -> bool {
    let stripe = block * BLOCK / CHUNK;
    2 - stripe % 3 != m
}

fn flipped_data_and_tags_are_caught_counted_served_and_repaired(level: u32) {
    // Arrange: an inline array, fio data written and verified over NBD.
    let members = if level == 5 { 3 } else { 2 };
    let dir = scratch_dir(&format!("inline-flip-r{level}"));
    let paths = member_paths(dir.path(), members);
    let out = create_inline(level, "32M", &paths);
    assert!(out.contains("11.1 %"), "{out}");
    let sb = examine(&paths[0]);
    let base = sb["data_offset"].as_u64().unwrap();
    let data_size = sb["data_size"].as_u64().unwrap();
    // 8/9 of the data area is logical, rounded down to the chunk.
    assert_eq!(
        data_size,
        ((32 << 20) - base) / STRIDE * BLOCK / CHUNK * CHUNK
    );
    let control = dir.path().join("control.sock");
    let server = Server::start(&serve_args(&paths, &control));
    let fio = fio_verify_cmd(&server.uri("vol0"), "fill", "8M", "0")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    assert_fio_clean(fio);
    let good = read_export(&server.uri("vol0"), dir.path());
    assert_eq!(server.stop(), 0);
    // Member 1's blocks: data bytes of some, tag bytes of others.
    let blocks: Vec<u64> = [3u64, 40, 100, 517, 777, 1000, 1013]
        .into_iter()
        .filter(|&b| level != 5 || raid5_data_block(1, b))
        .take(4)
        .collect();
    assert_eq!(blocks.len(), 4);
    let spots: Vec<(u64, u8)> = blocks
        .iter()
        .enumerate()
        .map(|(i, &b)| {
            let at = base + b * STRIDE + if i % 2 == 0 { 123 } else { BLOCK + 20 };
            let old = peek(&paths[1], at, 1)[0];
            dd_byte(&paths[1], at, !old);
            (at, old)
        })
        .collect();

    // Act: read everything back (RAID-1: each block twice, reaching both
    // mirrors), then again.
    let server = Server::start(&serve_args(&paths, &control));
    let uri = server.uri("vol0");
    if level == 1 {
        let reads: Vec<String> = blocks
            .iter()
            .flat_map(|b| vec![format!("read {} 4K", b * BLOCK); 2])
            .collect();
        qemu_io(&uri, &reads);
    }
    let got = read_export(&uri, dir.path());
    let errors = csum_errors(&control);
    let again = read_export(&uri, dir.path());
    let fio = fio_verify_cmd(&uri, "fill", "8M", "0")
        .arg("--verify_only=1")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    assert_fio_clean(fio);
    assert_eq!(server.stop(), 0);

    // Assert: good data served, exactly the damaged blocks counted on
    // member 1, and the member file holds the right unit again.
    assert!(got == good && again == good, "client saw damaged data");
    assert_eq!(errors[1], blocks.len() as u64, "{errors:?}");
    assert!(errors.iter().enumerate().all(|(m, &e)| m == 1 || e == 0));
    for (&(at, old), b) in spots.iter().zip(&blocks) {
        assert_eq!(peek(&paths[1], at, 1)[0], old, "block {b} not repaired");
        let tag = peek(&paths[1], base + b * STRIDE + BLOCK, 4);
        assert_eq!(&tag[..], b"VRTG", "block {b}");
    }
}

#[test]
fn raid5_inline_flipped_data_and_tags_are_counted_served_right_and_repaired() {
    flipped_data_and_tags_are_caught_counted_served_and_repaired(5);
}

#[test]
fn raid1_inline_flipped_data_and_tags_are_counted_served_right_and_repaired() {
    flipped_data_and_tags_are_caught_counted_served_and_repaired(1);
}

/// Offsets qemu-io reports as written, in order.
fn written_offsets(stdout: &str) -> Vec<u64> {
    stdout
        .lines()
        .filter_map(|l| l.strip_prefix("wrote "))
        .filter_map(|l| l.split("at offset ").nth(1))
        .filter_map(|n| n.trim().parse().ok())
        .collect()
}

const SLOT: u64 = 64 << 10;
const SLOTS: u64 = 400;

fn sigkill_cycles(level: u32, members: usize, cycles: u64) {
    let dir = scratch_dir(&format!("inline-crash-r{level}"));
    let paths = member_paths(dir.path(), members);
    create_inline(level, "48M", &paths);
    let control = dir.path().join("control.sock");
    let mut model: HashMap<u64, u8> = HashMap::new();
    let mut x = 0x2545_F491u64 + u64::from(level);
    for cycle in 0..cycles {
        let server = Server::start(&serve_args(&paths, &control));
        if cycle > 0 {
            server.wait_log("resync finished", Duration::from_secs(60));
        }
        let reads: Vec<String> = model
            .iter()
            .map(|(s, p)| format!("read -P {p} {} {}", s * SLOT + 512, SLOT - 1024))
            .collect();
        for chunk in reads.chunks(200) {
            qemu_io(&server.uri("vol0"), chunk);
        }
        let pattern = (cycle % 250 + 1) as u8;
        let mut cmds = Vec::new();
        let mut order = Vec::new();
        for _ in 0..600 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let slot = x % SLOTS;
            order.push(slot);
            // Unaligned in the block: exercises the partial-block path.
            cmds.push(format!(
                "write -P {pattern} {} {}",
                slot * SLOT + 512,
                SLOT - 1024
            ));
            cmds.push("flush".to_string());
        }
        let child = qemu_io_command(&server.uri("vol0"), &cmds)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn qemu-io");
        // The kill lands part-way through the writes (a crash, not a wait
        // for a condition).
        std::thread::sleep(Duration::from_millis(100 + (x % 300)));
        server.kill();
        let out = child.wait_with_output().unwrap();
        let done = written_offsets(&String::from_utf8_lossy(&out.stdout));
        let n = done.len();
        for (i, off) in done.iter().enumerate() {
            assert_eq!(*off, order[i] * SLOT + 512, "qemu-io ran out of order");
        }
        for &slot in &order[..n.saturating_sub(1)] {
            model.insert(slot, pattern);
        }
        for &slot in &order[n.saturating_sub(1)..(n + 1).min(order.len())] {
            if !order[..n.saturating_sub(1)].contains(&slot) {
                model.remove(&slot);
            }
        }
        eprintln!(
            "cycle {cycle}: {n} writes completed, {} slots known",
            model.len()
        );
    }
    let server = Server::start(&serve_args(&paths, &control));
    server.wait_log("resync finished", Duration::from_secs(60));
    let reads: Vec<String> = model
        .iter()
        .map(|(s, p)| format!("read -P {p} {} {}", s * SLOT + 512, SLOT - 1024))
        .collect();
    for chunk in reads.chunks(200) {
        qemu_io(&server.uri("vol0"), chunk);
    }
    let text = vraid_ctl_ok(&control, &["scrub", "vol0"]);
    assert!(
        text.contains("0 mismatches, 0 checksum errors, 0 read errors"),
        "{text}"
    );
    assert!(csum_errors(&control).iter().all(|&e| e == 0));
    assert_eq!(server.stop(), 0);
}

#[test]
fn raid5_inline_sigkill_during_flushed_writes_loses_nothing_and_scrub_is_clean() {
    sigkill_cycles(5, 3, 6);
}

#[test]
fn raid1_inline_sigkill_during_flushed_writes_loses_nothing_and_scrub_is_clean() {
    sigkill_cycles(1, 2, 3);
}

/// Detaches the loop devices it holds when dropped.
struct Loops(Vec<String>);

impl Drop for Loops {
    fn drop(&mut self) {
        for dev in &self.0 {
            let _ = Command::new("losetup").arg("-d").arg(dev).status();
        }
    }
}

#[test]
fn a_4k_logical_sector_member_is_refused_for_the_inline_layout_with_a_clear_message() {
    // Arrange: three 64 MiB loop devices with 4096-byte logical sectors.
    let dir = scratch_dir("inline-4kn");
    let mut loops = Loops(Vec::new());
    for i in 0..3 {
        let f = dir.path().join(format!("b{i}.img"));
        std::fs::File::create(&f)
            .unwrap()
            .set_len(64 << 20)
            .unwrap();
        let dev = run_ok(
            Command::new("losetup")
                .args(["--find", "--show", "--sector-size", "4096"])
                .arg(&f),
        );
        loops.0.push(dev.trim().to_string());
    }
    let members: Vec<PathBuf> = loops.0.iter().map(PathBuf::from).collect();

    // Act
    let mut c = vraid(&["create", "--level", "5", "--checksum-layout", "inline"]);
    let out = run(c.args(&members));

    // Assert: refused, saying why and what to do; nothing written.
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(err.contains("4096-byte logical sectors"), "{err}");
    assert!(err.contains("512-byte logical sectors"), "{err}");
    assert!(err.contains("--checksum-layout separate"), "{err}");
    let mut c = vraid(&["create", "--level", "5", "--checksum-layout", "separate"]);
    let ok = run(c.args(&members));
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    let _: Value = examine(&members[0]);
}

#[test]
fn raid5_inline_member_failed_and_replaced_is_rebuilt_with_tags_and_scrubs_clean() {
    // Arrange: fio data on an inline RAID-5, member 2 failed and removed.
    let dir = scratch_dir("inline-rebuild");
    let paths = member_paths(dir.path(), 3);
    create_inline(5, "32M", &paths);
    let base = examine(&paths[0])["data_offset"].as_u64().unwrap();
    let control = dir.path().join("control.sock");
    let server = Server::start(&serve_args(&paths, &control));
    let uri = server.uri("vol0");
    let fill = fio_verify_cmd(&uri, "fill", "8M", "0")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    assert_fio_clean(fill);
    let m2 = paths[2].to_str().unwrap();
    vraid_ctl_ok(&control, &["fail", "vol0", m2]);
    vraid_ctl_ok(&control, &["remove", "vol0", "2"]);
    let new = dir.path().join("new.img");
    std::fs::File::create(&new)
        .unwrap()
        .set_len(32 << 20)
        .unwrap();

    // Act: add a new member; the rebuild writes it in the inline layout.
    vraid_ctl_ok(&control, &["add", "vol0", new.to_str().unwrap()]);
    server.wait_log("rebuild of member 2 finished", Duration::from_secs(60));
    let verify = fio_verify_cmd(&uri, "fill", "8M", "0")
        .arg("--verify_only=1")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    assert_fio_clean(verify);
    let text = vraid_ctl_ok(&control, &["scrub", "vol0"]);
    let states = member_states(&volume_status(&control, "vol0"));
    assert_eq!(server.stop(), 0);

    // Assert: every block of the new member carries its tag, the old
    // member's bytes match where data was written, nothing is bad.
    assert!(
        text.contains("0 mismatches, 0 checksum errors, 0 read errors"),
        "{text}"
    );
    for b in [0u64, 1, 500, 5000] {
        let tag = peek(&new, base + b * STRIDE + BLOCK, 4);
        assert_eq!(&tag[..], b"VRTG", "block {b}");
    }
    assert_eq!(
        peek(&new, base, STRIDE as usize * 100),
        peek(&paths[2], base, STRIDE as usize * 100)
    );
    assert_eq!(states, vec!["active"; 3]);
}

#[test]
fn an_inline_array_moved_onto_4k_logical_sector_devices_is_refused_at_assembly() {
    // Arrange: an inline RAID-1 on 512-byte-sector loop devices, then the
    // same files attached with 4096-byte sectors.
    let dir = scratch_dir("inline-4kn-assemble");
    let files: Vec<PathBuf> = (0..2)
        .map(|i| dir.path().join(format!("b{i}.img")))
        .collect();
    let attach = |sector: &str| {
        let mut loops = Loops(Vec::new());
        for f in &files {
            let dev = run_ok(
                Command::new("losetup")
                    .args(["--find", "--show", "--sector-size", sector])
                    .arg(f),
            );
            loops.0.push(dev.trim().to_string());
        }
        loops
    };
    for f in &files {
        std::fs::File::create(f).unwrap().set_len(64 << 20).unwrap();
    }
    let loops = attach("512");
    let members: Vec<PathBuf> = loops.0.iter().map(PathBuf::from).collect();
    create_inline(1, "64M", &members);
    drop(loops);
    let loops = attach("4096");

    // Act
    let mut c = vraid(&["serve", "--nbd", &format!("127.0.0.1:{}", free_port())]);
    c.args(&loops.0);
    let out = run(&mut c);

    // Assert
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(err.contains("4096-byte logical sectors"), "{err}");
    assert!(err.contains("512-byte logical sectors"), "{err}");
}
