//! Per-block checksums of member data (docs/FORMAT.md §8).
//!
//! ```text
//!  Volume ─► StatsDevice ─► ChecksumDevice ─► FaultDevice ─► Window
//!                               │ entries
//!                               ▼
//!                           CsumStore (per member, pages cached) ─► csum area
//!                               │ pages counted against
//!                               ▼
//!                           CacheBudget (per array) ─► cache_stats()
//!  Checksums (per array): every store by role ─► writeback_all (before the
//!      bitmap clears bits, at clean shutdown) ─► reseal (after a resync step)
//!      (a store whose member the array dropped is retired: never written
//!      again, skipped by all three — crash case 87)
//!
//!  Inline layout (§8 "Inline layout"): no store, tags next to the data:
//!  Volume ─► StatsDevice ─► InlineDevice ─► FaultDevice (told the layout) ─► Window
//! ```

mod beside;
pub mod cache;
pub mod device;
mod edge_cache;
mod inflight;
pub mod inline;
pub mod page;
mod reported;
pub mod store;
pub mod tag;

#[cfg(test)]
mod beside_tests;
#[cfg(test)]
mod cache_tests;
#[cfg(test)]
mod fua_evict_tests;
#[cfg(test)]
mod hold_tests;
#[cfg(test)]
mod inline_file_tests;
#[cfg(test)]
mod inline_raid_tests;
#[cfg(test)]
mod inline_tests;
#[cfg(test)]
mod retire_tests;
#[cfg(test)]
mod tests;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};

pub use cache::{CacheBudget, CacheStats};
pub use device::{ChecksumDevice, Trusted};
pub use inline::InlineDevice;
pub use store::CsumStore;

use crate::block::{BlockDevice, BlockResult, BoxFuture};
use crate::raid::checksum::{ChecksumHook, Verdict};
use crate::raid::MemberIndex;
use crate::units::ByteOffset;

/// The checksum stores of one array, by role (a role may have two: its
/// member and one being rebuilt into it).
#[derive(Default)]
pub struct Checksums {
    roles: ByRole<CsumStore>,
    /// The inline-layout members, by role (no store: tags are on them).
    inline: ByRole<InlineDevice>,
    /// The stored entries predate writes made without checksums
    /// (`csum_state` = 0): no verdict may rely on them.
    stale: AtomicBool,
    /// The page budget every store of the array shares.
    budget: Arc<CacheBudget>,
    /// Where member reads are verified (the last `trusted` given to a
    /// wrap; every member of an array gets the same one).
    trusted: Mutex<Option<Trusted>>,
}

/// Per-role objects of one array, held weakly: the members own them, and
/// the ones dropped (a member failed or replaced) are pruned.
struct ByRole<T>(Mutex<Vec<(usize, Weak<T>)>>);

impl<T> Default for ByRole<T> {
    fn default() -> Self {
        ByRole(Mutex::new(Vec::new()))
    }
}

impl<T> ByRole<T> {
    /// Registers `obj` for role `role` (without keeping it alive).
    fn add(&self, role: usize, obj: &Arc<T>) {
        let mut all = self.0.lock().unwrap_or_else(|e| e.into_inner());
        all.retain(|(_, o)| o.strong_count() > 0);
        all.push((role, Arc::downgrade(obj)));
    }

    /// Every live object with its role.
    fn all(&self) -> Vec<(usize, Arc<T>)> {
        let mut all = self.0.lock().unwrap_or_else(|e| e.into_inner());
        all.retain(|(_, o)| o.strong_count() > 0);
        all.iter()
            .filter_map(|(r, o)| o.upgrade().map(|o| (*r, o)))
            .collect()
    }

    /// The live objects of role `role`.
    fn of(&self, role: usize) -> Vec<Arc<T>> {
        self.all()
            .into_iter()
            .filter_map(|(r, o)| (r == role).then_some(o))
            .collect()
    }
}

impl std::fmt::Debug for Checksums {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Checksums").finish_non_exhaustive()
    }
}

impl Checksums {
    /// An empty set, with the default page budget.
    pub fn new() -> Arc<Checksums> {
        Arc::new(Checksums::default())
    }

    /// An empty set whose stores keep at most `budget` bytes of pages in
    /// memory together (docs/FORMAT.md §8, "Page cache").
    pub fn with_cache(budget: u64) -> Arc<Checksums> {
        Arc::new(Checksums {
            budget: Arc::new(CacheBudget::new(budget)),
            ..Checksums::default()
        })
    }

    /// The page cache's budget, residency and counters (`vraid status`,
    /// metrics).
    pub fn cache_stats(&self) -> CacheStats {
        self.budget.stats()
    }

    /// The entries on the members are not maintained (`csum_state` = 0):
    /// [`ChecksumHook::verdicts`] says unknown for every block.
    pub fn set_entries_stale(&self) {
        self.stale.store(true, Ordering::Relaxed);
    }

    /// Wraps the data `window` of the member `raw` in role `role`: its
    /// checksum area lies at `csum_offset` of `raw`. `window` must lie on
    /// `raw`: a flush of the window makes the pages written before it
    /// durable too (a member flush writes its pages, then flushes once). `fresh`: a new member
    /// whose checksum area is not trusted.
    #[allow(clippy::too_many_arguments)]
    pub fn wrap(
        &self,
        role: usize,
        raw: Arc<dyn BlockDevice>,
        csum_offset: u64,
        window: Arc<dyn BlockDevice>,
        fresh: bool,
        trusted: Trusted,
        errors: Arc<AtomicU64>,
    ) -> Arc<dyn BlockDevice> {
        self.note_trusted(&trusted);
        let blocks = window.size().div_ceil(page::BLOCK);
        let budget = self.budget.clone();
        let store = Arc::new(CsumStore::with_budget(
            raw,
            csum_offset,
            blocks,
            fresh,
            budget,
        ));
        self.roles.add(role, &store);
        Arc::new(ChecksumDevice::new(window, store, trusted, errors))
    }

    /// Wraps the physical data area `raw_data` of the member in role `role`
    /// in the inline layout (§8 "Inline layout"): tags are written with
    /// their data, so there is no store and nothing to write back.
    pub fn wrap_inline(
        &self,
        role: usize,
        raw_data: Arc<dyn BlockDevice>,
        trusted: Trusted,
        errors: Arc<AtomicU64>,
    ) -> Arc<dyn BlockDevice> {
        self.note_trusted(&trusted);
        let dev = Arc::new(InlineDevice::new(raw_data, trusted, errors));
        self.inline.add(role, &dev);
        dev
    }

    fn note_trusted(&self, trusted: &Trusted) {
        *self.trusted.lock().unwrap_or_else(|e| e.into_inner()) = Some(trusted.clone());
    }

    /// Writes back the dirty pages of every member (each then flushed).
    /// Every member is tried; the first error is returned.
    pub async fn writeback_all(&self) -> BlockResult {
        self.writeback_roles()
            .await
            .into_iter()
            .next()
            .map_or(Ok(()), |(_, e)| Err(e))
    }

    /// The stores of members in use (a retired one, of a member the array
    /// dropped, is left alone: crash case 87), with their roles.
    fn live_stores(&self) -> Vec<(usize, Arc<CsumStore>)> {
        let mut all = self.roles.all();
        all.retain(|(_, s)| !s.is_retired());
        all
    }

    /// The live stores of role `role`: its member's, and one being rebuilt
    /// into it.
    fn stores_of(&self, role: usize) -> Vec<Arc<CsumStore>> {
        let mut of = self.roles.of(role);
        of.retain(|s| !s.is_retired());
        of
    }

    /// Writes back the dirty pages of every member in use; returns the
    /// errors, by role (a failed member's may be ignored: it is not trusted
    /// again). A retired store writes nothing (crash case 87).
    pub async fn writeback_roles(&self) -> Vec<(usize, crate::block::BlockError)> {
        let stores = self.live_stores();
        let results = futures::future::join_all(stores.iter().map(|(_, s)| s.writeback())).await;
        let mut errors = Vec::new();
        for ((role, s), r) in stores.iter().zip(results) {
            if let Err(e) = r {
                tracing::warn!(role, store = ?s, %e, "writing back checksums failed");
                errors.push((*role, e));
            }
        }
        errors
    }
}

#[cfg(test)]
impl Checksums {
    /// Test wiring: wraps `window` with a store on its own in-memory
    /// checksum area, every block trusted.
    pub(crate) fn wrap_in_memory(
        &self,
        role: usize,
        window: Arc<dyn BlockDevice>,
        fresh: bool,
        errors: Arc<AtomicU64>,
    ) -> Arc<dyn BlockDevice> {
        let raw = in_memory_area(&*window);
        self.wrap(role, raw, 0, window, fresh, Arc::new(|_| true), errors)
    }

    /// Like [`Checksums::wrap_in_memory`], verifying only where `trusted`
    /// says so (a crash's pinned regions are not).
    pub(crate) fn wrap_in_memory_trusting(
        &self,
        role: usize,
        window: Arc<dyn BlockDevice>,
        errors: Arc<AtomicU64>,
        trusted: Trusted,
    ) -> Arc<dyn BlockDevice> {
        let raw = in_memory_area(&*window);
        self.wrap(role, raw, 0, window, false, trusted, errors)
    }
}

/// Test wiring: an in-memory checksum area big enough for `window`.
#[cfg(test)]
fn in_memory_area(window: &dyn BlockDevice) -> Arc<dyn BlockDevice> {
    let blocks = window.size().div_ceil(page::BLOCK);
    let area_len = blocks.div_ceil(page::PAGE_ENTRIES as u64).max(1) * page::PAGE_BYTES as u64;
    Arc::new(crate::member::memory::MemDevice::new("csum", area_len))
}

impl ChecksumHook for Checksums {
    fn cache_stats(&self) -> Option<CacheStats> {
        Some(Checksums::cache_stats(self))
    }

    fn read_verified(&self, offset: ByteOffset) -> bool {
        let trusted = self.trusted.lock().unwrap_or_else(|e| e.into_inner());
        trusted.as_ref().is_none_or(|t| t(offset.get()))
    }

    fn reseal<'a>(
        &'a self,
        member: MemberIndex,
        offset: ByteOffset,
        data: &'a [u8],
    ) -> BoxFuture<'a, BlockResult> {
        crate::block::BoxFuture::new(async move {
            let entries = page::entries_of(data);
            let first = offset.get() / page::BLOCK;
            let mut out = Ok(());
            for s in self.stores_of(member.0) {
                if let Err(e) = s.set(first, &entries).await {
                    tracing::warn!(%member, %e, "resealing checksums failed");
                    out = out.and(Err(e));
                }
            }
            for d in self.inline.of(member.0) {
                if let Err(e) = d.reseal(offset.get(), data).await {
                    tracing::warn!(%member, %e, "resealing inline tags failed");
                    out = out.and(Err(e));
                }
            }
            out
        })
    }

    fn verdicts<'a>(
        &'a self,
        member: MemberIndex,
        offset: ByteOffset,
        data: &'a [u8],
    ) -> BoxFuture<'a, Vec<Verdict>> {
        crate::block::BoxFuture::new(async move {
            let first = offset.get() / page::BLOCK;
            let n = (data.len() as u64).div_ceil(page::BLOCK);
            let stale = self.stale.load(Ordering::Relaxed);
            if let Some(d) = self.inline.of(member.0).first().filter(|_| !stale) {
                if let Ok(v) = d.verdicts(offset.get(), data).await {
                    return v;
                }
                return vec![Verdict::Unknown; n as usize];
            }
            let store = if stale {
                None
            } else {
                self.stores_of(member.0).into_iter().next()
            };
            let entries = match store {
                Some(s) => s.entries(first, n).await.ok(),
                None => None,
            };
            let entries = entries.unwrap_or_else(|| vec![page::UNKNOWN; n as usize]);
            data.chunks(page::BLOCK as usize)
                .zip(entries)
                .map(|(block, e)| verdict(e, block))
                .collect()
        })
    }
}

/// One block against its entry.
fn verdict(entry: u32, block: &[u8]) -> Verdict {
    if entry == page::UNKNOWN {
        Verdict::Unknown
    } else if entry == page::block_entry(block) {
        Verdict::Good
    } else {
        Verdict::Bad
    }
}
