//! `vraid status --watch` on a terminal: the status text redrawn every
//! second, with an indicatif progress bar per running rebuild, resync or
//! scrub (rate and ETA as the daemon measures them). Not on a terminal,
//! `cli::status` keeps printing plain text.
//!
//! ```text
//!  every second: status ─► header bar ("{msg}": status text without the sync lines)
//!                       └► per volume with `sync`: bar (position/length from sync_bar)
//! ```

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use indicatif::{BinaryBytes, MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

use super::cli::render_status;
use super::client::{call, ClientError};
use super::params::VolumeFilter;
use super::status::{StatusReply, VolumeStatus};

/// What one volume's progress bar shows.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SyncBar {
    /// Bytes done.
    pub position: u64,
    /// Bytes to do.
    pub length: u64,
    /// "vol: rebuild of member 1, 12.0 MiB/s, ETA 42s, limit 100 MB/s".
    pub message: String,
}

/// The bar of volume `v`, or `None` when no rebuild, resync or scrub runs.
pub fn sync_bar(v: &VolumeStatus) -> Option<SyncBar> {
    let engine = v.engine.as_ref()?;
    let sync = engine.sync.as_ref()?;
    let limit = match engine.rebuild_max_mbps {
        0 => "unlimited".to_string(),
        n => format!("limit {n} MB/s"),
    };
    Some(SyncBar {
        position: sync.done_bytes.min(sync.total_bytes),
        length: sync.total_bytes,
        message: format!(
            "{}: {}, {}/s, ETA {}, {limit}",
            v.name,
            sync.what(),
            BinaryBytes(sync.bytes_per_sec.max(0.0) as u64),
            sync.eta_text()
        ),
    })
}

/// The status text without the sync lines (the bars show them).
pub fn header_text(reply: &StatusReply) -> String {
    let mut reply = reply.clone();
    for engine in reply.volumes.iter_mut().filter_map(|v| v.engine.as_mut()) {
        engine.sync = None;
    }
    let text = render_status(&reply);
    format!(
        "{}\n(refreshing every second; Ctrl-C to stop)",
        text.trim_end_matches('\n')
    )
}

/// Redraws the status with progress bars until interrupted.
pub fn watch(path: &Path, params: &VolumeFilter) -> Result<(), ClientError> {
    let multi = MultiProgress::with_draw_target(ProgressDrawTarget::stdout());
    let header = multi.add(ProgressBar::new_spinner());
    header.set_style(
        ProgressStyle::with_template("{msg}").unwrap_or_else(|_| ProgressStyle::default_spinner()),
    );
    let style = ProgressStyle::with_template(
        "{msg}\n  [{bar:40.cyan/blue}] {percent:>3}% {binary_bytes}/{binary_total_bytes}",
    )
    .unwrap_or_else(|_| ProgressStyle::default_bar())
    .progress_chars("#>-");
    let mut bars: HashMap<String, ProgressBar> = HashMap::new();
    loop {
        let reply: StatusReply = call(path, "status", params)?;
        header.set_message(header_text(&reply));
        let mut seen = Vec::new();
        for v in &reply.volumes {
            let name = v.name.clone();
            let Some(state) = sync_bar(v) else {
                continue;
            };
            let bar = bars.entry(name.clone()).or_insert_with(|| {
                let b = multi.add(ProgressBar::new(state.length));
                b.set_style(style.clone());
                b
            });
            bar.set_length(state.length);
            bar.set_position(state.position);
            bar.set_message(state.message);
            seen.push(name);
        }
        bars.retain(|name, bar| {
            let keep = seen.contains(name);
            if !keep {
                bar.finish_and_clear();
                multi.remove(bar);
            }
            keep
        });
        header.tick();
        std::thread::sleep(Duration::from_secs(1));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::status::{
        EngineStatus, MemberStatus, MemberStatusState, PassKind, SyncStatus, VolumeState,
    };

    fn volume(name: &str, limit: u64, sync: Option<SyncStatus>) -> VolumeStatus {
        VolumeStatus {
            name: name.into(),
            level: 5,
            state: VolumeState::Degraded,
            size: 1,
            chunk_size: 65536,
            superblock_events: 3,
            io: Default::default(),
            members: vec![MemberStatus {
                role: 0,
                path: Some("/dev/new".into()),
                state: MemberStatusState::Rebuilding,
                faults: 0,
                io: Default::default(),
                checksum_errors: 0,
                remote: None,
                write_mostly: false,
                behind: None,
                join_refused: None,
            }],
            cache: None,
            volume_faults: None,
            qos: None,
            write_log: None,
            engine: Some(EngineStatus {
                sync,
                rebuild_max_mbps: limit,
                ..EngineStatus::default()
            }),
        }
    }

    fn sync(kind: PassKind, member: Option<usize>, done: u64, total: u64) -> SyncStatus {
        SyncStatus {
            kind,
            member,
            done_bytes: done,
            total_bytes: total,
            bytes_per_sec: 0.0,
            eta_secs: None,
            skipped_bytes: 0,
        }
    }

    #[test]
    fn sync_bar_shows_position_rate_eta_and_limit_of_a_rebuild() {
        // Arrange
        let mut s = sync(PassKind::Rebuild, Some(1), 3 << 20, 8 << 20);
        s.bytes_per_sec = 1048576.0;
        s.eta_secs = Some(5.2);
        let v = volume("vol0", 100, Some(s));

        // Act
        let bar = sync_bar(&v).unwrap();

        // Assert
        assert_eq!((bar.position, bar.length), (3 << 20, 8 << 20));
        assert_eq!(
            bar.message,
            "vol0: rebuild of member 1, 1.00 MiB/s, ETA 5s, limit 100 MB/s"
        );
    }

    #[test]
    fn sync_bar_of_a_resync_without_eta_or_limit_and_none_when_idle() {
        let v = volume("m", 0, Some(sync(PassKind::Resync, None, 9, 4)));
        let bar = sync_bar(&v).unwrap();
        assert_eq!((bar.position, bar.length), (4, 4));
        assert_eq!(bar.message, "m: resync, 0 B/s, ETA -, unlimited");
        assert_eq!(sync_bar(&volume("m", 0, None)), None);
        let mut no_engine = volume("m", 0, None);
        no_engine.engine = None;
        assert_eq!(sync_bar(&no_engine), None);
    }

    #[test]
    fn header_leaves_the_sync_line_to_the_bar_but_keeps_the_members() {
        let reply = StatusReply {
            volumes: vec![volume(
                "vol0",
                0,
                Some(sync(PassKind::Rebuild, Some(0), 1, 2)),
            )],
            events: Vec::new(),
            pools: Vec::new(),
            pool_volumes: Vec::new(),
            nbd_dropped: Default::default(),
            member_nowait: Default::default(),
        };
        let text = header_text(&reply);
        assert!(text.contains("/dev/new"), "{text}");
        assert!(!text.contains("rebuild of member"), "{text}");
        assert!(render_status(&reply).contains("rebuild of member 0"));
    }
}
