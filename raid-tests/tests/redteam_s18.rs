//! Red team of session 17's changes (the QD1 lone path with its sub-4 KiB
//! inline writes, the pool completer's walk, the loop-device claim check),
//! tried against the real binary with raw NBD clients at queue depth 1.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Barrier};

use raid_tests::loop_dev::LoopDev;
use raid_tests::nbd_raw::nbd_handshake;
use raid_tests::*;

// ---- A raw NBD client, one request at a time (queue depth 1)

const REQ_MAGIC: u32 = 0x2560_9513;
const SIMPLE_REPLY_MAGIC: u32 = 0x6744_6698;
const CMD_READ: u16 = 0;
const CMD_WRITE: u16 = 1;
const CMD_FLUSH: u16 = 3;
const CMD_TRIM: u16 = 4;
const CMD_WRITE_ZEROES: u16 = 6;

/// One NBD connection that waits for each reply before the next request.
struct Qd1 {
    s: TcpStream,
    cookie: u64,
}

impl Qd1 {
    fn connect(server: &Server) -> Qd1 {
        let mut s = TcpStream::connect(server.addr).unwrap();
        s.set_nodelay(true).unwrap();
        nbd_handshake(&mut s, "vol0");
        Qd1 { s, cookie: 0 }
    }

    /// Sends one request and reads its simple reply (`read` payload bytes
    /// on success); returns the NBD error (0: success) and the payload.
    fn call(
        &mut self,
        cmd: u16,
        offset: u64,
        len: u32,
        data: &[u8],
        read: usize,
    ) -> (u32, Vec<u8>) {
        self.cookie += 1;
        let mut m = Vec::with_capacity(28 + data.len());
        m.extend_from_slice(&REQ_MAGIC.to_be_bytes());
        m.extend_from_slice(&0u16.to_be_bytes());
        m.extend_from_slice(&cmd.to_be_bytes());
        m.extend_from_slice(&self.cookie.to_be_bytes());
        m.extend_from_slice(&offset.to_be_bytes());
        m.extend_from_slice(&len.to_be_bytes());
        m.extend_from_slice(data);
        self.s.write_all(&m).unwrap();
        let mut h = [0u8; 16];
        self.s.read_exact(&mut h).unwrap();
        assert_eq!(
            u32::from_be_bytes(h[..4].try_into().unwrap()),
            SIMPLE_REPLY_MAGIC
        );
        assert_eq!(u64::from_be_bytes(h[8..].try_into().unwrap()), self.cookie);
        let err = u32::from_be_bytes(h[4..8].try_into().unwrap());
        let mut payload = vec![0u8; if err == 0 { read } else { 0 }];
        self.s.read_exact(&mut payload).unwrap();
        (err, payload)
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let (err, _) = self.call(CMD_WRITE, offset, data.len() as u32, data, 0);
        assert_eq!(err, 0, "write of {} at {offset}", data.len());
    }

    fn read(&mut self, offset: u64, len: usize) -> Vec<u8> {
        let (err, data) = self.call(CMD_READ, offset, len as u32, &[], len);
        assert_eq!(err, 0, "read of {len} at {offset}");
        data
    }

    fn simple(&mut self, cmd: u16, offset: u64, len: u32) {
        let (err, _) = self.call(cmd, offset, len, &[], 0);
        assert_eq!(err, 0, "command {cmd} of {len} at {offset}");
    }
}

/// The bytes connection `who` writes the `seq`th time into its sector of
/// block `block`: distinct for every (who, block, seq), never all zero.
fn sector_bytes(who: usize, block: u64, seq: u64, len: usize) -> Vec<u8> {
    pseudo_random(len, (who as u64) << 48 ^ block << 24 ^ seq ^ 0x5a5a)
}

fn metric(text: &str, name: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
        .unwrap_or_else(|| panic!("{name} not in the metrics:\n{text}"))
}

fn scrub_clean(ctl: &Path) {
    let out = vraid_ctl_ok(ctl, &["scrub", "vol0", "--json"]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let s = &v["scrub"];
    assert_eq!(s["outcome"], "finished", "{s}");
    assert_eq!(s["found"], 0, "{s}");
    assert_eq!(s["mismatches"], 0, "{s}");
}

/// An array of `level` over `n` sparse 64 MiB member files with
/// `layout` checksums, served with a control socket and metrics.
struct Rig {
    _dir: tempfile::TempDir,
    ctl: PathBuf,
    metrics: String,
    server: Server,
}

impl Rig {
    fn start(name: &str, level: u32, n: usize, layout: &str) -> Rig {
        let dir = scratch_dir(name);
        let paths = sparse_members(dir.path(), n, 64 << 20);
        let mut c = vraid(&[
            "create",
            "--level",
            &level.to_string(),
            "--chunk-size",
            "64K",
        ]);
        c.args(["--name", "vol0", "--checksum-layout", layout])
            .args(&paths);
        run_ok(&mut c);
        let ctl = dir.path().join("ctl.sock");
        let metrics = format!("127.0.0.1:{}", free_port());
        let mut args = vec!["--control", ctl.to_str().unwrap(), "--metrics", &metrics];
        args.extend(paths.iter().map(|p| p.to_str().unwrap()));
        let server = Server::start(&args);
        Rig {
            _dir: dir,
            ctl,
            metrics,
            server,
        }
    }
}

// ---- Sub-4 KiB writes of several QD1 connections into the same blocks

/// Blocks of 4 KiB the connections share, and the sector each owns.
const BLOCKS: u64 = 16;
const SECTOR: usize = 512;
const OWNERS: usize = 8;

/// What an owner knows its sector holds.
#[derive(Clone)]
enum Sector {
    Is(Vec<u8>),
    /// Trimmed: anything (NBD_CMD_TRIM promises no content).
    Unknown,
}

/// Connection `who` owns sector `who` of every shared block: it writes it
/// (sub-4 KiB, inline-eligible at QD1), reads it back, zeroes it, trims
/// it, flushes, each at random; the others do the same to the other
/// sectors of the same blocks at the same time.
fn own_sector(server: &Server, who: usize, rounds: u64, start: &Barrier) -> Vec<Sector> {
    let mut c = Qd1::connect(server);
    let mut known = vec![Sector::Is(vec![0; SECTOR]); BLOCKS as usize];
    start.wait();
    for seq in 0..rounds {
        let r = pseudo_random(2, seq ^ (who as u64) << 32);
        let block = u64::from(r[0]) % BLOCKS;
        let at = block * 4096 + (who * SECTOR) as u64;
        match r[1] % 16 {
            0..=9 => {
                let data = sector_bytes(who, block, seq, SECTOR);
                c.write(at, &data);
                known[block as usize] = Sector::Is(data);
            }
            10..=12 => {
                let got = c.read(at, SECTOR);
                if let Sector::Is(want) = &known[block as usize] {
                    assert!(
                        got == *want,
                        "owner {who} round {seq}: sector of block {block} lost its write"
                    );
                }
            }
            13 => {
                c.simple(CMD_WRITE_ZEROES, at, SECTOR as u32);
                known[block as usize] = Sector::Is(vec![0; SECTOR]);
            }
            14 => {
                c.simple(CMD_TRIM, at, SECTOR as u32);
                known[block as usize] = Sector::Unknown;
            }
            _ => c.simple(CMD_FLUSH, 0, 0),
        }
    }
    c.simple(CMD_FLUSH, 0, 0);
    known
}

/// Eight QD1 connections race sub-block writes, zeroes, trims, reads and
/// flushes into the same 4 KiB blocks, each in its own 512-byte sector,
/// with a ninth reading the whole blocks; every sector must hold its
/// owner's last write, the lone path must have run, and a scrub must find
/// the checksums and redundancy right.
fn sub_block_writes_race_into_the_same_blocks(name: &str, level: u32, n: usize, layout: &str) {
    // Arrange
    let rig = Rig::start(name, level, n, layout);
    let mut warm = Qd1::connect(&rig.server);
    warm.write(0, &vec![0u8; (BLOCKS * 4096) as usize]); // allocated: no holes
    let before = metric(&scrape(&rig.metrics), "vraid_member_lone_inline_total");
    let start = Arc::new(Barrier::new(OWNERS + 1));

    // Act
    let known: Vec<Vec<Sector>> = std::thread::scope(|s| {
        let owners: Vec<_> = (0..OWNERS)
            .map(|who| {
                let (server, start) = (&rig.server, Arc::clone(&start));
                s.spawn(move || own_sector(server, who, 400, &start))
            })
            .collect();
        start.wait();
        for _ in 0..200 {
            warm.read(0, (BLOCKS * 4096) as usize);
        }
        owners.into_iter().map(|h| h.join().unwrap()).collect()
    });

    // Assert
    let all = warm.read(0, (BLOCKS * 4096) as usize);
    for (who, blocks) in known.iter().enumerate() {
        for (b, k) in blocks.iter().enumerate() {
            let at = b * 4096 + who * SECTOR;
            if let Sector::Is(want) = k {
                assert!(
                    all[at..at + SECTOR] == want[..],
                    "block {b} sector {who} lost its write"
                );
            }
        }
    }
    let after = metric(&scrape(&rig.metrics), "vraid_member_lone_inline_total");
    assert!(
        after > before,
        "no request ran inline ({before} -> {after})"
    );
    drop(warm);
    scrub_clean(&rig.ctl);
    assert_eq!(rig.server.stop(), 0);
}

#[test]
fn sub_block_writes_of_qd1_connections_into_the_same_blocks_raid1_separate() {
    sub_block_writes_race_into_the_same_blocks("rt18-sub-r1", 1, 2, "separate");
}

#[test]
fn sub_block_writes_of_qd1_connections_into_the_same_blocks_raid5_inline() {
    sub_block_writes_race_into_the_same_blocks("rt18-sub-r5i", 5, 3, "inline");
}

// ---- `vraid fail` of a mirror while QD1 sub-block writes run

/// Held: a QD1 connection writing 1 KiB pieces (lone, inline-eligible)
/// while `vraid fail` drops a RAID-1 mirror sees every write succeed, and
/// every piece reads back from the mirror left.
#[test]
fn failing_a_mirror_under_qd1_sub_block_writes_loses_nothing() {
    // Arrange
    let rig = Rig::start("rt18-fail-lone", 1, 2, "separate");
    let mut c = Qd1::connect(&rig.server);
    c.write(0, &vec![0u8; 1 << 20]);
    let start = Barrier::new(2);

    // Act
    let written: Vec<(u64, Vec<u8>)> = std::thread::scope(|s| {
        let writer = s.spawn(|| {
            start.wait();
            (0..1000u64)
                .map(|i| {
                    let (at, data) = ((i % 1024) * 1024, sector_bytes(0, i, i, 1024));
                    c.write(at, &data);
                    (at, data)
                })
                .collect()
        });
        start.wait();
        vraid_ctl_ok(&rig.ctl, &["fail", "vol0", "1"]);
        writer.join().unwrap()
    });

    // Assert
    let mut c = Qd1::connect(&rig.server);
    let all = c.read(0, 1 << 20);
    for (at, data) in &written {
        let at = *at as usize;
        assert!(all[at..at + 1024] == data[..], "piece at {at} lost");
    }
    let v = volume_status(&rig.ctl, "vol0");
    assert_eq!(member_states(&v), ["active", "failed"], "{v}");
    assert_eq!(rig.server.stop(), 0);
}

// ---- The loop-device claim check, paths it must see through

/// Unmounts a bind mount when dropped (also when the test fails).
struct Bind(PathBuf);

impl Drop for Bind {
    fn drop(&mut self) {
        run(Command::new("umount").arg(&self.0));
    }
}

/// Held: a member file named once by its path and once through a loop
/// device attached by another path to it (a bind mount of its directory;
/// a directory name with spaces, escaped as `\040` in mountinfo) is
/// refused as in use; a loop device over a deleted file is a member as
/// any other device.
#[test]
fn loop_devices_over_bind_mounts_and_odd_paths_are_not_members_twice() {
    // Arrange
    let dir = scratch_dir("rt18-loop-claim");
    let (a, b) = (dir.path().join("a dir"), dir.path().join("b dir"));
    std::fs::create_dir_all(&a).unwrap();
    std::fs::create_dir_all(&b).unwrap();
    let file = a.join("m 0.img");
    std::fs::File::create(&file)
        .unwrap()
        .set_len(64 << 20)
        .unwrap();
    run_ok(Command::new("mount").arg("--bind").arg(&a).arg(&b));
    let bind = Bind(b.clone());
    let twice = LoopDev::attach(&b.join("m 0.img"), 0);
    let gone = dir.path().join("gone.img");
    std::fs::File::create(&gone)
        .unwrap()
        .set_len(64 << 20)
        .unwrap();
    let deleted = LoopDev::attach(&gone, 0);
    std::fs::remove_file(&gone).unwrap();

    // Act
    let create = |members: [&str; 2]| {
        let mut c = vraid(&["create", "--level", "1", "--member-size", "64M"]);
        run(c.args(members))
    };
    let same = create([file.to_str().unwrap(), &twice.0]);
    let other = dir.path().join("m1.img");
    let fresh = create([other.to_str().unwrap(), &deleted.0]);
    drop((twice, deleted, bind));

    // Assert
    let text = |o: &std::process::Output| String::from_utf8_lossy(&o.stderr).to_string();
    assert!(
        !same.status.success() && text(&same).contains("in use"),
        "{}",
        text(&same)
    );
    assert!(fresh.status.success(), "{}", text(&fresh));
}
