//! Renders the registry's counters in the Prometheus text format (0.0.4).

use std::fmt::Write as _;
use std::sync::atomic::Ordering;

use super::stats::{IoStats, OpType, LATENCY_BUCKETS_US};
use crate::control::handle::{MemberStatusState, VolumeState};
use crate::control::Registry;

fn esc(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn io_series(out: &mut String, prefix: &str, labels: &str, stats: &IoStats) {
    for op in OpType::ALL {
        let c = stats.op(op);
        let l = format!("{labels},op=\"{}\"", op.label());
        let _ = writeln!(
            out,
            "{prefix}_ops_total{{{l}}} {}",
            c.ops.load(Ordering::Relaxed)
        );
        let _ = writeln!(
            out,
            "{prefix}_bytes_total{{{l}}} {}",
            c.bytes.load(Ordering::Relaxed)
        );
        let _ = writeln!(
            out,
            "{prefix}_errors_total{{{l}}} {}",
            c.errors.load(Ordering::Relaxed)
        );
        let mut cumulative = 0;
        for (i, b) in c.buckets.iter().enumerate() {
            cumulative += b.load(Ordering::Relaxed);
            let le = LATENCY_BUCKETS_US
                .get(i)
                .map_or_else(|| "+Inf".to_string(), |us| format!("{}", *us as f64 / 1e6));
            let _ = writeln!(
                out,
                "{prefix}_latency_seconds_bucket{{{l},le=\"{le}\"}} {cumulative}"
            );
        }
        let _ = writeln!(
            out,
            "{prefix}_latency_seconds_sum{{{l}}} {}",
            c.latency_sum_us.load(Ordering::Relaxed) as f64 / 1e6
        );
        let _ = writeln!(out, "{prefix}_latency_seconds_count{{{l}}} {cumulative}");
    }
}

const HEADERS: &str = "\
# HELP vraid_volume_state Volume state: 0 optimal, 1 degraded, 2 failed, 3 rebuilding, 4 resyncing.
# TYPE vraid_volume_state gauge
# HELP vraid_member_state Member state: 0 active, 1 failed, 2 missing, 3 removed, 4 rebuilding.
# TYPE vraid_member_state gauge
# HELP vraid_volume_ops_total Client operations completed, by type.
# TYPE vraid_volume_ops_total counter
# HELP vraid_volume_bytes_total Client bytes transferred by successful operations.
# TYPE vraid_volume_bytes_total counter
# HELP vraid_volume_errors_total Client operations that failed.
# TYPE vraid_volume_errors_total counter
# HELP vraid_volume_latency_seconds Client operation latency.
# TYPE vraid_volume_latency_seconds histogram
# HELP vraid_member_ops_total Member operations completed, by type.
# TYPE vraid_member_ops_total counter
# HELP vraid_member_bytes_total Member bytes transferred by successful operations.
# TYPE vraid_member_bytes_total counter
# HELP vraid_member_errors_total Member operations that failed.
# TYPE vraid_member_errors_total counter
# HELP vraid_member_latency_seconds Member operation latency.
# TYPE vraid_member_latency_seconds histogram
# HELP vraid_member_checksum_errors_total Member 4 KiB blocks that failed their checksum when read.
# TYPE vraid_member_checksum_errors_total counter
# HELP vraid_fault_hits_total Times an injected fault rule fired.
# TYPE vraid_fault_hits_total counter
# HELP vraid_volume_journal_batches_total Write-hole journal batches written (FUA), summed over members.
# TYPE vraid_volume_journal_batches_total counter
# HELP vraid_volume_journal_entries_total Write-hole journal entries (stripe writes logged).
# TYPE vraid_volume_journal_entries_total counter
# HELP vraid_volume_journal_checkpoints_total Write-hole journal checkpoints (every member flushed).
# TYPE vraid_volume_journal_checkpoints_total counter
# HELP vraid_volume_checksum_cache_hits_total Checksum-page look-ups served from memory.
# TYPE vraid_volume_checksum_cache_hits_total counter
# HELP vraid_volume_checksum_cache_misses_total Checksum-page look-ups that loaded the page.
# TYPE vraid_volume_checksum_cache_misses_total counter
# HELP vraid_volume_checksum_cache_evictions_total Checksum pages evicted to stay within the budget.
# TYPE vraid_volume_checksum_cache_evictions_total counter
# HELP vraid_volume_checksum_cache_writebacks_total Dirty checksum pages written back to make room.
# TYPE vraid_volume_checksum_cache_writebacks_total counter
# HELP vraid_volume_checksum_cache_resident_bytes Checksum pages held in memory.
# TYPE vraid_volume_checksum_cache_resident_bytes gauge
# HELP vraid_volume_checksum_cache_budget_bytes Checksum-page cache budget.
# TYPE vraid_volume_checksum_cache_budget_bytes gauge
# HELP vraid_volume_sync_done_bytes Bytes per member handled so far by the pass running (kind: rebuild, recovery, replace, resync, scrub).
# TYPE vraid_volume_sync_done_bytes gauge
# HELP vraid_volume_sync_total_bytes Bytes per member the pass running handles in all.
# TYPE vraid_volume_sync_total_bytes gauge
# HELP vraid_volume_sync_bytes_per_second Average rate of the pass running since it started.
# TYPE vraid_volume_sync_bytes_per_second gauge
";

/// The whole exposition.
pub fn render(reg: &Registry) -> String {
    let mut out = String::from(HEADERS);
    for v in reg.volumes() {
        let vl = format!("volume=\"{}\"", esc(&v.name));
        let engine = v.engine_status();
        let state = match v.status_state(&engine) {
            VolumeState::Optimal => 0,
            VolumeState::Degraded => 1,
            VolumeState::Failed => 2,
            VolumeState::Rebuilding => 3,
            VolumeState::Resyncing => 4,
        };
        let _ = writeln!(out, "vraid_volume_state{{{vl}}} {state}");
        if let Some(j) = engine.get("journal") {
            for key in ["batches", "entries", "checkpoints"] {
                if let Some(n) = j[key].as_u64() {
                    let _ = writeln!(out, "vraid_volume_journal_{key}_total{{{vl}}} {n}");
                }
            }
        }
        if let Some(c) = engine.get("checksum_cache").filter(|c| c.is_object()) {
            for key in ["hits", "misses", "evictions", "writebacks"] {
                if let Some(n) = c[key].as_u64() {
                    let _ = writeln!(out, "vraid_volume_checksum_cache_{key}_total{{{vl}}} {n}");
                }
            }
            for key in ["resident_bytes", "budget_bytes"] {
                if let Some(n) = c[key].as_u64() {
                    let _ = writeln!(out, "vraid_volume_checksum_cache_{key}{{{vl}}} {n}");
                }
            }
        }
        if let Some(sync) = engine.get("sync").filter(|s| s.is_object()) {
            let kind = esc(sync["kind"].as_str().unwrap_or(""));
            let member = sync["member"]
                .as_u64()
                .map_or_else(String::new, |m| m.to_string());
            let sl = format!("{vl},kind=\"{kind}\",member=\"{member}\"");
            for (series, field) in [
                ("done_bytes", "done_bytes"),
                ("total_bytes", "total_bytes"),
                ("bytes_per_second", "bytes_per_sec"),
            ] {
                if let Some(x) = sync[field].as_f64() {
                    let _ = writeln!(out, "vraid_volume_sync_{series}{{{sl}}} {x}");
                }
            }
        }
        io_series(&mut out, "vraid_volume", &vl, &v.stats);
        for m in &v.members {
            let ml = format!(
                "{vl},member=\"{}\",path=\"{}\"",
                m.role,
                esc(m.path.as_deref().unwrap_or(""))
            );
            let state = match v.member_state(m.role) {
                MemberStatusState::Active => 0,
                MemberStatusState::Failed => 1,
                MemberStatusState::Missing => 2,
                MemberStatusState::Removed => 3,
                MemberStatusState::Rebuilding => 4,
            };
            let _ = writeln!(out, "vraid_member_state{{{ml}}} {state}");
            io_series(&mut out, "vraid_member", &ml, &m.stats);
            let _ = writeln!(
                out,
                "vraid_member_checksum_errors_total{{{ml}}} {}",
                m.checksum_errors.load(Ordering::Relaxed)
            );
        }
        for f in v.faults() {
            let kind = serde_json::to_value(f.spec.kind)
                .ok()
                .and_then(|k| k.as_str().map(str::to_string))
                .unwrap_or_default();
            let _ = writeln!(
                out,
                "vraid_fault_hits_total{{{vl},member=\"{}\",id=\"{}\",kind=\"{kind}\"}} {}",
                f.member, f.id, f.hits
            );
        }
    }
    out
}
