//! Overwrite protection and member-set safety (issue 16, items 1, 14, 15a):
//! every path that writes a superblock (`create`, `add`, `replace`,
//! configured spares) refuses a device holding something, names it, and
//! leaves its bytes as they were; `--force` overwrites, except a device
//! another process holds. Members are known by identity, not path string,
//! and concurrent member-set changes admit one winner.
//!
//! Signatures are made by the real tools (mkfs.*, mkswap, cryptsetup,
//! pvcreate on a loop device, sgdisk, sfdisk). This kernel has no md
//! driver (`mdadm --create` fails opening /dev/md127), so md superblocks
//! are built from `linux/raid/md_p.h` by bytes.

use std::collections::hash_map::DefaultHasher;
use std::hash::Hasher;
use std::io::Read;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use raid_tests::*;

/// A device image holding one kind of signature.
struct Target {
    path: PathBuf,
    /// What the refusal must name.
    needle: &'static str,
}

fn sparse(path: &Path, size: u64) {
    std::fs::File::create(path).unwrap().set_len(size).unwrap();
}

fn tool(cmd: &str, args: &[&str], target: &Path) {
    let out = Command::new(cmd)
        .args(args)
        .arg(target)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("{cmd}: {e}"));
    assert!(
        out.status.success(),
        "{cmd} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn piped_tool(cmd: &str, args: &[&str], input: &str) {
    use std::io::Write;
    let mut child = Command::new(cmd)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{cmd}: {e}"));
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{cmd} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// An LVM2 PV label: pvcreate needs a block device, so through a loop device.
fn make_lvm(path: &Path) {
    let dev = run_ok(Command::new("losetup").args(["-f", "--show"]).arg(path));
    let dev = dev.trim().to_string();
    let out = Command::new("pvcreate")
        .args(["-ff", "-y", &dev])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    run_ok(Command::new("losetup").args(["-d", &dev]));
    assert!(
        out.status.success(),
        "pvcreate: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// An md superblock by bytes (md_p.h): `mdp_superblock_1` (magic,
/// major_version 1, set_uuid, set_name, level 1, raid_disks 2) at the
/// version's offset, or `mdp_super_t` 0.90 (magic, 0, 90, ..., level,
/// size, nr_disks, raid_disks as u32 words) at the last 64 KiB-aligned
/// 64 KiB block.
fn make_md(path: &Path, size: u64, version: &str) {
    let mut sb = vec![0u8; 4096];
    let put =
        |sb: &mut Vec<u8>, at: usize, v: u32| sb[at..at + 4].copy_from_slice(&v.to_le_bytes());
    put(&mut sb, 0, 0xa92b_4efc);
    let at = match version {
        "0.90" => {
            for (word, v) in [(2, 90u32), (5, 0x1234_5678), (7, 1), (9, 2), (10, 2)] {
                put(&mut sb, word * 4, v);
            }
            (size & !0xffff) - 0x10000
        }
        _ => {
            put(&mut sb, 4, 1);
            sb[16..32].copy_from_slice(&pseudo_random(16, 7));
            sb[32..44].copy_from_slice(b"vraidtest:h1");
            put(&mut sb, 72, 1);
            put(&mut sb, 92, 2);
            match version {
                "1.1" => 0,
                "1.2" => 4096,
                _ => ((size / 512 - 16) & !7) * 512,
            }
        }
    };
    let f = std::fs::OpenOptions::new().write(true).open(path).unwrap();
    f.write_all_at(&sb, at).unwrap();
}

/// One image per signature kind, made by the real tool where there is one.
fn make_targets(dir: &Path) -> Vec<Target> {
    let key = dir.join("luks.key");
    std::fs::write(&key, b"vraid-test-key").unwrap();
    let key_arg = format!("--key-file={}", key.display());
    let key_arg = key_arg.as_str();
    let luks = |t: &'static str| {
        move |p: &Path| {
            tool(
                "cryptsetup",
                &[
                    "luksFormat",
                    "--type",
                    t,
                    "--batch-mode",
                    "--pbkdf",
                    "pbkdf2",
                    "--pbkdf-force-iterations",
                    "1000",
                    key_arg,
                ],
                p,
            )
        }
    };
    let mut targets = Vec::new();
    let mut add = |name: &str, size: u64, needle: &'static str, make: &dyn Fn(&Path)| {
        let path = dir.join(format!("{name}.img"));
        sparse(&path, size);
        make(&path);
        targets.push(Target { path, needle });
    };
    const M: u64 = 1 << 20;
    add("ext4", 64 * M, "ext4 filesystem", &|p| {
        tool("mkfs.ext4", &["-q", "-F"], p)
    });
    add("xfs", 320 * M, "xfs filesystem", &|p| {
        tool("mkfs.xfs", &["-q"], p)
    });
    add("btrfs", 128 * M, "btrfs filesystem", &|p| {
        tool("mkfs.btrfs", &["-q"], p)
    });
    add("vfat", 64 * M, "vfat filesystem", &|p| {
        tool("mkfs.vfat", &[], p)
    });
    add("exfat", 64 * M, "exfat filesystem", &|p| {
        tool("mkfs.exfat", &[], p)
    });
    add("ntfs", 64 * M, "ntfs filesystem", &|p| {
        tool("mkntfs", &["-F", "-Q", "-q"], p)
    });
    add("swap", 64 * M, "swap area", &|p| tool("mkswap", &[], p));
    add("luks1", 64 * M, "LUKS1 header", &luks("luks1"));
    add("luks2", 64 * M, "LUKS2 header", &luks("luks2"));
    add("lvm", 64 * M, "LVM2 physical volume", &make_lvm);
    add("gpt", 64 * M, "GPT partition table", &|p| {
        tool("sgdisk", &["-n", "1:0:0"], p)
    });
    add("mbr", 64 * M, "MBR partition table", &|p| {
        piped_tool(
            "sfdisk",
            &["-q", p.to_str().unwrap()],
            "start=2048, type=83\n",
        )
    });
    for (name, version, needle) in [
        ("md090", "0.90", "md superblock (version 0.90"),
        ("md10", "1.0", "md superblock (version 1.0"),
        ("md11", "1.1", "md superblock (version 1.1"),
        ("md12", "1.2", "md superblock (version 1.2"),
    ] {
        add(name, 64 * M, needle, &|p| make_md(p, 64 * M, version));
    }
    add("random-tail", 64 * M, "data (a non-zero byte at", &|p| {
        let f = std::fs::OpenOptions::new().write(true).open(p).unwrap();
        f.write_all_at(&pseudo_random(M as usize, 16), 63 * M)
            .unwrap();
    });
    targets
}

/// A digest of every byte of the file.
fn digest(path: &Path) -> u64 {
    let mut f = std::fs::File::open(path).unwrap();
    let mut h = DefaultHasher::new();
    let mut buf = vec![0u8; 4 << 20];
    loop {
        let n = f.read(&mut buf).unwrap();
        if n == 0 {
            return h.finish();
        }
        h.write(&buf[..n]);
    }
}

fn refused(out: &Output, needle: &str, what: &str) {
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{what}: accepted: {out:?}");
    assert!(err.contains(needle), "{what}: {needle:?} not in: {err}");
    assert!(!err.contains("panicked"), "{what}: {err}");
    assert!(!err.contains("4294967295"), "{what}: {err}");
}

fn write_config(dir: &Path, members: &[PathBuf], spares: &[PathBuf]) -> PathBuf {
    let list = |ps: &[PathBuf]| {
        ps.iter()
            .map(|p| format!("{:?}", p.display().to_string()))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let config = dir.join("vraid.toml");
    std::fs::write(
        &config,
        format!(
            "[[volume]]\nname = \"vol0\"\nlevel = 5\nchunk_size = \"64K\"\nmembers = [{}]\nspares = [{}]\n",
            list(members),
            list(spares)
        ),
    )
    .unwrap();
    config
}

fn raid5(dir: &Path) -> Vec<PathBuf> {
    let members = member_paths(dir, 3);
    create_array(5, "64K", "32M", "vol0", &members);
    members
}

fn serve(config: &Path, ctl: &Path) -> Server {
    Server::start(&[
        "--config",
        config.to_str().unwrap(),
        "--control",
        ctl.to_str().unwrap(),
    ])
}

#[test]
fn foreign_contents_are_refused_by_add_replace_create_and_config_spares() {
    // Arrange
    let dir = scratch_dir("safety-signatures");
    let targets = make_targets(dir.path());
    let before: Vec<u64> = targets.iter().map(|t| digest(&t.path)).collect();
    let blank = dir.path().join("blank.img");
    sparse(&blank, 64 << 20);
    let members = raid5(dir.path());
    let spares: Vec<PathBuf> = targets.iter().map(|t| t.path.clone()).collect();
    let ctl = dir.path().join("ctl.sock");
    let server = serve(&write_config(dir.path(), &members, &spares), &ctl);

    // Act + Assert: examine names it; each path refuses it, naming it.
    let log = server.log();
    for t in &targets {
        let shown = t.path.display().to_string();
        let ex = run(vraid(&["examine"]).arg(&t.path));
        if ex.status.success() && t.needle.contains("md superblock") {
            // An md superblock that parses: examine shows it (md_arrays.rs).
            let out = String::from_utf8_lossy(&ex.stdout);
            assert!(
                ex.status.success() && out.contains("Magic : a92b4efc"),
                "examine {shown}: {ex:?}"
            );
        } else {
            refused(&ex, t.needle, &format!("examine {shown}"));
        }
        let refusal = format!("spare {shown} refused: it holds");
        assert!(
            log.lines()
                .any(|l| l.contains(&refusal) && l.contains(t.needle)),
            "config spare {shown} not refused by name:\n{log}"
        );
        refused(
            &vraid_ctl(&ctl, &["add", "vol0", &shown]),
            t.needle,
            &format!("add {shown}"),
        );
        refused(
            &vraid_ctl(&ctl, &["replace", "vol0", "2", &shown]),
            t.needle,
            &format!("replace {shown}"),
        );
        let create = run(vraid(&["create", "--level", "1", "--name", "other"])
            .arg(&t.path)
            .arg(&blank));
        refused(&create, t.needle, &format!("create {shown}"));
    }
    let status = status_json(&ctl);
    let vol = &status["volumes"][0];
    assert_eq!(vol["spares"], serde_json::json!([]), "{status}");
    assert!(vol["replace"].is_null(), "{status}");
    drop(server);
    for (t, before) in targets.iter().zip(before) {
        assert_eq!(digest(&t.path), before, "{} changed", t.path.display());
    }
}

/// `flock -x --no-fork PATH sleep` holding PATH; killed and reaped on drop.
struct Holder(Child);

impl Holder {
    fn hold(path: &Path) -> Holder {
        let holder = Holder(
            // --no-fork: flock execs sleep itself, so killing it ends the hold.
            Command::new("flock")
                .args(["-x", "--no-fork"])
                .arg(path)
                .args(["sleep", "300"])
                .spawn()
                .unwrap(),
        );
        // The lock is taken once `sleep` runs: poll until flock -n fails.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            let probe = Command::new("flock")
                .args(["-n", "-s"])
                .arg(path)
                .arg("true")
                .status()
                .unwrap();
            if !probe.success() {
                return holder;
            }
            assert!(std::time::Instant::now() < deadline, "flock never held");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Holder {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn force_overwrites_contents_but_never_a_device_held_elsewhere() {
    // Arrange
    let dir = scratch_dir("safety-force");
    let members = raid5(dir.path());
    let fs = |name: &str| {
        let p = dir.path().join(name);
        sparse(&p, 64 << 20);
        tool("mkfs.ext4", &["-q", "-F"], &p);
        p
    };
    let (spare, repl, created, held) = (fs("a.img"), fs("b.img"), fs("c.img"), fs("d.img"));
    let blank = dir.path().join("blank.img");
    sparse(&blank, 64 << 20);
    let ctl = dir.path().join("ctl.sock");
    let server = serve(&write_config(dir.path(), &members, &[]), &ctl);
    let holder = Holder::hold(&held);
    let held_before = digest(&held);
    let s = |p: &Path| p.to_str().unwrap().to_string();

    // Act + Assert: a file another process holds is refused even with
    // --force, and so are the members the daemon serves.
    for args in [
        vec!["add", "vol0", &s(&held), "--force"],
        vec!["replace", "vol0", "1", &s(&held), "--force"],
    ] {
        refused(&vraid_ctl(&ctl, &args), "in use", &format!("{args:?}"));
    }
    let create_held = run(vraid(&["create", "--level", "1", "--force", "--name", "x"])
        .arg(&held)
        .arg(&blank));
    refused(&create_held, "in use", "create --force of a held file");
    let create_live = run(vraid(&["create", "--level", "1", "--force", "--name", "x"])
        .arg(&members[0])
        .arg(&blank));
    refused(&create_live, "in use", "create --force of a served member");
    drop(holder);
    assert_eq!(digest(&held), held_before, "held file changed");

    // --force goes through for add, replace and create.
    vraid_ctl_ok(&ctl, &["add", "vol0", &s(&spare), "--force"]);
    vraid_ctl_ok(&ctl, &["replace", "vol0", "0", &s(&repl), "--force"]);
    run_ok(
        vraid(&["create", "--level", "1", "--force", "--name", "y"])
            .arg(&created)
            .arg(&blank),
    );
    let status = status_json(&ctl);
    assert_eq!(
        status["volumes"][0]["spares"],
        serde_json::json!([s(&spare)]),
        "{status}"
    );
    assert_eq!(examine(&spare)["spare"], true);
    assert_eq!(examine(&created)["name"], "y");
    drop(server);
}

#[test]
fn a_live_member_under_another_name_is_refused() {
    // Arrange: the daemon names its members relative to its directory.
    let dir = scratch_dir("safety-identity");
    let d = dir.path();
    let members = raid5(d);
    std::fs::create_dir(d.join("a")).unwrap();
    std::os::unix::fs::symlink(&members[0], d.join("link0.img")).unwrap();
    std::fs::hard_link(&members[0], d.join("hard0.img")).unwrap();
    let ctl = d.join("ctl.sock");
    let server = Server::start_in(
        d,
        &[
            "--control",
            ctl.to_str().unwrap(),
            "m0.img",
            "m1.img",
            "m2.img",
        ],
    );
    let spellings = [
        members[0].clone(),
        d.join("a/../m0.img"),
        d.join("link0.img"),
        d.join("hard0.img"),
    ];
    let before = status_json(&ctl);

    // Act + Assert
    for p in &spellings {
        let p = p.to_str().unwrap();
        refused(
            &vraid_ctl(&ctl, &["add", "vol0", p]),
            "already a member (role 0",
            &format!("add {p}"),
        );
        refused(
            &vraid_ctl(&ctl, &["replace", "vol0", "2", p]),
            "already a member (role 0",
            &format!("replace {p}"),
        );
        refused(
            &vraid_ctl(&ctl, &["add", "vol0", p, "--force"]),
            "already a member (role 0",
            &format!("add --force {p}"),
        );
    }
    // A spare added once, then again through a symlink: "a hot spare".
    let spare = d.join("s1.img");
    sparse(&spare, 32 << 20);
    std::os::unix::fs::symlink(&spare, d.join("s1-link.img")).unwrap();
    vraid_ctl_ok(&ctl, &["add", "vol0", spare.to_str().unwrap()]);
    refused(
        &vraid_ctl(
            &ctl,
            &["add", "vol0", d.join("s1-link.img").to_str().unwrap()],
        ),
        "already a hot spare",
        "add of a spare through a symlink",
    );
    let after = status_json(&ctl);
    let roles = |st: &serde_json::Value| -> Vec<(String, String)> {
        st["volumes"][0]["members"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| (m["path"].to_string(), m["state"].to_string()))
            .collect()
    };
    assert_eq!(roles(&after), roles(&before), "{after}");
    assert_eq!(
        after["volumes"][0]["spares"],
        serde_json::json!([spare.to_str().unwrap()])
    );
    assert!(after["volumes"][0]["replace"].is_null(), "{after}");
    drop(server);
    // create: one file under two names.
    let x = d.join("x.img");
    sparse(&x, 32 << 20);
    let create = run(vraid(&["create", "--level", "1", "--name", "dup"])
        .arg(&x)
        .arg(d.join("a/../x.img")));
    refused(&create, "same device", "create of one file twice");
}

/// Runs `n` control commands at once; returns their outputs.
fn at_once(ctl: &Path, commands: Vec<Vec<String>>) -> Vec<Output> {
    let children: Vec<Child> = commands
        .iter()
        .map(|args| {
            vraid(&args.iter().map(String::as_str).collect::<Vec<_>>())
                .arg("--control")
                .arg(ctl)
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    children
        .into_iter()
        .map(|c| c.wait_with_output().unwrap())
        .collect()
}

fn winners(outs: &[Output]) -> usize {
    outs.iter().filter(|o| o.status.success()).count()
}

#[test]
fn concurrent_adds_of_one_file_admit_exactly_one() {
    // Arrange
    let dir = scratch_dir("safety-concurrent-add");
    let members = raid5(dir.path());
    let ctl = dir.path().join("ctl.sock");
    let _server = serve(&write_config(dir.path(), &members, &[]), &ctl);
    let s1 = dir.path().join("s1.img");
    sparse(&s1, 32 << 20);
    let s1 = s1.to_str().unwrap().to_string();

    // Act
    let outs = at_once(
        &ctl,
        (0..8)
            .map(|_| vec!["add".into(), "vol0".into(), s1.clone()])
            .collect(),
    );

    // Assert
    assert_eq!(winners(&outs), 1, "{outs:?}");
    for o in outs.iter().filter(|o| !o.status.success()) {
        refused(o, "already a hot spare", "second add");
    }
    let status = status_json(&ctl);
    assert_eq!(
        status["volumes"][0]["spares"],
        serde_json::json!([s1]),
        "{status}"
    );
}

#[test]
fn add_racing_replace_of_one_file_admits_exactly_one() {
    // Arrange
    let dir = scratch_dir("safety-add-replace");
    let members = raid5(dir.path());
    let ctl = dir.path().join("ctl.sock");
    let server = serve(&write_config(dir.path(), &members, &[]), &ctl);

    for round in 0..4 {
        let s = dir.path().join(format!("s{round}.img"));
        sparse(&s, 32 << 20);
        let s = s.to_str().unwrap().to_string();

        // Act
        let outs = at_once(
            &ctl,
            vec![
                vec!["add".into(), "vol0".into(), s.clone()],
                vec!["replace".into(), "vol0".into(), "2".into(), s.clone()],
            ],
        );

        // Assert: one wins; the file is in one place only.
        assert_eq!(winners(&outs), 1, "round {round}: {outs:?}");
        let loser = outs.iter().find(|o| !o.status.success()).unwrap();
        refused(loser, "already", &format!("round {round}"));
        let status = status_json(&ctl);
        let vol = &status["volumes"][0];
        let as_spare = vol["spares"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|p| **p == serde_json::json!(s))
            .count();
        let as_replace = usize::from(vol["replace"]["path"] == serde_json::json!(s));
        assert!(
            as_spare + as_replace <= 1,
            "round {round}: {s} in two places: {status}"
        );
        // Let a replace finish before the next round (one at a time).
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        while !status_json(&ctl)["volumes"][0]["replace"].is_null() {
            assert!(std::time::Instant::now() < deadline, "{}", server.log());
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// Loop devices detached on drop.
struct Loops(Vec<String>);

impl Drop for Loops {
    fn drop(&mut self) {
        for dev in &self.0 {
            let _ = Command::new("losetup").arg("-d").arg(dev).status();
        }
    }
}

#[test]
fn a_block_device_member_under_another_node_is_refused() {
    // Arrange: RAID-1 on two loop devices; a second device node (mknod,
    // same major:minor) names loop 0 under another path.
    use std::os::unix::fs::MetadataExt;
    let dir = scratch_dir("safety-blockdev");
    let mut loops = Loops(Vec::new());
    for i in 0..2 {
        let f = dir.path().join(format!("backing{i}.img"));
        sparse(&f, 40 << 20);
        let dev = run_ok(Command::new("losetup").args(["--find", "--show"]).arg(&f));
        loops.0.push(dev.trim().to_string());
    }
    let members: Vec<PathBuf> = loops.0.iter().map(PathBuf::from).collect();
    create_array(1, "64K", "1G", "vol0", &members);
    let rdev = std::fs::metadata(&members[0]).unwrap().rdev();
    let alias = dir.path().join("alias0");
    run_ok(Command::new("mknod").arg(&alias).args([
        "b",
        &libc::major(rdev).to_string(),
        &libc::minor(rdev).to_string(),
    ]));
    let ctl = dir.path().join("ctl.sock");
    let server = Server::start(&["--control", ctl.to_str().unwrap(), &loops.0[0], &loops.0[1]]);
    let alias = alias.to_str().unwrap();

    // Act + Assert
    refused(
        &vraid_ctl(&ctl, &["add", "vol0", alias, "--force"]),
        "already a member (role 0",
        "add of a live block device under another node",
    );
    refused(
        &vraid_ctl(&ctl, &["replace", "vol0", "1", alias, "--force"]),
        "already a member (role 0",
        "replace onto a live block device under another node",
    );
    let status = status_json(&ctl);
    assert_eq!(status["volumes"][0]["spares"], serde_json::json!([]));
    assert!(status["volumes"][0]["replace"].is_null(), "{status}");
    drop(server);
}
