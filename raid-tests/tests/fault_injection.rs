//! Live fault injection through `vraid fault` against the real daemon, with
//! real clients: read errors on a RAID-5 member under fio verify, corrupt,
//! delay, offline (one and then two RAID-5 members, with a second volume
//! that keeps serving), and faults set in the config at start-up.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use raid_tests::*;
use serde_json::Value;

fn args_with_control<'a>(paths: &'a [PathBuf], control: &'a Path) -> Vec<&'a str> {
    let mut args: Vec<&str> = paths.iter().map(|p| p.to_str().unwrap()).collect();
    args.extend(["--control", control.to_str().unwrap()]);
    args
}

fn faults(control: &Path) -> Vec<Value> {
    let out = vraid_ctl_ok(control, &["fault", "list", "--json"]);
    let v: Value = serde_json::from_str(&out).unwrap();
    v["faults"].as_array().unwrap().clone()
}

fn volume(control: &Path, name: &str) -> Value {
    let status = status_json(control);
    status["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == name)
        .unwrap()
        .clone()
}

#[test]
fn read_errors_on_a_raid5_member_are_invisible_to_fio_verify() {
    // Arrange
    let dir = scratch_dir("fi-r5-readerr");
    let paths = member_paths(dir.path(), 4);
    create_array(5, "64K", "64M", "vol0", &paths);
    let control = dir.path().join("control.sock");
    let server = Server::start(&args_with_control(&paths, &control));
    let uri = server.uri("vol0");

    // Act: 1% of reads on member 2 fail while fio writes and verifies.
    vraid_ctl_ok(
        &control,
        &[
            "fault",
            "add",
            "vol0",
            "2",
            "--kind",
            "error",
            "--op",
            "read",
            "--probability",
            "0.01",
        ],
    );
    let fio = fio_verify_cmd(&uri, "readerr", "48M", "0")
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn fio");
    assert_fio_clean(fio);
    // Read everything back once more (all reads go through the fault).
    let reverify = run_ok(fio_verify_cmd(&uri, "readerr", "48M", "0").arg("--verify_only"));

    // Assert
    assert!(reverify.contains("\"error\" : 0"), "{reverify}");
    let f = faults(&control);
    assert_eq!(f.len(), 1);
    assert!(f[0]["hits"].as_u64().unwrap() > 0, "{f:?}");
    let vol = volume(&control, "vol0");
    assert_eq!(vol["io"]["errors"], 0, "client saw errors: {vol}");
    assert!(
        vol["members"][2]["io"]["errors"].as_u64().unwrap() > 0,
        "{vol}"
    );
    assert_eq!(
        vol["state"], "optimal",
        "rare read errors do not fail the member"
    );
    assert_eq!(server.stop(), 0);
}

#[test]
fn corrupt_fault_on_raid0_alters_read_data_and_counts_hits() {
    // With per-block checksums off nothing detects corruption, so this
    // checks that the fault fires as specified: on RAID-0, reads of the
    // affected member range come back altered (tests/checksums.rs covers
    // the fault with checksums on).
    // Arrange
    let dir = scratch_dir("fi-corrupt");
    let paths = member_paths(dir.path(), 2);
    create_array(0, "64K", "16M", "stripe", &paths);
    let control = dir.path().join("control.sock");
    let mut args = args_with_control(&paths, &control);
    args.push("--no-checksums");
    let server = Server::start(&args);
    let uri = server.uri("stripe");
    qemu_io(&uri, &["write -P 0x33 0 256K".into(), "flush".into()]);

    // Act: corrupt reads of member 0's first 4 KiB (= volume bytes 0..4K).
    vraid_ctl_ok(
        &control,
        &[
            "fault",
            "add",
            "stripe",
            paths[0].to_str().unwrap(),
            "--kind",
            "corrupt",
            "--op",
            "read",
            "--offset",
            "0",
            "--length",
            "4K",
        ],
    );
    let (ok_plain, text) = qemu_io_try(&uri, &["read -P 0x33 0 4K"]);
    let (ok_flipped, _) = qemu_io_try(&uri, &["read -P 0xcc 0 4K"]);
    let (ok_outside, _) = qemu_io_try(&uri, &["read -P 0x33 4K 124K"]);

    // Assert
    assert!(!ok_plain, "corrupted read matched the original:\n{text}");
    assert!(ok_flipped, "the fault flips every byte of its range");
    assert!(ok_outside, "bytes outside the range are untouched");
    let f = faults(&control);
    assert!(f[0]["hits"].as_u64().unwrap() >= 2, "{f:?}");
    vraid_ctl_ok(&control, &["fault", "clear"]);
    qemu_io(&uri, &["read -P 0x33 0 256K".into()]);
    assert_eq!(server.stop(), 0);
}

#[test]
fn delay_fault_makes_io_slower_but_correct() {
    // Arrange
    let dir = scratch_dir("fi-delay");
    let paths = member_paths(dir.path(), 2);
    create_array(0, "64K", "16M", "stripe", &paths);
    let control = dir.path().join("control.sock");
    let server = Server::start(&args_with_control(&paths, &control));
    let uri = server.uri("stripe");
    qemu_io(&uri, &["write -P 0x44 0 64K".into(), "flush".into()]);
    let reads: Vec<String> = (0..10)
        .map(|i| format!("read -P 0x44 {} 4K", i * 4096))
        .collect();
    let start = Instant::now();
    qemu_io(&uri, &reads);
    let fast = start.elapsed();

    // Act: 100 ms on every read of member 0 (volume 0..64K lives there).
    vraid_ctl_ok(
        &control,
        &[
            "fault", "add", "stripe", "0", "--kind", "delay", "--op", "read", "--delay", "100ms",
        ],
    );
    let start = Instant::now();
    qemu_io(&uri, &reads);
    let slow = start.elapsed();

    // Assert
    assert!(
        slow >= Duration::from_secs(1),
        "10 delayed reads took {slow:?}"
    );
    assert!(
        slow > fast + Duration::from_millis(800),
        "{fast:?} -> {slow:?}"
    );
    assert_eq!(faults(&control)[0]["hits"], 10);
    assert_eq!(volume(&control, "stripe")["io"]["errors"], 0);
    assert_eq!(server.stop(), 0);
}

fn list(paths: &[PathBuf]) -> String {
    paths
        .iter()
        .map(|p| format!("{:?}", p.to_str().unwrap()))
        .collect::<Vec<_>>()
        .join(", ")
}

#[test]
fn offline_members_degrade_then_fail_raid5_while_other_volume_serves() {
    // Arrange: RAID-5 `parity` (4 members, chunk 64K) and RAID-1 `other`.
    let dir = scratch_dir("fi-offline");
    let parity = member_paths(dir.path(), 4);
    let other: Vec<PathBuf> = (0..2)
        .map(|i| dir.path().join(format!("o{i}.img")))
        .collect();
    create_array(5, "64K", "64M", "parity", &parity);
    create_array(1, "64K", "16M", "other", &other);
    let control = dir.path().join("control.sock");
    let config = dir.path().join("vraid.toml");
    std::fs::write(
        &config,
        format!(
            "[server]\ncontrol = {:?}\n[[volume]]\nname = \"parity\"\nlevel = 5\nmembers = [{}]\n[[volume]]\nname = \"other\"\nlevel = 1\nmembers = [{}]\n",
            control.to_str().unwrap(),
            list(&parity),
            list(&other)
        ),
    )
    .unwrap();
    let server = Server::start(&["--config", config.to_str().unwrap()]);
    let uri = server.uri("parity");
    // Stripe 0 (left-symmetric): data chunks on members 0, 1, 2; parity on 3.
    qemu_io(&uri, &["write -P 0x51 0 192K".into(), "flush".into()]);

    // Act 1: member 1 goes offline during fio verify.
    let mut fio = fio_verify_cmd(&uri, "offline", "48M", "16M")
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn fio");
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        fio.try_wait().unwrap().is_none(),
        "fio ended before the fault"
    );
    vraid_ctl_ok(
        &control,
        &["fault", "add", "parity", "1", "--kind", "offline"],
    );
    assert_fio_clean(fio);

    // Assert 1: client unaffected, volume degraded, data readable.
    qemu_io(&uri, &["read -P 0x51 0 192K".into()]);
    let vol = volume(&control, "parity");
    assert_eq!(vol["state"], "degraded", "{vol}");
    assert_eq!(vol["members"][1]["state"], "failed");
    assert_eq!(vol["io"]["errors"], 0);

    // Act 2: a second member (2) goes offline.
    vraid_ctl_ok(
        &control,
        &[
            "fault",
            "add",
            "parity",
            parity[2].to_str().unwrap(),
            "--kind",
            "offline",
        ],
    );
    let (ok_m0, text_m0) = qemu_io_try(&uri, &["read -P 0x51 0 64K"]);
    let (ok_m1, text_m1) = qemu_io_try(&uri, &["read -P 0x51 64K 64K"]);
    let (ok_m2, text_m2) = qemu_io_try(&uri, &["read -P 0x51 128K 64K"]);

    // Assert 2: only requests needing lost data fail; everything else serves.
    assert!(ok_m0, "chunk on surviving member 0 must read:\n{text_m0}");
    assert!(
        !ok_m1 && text_m1.contains("Input/output error"),
        "{text_m1}"
    );
    assert!(
        !ok_m2 && text_m2.contains("Input/output error"),
        "{text_m2}"
    );
    let vol = volume(&control, "parity");
    assert_eq!(vol["state"], "failed", "{vol}");
    assert!(vol["io"]["errors"].as_u64().unwrap() >= 2);
    qemu_io(
        &server.uri("other"),
        &["write -P 0x77 0 1M".into(), "read -P 0x77 0 1M".into()],
    );
    let status = status_json(&control);
    let kinds: Vec<&str> = status["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["kind"].as_str().unwrap())
        .collect();
    assert!(
        kinds.contains(&"degraded") && kinds.contains(&"failed"),
        "{kinds:?}"
    );
    assert_eq!(server.stop(), 0);
}

#[test]
fn faults_from_the_config_are_active_at_start_up() {
    // Arrange: member 0 of a mirror fails every read from the start.
    let dir = scratch_dir("fi-config");
    let paths = member_paths(dir.path(), 2);
    create_array(1, "64K", "16M", "mirror", &paths);
    let control = dir.path().join("control.sock");
    let metrics = format!("127.0.0.1:{}", free_port());
    let config = dir.path().join("vraid.toml");
    std::fs::write(
        &config,
        format!(
            "[server]\ncontrol = {:?}\nmetrics = {metrics:?}\n[[volume]]\nname = \"mirror\"\nlevel = 1\nmembers = [{}]\n[[volume.fault]]\nmember = {:?}\nkind = \"delay\"\nop = \"write\"\ndelay = \"1ms\"\n[[volume.fault]]\nmember = 0\nkind = \"error\"\nop = \"read\"\ncount = 3\n",
            control.to_str().unwrap(),
            list(&paths),
            paths[1].to_str().unwrap()
        ),
    )
    .unwrap();

    // Act
    let server = Server::start(&["--config", config.to_str().unwrap()]);
    let before = faults(&control);
    let uri = server.uri("mirror");
    qemu_io(&uri, &["write -P 0x21 0 256K".into(), "flush".into()]);
    for _ in 0..4 {
        qemu_io(
            &uri,
            &["read -P 0x21 0 64K".into(), "read -P 0x21 64K 64K".into()],
        );
    }

    // Assert
    assert_eq!(before.len(), 2, "{before:?}");
    assert_eq!(before[0]["kind"], "error");
    assert_eq!(before[0]["member"], 0);
    assert_eq!(before[1]["kind"], "delay");
    assert_eq!(before[1]["delay_us"], 1000);
    let after = faults(&control);
    assert_eq!(after[0]["hits"], 3, "count expires the rule: {after:?}");
    assert_eq!(after[0]["active"], false);
    assert!(after[1]["hits"].as_u64().unwrap() >= 1);
    let vol = volume(&control, "mirror");
    assert_eq!(vol["io"]["errors"], 0);
    let log = server.log();
    assert!(log.contains("fault_added"), "{log}");
    assert_eq!(server.stop(), 0);
}
