//! The NBD data path of issue 10 with real clients: replies written as
//! header + data in batches (one `writev`, often cut short by a full socket
//! buffer), requests read in batches, and requests larger than the volume
//! piece (4 MiB) served one piece at a time.
//!
//! fio (`ioengine=nbd`, libnbd: structured replies) at queue depth 32 with
//! block sizes from 4 KiB to 9 MiB writes and reads back every block with
//! crc32c; qemu-io (simple replies) checks a pattern written and read at
//! an unaligned offset across several pieces, and its edges.

use std::process::{Command, Stdio};

use raid_tests::*;

/// Writes 160 MiB of random blocks (4 KiB ... 9 MiB, so some span two or
/// three volume pieces), 32 in flight, then reads each back and checks it.
#[test]
fn fio_pipelined_mixed_sizes_read_back_what_they_wrote() {
    // Arrange
    let dir = scratch_dir("nbd-datapath-fio");
    let members = member_paths(dir.path(), 4);
    create_array(0, "64K", "64M", "vol0", &members);
    let args: Vec<&str> = members.iter().map(|p| p.to_str().unwrap()).collect();
    let server = Server::start(&args);

    // Act
    let fio = fio_verify(&server, "datapath", "4k/40:64k/25:1m/20:6m/10:9m/5", "160M");

    // Assert
    assert_fio_clean(fio);
    assert_eq!(server.stop(), 0);
}

/// A 13 MiB pattern at an offset 512 bytes past a 3 MiB boundary (four
/// pieces, none aligned) over RAID-5 reads back whole, and the bytes on
/// either side of it stay zero.
#[test]
fn qemu_io_pattern_across_pieces_at_an_unaligned_offset_reads_back() {
    // Arrange
    let dir = scratch_dir("nbd-datapath-qemu-io");
    let members = member_paths(dir.path(), 4);
    create_array(5, "64K", "64M", "vol0", &members);
    let args: Vec<&str> = members.iter().map(|p| p.to_str().unwrap()).collect();
    let server = Server::start(&args);
    let uri = server.uri("vol0");
    let at = 3 * 1024 * 1024 + 512;
    let len = 13 * 1024 * 1024;

    // Act
    qemu_io(&uri, &[format!("write -P 0x5a {at} {len}")]);

    // Assert
    let out = qemu_io(
        &uri,
        &[
            format!("read -P 0x5a {at} {len}"),
            format!("read -P 0 0 {at}"),
            format!("read -P 0 {} 1M", at + len),
        ],
    );
    assert_eq!(out.matches("read ").count(), 3, "{out}");
    assert_eq!(server.stop(), 0);
}

/// Members on tmpfs are served on the connection's thread (`auto` picks the
/// inline engine there: `member::tests`); fio writes 64 MiB of random
/// blocks (4 KiB ... 1 MiB, 32 in flight) over RAID-5, whose small writes
/// read old data and parity through that engine, and reads each back.
#[test]
fn fio_on_tmpfs_members_reads_back_what_it_wrote() {
    // Arrange
    let dir = tempfile::tempdir_in("/dev/shm").expect("tmpfs scratch dir");
    let members = member_paths(dir.path(), 4);
    create_array(5, "64K", "64M", "vol0", &members);
    let args: Vec<&str> = members.iter().map(|p| p.to_str().unwrap()).collect();
    let server = Server::start(&args);

    // Act
    let fio = fio_verify(&server, "tmpfs", "4k/50:64k/30:1m/20", "64M");

    // Assert
    assert_fio_clean(fio);
    assert_eq!(server.stop(), 0);
}

/// fio random writes of `bssplit` over `size` of vol0, 32 in flight, each
/// read back and checked (crc32c) at the end.
fn fio_verify(server: &Server, name: &str, bssplit: &str, size: &str) -> std::process::Child {
    Command::new("fio")
        .args([
            &format!("--name={name}"),
            "--ioengine=nbd",
            "--rw=randwrite",
            &format!("--bssplit={bssplit}"),
            "--iodepth=32",
            &format!("--size={size}"),
            "--verify=crc32c",
            "--do_verify=1",
            "--verify_fatal=1",
            "--verify_state_save=0",
            "--output-format=json",
        ])
        .arg(format!("--uri={}", server.uri("vol0")))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start fio")
}
