//! The exposition of a populated snapshot, and the shipped Grafana
//! dashboard checked against it: every metric a query names is one vraid
//! exports.

use std::collections::BTreeSet;
use std::sync::Arc;

use super::{Scrape, VolumeScrape};
use crate::control::status::tests::sample_reply;
use crate::control::status::FaultStatus;
use crate::member::fault::{FaultKind, FaultOp, FaultSpec};
use crate::metrics::stats::{IoStats, OpType};

/// The dashboard shipped in the repository.
const DASHBOARD: &str = include_str!("../../dashboards/vraid.json");

/// A scrape of the fully populated sample status (a replace running, a
/// journal, a fault rule) with some I/O counted.
fn scrape() -> Scrape {
    let stats = IoStats::new();
    let write = stats.op(OpType::Write);
    write.ops.inc_by(3);
    write.bytes.inc_by(12288);
    for _ in 0..3 {
        // 2^-12 s (244 µs): in the 250 µs bucket, summed exactly.
        write.latency.observe(1.0 / 4096.0);
    }
    let volumes = sample_reply()
        .volumes
        .into_iter()
        .map(|status| VolumeScrape {
            members: status
                .members
                .iter()
                .map(|m| {
                    let labels = vec![
                        ("volume", status.name.clone()),
                        ("member", m.role.to_string()),
                        ("path", m.path.clone().unwrap_or_default()),
                    ];
                    (labels, IoStats::new())
                })
                .collect(),
            volume_faults: Vec::new(),
            faults: vec![FaultStatus {
                id: 4,
                volume: status.name.clone(),
                member: 2,
                path: Some("/m2".into()),
                holds_role: true,
                spec: FaultSpec {
                    kind: FaultKind::Error,
                    op: FaultOp::Read,
                    offset: None,
                    length: None,
                    probability: 1.0,
                    delay_us: 0,
                    count: None,
                },
                hits: 5,
                remaining: None,
                active: true,
            }],
            stats: Arc::clone(&stats),
            status,
        })
        .collect();
    Scrape(volumes, Default::default())
}

/// The value of the sample line starting with `series`.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|v| v.parse().ok())
}

#[test]
fn the_exposition_keeps_the_names_labels_and_types_of_every_series() {
    // Act
    let text = scrape().render();

    // Assert
    let has = |series: &str, want: f64| {
        assert_eq!(sample(&text, series), Some(want), "{series} in\n{text}");
    };
    has(r#"vraid_volume_state{volume="vol0"}"#, 3.0);
    has(
        r#"vraid_member_state{volume="vol0",member="1",path="/m1"}"#,
        0.0,
    );
    has(r#"vraid_volume_ops_total{volume="vol0",op="write"}"#, 3.0);
    has(
        r#"vraid_volume_bytes_total{volume="vol0",op="write"}"#,
        12288.0,
    );
    has(r#"vraid_volume_errors_total{volume="vol0",op="read"}"#, 0.0);
    has(
        r#"vraid_volume_latency_seconds_bucket{volume="vol0",op="write",le="+Inf"}"#,
        3.0,
    );
    has(
        r#"vraid_volume_latency_seconds_bucket{volume="vol0",op="write",le="0.00025"}"#,
        3.0,
    );
    has(
        r#"vraid_volume_latency_seconds_sum{volume="vol0",op="write"}"#,
        3.0 / 4096.0,
    );
    has(
        r#"vraid_volume_latency_seconds_count{volume="vol0",op="write"}"#,
        3.0,
    );
    has(
        r#"vraid_member_ops_total{volume="vol0",member="2",path="/m2",op="trim"}"#,
        0.0,
    );
    has(
        r#"vraid_member_checksum_errors_total{volume="vol0",member="0",path="/m0"}"#,
        2.0,
    );
    has(
        r#"vraid_fault_hits_total{volume="vol0",member="2",id="4",kind="error"}"#,
        5.0,
    );
    has(r#"vraid_volume_journal_entries_total{volume="vol0"}"#, 5.0);
    has(r#"vraid_volume_journal_batches_total{volume="vol0"}"#, 4.0);
    has(
        r#"vraid_volume_journal_checkpoints_total{volume="vol0"}"#,
        6.0,
    );
    let sl = r#"{volume="vol0",kind="replace",member="1"}"#;
    has(&format!("vraid_volume_sync_done_bytes{sl}"), 3145728.0);
    has(&format!("vraid_volume_sync_total_bytes{sl}"), 8388608.0);
    has(&format!("vraid_volume_sync_skipped_bytes{sl}"), 1048576.0);
    has(
        &format!("vraid_volume_sync_bytes_per_second{sl}"),
        1048576.5,
    );
    for (name, kind) in [
        ("vraid_volume_state", "gauge"),
        ("vraid_member_state", "gauge"),
        ("vraid_volume_ops_total", "counter"),
        ("vraid_member_latency_seconds", "histogram"),
        ("vraid_volume_sync_done_bytes", "gauge"),
        ("vraid_fault_hits_total", "counter"),
        ("vraid_member_bounce_bytes_total", "counter"),
        ("vraid_member_nowait_tries_total", "counter"),
        ("vraid_member_nowait_refused_total", "counter"),
        ("vraid_member_widened_writes_total", "counter"),
        ("vraid_member_edge_reads_total", "counter"),
        ("vraid_nbd_connections_dropped_total", "counter"),
        ("vraid_future_pool_heap_blocks_total", "counter"),
        ("vraid_future_pool_released_blocks_total", "counter"),
        ("vraid_future_pool_boxed_futures_total", "counter"),
    ] {
        assert!(
            text.contains(&format!("# TYPE {name} {kind}\n")),
            "{name} {kind}"
        );
    }
}

/// Every metric name the exposition declares, with the series names of
/// its histograms (`_bucket`, `_sum`, `_count`).
fn exported(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for line in text.lines() {
        let Some(rest) = line.strip_prefix("# TYPE ") else {
            continue;
        };
        let (name, kind) = rest.split_once(' ').unwrap_or((rest, ""));
        names.insert(name.to_string());
        if kind == "histogram" {
            for suffix in ["_bucket", "_sum", "_count"] {
                names.insert(format!("{name}{suffix}"));
            }
        }
    }
    names
}

/// Every PromQL expression of the dashboard: the panels' `expr` and the
/// query variables' `query` (a data-source variable's names a plugin).
fn queries(dashboard: &serde_json::Value) -> Vec<String> {
    fn walk(v: &serde_json::Value, out: &mut Vec<String>) {
        match v {
            serde_json::Value::Object(map)
                if map.get("type").and_then(|t| t.as_str()) == Some("datasource") => {}
            serde_json::Value::Object(map) => {
                for (key, value) in map {
                    match (key.as_str(), value) {
                        ("expr" | "query" | "definition", serde_json::Value::String(s)) => {
                            out.push(s.clone())
                        }
                        _ => walk(value, out),
                    }
                }
            }
            serde_json::Value::Array(items) => items.iter().for_each(|i| walk(i, out)),
            _ => {}
        }
    }
    let mut out = Vec::new();
    walk(dashboard, &mut out);
    out
}

/// PromQL words followed by a list of labels in parentheses.
const GROUPING: [&str; 6] = [
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
];

/// Other PromQL words that are not metric names (aggregations may be
/// followed by `by (…)` rather than by their parentheses).
const KEYWORDS: [&str; 18] = [
    "sum",
    "min",
    "max",
    "avg",
    "group",
    "stddev",
    "stdvar",
    "count",
    "count_values",
    "bottomk",
    "topk",
    "quantile",
    "bool",
    "offset",
    "and",
    "or",
    "unless",
    "inf",
];

/// The metric names a PromQL expression reads: identifiers outside label
/// matchers (`{…}`), ranges (`[…]`) and strings, that are not functions,
/// keywords, grouping labels (`by (…)`) or variables (`$volume`); of
/// `label_values(metric, label)` only the metric.
fn metric_names(expr: &str) -> Vec<String> {
    let expr = match expr.trim().strip_prefix("label_values(") {
        Some(args) => args.split([',', ')']).next().unwrap_or(""),
        None => expr,
    };
    let chars: Vec<char> = expr.chars().collect();
    let mut names = Vec::new();
    let mut i = 0;
    let mut grouping = false;
    while i < chars.len() {
        let c = chars[i];
        let close = match c {
            '{' => Some('}'),
            '[' => Some(']'),
            '"' | '\'' | '`' => Some(c),
            '(' if grouping => Some(')'),
            _ => None,
        };
        if let Some(close) = close {
            grouping = false;
            i += chars[i + 1..]
                .iter()
                .position(|&x| x == close)
                .map_or(chars.len(), |p| p + 2);
            continue;
        }
        if c == '$' || c.is_ascii_digit() || c == '.' {
            // A variable or a number (with its unit or exponent).
            i += 1;
            while i < chars.len() && (chars[i].is_ascii_alphanumeric() || "_.".contains(chars[i])) {
                i += 1;
            }
            continue;
        }
        if !(c.is_ascii_alphabetic() || c == '_' || c == ':') {
            i += 1;
            continue;
        }
        let start = i;
        while i < chars.len() && (chars[i].is_ascii_alphanumeric() || "_:".contains(chars[i])) {
            i += 1;
        }
        let word: String = chars[start..i].iter().collect();
        let next = chars[i..].iter().find(|c| !c.is_whitespace());
        if GROUPING.contains(&word.as_str()) {
            grouping = true;
        } else if next != Some(&'(') && !KEYWORDS.contains(&word.to_lowercase().as_str()) {
            names.push(word);
        }
    }
    names
}

/// The names the dashboard's queries read that vraid does not export.
fn unknown_names(dashboard: &str, exported: &BTreeSet<String>) -> Vec<String> {
    let dashboard: serde_json::Value = serde_json::from_str(dashboard).unwrap();
    let mut unknown = Vec::new();
    for q in queries(&dashboard) {
        for name in metric_names(&q) {
            if !exported.contains(&name) {
                unknown.push(format!("{name} (in {q})"));
            }
        }
    }
    unknown
}

#[test]
fn metric_names_skips_functions_labels_ranges_grouping_and_variables() {
    let names = metric_names(
        r#"histogram_quantile(0.99, sum by (volume, op, le) (rate(vraid_volume_latency_seconds_bucket{volume=~"$volume"}[$__rate_interval]))) / on (volume) group_left vraid_x > 0"#,
    );
    assert_eq!(names, ["vraid_volume_latency_seconds_bucket", "vraid_x"]);
    assert_eq!(
        metric_names("label_values(vraid_volume_state, volume)"),
        ["vraid_volume_state"]
    );
}

#[test]
fn every_query_of_the_dashboard_names_a_metric_vraid_exports() {
    // Arrange
    let exported = exported(&scrape().render());
    let dashboard: serde_json::Value = serde_json::from_str(DASHBOARD).unwrap();
    let all: BTreeSet<String> = queries(&dashboard)
        .iter()
        .flat_map(|q| metric_names(q))
        .collect();

    // Act
    let unknown = unknown_names(DASHBOARD, &exported);

    // Assert: no unknown name, and the dashboard covers I/O, latency,
    // member errors, passes, journal and checksums.
    assert!(unknown.is_empty(), "unknown metrics: {unknown:#?}");
    for must in [
        "vraid_volume_ops_total",
        "vraid_volume_bytes_total",
        "vraid_volume_latency_seconds_bucket",
        "vraid_member_errors_total",
        "vraid_volume_sync_done_bytes",
        "vraid_volume_sync_bytes_per_second",
        "vraid_volume_journal_entries_total",
        "vraid_member_checksum_errors_total",
    ] {
        assert!(all.contains(must), "the dashboard shows no {must}");
    }
    // A misspelt name in a query is caught.
    let typo = DASHBOARD.replace("vraid_volume_ops_total", "vraid_volume_opz_total");
    assert!(unknown_names(&typo, &exported)
        .iter()
        .any(|n| n.starts_with("vraid_volume_opz_total")));
}
