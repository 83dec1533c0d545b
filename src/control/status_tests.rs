//! The status types against the JSON the untyped producers emitted: a
//! fully populated status round-trips, with the same keys, nulls and
//! absent keys.

use std::collections::BTreeSet;

use serde_json::{Map, Value};

use super::*;

fn keys(v: &Value) -> BTreeSet<&str> {
    v.as_object()
        .map(Map::keys)
        .into_iter()
        .flatten()
        .map(String::as_str)
        .collect()
}

fn set<'a>(k: &[&'a str]) -> BTreeSet<&'a str> {
    k.iter().copied().collect()
}

#[test]
fn a_full_status_round_trips_with_the_keys_the_untyped_code_emitted() {
    // Arrange
    let reply = sample_reply();

    // Act
    let json = serde_json::to_value(&reply).unwrap();
    let back: StatusReply = serde_json::from_value(json.clone()).unwrap();

    // Assert: the key sets of the old `json!`/`Map` producers.
    assert_eq!(back, reply);
    assert_eq!(keys(&json), set(&["volumes", "events"]));
    let v = &json["volumes"][0];
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
            "write_log",
        ])
    );
    assert_eq!(v["write_log"]["entries"], 12);
    assert_eq!(v["write_log"]["active"], true);
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
        keys(&v["last_scrub"]),
        set(&[
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
        ])
    );
    assert_eq!(
        keys(&v["last_scrub"]["members"][0]),
        set(&["role", "checksum", "io", "mismatch", "repaired"])
    );
    assert_eq!(
        keys(&v["journal"]),
        set(&["batches", "entries", "checkpoints"])
    );
    assert_eq!(keys(&v["replace"]), set(&["member", "path"]));
    assert_eq!(
        keys(&json["events"][0]),
        set(&["time_ms", "volume", "kind", "member", "message"])
    );
    assert_eq!(v["sync"]["kind"], "replace");
    assert_eq!(v["state"], "rebuilding");
    assert_eq!(v["members"][0]["state"], "active");
}

#[test]
fn idle_and_engineless_volumes_keep_their_nulls_and_absent_keys() {
    // Arrange
    let mut reply = sample_reply();
    let engine = reply.volumes[0].engine.as_mut().unwrap();
    *engine = EngineStatus {
        rebuild_max_mbps: 0,
        ..EngineStatus::default()
    };
    let mut bare = reply.volumes[0].clone();
    bare.engine = None;
    (bare.cache, bare.volume_faults, bare.write_log) = (None, None, None);
    reply.volumes.push(bare);
    reply.events[0].member = None;

    // Act
    let json = serde_json::to_value(&reply).unwrap();
    let back: StatusReply = serde_json::from_value(json.clone()).unwrap();

    // Assert: an idle engine shows `null`s; no engine, no engine keys.
    assert_eq!(back, reply);
    let idle = &json["volumes"][0];
    for key in ["sync", "last_scrub", "journal", "checksum_cache", "replace"] {
        assert_eq!(idle[key], Value::Null, "{key}");
        assert!(keys(idle).contains(key), "{key}");
    }
    assert_eq!(keys(&json["volumes"][1]).len(), 8);
    assert!(!keys(&json["events"][0]).contains("member"));
}

/// A fully populated status, for tests of its consumers.
pub(crate) fn sample_reply() -> StatusReply {
    let io = IoSummary {
        reads: 1,
        writes: 2,
        flushes: 3,
        trims: 4,
        read_bytes: 5,
        write_bytes: 6,
        errors: 7,
    };
    let member = |role| MemberStatus {
        role,
        path: Some(format!("/m{role}")),
        state: MemberStatusState::Active,
        faults: 1,
        io,
        checksum_errors: 2,
        remote: None,
        write_mostly: false,
        behind: None,
        join_refused: None,
    };
    StatusReply {
        volumes: vec![VolumeStatus {
            name: "vol0".into(),
            level: 5,
            state: VolumeState::Rebuilding,
            size: 1 << 30,
            chunk_size: 65536,
            superblock_events: 9,
            io,
            members: vec![member(0), member(1), member(2)],
            cache: Some(crate::volfault::CacheStatus {
                mode: crate::volfault::CacheMode::Volatile,
                dirty_bytes: 4096,
                last_powercut: Some(crate::volfault::PowerCutReport::default()),
                ..Default::default()
            }),
            volume_faults: Some(crate::volfault::VolumeFaultsStatus::default()),
            qos: None,
            write_log: Some(crate::wlog::LogStatus {
                path: "/logs/vol0.wlog".into(),
                entries: 12,
                bytes: 9000,
                failed: None,
                active: true,
            }),
            engine: Some(EngineStatus {
                sync: Some(SyncStatus {
                    kind: PassKind::Replace,
                    member: Some(1),
                    done_bytes: 3 << 20,
                    total_bytes: 8 << 20,
                    bytes_per_sec: 1048576.5,
                    eta_secs: Some(5.25),
                    skipped_bytes: 1 << 20,
                }),
                spares: vec!["/spare".into()],
                rebuild_max_mbps: 200,
                last_scrub: Some(ScrubStatus {
                    trigger: ScrubTrigger::Scheduled,
                    outcome: ScrubOutcome::Finished,
                    started: 10,
                    finished: 12,
                    secs: 2.5,
                    found: 3,
                    mismatches: 1,
                    repaired: 1,
                    repair: true,
                    bytes_checked: 4096,
                    skipped_bytes: 64 << 20,
                    members: vec![MemberScrubStatus {
                        role: 2,
                        checksum: 1,
                        io: 1,
                        mismatch: 1,
                        repaired: 1,
                    }],
                    degraded: false,
                    cancelled: false,
                }),
                journal: Some(JournalStatus {
                    batches: 4,
                    entries: 5,
                    checkpoints: 6,
                }),
                checksum_cache: Some(crate::integrity::CacheStats {
                    budget_bytes: 64 << 20,
                    resident_bytes: 4096,
                    hits: 7,
                    misses: 8,
                    loads: 11,
                    evictions: 9,
                    writebacks: 10,
                }),
                replace: Some(ReplaceStatus {
                    member: 1,
                    path: "/new".into(),
                }),
                last_sync: None,
                written_bytes: Some(128 << 20),
            }),
        }],
        events: vec![Event {
            time_ms: 1,
            volume: "vol0".into(),
            kind: "member_failed".into(),
            member: Some(1),
            message: "vol0: member 1 failed".into(),
        }],
        pools: Vec::new(),
        pool_volumes: Vec::new(),
        nbd_dropped: Default::default(),
        member_nowait: Default::default(),
    }
}
