//! Pools (issue 11) against the real daemon and real clients: `vraid pool`
//! / `vraid volume` verbs, each volume its own NBD export (qemu-io,
//! nbdinfo, fio verify on four volumes of one RAID-5 pool at once),
//! snapshots and clones, a full pool, restarts, and a SIGKILL loop under
//! fio load with snapshots, clones, deletes, reverts and shrinks, each
//! followed by `vraid pool check`.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use raid_tests::*;

/// A RAID-5 array `vol0` of three members of `member_size`, served with a
/// control socket of its own.
fn raid5_server(dir: &Path, member_size: &str) -> (Server, PathBuf, Vec<String>) {
    let paths = member_paths(dir, 3);
    create_array(5, "64K", member_size, "vol0", &paths);
    let control = dir.join("control.sock");
    let mut args: Vec<String> = paths
        .iter()
        .map(|p| p.to_str().unwrap().to_string())
        .collect();
    args.extend([
        "--control".to_string(),
        control.to_str().unwrap().to_string(),
    ]);
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    (Server::start(&refs), control, args)
}

fn start(args: &[String]) -> Server {
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    Server::start(&refs)
}

/// qemu-io on a read-only export (a snapshot), panicking unless it succeeds.
fn qemu_io_ro(uri: &str, cmds: &[&str]) -> String {
    let mut c = Command::new("qemu-io");
    c.args(["-r", "-f", "raw"]);
    for cmd in cmds {
        c.args(["-c", cmd]);
    }
    c.arg(uri);
    run_ok(c)
}

fn pool_json(control: &Path) -> serde_json::Value {
    let out = vraid_ctl_ok(control, &["pool", "list", "--json"]);
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("pool list JSON: {e}\n{out}"))
}

#[test]
fn pool_volumes_are_nbd_exports_with_holes_snapshots_and_clones_across_restarts() {
    // Arrange
    let dir = scratch_dir("pool-basic");
    let (server, control, args) = raid5_server(dir.path(), "128M");
    vraid_ctl_ok(
        &control,
        &["pool", "create", "vol0", "--cluster-size", "1M"],
    );
    vraid_ctl_ok(
        &control,
        &["volume", "create", "vol0", "a", "--size", "64M"],
    );
    vraid_ctl_ok(
        &control,
        &["volume", "create", "vol0", "b", "--size", "32M"],
    );

    // Act
    qemu_io(
        &server.uri("a"),
        &["write -P 0x11 1M 64k".into(), "flush".into()],
    );
    vraid_ctl_ok(&control, &["volume", "snapshot", "a", "snap"]);
    qemu_io(&server.uri("a"), &["write -P 0x22 1M 4k".into()]);
    vraid_ctl_ok(&control, &["volume", "clone", "snap", "c"]);
    qemu_io(&server.uri("c"), &["write -P 0x33 1M 4k".into()]);
    let list = run_ok(Command::new("nbdinfo").args(["--list", &format!("nbd://{}", server.addr)]));

    // Assert
    for name in ["a", "b", "snap", "c"] {
        assert!(
            list.contains(&format!("export=\"{name}\"")),
            "{name} not listed:\n{list}"
        );
    }
    assert!(list.contains("thin volume in pool vol0"), "{list}");
    assert!(
        !list.contains("export=\"vol0\""),
        "the pooled array must not be exported:\n{list}"
    );
    qemu_io_ro(&server.uri("snap"), &["read -P 0x11 1M 64k"]);
    qemu_io(
        &server.uri("a"),
        &[
            "read -P 0x22 1M 4k".into(),
            "read -P 0x11 1052672 60k".into(),
            "read -P 0 0 1M".into(),
        ],
    );
    qemu_io(
        &server.uri("c"),
        &[
            "read -P 0x33 1M 4k".into(),
            "read -P 0x11 1052672 60k".into(),
        ],
    );
    let (ok, out) = qemu_io_try(&server.uri("snap"), &["write -P 0x44 0 4k"]);
    assert!(
        !ok || out.contains("failed") || out.contains("read-only"),
        "a snapshot took a write: {out}"
    );
    let pools = pool_json(&control);
    let space = &pools[0]["space"];
    assert!(space["used_bytes"].as_u64().unwrap() >= 2 << 20, "{pools}");
    assert_eq!(
        space["provisioned_bytes"].as_u64().unwrap(),
        (64 + 32 + 64) << 20,
        "{pools}"
    );
    let status = status_json(&control);
    assert_eq!(status["pools"][0]["space"], pools[0]["space"], "{status}");
    let text = vraid_ctl_ok(&control, &["status"]);
    assert!(
        text.contains("pool vol0: version 2, cluster 1024 KiB")
            && text.contains("snap: snapshot of a"),
        "{text}"
    );
    vraid_ctl_ok(&control, &["volume", "resize", "b", "--size", "48M"]);
    vraid_ctl_ok(&control, &["volume", "rename", "b", "bee"]);
    assert_eq!(server.stop(), 0);

    // Restart: the pool, its volumes and their bytes are back.
    let server = start(&args);
    qemu_io_ro(&server.uri("snap"), &["read -P 0x11 1M 64k"]);
    qemu_io(&server.uri("c"), &["read -P 0x33 1M 4k".into()]);
    let info = run_ok(Command::new("nbdinfo").args(["--size", &server.uri("bee")]));
    assert_eq!(info.trim(), (48u64 << 20).to_string());
    let check = vraid_ctl_ok(&control, &["pool", "check", "vol0"]);
    assert!(check.contains("4 volumes"), "{check}");
    for name in ["a", "snap", "c", "bee"] {
        vraid_ctl_ok(&control, &["volume", "delete", name]);
    }
    let pools = pool_json(&control);
    assert_eq!(pools[0]["space"]["used_bytes"], 0, "{pools}");
    vraid_ctl_ok(&control, &["pool", "check", "vol0"]);
    assert_eq!(server.stop(), 0);
}

#[test]
fn fio_verify_on_four_volumes_of_one_raid5_pool_at_once() {
    // Arrange
    let dir = scratch_dir("pool-fio");
    let (server, control, _) = raid5_server(dir.path(), "128M");
    vraid_ctl_ok(
        &control,
        &["pool", "create", "vol0", "--cluster-size", "64K"],
    );
    for i in 0..4 {
        vraid_ctl_ok(
            &control,
            &[
                "volume",
                "create",
                "vol0",
                &format!("v{i}"),
                "--size",
                "32M",
            ],
        );
    }

    // Act
    let jobs: Vec<_> = (0..4)
        .map(|i| {
            fio_verify_cmd(&server.uri(&format!("v{i}")), &format!("v{i}"), "24M", "0")
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();

    // Assert
    for job in jobs {
        assert_fio_clean(job);
    }
    let check = vraid_ctl_ok(&control, &["pool", "check", "vol0"]);
    assert!(check.contains("4 volumes"), "{check}");
    assert_eq!(server.stop(), 0);
}

#[test]
fn full_pool_fails_only_the_write_that_needed_a_cluster() {
    // Arrange: a pool of ~90 MiB of data under a 1 GiB volume.
    let dir = scratch_dir("pool-full");
    let (server, control, _) = raid5_server(dir.path(), "64M");
    vraid_ctl_ok(
        &control,
        &["pool", "create", "vol0", "--cluster-size", "1M"],
    );
    vraid_ctl_ok(
        &control,
        &["volume", "create", "vol0", "big", "--size", "1G"],
    );
    vraid_ctl_ok(
        &control,
        &["volume", "create", "vol0", "small", "--size", "8M"],
    );
    qemu_io(&server.uri("small"), &["write -P 0x5 0 1M".into()]);

    // Act: fill big one cluster at a time until a write fails.
    let free = pool_json(&control)[0]["space"]["free_bytes"]
        .as_u64()
        .unwrap()
        >> 20;
    let cmds: Vec<String> = (0..free + 2)
        .map(|i| format!("write -P 0x7 {}M 4k", i))
        .collect();
    let (_, out) = qemu_io_try(&server.uri("big"), &cmds);

    // Assert
    assert!(out.contains("No space left on device"), "{out}");
    qemu_io(
        &server.uri("small"),
        &[
            "write -P 0x6 4k 4k".into(),
            "read -P 0x5 0 4k".into(),
            "read -P 0x6 4k 4k".into(),
        ],
    );
    qemu_io(
        &server.uri("big"),
        &["write -P 0x8 0 4k".into(), "read -P 0x8 0 4k".into()],
    );
    // Space freed is usable again.
    let again = vec![
        "discard 0 4M".to_string(),
        "flush".into(),
        format!("write -P 0x9 {}M 4k", free + 1),
    ];
    qemu_io(&server.uri("big"), &again);
    vraid_ctl_ok(&control, &["pool", "check", "vol0"]);
    assert_eq!(server.stop(), 0);
}

#[test]
fn sigkill_loop_under_fio_with_snapshots_and_deletes_keeps_the_pool_consistent() {
    // Arrange
    let dir = scratch_dir("pool-kill");
    let (server, control, args) = raid5_server(dir.path(), "128M");
    vraid_ctl_ok(
        &control,
        &["pool", "create", "vol0", "--cluster-size", "64K"],
    );
    vraid_ctl_ok(
        &control,
        &["volume", "create", "vol0", "w", "--size", "32M"],
    );
    vraid_ctl_ok(
        &control,
        &["volume", "create", "vol0", "marks", "--size", "1M"],
    );
    vraid_ctl_ok(&control, &["volume", "create", "vol0", "t", "--size", "8M"]);
    qemu_io(
        &server.uri("t"),
        &["write -P 7 0 8M".to_string(), "flush".to_string()],
    );
    let mut server = Some(server);
    let mut shrunk = false;
    for round in 0..20u64 {
        let s = server.take().unwrap();
        // Act: load, a flushed marker, then snapshot / clone / delete
        // racing a SIGKILL.
        let fio = Command::new("fio")
            .args([
                "--name=load",
                "--ioengine=nbd",
                "--rw=randwrite",
                "--bs=4k",
                "--iodepth=8",
            ])
            .args(["--size=32M", "--time_based", "--runtime=60", "--fsync=32"])
            // One process (the job a thread): the SIGKILL below ends all
            // of fio; a forked job worker would outlive its parent.
            .arg("--thread")
            .arg(format!("--uri={}", s.uri("w")))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mark = vec![
            format!("write -P {} {}k 4k", round + 1, round * 4),
            "flush".to_string(),
        ];
        qemu_io(&s.uri("marks"), &mark);
        vraid_ctl_ok(&control, &["volume", "snapshot", "w", &format!("s{round}")]);
        if round > 0 {
            vraid_ctl_ok(&control, &["volume", "delete", &format!("s{}", round - 1)]);
        }
        // Racing the kill: a clone, a revert of the loaded volume (forced:
        // fio is connected) and a shrink or grow of `t`.
        let t_size = if round % 2 == 0 { "4M" } else { "8M" };
        let snap = format!("s{round}");
        let clone = format!("c{round}");
        let racing: Vec<std::process::Child> = [
            vec!["volume", "clone", &snap, &clone],
            vec!["volume", "revert", "w", &snap, "--force"],
            vec!["volume", "resize", "t", "--size", t_size, "--force"],
        ]
        .iter()
        .map(|args| {
            let mut c = vraid(args);
            c.arg("--control").arg(&control);
            c.stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap()
        })
        .collect();
        // The kill lands at a moment varied by round: at once, after 20 ms
        // (the verbs part way), or once the verbs have returned.
        let mut racing = racing;
        match round % 3 {
            0 => {}
            1 => std::thread::sleep(std::time::Duration::from_millis(20)),
            _ => racing.iter_mut().for_each(|r| drop(r.wait())),
        }
        s.kill();
        for r in racing {
            let _ = r.wait_with_output();
        }
        let mut fio = fio;
        let _ = fio.kill();
        let _ = fio.wait();

        // Assert: the pool checks clean and every flushed marker is there.
        let s = start(&args);
        // Every round committed (the snapshot) since the last checkpoint.
        s.wait_log("pool journal replayed", std::time::Duration::from_secs(30));
        let check = vraid_ctl(&control, &["pool", "check", "vol0"]);
        assert!(
            check.status.success(),
            "round {round}: {}{}",
            String::from_utf8_lossy(&check.stdout),
            String::from_utf8_lossy(&check.stderr)
        );
        let reads: Vec<String> = (0..=round)
            .map(|r| format!("read -P {} {}k 4k", r + 1, r * 4))
            .collect();
        qemu_io(&s.uri("marks"), &reads);
        let t = run_ok(Command::new("nbdinfo").args(["--size", &s.uri("t")]));
        let t: u64 = t.trim().parse().unwrap();
        assert!(
            t == 4 << 20 || t == 8 << 20,
            "round {round}: t is {t} bytes"
        );
        qemu_io(&s.uri("t"), &["read -P 7 0 4M".to_string()]);
        if t == 8 << 20 {
            // Grown back after a shrink: the tail reads zero.
            let tail = if shrunk { 0 } else { 7 };
            qemu_io(&s.uri("t"), &[format!("read -P {tail} 4M 4M")]);
        }
        shrunk |= t == 4 << 20;
        eprintln!("round {round}: t is {} MiB", t >> 20);
        let _ = vraid_ctl(&control, &["volume", "delete", &format!("c{round}")]);
        server = Some(s);
    }
    assert!(shrunk, "no shrink of t survived a round");
    assert_eq!(server.take().unwrap().stop(), 0);
}

/// fio random reads over NBD for `secs` seconds; their IOPS.
fn fio_read_iops(uri: &str, secs: u32) -> f64 {
    let out = run_ok(Command::new("fio").args([
        "--name=poolqos",
        "--ioengine=nbd",
        &format!("--uri={uri}"),
        "--rw=randread",
        "--bs=4k",
        "--iodepth=16",
        "--size=16M",
        "--time_based=1",
        &format!("--runtime={secs}"),
        "--output-format=json",
    ]));
    let v: serde_json::Value = serde_json::from_str(&out[out.find('{').unwrap()..]).unwrap();
    let job = &v["jobs"][0];
    assert_eq!(job["error"], 0, "fio failed: {job}");
    job["read"]["iops"].as_f64().unwrap()
}

/// `nbdinfo --map --json`: (offset, length, type) per extent, merged.
fn nbdinfo_map(uri: &str) -> Vec<(u64, u64, u64)> {
    let out = run_ok(Command::new("nbdinfo").args(["--map", "--json", uri]));
    let v: serde_json::Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
    let mut map: Vec<(u64, u64, u64)> = Vec::new();
    for e in v.as_array().unwrap() {
        let n = |k: &str| e[k].as_u64().unwrap();
        match map.last_mut() {
            Some(last) if last.2 == n("type") => last.1 += n("length"),
            _ => map.push((n("offset"), n("length"), n("type"))),
        }
    }
    map
}

#[test]
fn a_pool_volume_has_its_own_qos_faults_and_block_status_through_its_client_stack() {
    // Arrange
    let dir = scratch_dir("pool-stack");
    let (server, control, _) = raid5_server(dir.path(), "128M");
    vraid_ctl_ok(
        &control,
        &["pool", "create", "vol0", "--cluster-size", "1M"],
    );
    for name in ["slow", "fast"] {
        vraid_ctl_ok(
            &control,
            &["volume", "create", "vol0", name, "--size", "16M"],
        );
    }
    qemu_io(
        &server.uri("fast"),
        &["write -P 0x5a 1M 64k".into(), "flush".into()],
    );

    // Act
    vraid_ctl_ok(&control, &["set", "slow", "--iops", "200"]);
    let slow = fio_read_iops(&server.uri("slow"), 3);
    let fast = fio_read_iops(&server.uri("fast"), 3);
    vraid_ctl_ok(&control, &["volume", "rename", "slow", "slower"]);
    let renamed = fio_read_iops(&server.uri("slower"), 3);
    let map = nbdinfo_map(&server.uri("fast"));
    vraid_ctl_ok(
        &control,
        &[
            "fault", "add", "fast", "--volume", "--kind", "error", "--op", "read",
        ],
    );
    let faulted = Command::new("qemu-io")
        .args(["-f", "raw", "-c", "read 0 4k", &server.uri("fast")])
        .output()
        .unwrap();
    let log = dir.path().join("fast.wlog");
    vraid_ctl_ok(&control, &["log", "start", "fast", log.to_str().unwrap()]);
    vraid_ctl_ok(&control, &["volume", "delete", "slower"]);
    let gone = vraid_ctl(&control, &["set", "slower", "--iops", "100"]);
    let array = vraid_ctl(&control, &["set", "vol0", "--iops", "100"]);

    // Assert
    assert!(
        slow <= 1.2 * 200.0 && slow > 0.5 * 200.0,
        "slow at --iops 200: {slow:.0}"
    );
    assert!(fast > 2.0 * 200.0, "fast is throttled: {fast:.0}");
    assert!(
        renamed <= 1.2 * 200.0 && renamed > 0.5 * 200.0,
        "the limit did not follow the rename: {renamed:.0}"
    );
    let mib = 1 << 20;
    assert_eq!(
        map,
        vec![(0, mib, 3), (mib, mib, 0), (2 * mib, 14 * mib, 3)],
        "nbdinfo --map of a pool volume"
    );
    let text = String::from_utf8_lossy(&faulted.stdout).to_string()
        + &String::from_utf8_lossy(&faulted.stderr);
    assert!(
        !faulted.status.success() || text.contains("read failed"),
        "read under a volume error rule: {text}"
    );
    assert!(log.exists(), "log start on a pool volume made no file");
    assert!(!gone.status.success(), "a deleted volume kept its stack");
    assert!(array.status.success(), "the array itself still answers set");
}
