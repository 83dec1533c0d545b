//! 20 cycles of SIGKILL during flushed random writes on RAID-5 and RAID-6
//! (with their write-hole journals, replayed at each start; and a few on
//! RAID-1): after each restart and resync every flushed write is present
//! and the redundancy (parity, P and Q, mirrors), read directly from the
//! member files, is consistent.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use raid_tests::*;

const SLOT: u64 = 64 << 10;
const SLOTS: u64 = 600;

fn args_of(paths: &[PathBuf]) -> Vec<&str> {
    paths.iter().map(|p| p.to_str().unwrap()).collect()
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

fn crash_cycles(level: u32, members: usize, cycles: u64) {
    // Arrange
    let dir = scratch_dir(&format!("crash-r{level}"));
    let paths = member_paths(dir.path(), members);
    create_array(level, "64K", "48M", "vol0", &paths);
    // slot -> pattern byte of its last flushed write.
    let mut model: HashMap<u64, u8> = HashMap::new();
    let mut x = 0x9E37_79B9u64 + u64::from(level);
    for cycle in 0..cycles {
        let server = Server::start(&args_of(&paths));
        if cycle > 0 {
            server.wait_log("resync finished", Duration::from_secs(60));
        }
        // Every flushed write of the last cycle is there.
        let reads: Vec<String> = model
            .iter()
            .map(|(s, p)| format!("read -P {p} {} {SLOT}", s * SLOT))
            .collect();
        for chunk in reads.chunks(200) {
            qemu_io(&server.uri("vol0"), chunk);
        }
        // Act: write + flush pairs, killed part-way.
        let pattern = (cycle % 250 + 1) as u8;
        let mut cmds = Vec::new();
        let mut order = Vec::new();
        for _ in 0..800 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let slot = x % SLOTS;
            order.push(slot);
            cmds.push(format!("write -P {pattern} {} {SLOT}", slot * SLOT));
            cmds.push("flush".to_string());
        }
        let child = qemu_io_command(&server.uri("vol0"), &cmds)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn qemu-io");
        std::thread::sleep(Duration::from_millis(100 + (x % 300)));
        server.kill();
        let out = child.wait_with_output().unwrap();
        let done = written_offsets(&String::from_utf8_lossy(&out.stdout));
        // A write is flushed if a later write completed (its flush ran in
        // between). The last completed write, and the one in flight, may
        // or may not have landed: their slots are unknown until rewritten.
        let n = done.len();
        let flushed: HashSet<u64> = order[..n.saturating_sub(1)].iter().copied().collect();
        for (i, off) in done.iter().enumerate() {
            assert_eq!(*off, order[i] * SLOT, "qemu-io ran commands out of order");
        }
        for &slot in &flushed {
            model.insert(slot, pattern);
        }
        // The same pattern flushed earlier in this cycle stays right even
        // if a later write of it was torn.
        for &slot in &order[n.saturating_sub(1)..(n + 1).min(order.len())] {
            if !flushed.contains(&slot) {
                model.remove(&slot);
            }
        }
        eprintln!(
            "cycle {cycle}: {n} writes completed, {} slots known",
            model.len()
        );
    }
    // Assert: a final restart resyncs, every flushed write reads back, and
    // the member files are consistent.
    let server = Server::start(&args_of(&paths));
    server.wait_log("resync finished", Duration::from_secs(60));
    let reads: Vec<String> = model
        .iter()
        .map(|(s, p)| format!("read -P {p} {} {SLOT}", s * SLOT))
        .collect();
    for chunk in reads.chunks(200) {
        qemu_io(&server.uri("vol0"), chunk);
    }
    assert_eq!(server.stop(), 0);
    if level == 5 {
        assert_eq!(
            bad_parity_stripes(&paths, SLOT as usize),
            Vec::<usize>::new()
        );
    } else if level == 6 {
        assert_eq!(
            bad_syndrome_stripes(&paths, SLOT as usize),
            Vec::<usize>::new()
        );
    } else {
        let first = member_data(&paths[0]);
        for p in &paths[1..] {
            assert!(member_data(p) == first, "mirror {} differs", p.display());
        }
    }
}

#[test]
fn raid5_sigkill_during_flushed_writes_loses_nothing_flushed_and_parity_is_resynced() {
    crash_cycles(5, 3, 20);
}

#[test]
fn raid6_sigkill_during_flushed_writes_loses_nothing_flushed_and_p_q_are_consistent() {
    crash_cycles(6, 5, 20);
}

#[test]
fn raid1_sigkill_during_flushed_writes_loses_nothing_flushed_and_mirrors_are_resynced() {
    crash_cycles(1, 2, 5);
}
