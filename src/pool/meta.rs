//! The pool's metadata logic over the store: reference counts, the
//! allocators, volume records and the per-volume map trees (lookup,
//! shadowing, map/unmap, release). Called with the pool's metadata lock
//! held; every change lands in the store's transaction.

use std::collections::{HashMap, HashSet, VecDeque};

use crate::pool::format::{
    Geometry, Kind, Summary, VolumeRecord, COUNTS_PER_PAGE, MAP_FANOUT, RECORDS_PER_DIR,
    SUMMARY_BLOCK,
};
use crate::pool::page::Page;
use crate::pool::store::Store;
use crate::pool::PoolError;

/// Transaction size at which a safe point commits.
pub const COMMIT_AT: usize = 256;
/// How far `zeroed_from` is raised past a fresh cluster.
const ZEROED_STEP: u64 = 1024;
/// A fresh cluster this close to `zeroed_from` raises it (P-32): ahead
/// of need, so the raise is usually durable before a writer reaches it.
const ZEROED_AHEAD: u64 = 768;

/// Where a volume record lives.
#[derive(Clone, Debug)]
pub struct Slot {
    /// Directory block.
    pub block: u64,
    /// Index in the block.
    pub index: usize,
    /// The record.
    pub rec: VolumeRecord,
}

/// A cluster handed out by the allocator.
#[derive(Clone, Copy, Debug)]
pub struct Fresh {
    /// Physical cluster.
    pub cluster: u64,
    /// True if it is known to read zero.
    pub zeroed: bool,
}

/// A cluster set aside by [`Meta::reserve_cluster_deferred`].
#[derive(Clone, Copy, Debug)]
pub struct Reserved {
    /// The cluster.
    pub fresh: Fresh,
    /// Record that must be durable before the cluster is written.
    pub wait: Option<u64>,
    /// A `zeroed_from` raise was made: commit it soon.
    pub kick: bool,
}

/// Metadata state of an open pool.
#[derive(Debug)]
pub struct Meta {
    /// Pages and journal.
    pub store: Store,
    /// Pool counters (mirror of the summary page).
    pub summary: Summary,
    /// Volume records (mirror of the directory).
    pub slots: Vec<Slot>,
    /// Clusters freed since the last quiescent commit.
    pub pending: HashSet<u64>,
    /// Clusters whose count dropped, with the seq of the record the drop
    /// goes into: until that record is durable the committed maps may
    /// still share them, so they are never written in place
    /// (copy-on-write instead).
    pub unshared: HashMap<u64, u64>,
    /// The same for split records (P-8a applies to them as to clusters,
    /// FORMAT.md §11 "Split clusters", write case 3).
    pub unshared_records: HashMap<crate::pool::split::SplitRef, u64>,
    /// The split page new records go to while it has room.
    pub split_page: Option<u64>,
    /// Granules of split records being filled (write case 3): another
    /// write to one waits (`Pool::fills_done`).
    pub busy: HashSet<(crate::pool::split::SplitRef, u32)>,
    /// Clusters being copied from by a copy-on-write with the lock
    /// released (how many copies): not written in place meanwhile.
    pub copying: HashMap<u64, usize>,
    /// Clusters handed to writes filling a hole with the lock released:
    /// counted 0 on disk until mapped (crash case P-16).
    pub reserved: HashSet<u64>,
    /// `zeroed_from` raises not durable yet: (seq of their record, value).
    zeroed_raises: VecDeque<(u64, u64)>,
    /// `zeroed_from` as of the newest durable record.
    zeroed_durable: u64,
    fresh_next: u64,
    cluster_cursor: u64,
    meta_cursor: u64,
}

/// Base-508 digits of a virtual cluster, least significant first.
pub fn digits(vc: u64) -> [usize; 4] {
    let mut d = [0; 4];
    let mut v = vc;
    for x in &mut d {
        *x = (v % MAP_FANOUT) as usize;
        v /= MAP_FANOUT;
    }
    d
}

impl Meta {
    /// Loads the summary and directory of a replayed store.
    pub async fn load(mut store: Store) -> Result<Meta, PoolError> {
        let geo = store.geo;
        let summary = Summary::read(store.page(SUMMARY_BLOCK).await?);
        summary.check(&geo)?;
        let mut slots = Vec::new();
        for block in geo.dir_start()..geo.ccount_start() {
            let page = store.page(block).await?;
            for index in 0..RECORDS_PER_DIR {
                if let Some(rec) = VolumeRecord::read(page, index, &geo)? {
                    slots.push(Slot { block, index, rec });
                }
            }
        }
        Ok(Meta {
            store,
            fresh_next: summary.zeroed_from,
            zeroed_raises: VecDeque::new(),
            zeroed_durable: summary.zeroed_from,
            summary,
            slots,
            pending: HashSet::new(),
            unshared: HashMap::new(),
            unshared_records: HashMap::new(),
            split_page: None,
            busy: HashSet::new(),
            copying: HashMap::new(),
            reserved: HashSet::new(),
            cluster_cursor: geo.first_data_cluster,
            meta_cursor: geo.meta_start(),
        })
    }

    /// The geometry.
    pub fn geo(&self) -> Geometry {
        self.store.geo
    }

    /// Writes the summary mirror into its page.
    pub async fn save_summary(&mut self) -> Result<(), PoolError> {
        let s = self.summary;
        s.write(self.store.page_mut(SUMMARY_BLOCK).await?);
        Ok(())
    }

    /// Index of the volume named `name`.
    pub fn find(&self, name: &str) -> Result<usize, PoolError> {
        self.slots
            .iter()
            .position(|s| {
                s.rec.name == name && s.rec.flags & crate::pool::format::FLAG_DELETING == 0
            })
            .ok_or_else(|| PoolError::NotFound(name.to_string()))
    }

    /// Index of volume `id`.
    pub fn by_id(&self, id: u32) -> Result<usize, PoolError> {
        self.slots
            .iter()
            .position(|s| s.rec.id == id)
            .ok_or_else(|| PoolError::NotFound(format!("#{id}")))
    }

    /// Writes slot `i`'s record into its page.
    pub async fn save_slot(&mut self, i: usize) -> Result<(), PoolError> {
        let Slot { block, index, rec } = self.slots[i].clone();
        rec.write(self.store.page_mut(block).await?, index);
        Ok(())
    }

    async fn count_of(&mut self, (block, i): (u64, usize)) -> Result<u32, PoolError> {
        Ok(self.store.page(block).await?.count(i))
    }

    async fn set_count_of(&mut self, (block, i): (u64, usize), v: u32) -> Result<(), PoolError> {
        self.store.page_mut(block).await?.set_count(i, v);
        Ok(())
    }

    /// Reference count of data cluster `c`.
    pub async fn ccount(&mut self, c: u64) -> Result<u32, PoolError> {
        self.check_cluster(c)?;
        let at = self.geo().cluster_count_at(c);
        self.count_of(at).await
    }

    /// Reference count of map page `b`.
    pub async fn mcount(&mut self, b: u64) -> Result<u32, PoolError> {
        self.check_map(b)?;
        let at = self.geo().map_count_at(b);
        self.count_of(at).await
    }

    /// A map entry naming a data cluster, or a corrupt-metadata error.
    pub fn check_data_cluster(&self, c: u64) -> Result<(), PoolError> {
        self.check_cluster(c)
    }

    fn check_cluster(&self, c: u64) -> Result<(), PoolError> {
        match self.geo().is_data_cluster(c) {
            true => Ok(()),
            false => Err(PoolError::Corrupt(format!(
                "map entry names cluster {c}, outside the data area"
            ))),
        }
    }

    fn check_map(&self, b: u64) -> Result<(), PoolError> {
        match self.geo().is_map_block(b) {
            true => Ok(()),
            false => Err(PoolError::Corrupt(format!(
                "map pointer names block {b}, outside the map area"
            ))),
        }
    }

    /// Adds `delta` to a data cluster's count; a count reaching 0 makes it
    /// pending-free.
    pub async fn add_ccount(&mut self, c: u64, delta: i64) -> Result<(), PoolError> {
        let n = i64::from(self.ccount(c).await?) + delta;
        if n < 0 || n > i64::from(u32::MAX) {
            return Err(PoolError::Corrupt(format!(
                "count of cluster {c} out of range"
            )));
        }
        let at = self.geo().cluster_count_at(c);
        self.set_count_of(at, n as u32).await?;
        if delta < 0 {
            self.unshared.insert(c, self.store.open_seq());
        }
        if n == 0 {
            self.summary.free_clusters += 1;
            self.pending.insert(c);
            self.save_summary().await?;
        }
        Ok(())
    }

    /// Adds `delta` to a map page's count; at 0 the page is free.
    pub async fn add_mcount(&mut self, b: u64, delta: i64) -> Result<u32, PoolError> {
        let n = i64::from(self.mcount(b).await?) + delta;
        if n < 0 || n > i64::from(u32::MAX) {
            return Err(PoolError::Corrupt(format!(
                "count of map page {b} out of range"
            )));
        }
        let at = self.geo().map_count_at(b);
        self.set_count_of(at, n as u32).await?;
        if n == 0 {
            self.summary.free_meta += 1;
            self.save_summary().await?;
        }
        Ok(n as u32)
    }

    /// Hands out a data cluster (count 1). May commit (to raise
    /// `zeroed_from` before the cluster is written).
    pub async fn alloc_cluster(&mut self) -> Result<Fresh, PoolError> {
        let fresh = self.reserve_cluster().await?;
        self.claim(fresh.cluster).await?;
        Ok(fresh)
    }

    /// Sets a cluster aside for a write (its count stays 0 until
    /// [`Meta::claim`]; the allocator skips it). May commit (to raise
    /// `zeroed_from` before the cluster is written).
    pub async fn reserve_cluster(&mut self) -> Result<Fresh, PoolError> {
        let r = self.reserve_cluster_deferred().await?;
        if r.wait.is_some() {
            self.commit().await?;
        }
        Ok(r.fresh)
    }

    /// [`Meta::reserve_cluster`] without its commit: the caller must not
    /// write the cluster before record `wait` is durable (the
    /// `zeroed_from` raise that covers it, its own or another writer's;
    /// P-32); `kick`: this call raised `zeroed_from`, the caller should
    /// get the raise committed soon (it need not wait for it).
    pub async fn reserve_cluster_deferred(&mut self) -> Result<Reserved, PoolError> {
        let g = self.geo();
        let end = g.first_data_cluster + g.clusters;
        if self.summary.free_clusters <= (self.pending.len() + self.reserved.len()) as u64 {
            return Err(PoolError::NoSpace);
        }
        let (cluster, zeroed) = if self.fresh_next < end {
            self.fresh_next += 1;
            (self.fresh_next - 1, true)
        } else {
            (self.scan_free_cluster().await?, false)
        };
        let raise = zeroed && cluster + ZEROED_AHEAD >= self.summary.zeroed_from;
        let kick = raise && self.summary.zeroed_from < end;
        if kick {
            // Durable before the cluster is written: a crash leaves no
            // stray bytes above the durable `zeroed_from` (P-1, P-32).
            self.summary.zeroed_from = (cluster + ZEROED_STEP).min(end);
            self.save_summary().await?;
            let seq = self.store.open_seq();
            self.zeroed_raises
                .push_back((seq, self.summary.zeroed_from));
        }
        self.reserved.insert(cluster);
        let wait = match zeroed && cluster >= self.zeroed_durable() {
            true => Some(self.covering_raise(cluster)),
            false => None,
        };
        Ok(Reserved {
            fresh: Fresh { cluster, zeroed },
            wait,
            kick,
        })
    }

    /// `zeroed_from` as of the newest durable record (folds in the
    /// raises whose records are durable by now).
    fn zeroed_durable(&mut self) -> u64 {
        let durable = self.store.durable_seq();
        while let Some(&(seq, v)) = self.zeroed_raises.front() {
            if seq > durable {
                break;
            }
            self.zeroed_durable = self.zeroed_durable.max(v);
            self.zeroed_raises.pop_front();
        }
        self.zeroed_durable
    }

    /// Seq of the first pending raise above `cluster` (the open
    /// transaction's if none: never, a raise always precedes).
    fn covering_raise(&self, cluster: u64) -> u64 {
        let found = self.zeroed_raises.iter().find(|(_, v)| *v > cluster);
        found.map_or(self.store.open_seq(), |(seq, _)| *seq)
    }

    /// Gives a reserved cluster count 1 (it is about to be mapped).
    pub async fn claim(&mut self, cluster: u64) -> Result<(), PoolError> {
        self.reserved.remove(&cluster);
        let at = self.geo().cluster_count_at(cluster);
        self.set_count_of(at, 1).await?;
        self.summary.free_clusters -= 1;
        self.save_summary().await
    }

    async fn scan_free_cluster(&mut self) -> Result<u64, PoolError> {
        let g = self.geo();
        let end = g.first_data_cluster + g.clusters;
        for _ in 0..=g.ccount_pages() {
            let c0 = self.cluster_cursor;
            let (block, first) = g.cluster_count_at(c0);
            let page = self.store.page(block).await?;
            let n = (COUNTS_PER_PAGE as usize - first).min((end - c0) as usize);
            let found = (0..n).map(|k| (k, c0 + k as u64)).find(|(k, c)| {
                page.count(first + k) == 0
                    && !self.pending.contains(c)
                    && !self.reserved.contains(c)
            });
            if let Some((_, c)) = found {
                self.cluster_cursor = c;
                return Ok(c);
            }
            self.cluster_cursor = if c0 + n as u64 >= end {
                g.first_data_cluster
            } else {
                c0 + n as u64
            };
        }
        Err(PoolError::NoSpace)
    }

    /// Hands out a map page (count 1), filled with an empty `kind` page.
    pub async fn alloc_map(&mut self, kind: Kind) -> Result<u64, PoolError> {
        let g = self.geo();
        if self.summary.free_meta == 0 {
            return Err(PoolError::NoSpace);
        }
        let b = if self.summary.meta_fresh < g.meta_end() {
            self.summary.meta_fresh += 1;
            self.summary.meta_fresh - 1
        } else {
            self.scan_free_map().await?
        };
        self.set_count_of(g.map_count_at(b), 1).await?;
        self.summary.free_meta -= 1;
        self.save_summary().await?;
        let uuid = self.store.uuid();
        self.store.put_new(b, Page::new(kind, b, &uuid));
        Ok(b)
    }

    async fn scan_free_map(&mut self) -> Result<u64, PoolError> {
        let g = self.geo();
        for _ in 0..=g.meta_blocks {
            let b = self.meta_cursor;
            self.meta_cursor = if b + 1 >= g.meta_end() {
                g.meta_start()
            } else {
                b + 1
            };
            if self.mcount(b).await? == 0 {
                return Ok(b);
            }
        }
        Err(PoolError::NoSpace)
    }

    /// Commits the transaction.
    pub async fn commit(&mut self) -> Result<(), PoolError> {
        self.store.commit().await?;
        self.prune_unshared();
        Ok(())
    }

    /// One copy-on-write from `old` is over (0: none was counted).
    pub fn stop_copying(&mut self, old: u64) {
        if let Some(n) = self.copying.get_mut(&old) {
            *n -= 1;
            if *n == 0 {
                self.copying.remove(&old);
            }
        }
    }

    /// Forgets drops whose record is durable.
    pub fn prune_unshared(&mut self) {
        let durable = self.store.durable_seq();
        self.unshared.retain(|_, seq| *seq > durable);
        self.unshared_records.retain(|_, seq| *seq > durable);
    }

    /// True if the volume may write cluster `c` (count 1 now) in place:
    /// not shared in the committed maps either, and no copy-on-write is
    /// reading it.
    pub fn writable_in_place(&self, c: u64) -> bool {
        let durable = self.store.durable_seq();
        self.unshared.get(&c).is_none_or(|seq| *seq <= durable) && !self.copying.contains_key(&c)
    }

    /// Commits if the transaction is large (a safe point).
    pub async fn safe_point(&mut self) -> Result<(), PoolError> {
        if self.store.dirty_pages() >= COMMIT_AT {
            self.commit().await?;
        }
        Ok(())
    }

    /// Quiescent commit: no I/O is in flight, so pending clusters become
    /// allocatable; returns them (to discard).
    pub async fn commit_quiescent(&mut self) -> Result<Vec<u64>, PoolError> {
        self.commit().await?;
        Ok(self.pending.drain().collect())
    }
}
