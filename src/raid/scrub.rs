//! Scrub: read every member's data area, find blocks that are unreadable,
//! fail their checksum, or disagree with the level's redundancy, and with
//! `repair` rewrite them (md's `check` and `repair`).
//!
//! ```text
//!  for each step (2 MiB of member data, up to DEPTH in flight):
//!      pace ─► lock stripes/regions ─► read every live member concurrently
//!      ─► a member read failed (Corrupt = checksum, else io)?
//!             re-read it in 4 KiB blocks to find the bad ones
//!             repair: rebuild them from redundancy and rewrite them
//!      ─► consistency of the blocks every member read well (the level's
//!         LevelIo::scrub_check, in raid1_sync.rs / raid5_sync.rs):
//!             RAID-1 mirrors equal the first in-sync mirror
//!             RAID-5 XOR of all members is zero
//!             repair: copy the first mirror / rewrite parity from data
//!      ─► unlock
//! ```
//!
//! Counts are in 4 KiB blocks, per member: a RAID-1 mismatch is counted on
//! the mirror that differs from the first in-sync one, a RAID-5 mismatch on
//! the stripe's parity member (both are what `repair` rewrites). Without
//! `repair` nothing is written. A down member makes the affected steps
//! unverifiable (`degraded`); RAID-0 has only the read-error checks.

use std::sync::atomic::{AtomicBool, Ordering};

use futures::future::join_all;
use futures::StreamExt;

use super::layout::MemberIndex;
use super::level::{MemberOp, ScrubCheck};
use super::rebuild::{lock_step, pass_steps, Pacer, RebuildControl, SyncKind, SyncTracker, STEP};
use super::volume::Volume;
use crate::block::{BlockError, Durability};
use crate::units::ByteOffset;

/// Granularity of checks, counts and repairs.
pub const BLOCK: usize = 4096;
/// Most scrub steps in flight at once (their reads overlap the checks).
const DEPTH: usize = 4;
/// Member bytes buffered by the steps in flight, at most (wide arrays run
/// fewer steps at once).
const IN_FLIGHT: usize = 32 << 20;

/// What a scrub found on one member, in 4 KiB blocks.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct MemberScrub {
    /// The member's role.
    pub role: usize,
    /// Blocks whose read failed its checksum.
    pub checksum: u64,
    /// Blocks that could not be read.
    pub io: u64,
    /// Blocks inconsistent with the other members (RAID-1: differ from the
    /// first in-sync mirror; RAID-5: parity not matching the data).
    pub mismatch: u64,
    /// Blocks rewritten by `repair`.
    pub repaired: u64,
}

impl MemberScrub {
    fn add(&mut self, o: &MemberScrub) {
        self.checksum += o.checksum;
        self.io += o.io;
        self.mismatch += o.mismatch;
        self.repaired += o.repaired;
    }
}

/// The outcome of a scrub pass.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct ScrubReport {
    /// Bad blocks and mismatches were rewritten.
    pub repair: bool,
    /// Member bytes read and checked (summed over members).
    pub bytes_checked: u64,
    /// Bytes of each member's data area not read because no write ever
    /// reached them (the written-region map, docs/FORMAT.md §10).
    pub skipped_bytes: u64,
    /// Per member, by role.
    pub members: Vec<MemberScrub>,
    /// A member was down for part of the pass: that part could not be
    /// fully checked.
    pub degraded: bool,
    /// Stopped before the end.
    pub cancelled: bool,
}

impl ScrubReport {
    /// Bad blocks and mismatches found, all members and kinds.
    pub fn found(&self) -> u64 {
        self.members
            .iter()
            .map(|m| m.checksum + m.io + m.mismatch)
            .sum()
    }

    /// Blocks rewritten.
    pub fn repaired(&self) -> u64 {
        self.members.iter().map(|m| m.repaired).sum()
    }

    /// Mismatches found (md's `mismatch_cnt`, in 4 KiB blocks).
    pub fn mismatches(&self) -> u64 {
        self.members.iter().map(|m| m.mismatch).sum()
    }
}

/// Why a member block is known bad.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Bad {
    Checksum,
    Io,
}

/// One member's data in a step.
pub(super) struct Read {
    /// Read (at least partly); false: the member is down.
    pub(super) live: bool,
    pub(super) data: Vec<u8>,
    /// Per 4 KiB block, why it is bad; empty when every block read well.
    pub(super) bad: Vec<Option<Bad>>,
}

impl Read {
    /// True when the member is live and `block` read well.
    pub(super) fn good(&self, block: usize) -> bool {
        self.live && self.bad.get(block).is_none_or(|b| b.is_none())
    }

    /// Bytes of 4 KiB block `i`.
    pub(super) fn block(&self, i: usize) -> &[u8] {
        &self.data[i * BLOCK..(i + 1) * BLOCK]
    }
}

struct Step {
    members: Vec<MemberScrub>,
    bytes: u64,
    degraded: bool,
}

impl Volume {
    /// Scrubs the whole member data area: counts bad and inconsistent
    /// blocks per member and, with `repair`, rewrites them. Paced and
    /// stopped by `ctl` (rate limit, shutdown) and stopped by `cancel`.
    /// Shows as [`SyncKind::Scrub`] progress while it runs.
    pub async fn scrub(
        &self,
        repair: bool,
        ctl: &RebuildControl,
        cancel: &AtomicBool,
    ) -> ScrubReport {
        let n = self.geometry().members();
        let mds = self.geometry().member_data_size();
        let distrusted = self.untrusted_parity();
        let tracker = SyncTracker::new(SyncKind::Scrub, None, mds);
        self.set_progress(Some(tracker.clone()));
        let mut report = ScrubReport {
            repair,
            members: (0..n)
                .map(|role| MemberScrub {
                    role,
                    ..MemberScrub::default()
                })
                .collect(),
            ..ScrubReport::default()
        };
        let stopped = || ctl.is_cancelled() || cancel.load(Ordering::Relaxed);
        let pacer = tokio::sync::Mutex::new(Pacer::new());
        let work = pass_steps(self.written(), 0, mds).map(|(a, b, written)| {
            let pacer = &pacer;
            async move {
                if !written {
                    return (!stopped()).then_some((b - a, None));
                }
                {
                    let mut p = pacer.lock().await;
                    if stopped() {
                        return None;
                    }
                    p.step(self, ctl, b - a).await;
                }
                if stopped() {
                    return None;
                }
                Some((b - a, Some(self.scrub_step(a, b, repair).await)))
            }
        });
        let depth = (IN_FLIGHT / (n * STEP as usize)).clamp(1, DEPTH);
        let mut work = futures::stream::iter(work).buffered(depth);
        while let Some(step) = work.next().await {
            let Some((len, step)) = step else {
                report.cancelled = true;
                break;
            };
            tracker.done.fetch_add(len, Ordering::Relaxed);
            let Some(step) = step else {
                report.skipped_bytes += len;
                tracker.skipped.fetch_add(len, Ordering::Relaxed);
                continue;
            };
            for (total, m) in report.members.iter_mut().zip(&step.members) {
                total.add(m);
            }
            report.bytes_checked += step.bytes;
            report.degraded |= step.degraded;
        }
        drop(work);
        // A rebuild may have taken the progress slot over meanwhile.
        self.clear_progress_if(&tracker);
        if repair && !report.cancelled && !report.degraded && report.found() == report.repaired() {
            self.trust_parity_again(&distrusted);
        }
        report
    }

    /// Checks (and repairs) member data `a..b` under its locks.
    async fn scrub_step(&self, a: u64, b: u64, repair: bool) -> Step {
        let n = self.geometry().members();
        let len = (b - a) as usize;
        let _guards = lock_step(self, a, b).await;
        let reads = (0..n).map(|m| self.scrub_read(MemberIndex(m), a, len));
        let mut reads: Vec<Read> = join_all(reads).await;
        let mut members: Vec<MemberScrub> = (0..n)
            .map(|role| MemberScrub {
                role,
                ..MemberScrub::default()
            })
            .collect();
        for (count, r) in members.iter_mut().zip(&reads) {
            for bad in r.bad.iter().flatten() {
                match bad {
                    Bad::Checksum => count.checksum += 1,
                    Bad::Io => count.io += 1,
                }
            }
        }
        if repair {
            self.repair_bad_blocks(a, &mut reads, &mut members).await;
        }
        let check = ScrubCheck {
            a,
            reads: &reads,
            members: &mut members,
            repair,
        };
        self.level_io().scrub_check(self, check).await;
        let live = reads.iter().filter(|r| r.live).count();
        Step {
            members,
            bytes: (live * len) as u64,
            degraded: live < n,
        }
    }

    /// Reads `len` bytes of `member` at `a`; on an error, block by block
    /// to find the bad blocks.
    async fn scrub_read(&self, member: MemberIndex, a: u64, len: usize) -> Read {
        let mut data = vec![0u8; len];
        let error = match self.read_member(member, ByteOffset(a), &mut data).await {
            Ok(()) => {
                return Read {
                    live: true,
                    data,
                    bad: Vec::new(),
                }
            }
            Err(e) => e,
        };
        let dead = Read {
            live: false,
            data: Vec::new(),
            bad: Vec::new(),
        };
        if error.is_none() {
            return dead;
        }
        let mut bad = vec![None; len / BLOCK];
        for (i, piece) in data.chunks_mut(BLOCK).enumerate() {
            let off = ByteOffset(a + (i * BLOCK) as u64);
            match self.read_member(member, off, piece).await {
                Ok(()) => {}
                Err(None) => return dead,
                Err(Some(e)) => {
                    tracing::warn!(volume = %self.volume_name(), %member, offset = off.get(), %e, "scrub: bad block");
                    bad[i] = Some(match e {
                        BlockError::Corrupt { .. } => Bad::Checksum,
                        _ => Bad::Io,
                    });
                }
            }
        }
        Read {
            live: true,
            data,
            bad,
        }
    }

    /// Rebuilds every known-bad block that redundancy covers (RAID-1: a
    /// mirror that read it well; RAID-5: XOR of the others) and rewrites it.
    async fn repair_bad_blocks(&self, a: u64, reads: &mut [Read], members: &mut [MemberScrub]) {
        let level = self.level_io();
        for m in 0..reads.len() {
            for i in 0..reads[m].bad.len() {
                if reads[m].bad[i].is_none() {
                    continue;
                }
                let Some(fixed) = level.scrub_rebuild_block(self, a, reads, m, i) else {
                    continue;
                };
                let off = ByteOffset(a + (i * BLOCK) as u64);
                let op = MemberOp::Write(off, &fixed, Durability::Normal);
                if self.write_member(MemberIndex(m), op).await {
                    tracing::info!(volume = %self.volume_name(), member = m, offset = off.get(), "scrub: bad block rewritten from redundancy");
                    reads[m].data[i * BLOCK..(i + 1) * BLOCK].copy_from_slice(&fixed);
                    reads[m].bad[i] = None;
                    members[m].repaired += 1;
                }
            }
        }
    }
}
