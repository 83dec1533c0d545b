//! Red-team end-to-end tests of `vraid serve --md` and `vraid examine` on
//! md members: md 1.2 RAID-1 images written here byte by byte (a valid
//! checksum, mdadm's field offsets), then served by the real binary and
//! read and attacked through qemu-io and nbdinfo.

use std::path::{Path, PathBuf};
use std::process::Command;

use raid_tests::*;

use raid_tests::md_image::{raid1_members as raid1_members_of, raid1_superblock};
use raid_tests::md_image::{zeroed_members, Geometry, DATA_OFFSET, DATA_SECTORS, SIZE};

/// A 1.2 superblock of a clean 2-disk md RAID-1, device `role`.
fn superblock(role: u32, events: u64) -> Vec<u8> {
    raid1_superblock(0x42, role, events)
}

/// Two RAID-1 member images holding `data` at their data offset.
fn raid1_members(dir: &Path, data: &[u8]) -> Vec<PathBuf> {
    raid1_members_of(dir, 0x42, data)
}

fn path_str(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// `vraid serve --nbd 127.0.0.1:0 ARGS...` that must refuse to start (a
/// server that starts anyway is stopped by `timeout` and fails the test):
/// its stderr, checked to hold no panic.
fn serve_refused(dir: &Path, args: &[&str]) -> String {
    let out = run(Command::new("timeout")
        .arg("30")
        .arg(vraid_bin())
        .args(["serve", "--nbd", "127.0.0.1:0"])
        .args(args)
        .env("VRAID_CONTROL", dir.join("ctl.sock")));
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success(), "vraid serve {args:?} started: {err}");
    assert!(!err.contains("panicked"), "{args:?}: {err}");
    assert!(!err.trim().is_empty(), "{args:?}: no message");
    err
}

#[test]
fn md_export_is_read_only_and_no_member_byte_changes_under_write_attempts() {
    let dir = scratch_dir("redteam_md_ro");
    let data = pseudo_random(DATA_SECTORS as usize * 512, 7);
    let members = raid1_members(dir.path(), &data);
    let before: Vec<Vec<u8>> = members.iter().map(|m| std::fs::read(m).unwrap()).collect();
    let server = Server::start(&["--md", path_str(&members[0]), path_str(&members[1])]);
    let uri = server.uri("redmd");
    let info = run_ok(Command::new("nbdinfo").arg(&uri));
    assert!(info.contains("is_read_only: true"), "{info}");
    assert!(
        read_export(&uri, dir.path()) == data,
        "export differs from the mirrored data"
    );
    for cmd in [
        "write -P 0xab 0 64k",
        "discard 0 1M",
        "write -z 0 1M",
        "write -P 0xcd 7M 4k",
    ] {
        let (ok, out) = qemu_io_try(&uri, &[cmd]);
        assert!(!ok, "{cmd} succeeded on a read-only md export: {out}");
    }
    // Reads straddling and past the end fail cleanly; the server lives on.
    let end = DATA_SECTORS * 512;
    let (ok, out) = qemu_io_try(&uri, &[format!("read {} 8192", end - 4096)]);
    assert!(!ok, "read across the end: {out}");
    assert_eq!(read_export(&uri, dir.path()).len(), data.len());
    server.stop();
    for (m, b) in members.iter().zip(&before) {
        assert!(std::fs::read(m).unwrap() == *b, "{} changed", m.display());
    }
}

#[test]
fn md_member_given_twice_under_other_spellings_is_refused() {
    let dir = scratch_dir("redteam_md_twice");
    let data = pseudo_random(64 << 10, 3);
    let members = raid1_members(dir.path(), &data);
    let link = dir.path().join("link0.img");
    std::os::unix::fs::symlink(&members[0], &link).unwrap();
    let hard = dir.path().join("hard0.img");
    std::fs::hard_link(&members[0], &hard).unwrap();
    let dotted = format!("{}/./md42-0.img", dir.path().display());
    for other in [path_str(&link), path_str(&hard), dotted.as_str()] {
        let err = serve_refused(dir.path(), &["--md", path_str(&members[0]), other]);
        assert!(err.contains("both hold role 0"), "{err}");
    }
}

#[test]
fn md_stale_mirror_is_left_out_and_the_fresh_one_served() {
    let dir = scratch_dir("redteam_md_stale");
    let data = pseudo_random(64 << 10, 5);
    let members = raid1_members(dir.path(), &data);
    // Member 1: 5 events behind, and its data never got the last writes.
    poke(&members[1], 4096, &superblock(1, 5));
    poke(&members[1], DATA_OFFSET * 512, &vec![0xee; 64 << 10]);
    let server = Server::start(&["--md", path_str(&members[1]), path_str(&members[0])]);
    let got = read_export(&server.uri("redmd"), dir.path());
    assert!(got[..data.len()] == data[..], "stale mirror's bytes served");
    assert!(server.log().contains("stale"), "{}", server.log());
    server.stop();
}

#[test]
fn examine_and_serve_md_on_non_members_fail_with_words_not_panics() {
    let dir = scratch_dir("redteam_md_exposure");
    let empty = dir.path().join("empty.img");
    std::fs::write(&empty, b"").unwrap();
    let truncated = dir.path().join("trunc.img");
    std::fs::write(&truncated, superblock(0, 1)).unwrap();
    let zeros = dir.path().join("zeros.img");
    std::fs::File::create(&zeros)
        .unwrap()
        .set_len(SIZE)
        .unwrap();
    let targets = [
        PathBuf::from("/dev/null"),
        dir.path().to_path_buf(),
        empty,
        truncated,
        zeros,
        dir.path().join("absent.img"),
    ];
    for t in &targets {
        for args in [vec!["examine"], vec!["examine", "--json"]] {
            let out = run(vraid(&args).arg(t));
            let err = String::from_utf8_lossy(&out.stderr);
            assert!(!err.contains("panicked"), "{args:?} {}: {err}", t.display());
            if out.status.success() {
                let text = String::from_utf8_lossy(&out.stdout);
                if args.len() == 2 {
                    serde_json::from_str::<serde_json::Value>(&text)
                        .unwrap_or_else(|e| panic!("{}: {e}: {text}", t.display()));
                }
            }
        }
        serve_refused(dir.path(), &["--md", t.to_str().unwrap()]);
    }
    serve_refused(dir.path(), &["--md"]);
}

/// Two md arrays whose md names are the same (two NAS boxes both called
/// "host:redmd") must not silently shadow one another's NBD export.
#[test]
fn two_md_arrays_with_one_export_name_are_refused() {
    let dir = scratch_dir("redteam_md_names");
    let a = raid1_members_of(dir.path(), 0x42, &pseudo_random(4096, 1));
    let b = raid1_members_of(dir.path(), 0x43, &pseudo_random(4096, 2));
    let table = |m: &[PathBuf]| {
        format!(
            "[[md]]\nmembers = [\"{}\", \"{}\"]\n",
            m[0].display(),
            m[1].display()
        )
    };
    let config = dir.path().join("md.toml");
    std::fs::write(&config, table(&a) + &table(&b)).unwrap();
    let err = serve_refused(dir.path(), &["--config", path_str(&config)]);
    assert!(err.contains("already served"), "{err}");
    // Named apart, both are served, each with its own bytes.
    let named = format!("{}name = \"a\"\n{}name = \"b\"\n", table(&a), table(&b));
    std::fs::write(&config, named).unwrap();
    let server = Server::start(&["--config", path_str(&config)]);
    for (name, seed) in [("a", 1), ("b", 2)] {
        let got = read_export(&server.uri(name), dir.path());
        assert!(
            got[..4096] == pseudo_random(4096, seed)[..],
            "export {name}"
        );
    }
    server.stop();
}

/// The superblock fields of a member `vraid examine --json` shows.
fn sb_state(member: &Path) -> (String, u64, bool) {
    let e = examine(member);
    (
        e["state"].as_str().unwrap().to_string(),
        e["events"].as_u64().unwrap(),
        e["checksum_ok"].as_bool().unwrap(),
    )
}

/// `--md-writable`: writes reach both mirrors, the superblocks go dirty
/// with the first write and clean at SIGTERM (events + 1 each), checksums
/// right; a SIGKILL mid-session leaves them dirty, and then writable is
/// refused while read-only serving goes on.
#[test]
fn md_writable_session_keeps_the_mirrors_and_md_s_clean_state() {
    let dir = scratch_dir("redteam_md_rw");
    let data = pseudo_random(DATA_SECTORS as usize * 512, 9);
    let members = raid1_members(dir.path(), &data);
    let args = [
        "--md-writable",
        "--md",
        path_str(&members[1]),
        path_str(&members[0]),
    ];
    let server = Server::start(&args);
    let uri = server.uri("redmd");
    let info = run_ok(Command::new("nbdinfo").arg(&uri));
    assert!(info.contains("is_read_only: false"), "{info}");
    assert_eq!(
        sb_state(&members[0]),
        ("clean".into(), 10, true),
        "no write yet"
    );
    qemu_io(&uri, &["write -P 0x3c 1000 70000".to_string()]);
    assert_eq!(sb_state(&members[0]), ("active".into(), 11, true), "dirty");
    let mut want = data.clone();
    want[1000..71000].fill(0x3c);
    assert!(read_export(&uri, dir.path()) == want);
    assert_eq!(server.stop(), 0);
    for m in &members {
        assert_eq!(sb_state(m), ("clean".into(), 12, true), "{}", m.display());
        assert!(
            peek(m, DATA_OFFSET * 512, want.len()) == want,
            "{}",
            m.display()
        );
    }

    let server = Server::start(&args);
    qemu_io(&server.uri("redmd"), &["write -P 0x77 0 4096".to_string()]);
    server.kill();
    assert_eq!(sb_state(&members[1]), ("active".into(), 13, true));
    let err = serve_refused(dir.path(), &args);
    assert!(err.contains("not stopped cleanly"), "{err}");
    let ro = Server::start(&["--md", path_str(&members[0]), path_str(&members[1])]);
    want[..4096].fill(0x77);
    assert!(read_export(&ro.uri("redmd"), dir.path()) == want);
    ro.stop();
}

/// What must never be written: a truncated member (refused with the
/// reason), a stale mirror given beside the fresh one of its role or
/// alone in it (then the array is written degraded, FORMAT.md §12
/// "Degraded arrays", and the stale mirror left out by its events).
#[test]
fn md_writable_never_writes_stale_or_truncated_members() {
    let dir = scratch_dir("redteam_md_rw_refused");
    let data = pseudo_random(64 << 10, 11);
    let members = raid1_members(dir.path(), &data);
    let stale = dir.path().join("stale1.img");
    std::fs::copy(&members[1], &stale).unwrap();
    poke(&stale, 4096, &superblock(1, 7));
    let truncated = dir.path().join("trunc1.img");
    std::fs::copy(&members[1], &truncated).unwrap();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&truncated)
        .unwrap()
        .set_len(SIZE / 2)
        .unwrap();
    let all = [&members[0], &members[1], &stale, &truncated];
    let before: Vec<Vec<u8>> = all.iter().map(|m| std::fs::read(m).unwrap()).collect();
    let w = |other: &PathBuf| {
        let args = [
            "--md-writable",
            "--md",
            path_str(&members[0]),
            path_str(other),
        ];
        serve_refused(dir.path(), &args)
    };
    let err = w(&truncated);
    assert!(err.contains("past the end of the device"), "{err}");
    let err = serve_refused(dir.path(), &["--md-writable", path_str(&members[0])]);
    assert!(err.contains("--md"), "--md-writable needs --md: {err}");
    // Stale beside the fresh member of its role: served, the stale one
    // never written.
    let args = [
        "--md-writable",
        "--md",
        path_str(&stale),
        path_str(&members[0]),
        path_str(&members[1]),
    ];
    let server = Server::start(&args);
    qemu_io(&server.uri("redmd"), &["write -P 0x11 0 8192".to_string()]);
    assert_eq!(server.stop(), 0);
    assert!(
        std::fs::read(&stale).unwrap() == before[2],
        "stale member written"
    );
    assert!(std::fs::read(&truncated).unwrap() == before[3]);
    // Stale alone in its role: written degraded, the stale one left out.
    let args = [
        "--md-writable",
        "--md",
        path_str(&members[0]),
        path_str(&stale),
    ];
    let server = Server::start(&args);
    qemu_io(&server.uri("redmd"), &["write -P 0x22 0 4096".to_string()]);
    assert_eq!(server.stop(), 0);
    assert!(
        std::fs::read(&stale).unwrap() == before[2],
        "stale member written by a degraded session"
    );
}

/// A small deterministic generator for the crash loop's offsets and sizes.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (self.0 >> 33) % n
    }
}

/// `qemu-io` writes of random 512-byte-aligned ranges (chunk boundaries
/// crossed) inside `[lo, hi)`, applied to `model` too.
fn random_writes(rng: &mut Rng, n: usize, lo: u64, hi: u64, model: &mut [u8]) -> Vec<String> {
    (0..n)
        .map(|_| {
            let len = 512 * (1 + rng.below(300));
            let at = lo + 512 * rng.below((hi - lo - len) / 512);
            let pattern = 1 + rng.below(254) as u8;
            model[at as usize..(at + len) as usize].fill(pattern);
            format!("write -P {pattern} {at} {len}")
        })
        .collect()
}

/// Every member's superblock after a crash: checksum right and all within
/// one event of 10 (md assembles them); returns (events, state) of each.
fn crash_superblocks(members: &[PathBuf]) -> Vec<(u64, String)> {
    members
        .iter()
        .map(|m| {
            let (state, events, csum) = sb_state(m);
            assert!(csum, "{}: checksum wrong after a crash", m.display());
            assert!((10..=11).contains(&events), "{}: {events}", m.display());
            (events, state)
        })
        .collect()
}

/// The flushed range `[0, half)` of `model` read back read-only from every
/// member; and the members' first halves (the stripes of that range)
/// consistent: RAID-5 chunks XOR to zero, RAID-1 mirrors equal, so any
/// one member left out rebuilds them (vraid, like md, will not assemble a
/// dirty parity array degraded, so this is checked on the member bytes).
fn check_flushed(dir: &Path, members: &[PathBuf], half: usize, model: &[u8]) {
    let mut args = vec!["--md"];
    args.extend(members.iter().map(|m| path_str(m)));
    let ro = Server::start(&args);
    let got = read_export(&ro.uri("redmd"), dir);
    assert!(
        got[..half] == model[..half],
        "flushed data differs (first at {:?})",
        (0..half).find(|&i| got[i] != model[i])
    );
    ro.stop();
    let rows = DATA_SECTORS as usize * 512 / 2;
    let data: Vec<Vec<u8>> = members
        .iter()
        .map(|m| peek(m, DATA_OFFSET * 512, rows))
        .collect();
    if members.len() == 2 {
        assert!(data[0] == data[1], "mirrors differ in the flushed half");
        return;
    }
    let mut x = data[0].clone();
    for d in &data[1..] {
        x.iter_mut().zip(d).for_each(|(a, b)| *a ^= b);
    }
    let bad = x.iter().position(|&b| b != 0);
    assert!(bad.is_none(), "parity inconsistent at member byte {bad:?}");
}

/// The SIGKILL loop of docs/FORMAT.md §12 (M-1, M-2): a writable RAID-5
/// or RAID-1 session gets flushed writes in the first half of the array,
/// then unflushed writes in the second half (other stripes) while it is
/// killed at a random moment. After each kill: every superblock's checksum
/// is right, all within one event; once a write was flushed every member
/// says dirty (md resyncs); every flushed byte reads back read-only and
/// its stripes' parity (mirrors) are consistent; and writable serving is
/// refused until md has resynced.
#[test]
fn md_writable_sigkill_loop_keeps_flushed_data_and_dirty_state() {
    let dir = scratch_dir("redteam_md_kill");
    let mut rng = Rng(0x5eed);
    for round in 0..20u64 {
        let g = if round % 2 == 0 {
            Geometry::RAID5
        } else {
            Geometry::RAID1
        };
        let members = zeroed_members(dir.path(), 0x42, &g);
        let data_disks = if g.level == 5 { g.disks - 1 } else { 1 };
        let size = DATA_SECTORS as usize * 512 * data_disks as usize;
        let half = size / 2;
        let mut model = vec![0u8; size];
        let all: Vec<&str> = members.iter().map(|m| path_str(m)).collect();
        let mut args = vec!["--md-writable", "--md"];
        args.extend(&all);
        let server = Server::start(&args);
        let uri = server.uri("redmd");
        let flushed = (round % 4) as usize;
        if flushed > 0 {
            let mut cmds = random_writes(&mut rng, flushed, 0, half as u64, &mut model);
            cmds.push("flush".into());
            qemu_io(&uri, &cmds);
        }
        let mut scratch = model.clone();
        let cmds = random_writes(&mut rng, 200, half as u64, size as u64, &mut scratch);
        let mut writer = qemu_io_command(&uri, &cmds)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        // The crash moment: random, from before the first write to deep
        // into the unflushed ones.
        std::thread::sleep(std::time::Duration::from_millis(rng.below(400)));
        server.kill();
        let _ = writer.kill();
        let _ = writer.wait();
        let sbs = crash_superblocks(&members);
        if flushed > 0 {
            for (m, (events, state)) in members.iter().zip(&sbs) {
                assert_eq!((*events, state.as_str()), (11, "active"), "{}", m.display());
            }
        }
        if sbs.iter().any(|(_, s)| s == "active") {
            let err = serve_refused(dir.path(), &args);
            assert!(err.contains("not stopped cleanly"), "round {round}: {err}");
        }
        check_flushed(dir.path(), &members, half, &model);
        for m in &members {
            std::fs::remove_file(m).unwrap();
        }
    }
}

/// Red team: one md array in two `[[md]]` tables named apart (the second
/// spelled through a symlink and a hard link) would be two writers of the
/// same files in one process (a process's own claims do not stop it):
/// refused, no member byte changed, for writable and read-only alike.
#[test]
fn one_md_member_in_two_md_tables_of_one_server_is_refused() {
    let dir = scratch_dir("redteam_md_twice_cfg");
    let a = raid1_members_of(dir.path(), 0x42, &pseudo_random(4096, 1));
    let sym = dir.path().join("sym0.img");
    std::os::unix::fs::symlink(&a[0], &sym).unwrap();
    let hard = dir.path().join("hard1.img");
    std::fs::hard_link(&a[1], &hard).unwrap();
    let before: Vec<Vec<u8>> = a.iter().map(|m| std::fs::read(m).unwrap()).collect();
    for writable in ["true", "false"] {
        let table = |m0: &Path, m1: &Path, name: &str| {
            format!(
                "[[md]]\nmembers = [\"{}\", \"{}\"]\nname = \"{name}\"\nwritable = {writable}\n",
                m0.display(),
                m1.display()
            )
        };
        let config = dir.path().join("md.toml");
        let text = table(&a[0], &a[1], "one") + &table(&sym, &hard, "two");
        std::fs::write(&config, text).unwrap();
        let err = serve_refused(dir.path(), &["--config", path_str(&config)]);
        assert!(err.contains("already a member"), "{err}");
    }
    for (m, b) in a.iter().zip(&before) {
        assert!(std::fs::read(m).unwrap() == *b, "{} changed", m.display());
    }
}

/// Red team: hostile md superblock fields (checksum recomputed, so only
/// the field is wrong; and a wrong checksum) on both mirrors, served
/// `--md-writable`: each refused with the field named and no byte of
/// either member changed.
#[test]
fn md_writable_corrupt_superblock_fields_are_refused_without_a_write() {
    let dir = scratch_dir("redteam_md_rw_corrupt");
    let cases: [(&str, usize, &[u8], &str); 8] = [
        ("sb_csum", 216, &[0xde, 0xad, 0xbe, 0xef], "checksum"),
        ("dev_number", 160, &[5, 0, 0, 0], "dev_number"),
        ("raid_disks", 92, &[0xff, 0xff, 0xff, 0x7f], "raid_disks"),
        (
            "data_offset",
            128,
            &[0, 0, 0x10, 0, 0, 0, 0, 0],
            "past the end",
        ),
        ("max_dev", 220, &[0xff, 0xff, 0xff, 0xff], "max_dev"),
        (
            "super_offset",
            144,
            &[16, 0, 0, 0, 0, 0, 0, 0],
            "super_offset",
        ),
        (
            "size",
            80,
            &[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0, 0],
            "larger",
        ),
        ("events", 200, &[0xff; 8], "event count"),
    ];
    for (field, at, bytes, words) in cases {
        let members = raid1_members(dir.path(), &pseudo_random(4096, 3));
        for (role, m) in members.iter().enumerate() {
            let mut sb = superblock(role as u32, 10);
            sb[at..at + bytes.len()].copy_from_slice(bytes);
            if field != "sb_csum" {
                raid_tests::md_image::set_csum(&mut sb);
            }
            poke(m, 4096, &sb);
        }
        let before: Vec<Vec<u8>> = members.iter().map(|m| std::fs::read(m).unwrap()).collect();
        let args = [
            "--md-writable",
            "--md",
            path_str(&members[0]),
            path_str(&members[1]),
        ];
        let err = serve_refused(dir.path(), &args);
        assert!(err.contains(words), "{field}: {err}");
        for (m, b) in members.iter().zip(&before) {
            assert!(
                std::fs::read(m).unwrap() == *b,
                "{field}: {} changed",
                m.display()
            );
        }
    }
}

/// Red team: a writable RAID-5 given 1- and 2-byte writes across chunk
/// boundaries, the last byte, a write past the end (refused, the session
/// goes on), WRITE_ZEROES and TRIM: every byte as written, parity of every
/// stripe consistent and the superblocks clean after SIGTERM.
#[test]
fn md_writable_raid5_odd_writes_zeroes_and_trim_keep_parity() {
    let dir = scratch_dir("redteam_md_rw_odd");
    let members = zeroed_members(dir.path(), 0x42, &Geometry::RAID5);
    let mut args = vec!["--md-writable", "--md"];
    args.extend(members.iter().map(|m| path_str(m)));
    let server = Server::start(&args);
    let uri = server.uri("redmd");
    let size = 2 * DATA_SECTORS * 512;
    let cmds: Vec<String> = [
        "write -P 7 65535 1".to_string(),
        "write -P 8 131071 2".into(),
        format!("write -P 9 {} 1", size - 1),
        "write -P 5 100000 300000".into(),
        "write -z 150000 100000".into(),
        "discard 0 131072".into(),
    ]
    .into();
    qemu_io(&uri, &cmds);
    let (ok, out) = qemu_io_try(&uri, &[format!("write -P 1 {} 2", size - 1)]);
    assert!(!ok, "a write past the end was taken: {out}");
    qemu_io(&uri, &["write -P 3 4096 512".to_string()]);
    let mut want = vec![0u8; size as usize];
    want[65535] = 7;
    want[131071..131073].fill(8);
    want[size as usize - 1] = 9;
    want[100000..400000].fill(5);
    want[150000..250000].fill(0);
    want[4096..4608].fill(3);
    assert!(read_export(&uri, dir.path()) == want, "bytes differ");
    assert_eq!(server.stop(), 0);
    for m in &members {
        assert_eq!(sb_state(m), ("clean".into(), 12, true), "{}", m.display());
    }
    let len = DATA_SECTORS as usize * 512;
    let mut x = vec![0u8; len];
    for m in &members {
        let d = peek(m, DATA_OFFSET * 512, len);
        x.iter_mut().zip(&d).for_each(|(a, b)| *a ^= b);
    }
    assert_eq!(x.iter().position(|&b| b != 0), None, "parity inconsistent");
}

/// Red team: a vraid volume's member given again (through a symlink, which
/// the config's path check does not see) as an md member of the same
/// server: refused by device identity before it is read as md.
#[test]
fn a_vraid_member_given_as_an_md_member_of_the_same_server_is_refused() {
    let dir = scratch_dir("redteam_md_vraid_member");
    let vraid_members = sparse_members(dir.path(), 2, 16 << 20);
    create_array(1, "64K", "8M", "vol", &vraid_members);
    let md = raid1_members(dir.path(), &pseudo_random(4096, 4));
    let sym = dir.path().join("sym1.img");
    std::os::unix::fs::symlink(&vraid_members[1], &sym).unwrap();
    let config = dir.path().join("c.toml");
    let text = format!(
        "[[volume]]\nname = \"vol\"\nlevel = 1\nmembers = [{:?}, {:?}]\n\
         [[md]]\nmembers = [{:?}, {:?}]\nwritable = true\n",
        vraid_members[0], vraid_members[1], md[0], sym
    );
    std::fs::write(&config, text).unwrap();
    let before = std::fs::read(&md[0]).unwrap();
    let err = serve_refused(dir.path(), &["--config", path_str(&config)]);
    assert!(err.contains("already a member"), "{err}");
    assert!(std::fs::read(&md[0]).unwrap() == before);
}
