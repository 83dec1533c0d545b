//! An open pool and the operations users see: create and open a pool,
//! create / delete / snapshot / clone / resize / rename volumes, flush,
//! space accounting (docs/FORMAT.md §11).
//!
//! Concurrency: `gate` is held shared by every request of every thin
//! volume and exclusively by management operations and quiescent commits
//! (they wait for the requests in flight); `meta` serializes metadata.
//! Lock order: gate, then meta.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::{Mutex as AsyncMutex, RwLock};

use crate::block::{BlockDevice, Durability};
use crate::pool::format::{
    depth_for, FormatError, Geometry, Header, Kind, Summary, VolumeRecord, BLOCK, FLAG_DELETING,
    FLAG_SNAPSHOT, NAME_MAX, RECORDS_PER_DIR, SUMMARY_BLOCK,
};
use crate::pool::meta::{Meta, Slot};
use crate::pool::page::Page;
use crate::pool::store::Store;
use crate::pool::PoolError;
use crate::units::ByteOffset;

/// Copy-on-write bytes in flight, pool-wide, in [`COPY_UNIT`]s: four
/// whole 1 MiB clusters, or 64 splits of 64 KiB granules (session 18:
/// a split waited for one of four permits like a whole copy did).
pub(crate) const COPIES_IN_FLIGHT: usize = 64;
/// The unit of [`COPIES_IN_FLIGHT`] (a copy takes its size in units,
/// 1 at least, all of them at most).
pub(crate) const COPY_UNIT: u64 = 64 << 10;

/// One volume as listed.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct VolumeInfo {
    /// Volume id.
    pub id: u32,
    /// Name (also its export name).
    pub name: String,
    /// Size in bytes.
    pub size: u64,
    /// Bytes of clusters mapped (shared ones included).
    pub mapped_bytes: u64,
    /// A read-only snapshot.
    pub snapshot: bool,
    /// The volume it was taken of or cloned from.
    pub parent: Option<String>,
}

/// Space of a pool.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PoolSpace {
    /// Cluster size in bytes.
    pub cluster_size: u64,
    /// Bytes of data clusters.
    pub total_bytes: u64,
    /// Bytes of clusters in use.
    pub used_bytes: u64,
    /// Bytes free.
    pub free_bytes: u64,
    /// Sum of the writable volumes' sizes.
    pub provisioned_bytes: u64,
}

/// An open pool.
pub struct Pool {
    pub(crate) gate: RwLock<()>,
    pub(crate) meta: AsyncMutex<Meta>,
    pub(crate) dev: Arc<dyn BlockDevice>,
    pub(crate) geo: Geometry,
    /// A version-3 pool: writes to shared clusters split them.
    pub(crate) splits: bool,
    /// Woken when fills of split granules end (`Meta::busy`).
    pub(crate) fills_done: tokio::sync::Notify,
    /// Writes that waited for another's fill of a granule.
    pub(crate) fill_waits: AtomicU64,
    sizes: Mutex<HashMap<u32, Arc<AtomicU64>>>,
    /// Per-volume write gates (see `released.rs`).
    pub(crate) vol_gates: Mutex<HashMap<u32, Arc<RwLock<()>>>>,
    /// Copy-on-write data copies in flight, at most [`COPIES_IN_FLIGHT`].
    pub(crate) copies: tokio::sync::Semaphore,
    /// The directory as last published (read without the async lock:
    /// NBD negotiation asks it which contexts a volume offers).
    listing: Mutex<Vec<Listed>>,
    /// Places of splits to complete (`complete.rs`), and the completer's wake-up.
    pub(crate) completions: Mutex<std::collections::VecDeque<(u32, u64)>>,
    pub(crate) completer_wake: Arc<tokio::sync::Notify>,
    /// The split pages are to be walked for incomplete records (set at
    /// open of a version-3 pool and when the queue overflows:
    /// `complete_scan.rs`).
    pub(crate) rescan: std::sync::atomic::AtomicBool,
    /// Places the completion queue holds at most (`complete::QUEUE_MAX`;
    /// tests lower it).
    pub(crate) queue_max: std::sync::atomic::AtomicUsize,
}

/// A volume record as published for synchronous readers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Listed {
    /// Volume id.
    pub id: u32,
    /// Name.
    pub name: String,
    /// Parent id, 0 = none.
    pub parent: u32,
    /// A read-only snapshot.
    pub snapshot: bool,
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool")
            .field("array", &self.dev.name())
            .finish()
    }
}

fn check_name(name: &str) -> Result<(), PoolError> {
    let ok = !name.is_empty()
        && name.len() <= NAME_MAX
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
    match ok {
        true => Ok(()),
        false => Err(PoolError::Invalid(format!(
            "volume name {name:?}: 1 to {NAME_MAX} of A-Z a-z 0-9 . _ -"
        ))),
    }
}

fn check_size(size: u64) -> Result<(), PoolError> {
    match size > 0 && size.is_multiple_of(512) {
        true => Ok(()),
        false => Err(PoolError::Invalid(format!(
            "size {size}: a positive multiple of 512"
        ))),
    }
}

/// Options of `pool create`.
#[derive(Clone, Copy, Debug)]
pub struct CreateOptions {
    /// Cluster size in bytes (a power of two, 64 KiB ..= 64 MiB).
    pub cluster_size: u64,
    /// The array reads zero already: skip zeroing the data area.
    pub assume_zeroed: bool,
    /// Overwrite an array whose first block is not zero.
    pub force: bool,
    /// Lay a version-3 pool, whose shared clusters may be split on write
    /// (docs/FORMAT.md §11, "Split clusters"); older builds refuse it.
    pub split: bool,
}

impl Default for CreateOptions {
    fn default() -> Self {
        CreateOptions {
            cluster_size: 1 << 20,
            assume_zeroed: false,
            force: false,
            split: false,
        }
    }
}

async fn write_pages(dev: &dyn BlockDevice, first: u64, pages: &[Page]) -> Result<(), PoolError> {
    let mut buf = Vec::with_capacity(pages.len() * BLOCK);
    for p in pages {
        buf.extend_from_slice(p.bytes());
    }
    dev.write(ByteOffset(first * BLOCK as u64), &buf, Durability::Normal)
        .await?;
    Ok(())
}

async fn write_empty(
    dev: &dyn BlockDevice,
    kind: Kind,
    range: std::ops::Range<u64>,
    uuid: &[u8; 16],
) -> Result<(), PoolError> {
    let mut b = range.start;
    while b < range.end {
        let n = (range.end - b).min(256);
        let pages: Vec<Page> = (b..b + n)
            .map(|x| {
                let mut p = Page::new(kind, x, uuid);
                p.seal();
                p
            })
            .collect();
        write_pages(dev, b, &pages).await?;
        b += n;
    }
    Ok(())
}

impl Pool {
    /// Lays a new, empty pool on the array `dev`.
    pub async fn create(dev: &dyn BlockDevice, opts: CreateOptions) -> Result<(), PoolError> {
        if !opts.cluster_size.is_power_of_two() {
            return Err(PoolError::Invalid(
                "cluster size must be a power of two".into(),
            ));
        }
        let geo = Geometry::plan(dev.size(), opts.cluster_size.trailing_zeros())?;
        let mut first = vec![0u8; BLOCK];
        dev.read(ByteOffset(0), &mut first).await?;
        if !opts.force && first.iter().any(|b| *b != 0) {
            return Err(PoolError::Invalid(
                "the array's first 4 KiB are not zero (a pool, a file system?); use --force".into(),
            ));
        }
        if !opts.assume_zeroed {
            zero_data(dev, &geo).await?;
        }
        let uuid = *uuid::Uuid::new_v4().as_bytes();
        let summary = Summary {
            next_volume_id: 1,
            free_clusters: geo.clusters,
            free_meta: geo.meta_blocks,
            zeroed_from: geo.first_data_cluster,
            meta_fresh: geo.meta_start(),
        };
        let mut page = Page::new(Kind::Summary, SUMMARY_BLOCK, &uuid);
        summary.write(&mut page);
        page.seal();
        write_pages(dev, SUMMARY_BLOCK, &[page]).await?;
        write_empty(
            dev,
            Kind::Directory,
            geo.dir_start()..geo.ccount_start(),
            &uuid,
        )
        .await?;
        write_empty(
            dev,
            Kind::ClusterCounts,
            geo.ccount_start()..geo.mcount_start(),
            &uuid,
        )
        .await?;
        write_empty(
            dev,
            Kind::MapCounts,
            geo.mcount_start()..geo.meta_start(),
            &uuid,
        )
        .await?;
        dev.flush().await?;
        let header = Header {
            version: match opts.split {
                true => crate::pool::split::SPLIT_VERSION,
                false => crate::pool::format::VERSION,
            },
            pool_uuid: uuid,
            generation: 1,
            array_bytes: dev.size(),
            journal_seq: 1,
            geometry: geo,
        };
        for copy in 0..2u64 {
            let bytes = header.encode();
            dev.write(ByteOffset(copy * BLOCK as u64), &bytes, Durability::Normal)
                .await?;
            dev.flush().await?;
        }
        Ok(())
    }

    /// Opens the pool on `dev`: newest valid header, journal replay,
    /// directory, and resumes interrupted deletes.
    pub async fn open(
        dev: Arc<dyn BlockDevice>,
        cache_pages: usize,
    ) -> Result<Arc<Pool>, PoolError> {
        let (header, copy) = read_header(dev.as_ref()).await?;
        if dev.size() < header.array_bytes {
            return Err(PoolError::ArrayTooSmall {
                have: dev.size(),
                need: header.array_bytes,
            });
        }
        let mut store = Store::new(dev.clone(), header, copy, cache_pages);
        let replayed = store.replay().await?;
        if replayed > 0 {
            tracing::info!(array = dev.name(), replayed, "pool journal replayed");
        }
        let (geo, splits) = (store.geo, store.splits());
        let meta = Meta::load(store).await?;
        let pool = Arc::new(Pool {
            gate: RwLock::new(()),
            meta: AsyncMutex::new(meta),
            dev,
            geo,
            splits,
            fills_done: tokio::sync::Notify::new(),
            fill_waits: AtomicU64::new(0),
            sizes: Mutex::new(HashMap::new()),
            vol_gates: Mutex::new(HashMap::new()),
            copies: tokio::sync::Semaphore::new(COPIES_IN_FLIGHT),
            listing: Mutex::new(Vec::new()),
            completions: Mutex::new(std::collections::VecDeque::new()),
            completer_wake: Arc::new(tokio::sync::Notify::new()),
            rescan: std::sync::atomic::AtomicBool::new(splits),
            queue_max: std::sync::atomic::AtomicUsize::new(crate::pool::complete::QUEUE_MAX),
        });
        pool.resume_deletes().await?;
        pool.resume_tail_cuts().await?;
        pool.publish(&*pool.meta.lock().await);
        Ok(pool)
    }

    async fn resume_deletes(&self) -> Result<(), PoolError> {
        let _gate = self.gate.write().await;
        let mut m = self.meta.lock().await;
        while let Some(i) = m
            .slots
            .iter()
            .position(|s| s.rec.flags & FLAG_DELETING != 0)
        {
            finish_delete(&mut m, i).await?;
        }
        Ok(())
    }

    /// Cluster size in bytes.
    pub fn cluster_size(&self) -> u64 {
        self.geo.cluster_size()
    }

    /// The array underneath.
    pub fn array(&self) -> &Arc<dyn BlockDevice> {
        &self.dev
    }

    /// Every volume (snapshots included), by id.
    pub async fn volumes(&self) -> Vec<VolumeInfo> {
        let m = self.meta.lock().await;
        let name_of = |id: u32| {
            m.slots
                .iter()
                .find(|s| s.rec.id == id)
                .map(|s| s.rec.name.clone())
        };
        let mut v: Vec<VolumeInfo> = m
            .slots
            .iter()
            .filter(|s| s.rec.flags & FLAG_DELETING == 0)
            .map(|s| VolumeInfo {
                id: s.rec.id,
                name: s.rec.name.clone(),
                size: s.rec.size,
                mapped_bytes: s.rec.mapped.saturating_mul(self.cluster_size()),
                snapshot: s.rec.is_snapshot(),
                parent: if s.rec.parent == 0 {
                    None
                } else {
                    name_of(s.rec.parent)
                },
            })
            .collect();
        v.sort_by_key(|x| x.id);
        v
    }

    /// Used, free and provisioned space.
    pub async fn space(&self) -> PoolSpace {
        let m = self.meta.lock().await;
        let cs = self.cluster_size();
        let total = self.geo.clusters * cs;
        let free = m.summary.free_clusters * cs;
        PoolSpace {
            cluster_size: cs,
            total_bytes: total,
            used_bytes: total.saturating_sub(free),
            free_bytes: free,
            provisioned_bytes: m
                .slots
                .iter()
                .filter(|s| !s.rec.is_snapshot() && s.rec.flags & FLAG_DELETING == 0)
                .fold(0u64, |sum, s| sum.saturating_add(s.rec.size)),
        }
    }

    /// Publishes the directory for synchronous readers (after every
    /// change of names, parents or membership).
    pub(crate) fn publish(&self, m: &Meta) {
        let listed = m
            .slots
            .iter()
            .filter(|s| s.rec.flags & FLAG_DELETING == 0)
            .map(|s| Listed {
                id: s.rec.id,
                name: s.rec.name.clone(),
                parent: s.rec.parent,
                snapshot: s.rec.is_snapshot(),
            })
            .collect();
        *self.listing.lock().unwrap_or_else(|e| e.into_inner()) = listed;
    }

    /// Header version: 2, or 3 ([`crate::pool::split::SPLIT_VERSION`],
    /// split clusters).
    pub fn version(&self) -> u32 {
        match self.splits {
            true => crate::pool::split::SPLIT_VERSION,
            false => 2,
        }
    }

    /// The directory as last published.
    pub fn listing(&self) -> Vec<Listed> {
        self.listing
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The live size cell of volume `id` (shared with its thin volumes).
    pub(crate) fn size_cell(&self, id: u32, size: u64) -> Arc<AtomicU64> {
        let mut sizes = self.sizes.lock().expect("size map");
        let cell = sizes
            .entry(id)
            .or_insert_with(|| Arc::new(AtomicU64::new(size)));
        cell.store(size, Ordering::Release);
        cell.clone()
    }

    /// Commits with no request in flight (FLUSH): makes clusters freed
    /// since the last such commit allocatable, and discards them.
    pub async fn flush(&self) -> Result<(), PoolError> {
        let _gate = self.gate.write().await;
        let mut m = self.meta.lock().await;
        commit_and_discard(&mut m, self.dev.as_ref()).await
    }

    /// Metadata pages in memory (for tests and status).
    pub async fn cached_pages(&self) -> usize {
        self.meta.lock().await.store.cached_pages()
    }
}

async fn zero_data(dev: &dyn BlockDevice, geo: &Geometry) -> Result<(), PoolError> {
    let cs = geo.cluster_size();
    let mut at = geo.first_data_cluster * cs;
    let end = (geo.first_data_cluster + geo.clusters) * cs;
    while at < end {
        let n = (end - at).min(1 << 30);
        dev.write_zeroes(ByteOffset(at), n, true).await?;
        at += n;
    }
    Ok(())
}

async fn read_header(dev: &dyn BlockDevice) -> Result<(Header, u64), PoolError> {
    let mut best: Option<(Header, u64)> = None;
    let mut first_err = None;
    for copy in 0..2u64 {
        let mut b = vec![0u8; BLOCK];
        dev.read(ByteOffset(copy * BLOCK as u64), &mut b).await?;
        match Header::decode(&b, copy) {
            Ok(h)
                if best
                    .as_ref()
                    .is_none_or(|(x, _)| h.generation > x.generation) =>
            {
                best = Some((h, copy))
            }
            Ok(_) => {}
            // A copy with the pool's magic that fails its checks is a
            // damaged pool, not "no pool": it must not be served raw.
            Err(e) if first_err.as_ref().is_none_or(|f| *f == FormatError::Magic) => {
                first_err = Some(e)
            }
            Err(_) => {}
        }
    }
    match (best, first_err) {
        (Some(b), _) => Ok(b),
        (None, Some(FormatError::Magic)) | (None, None) => {
            Err(PoolError::NoPool(FormatError::Magic))
        }
        (None, Some(e)) => Err(PoolError::Format(e)),
    }
}

pub(crate) async fn commit_and_discard(
    m: &mut Meta,
    dev: &dyn BlockDevice,
) -> Result<(), PoolError> {
    let freed = m.commit_quiescent().await?;
    let cs = m.geo().cluster_size();
    for c in freed {
        match dev.discard(ByteOffset(c * cs), cs).await {
            Ok(()) | Err(crate::block::BlockError::Unsupported) => {}
            Err(e) => tracing::debug!(error = %e, "discard of a freed cluster failed"),
        }
    }
    Ok(())
}

/// Releases the map of the `deleting` record in slot `i` and frees it.
pub(crate) async fn finish_delete(m: &mut Meta, i: usize) -> Result<(), PoolError> {
    let (root, depth) = (m.slots[i].rec.root, m.slots[i].rec.depth);
    if root != 0 {
        m.release(root, depth - 1, true).await?;
        m.slots[i].rec.root = 0;
        m.save_slot(i).await?;
    }
    let Slot { block, index, .. } = m.slots.remove(i);
    VolumeRecord::clear(m.store.page_mut(block).await?, index);
    m.commit().await
}

pub(crate) fn new_record(m: &Meta, name: &str, size: u64) -> Result<VolumeRecord, PoolError> {
    check_name(name)?;
    check_size(size)?;
    if m.find(name).is_ok() {
        return Err(PoolError::Exists(name.to_string()));
    }
    let clusters = size.div_ceil(m.geo().cluster_size());
    let depth = depth_for(clusters).ok_or_else(|| PoolError::Invalid("volume too large".into()))?;
    Ok(VolumeRecord {
        id: m.summary.next_volume_id,
        flags: 0,
        size,
        root: 0,
        mapped: 0,
        depth,
        parent: 0,
        name: name.to_string(),
    })
}

/// Adds a record in a free directory slot (one transaction with its
/// summary change, committed by the caller).
pub(crate) async fn add_record(m: &mut Meta, rec: VolumeRecord) -> Result<usize, PoolError> {
    let g = m.geo();
    let used: std::collections::HashSet<(u64, usize)> =
        m.slots.iter().map(|s| (s.block, s.index)).collect();
    let free = (g.dir_start()..g.ccount_start())
        .flat_map(|b| (0..RECORDS_PER_DIR).map(move |i| (b, i)))
        .find(|x| !used.contains(x))
        .ok_or_else(|| PoolError::Invalid("the pool's directory is full".into()))?;
    m.summary.next_volume_id = rec
        .id
        .checked_add(1)
        .ok_or_else(|| PoolError::Invalid("volume ids exhausted".into()))?;
    m.save_summary().await?;
    m.slots.push(Slot {
        block: free.0,
        index: free.1,
        rec,
    });
    let i = m.slots.len() - 1;
    m.save_slot(i).await?;
    Ok(i)
}

pub(crate) const SNAPSHOT: u32 = FLAG_SNAPSHOT;
