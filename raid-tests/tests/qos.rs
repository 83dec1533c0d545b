//! Per-volume QoS seen by a real client: fio over NBD against a volume
//! with an IOPS limit stays near it (never far above, never starved),
//! `vraid set` changes and removes limits live, a bytes limit holds, the
//! config's `[volume.qos]` applies at start-up, and `status` (text and
//! JSON) and the metrics count what was held.

use std::path::{Path, PathBuf};
use std::process::Command;

use raid_tests::*;
use serde_json::Value;

/// A RAID-1 of two sparse 64M members, served with a control socket.
struct Vol {
    _dir: tempfile::TempDir,
    control: PathBuf,
    server: Server,
}

fn serve_vol(test: &str, config_qos: Option<&str>, extra: &[&str]) -> Vol {
    let dir = scratch_dir(test);
    let paths = member_paths(dir.path(), 2);
    create_array(1, "64K", "64M", "vol0", &paths);
    let control = dir.path().join("control.sock");
    let config = dir.path().join("vraid.toml");
    std::fs::write(
        &config,
        format!(
            "[[volume]]\nname = \"vol0\"\nlevel = 1\nmembers = [{:?}, {:?}]\n{}",
            paths[0],
            paths[1],
            config_qos.unwrap_or("")
        ),
    )
    .unwrap();
    let mut args = vec![
        "--config",
        config.to_str().unwrap(),
        "--control",
        control.to_str().unwrap(),
    ];
    args.extend(extra);
    let server = Server::start(&args);
    Vol {
        _dir: dir,
        control,
        server,
    }
}

/// fio over NBD for `secs` seconds; returns its job's JSON (`read` or
/// `write` part by `rw`).
fn fio(uri: &str, rw: &str, bs: &str, depth: u32, secs: u32) -> Value {
    let out = run_ok(Command::new("fio").args([
        "--name=qos",
        "--ioengine=nbd",
        &format!("--uri={uri}"),
        &format!("--rw={rw}"),
        &format!("--bs={bs}"),
        &format!("--iodepth={depth}"),
        "--size=32M",
        "--time_based=1",
        &format!("--runtime={secs}"),
        "--output-format=json",
    ]));
    let v: Value = serde_json::from_str(&out[out.find('{').unwrap()..]).unwrap();
    let job = v["jobs"][0].clone();
    assert_eq!(job["error"], 0, "fio failed: {job}");
    job
}

fn qos(control: &Path) -> Value {
    volume_status(control, "vol0")["qos"].clone()
}

fn assert_near(what: &str, measured: f64, limit: f64) {
    assert!(
        measured <= 1.2 * limit && measured > 0.5 * limit,
        "{what}: {measured:.0} against a limit of {limit:.0}"
    );
}

#[test]
fn an_iops_limit_holds_and_vraid_set_changes_it_live() {
    let v = serve_vol("qos-iops", None, &[]);
    let uri = v.server.uri("vol0");

    vraid_ctl_ok(&v.control, &["set", "vol0", "--iops", "200"]);
    let at_200 = fio(&uri, "randread", "4k", 16, 4)["read"]["iops"]
        .as_f64()
        .unwrap();
    let out = vraid_ctl_ok(&v.control, &["set", "vol0", "--iops", "600"]);
    let at_600 = fio(&uri, "randread", "4k", 16, 4)["read"]["iops"]
        .as_f64()
        .unwrap();

    assert!(out.contains("iops 600"), "{out}");
    assert_near("randread at --iops 200", at_200, 200.0);
    assert_near("randread at --iops 600", at_600, 600.0);
    let q = qos(&v.control);
    assert_eq!(q["limits"]["iops"], 600, "{q}");
    assert!(q["throttled_requests"].as_u64().unwrap() > 100, "{q}");
    assert!(q["throttled_us"].as_u64().unwrap() > 0, "{q}");
    let text = vraid_ctl_ok(&v.control, &["status"]);
    assert!(text.contains("qos: iops 600"), "{text}");

    vraid_ctl_ok(&v.control, &["set", "vol0", "--iops", "none"]);
    assert_eq!(qos(&v.control)["limits"]["iops"], 0);
}

#[test]
fn a_write_bytes_limit_holds_and_leaves_reads_alone() {
    let v = serve_vol("qos-bps", None, &[]);
    let uri = v.server.uri("vol0");
    vraid_ctl_ok(
        &v.control,
        &["set", "vol0", "--write-bps", "2M", "--burst", "50ms"],
    );

    let writes = fio(&uri, "randwrite", "64k", 8, 4)["write"]["bw_bytes"]
        .as_f64()
        .unwrap();
    let reads = fio(&uri, "randread", "64k", 8, 2)["read"]["bw_bytes"]
        .as_f64()
        .unwrap();

    assert_near("randwrite at --write-bps 2M", writes, 2.0 * 1048576.0);
    assert!(
        reads > 4.0 * 2.0 * 1048576.0,
        "reads held by a write limit: {reads:.0} B/s"
    );
    let q = qos(&v.control);
    assert_eq!(q["limits"]["write_bps"], 2 << 20, "{q}");
    assert_eq!(q["limits"]["burst_ms"], 50, "{q}");
}

#[test]
fn config_limits_apply_at_start_and_show_in_the_metrics() {
    let metrics = format!("127.0.0.1:{}", free_port());
    let v = serve_vol(
        "qos-config",
        Some("[volume.qos]\nread_iops = 300\n"),
        &["--metrics", &metrics],
    );
    let uri = v.server.uri("vol0");

    let iops = fio(&uri, "randread", "4k", 8, 3)["read"]["iops"]
        .as_f64()
        .unwrap();

    assert_near("randread at read_iops = 300", iops, 300.0);
    let q = qos(&v.control);
    assert_eq!(q["limits"]["read_iops"], 300, "{q}");
    assert_eq!(q["waiting"], 0, "{q}");
    let text = scrape(&metrics);
    let held = text
        .lines()
        .find(|l| l.starts_with("vraid_volume_qos_throttled_requests"))
        .unwrap_or_else(|| panic!("no QoS series in:\n{text}"));
    let n: f64 = held.rsplit(' ').next().unwrap().parse().unwrap();
    assert!(n > 100.0, "{held}");
    // Every admitted request gave its place in flight back.
    assert_eq!(q["in_flight"], 0, "{q}");
    // The QoS waits are in the volume's latency: 8 requests in flight at
    // 300 a second spend 8/300 s (27 ms) each, nearly all of it waiting
    // for admission (the device answers in well under a millisecond).
    let series = |name: &str| -> f64 {
        let key = format!(r#"vraid_volume_latency_seconds_{name}{{volume="vol0",op="read"}} "#);
        let line = text.lines().find(|l| l.starts_with(&key));
        let line = line.unwrap_or_else(|| panic!("no {key} in:\n{text}"));
        line[key.len()..].parse().unwrap()
    };
    let mean = series("sum") / series("count");
    assert!(
        mean > 0.005,
        "mean read latency {mean} s leaves out the QoS wait"
    );
}
