//! RAID-10's parts of the sync passes. A pass walks member rows; a
//! RAID-10 chunk's copies lie on other rows of other members, so:
//!
//! ```text
//!  rebuild of member m, rows of a..b ─► per row: its chunk's other copies
//!      ─► read one (4 KiB at a time across the copies if none serves all)
//!  resync / scrub step a..b ─► the chunks whose FIRST copy (lowest row,
//!      then member) lies in a..b: each chunk is handled by one step only
//!      ─► read every copy ─► per block the copy trust::pick_copy chooses
//!         (one passing its checksum, else the value most copies hold)
//!      ─► resync: rewrite the others; scrub: count them as mismatches
//!         (and with repair rewrite them)
//! ```
//!
//! A step holds the locks of its own rows; a writer of a chunk locks the
//! rows of all its copies, among them the one the step holds, so copies
//! outside the step's rows cannot change under it either.

use futures::future::join_all;

use super::checksum::Verdict;
use super::level::{LostBlocks, MemberOp, RebuildRead, ScrubCheck};
use super::raid10::{map, Piece};
use super::raid10_layout::{ChunkCopy, Raid10Map};
use super::rebuild::{lock_step, Lost, RebuildError, LOST_BLOCK};
use super::trust;
use super::volume::Volume;
use crate::block::{BlockError, Durability};
use crate::units::ByteOffset;

/// The piece of row `row` of member `m` inside member range `a..b`.
fn row_piece(map: &Raid10Map, chunk: u64, m: usize, row: u64, a: u64, b: u64) -> Option<Piece> {
    let lo = a.max(row * chunk);
    let hi = b.min((row + 1) * chunk);
    let v = map.chunk_at(super::layout::MemberIndex(m), row)?;
    let in_chunk = lo - row * chunk;
    Some(Piece {
        copies: map.copies(v),
        in_chunk,
        len: hi - lo,
        volume_offset: v * chunk + in_chunk,
    })
}

/// The pieces of the chunks whose first copy lies in member range `a..b`.
fn owned_pieces(vol: &Volume, a: u64, b: u64) -> Vec<Piece> {
    let Ok(map) = map(vol) else {
        return Vec::new();
    };
    let chunk = vol.geometry().chunk().get();
    let mut out = Vec::new();
    for row in a / chunk..b.div_ceil(chunk) {
        for m in 0..vol.geometry().members() {
            let Some(p) = row_piece(map, chunk, m, row, a, b) else {
                continue;
            };
            let first = p.copies.iter().min_by_key(|k| (k.row, k.member));
            if first.is_some_and(|k| k.row == row && k.member.0 == m) {
                out.push(p);
            }
        }
    }
    out
}

/// One copy of a piece as read: its bytes and, per 4 KiB block, its
/// checksum verdict, `None` for a block that could not be read.
struct CopyRead {
    data: Vec<u8>,
    blocks: Vec<Option<Verdict>>,
}

impl CopyRead {
    /// Block `i` when it was read.
    fn block(&self, i: usize) -> Option<(&[u8], Verdict)> {
        self.blocks[i].map(|v| (block(&self.data, i), v))
    }

    /// True when every block was read and equals `want`.
    fn holds(&self, want: &[u8]) -> bool {
        self.blocks.iter().all(Option::is_some) && self.data == want
    }
}

/// Every copy of `p` read (`None`: its member is down); a copy that fails
/// the whole read is read again block by block.
async fn read_copies(vol: &Volume, p: &Piece) -> Vec<Option<CopyRead>> {
    join_all(p.copies.iter().map(|&k| async move {
        if !vol.is_active(k.member) {
            return None;
        }
        let mut data = vec![0u8; p.len as usize];
        let at = p.at(vol, k);
        let n = data.len().div_ceil(trust::BLOCK);
        let mut readable = vec![true; n];
        if vol.read_member(k.member, at, &mut data).await.is_err() {
            for (i, piece) in data.chunks_mut(trust::BLOCK).enumerate() {
                let off = ByteOffset(at.get() + (i * trust::BLOCK) as u64);
                match vol.read_member(k.member, off, piece).await {
                    Ok(()) => {}
                    Err(None) => return None,
                    Err(Some(_)) => readable[i] = false,
                }
            }
        }
        let v = vol.verdicts(k.member, at, &data).await;
        let blocks = readable
            .iter()
            .zip(v)
            .map(|(&r, v)| r.then_some(v))
            .collect();
        Some(CopyRead { data, blocks })
    }))
    .await
}

/// Per 4 KiB block the copy to keep; `None` when some block could be
/// read on no copy.
fn chosen(read: &[Option<CopyRead>]) -> Option<Vec<u8>> {
    let len = read.iter().flatten().next()?.data.len();
    let mut want = vec![0u8; len];
    for (i, out) in want.chunks_mut(trust::BLOCK).enumerate() {
        let blocks: Vec<Option<(&[u8], Verdict)>> = read
            .iter()
            .map(|c| c.as_ref().and_then(|c| c.block(i)))
            .collect();
        let pick = trust::pick_copy(&blocks)?;
        out.copy_from_slice(blocks[pick].map_or(&[][..], |(d, _)| d));
    }
    Some(want)
}

/// What the crash resync will write over piece `p` (its copies read under
/// its rows' locks, per 4 KiB block the copy `trust::pick_copy` keeps),
/// for a read in a region dirty at a crash; `None` when no copy can be
/// read. The piece is widened to whole blocks for the checksum verdicts.
pub(super) async fn resync_copy(vol: &Volume, p: &Piece) -> Option<Vec<u8>> {
    let start = p.in_chunk / trust::BLOCK as u64 * trust::BLOCK as u64;
    let end = (p.in_chunk + p.len).div_ceil(trust::BLOCK as u64) * trust::BLOCK as u64;
    let hull = Piece {
        copies: p.copies.clone(),
        in_chunk: start,
        len: end - start,
        volume_offset: p.volume_offset - (p.in_chunk - start),
    };
    let _guards = super::raid10::lock_rows(vol, &hull.copies).await;
    let want = chosen(&read_copies(vol, &hull).await)?;
    let skip = (p.in_chunk - start) as usize;
    Some(want[skip..skip + p.len as usize].to_vec())
}

/// Makes the copies of the chunks first held in `a..b` agree; returns
/// the member bytes rewritten.
pub(super) async fn resync_step(vol: &Volume, a: u64, b: u64) -> Result<u64, RebuildError> {
    let _guards = lock_step(vol, a, b).await;
    let mut rewritten = 0;
    for p in owned_pieces(vol, a, b) {
        let read = read_copies(vol, &p).await;
        let Some(want) = chosen(&read) else {
            if p.copies.iter().any(|k| vol.is_active(k.member)) {
                return Err(RebuildError::Sources(vol.data_lost()));
            }
            continue;
        };
        let op = |k: ChunkCopy| MemberOp::Write(p.at(vol, k), &want, Durability::Normal);
        let fix = p.copies.iter().zip(&read).map(|(&k, r)| {
            let same = r.as_ref().is_some_and(|c| c.holds(&want));
            async move {
                if same {
                    vol.incoming_op(k.member, op(k)).await;
                    return false;
                }
                vol.write_member(k.member, op(k)).await
            }
        });
        let n = join_all(fix).await.into_iter().filter(|&ok| ok).count() as u64;
        rewritten += n * p.len;
        if let Some(hook) = vol.checksums() {
            for &k in &p.copies {
                super::no_space::note_result(&hook.reseal(k.member, p.at(vol, k), &want).await);
            }
        }
    }
    Ok(rewritten)
}

/// Scrub: compares the copies of the chunks first held in the step,
/// block by block; a copy that differs from the chosen one counts a
/// mismatch on its member. With `repair` those are rewritten, and so are
/// blocks that could not be read (counted by the scrub's own reads).
pub(super) async fn check_copies(vol: &Volume, c: ScrubCheck<'_>) {
    let len = c.reads.iter().find(|r| r.live).map_or(0, |r| r.data.len());
    for p in owned_pieces(vol, c.a, c.a + len as u64) {
        let read = read_copies(vol, &p).await;
        let Some(want) = chosen(&read) else {
            continue;
        };
        for (&k, r) in p.copies.iter().zip(&read) {
            let Some(r) = r else { continue };
            let mut fix = Vec::new();
            for i in 0..r.blocks.len() {
                match r.block(i) {
                    Some((d, _)) if d == block(&want, i) => {}
                    Some(_) => {
                        c.members[k.member.0].mismatch += 1;
                        fix.push(i);
                    }
                    None => fix.push(i),
                }
            }
            if !c.repair {
                continue;
            }
            for i in fix {
                let at = ByteOffset(p.at(vol, k).get() + (i * trust::BLOCK) as u64);
                let op = MemberOp::Write(at, block(&want, i), Durability::Normal);
                if vol.write_member(k.member, op).await {
                    c.members[k.member.0].repaired += 1;
                }
            }
        }
    }
}

/// Block `i` of `d`.
fn block(d: &[u8], i: usize) -> &[u8] {
    &d[i * trust::BLOCK..((i + 1) * trust::BLOCK).min(d.len())]
}

/// A rebuild step's bytes of `r.member` from the other copies of each
/// row's chunk; rows no chunk uses are zeroes. Blocks no copy could give
/// are zeroed and returned; a source member lost meanwhile ends the pass.
pub(super) async fn rebuild_read(
    vol: &Volume,
    r: RebuildRead<'_>,
) -> Result<LostBlocks, RebuildError> {
    let map = map(vol).map_err(RebuildError::Sources)?;
    let chunk = vol.geometry().chunk().get();
    let (a, b) = (r.a, r.a + r.buf.len() as u64);
    let mut lost = Vec::new();
    for row in a / chunk..b.div_ceil(chunk) {
        let lo = a.max(row * chunk);
        let hi = b.min((row + 1) * chunk);
        let out = &mut r.buf[(lo - a) as usize..(hi - a) as usize];
        let Some(p) = row_piece(map, chunk, r.member.0, row, a, b) else {
            out.fill(0);
            continue;
        };
        let sources: Vec<ChunkCopy> = p
            .copies
            .iter()
            .copied()
            .filter(|k| k.member != r.member)
            .collect();
        lost.extend(copy_from(vol, &p, &sources, out, r.errors, lo).await?);
    }
    Ok(lost)
}

/// Fills `out` (piece `p` of the member at member offset `lo`) from the
/// first source copy that reads it whole, else 4 KiB at a time.
async fn copy_from(
    vol: &Volume,
    p: &Piece,
    sources: &[ChunkCopy],
    out: &mut [u8],
    errors: &super::rebuild::SourceErrors,
    lo: u64,
) -> Result<LostBlocks, RebuildError> {
    let live = || sources.iter().filter(|k| vol.is_active(k.member)).count();
    let before = live();
    for &k in sources {
        if vol.is_active(k.member) && vol.read_member(k.member, p.at(vol, k), out).await.is_ok() {
            return Ok(Vec::new());
        }
    }
    let mut lost = Vec::new();
    for (i, piece) in out.chunks_mut(LOST_BLOCK).enumerate() {
        let skip = (i * LOST_BLOCK) as u64;
        let mut reason = None;
        for &k in sources.iter().filter(|k| vol.is_active(k.member)) {
            match vol
                .read_member(k.member, ByteOffset(p.at(vol, k).get() + skip), piece)
                .await
            {
                Ok(()) => {
                    reason = None;
                    break;
                }
                Err(Some(e)) if !matches!(e, BlockError::Corrupt { .. }) => {
                    reason = Some(Lost::ReadError);
                    errors.note(vol, k.member, &e).await;
                }
                Err(_) => reason = reason.or(Some(Lost::Checksum)),
            }
        }
        if before == 0 || live() < before {
            return Err(RebuildError::Sources(vol.data_lost()));
        }
        if let Some(why) = reason {
            piece.fill(0);
            lost.push((lo + skip, why));
        }
    }
    Ok(lost)
}
