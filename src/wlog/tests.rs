//! Unit tests of the write log: records round-trip through the scanner,
//! damage is found, crash states obey the cache's rules, replay builds
//! the image.

use std::sync::Arc;

use super::crash::{crash_points, CrashOptions};
use super::format::{LogHeader, RecordHead, RecordKind, FLAG_FUA, HEADER_LEN, RECORD_LEN};
use super::replay::{OpenLog, Target};
use super::scan::{LogIndex, Tail};
use super::{LogDevice, LogError, WriteLog};
use crate::block::{BlockDevice, Durability};
use crate::member::memory::MemDevice;
use crate::units::ByteOffset;

const SIZE: u64 = 1 << 20;

fn header() -> Vec<u8> {
    LogHeader {
        volume_size: SIZE,
        uuid: [7; 16],
        started_ns: 1,
        volume: "vol0".into(),
    }
    .encode()
    .to_vec()
}

fn rec(out: &mut Vec<u8>, kind: RecordKind, flags: u8, index: u64, offset: u64, data: &[u8]) {
    let len = match kind {
        RecordKind::Write => data.len() as u64,
        RecordKind::Trim | RecordKind::Zero => 4096,
        _ => 0,
    };
    let head = RecordHead {
        kind,
        flags,
        index,
        offset,
        len,
        payload: data.len() as u32,
        crc: 0,
    };
    out.extend_from_slice(&head.encode(data));
    out.extend_from_slice(data);
}

/// w0 w1(FUA) flush(covers 2) w3 trim4 mark5 flush(covers 6) w7 end.
fn sample() -> Vec<u8> {
    let mut b = header();
    rec(&mut b, RecordKind::Write, 0, 0, 0, &[1; 4096]);
    rec(&mut b, RecordKind::Write, FLAG_FUA, 1, 8192, &[2; 512]);
    rec(&mut b, RecordKind::Flush, 0, 2, 2, &[]);
    rec(&mut b, RecordKind::Write, 0, 3, 4096, &[3; 4096]);
    rec(&mut b, RecordKind::Trim, 0, 4, 0, &[]);
    rec(&mut b, RecordKind::Mark, 0, 5, 0, b"here");
    rec(&mut b, RecordKind::Flush, 0, 6, 6, &[]);
    rec(&mut b, RecordKind::Write, 0, 7, 0, &[4; 4096]);
    rec(&mut b, RecordKind::End, 0, 8, 0, &[]);
    b
}

#[test]
fn a_log_scans_back_to_its_entries_marks_and_flushes() {
    let index = LogIndex::scan(&sample()[..]).unwrap();
    assert_eq!(index.tail, Tail::Ended);
    assert_eq!(index.entries.len(), 8);
    assert_eq!(index.flushes(), vec![2, 6]);
    assert_eq!(index.mark("here"), Some(5));
    assert_eq!(index.header.volume, "vol0");
    index.require_complete(false).unwrap();
}

#[test]
fn damage_is_found_and_named() {
    let good = sample();
    // Every truncation inside the records is an unfinished log.
    for cut in [
        HEADER_LEN + 1,
        HEADER_LEN + RECORD_LEN + 100,
        good.len() - 1,
    ] {
        let index = LogIndex::scan(&good[..cut]).unwrap();
        let err = index.require_complete(false).unwrap_err();
        assert!(matches!(err, LogError::Unfinished { .. }), "{err}");
        assert!(err.to_string().contains("--allow-torn"), "{err}");
        index.require_complete(true).unwrap();
    }
    // A flipped payload byte fails its checksum; entries before it stay.
    let mut bad = good.clone();
    bad[HEADER_LEN + RECORD_LEN + 10] ^= 1;
    let index = LogIndex::scan(&bad[..]).unwrap();
    assert_eq!(index.entries.len(), 0);
    let err = index.require_complete(false).unwrap_err().to_string();
    assert!(err.contains("checksum mismatch"), "{err}");
    // Header damage and foreign files are errors at once.
    assert!(matches!(
        LogIndex::scan(&b"hello"[..]),
        Err(LogError::NotALog)
    ));
    let mut h = good.clone();
    h[20] ^= 1;
    assert!(LogIndex::scan(&h[..])
        .unwrap_err()
        .to_string()
        .contains("header checksum"));
    let mut trailing = good;
    trailing.push(0);
    assert!(LogIndex::scan(&trailing[..])
        .unwrap_err()
        .to_string()
        .contains("after the end"));
}

#[test]
fn crash_states_keep_flushed_and_fua_writes_and_drop_only_others() {
    let index = LogIndex::scan(&sample()[..]).unwrap();
    let opts = CrashOptions {
        subsets: 50,
        seed: 9,
        max: 1000,
        after: 0,
        before: u64::MAX,
    };
    let points = crash_points(&index, opts);
    let labels: Vec<&str> = points.iter().take(3).map(|p| p.label.as_str()).collect();
    assert_eq!(labels, ["flush:0", "flush:1", "end"]);
    assert!(points.len() > 3);
    for p in &points {
        for &d in &p.dropped {
            assert!(d >= p.durable && d < p.cut, "{p:?}");
            assert_ne!(d, 1, "a FUA write is never dropped: {p:?}");
            assert!(index.entries[d as usize].head.kind.changes_data());
        }
    }
    // The same seed draws the same states.
    assert_eq!(points, crash_points(&index, opts));
    // A bound on the cut keeps the states of the first window only,
    // whatever else the log holds: its flush point and its draws.
    let first = index.flushes()[0] + 1;
    let early = crash_points(
        &index,
        CrashOptions {
            before: first,
            ..opts
        },
    );
    assert!(early.iter().all(|p| p.cut <= first), "{early:?}");
    assert_eq!(early[0].label, "flush:0");
    assert!(
        early.iter().any(|p| p.label.starts_with("subset:0.")),
        "{early:?}"
    );
}

#[test]
fn replay_builds_the_image_at_each_point() {
    let dir = tempfile::tempdir().unwrap();
    let log_path = dir.path().join("log");
    std::fs::write(&log_path, sample()).unwrap();
    let log = OpenLog::open(&log_path, false).unwrap();
    let img = dir.path().join("img");
    let target = Target::open(&img, SIZE).unwrap();
    log.apply(&target, 0, log.flush_cut(0).unwrap(), &[])
        .unwrap();
    let bytes = std::fs::read(&img).unwrap();
    assert_eq!(bytes.len() as u64, SIZE);
    assert_eq!(&bytes[..4096], &[1; 4096]);
    assert_eq!(&bytes[8192..8704], &[2; 512]);
    log.apply(&target, 3, log.mark_cut("here").unwrap(), &[])
        .unwrap();
    let bytes = std::fs::read(&img).unwrap();
    assert_eq!(&bytes[..4096], &[0; 4096], "trimmed");
    assert_eq!(&bytes[4096..8192], &[3; 4096]);
    assert!(log.flush_cut(2).is_err());
    assert!(log.mark_cut("nope").is_err());
    assert!(log.entries_cut(9).is_err());
}

#[tokio::test]
async fn the_log_device_records_what_was_acknowledged_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("log");
    let mem: Arc<dyn BlockDevice> = Arc::new(MemDevice::new("m", SIZE));
    let log = Arc::new(WriteLog::new());
    let dev = LogDevice::new(mem.clone(), log.clone());
    dev.write(ByteOffset(0), &[5; 4096], Durability::Normal)
        .await
        .unwrap();
    log.start(&path, "vol0", SIZE).unwrap();
    assert!(log.start(&path, "vol0", SIZE).is_err(), "one log at a time");
    dev.write(ByteOffset(4096), &[6; 4096], Durability::Fua)
        .await
        .unwrap();
    dev.flush().await.unwrap();
    log.mark("m1").await.unwrap();
    dev.write_zeroes(ByteOffset(0), 4096, false).await.unwrap();
    dev.discard(ByteOffset(4096), 4096).await.unwrap();
    let status = log.stop().await.unwrap();
    assert_eq!(status.entries, 5);
    dev.write(ByteOffset(0), &[7; 512], Durability::Normal)
        .await
        .unwrap();
    let index = LogIndex::scan(std::fs::File::open(&path).unwrap()).unwrap();
    assert_eq!(index.tail, Tail::Ended);
    let kinds: Vec<RecordKind> = index.entries.iter().map(|e| e.head.kind).collect();
    use RecordKind::*;
    assert_eq!(kinds, [Write, Flush, Mark, Zero, Trim]);
    assert_eq!(index.entries[0].head.flags, FLAG_FUA);
    assert_eq!(
        index.entries[1].head.offset, 1,
        "the flush covers the write before it"
    );
    assert_eq!(status.bytes, std::fs::metadata(&path).unwrap().len());
}
