//! Issue 16, the small safety items against the real daemon: out-of-space
//! under the members is not a member failure, `--read-only` leaves member
//! files untouched, a fault stays with its device when a hot spare takes
//! the role, and the CLI does not panic on a closed pipe.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use raid_tests::*;
use serde_json::Value;

fn quoted(paths: &[&PathBuf]) -> String {
    paths
        .iter()
        .map(|p| format!("{:?}", p.display().to_string()))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Polls `status` until `done` holds for the volume; panics after `timeout`.
fn wait_status(control: &Path, name: &str, timeout: Duration, done: impl Fn(&Value) -> bool) {
    let deadline = Instant::now() + timeout;
    loop {
        let v = volume_status(control, name);
        if done(&v) {
            return;
        }
        assert!(Instant::now() < deadline, "not reached in {timeout:?}: {v}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn offline_fault_stays_with_its_device_when_a_hot_spare_takes_the_role() {
    // Arrange: a RAID-5 with a hot spare in the config, data written.
    let dir = scratch_dir("safety-fault-device");
    let paths = member_paths(dir.path(), 3);
    create_array(5, "64K", "32M", "vol0", &paths);
    let spare = dir.path().join("spare.img");
    std::fs::File::create(&spare)
        .unwrap()
        .set_len(32 << 20)
        .unwrap();
    let control = dir.path().join("control.sock");
    let config = dir.path().join("vraid.toml");
    std::fs::write(
        &config,
        format!(
            "[server]\ncontrol = {:?}\n\n[[volume]]\nname = \"vol0\"\nlevel = 5\nchunk_size = \"64K\"\nmembers = [{}]\nspares = [{}]\n",
            control.to_str().unwrap(),
            quoted(&[&paths[0], &paths[1], &paths[2]]),
            quoted(&[&spare])
        ),
    )
    .unwrap();
    let server = Server::start(&["--config", config.to_str().unwrap()]);
    let uri = server.uri("vol0");
    qemu_io(&uri, &["write -P 0x5a 0 8M".into()]);
    let m2 = paths[2].to_str().unwrap();

    // Act: member 2's disk goes offline; reads reach it and fail it.
    vraid_ctl_ok(&control, &["fault", "add", "vol0", m2, "--kind", "offline"]);
    qemu_io(&uri, &["read -P 0x5a 0 8M".into()]);
    wait_status(&control, "vol0", Duration::from_secs(60), |v| {
        v["state"] == "optimal" && v["members"][2]["path"] == spare.to_str().unwrap()
    });
    // Traffic on the new member after the rebuild: it must not fail.
    qemu_io(
        &uri,
        &[
            "write -P 0xa5 8M 4M".into(),
            "read -P 0x5a 0 8M".into(),
            "read -P 0xa5 8M 4M".into(),
        ],
    );

    // Assert: optimal with the spare active in role 2; the fault is still
    // listed with the old device, which no longer holds the role.
    let v = volume_status(&control, "vol0");
    assert_eq!(v["state"], "optimal", "{v}");
    assert_eq!(member_states(&v), vec!["active"; 3], "{v}");
    let faults: Value =
        serde_json::from_str(&vraid_ctl_ok(&control, &["fault", "list", "--json"])).unwrap();
    let fault = &faults["faults"][0];
    assert_eq!(fault["kind"], "offline", "{faults}");
    assert_eq!(fault["path"], m2, "{faults}");
    assert_eq!(fault["holds_role"], false, "{faults}");
    // A new fault named by the old device's path cannot land on the spare.
    let again = vraid_ctl(&control, &["fault", "add", "vol0", m2, "--kind", "offline"]);
    let refusal = String::from_utf8_lossy(&again.stderr);
    assert!(!again.status.success(), "{refusal}");
    assert!(refusal.contains("no longer holds member 2"), "{refusal}");
    let v = volume_status(&control, "vol0");
    assert_eq!(member_states(&v), vec!["active"; 3], "{v}");
    let log = server.log();
    assert!(log.contains("rebuild of member 2 finished"), "{log}");
    assert!(!log.contains("spare.img failed"), "{log}");
    assert_eq!(server.stop(), 0);
    let members = [paths[0].clone(), paths[1].clone(), spare];
    assert_eq!(bad_parity_stripes(&members, 64 << 10), Vec::<usize>::new());
}

/// Runs `vraid ARGS` with stdout a pipe whose reader is already gone
/// (the end state of `vraid ... | head -c1`, without the race); returns
/// its exit status and stderr.
fn into_closed_pipe(args: &[&str]) -> (std::process::ExitStatus, String) {
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let out = vraid(args)
        .stdout(writer)
        .stderr(std::process::Stdio::piped())
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    (
        out.status,
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn cli_output_into_a_closed_pipe_exits_quietly() {
    use std::os::unix::process::ExitStatusExt;
    // Arrange: a running array and a member to examine.
    let dir = scratch_dir("safety-epipe");
    let paths = member_paths(dir.path(), 3);
    create_array(5, "64K", "32M", "vol0", &paths);
    let control = dir.path().join("control.sock");
    let mut args: Vec<&str> = paths.iter().map(|p| p.to_str().unwrap()).collect();
    args.extend(["--control", control.to_str().unwrap()]);
    let server = Server::start(&args);
    let ctl = control.to_str().unwrap();
    let m0 = paths[0].to_str().unwrap();
    let commands: [&[&str]; 6] = [
        &["status", "--json", "--control", ctl],
        &["status", "--control", ctl],
        &["fault", "list", "--json", "--control", ctl],
        &["fault", "list", "--control", ctl],
        &["examine", m0],
        &["examine", "--json", m0],
    ];

    for cmd in commands {
        // Act: the reader went away before the first byte.
        let (status, stderr) = into_closed_pipe(cmd);
        // Assert: no panic, no backtrace: ended by SIGPIPE, as `cat` is.
        assert!(!stderr.contains("panicked"), "{cmd:?}: {stderr}");
        assert_eq!(
            status.signal(),
            Some(libc::SIGPIPE),
            "{cmd:?}: {status}: {stderr}"
        );
    }
    // And the shell pipeline of the report: `vraid status --json | head -c1`.
    let script = format!(
        "{} status --json --control {ctl} | head -c1 >/dev/null; echo \"rc=${{PIPESTATUS[0]}}\"",
        vraid_bin().display()
    );
    let out = run(Command::new("bash").arg("-c").arg(&script));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!text.contains("panicked"), "{text}");
    assert!(text.contains("rc=0") || text.contains("rc=141"), "{text}");
    assert_eq!(server.stop(), 0);
}

/// Every byte and the mtime of each member file.
fn snapshot(paths: &[PathBuf]) -> Vec<(Vec<u8>, std::time::SystemTime)> {
    paths
        .iter()
        .map(|p| {
            let bytes = std::fs::read(p).unwrap();
            let mtime = std::fs::metadata(p).unwrap().modified().unwrap();
            (bytes, mtime)
        })
        .collect()
}

fn assert_untouched(paths: &[PathBuf], before: &[(Vec<u8>, std::time::SystemTime)]) {
    let after = snapshot(paths);
    for ((p, (b0, t0)), (b1, t1)) in paths.iter().zip(before).zip(&after) {
        let first = b0.iter().zip(b1).position(|(x, y)| x != y);
        assert!(
            b0 == b1,
            "{} changed (first differing byte at {first:?})",
            p.display()
        );
        assert_eq!(t0, t1, "{} mtime changed", p.display());
    }
}

/// Serves `paths` with `--read-only`, checks reads and a refused write,
/// stops it; returns the log.
fn serve_read_only_and_read(paths: &[PathBuf]) -> String {
    let mut args: Vec<&str> = paths.iter().map(|p| p.to_str().unwrap()).collect();
    args.push("--read-only");
    let server = Server::start(&args);
    let uri = server.uri("vol0");
    run_ok(Command::new("qemu-io").args([
        "-r",
        "-f",
        "raw",
        "-c",
        "read -P 0x3c 0 6M",
        "-c",
        "read -P 0xc3 6M 2M",
        &uri,
    ]));
    let (wrote, out) = qemu_io_try(&uri, &["write -P 0x77 0 64k"]);
    assert!(!wrote, "a write to a read-only export succeeded: {out}");
    let log = server.log();
    assert_eq!(server.stop(), 0, "{log}");
    log
}

#[test]
fn read_only_serve_of_a_clean_array_leaves_every_member_byte_and_mtime_alone() {
    // Arrange: a RAID-5 written and stopped cleanly.
    let dir = scratch_dir("safety-ro-clean");
    let paths = member_paths(dir.path(), 3);
    create_array(5, "64K", "32M", "vol0", &paths);
    let server = Server::start(
        &paths
            .iter()
            .map(|p| p.to_str().unwrap())
            .collect::<Vec<_>>(),
    );
    qemu_io(
        &server.uri("vol0"),
        &["write -P 0x3c 0 6M".into(), "write -P 0xc3 6M 2M".into()],
    );
    assert_eq!(server.stop(), 0);
    let before = snapshot(&paths);

    // Act
    serve_read_only_and_read(&paths);

    // Assert
    assert_untouched(&paths, &before);
}

#[test]
fn read_only_serve_of_a_crashed_array_neither_resyncs_nor_replays_nor_marks() {
    // Arrange: a RAID-5 written, then SIGKILLed (dirty, journal live).
    let dir = scratch_dir("safety-ro-dirty");
    let paths = member_paths(dir.path(), 3);
    create_array(5, "64K", "32M", "vol0", &paths);
    let server = Server::start(
        &paths
            .iter()
            .map(|p| p.to_str().unwrap())
            .collect::<Vec<_>>(),
    );
    qemu_io(
        &server.uri("vol0"),
        &[
            "write -P 0x3c 0 6M".into(),
            "write -P 0xc3 6M 2M".into(),
            "flush".into(),
        ],
    );
    server.kill();
    assert_eq!(examine(&paths[0])["state"], "dirty");
    let before = snapshot(&paths);

    // Act
    let log = serve_read_only_and_read(&paths);

    // Assert: nothing written, and the array is still dirty for the next
    // read-write run to resync.
    assert_untouched(&paths, &before);
    assert!(log.contains("read-only"), "{log}");
    assert_eq!(examine(&paths[0])["state"], "dirty");
}

#[test]
fn read_only_serve_refuses_a_crashed_raid5_with_a_member_missing() {
    // Arrange: a RAID-5 SIGKILLed while dirty, then a member gone.
    let dir = scratch_dir("safety-ro-degraded");
    let paths = member_paths(dir.path(), 3);
    create_array(5, "64K", "32M", "vol0", &paths);
    let server = Server::start(
        &paths
            .iter()
            .map(|p| p.to_str().unwrap())
            .collect::<Vec<_>>(),
    );
    qemu_io(&server.uri("vol0"), &["write -P 0x3c 0 6M".into()]);
    server.kill();
    std::fs::remove_file(&paths[2]).unwrap();
    let before = snapshot(&paths[..2]);

    // Act: bounded by timeout(1): on failure to refuse it would serve forever.
    let out = run(Command::new("timeout")
        .arg("30")
        .arg(vraid_bin())
        .args(["serve", "--read-only", "--nbd"])
        .arg(format!("127.0.0.1:{}", free_port()))
        .arg("--control")
        .arg(dir.path().join("ctl.sock"))
        .args(&paths));

    // Assert: refused with the reason, members untouched.
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("not shut down cleanly"), "{stderr}");
    assert_untouched(&paths[..2], &before);
}

/// A tmpfs of a given size mounted on a directory; unmounted when dropped.
struct TmpfsMount {
    dir: PathBuf,
}

impl TmpfsMount {
    fn new(dir: &Path, size: &str) -> TmpfsMount {
        std::fs::create_dir_all(dir).unwrap();
        run_ok(
            Command::new("mount")
                .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
                .arg(dir),
        );
        TmpfsMount {
            dir: dir.to_path_buf(),
        }
    }

    fn resize(&self, size: &str) {
        run_ok(
            Command::new("mount")
                .args(["-o", &format!("remount,size={size}")])
                .arg(&self.dir),
        );
    }
}

impl Drop for TmpfsMount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.dir).status();
    }
}

#[test]
fn members_on_a_full_filesystem_fail_writes_with_enospc_and_stay_active() {
    // Arrange: a RAID-5 of 3 sparse 16M members on a 20M tmpfs (the
    // metadata areas up to the checksums are reserved at assembly, the
    // checksum pages when first written), 8M written.
    let dir = scratch_dir("safety-enospc");
    let mount = TmpfsMount::new(&dir.path().join("mnt"), "20M");
    let paths = member_paths(&dir.path().join("mnt"), 3);
    create_array(5, "64K", "16M", "vol0", &paths);
    let control = dir.path().join("control.sock");
    let mut args: Vec<&str> = paths.iter().map(|p| p.to_str().unwrap()).collect();
    args.extend(["--control", control.to_str().unwrap()]);
    let server = Server::start(&args);
    let uri = server.uri("vol0");
    let csum_offset = examine(&paths[0])["csum_offset"].as_u64().unwrap();
    for p in &paths {
        use std::os::unix::fs::MetadataExt;
        let allocated = std::fs::metadata(p).unwrap().blocks() * 512;
        assert!(
            allocated >= csum_offset,
            "{}: metadata area not reserved: {allocated} bytes",
            p.display()
        );
    }
    qemu_io(&uri, &["write -P 0x11 0 8M".into()]);

    // Act 1: write past what the filesystem holds.
    let (ok, full) = qemu_io_try(&uri, &["write -P 0x22 8M 16M"]);

    // Assert 1: ENOSPC to the client; reads work; every member active.
    assert!(!ok, "a write beyond the free space succeeded: {full}");
    assert!(full.contains("No space left on device"), "{full}");
    qemu_io(&uri, &["read -P 0x11 0 8M".into()]);
    let v = volume_status(&control, "vol0");
    assert_eq!(member_states(&v), vec!["active"; 3], "{v}");
    assert_ne!(v["state"], "failed", "{v}");

    // Act 2: space comes back; the same write goes through.
    mount.resize("64M");
    qemu_io(
        &uri,
        &["write -P 0x22 8M 16M".into(), "read -P 0x22 8M 16M".into()],
    );
    let log = server.log();
    assert_eq!(server.stop(), 0, "{log}");

    // Assert 2: a restart assembles every member and the data is intact;
    // parity is consistent once the resync of the kept regions is done.
    assert!(!log.contains("member failed"), "{log}");
    let server = Server::start(&args);
    let uri = server.uri("vol0");
    qemu_io(
        &uri,
        &["read -P 0x11 0 8M".into(), "read -P 0x22 8M 16M".into()],
    );
    wait_status(&control, "vol0", Duration::from_secs(60), |v| {
        v["state"] == "optimal"
    });
    let v = volume_status(&control, "vol0");
    assert_eq!(member_states(&v), vec!["active"; 3], "{v}");
    assert_eq!(server.stop(), 0);
    assert_eq!(bad_parity_stripes(&paths, 64 << 10), Vec::<usize>::new());
}

/// Fills the filesystem of `dir` with a file until it is full.
fn fill(dir: &Path) -> PathBuf {
    use std::io::Write;
    let filler = dir.join("filler");
    let mut f = std::fs::File::create(&filler).unwrap();
    let block = vec![0xffu8; 1 << 20];
    while f.write_all(&block).is_ok() {}
    filler
}

#[test]
fn raid1_members_on_a_filesystem_filled_by_another_file_recover_once_it_is_deleted() {
    // Arrange: a RAID-1 of 2 sparse 16M members on a 40M tmpfs, 4M written,
    // then another file takes every free byte.
    let dir = scratch_dir("safety-enospc-r1");
    let mnt = dir.path().join("mnt");
    let _mount = TmpfsMount::new(&mnt, "40M");
    let paths = member_paths(&mnt, 2);
    create_array(1, "64K", "16M", "vol0", &paths);
    let control = dir.path().join("control.sock");
    let mut args: Vec<&str> = paths.iter().map(|p| p.to_str().unwrap()).collect();
    args.extend(["--control", control.to_str().unwrap()]);
    let server = Server::start(&args);
    let uri = server.uri("vol0");
    qemu_io(&uri, &["write -P 0x44 0 4M".into()]);
    let filler = fill(&mnt);

    // Act 1
    let (ok, full) = qemu_io_try(&uri, &["write -P 0x55 4M 8M"]);

    // Assert 1: ENOSPC, reads fine, both mirrors active.
    assert!(!ok, "{full}");
    assert!(full.contains("No space left on device"), "{full}");
    qemu_io(&uri, &["read -P 0x44 0 4M".into()]);
    let v = volume_status(&control, "vol0");
    assert_eq!(member_states(&v), vec!["active"; 2], "{v}");

    // Act 2: the other file goes; the same write succeeds without a restart.
    std::fs::remove_file(&filler).unwrap();
    qemu_io(
        &uri,
        &["write -P 0x55 4M 8M".into(), "read -P 0x55 4M 8M".into()],
    );
    assert_eq!(server.stop(), 0);

    // Assert 2: both mirrors assemble and hold the same data.
    let server = Server::start(&args);
    wait_status(&control, "vol0", Duration::from_secs(60), |v| {
        v["state"] == "optimal"
    });
    qemu_io(
        &server.uri("vol0"),
        &["read -P 0x44 0 4M".into(), "read -P 0x55 4M 8M".into()],
    );
    assert_eq!(server.stop(), 0);
    assert!(
        member_data(&paths[0]) == member_data(&paths[1]),
        "mirrors differ"
    );
}
