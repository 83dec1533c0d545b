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

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde_json::Value;

use super::cli::{human_bytes, render_status};
use super::client::{call, ClientError};

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

/// The bar of volume `v` (one entry of a `status` reply's `volumes`), or
/// `None` when no rebuild, resync or scrub runs.
pub fn sync_bar(v: &Value) -> Option<SyncBar> {
    let sync = &v["sync"];
    let done = sync["done_bytes"].as_u64()?;
    let total = sync["total_bytes"].as_u64()?;
    let kind = sync["kind"].as_str().unwrap_or("sync");
    let what = match sync["member"].as_u64() {
        Some(m) => format!("{kind} of member {m}"),
        None => kind.to_string(),
    };
    let rate = sync["bytes_per_sec"].as_f64().unwrap_or(0.0).max(0.0) as u64;
    let eta = sync["eta_secs"].as_f64().map_or_else(
        || "-".to_string(),
        |s| format!("{}s", s.max(0.0).round() as u64),
    );
    let limit = match v["rebuild_max_mbps"].as_u64() {
        Some(0) => "unlimited".to_string(),
        Some(n) => format!("limit {n} MB/s"),
        None => "limit ?".to_string(),
    };
    Some(SyncBar {
        position: done.min(total),
        length: total,
        message: format!(
            "{}: {what}, {}/s, ETA {eta}, {limit}",
            v["name"].as_str().unwrap_or("?"),
            human_bytes(rate)
        ),
    })
}

/// The status text without the sync lines (the bars show them).
pub fn header_text(reply: &Value) -> String {
    let mut reply = reply.clone();
    if let Some(volumes) = reply["volumes"].as_array_mut() {
        for v in volumes {
            if let Some(obj) = v.as_object_mut() {
                obj.remove("sync");
            }
        }
    }
    let text = render_status(&reply);
    format!(
        "{}\n(refreshing every second; Ctrl-C to stop)",
        text.trim_end_matches('\n')
    )
}

/// Redraws the status with progress bars until interrupted.
pub fn watch(path: &Path, params: &Value) -> Result<(), ClientError> {
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
        let reply = call(path, "status", params.clone())?;
        header.set_message(header_text(&reply));
        let empty = Vec::new();
        let volumes = reply["volumes"].as_array().unwrap_or(&empty);
        let mut seen = Vec::new();
        for v in volumes {
            let name = v["name"].as_str().unwrap_or("?").to_string();
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
    use serde_json::json;

    use super::*;

    #[test]
    fn sync_bar_shows_position_rate_eta_and_limit_of_a_rebuild() {
        // Arrange
        let v = json!({
            "name": "vol0",
            "rebuild_max_mbps": 100,
            "sync": {"kind": "rebuild", "member": 1, "done_bytes": 3 << 20,
                     "total_bytes": 8 << 20, "bytes_per_sec": 1048576.0, "eta_secs": 5.2},
        });

        // Act
        let bar = sync_bar(&v).unwrap();

        // Assert
        assert_eq!((bar.position, bar.length), (3 << 20, 8 << 20));
        assert_eq!(
            bar.message,
            "vol0: rebuild of member 1, 1.0 MiB/s, ETA 5s, limit 100 MB/s"
        );
    }

    #[test]
    fn sync_bar_of_a_resync_without_eta_or_limit_and_none_when_idle() {
        let v = json!({
            "name": "m", "rebuild_max_mbps": 0,
            "sync": {"kind": "resync", "member": null, "done_bytes": 9,
                     "total_bytes": 4, "bytes_per_sec": 0.0, "eta_secs": null},
        });
        let bar = sync_bar(&v).unwrap();
        assert_eq!((bar.position, bar.length), (4, 4));
        assert_eq!(bar.message, "m: resync, 0 B/s, ETA -, unlimited");
        assert_eq!(sync_bar(&json!({"name": "m", "sync": null})), None);
    }

    #[test]
    fn header_leaves_the_sync_line_to_the_bar_but_keeps_the_members() {
        let reply = json!({"volumes": [{
            "name": "vol0", "level": 5, "state": "degraded", "size": 1, "chunk_size": 65536,
            "superblock_events": 3, "io": {}, "members": [{"role": 0, "state": "rebuilding",
            "path": "/dev/new", "io": {}, "faults": 0}],
            "sync": {"kind": "rebuild", "member": 0, "done_bytes": 1, "total_bytes": 2},
        }]});
        let text = header_text(&reply);
        assert!(text.contains("/dev/new"), "{text}");
        assert!(!text.contains("rebuild of member"), "{text}");
        assert!(render_status(&reply).contains("rebuild of member 0"));
    }
}
