//! The pools' part of the exposition: space per pool (total, used, free,
//! provisioned, overcommit), space per pool volume, and the pool
//! volumes' QoS and cache series (their I/O counters join the
//! `vraid_volume_*` families under their own `volume` label).

use std::fmt;
use std::sync::Arc;

use prometheus_client::encoding::DescriptorEncoder;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;

use super::{family, Labels};
use crate::control::status::PoolVolumeStatus;
use crate::control::Registry;
use crate::metrics::stats::IoStats;
use crate::pool::service::PoolListing;

/// One scrape's snapshot of the pools and their volumes.
#[derive(Debug, Default)]
pub(super) struct PoolScrape {
    pools: Vec<PoolListing>,
    volumes: Vec<(PoolVolumeStatus, Arc<IoStats>)>,
}

fn labels(v: &PoolVolumeStatus) -> Labels {
    vec![("volume", v.name.clone()), ("pool", v.pool.clone())]
}

impl PoolScrape {
    pub(super) async fn take(reg: &Registry) -> PoolScrape {
        let Ok(pools) = reg.pools() else {
            return PoolScrape::default();
        };
        let pools = pools.list().await;
        let clients = reg.pool_volume_clients();
        let volumes = crate::control::status_pools::pool_volumes(reg, &pools)
            .into_iter()
            .filter_map(|v| {
                let (_, c) = clients.iter().find(|(n, _)| *n == v.name)?;
                let stats = c.stats.clone();
                Some((v, stats))
            })
            .collect();
        PoolScrape { pools, volumes }
    }

    /// The pool volumes' counters, labelled by volume.
    pub(super) fn io(&self) -> Vec<(Labels, Arc<IoStats>)> {
        self.volumes
            .iter()
            .map(|(v, s)| (vec![("volume", v.name.clone())], s.clone()))
            .collect()
    }

    pub(super) fn encode(&self, enc: &mut DescriptorEncoder) -> fmt::Result {
        let pool = |l: &PoolListing| vec![("pool", l.pool.clone())];
        for (name, help, get) in [
            (
                "vraid_pool_total_bytes",
                "Bytes of a pool's data clusters",
                (|l| l.space.total_bytes) as fn(&PoolListing) -> u64,
            ),
            ("vraid_pool_used_bytes", "Bytes of clusters in use", |l| {
                l.space.used_bytes
            }),
            ("vraid_pool_free_bytes", "Bytes of free clusters", |l| {
                l.space.free_bytes
            }),
            (
                "vraid_pool_provisioned_bytes",
                "Sum of the sizes of a pool's writable volumes",
                |l| l.space.provisioned_bytes,
            ),
        ] {
            let series = self
                .pools
                .iter()
                .map(|l| (pool(l), ConstGauge::new(get(l) as i64)));
            family(enc, name, help, MetricType::Gauge, series)?;
        }
        family(
            enc,
            "vraid_pool_overcommit_ratio",
            "Provisioned bytes over a pool's data bytes (above 1: volumes can ask for more than there is)",
            MetricType::Gauge,
            self.pools.iter().map(|l| (pool(l), ConstGauge::new(l.overcommit))),
        )?;
        self.volume_space(enc)?;
        self.client(enc)
    }

    fn volume_space(&self, enc: &mut DescriptorEncoder) -> fmt::Result {
        family(
            enc,
            "vraid_pool_volume_size_bytes",
            "Size of a pool volume (provisioned)",
            MetricType::Gauge,
            self.volumes
                .iter()
                .map(|(v, _)| (labels(v), ConstGauge::new(v.size as i64))),
        )?;
        family(
            enc,
            "vraid_pool_volume_mapped_bytes",
            "Bytes of clusters a pool volume maps (used, shared ones included)",
            MetricType::Gauge,
            self.volumes
                .iter()
                .map(|(v, _)| (labels(v), ConstGauge::new(v.mapped_bytes as i64))),
        )
    }

    fn client(&self, enc: &mut DescriptorEncoder) -> fmt::Result {
        family(
            enc,
            "vraid_pool_volume_qos_throttled_seconds",
            "Time a pool volume's client requests waited for its QoS limits, together",
            MetricType::Counter,
            self.volumes.iter().map(|(v, _)| {
                let secs = v.qos.throttled_us as f64 / 1e6;
                (labels(v), ConstCounter::new(secs))
            }),
        )?;
        family(
            enc,
            "vraid_pool_volume_cache_dirty_bytes",
            "Bytes of acknowledged writes held in a pool volume's volatile write cache",
            MetricType::Gauge,
            self.volumes
                .iter()
                .map(|(v, _)| (labels(v), ConstGauge::new(v.cache.dirty_bytes as i64))),
        )
    }
}
