//! Real NBD clients (qemu-io, qemu-img, nbdinfo, nbdcopy) against every RAID
//! level served by the real `vraid` binary, on both member I/O engines.

use std::process::Command;

use raid_tests::*;

/// Pattern writes and reads across chunk and stripe boundaries at unaligned
/// offsets, then a restart, then the same reads again.
fn patterns_survive_restart(level: u32, members: usize, engine: &str) {
    // Arrange
    let dir = scratch_dir(&format!("patterns-r{level}-{engine}"));
    let paths = member_paths(dir.path(), members);
    create_array(level, "64K", "64M", "vol0", &paths);
    let member_args: Vec<&str> = paths.iter().map(|p| p.to_str().unwrap()).collect();
    let mut args = vec!["--io-engine", engine];
    args.extend(&member_args);
    let chunk = 64 * 1024u64;
    // RAID-1 has no stripes; any span of a few chunks keeps the writes apart.
    let data_members = match level {
        0 => members as u64,
        1 => 3,
        _ => members as u64 - 1,
    };
    let stripe = chunk * data_members;
    // (offset, len, pattern): unaligned, straddling chunk and stripe edges.
    let writes = [
        (chunk - 1000, 3000, 0x11),
        (stripe - 7, 10_000, 0x22),
        (3 * stripe + 513, 2 * stripe + 1, 0x33),
        (1, 1, 0x44),
        (10 * stripe - 4096, 8192, 0x55),
        (20 * stripe, stripe, 0x66),
    ];
    let write_cmds: Vec<String> = writes
        .iter()
        .map(|(o, l, p)| format!("write -P {p:#x} {o} {l}"))
        .collect();
    let read_cmds: Vec<String> = writes
        .iter()
        .map(|(o, l, p)| format!("read -P {p:#x} {o} {l}"))
        .chain([
            // Untouched neighbours stay zero.
            format!("read -P 0 {} {}", chunk - 2000, 1000),
            format!("read -P 0 {} {}", 30 * stripe, 4096),
        ])
        .collect();

    // Act
    let server = Server::start(&args);
    qemu_io(&server.uri("vol0"), &write_cmds);
    qemu_io(&server.uri("vol0"), &["flush".to_string()]);
    qemu_io(&server.uri("vol0"), &read_cmds);
    assert_eq!(server.stop(), 0);
    let server = Server::start(&args);

    // Assert
    qemu_io(&server.uri("vol0"), &read_cmds);
    assert_eq!(server.stop(), 0);
}

#[test]
fn raid0_patterns_across_chunks_uring() {
    patterns_survive_restart(0, 3, "uring");
}

#[test]
fn raid0_patterns_across_chunks_sync() {
    patterns_survive_restart(0, 2, "sync");
}

#[test]
fn raid1_patterns_across_chunks_uring() {
    patterns_survive_restart(1, 2, "uring");
}

#[test]
fn raid1_three_way_patterns_sync() {
    patterns_survive_restart(1, 3, "sync");
}

#[test]
fn raid5_patterns_across_stripes_uring() {
    patterns_survive_restart(5, 4, "uring");
}

#[test]
fn raid5_patterns_across_stripes_sync() {
    patterns_survive_restart(5, 3, "sync");
}

/// `qemu-img convert` of a random 64 MiB image into a RAID-5 volume and back
/// out, compared with `qemu-img compare` and byte for byte.
#[test]
fn qemu_img_convert_round_trips_random_image() {
    // Arrange
    let dir = scratch_dir("convert");
    let paths = member_paths(dir.path(), 4);
    create_array(5, "64K", "32M", "vol0", &paths);
    let src = dir.path().join("src.raw");
    std::fs::write(&src, pseudo_random(64 << 20, 7)).unwrap();
    let member_args: Vec<&str> = paths.iter().map(|p| p.to_str().unwrap()).collect();
    let server = Server::start(&member_args);
    let uri = server.uri("vol0");
    let out = dir.path().join("out.raw");

    // Act
    run_ok(
        Command::new("qemu-img")
            .args(["convert", "-n", "-f", "raw", "-O", "raw"])
            .arg(&src)
            .arg(&uri),
    );
    run_ok(
        Command::new("qemu-img")
            .args(["convert", "-f", "raw", "-O", "raw"])
            .arg(&uri)
            .arg(&out),
    );

    // Assert
    run_ok(
        Command::new("qemu-img")
            .args(["compare", "-f", "raw", "-F", "raw"])
            .arg(&src)
            .arg(&uri),
    );
    let got = std::fs::read(&out).unwrap();
    // 3 data members x (32M minus the metadata area), whole chunks.
    assert!(
        got.len() > 64 << 20 && got.len() <= 96 << 20,
        "size {}",
        got.len()
    );
    assert_eq!(got.len() % (3 * (64 << 10)), 0, "whole stripes");
    assert!(
        got[..64 << 20] == std::fs::read(&src).unwrap()[..],
        "image differs"
    );
    assert!(got[64 << 20..].iter().all(|&b| b == 0), "tail not zero");
    assert_eq!(server.stop(), 0);
}

/// nbdinfo reports the export's size, name and the transmission flags we advertise.
#[test]
fn nbdinfo_reports_size_and_flags() {
    // Arrange
    let dir = scratch_dir("nbdinfo");
    let paths = member_paths(dir.path(), 4);
    create_array(0, "64K", "16M", "stripe0", &paths);
    let member_args: Vec<&str> = paths.iter().map(|p| p.to_str().unwrap()).collect();
    let server = Server::start(&member_args);

    // Act
    let json = run_ok(
        Command::new("nbdinfo")
            .arg("--json")
            .arg(server.uri("stripe0")),
    );
    let list = run_ok(
        Command::new("nbdinfo")
            .arg("--list")
            .arg(format!("nbd://{}", server.addr)),
    );

    // Assert
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    let export = &v["exports"][0];
    // RAID-0: 4 members x the per-member data size from the superblock.
    let size = export["export-size"].as_u64().unwrap();
    let per_member = examine(&paths[0])["data_size"].as_u64().unwrap();
    assert_eq!(size, 4 * per_member);
    assert_eq!(size % (64 << 10), 0);
    assert_eq!(export["export-name"], "stripe0");
    assert_eq!(export["is_read_only"], false);
    assert_eq!(export["can_flush"], true);
    assert_eq!(export["can_fua"], true);
    assert_eq!(export["can_trim"], true);
    assert_eq!(export["can_zero"], true);
    assert_eq!(export["can_fast_zero"], true);
    assert_eq!(export["can_cache"], true);
    assert_eq!(export["can_multi_conn"], true);
    assert!(export["block_size_minimum"].as_u64().unwrap() >= 1);
    assert!(list.contains("stripe0"), "{list}");
    assert_eq!(server.stop(), 0);
}

/// nbdcopy with several connections in and out (exercises CAN_MULTI_CONN),
/// plus the NBD Unix socket.
#[test]
fn nbdcopy_multi_conn_over_unix_socket() {
    // Arrange
    let dir = scratch_dir("nbdcopy");
    let paths = member_paths(dir.path(), 3);
    create_array(5, "16K", "24M", "vol0", &paths);
    let sock = dir.path().join("nbd.sock");
    let mut args = vec!["--nbd-socket", sock.to_str().unwrap()];
    let member_args: Vec<&str> = paths.iter().map(|p| p.to_str().unwrap()).collect();
    args.extend(&member_args);
    let server = Server::start(&args);
    let uri = format!("nbd+unix:///vol0?socket={}", sock.display());
    let src = dir.path().join("src.raw");
    std::fs::write(&src, pseudo_random(40 << 20, 99)).unwrap();
    let back = dir.path().join("back.raw");

    // Act
    run_ok(
        Command::new("nbdcopy")
            .args(["--connections=4", "--requests=16"])
            .arg(&src)
            .arg(&uri),
    );
    run_ok(
        Command::new("nbdcopy")
            .args(["--connections=4"])
            .arg(&uri)
            .arg(&back),
    );

    // Assert
    let got = std::fs::read(&back).unwrap();
    assert!(got.len() >= 40 << 20);
    assert!(
        got[..40 << 20] == std::fs::read(&src).unwrap()[..],
        "copy differs"
    );
    assert_eq!(server.stop(), 0);
}
