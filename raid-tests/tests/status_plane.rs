//! The status plane against the real daemon: the keys of `vraid status
//! --json` (idle, during a rebuild, after a scrub) are the documented ones,
//! the text form shows the pass running, and a live `/metrics` declares
//! every metric the shipped Grafana dashboard queries.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use raid_tests::*;
use serde_json::Value;

/// The dashboard shipped in the repository.
const DASHBOARD: &str = include_str!("../../dashboards/vraid.json");

fn keys(v: &Value) -> BTreeSet<String> {
    v.as_object()
        .unwrap_or_else(|| panic!("not an object: {v}"))
        .keys()
        .cloned()
        .collect()
}

fn set(k: &[&str]) -> BTreeSet<String> {
    k.iter().map(|s| s.to_string()).collect()
}

/// The metric names an exposition declares (`# TYPE`), with the series
/// of its histograms.
fn declared(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for rest in text.lines().filter_map(|l| l.strip_prefix("# TYPE ")) {
        let (name, kind) = rest.split_once(' ').unwrap();
        names.insert(name.to_string());
        if kind == "histogram" {
            for suffix in ["_bucket", "_sum", "_count"] {
                names.insert(format!("{name}{suffix}"));
            }
        }
    }
    names
}

/// Every `vraid_…` word of the dashboard.
fn dashboard_metrics() -> BTreeSet<String> {
    let word = |c: char| c.is_ascii_alphanumeric() || c == '_';
    DASHBOARD
        .split(|c: char| !word(c))
        .filter(|w| w.starts_with("vraid_"))
        .map(str::to_string)
        .collect()
}

/// The one volume of a `status --json` reply.
fn vol0(control: &Path) -> Value {
    status_json(control)["volumes"][0].clone()
}

/// Polls `status` until `done` holds for vol0 (at most two minutes).
fn wait_for(control: &Path, what: &str, done: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let v = vol0(control);
        if done(&v) {
            return v;
        }
        assert!(Instant::now() < deadline, "no {what} after 120 s: {v}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A RAID-5 `vol0` of 3 members served with a control socket and metrics.
fn serve(dir: &Path) -> (Server, PathBuf, String, Vec<PathBuf>) {
    let paths = member_paths(dir, 3);
    create_array(5, "64K", "32M", "vol0", &paths);
    let control = dir.join("control.sock");
    let metrics = format!("127.0.0.1:{}", free_port());
    let mut args: Vec<&str> = paths.iter().map(|p| p.to_str().unwrap()).collect();
    args.extend([
        "--control",
        control.to_str().unwrap(),
        "--metrics",
        &metrics,
    ]);
    let server = Server::start(&args);
    (server, control, metrics, paths)
}

#[test]
fn live_metrics_declare_every_metric_the_dashboard_queries() {
    // Arrange
    let dir = scratch_dir("status-plane-metrics");
    let (server, _control, metrics, _) = serve(dir.path());
    qemu_io(&server.uri("vol0"), &["write -P 7 0 256k".into()]);

    // Act
    let text = scrape(&metrics);

    // Assert
    let declared = declared(&text);
    let used = dashboard_metrics();
    assert!(used.len() >= 15, "{used:?}");
    let unknown: Vec<_> = used.difference(&declared).collect();
    assert!(unknown.is_empty(), "not exported: {unknown:?}\n{text}");
    assert_eq!(server.stop(), 0);
}

#[test]
fn status_json_keeps_its_keys_idle_rebuilding_and_after_a_scrub() {
    // Arrange
    let dir = scratch_dir("status-plane-json");
    let (server, control, _metrics, paths) = serve(dir.path());
    qemu_io(&server.uri("vol0"), &["write -P 7 0 1M".into()]);

    // Act + Assert: idle.
    let status = status_json(&control);
    assert_eq!(keys(&status), set(&["volumes", "events"]));
    let v = &status["volumes"][0];
    assert_eq!(
        keys(v),
        set(&[
            "name",
            "level",
            "state",
            "size",
            "chunk_size",
            "superblock_events",
            "io",
            "members",
            "sync",
            "spares",
            "rebuild_max_mbps",
            "last_scrub",
            "journal",
            "checksum_cache",
            "replace",
            "last_sync",
            "written_bytes",
            "cache",
            "volume_faults",
            "qos",
        ])
    );
    assert_eq!(
        keys(&v["io"]),
        set(&[
            "reads",
            "writes",
            "flushes",
            "trims",
            "read_bytes",
            "write_bytes",
            "errors"
        ])
    );
    assert_eq!(
        keys(&v["members"][0]),
        set(&["role", "path", "state", "faults", "io", "checksum_errors"])
    );
    assert_eq!(
        keys(&v["journal"]),
        set(&["batches", "entries", "checkpoints"])
    );
    for idle in ["sync", "last_scrub", "replace", "last_sync"] {
        assert!(v[idle].is_null(), "{idle}: {v}");
    }

    // A rebuild onto a new member, slowed down so it is seen running.
    let new = dir.path().join("new.img");
    std::fs::File::create(&new)
        .unwrap()
        .set_len(std::fs::metadata(&paths[1]).unwrap().len())
        .unwrap();
    vraid_ctl_ok(&control, &["set", "vol0", "--rebuild-max-mbps", "1"]);
    vraid_ctl_ok(&control, &["fail", "vol0", "1"]);
    vraid_ctl_ok(&control, &["remove", "vol0", "1"]);
    vraid_ctl_ok(&control, &["add", "vol0", new.to_str().unwrap()]);
    let v = wait_for(&control, "rebuild", |v| v["sync"].is_object());
    assert_eq!(
        keys(&v["sync"]),
        set(&[
            "kind",
            "member",
            "done_bytes",
            "total_bytes",
            "bytes_per_sec",
            "eta_secs",
            "skipped_bytes"
        ])
    );
    assert_eq!(
        (&v["sync"]["kind"], &v["sync"]["member"]),
        (&"rebuild".into(), &1.into())
    );
    assert_eq!(v["state"], "rebuilding");
    let text = vraid_ctl_ok(&control, &["status"]);
    assert!(text.contains("rebuild of member 1: "), "{text}");
    assert!(text.contains("limit 1 MB/s"), "{text}");
    vraid_ctl_ok(&control, &["set", "vol0", "--rebuild-max-mbps", "0"]);
    wait_for(&control, "end of the rebuild", |v| {
        v["sync"].is_null() && v["state"] == "optimal"
    });

    // A scrub: its reply and `last_scrub` carry the same keys.
    let reply: Value =
        serde_json::from_str(&vraid_ctl_ok(&control, &["scrub", "vol0", "--json"])).unwrap();
    assert_eq!(keys(&reply), set(&["volume", "scrub"]));
    let scrub_keys = set(&[
        "trigger",
        "outcome",
        "started",
        "finished",
        "secs",
        "found",
        "mismatches",
        "repaired",
        "repair",
        "bytes_checked",
        "skipped_bytes",
        "members",
        "degraded",
        "cancelled",
    ]);
    assert_eq!(keys(&reply["scrub"]), scrub_keys);
    assert_eq!(reply["scrub"]["outcome"], "finished");
    let v = vol0(&control);
    assert_eq!(keys(&v["last_scrub"]), scrub_keys);
    assert_eq!(v["last_scrub"]["trigger"], "manual");
    let events = &status_json(&control)["events"];
    let last = events.as_array().unwrap().last().unwrap();
    assert!(keys(last).is_subset(&set(&["time_ms", "volume", "kind", "member", "message"])));
    assert_eq!(server.stop(), 0);
}

#[test]
fn member_series_carry_the_path_that_holds_the_role_after_a_replacement() {
    // Arrange: role 1 failed, removed and taken by a new file.
    let dir = scratch_dir("status-plane-path");
    let (server, control, metrics, paths) = serve(dir.path());
    qemu_io(&server.uri("vol0"), &["write -P 7 0 1M".into()]);
    let fresh = dir.path().join("fresh.img");
    std::fs::File::create(&fresh)
        .unwrap()
        .set_len(std::fs::metadata(&paths[1]).unwrap().len())
        .unwrap();
    fail_remove_add(&control, "1", &fresh);
    wait_for(&control, "rebuild end", |v| {
        v["sync"].is_null() && v["members"][1]["state"] == "active"
    });

    // Act
    let text = scrape(&metrics);

    // Assert: the series of role 1 name the new file, not the old one.
    let series = |path: &Path| {
        format!(
            r#"vraid_member_state{{volume="vol0",member="1",path="{}"}}"#,
            path.display()
        )
    };
    assert!(text.contains(&series(&fresh)), "{text}");
    assert!(!text.contains(&series(&paths[1])), "{text}");
    assert_eq!(server.stop(), 0);
}
