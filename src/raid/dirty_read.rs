//! Reads of a region dirty at a crash, before its resync (docs/FORMAT.md
//! §8 "Which checksum is trusted where"): member reads there are not
//! verified (a crash may have torn a checksum from its data), so the data
//! path asks the verdicts itself and serves what the resync will keep.
//!
//! ```text
//!  RAID-1 with checksums off: the resync's source mirror only
//!  RAID-5/6 extent: hull read ─► verdicts ─► all pass/unknown: serve
//!     └─ a block fails ─► stripe lock ─► again, and rebuild it from P(/Q)
//!        ─► the rebuild passes? serve it : serve the bytes as read
//! ```
//!
//! A block that fails its checksum while its rebuild passes is what the
//! resync restores (trust.rs); one whose rebuild fails too holds bytes
//! nobody flushed, which the resync keeps: the read serves the same.

use super::checksum::Verdict;
use super::layout::Extent;
use super::raid6::stripe_rows;
use super::trust::BLOCK;
use super::volume::Volume;
use crate::units::ByteOffset;

impl Volume {
    /// Whether member reads of `[offset, offset + len)` go unverified (a
    /// region dirty at a crash, before its resync) while checksums are on.
    pub(super) fn reads_unverified(&self, offset: ByteOffset, len: u64) -> bool {
        let Some(hook) = self.checksums() else {
            return false;
        };
        any_region(offset, len, |at| !hook.read_verified(at))
    }

    /// Whether `[offset, offset + len)` touches a region the write-intent
    /// bitmap does not know to be in sync (dirty at a crash, before its
    /// resync) while checksums are off: mirrors may differ there.
    pub(super) fn reads_unsettled(&self, offset: ByteOffset, len: u64) -> bool {
        let Some(intent) = self.write_intent().filter(|_| self.checksums().is_none()) else {
            return false;
        };
        any_region(offset, len, |at| !intent.settled(at))
    }
}

/// Whether `pred` holds for a bitmap region touching `[offset, offset +
/// len)` (tried once per smallest region and at the last byte).
fn any_region(offset: ByteOffset, len: u64, pred: impl Fn(ByteOffset) -> bool) -> bool {
    const STEP: u64 = 1 << 20; // the smallest bitmap region
    let end = offset.get() + len.max(1);
    let mut at = offset.get();
    while at < end {
        if pred(ByteOffset(at)) {
            return true;
        }
        at = (at / STEP + 1) * STEP;
    }
    pred(ByteOffset(end - 1))
}

/// Serves a RAID-1 range in a region dirty at a crash with checksums off:
/// from the mirror the resync copies from (the first in role order, not
/// write-mostly), as md reads only the first mirror there, so one block
/// reads the same every time and the same as after the resync. False
/// when that mirror cannot be read: the usual path takes over.
pub(super) async fn raid1_resync_source(vol: &Volume, offset: ByteOffset, buf: &mut [u8]) -> bool {
    let Some(source) = vol.read_order(0).next() else {
        return false;
    };
    vol.read_member(source, offset, buf).await.is_ok()
}

/// Serves a RAID-6 extent in an unverified region: as [`parity_extent`],
/// a failing block rebuilt from P/Q and the other data.
pub(super) async fn raid6_extent(vol: &Volume, e: Extent, piece: &mut [u8]) -> bool {
    parity_extent(vol, e, piece, |off, len| async move {
        let rows = stripe_rows(vol, e.stripe, off, len, &[e.member]).await;
        rows.ok()
            .map(|mut rows| rows.data.swap_remove(e.data_index))
    })
    .await
}

/// Serves a RAID-5 extent in an unverified region: as [`parity_extent`],
/// a failing block rebuilt from parity and the other data.
pub(super) async fn raid5_extent(vol: &Volume, e: Extent, piece: &mut [u8]) -> bool {
    parity_extent(vol, e, piece, |off, len| async move {
        let mut rebuilt = vec![0u8; len];
        let done = super::raid5::reconstruct(vol, e.member, off, &mut rebuilt).await;
        done.ok().map(|()| rebuilt)
    })
    .await
}

/// Serves a RAID-5/6 extent in an unverified region (see the module
/// header): a block failing its checksum is rebuilt by `rebuild` (member
/// range `off..+len`, under the stripe lock) and served rebuilt when that
/// passes (what the resync's checksum-guided repair restores), else as
/// read. False when its member cannot be read: the caller's usual path
/// rebuilds it.
async fn parity_extent<F, Fut>(vol: &Volume, e: Extent, piece: &mut [u8], rebuild: F) -> bool
where
    F: FnOnce(ByteOffset, usize) -> Fut,
    Fut: std::future::Future<Output = Option<Vec<u8>>>,
{
    let (off, len) = vol.block_hull(e.member_offset, piece.len() as u64);
    let at = (e.member_offset.get() - off.get()) as usize;
    let mut mine = vec![0u8; len as usize];
    if vol.read_member(e.member, off, &mut mine).await.is_err() {
        return false;
    }
    if vol
        .verdicts(e.member, off, &mine)
        .await
        .contains(&Verdict::Bad)
    {
        let _guard = vol.locks().lock(e.stripe).await;
        if vol.read_member(e.member, off, &mut mine).await.is_err() {
            return false;
        }
        let verdicts = vol.verdicts(e.member, off, &mine).await;
        if let Some(rebuilt) = rebuild(off, mine.len()).await {
            restore_passing(vol, e, off, &verdicts, &rebuilt, &mut mine).await;
        }
    }
    piece.copy_from_slice(&mine[at..at + piece.len()]);
    true
}

/// Copies into `mine` every block that fails its checksum (`verdicts`)
/// whose rebuild (`rebuilt`, same range) passes it.
async fn restore_passing(
    vol: &Volume,
    e: Extent,
    off: ByteOffset,
    verdicts: &[Verdict],
    rebuilt: &[u8],
    mine: &mut [u8],
) {
    for (b, v) in verdicts.iter().enumerate() {
        let r = b * BLOCK..((b + 1) * BLOCK).min(mine.len());
        if *v != Verdict::Bad {
            continue;
        }
        let at = ByteOffset(off.get() + r.start as u64);
        if vol.verdicts(e.member, at, &rebuilt[r.clone()]).await == [Verdict::Good] {
            mine[r.clone()].copy_from_slice(&rebuilt[r]);
            tracing::info!(
                volume = vol.volume_name(),
                member = %e.member,
                offset = at.get(),
                "a block failing its checksum in a region dirty at the crash was served from P/Q \
                 (RAID-5: parity)"
            );
        }
    }
}

/// Serves a RAID-1 range in an unverified region: one mirror's blocks, and
/// where one fails its checksum, under the region locks, the copy the
/// resync keeps ([`super::trust::pick_copy`] over every active mirror).
/// False when the first mirror cannot be read: the usual path takes over.
pub(super) async fn raid1(vol: &Volume, offset: ByteOffset, buf: &mut [u8]) -> bool {
    let (hull, len) = vol.block_hull(offset, buf.len() as u64);
    let at = (offset.get() - hull.get()) as usize;
    let Some(first) = vol.read_order(vol.next_mirror()).next() else {
        return false;
    };
    let mut data = vec![0u8; len as usize];
    if vol.read_member(first, hull, &mut data).await.is_err() {
        return false;
    }
    if vol
        .verdicts(first, hull, &data)
        .await
        .contains(&Verdict::Bad)
    {
        let _guards = super::raid1::lock_regions(vol, hull, len).await;
        let mirrors: Vec<_> = vol.read_order(0).collect();
        let mut copies = Vec::with_capacity(mirrors.len());
        for m in mirrors {
            let mut bytes = vec![0u8; len as usize];
            copies.push(match vol.read_member(m, hull, &mut bytes).await {
                Ok(()) => Some((vol.verdicts(m, hull, &bytes).await, bytes)),
                Err(_) => None,
            });
        }
        pick_blocks(&copies, &mut data);
    }
    buf.copy_from_slice(&data[at..at + buf.len()]);
    true
}

/// Per 4 KiB block of `out`, the copy [`super::trust::pick_copy`] keeps
/// (`copies`: each mirror's verdicts and bytes, `None` if unreadable).
fn pick_blocks(copies: &[Option<(Vec<Verdict>, Vec<u8>)>], out: &mut [u8]) {
    for b in 0..out.len().div_ceil(BLOCK) {
        let r = b * BLOCK..((b + 1) * BLOCK).min(out.len());
        let cands: Vec<Option<(&[u8], Verdict)>> = copies
            .iter()
            .map(|c| c.as_ref().map(|(v, bytes)| (&bytes[r.clone()], v[b])))
            .collect();
        if let Some((bytes, _)) = super::trust::pick_copy(&cands).and_then(|i| cands[i]) {
            out[r].copy_from_slice(bytes);
        }
    }
}
