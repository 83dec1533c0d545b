//! Red-team tests of pools (issue 11) against the real `vraid` binary:
//! damaged pool metadata on one array while others serve, volumes of two
//! pools that share a name, and SIGKILL during volume management under
//! client writes (no flushed write lost, `vraid pool check` clean).

use std::path::{Path, PathBuf};
use std::time::Duration;

use raid_tests::{
    create_array, examine, member_paths, qemu_io, qemu_io_command, qemu_io_try, scratch_dir,
    vraid_ctl, vraid_ctl_ok, Server,
};

fn serve(control: &Path, members: &[PathBuf]) -> Server {
    let mut args = vec!["--control".to_string(), control.display().to_string()];
    args.extend(members.iter().map(|m| m.display().to_string()));
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    Server::start(&refs)
}

/// Serves several RAID-1 arrays through a config file (`extra`: more
/// keys for every array).
fn serve_mirrors(control: &Path, dir: &Path, arrays: &[(&str, &[PathBuf])], extra: &str) -> Server {
    let mut config = String::new();
    for (name, members) in arrays {
        let list: Vec<String> = members.iter().map(|p| format!("{p:?}")).collect();
        config += &format!(
            "[[volume]]\nname = \"{name}\"\nlevel = 1\nmembers = [{}]\n{extra}",
            list.join(", ")
        );
    }
    let path = dir.join("arrays.toml");
    std::fs::write(&path, config).unwrap();
    let args = ["--config", path.to_str().unwrap(), "--control"];
    let mut args: Vec<&str> = args.to_vec();
    args.push(control.to_str().unwrap());
    Server::start(&args)
}

fn write_flushed(uri: &str, pattern: u8, at: u64, len: u64) {
    qemu_io(
        uri,
        &[
            format!("write -P {pattern} {at} {len}"),
            "flush".to_string(),
        ],
    );
}

fn holds(uri: &str, pattern: u8, at: u64, len: u64) -> bool {
    let (ok, out) = qemu_io_try(uri, &[format!("read -P {pattern} {at} {len}")]);
    ok && !out.contains("Pattern verification failed")
}

/// Flips byte `at` of the array (a RAID-1: every member holds it) on
/// every member file, the daemon stopped.
fn flip_on_every_member(members: &[PathBuf], at: u64) {
    for m in members {
        let off = examine(m)["data_offset"].as_u64().unwrap() + at;
        raid_tests::flip_byte(m, off);
    }
}

/// Break: a pool whose two header copies were both damaged (magic intact)
/// was taken for "no pool": the daemon exported the raw array, so any
/// client could write over the pool. And any pool that failed to open
/// stopped the whole daemon, the healthy arrays with it. Now the damaged
/// pool's array and volumes are not exported, `vraid pool check` names
/// what is wrong, and the other arrays serve.
#[test]
fn damaged_pool_headers_are_refused_and_the_other_arrays_serve_on() {
    let dir = scratch_dir("redteam-pool-damaged-header");
    let ctl = dir.path().join("ctl.sock");
    let all = member_paths(dir.path(), 4);
    create_array(1, "64K", "64M", "p", &all[..2]);
    create_array(1, "64K", "64M", "plain", &all[2..]);
    let arrays = [("p", &all[..2]), ("plain", &all[2..])];
    let server = serve_mirrors(&ctl, dir.path(), &arrays, "");
    vraid_ctl_ok(&ctl, &["pool", "create", "p"]);
    vraid_ctl_ok(&ctl, &["volume", "create", "p", "v", "--size", "8M"]);
    write_flushed(&server.uri("v"), 0x5a, 0, 65536);
    write_flushed(&server.uri("plain"), 0xa5, 0, 65536);
    assert_eq!(server.stop(), 0);

    flip_on_every_member(&all[..2], 40);
    flip_on_every_member(&all[..2], 4096 + 40);

    // Checksums off: the damage reaches the pool's own checks (with them
    // on, the array's checksums refuse the blocks first: EIO, also left
    // out without stopping the daemon).
    let server = serve_mirrors(&ctl, dir.path(), &arrays, "checksums = false\n");
    assert!(holds(&server.uri("plain"), 0xa5, 0, 65536));
    let (raw, out) = qemu_io_try(&server.uri("p"), &["read 0 4k"]);
    assert!(!raw, "the damaged pool's array is exported raw:\n{out}");
    let (vol, out) = qemu_io_try(&server.uri("v"), &["read 0 4k"]);
    assert!(!vol, "a volume of the damaged pool is exported:\n{out}");
    let check = vraid_ctl(&ctl, &["pool", "check", "p"]);
    let text = String::from_utf8_lossy(&check.stderr).to_string()
        + &String::from_utf8_lossy(&check.stdout);
    assert!(!check.status.success(), "{text}");
    assert!(text.contains("pool header"), "{text}");
}

/// Break: two pools laid by different daemons may both hold a volume
/// "vm"; a daemon serving both arrays exported the second pool's "vm"
/// over the first's, while `vraid volume ...` acted on the first: a
/// `volume delete vm` deleted a volume nobody was using and kept the one
/// under the client. Now the first pool's "vm" is the export and the
/// target of management, the other is left out and logged.
#[test]
fn same_volume_name_in_two_pools_is_exported_once_and_means_one_volume() {
    let dir = scratch_dir("redteam-pool-same-name");
    let ctl = dir.path().join("ctl.sock");
    let all = member_paths(dir.path(), 4);
    create_array(1, "64K", "64M", "a1", &all[..2]);
    create_array(1, "64K", "64M", "b2", &all[2..]);
    for (members, pattern) in [(&all[..2], 0x11u8), (&all[2..], 0x22)] {
        let server = serve(&ctl, members);
        let pool = if pattern == 0x11 { "a1" } else { "b2" };
        vraid_ctl_ok(&ctl, &["pool", "create", pool]);
        vraid_ctl_ok(&ctl, &["volume", "create", pool, "vm", "--size", "8M"]);
        write_flushed(&server.uri("vm"), pattern, 0, 65536);
        assert_eq!(server.stop(), 0);
    }
    let server = serve_mirrors(
        &ctl,
        dir.path(),
        &[("a1", &all[..2]), ("b2", &all[2..])],
        "",
    );
    server.wait_log("volume not exported", Duration::from_secs(10));
    let list = vraid_ctl_ok(&ctl, &["pool", "list", "--json"]);
    let pools: serde_json::Value = serde_json::from_str(&list).unwrap();
    let first = pools[0]["pool"].as_str().unwrap().to_string();
    let want = if first == "a1" { 0x11 } else { 0x22 };
    assert!(
        holds(&server.uri("vm"), want, 0, 65536),
        "export vm is not pool {first}'s volume"
    );
    vraid_ctl_ok(&ctl, &["volume", "delete", "vm"]);
    let (served, out) = qemu_io_try(&server.uri("vm"), &["read 0 4k"]);
    assert!(!served, "vm still exported after its delete:\n{out}");
}

/// SIGKILL at varied moments of snapshot / clone / create / delete /
/// resize while a client writes to another volume: after each restart
/// every flushed write is there and `vraid pool check` is clean.
#[test]
fn sigkill_during_volume_management_under_writes_loses_no_flushed_write() {
    let dir = scratch_dir("redteam-pool-sigkill");
    let ctl = dir.path().join("ctl.sock");
    let members = member_paths(dir.path(), 3);
    create_array(5, "64K", "64M", "r5", &members);
    let server = serve(&ctl, &members);
    vraid_ctl_ok(&ctl, &["pool", "create", "r5", "--cluster-size", "64K"]);
    vraid_ctl_ok(&ctl, &["volume", "create", "r5", "keep", "--size", "16M"]);
    vraid_ctl_ok(&ctl, &["volume", "create", "r5", "load", "--size", "16M"]);
    let mut server = Some(server);
    for round in 0..8u64 {
        let s = server.take().unwrap();
        write_flushed(&s.uri("keep"), round as u8 + 1, round * 131072 + 512, 70000);
        let load: Vec<String> = (0..64)
            .map(|k| format!("write -P {k} {} 65536", (k * 37 % 256) * 65536))
            .collect();
        let mut writer = qemu_io_command(&s.uri("load"), &load)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let ops: [&[&str]; 5] = [
            &["volume", "snapshot", "load", &format!("s{round}")],
            &["volume", "clone", "keep", &format!("c{round}")],
            &[
                "volume",
                "resize",
                "load",
                "--size",
                &format!("{}M", 16 + round),
            ],
            &[
                "volume",
                "create",
                "r5",
                &format!("n{round}"),
                "--size",
                "4M",
            ],
            &["volume", "delete", &format!("s{}", round.saturating_sub(1))],
        ];
        let mut ctl_cmds: Vec<std::process::Child> = ops
            .iter()
            .map(|op| {
                raid_tests::vraid(op)
                    .arg("--control")
                    .arg(&ctl)
                    .stdout(std::process::Stdio::null())
                    .stderr(std::process::Stdio::null())
                    .spawn()
                    .unwrap()
            })
            .collect();
        // The moment of the kill varies from round to round.
        std::thread::sleep(Duration::from_millis(5 + 17 * round));
        s.kill();
        let _ = writer.wait();
        ctl_cmds.iter_mut().for_each(|c| drop(c.wait()));

        let s = serve(&ctl, &members);
        let check = vraid_ctl(&ctl, &["pool", "check", "r5"]);
        assert!(
            check.status.success(),
            "round {round}: {}{}",
            String::from_utf8_lossy(&check.stdout),
            String::from_utf8_lossy(&check.stderr)
        );
        for r in 0..=round {
            assert!(
                holds(&s.uri("keep"), r as u8 + 1, r * 131072 + 512, 70000),
                "round {round}: flushed write of round {r} lost"
            );
        }
        server = Some(s);
    }
}
