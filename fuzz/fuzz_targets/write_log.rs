//! Fuzzes the write-log reader (docs/FAULTS.md "Write log format"):
//! arbitrary bytes after a valid header (and as a header) never panic;
//! every entry the scanner accepts obeys the format's rules, and the
//! crash-state enumeration over it keeps within each state's cut.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vraid::wlog::crash::{crash_points, CrashOptions};
use vraid::wlog::format::LogHeader;
use vraid::wlog::LogIndex;

fuzz_target!(|data: &[u8]| {
    let _ = LogIndex::scan(data);
    let mut log = LogHeader {
        volume_size: 1 << 20,
        uuid: [0; 16],
        started_ns: 0,
        volume: "fuzz".into(),
    }
    .encode()
    .to_vec();
    log.extend_from_slice(data);
    let Ok(index) = LogIndex::scan(&log[..]) else {
        return;
    };
    for (i, e) in index.entries.iter().enumerate() {
        assert_eq!(e.head.index, i as u64);
        assert!(e.head.offset.saturating_add(e.head.len) <= 1 << 20 || !e.head.kind.changes_data());
    }
    let opts = CrashOptions {
        subsets: 3,
        seed: 1,
        max: 100,
        after: 0,
        // A bound from the input: points stay at or before it.
        before: data.first().map_or(u64::MAX, |&b| u64::from(b)),
    };
    for p in crash_points(&index, opts) {
        assert!(p.cut <= index.entries.len() as u64);
        assert!(p.cut <= opts.before);
        assert!(p.dropped.iter().all(|&d| d < p.cut));
    }
});
