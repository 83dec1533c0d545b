//! The Prometheus exposition (text format 0.0.4) of the registry, encoded
//! by `prometheus-client`: one scrape takes a [`Scrape`] snapshot (each
//! volume's typed [`VolumeStatus`], its fault rules, and the lock-free
//! [`IoStats`] counters of the volume and its members) and a collector
//! turns it into metric families.
//!
//! The I/O counters and latency histograms are the crate's own metrics
//! ([`IoStats`]), encoded as they are.

use std::fmt;
use std::sync::Arc;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;

use super::stats::{IoStats, OpCounters, OpType};
use crate::control::status::BehindStatus;
use crate::control::status::{wire_name, FaultStatus, VolumeFaultStatus, VolumeStatus};
use crate::control::Registry;
use crate::remote::RemoteSnapshot;

/// `Content-Type` of the exposition.
pub use prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

/// Label pairs of one series.
type Labels = Vec<(&'static str, String)>;

/// What one scrape shows of a volume.
#[derive(Debug)]
struct VolumeScrape {
    status: VolumeStatus,
    stats: Arc<IoStats>,
    /// Per role: the member's labels (the path holding the role now) and
    /// counters.
    members: Vec<(Labels, Arc<IoStats>)>,
    faults: Vec<FaultStatus>,
    volume_faults: Vec<VolumeFaultStatus>,
}

impl VolumeScrape {
    fn labels(&self) -> Labels {
        vec![("volume", self.status.name.clone())]
    }
}

/// One scrape's snapshot of every volume.
#[derive(Debug)]
pub struct Scrape(Vec<VolumeScrape>, pools::PoolScrape);

impl Scrape {
    /// The snapshot of every volume of `reg`.
    pub async fn take(reg: &Registry) -> Scrape {
        let mut volumes = Vec::new();
        for v in reg.volumes() {
            let status = v.status().await;
            let vl: Labels = vec![("volume", v.name.clone())];
            // The path label is the one that holds the role now (after a
            // spare, `add` or `replace` took it), as `status` shows.
            let path_now = |role: usize| {
                status
                    .members
                    .iter()
                    .find(|s| s.role == role)
                    .and_then(|s| s.path.clone())
            };
            let members = v
                .members
                .iter()
                .map(|m| {
                    let mut l = vl.clone();
                    l.push(("member", m.role.to_string()));
                    let path = path_now(m.role).or_else(|| m.path.clone());
                    l.push(("path", path.unwrap_or_default()));
                    (l, m.stats.clone())
                })
                .collect();
            volumes.push(VolumeScrape {
                status,
                stats: v.stats.clone(),
                members,
                faults: v.faults(),
                volume_faults: v.volume_faults(),
            });
        }
        Scrape(volumes, pools::PoolScrape::take(reg).await)
    }

    /// The exposition text.
    pub fn render(self) -> String {
        let mut registry = prometheus_client::registry::Registry::default();
        registry.register_collector(Box::new(self));
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::prometheus_text::encode(&mut out, &registry);
        out
    }
}

/// The whole exposition of `reg` now.
pub async fn render(reg: &Registry) -> String {
    Scrape::take(reg).await.render()
}

/// Encodes the family `name` (counters get `_total` appended) with one
/// series per `(labels, metric)`; its `# HELP` and `# TYPE` even without
/// any (every name vraid exports is always listed).
fn family<S: EncodeLabelSet, M: EncodeMetric>(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    kind: MetricType,
    series: impl IntoIterator<Item = (S, M)>,
) -> fmt::Result {
    let mut m = enc.encode_descriptor(name, help, None, kind)?;
    for (labels, metric) in series {
        metric.encode(m.encode_family(&labels)?)?;
    }
    Ok(())
}

/// `labels` plus `op`.
fn with_op(labels: &Labels, op: OpType) -> Labels {
    let mut l = labels.clone();
    l.push(("op", op.label().to_string()));
    l
}

/// The I/O families of `prefix` (`vraid_volume`, `vraid_member`), one
/// series per device and operation type.
fn io_families(
    enc: &mut DescriptorEncoder,
    prefix: &str,
    what: &str,
    devices: &[(Labels, Arc<IoStats>)],
) -> fmt::Result {
    // One series per device and operation type; the crate's metrics are
    // handles on shared state, so a clone reads the live values.
    fn per_op<M: EncodeMetric + Clone>(
        devices: &[(Labels, Arc<IoStats>)],
        metric: fn(&OpCounters) -> &M,
    ) -> Vec<(Labels, M)> {
        devices
            .iter()
            .flat_map(|(l, s)| OpType::ALL.map(|op| (with_op(l, op), metric(s.op(op)).clone())))
            .collect()
    }
    for (name, help, metric) in [
        (
            "ops",
            "operations completed, by type",
            (|c| &c.ops) as fn(&OpCounters) -> &_,
        ),
        ("bytes", "bytes transferred by successful operations", |c| {
            &c.bytes
        }),
        ("errors", "operations that failed", |c| &c.errors),
    ] {
        family(
            enc,
            &format!("{prefix}_{name}"),
            &format!("{what} {help}"),
            MetricType::Counter,
            per_op(devices, metric),
        )?;
    }
    family(
        enc,
        &format!("{prefix}_latency_seconds"),
        &format!("{what} operation latency"),
        MetricType::Histogram,
        per_op(devices, |c| &c.latency),
    )
}

/// The members' bounce copies, all members of the process together (one
/// series: the count is kept per process, `member::bounce_bytes`).
fn bounce(enc: &mut DescriptorEncoder) -> fmt::Result {
    let series = [(
        Labels::new(),
        ConstCounter::new(crate::member::bounce_bytes()),
    )];
    family(
        enc,
        "vraid_member_bounce_bytes",
        "Bytes file members copied through an aligned bounce buffer (I/O not aligned for O_DIRECT, or the pread fallback), all members of this process",
        MetricType::Counter,
        series,
    )
}

/// NBD connections the server dropped, per reason, all NBD servers of
/// this process together.
fn nbd_drops(enc: &mut DescriptorEncoder) -> fmt::Result {
    use crate::export::nbd::limits::{DropReason, Drops};
    let series = DropReason::ALL.map(|why| {
        let labels: Labels = vec![("reason", why.label().to_string())];
        (labels, ConstCounter::new(Drops::process().get(why)))
    });
    family(
        enc,
        "vraid_nbd_connections_dropped",
        "NBD connections in transmission the server closed: idle (idle timeout), slow_drain (replies read under the minimum drain rate), stalled_reply, stalled_payload (nothing for the write timeout)",
        MetricType::Counter,
        series,
    )
}

/// Direct member writes off the 4 KiB granule (docs/FORMAT.md §8 "Writes
/// into holes"), all file members of this process (`member::nowait`).
fn member_nowait(enc: &mut DescriptorEncoder) -> fmt::Result {
    let n = crate::member::nowait::counts();
    let series = [(Labels::new(), ConstCounter::new(n.tries))];
    family(
        enc,
        "vraid_member_nowait_tries",
        "Direct member writes off the 4 KiB granule submitted with RWF_NOWAIT, all members of this process",
        MetricType::Counter,
        series,
    )?;
    let series = [
        ("would_block", n.refused_would_block),
        ("unsupported", n.refused_unsupported),
    ]
    .map(|(why, v)| {
        let labels: Labels = vec![("reason", why.to_string())];
        (labels, ConstCounter::new(v))
    });
    family(
        enc,
        "vraid_member_nowait_refused",
        "RWF_NOWAIT member writes the kernel refused: would_block (EAGAIN: hole, unwritten extent, cached pages; then widened), unsupported (EOPNOTSUPP: the file system is not tried again)",
        MetricType::Counter,
        series,
    )?;
    for (name, help, value) in [
        (
            "vraid_member_widened_writes",
            "Direct member writes widened to whole 4 KiB blocks after a would_block refusal",
            n.widened,
        ),
        (
            "vraid_member_widened_untried",
            "Widened member writes that did not try RWF_NOWAIT first (their member's last 16 tries were all refused: holes)",
            n.untried,
        ),
        (
            "vraid_member_edge_reads",
            "Edge-block reads of widened member writes",
            n.edge_reads,
        ),
        (
            "vraid_member_lone_inline",
            "Lone member requests (queue depth 1) run on the caller's thread instead of the io_uring thread",
            crate::member::lone::inline_runs(),
        ),
        (
            "vraid_member_lone_refused",
            "Lone member requests the kernel refused inline with EAGAIN (RWF_NOWAIT: it would have blocked)",
            crate::member::lone::refused_runs(),
        ),
    ] {
        let series = [(Labels::new(), ConstCounter::new(value))];
        family(enc, name, help, MetricType::Counter, series)?;
    }
    Ok(())
}

/// The future pool's slow paths (`future_pool::stats`), per process: in
/// steady state none of them grows.
fn future_pool(enc: &mut DescriptorEncoder) -> fmt::Result {
    let stats = crate::future_pool::stats();
    for (name, help, value) in [
        (
            "vraid_future_pool_heap_blocks",
            "Blocks the future pool allocated on the heap (a thread's free list was empty)",
            stats.heap_blocks,
        ),
        (
            "vraid_future_pool_released_blocks",
            "Blocks the future pool gave back to the heap (a thread's free list was full, or the thread exited)",
            stats.released_blocks,
        ),
        (
            "vraid_future_pool_boxed_futures",
            "Futures boxed on the heap instead of the pool (larger than its largest class, or over-aligned)",
            stats.boxed_futures,
        ),
    ] {
        let series = [(Labels::new(), ConstCounter::new(value))];
        family(enc, name, help, MetricType::Counter, series)?;
    }
    Ok(())
}

impl Scrape {
    fn states(&self, enc: &mut DescriptorEncoder) -> fmt::Result {
        family(
            enc,
            "vraid_volume_state",
            "Volume state: 0 optimal, 1 degraded, 2 failed, 3 rebuilding, 4 resyncing",
            MetricType::Gauge,
            self.0
                .iter()
                .map(|v| (v.labels(), ConstGauge::new(v.status.state.code()))),
        )?;
        family(
            enc,
            "vraid_member_state",
            "Member state: 0 active, 1 failed, 2 missing, 3 removed, 4 rebuilding",
            MetricType::Gauge,
            self.0.iter().flat_map(|v| {
                v.members
                    .iter()
                    .zip(&v.status.members)
                    .map(|((l, _), m)| (l.clone(), ConstGauge::new(m.state.code())))
            }),
        )
    }

    fn io(&self, enc: &mut DescriptorEncoder) -> fmt::Result {
        let mut volumes: Vec<_> = self
            .0
            .iter()
            .map(|v| (v.labels(), v.stats.clone()))
            .collect();
        volumes.extend(self.1.io());
        io_families(enc, "vraid_volume", "Client", &volumes)?;
        let members: Vec<_> = self
            .0
            .iter()
            .flat_map(|v| v.members.iter().cloned())
            .collect();
        io_families(enc, "vraid_member", "Member", &members)?;
        family(
            enc,
            "vraid_member_checksum_errors",
            "Member 4 KiB blocks that failed their checksum when read",
            MetricType::Counter,
            self.0.iter().flat_map(|v| {
                v.members
                    .iter()
                    .zip(&v.status.members)
                    .map(|((l, _), m)| (l.clone(), ConstCounter::new(m.checksum_errors)))
            }),
        )
    }

    fn faults(&self, enc: &mut DescriptorEncoder) -> fmt::Result {
        family(
            enc,
            "vraid_fault_hits",
            "Times an injected fault rule fired",
            MetricType::Counter,
            self.0.iter().flat_map(|v| {
                v.faults.iter().map(|f| {
                    let mut l = v.labels();
                    l.push(("member", f.member.to_string()));
                    l.push(("id", f.id.to_string()));
                    l.push(("kind", wire_name(&f.spec.kind)));
                    (l, ConstCounter::new(f.hits))
                })
            }),
        )
    }

    fn journal(&self, enc: &mut DescriptorEncoder) -> fmt::Result {
        let journals = || {
            self.0.iter().filter_map(|v| {
                let j = v.status.engine.as_ref()?.journal?;
                Some((v.labels(), j))
            })
        };
        for (name, help, field) in [
            (
                "vraid_volume_journal_batches",
                "Write-hole journal batches written (FUA), summed over members",
                (|j| j.batches) as fn(&crate::control::status::JournalStatus) -> u64,
            ),
            (
                "vraid_volume_journal_entries",
                "Write-hole journal entries (stripe writes logged)",
                |j| j.entries,
            ),
            (
                "vraid_volume_journal_checkpoints",
                "Write-hole journal checkpoints (every member flushed)",
                |j| j.checkpoints,
            ),
        ] {
            let series = journals().map(|(l, j)| (l, ConstCounter::new(field(&j))));
            family(enc, name, help, MetricType::Counter, series)?;
        }
        Ok(())
    }

    fn checksum_cache(&self, enc: &mut DescriptorEncoder) -> fmt::Result {
        type Field = (
            &'static str,
            &'static str,
            fn(&crate::integrity::CacheStats) -> u64,
        );
        let caches = || {
            self.0.iter().filter_map(|v| {
                let c = v.status.engine.as_ref()?.checksum_cache?;
                Some((v.labels(), c))
            })
        };
        let counters: [Field; 5] = [
            (
                "vraid_volume_checksum_cache_hits",
                "Checksum-page look-ups served from memory",
                |c| c.hits,
            ),
            (
                "vraid_volume_checksum_cache_misses",
                "Checksum-page look-ups that loaded the page",
                |c| c.misses,
            ),
            (
                "vraid_volume_checksum_cache_loads",
                "Checksum pages read from the members",
                |c| c.loads,
            ),
            (
                "vraid_volume_checksum_cache_evictions",
                "Checksum pages evicted to stay within the budget",
                |c| c.evictions,
            ),
            (
                "vraid_volume_checksum_cache_writebacks",
                "Dirty checksum pages written back to make room",
                |c| c.writebacks,
            ),
        ];
        for (name, help, field) in counters {
            let series = caches().map(|(l, c)| (l, ConstCounter::new(field(&c))));
            family(enc, name, help, MetricType::Counter, series)?;
        }
        let gauges: [Field; 2] = [
            (
                "vraid_volume_checksum_cache_resident_bytes",
                "Checksum pages held in memory",
                |c| c.resident_bytes,
            ),
            (
                "vraid_volume_checksum_cache_budget_bytes",
                "Checksum-page cache budget",
                |c| c.budget_bytes,
            ),
        ];
        for (name, help, field) in gauges {
            let series = caches().map(|(l, c)| (l, ConstGauge::new(field(&c))));
            family(enc, name, help, MetricType::Gauge, series)?;
        }
        Ok(())
    }

    /// Remote (NBD) members: requests, latency, reconnects, timeouts.
    fn remote(&self, enc: &mut DescriptorEncoder) -> fmt::Result {
        type Field = (&'static str, &'static str, fn(&RemoteSnapshot) -> u64);
        let remotes = || {
            self.0.iter().flat_map(|v| {
                v.members
                    .iter()
                    .zip(&v.status.members)
                    .filter_map(|((l, _), m)| Some((l.clone(), m.remote?)))
            })
        };
        let counters: [Field; 5] = [
            (
                "vraid_member_remote_requests",
                "Remote member requests answered",
                |r| r.requests,
            ),
            (
                "vraid_member_remote_latency_microseconds",
                "Sum of remote member request latencies",
                |r| r.latency_us_total,
            ),
            (
                "vraid_member_remote_reconnects",
                "Remote member reconnections",
                |r| r.reconnects,
            ),
            (
                "vraid_member_remote_timeouts",
                "Remote member requests timed out",
                |r| r.timeouts,
            ),
            (
                "vraid_member_remote_retries",
                "Remote member requests sent again",
                |r| r.retries,
            ),
        ];
        for (name, help, field) in counters {
            let series = remotes().map(|(l, r)| (l, ConstCounter::new(field(&r))));
            family(enc, name, help, MetricType::Counter, series)?;
        }
        let max = remotes().map(|(l, r)| (l, ConstGauge::new(r.latency_us_max as i64)));
        family(
            enc,
            "vraid_member_remote_latency_max_microseconds",
            "Longest remote member request latency",
            MetricType::Gauge,
            max,
        )?;
        let conns = remotes().map(|(l, r)| (l, ConstGauge::new(r.connections as i64)));
        family(
            enc,
            "vraid_member_remote_connections",
            "Remote member connections live",
            MetricType::Gauge,
            conns,
        )?;
        self.behind(enc)
    }

    /// Write-behind members: the lag of the write-behind queue.
    fn behind(&self, enc: &mut DescriptorEncoder) -> fmt::Result {
        type Field = (&'static str, &'static str, fn(&BehindStatus) -> u64);
        let behind = || {
            self.0.iter().flat_map(|v| {
                v.members
                    .iter()
                    .zip(&v.status.members)
                    .filter_map(|((l, _), m)| Some((l.clone(), m.behind?)))
            })
        };
        let gauges: [Field; 2] = [
            (
                "vraid_member_behind_lag_bytes",
                "Bytes a write-behind member has not got yet",
                |b| b.lag_bytes,
            ),
            (
                "vraid_member_behind_lag_requests",
                "Writes a write-behind member has not got yet",
                |b| b.lag_requests,
            ),
        ];
        for (name, help, field) in gauges {
            let series = behind().map(|(l, b)| (l, ConstGauge::new(field(&b) as i64)));
            family(enc, name, help, MetricType::Gauge, series)?;
        }
        let total = behind().map(|(l, b)| (l, ConstCounter::new(b.queued_total)));
        family(
            enc,
            "vraid_member_behind_writes",
            "Writes that went behind to a write-behind member",
            MetricType::Counter,
            total,
        )
    }

    fn sync(&self, enc: &mut DescriptorEncoder) -> fmt::Result {
        let passes = || {
            self.0.iter().filter_map(|v| {
                let s = v.status.engine.as_ref()?.sync.clone()?;
                let mut l = v.labels();
                l.push(("kind", s.kind.word().to_string()));
                l.push((
                    "member",
                    s.member.map_or_else(String::new, |m| m.to_string()),
                ));
                Some((l, s))
            })
        };
        family(
            enc,
            "vraid_volume_sync_done_bytes",
            "Bytes per member handled so far by the pass running (kind: rebuild, recovery, replace, resync, scrub)",
            MetricType::Gauge,
            passes().map(|(l, s)| (l, ConstGauge::new(s.done_bytes))),
        )?;
        family(
            enc,
            "vraid_volume_sync_total_bytes",
            "Bytes per member the pass running handles in all",
            MetricType::Gauge,
            passes().map(|(l, s)| (l, ConstGauge::new(s.total_bytes))),
        )?;
        family(
            enc,
            "vraid_volume_sync_skipped_bytes",
            "Bytes of done_bytes the pass running skipped because no write ever reached them",
            MetricType::Gauge,
            passes().map(|(l, s)| (l, ConstGauge::new(s.skipped_bytes))),
        )?;
        family(
            enc,
            "vraid_volume_sync_bytes_per_second",
            "Average rate of the pass running since it started",
            MetricType::Gauge,
            passes().map(|(l, s)| (l, ConstGauge::new(s.bytes_per_sec))),
        )
    }
}

impl Scrape {
    /// Volume faults and the write cache.
    fn client(&self, enc: &mut DescriptorEncoder) -> fmt::Result {
        family(
            enc,
            "vraid_volume_fault_hits",
            "Times an injected volume (client-facing) fault rule fired",
            MetricType::Counter,
            self.0.iter().flat_map(|v| {
                v.volume_faults.iter().map(|f| {
                    let mut l = v.labels();
                    l.push(("id", f.id.to_string()));
                    l.push(("kind", wire_name(&f.spec.kind)));
                    (l, ConstCounter::new(f.hits))
                })
            }),
        )?;
        family(
            enc,
            "vraid_volume_stalled_requests",
            "Client requests held by stall rules now",
            MetricType::Gauge,
            self.0.iter().filter_map(|v| {
                let f = v.status.volume_faults?;
                Some((v.labels(), ConstGauge::new(f.stalled as i64)))
            }),
        )?;
        let caches = || {
            self.0
                .iter()
                .filter_map(|v| Some((v.labels(), v.status.cache.clone()?)))
        };
        family(
            enc,
            "vraid_volume_cache_dirty_bytes",
            "Bytes of acknowledged writes held in the volatile write cache",
            MetricType::Gauge,
            caches().map(|(l, c)| (l, ConstGauge::new(c.dirty_bytes as i64))),
        )?;
        family(
            enc,
            "vraid_volume_powercuts",
            "Power cuts injected",
            MetricType::Counter,
            caches().map(|(l, c)| (l, ConstCounter::new(c.powercuts))),
        )?;
        family(
            enc,
            "vraid_volume_powercut_dropped_writes",
            "Unflushed writes dropped by power cuts",
            MetricType::Counter,
            caches().map(|(l, c)| (l, ConstCounter::new(c.dropped_writes))),
        )?;
        self.write_log(enc)
    }

    /// The write log of each volume (`vraid log start`): 0 when none.
    fn write_log(&self, enc: &mut DescriptorEncoder) -> fmt::Result {
        let logs = || {
            self.0
                .iter()
                .map(|v| (v.labels(), v.status.write_log.as_ref()))
        };
        family(
            enc,
            "vraid_volume_write_log_active",
            "1 while a write log records the volume's writes",
            MetricType::Gauge,
            logs().map(|(l, s)| (l, ConstGauge::new(i64::from(s.is_some_and(|s| s.active))))),
        )?;
        family(
            enc,
            "vraid_volume_write_log_entries",
            "Entries recorded in the volume's write log",
            MetricType::Gauge,
            logs().map(|(l, s)| (l, ConstGauge::new(s.map_or(0, |s| s.entries as i64)))),
        )?;
        family(
            enc,
            "vraid_volume_write_log_bytes",
            "Bytes of the volume's write log file",
            MetricType::Gauge,
            logs().map(|(l, s)| (l, ConstGauge::new(s.map_or(0, |s| s.bytes as i64)))),
        )
    }
}

impl Scrape {
    /// QoS: requests a limit held and for how long (`crate::qos`).
    fn qos(&self, enc: &mut DescriptorEncoder) -> fmt::Result {
        let qos = || {
            self.0
                .iter()
                .filter_map(|v| Some((v.labels(), v.status.qos?)))
        };
        family(
            enc,
            "vraid_volume_qos_throttled_requests",
            "Client requests that waited for a QoS limit",
            MetricType::Counter,
            qos().map(|(l, q)| (l, ConstCounter::new(q.throttled_requests))),
        )?;
        family(
            enc,
            "vraid_volume_qos_throttled_seconds",
            "Time client requests waited for QoS limits, together",
            MetricType::Counter,
            qos().map(|(l, q)| (l, ConstCounter::new(q.throttled_us as f64 / 1e6))),
        )?;
        family(
            enc,
            "vraid_volume_qos_waiting_requests",
            "Client requests waiting for a QoS limit now",
            MetricType::Gauge,
            qos().map(|(l, q)| (l, ConstGauge::new(q.waiting as i64))),
        )?;
        family(
            enc,
            "vraid_volume_qos_capped_requests",
            "Client requests that waited for room under the QoS in-flight cap",
            MetricType::Counter,
            qos().map(|(l, q)| (l, ConstCounter::new(q.capped_requests))),
        )
    }
}

impl Collector for Scrape {
    fn encode(&self, mut enc: DescriptorEncoder) -> fmt::Result {
        self.states(&mut enc)?;
        self.io(&mut enc)?;
        self.faults(&mut enc)?;
        self.client(&mut enc)?;
        self.qos(&mut enc)?;
        self.1.encode(&mut enc)?;
        self.journal(&mut enc)?;
        self.checksum_cache(&mut enc)?;
        self.remote(&mut enc)?;
        self.sync(&mut enc)?;
        nbd_drops(&mut enc)?;
        bounce(&mut enc)?;
        member_nowait(&mut enc)?;
        future_pool(&mut enc)
    }
}

#[path = "prometheus_pools.rs"]
mod pools;

#[cfg(test)]
#[path = "prometheus_tests.rs"]
mod tests;
