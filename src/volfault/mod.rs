//! Failure injection for the client's own stack: what a volume's clients
//! see go wrong, on purpose (docs/FAULTS.md). Member faults
//! (`member::fault`) test vraid; these test the guest's filesystem or
//! database on top of it.
//!
//! ```text
//!  NBD / vhost-user-blk ─► StatsDevice ─► QosDevice ─► VolumeFaultDevice ─► (wlog::LogDevice) ─► WriteCache ─► raid::Volume
//!                                          │ rules: a FaultSet (the member      │ volatile mode:
//!                                          │ rule filters), bad sectors,        │ writes held until
//!                                          │ stalls released on clear           │ FLUSH/FUA; power cut
//! ```
//!
//! [`VolumeFaults`] is the state the control plane and the device share;
//! [`ClientStack`] builds the chain above a volume once, for both exports.

pub mod cache;
pub mod cache_state;
mod device;
pub mod named;
pub mod sectors;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use serde::{Deserialize, Serialize};

pub use cache::{CacheMode, CacheStatus, WriteCache, DEFAULT_CACHE_SIZE};
pub use cache_state::{KeepPolicy, PowerCutReport};
pub use device::VolumeFaultDevice;

use crate::block::BlockDevice;
use crate::member::fault::{FaultKind, FaultRule, FaultSet, Rng};
use sectors::SectorSet;

/// Seed of the probability filter of volume rules.
const RULE_SEED: u64 = 0x766f_6c66_6175_6c74;

/// Volume faults in `vraid status` (`volume_faults`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeFaultsStatus {
    /// Rules installed.
    pub rules: usize,
    /// Requests held by `stall` rules now.
    pub stalled: u64,
    /// Bytes still bad under `bad-sector` rules.
    pub bad_bytes: u64,
}

/// One volume's fault rules and their run-time state.
#[derive(Debug)]
pub struct VolumeFaults {
    rules: Arc<FaultSet>,
    /// Sectors still bad, per `bad-sector` rule id.
    bad: Mutex<HashMap<u64, SectorSet>>,
    bad_rules: AtomicUsize,
    stalled: AtomicU64,
    /// Bumped whenever a rule goes: stalled requests look again.
    removed: tokio::sync::watch::Sender<u64>,
    rng: Rng,
    size: u64,
}

impl VolumeFaults {
    /// No rules, for a volume of `size` bytes.
    pub fn new(size: u64) -> VolumeFaults {
        VolumeFaults {
            rules: Arc::new(FaultSet::new()),
            bad: Mutex::new(HashMap::new()),
            bad_rules: AtomicUsize::new(0),
            stalled: AtomicU64::new(0),
            removed: tokio::sync::watch::Sender::new(0),
            rng: Rng::new(RULE_SEED),
            size,
        }
    }

    /// The rules.
    pub fn rules(&self) -> &Arc<FaultSet> {
        &self.rules
    }

    fn bad(&self) -> MutexGuard<'_, HashMap<u64, SectorSet>> {
        self.bad.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Installs a rule (its spec validated by the caller).
    pub fn add(&self, rule: Arc<FaultRule>) {
        if rule.spec.kind == FaultKind::BadSector {
            let (start, end) = rule.spec.range();
            let mut bad = self.bad();
            bad.insert(rule.id, SectorSet::covering(start, end, self.size));
            self.bad_rules.store(bad.len(), Ordering::Release);
        }
        self.rules.add(rule);
    }

    /// Removes rule `id`; true if it was there. Its stalled requests go on.
    pub fn remove(&self, id: u64) -> bool {
        let found = self.rules.remove(id);
        self.forget(Some(id));
        found
    }

    /// Removes every rule; returns how many there were.
    pub fn clear(&self) -> usize {
        let n = self.rules.clear();
        self.forget(None);
        n
    }

    fn forget(&self, id: Option<u64>) {
        {
            let mut bad = self.bad();
            match id {
                Some(id) => drop(bad.remove(&id)),
                None => bad.clear(),
            }
            self.bad_rules.store(bad.len(), Ordering::Release);
        }
        self.removed.send_modify(|n| *n += 1);
    }

    /// The status snapshot.
    pub fn status(&self) -> VolumeFaultsStatus {
        VolumeFaultsStatus {
            rules: self.rules.rules().len(),
            stalled: self.stalled.load(Ordering::Acquire),
            bad_bytes: self.bad().values().map(SectorSet::bytes).sum(),
        }
    }

    /// True when rule `id` still has a bad sector in `offset..+len`.
    fn bad_in(&self, id: u64, offset: u64, len: u64) -> bool {
        self.bad().get(&id).is_some_and(|s| s.overlaps(offset, len))
    }

    /// True while a `bad-sector` rule is installed.
    fn has_bad_sectors(&self) -> bool {
        self.bad_rules.load(Ordering::Acquire) != 0
    }

    /// A write of `offset..+len` succeeded: its sectors are good again.
    fn heal(&self, offset: u64, len: u64) {
        if !self.has_bad_sectors() {
            return;
        }
        for set in self.bad().values_mut() {
            set.heal(offset, len);
        }
    }

    /// Waits until none of the rules `ids` is installed any more.
    async fn wait_cleared(&self, ids: &[u64]) {
        let _held = Stalled::new(&self.stalled);
        let mut removed = self.removed.subscribe();
        while ids.iter().any(|id| self.rules.contains(*id)) {
            if removed.changed().await.is_err() {
                return;
            }
        }
    }
}

/// Counts a stalled request for as long as it waits (dropped or not).
struct Stalled<'a>(&'a AtomicU64);

impl<'a> Stalled<'a> {
    fn new(n: &'a AtomicU64) -> Stalled<'a> {
        n.fetch_add(1, Ordering::AcqRel);
        Stalled(n)
    }
}

impl Drop for Stalled<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// What stands between a volume and its exports.
#[derive(Clone)]
pub struct ClientStack {
    /// Volume fault rules and state.
    pub faults: Arc<VolumeFaults>,
    /// The write cache.
    pub cache: Arc<WriteCache>,
    /// The QoS limits (`crate::qos`), on top of the chain.
    pub qos: Arc<crate::qos::Limiter>,
    /// The write log (`vraid log start`), between the faults and the cache.
    pub log: Arc<crate::wlog::WriteLog>,
    /// The top of the chain: what the exports serve.
    pub device: Arc<dyn BlockDevice>,
}

impl std::fmt::Debug for ClientStack {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientStack")
            .field("faults", &self.faults)
            .field("cache", &self.cache)
            .field("qos", &self.qos)
            .finish_non_exhaustive()
    }
}

impl ClientStack {
    /// QoS (no limits) over faults over an idle write log over a
    /// (write-through) cache over `volume`.
    pub fn new(volume: Arc<dyn BlockDevice>) -> ClientStack {
        let faults = Arc::new(VolumeFaults::new(volume.size()));
        let cache = Arc::new(WriteCache::new(volume));
        let log = Arc::new(crate::wlog::WriteLog::new());
        let logged = crate::wlog::LogDevice::new(cache.clone(), log.clone());
        let faulty = Arc::new(VolumeFaultDevice::new(Arc::new(logged), faults.clone()));
        let qos = Arc::new(crate::qos::Limiter::default());
        let device = Arc::new(crate::qos::QosDevice::new(faulty, qos.clone()));
        ClientStack {
            faults,
            cache,
            qos,
            log,
            device,
        }
    }
}

#[cfg(test)]
mod cache_tests;
#[cfg(test)]
mod redteam_tests;
#[cfg(test)]
mod tests;
