//! `Volume`: a RAID array of member devices, itself a [`BlockDevice`].
//!
//! ```text
//!  BlockDevice call ─► check_range ─► raid0 / raid1 / raid5 ─► member I/O
//!                                                         │ error: retry once,
//!                                                         │ then mark Failed and
//!                                                         ▼ await VolumeEvents
//! ```
//!
//! This file owns member state and the retry/fail policy shared by every
//! level; the levels own the data paths.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use futures::future::join_all;
use tokio::sync::watch;

use super::layout::{Geometry, LayoutError, MemberIndex};
use super::stripe_lock::StripeLocks;
use super::{raid0, raid1, raid5, Level};
use crate::block::{check_range, BlockDevice, BlockError, BlockResult, BoxFuture, Durability};
use crate::units::ByteOffset;

/// Receives member failures so they can be persisted (superblock event bump).
pub trait VolumeEvents: Send + Sync {
    /// `member` failed with `error`; resolves once the failure is recorded.
    fn member_failed(&self, member: MemberIndex, error: &BlockError) -> BoxFuture<'_, ()>;
}

/// State of one member slot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MemberState {
    /// Serving I/O.
    Active,
    /// Failed at runtime; no longer used.
    Failed,
    /// Absent when the volume was assembled.
    Missing,
}

/// Errors building a [`Volume`].
#[derive(Debug, thiserror::Error)]
pub enum RaidError {
    /// The geometry is invalid.
    #[error("invalid geometry")]
    Layout(#[from] LayoutError),
    /// The member list does not match the geometry.
    #[error("geometry has {expected} members but {got} were given")]
    MemberCount {
        /// Members in the geometry.
        expected: usize,
        /// Members given.
        got: usize,
    },
    /// More members are missing than the level tolerates.
    #[error("{missing} members missing but {level} tolerates only {redundancy}")]
    TooManyMissing {
        /// Missing members.
        missing: usize,
        /// The level.
        level: Level,
        /// Tolerated missing members.
        redundancy: usize,
    },
    /// A member is smaller than the data area.
    #[error("{member} ({name}) has {size} bytes, needs {need}")]
    MemberTooSmall {
        /// The member.
        member: MemberIndex,
        /// Its device name.
        name: String,
        /// Its size.
        size: u64,
        /// The member data size.
        need: u64,
    },
}

/// A mutating member operation, retried once and failing the member after.
#[derive(Clone, Copy, Debug)]
pub(super) enum MemberOp<'a> {
    Write(ByteOffset, &'a [u8], Durability),
    Discard(ByteOffset, u64),
    Zeroes(ByteOffset, u64, bool),
    Flush,
}

/// How a range is cleared.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Clear {
    Discard,
    Zeroes { may_unmap: bool },
}

impl Clear {
    pub(super) fn op(self, offset: ByteOffset, len: u64) -> MemberOp<'static> {
        match self {
            Clear::Discard => MemberOp::Discard(offset, len),
            Clear::Zeroes { may_unmap } => MemberOp::Zeroes(offset, len, may_unmap),
        }
    }
}

struct Slot {
    device: Option<Arc<dyn BlockDevice>>,
    failed: AtomicBool,
    /// Becomes true once `VolumeEvents::member_failed` has returned: writes
    /// that skip a failed member wait for it, so nothing is acknowledged
    /// before the failure is on record.
    recorded: Arc<watch::Sender<bool>>,
}

/// A RAID-0, RAID-1 or RAID-5 volume over member devices.
pub struct Volume {
    name: String,
    geometry: Geometry,
    slots: Vec<Slot>,
    events: Arc<dyn VolumeEvents>,
    pub(super) locks: StripeLocks,
    pub(super) next_mirror: AtomicUsize,
}

impl std::fmt::Debug for Volume {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Volume")
            .field("name", &self.name)
            .field("geometry", &self.geometry)
            .field("members", &self.member_states())
            .finish()
    }
}

impl Volume {
    /// Assembles a volume. `None` marks a missing member. Each member device
    /// is a window onto that member's data area.
    pub fn new(
        name: String,
        geometry: Geometry,
        members: Vec<Option<Arc<dyn BlockDevice>>>,
        events: Arc<dyn VolumeEvents>,
    ) -> Result<Volume, RaidError> {
        if members.len() != geometry.members() {
            return Err(RaidError::MemberCount {
                expected: geometry.members(),
                got: members.len(),
            });
        }
        let level = geometry.level();
        let missing = members.iter().filter(|m| m.is_none()).count();
        let redundancy = level.redundancy(geometry.members());
        if missing > redundancy {
            return Err(RaidError::TooManyMissing {
                missing,
                level,
                redundancy,
            });
        }
        for (i, dev) in members.iter().enumerate() {
            if let Some(dev) = dev {
                if dev.size() < geometry.member_data_size() {
                    return Err(RaidError::MemberTooSmall {
                        member: MemberIndex(i),
                        name: dev.name().to_string(),
                        size: dev.size(),
                        need: geometry.member_data_size(),
                    });
                }
            }
        }
        let slots = members
            .into_iter()
            .map(|device| Slot {
                device,
                failed: AtomicBool::new(false),
                recorded: Arc::new(watch::Sender::new(false)),
            })
            .collect();
        Ok(Volume {
            name,
            geometry,
            slots,
            events,
            locks: StripeLocks::new(),
            next_mirror: AtomicUsize::new(0),
        })
    }

    /// The array geometry.
    pub fn geometry(&self) -> &Geometry {
        &self.geometry
    }

    /// State of every member slot, by index.
    pub fn member_states(&self) -> Vec<MemberState> {
        (0..self.slots.len())
            .map(|i| self.state(MemberIndex(i)))
            .collect()
    }

    /// True when any member is failed or missing.
    pub fn is_degraded(&self) -> bool {
        self.down_count() > 0
    }

    /// State of one member.
    pub fn state(&self, member: MemberIndex) -> MemberState {
        match self.slots.get(member.0) {
            Some(Slot {
                device: Some(_),
                failed,
                ..
            }) if !failed.load(Ordering::Acquire) => MemberState::Active,
            Some(Slot {
                device: Some(_), ..
            }) => MemberState::Failed,
            _ => MemberState::Missing,
        }
    }

    pub(super) fn is_active(&self, member: MemberIndex) -> bool {
        self.state(member) == MemberState::Active
    }

    /// Members not active.
    pub(super) fn down_count(&self) -> usize {
        (0..self.slots.len())
            .filter(|&i| !self.is_active(MemberIndex(i)))
            .count()
    }

    fn device(&self, member: MemberIndex) -> Option<&Arc<dyn BlockDevice>> {
        let slot = self.slots.get(member.0)?;
        if slot.failed.load(Ordering::Acquire) {
            return None;
        }
        slot.device.as_ref()
    }

    pub(super) fn data_lost(&self) -> BlockError {
        BlockError::DataLost {
            volume: self.name.clone(),
        }
    }

    /// Marks `member` failed and records it; only the first caller records,
    /// the others wait until it is recorded.
    pub(super) async fn fail_member(&self, member: MemberIndex, error: &BlockError) {
        let Some(slot) = self.slots.get(member.0) else {
            return;
        };
        if slot.device.is_none() {
            return;
        }
        let first = slot
            .failed
            .compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
            .is_ok();
        if first {
            tracing::warn!(volume = %self.name, %member, %error, "member failed");
            let events = self.events.clone();
            let recorded = slot.recorded.clone();
            let error = copy_error(error);
            let record = async move {
                events.member_failed(member, &error).await;
                recorded.send_replace(true);
            };
            // Recorded in its own task, so a cancelled request cannot leave
            // the failure unrecorded (and every later writer waiting).
            match tokio::runtime::Handle::try_current() {
                Ok(rt) => drop(rt.spawn(record)),
                Err(_) => record.await,
            }
        }
        self.wait_recorded(member).await;
    }

    /// Fails `member` on an operator's request (`vraid fail`): the same path
    /// as a member I/O failure (logged, recorded in the other members'
    /// superblocks); resolves once recorded. A no-op for a member that is
    /// missing or already failed.
    pub async fn fail_member_by_request(&self, member: MemberIndex, reason: &str) {
        let Some(Some(dev)) = self.slots.get(member.0).map(|s| s.device.as_ref()) else {
            return;
        };
        let error = BlockError::io(
            dev.name().to_string(),
            std::io::Error::other(reason.to_string()),
        );
        self.fail_member(member, &error).await;
    }

    /// Waits until a failed member's failure is on record (no-op otherwise).
    async fn wait_recorded(&self, member: MemberIndex) {
        if let Some(slot) = self.slots.get(member.0) {
            if slot.device.is_some() && slot.failed.load(Ordering::Acquire) {
                // The sender lives in `self`, so the channel cannot close here.
                let _ = slot.recorded.subscribe().wait_for(|&done| done).await;
            }
        }
    }

    /// Reads from `member`, retrying once. `Err(None)`: the member is down;
    /// `Err(Some(e))`: it failed twice (not yet marked failed: the caller
    /// may repair the range first).
    pub(super) async fn read_member(
        &self,
        member: MemberIndex,
        offset: ByteOffset,
        buf: &mut [u8],
    ) -> Result<(), Option<BlockError>> {
        let dev = self.device(member).ok_or(None)?;
        if let Err(e) = dev.read(offset, buf).await {
            tracing::debug!(volume = %self.name, %member, %e, "member read failed, retrying");
            dev.read(offset, buf).await.map_err(Some)?;
        }
        Ok(())
    }

    /// Runs `op` on `member`, retrying once; on a second error the member is
    /// failed. True when the op succeeded.
    pub(super) async fn member_op(&self, member: MemberIndex, op: MemberOp<'_>) -> bool {
        let Some(dev) = self.device(member) else {
            self.wait_recorded(member).await;
            return false;
        };
        let mut last = None;
        for _ in 0..2 {
            let result = match op {
                MemberOp::Write(off, buf, dur) => dev.write(off, buf, dur).await,
                MemberOp::Discard(off, len) => dev.discard(off, len).await,
                MemberOp::Zeroes(off, len, unmap) => dev.write_zeroes(off, len, unmap).await,
                MemberOp::Flush => dev.flush().await,
            };
            match result {
                Ok(()) => return true,
                Err(e) => last = Some(e),
            }
        }
        if let Some(e) = last {
            self.fail_member(member, &e).await;
        }
        false
    }

    /// Flushes every active member concurrently.
    async fn flush_members(&self) -> BlockResult {
        let results = join_all(
            (0..self.slots.len()).map(|i| self.member_op(MemberIndex(i), MemberOp::Flush)),
        )
        .await;
        let level = self.geometry.level();
        let lost = match level {
            Level::Raid0 => results.contains(&false),
            Level::Raid1 | Level::Raid5 => {
                self.down_count() > level.redundancy(self.geometry.members())
            }
        };
        if lost {
            Err(self.data_lost())
        } else {
            Ok(())
        }
    }

    async fn clear(&self, offset: ByteOffset, len: u64, how: Clear) -> BlockResult {
        check_range(offset, len, self.size())?;
        if len == 0 {
            return Ok(());
        }
        match self.geometry.level() {
            Level::Raid0 => raid0::clear(self, offset, len, how).await,
            Level::Raid1 => raid1::clear(self, offset, len, how).await,
            Level::Raid5 => raid5::clear(self, offset, len, how).await,
        }
    }
}

/// An owned copy of `error` for the failure record (io::Error is not Clone).
fn copy_error(error: &BlockError) -> BlockError {
    match error {
        BlockError::Io { device, source } => BlockError::io(
            device.clone(),
            match source.raw_os_error() {
                Some(errno) => std::io::Error::from_raw_os_error(errno),
                None => std::io::Error::new(source.kind(), source.to_string()),
            },
        ),
        BlockError::OutOfRange { offset, len, size } => BlockError::OutOfRange {
            offset: *offset,
            len: *len,
            size: *size,
        },
        BlockError::DataLost { volume } => BlockError::DataLost {
            volume: volume.clone(),
        },
        BlockError::ReadOnly => BlockError::ReadOnly,
        BlockError::Unsupported => BlockError::Unsupported,
    }
}

impl BlockDevice for Volume {
    fn name(&self) -> &str {
        &self.name
    }

    fn size(&self) -> u64 {
        self.geometry.volume_size()
    }

    fn read<'a>(&'a self, offset: ByteOffset, buf: &'a mut [u8]) -> BoxFuture<'a, BlockResult> {
        Box::pin(async move {
            check_range(offset, buf.len() as u64, self.size())?;
            if buf.is_empty() {
                return Ok(());
            }
            match self.geometry.level() {
                Level::Raid0 => raid0::read(self, offset, buf).await,
                Level::Raid1 => raid1::read(self, offset, buf).await,
                Level::Raid5 => raid5::read(self, offset, buf).await,
            }
        })
    }

    fn write<'a>(
        &'a self,
        offset: ByteOffset,
        buf: &'a [u8],
        durability: Durability,
    ) -> BoxFuture<'a, BlockResult> {
        Box::pin(async move {
            check_range(offset, buf.len() as u64, self.size())?;
            if buf.is_empty() {
                return Ok(());
            }
            match self.geometry.level() {
                Level::Raid0 => raid0::write(self, offset, buf, durability).await,
                Level::Raid1 => raid1::write(self, offset, buf, durability).await,
                Level::Raid5 => raid5::write(self, offset, buf, durability).await,
            }
        })
    }

    fn flush(&self) -> BoxFuture<'_, BlockResult> {
        Box::pin(self.flush_members())
    }

    fn discard(&self, offset: ByteOffset, len: u64) -> BoxFuture<'_, BlockResult> {
        Box::pin(self.clear(offset, len, Clear::Discard))
    }

    fn write_zeroes(
        &self,
        offset: ByteOffset,
        len: u64,
        may_unmap: bool,
    ) -> BoxFuture<'_, BlockResult> {
        Box::pin(self.clear(offset, len, Clear::Zeroes { may_unmap }))
    }
}
