//! Red team on overwrite protection and member-set safety (issue 16, items
//! 1, 14, 15a): one daemon serving two volumes must not let one volume take
//! a live member or spare of the other, neither one request at a time (even
//! with `--force`) nor by two requests racing on different volumes.

use std::path::{Path, PathBuf};
use std::process::{Child, Output, Stdio};

use raid_tests::*;

fn sparse(path: &Path, size: u64) {
    std::fs::File::create(path).unwrap().set_len(size).unwrap();
}

fn refused(out: &Output, needle: &str, what: &str) {
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{what}: accepted: {out:?}");
    assert!(err.contains(needle), "{what}: {needle:?} not in: {err}");
    assert!(!err.contains("panicked"), "{what}: {err}");
}

fn list(ps: &[PathBuf]) -> String {
    ps.iter()
        .map(|p| format!("{:?}", p.display().to_string()))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Two RAID-5 volumes, vol0 and vol1, three 32M members each, in one
/// config; returns (config, vol0's members, vol1's members).
fn two_volumes(dir: &Path) -> (PathBuf, Vec<PathBuf>, Vec<PathBuf>) {
    let mut vols = Vec::new();
    for v in ["vol0", "vol1"] {
        std::fs::create_dir(dir.join(v)).unwrap();
        let members = member_paths(&dir.join(v), 3);
        create_array(5, "64K", "32M", v, &members);
        vols.push(members);
    }
    let config = dir.join("vraid.toml");
    let mut text = String::new();
    for (v, members) in ["vol0", "vol1"].iter().zip(&vols) {
        text.push_str(&format!(
            "[[volume]]\nname = \"{v}\"\nlevel = 5\nchunk_size = \"64K\"\nmembers = [{}]\n\n",
            list(members)
        ));
    }
    std::fs::write(&config, text).unwrap();
    let vol1 = vols.pop().unwrap();
    (config, vols.pop().unwrap(), vol1)
}

fn serve(config: &Path, ctl: &Path) -> Server {
    Server::start(&[
        "--config",
        config.to_str().unwrap(),
        "--control",
        ctl.to_str().unwrap(),
    ])
}

fn volume<'a>(status: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    status["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == name)
        .unwrap_or_else(|| panic!("no {name} in {status}"))
}

#[test]
fn a_live_member_or_spare_of_another_volume_in_the_same_daemon_is_refused_even_with_force() {
    // Arrange
    let dir = scratch_dir("redteam-cross-volume");
    let (config, vol0, _vol1) = two_volumes(dir.path());
    let ctl = dir.path().join("ctl.sock");
    let server = serve(&config, &ctl);
    let spare = dir.path().join("spare0.img");
    sparse(&spare, 32 << 20);
    vraid_ctl_ok(&ctl, &["add", "vol0", spare.to_str().unwrap()]);
    let uri = server.uri("vol0");
    let data = pseudo_random(1 << 20, 11);
    write_export(&uri, &data, dir.path());
    let m0 = vol0[0].to_str().unwrap();
    let s0 = spare.to_str().unwrap();

    // Act + Assert: neither vol0's member nor its spare joins vol1.
    for (p, what) in [(m0, "a member (role 0"), (s0, "a hot spare")] {
        for force in [false, true] {
            let mut args = vec!["add", "vol1", p];
            if force {
                args.push("--force");
            }
            // Without --force the vraid superblock of vol0 is reason
            // enough; with it, only the identity check stands.
            let needle = if force { what } else { "" };
            refused(&vraid_ctl(&ctl, &args), needle, &format!("{args:?}"));
            let mut args = vec!["replace", "vol1", "1", p];
            if force {
                args.push("--force");
            }
            refused(&vraid_ctl(&ctl, &args), needle, &format!("{args:?}"));
        }
    }
    let status = status_json(&ctl);
    let vol1 = volume(&status, "vol1");
    assert_eq!(vol1["spares"], serde_json::json!([]), "{status}");
    assert_eq!(vol1["state"], "optimal", "{status}");
    assert_eq!(volume(&status, "vol0")["state"], "optimal", "{status}");
    assert_eq!(read_export(&uri, dir.path())[..data.len()], data[..]);
    drop(server);
    let examined = examine(&vol0[0]);
    assert_eq!(examined["name"], "vol0", "{examined}");
}

/// Runs control commands at once; returns their outputs.
fn at_once(ctl: &Path, commands: &[Vec<String>]) -> Vec<Output> {
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

#[test]
fn concurrent_adds_of_one_file_to_two_volumes_admit_exactly_one() {
    // Arrange
    let dir = scratch_dir("redteam-cross-volume-race");
    let (config, _vol0, _vol1) = two_volumes(dir.path());
    let ctl = dir.path().join("ctl.sock");
    let _server = serve(&config, &ctl);

    for round in 0..4 {
        let s = dir.path().join(format!("s{round}.img"));
        sparse(&s, 32 << 20);
        let s = s.to_str().unwrap().to_string();
        let commands: Vec<Vec<String>> = (0..8)
            .map(|i| {
                let v = if i % 2 == 0 { "vol0" } else { "vol1" };
                vec!["add".into(), v.into(), s.clone()]
            })
            .collect();

        // Act
        let outs = at_once(&ctl, &commands);

        // Assert
        let won = outs.iter().filter(|o| o.status.success()).count();
        assert_eq!(won, 1, "round {round}: {outs:?}");
        let status = status_json(&ctl);
        let holders = ["vol0", "vol1"]
            .iter()
            .filter(|v| {
                volume(&status, v)["spares"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|x| x == s.as_str())
            })
            .count();
        assert_eq!(holders, 1, "round {round}: {status}");
    }
}

/// `kill -9 PID` and no wait: a careless user restarting at once.
fn sigkill_no_wait(child: &Child) {
    // SAFETY: kill(2) with a pid this test spawned; no memory is touched.
    let rc = unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGKILL) };
    assert_eq!(rc, 0, "kill: {}", std::io::Error::last_os_error());
}

#[test]
fn a_restart_right_after_sigkill_under_load_always_comes_up() {
    // Arrange: a daemon under write load, its control socket at a fixed path.
    let dir = scratch_dir("redteam-sigkill-restart");
    let members = member_paths(dir.path(), 2);
    create_array(1, "64K", "32M", "vol0", &members);
    let ctl = dir.path().join("ctl.sock");
    let ctl_arg = ctl.to_str().unwrap();
    let mut args = vec!["--control", ctl_arg];
    args.extend(members.iter().map(|m| m.to_str().unwrap()));

    for round in 0..20 {
        let port = free_port();
        let mut first = vraid(&["serve", "--nbd", &format!("127.0.0.1:{port}")])
            .args(&args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(first.try_wait().unwrap().is_none(), "round {round}: exited");
            assert!(
                std::time::Instant::now() < deadline,
                "round {round}: not up"
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        let mut fio = std::process::Command::new("fio")
            .args([
                "--name=load",
                "--ioengine=nbd",
                "--rw=randwrite",
                "--bs=64k",
                "--iodepth=32",
                "--size=30M",
                "--time_based",
                "--runtime=30",
            ])
            .arg(format!("--uri=nbd://127.0.0.1:{port}/vol0"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        // Writes in flight: the status counters move.
        let written = |st: &serde_json::Value| st["volumes"][0]["io"]["writes"].to_string();
        let before = written(&status_json(&ctl));
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while written(&status_json(&ctl)) == before {
            assert!(
                std::time::Instant::now() < deadline,
                "round {round}: no I/O"
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        }

        // Act: SIGKILL, and start again at once on the same socket path.
        sigkill_no_wait(&first);
        let second = Server::start(&args);

        // Assert (Server::start panics if it exits early)
        assert_eq!(status_json(&ctl)["volumes"][0]["name"], "vol0");
        let _ = fio.kill();
        let _ = fio.wait();
        let _ = first.wait();
        second.stop();
    }
}

#[test]
fn a_file_behind_an_attached_loop_device_is_in_use_even_with_force() {
    // Arrange: ext4 in a file, attached to a loop device (as `mount -o loop`
    // does); a daemon to add it to.
    let dir = scratch_dir("redteam-loop-backing");
    let members = member_paths(dir.path(), 2);
    create_array(1, "64K", "32M", "vol0", &members);
    let ctl = dir.path().join("ctl.sock");
    let mut args = vec!["--control", ctl.to_str().unwrap()];
    args.extend(members.iter().map(|m| m.to_str().unwrap()));
    let _server = Server::start(&args);
    let img = dir.path().join("disk.img");
    sparse(&img, 32 << 20);
    run_ok(
        std::process::Command::new("mkfs.ext4")
            .args(["-q", "-F"])
            .arg(&img),
    );
    let _loop = raid_tests::loop_dev::LoopDev::attach(&img, 0);
    let before = std::fs::read(&img).unwrap();
    let shown = img.to_str().unwrap();

    // Act + Assert
    refused(
        &vraid_ctl(&ctl, &["add", "vol0", shown, "--force"]),
        "in use",
        "add --force",
    );
    refused(
        &vraid_ctl(&ctl, &["replace", "vol0", "1", shown, "--force"]),
        "in use",
        "replace --force",
    );
    let other = dir.path().join("other.img");
    refused(
        &vraid(&["create", "--force", "--level", "1", "--member-size", "32M"])
            .arg(&img)
            .arg(&other)
            .output()
            .unwrap(),
        "in use",
        "create --force",
    );
    let out = vraid(&["examine", "--json"]).arg(&img).output().unwrap();
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["in_use_elsewhere"], true, "{report}");
    assert!(std::fs::read(&img).unwrap() == before, "disk.img changed");
}

#[test]
fn a_disk_image_qemu_has_open_is_in_use_even_with_force() {
    // Arrange: qemu-io holds a raw image open (qemu's image locking: OFD
    // byte-range locks), as a running VM holds its disk.
    let dir = scratch_dir("redteam-qemu-locked");
    let members = member_paths(dir.path(), 2);
    create_array(1, "64K", "32M", "vol0", &members);
    let ctl = dir.path().join("ctl.sock");
    let mut args = vec!["--control", ctl.to_str().unwrap()];
    args.extend(members.iter().map(|m| m.to_str().unwrap()));
    let _server = Server::start(&args);
    let img = dir.path().join("vm.img");
    sparse(&img, 32 << 20);
    run_ok(
        std::process::Command::new("mkfs.ext4")
            .args(["-q", "-F"])
            .arg(&img),
    );
    let mut qemu = std::process::Command::new("qemu-io")
        .args(["-f", "raw"])
        .arg(&img)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Poll /proc/locks until qemu-io holds its locks.
    let ino = std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(&img).unwrap());
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !std::fs::read_to_string("/proc/locks")
        .unwrap()
        .lines()
        .any(|l| l.contains("OFDLCK") && l.contains(&format!(":{ino} ")))
    {
        assert!(std::time::Instant::now() < deadline, "qemu-io took no lock");
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    let before = std::fs::read(&img).unwrap();
    let shown = img.to_str().unwrap();

    // Act
    let add = vraid_ctl(&ctl, &["add", "vol0", shown, "--force"]);
    let replace = vraid_ctl(&ctl, &["replace", "vol0", "1", shown, "--force"]);
    let out = vraid(&["examine", "--json"]).arg(&img).output().unwrap();
    drop(qemu.stdin.take());
    let _ = qemu.kill();
    let _ = qemu.wait();

    // Assert
    refused(&add, "in use", "add --force");
    refused(&replace, "in use", "replace --force");
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["in_use_elsewhere"], true, "{report}");
    assert!(std::fs::read(&img).unwrap() == before, "vm.img changed");
}

/// An active swap file, swapped off when dropped.
struct SwapOn(PathBuf);

impl Drop for SwapOn {
    fn drop(&mut self) {
        let _ = std::process::Command::new("swapoff").arg(&self.0).status();
    }
}

#[test]
fn an_active_swap_file_is_in_use_even_with_force() {
    // Arrange: a swap file in use by the kernel (under a name with a space).
    let dir = scratch_dir("redteam-swapon");
    let members = member_paths(dir.path(), 2);
    create_array(1, "64K", "32M", "vol0", &members);
    let ctl = dir.path().join("ctl.sock");
    let mut args = vec!["--control", ctl.to_str().unwrap()];
    args.extend(members.iter().map(|m| m.to_str().unwrap()));
    let _server = Server::start(&args);
    let img = dir.path().join("swap file.img");
    std::fs::write(&img, vec![0u8; 32 << 20]).unwrap();
    std::fs::set_permissions(&img, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    run_ok(std::process::Command::new("mkswap").arg(&img));
    run_ok(std::process::Command::new("swapon").arg(&img));
    let _swap = SwapOn(img.clone());
    let shown = img.to_str().unwrap();

    // Act + Assert: refused as in use, not "added as a hot spare" that
    // can never be written (ETXTBSY).
    refused(
        &vraid_ctl(&ctl, &["add", "vol0", shown, "--force"]),
        "in use",
        "add --force",
    );
    let status = status_json(&ctl);
    assert_eq!(
        status["volumes"][0]["spares"],
        serde_json::json!([]),
        "{status}"
    );
    let out = vraid(&["examine", "--json"]).arg(&img).output().unwrap();
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["in_use_elsewhere"], true, "{report}");
}
