//! RAID-10 against the real binary over NBD: `vraid create --level 10`
//! in md's layouts, fio verify through a failure in each mirror pair, a
//! failed member replaced and rebuilt, scrub clean afterwards, and the
//! member files checked against md's placement computed here
//! independently (n2: chunk `c`'s copies are md's "devices" `2c` and
//! `2c+1` counted across the members row by row). Also: odd member counts,
//! every layout through qemu-io, `level = 10` + `layout` in the config,
//! scrub naming the copy whose byte was flipped.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use raid_tests::*;
use serde_json::Value;

const CHUNK: usize = 64 << 10;

fn create10(layout: &str, members: &[PathBuf], size: &str) {
    let mut c = vraid(&[
        "create",
        "--level",
        "10",
        "--layout",
        layout,
        "--chunk-size",
        "64K",
        "--member-size",
        size,
        "--name",
        "vol0",
    ]);
    c.args(members);
    run_ok(&mut c);
}

fn args_of<'a>(ctl: &'a Path, paths: &'a [PathBuf]) -> Vec<&'a str> {
    let mut a = vec!["--control", ctl.to_str().unwrap()];
    a.extend(paths.iter().map(|p| p.to_str().unwrap()));
    a
}

fn fio_ok(uri: &str, name: &str, size: &str, offset: &str, verify_only: bool) {
    let mut c = fio_verify_cmd(uri, name, size, offset);
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

fn scrub_json(ctl: &Path, extra: &[&str]) -> Value {
    let mut args = vec!["scrub", "vol0", "--json"];
    args.extend_from_slice(extra);
    let out = vraid_ctl_ok(ctl, &args);
    let v: Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
    v["scrub"].clone()
}

fn per_member(report: &Value, key: &str) -> Vec<u64> {
    report["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m[key].as_u64().unwrap())
        .collect()
}

/// n2 placement, computed independently of vraid: the copies of chunk
/// `c` are the md "slots" `2c` and `2c + 1`, slot `s` being member
/// `s mod n`, row `s / n`.
fn n2_copies(c: usize, n: usize) -> [(usize, usize); 2] {
    [(2 * c % n, 2 * c / n), ((2 * c + 1) % n, (2 * c + 1) / n)]
}

/// Chunks of the n2 members (role order) whose two copies differ, or
/// differ from `want` (the volume's bytes from its start) where given.
fn bad_n2_chunks(members: &[PathBuf], want: Option<&[u8]>) -> Vec<usize> {
    let data: Vec<Vec<u8>> = members.iter().map(|m| member_data(m)).collect();
    let n = data.len();
    let chunks = data[0].len() / CHUNK * n / 2;
    (0..chunks)
        .filter(|&c| {
            let [(m0, r0), (m1, r1)] = n2_copies(c, n);
            let a = &data[m0][r0 * CHUNK..(r0 + 1) * CHUNK];
            let b = &data[m1][r1 * CHUNK..(r1 + 1) * CHUNK];
            let w = want.and_then(|w| w.get(c * CHUNK..(c + 1) * CHUNK));
            a != b || w.is_some_and(|w| w != a)
        })
        .collect()
}

#[test]
fn raid10_n2_serves_through_one_failure_per_pair_and_rebuilds_replaced_members() {
    // Arrange: n2 over 4 (pairs 0+1 and 2+3), fio data written whole.
    let dir = scratch_dir("r10-n2");
    let mut paths = sparse_members(dir.path(), 4, 64 << 20);
    create10("n2", &paths, "64M");
    let sb = examine(&paths[0]);
    assert_eq!(
        (sb["level"].as_u64(), sb["layout"].as_str()),
        (Some(10), Some("n2"))
    );
    let ctl = dir.path().join("ctl.sock");
    let server = Server::start(&args_of(&ctl, &paths));
    let uri = server.uri("vol0");
    fio_ok(&uri, "whole", "12M", "0", false);

    // Act 1: one member of each pair failed and removed.
    for role in ["0", "3"] {
        vraid_ctl_ok(&ctl, &["fail", "vol0", role]);
        vraid_ctl_ok(&ctl, &["remove", "vol0", role]);
    }
    let degraded = member_states(&volume_status(&ctl, "vol0"));
    let refused = vraid_ctl(&ctl, &["fail", "vol0", "1"]);

    // Assert 1: two members down (above the redundancy of 1, but in
    // different pairs): old data reads, new data writes; failing the
    // last copy of a chunk is refused.
    assert_eq!(degraded, vec!["removed", "active", "active", "removed"]);
    assert!(
        !refused.status.success(),
        "member 1 holds pair 0's last copy"
    );
    fio_ok(&uri, "whole", "12M", "0", true);
    fio_ok(&uri, "degraded", "8M", "24M", false);

    // Act 2: replacements added, one after the other, each rebuilt.
    let new: Vec<PathBuf> = [0, 3]
        .iter()
        .map(|r| dir.path().join(format!("new{r}.img")))
        .collect();
    for (p, role) in new.iter().zip([0, 3]) {
        std::fs::File::create(p).unwrap().set_len(64 << 20).unwrap();
        vraid_ctl_ok(&ctl, &["add", "vol0", p.to_str().unwrap(), "--force"]);
        let done = format!("rebuild of member {role} finished");
        server.wait_log(&done, Duration::from_secs(120));
    }
    let scrub = scrub_json(&ctl, &[]);

    // Assert 2: whole, data intact, scrub clean, copies as md puts them.
    assert_eq!(
        member_states(&volume_status(&ctl, "vol0")),
        vec!["active"; 4]
    );
    fio_ok(&uri, "whole", "12M", "0", true);
    fio_ok(&uri, "degraded", "8M", "24M", true);
    assert_eq!(per_member(&scrub, "mismatch"), vec![0; 4], "{scrub}");
    assert_eq!(scrub["degraded"], false, "{scrub}");
    let whole = read_export(&uri, dir.path());
    assert_eq!(server.stop(), 0);
    paths[0] = new[0].clone();
    paths[3] = new[1].clone();
    assert_eq!(bad_n2_chunks(&paths, Some(&whole)), Vec::<usize>::new());
}

#[test]
fn raid10_every_layout_over_an_odd_member_count_reads_back_what_was_written() {
    for layout in ["n2", "f2", "o2", "n3", "f3", "o3"] {
        // Arrange: 3 members (n2 over 3 is legal in md).
        let dir = scratch_dir(&format!("r10-{layout}"));
        let paths = sparse_members(dir.path(), 3, 16 << 20);
        create10(layout, &paths, "16M");
        let ctl = dir.path().join("ctl.sock");
        let server = Server::start(&args_of(&ctl, &paths));
        let uri = server.uri("vol0");

        // Act: patterns across chunk boundaries, then read back.
        let writes: Vec<String> = [(0, 0x11), (60_000, 0x22), (200_000, 0x33), (1 << 20, 0x44)]
            .iter()
            .map(|(at, p)| format!("write -P {p} {at} 100000"))
            .collect();
        qemu_io(&uri, &writes);
        let reads: Vec<String> = [
            (0, 0x11, 60_000),
            (60_000, 0x22, 100_000),
            (200_000, 0x33, 100_000),
            (1 << 20, 0x44, 100_000),
        ]
        .iter()
        .map(|(at, p, len)| format!("read -P {p} {at} {len}"))
        .collect();
        let out = qemu_io(&uri, &reads);
        let scrub = scrub_json(&ctl, &[]);

        // Assert
        assert!(
            !out.contains("Pattern verification failed"),
            "{layout}: {out}"
        );
        assert_eq!(
            per_member(&scrub, "mismatch"),
            vec![0; 3],
            "{layout}: {scrub}"
        );
        assert_eq!(server.stop(), 0);
        if layout == "n2" {
            assert_eq!(bad_n2_chunks(&paths, None), Vec::<usize>::new());
        }
    }
}

#[test]
fn raid10_scrub_names_the_copy_whose_byte_was_flipped_and_repairs_it() {
    // Arrange: n3 over 3 (every member holds every chunk, in md's
    // rows), no checksums: the two other copies outvote the flipped one.
    let dir = scratch_dir("r10-scrub");
    let paths = sparse_members(dir.path(), 3, 16 << 20);
    create10("n3", &paths, "16M");
    let ctl = dir.path().join("ctl.sock");
    let mut args = args_of(&ctl, &paths);
    args.push("--no-checksums");
    let server = Server::start(&args);
    fio_ok(&server.uri("vol0"), "fill", "4M", "0", false);
    assert_eq!(server.stop(), 0);
    let data_offset = examine(&paths[1])["data_offset"].as_u64().unwrap();
    flip_byte(&paths[1], data_offset + 5 * 4096 + 3);
    let server = Server::start(&args);

    // Act
    let check = scrub_json(&ctl, &[]);
    let repair = scrub_json(&ctl, &["--repair"]);
    let again = scrub_json(&ctl, &[]);

    // Assert
    assert_eq!(per_member(&check, "mismatch"), vec![0, 1, 0], "{check}");
    assert_eq!(per_member(&repair, "repaired"), vec![0, 1, 0], "{repair}");
    assert_eq!(per_member(&again, "mismatch"), vec![0; 3], "{again}");
    assert_eq!(server.stop(), 0);
}

#[test]
fn raid10_from_the_config_is_created_with_its_layout_and_served() {
    // Arrange
    let dir = scratch_dir("r10-config");
    let paths = member_paths(dir.path(), 4);
    let list: Vec<String> = paths
        .iter()
        .map(|p| format!("{:?}", p.display().to_string()))
        .collect();
    let config = dir.path().join("vraid.toml");
    std::fs::write(
        &config,
        format!(
            "[[volume]]\nname = \"vol0\"\nlevel = 10\nlayout = \"f2\"\nchunk_size = \"64K\"\n\
             members = [{}]\ncreate = {{ member_size = \"32M\" }}\n",
            list.join(", ")
        ),
    )
    .unwrap();

    // Act
    let server = Server::start(&["--config", config.to_str().unwrap()]);
    fio_ok(&server.uri("vol0"), "cfg", "8M", "0", false);
    fio_ok(&server.uri("vol0"), "cfg", "8M", "0", true);
    assert_eq!(server.stop(), 0);

    // Assert
    for (role, p) in paths.iter().enumerate() {
        let sb = examine(p);
        assert_eq!(
            (
                sb["level"].as_u64(),
                sb["layout"].as_str(),
                sb["role"].as_u64()
            ),
            (Some(10), Some("f2"), Some(role as u64))
        );
    }
}

#[test]
fn raid10_layout_for_another_level_is_refused() {
    let dir = scratch_dir("r10-bad-layout");
    let paths = sparse_members(dir.path(), 3, 16 << 20);
    let mut c = vraid(&["create", "--level", "5", "--layout", "n2", "--name", "vol0"]);
    c.args(&paths);
    let out = run(&mut c);
    let text = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(!out.status.success());
    assert!(text.contains("RAID-10 layout"), "{text}");
}

#[test]
fn raid10_resync_after_a_crash_makes_torn_copies_agree() {
    // Arrange: n2 over 3, 1M written and flushed, then the server killed
    // (dirty, bitmap bits set); one copy of chunk 1 (md slots 2 and 3:
    // member 2 row 0, member 0 row 1) then differs from the other, as a
    // crash between the two copies' writes leaves it.
    let dir = scratch_dir("r10-crash");
    let paths = sparse_members(dir.path(), 3, 32 << 20);
    create10("n2", &paths, "32M");
    let ctl = dir.path().join("ctl.sock");
    let server = Server::start(&args_of(&ctl, &paths));
    qemu_io(
        &server.uri("vol0"),
        &["write -P 0x5a 0 1M".to_string(), "flush".to_string()],
    );
    server.kill();
    let [_, (m, row)] = n2_copies(1, 3);
    assert_eq!((m, row), (0, 1));
    let at = examine(&paths[m])["data_offset"].as_u64().unwrap() + (row * CHUNK) as u64;
    poke(&paths[m], at + 100, &[0xa5; 512]);
    assert_eq!(bad_n2_chunks(&paths, None), vec![1]);

    // Act
    let server = Server::start(&args_of(&ctl, &paths));
    let log = server.wait_log("resync finished", Duration::from_secs(60));
    let out = qemu_io(&server.uri("vol0"), &["read -P 0x5a 0 1M".to_string()]);
    assert_eq!(server.stop(), 0);

    // Assert: the resync (not a later read) rewrote the torn copy; the
    // copies agree again, on the copy that passes its block checksum.
    let resync = log.lines().find(|l| l.contains("resync finished")).unwrap();
    assert!(resync.contains("rewrote 65536 bytes"), "{resync}");
    assert!(!out.contains("Pattern verification failed"), "{out}");
    assert_eq!(bad_n2_chunks(&paths, None), Vec::<usize>::new());
}
