//! Fault injection: a [`BlockDevice`] wrapper that makes a member fail, slow
//! down, corrupt data or vanish, on purpose, while the daemon runs.
//!
//! ```text
//!  Volume ─► (stats) ─► FaultDevice ─► member data window
//!                         │ rules: live list in a FaultSet shared with control/
//!                         │ empty list: one atomic load, then straight through
//!                         ▼ matching rule: delay | EIO | corrupt | offline
//! ```
//!
//! Offsets in rules are member data offsets (byte 0 = first byte after the
//! member's metadata area). Below an inline-checksum member
//! ([`FaultDevice::with_inline_layout`]) they stay logical data offsets: the
//! device maps its physical offsets back, and corruption flips data bytes
//! only, never tags (docs/FORMAT.md §8 "Inline layout"). Each rule filters on operation, byte range,
//! probability (a seedable splitmix64 generator, lock-free) and a hit budget
//! (`count`: the rule expires after N hits). Every hit is counted per rule.
//!
//! A rule belongs to a device, not to a role slot: each device that joins a
//! slot gets its own [`DeviceTag`], a rule bound to a tag fires only on the
//! [`FaultDevice`] carrying it, so "this disk is offline" does not follow the
//! slot onto the hot spare that takes its role. Unbound rules (`device:
//! None`) fire on every device of the set.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::block::{BlockDevice, BlockError, BlockResult, Durability, IoFuture};
use crate::units::ByteOffset;

/// What a matching rule does.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FaultKind {
    /// The operation fails with EIO.
    Error,
    /// The operation waits `delay` first, then runs normally.
    Delay,
    /// Read data comes back altered; written data lands altered.
    Corrupt,
    /// Every operation fails with EIO, whatever the filters say about op and range.
    Offline,
    /// Volume faults only: matching requests hang until the rule is
    /// cleared, then run (`volfault`).
    Stall,
    /// Volume faults only: matching writes fail with EPERM.
    Readonly,
    /// Volume faults only: the range's 512-byte sectors are bad until
    /// written (as dm-dust): reads of them fail, a write heals them.
    #[serde(rename = "bad-sector")]
    BadSector,
    /// Volume faults only: a matching write larger than a block lands a
    /// prefix of its blocks, then fails.
    Torn,
    /// Member faults only: the member keeps writes volatile until it sees
    /// a FLUSH or FUA; `fault powercut` drops them (`member::volatile`).
    Volatile,
}

impl FaultKind {
    /// True for the kinds only a volume (client-facing) rule can have.
    pub fn volume_only(self) -> bool {
        matches!(
            self,
            FaultKind::Stall | FaultKind::Readonly | FaultKind::BadSector | FaultKind::Torn
        )
    }
}

/// Which operations a rule applies to.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FaultOp {
    /// Reads only.
    Read,
    /// Writes, discards, zeroing and flushes.
    Write,
    /// Everything.
    #[default]
    Any,
}

impl FaultOp {
    fn covers(self, op: IoKind) -> bool {
        matches!(
            (self, op),
            (FaultOp::Any, _) | (FaultOp::Read, IoKind::Read) | (FaultOp::Write, IoKind::Write)
        )
    }
}

/// A fault as the user describes it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FaultSpec {
    /// What happens.
    pub kind: FaultKind,
    /// Which operations.
    #[serde(default)]
    pub op: FaultOp,
    /// First member data byte affected (with `length`); `None`: everywhere.
    #[serde(default)]
    pub offset: Option<u64>,
    /// Bytes affected from `offset`; `None`: to the end.
    #[serde(default)]
    pub length: Option<u64>,
    /// Chance that a matching operation is hit, 0.0..=1.0.
    #[serde(default = "one")]
    pub probability: f64,
    /// Delay of a `delay` rule, in microseconds.
    #[serde(default)]
    pub delay_us: u64,
    /// Hits after which the rule expires; `None`: never.
    #[serde(default)]
    pub count: Option<u64>,
}

fn one() -> f64 {
    1.0
}

/// Why a fault spec was refused.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum FaultError {
    /// Probability outside 0..=1 (or NaN).
    #[error("probability {0} is not between 0 and 1")]
    Probability(f64),
    /// A delay rule without a delay, or with an absurd one.
    #[error("a delay fault needs a delay between 1us and 60s, got {0}us")]
    Delay(u64),
    /// A zero-length range or a range that overflows.
    #[error("byte range at {offset} of {length} bytes is empty or overflows")]
    Range {
        /// Offset.
        offset: u64,
        /// Length.
        length: u64,
    },
    /// A count of zero would never fire.
    #[error("count must be at least 1")]
    Count,
}

/// Longest delay a rule may ask for.
pub const MAX_DELAY: Duration = Duration::from_secs(60);

impl FaultSpec {
    /// A rule of `kind` on every operation, every byte, every time.
    pub fn new(kind: FaultKind) -> FaultSpec {
        FaultSpec {
            kind,
            op: FaultOp::Any,
            offset: None,
            length: None,
            probability: 1.0,
            delay_us: 0,
            count: None,
        }
    }

    /// Checks the spec makes sense.
    pub fn validate(&self) -> Result<(), FaultError> {
        if !(0.0..=1.0).contains(&self.probability) {
            return Err(FaultError::Probability(self.probability));
        }
        if self.kind == FaultKind::Delay
            && (self.delay_us == 0 || self.delay_us > MAX_DELAY.as_micros() as u64)
        {
            return Err(FaultError::Delay(self.delay_us));
        }
        let offset = self.offset.unwrap_or(0);
        if let Some(length) = self.length {
            if length == 0 || offset.checked_add(length).is_none() {
                return Err(FaultError::Range { offset, length });
            }
        }
        if self.count == Some(0) {
            return Err(FaultError::Count);
        }
        Ok(())
    }

    /// The affected byte range `[start, end)`.
    pub fn range(&self) -> (u64, u64) {
        let start = self.offset.unwrap_or(0);
        let end = self.length.map_or(u64::MAX, |l| start.saturating_add(l));
        (start, end)
    }
}

/// One device that held (or holds) a slot, as the fault rules name it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct DeviceTag(pub u64);

/// Device tags are unique for the life of the process.
static NEXT_DEVICE_TAG: AtomicU64 = AtomicU64::new(1);

impl DeviceTag {
    /// A tag no other device has.
    pub fn fresh() -> DeviceTag {
        DeviceTag(NEXT_DEVICE_TAG.fetch_add(1, Ordering::Relaxed))
    }
}

/// One live rule with its counters.
#[derive(Debug)]
pub struct FaultRule {
    /// Identifier, unique in the daemon.
    pub id: u64,
    /// What the user asked for.
    pub spec: FaultSpec,
    /// The device it applies to; `None`: every device of its set.
    pub device: Option<DeviceTag>,
    hits: AtomicU64,
    /// Hits left before expiry; `u64::MAX` = unlimited.
    remaining: AtomicU64,
    /// A `volatile` rule's undo state (empty for the other kinds).
    pub undo: super::volatile::Undo,
}

impl FaultRule {
    /// A new rule; `spec` must be valid.
    pub fn new(id: u64, spec: FaultSpec) -> FaultRule {
        let remaining = spec.count.unwrap_or(u64::MAX);
        FaultRule {
            id,
            spec,
            device: None,
            hits: AtomicU64::new(0),
            remaining: AtomicU64::new(remaining),
            undo: super::volatile::Undo::default(),
        }
    }

    /// The same rule, firing only on the device tagged `tag`.
    pub fn on_device(mut self, tag: DeviceTag) -> FaultRule {
        self.device = Some(tag);
        self
    }

    /// True when the rule applies to the device tagged `tag`.
    pub fn applies_to(&self, tag: Option<DeviceTag>) -> bool {
        self.device.is_none() || self.device == tag
    }

    /// Counts one hit that needs no filter (a `volatile` rule's member
    /// write).
    pub(crate) fn count_hit(&self) {
        self.hits.fetch_add(1, Ordering::Relaxed);
    }

    /// Times the rule fired.
    pub fn hits(&self) -> u64 {
        self.hits.load(Ordering::Relaxed)
    }

    /// Hits left before it expires (`None`: unlimited).
    pub fn remaining(&self) -> Option<u64> {
        self.spec
            .count
            .map(|_| self.remaining.load(Ordering::Relaxed))
    }

    /// True once its hit budget is spent.
    pub fn expired(&self) -> bool {
        self.remaining.load(Ordering::Relaxed) == 0
    }

    /// Whether this rule fires for `op` on `[offset, offset + len)`; counts the hit.
    pub(crate) fn fires(&self, op: IoKind, offset: u64, len: u64, rng: &Rng) -> bool {
        if self.spec.kind != FaultKind::Offline {
            if !self.spec.op.covers(op) {
                return false;
            }
            let (start, end) = self.spec.range();
            let ranged = self.spec.offset.is_some() || self.spec.length.is_some();
            let overlaps = if op == IoKind::Flush {
                !ranged
            } else {
                offset < end && offset.saturating_add(len.max(1)) > start
            };
            if !overlaps {
                return false;
            }
        }
        if self.spec.probability < 1.0 && rng.next_f64() >= self.spec.probability {
            return false;
        }
        let spent = self
            .remaining
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |r| match r {
                0 => None,
                u64::MAX => Some(u64::MAX),
                r => Some(r - 1),
            })
            .is_err();
        if spent {
            return false;
        }
        self.hits.fetch_add(1, Ordering::Relaxed);
        true
    }
}

/// The live rule list of one member, shared by its [`FaultDevice`] and the
/// control plane. Readers take a cheap snapshot; writers copy on write.
#[derive(Debug, Default)]
pub struct FaultSet {
    rules: RwLock<Arc<Vec<Arc<FaultRule>>>>,
    len: AtomicUsize,
}

impl FaultSet {
    /// An empty set.
    pub fn new() -> FaultSet {
        FaultSet::default()
    }

    /// Adds a rule.
    pub fn add(&self, rule: Arc<FaultRule>) {
        self.update(|rules| rules.push(rule));
    }

    /// Removes the rule `id`; true if it was there. A `volatile` rule
    /// whose member a power cut froze stays: the power is off until the
    /// process is restarted (removing it would let the member take
    /// writes again).
    pub fn remove(&self, id: u64) -> bool {
        let mut found = false;
        self.update(|rules| {
            let before = rules.len();
            rules.retain(|r| r.id != id || r.undo.frozen());
            found = rules.len() != before;
        });
        found
    }

    /// Removes every rule but frozen `volatile` ones; returns how many.
    pub fn clear(&self) -> usize {
        let mut n = 0;
        self.update(|rules| {
            let before = rules.len();
            rules.retain(|r| r.undo.frozen());
            n = before - rules.len();
        });
        n
    }

    /// True when rule `id` is a `volatile` rule whose member lost power.
    pub fn frozen(&self, id: u64) -> bool {
        self.rules().iter().any(|r| r.id == id && r.undo.frozen())
    }

    /// A snapshot of the rules.
    pub fn rules(&self) -> Arc<Vec<Arc<FaultRule>>> {
        self.rules
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    /// True when no rule is installed (the fast path).
    pub fn is_empty(&self) -> bool {
        self.len.load(Ordering::Acquire) == 0
    }

    /// True while rule `id` is installed.
    pub fn contains(&self, id: u64) -> bool {
        self.rules().iter().any(|r| r.id == id)
    }

    /// Runs the filters (op, range, probability, count) of every rule that
    /// applies to the device tagged `tag` and that `eligible` lets through,
    /// for `op` on `offset..+len`; calls `on_hit` with each rule that
    /// fires (its hit counted). True when any fired. The one rule filter
    /// of member and volume faults.
    pub(crate) fn fire(
        &self,
        tag: Option<DeviceTag>,
        op: IoKind,
        (offset, len): (u64, u64),
        rng: &Rng,
        mut eligible: impl FnMut(&FaultRule) -> bool,
        mut on_hit: impl FnMut(&FaultRule),
    ) -> bool {
        if self.is_empty() {
            return false;
        }
        let mut any = false;
        for rule in self.rules().iter() {
            if rule.applies_to(tag) && eligible(rule) && rule.fires(op, offset, len, rng) {
                any = true;
                on_hit(rule);
            }
        }
        any
    }

    fn update(&self, f: impl FnOnce(&mut Vec<Arc<FaultRule>>)) {
        let mut guard = self
            .rules
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let mut next = (**guard).clone();
        f(&mut next);
        self.len.store(next.len(), Ordering::Release);
        *guard = Arc::new(next);
    }
}

/// Kind of I/O, for rule matching.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum IoKind {
    Read,
    Write,
    Flush,
}

/// What the matching rules ask for, combined.
#[derive(Debug, Default)]
struct Verdict {
    delay: Duration,
    fail: bool,
    /// Byte ranges to corrupt, in device offsets.
    corrupt: Vec<(u64, u64)>,
}

/// Lock-free splitmix64.
#[derive(Debug)]
pub(crate) struct Rng(AtomicU64);

impl Rng {
    /// A generator seeded with `seed`.
    pub(crate) fn new(seed: u64) -> Rng {
        Rng(AtomicU64::new(seed))
    }

    /// The next number.
    pub(crate) fn next_u64(&self) -> u64 {
        let mut z = self
            .0
            .fetch_add(0x9E37_79B9_7F4A_7C15, Ordering::Relaxed)
            .wrapping_add(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn next_f64(&self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// A device that applies the rules of a [`FaultSet`] to every operation.
pub struct FaultDevice {
    inner: Arc<dyn BlockDevice>,
    faults: Arc<FaultSet>,
    device: Option<DeviceTag>,
    rng: Rng,
    /// Below an inline-checksum member: offsets are physical.
    inline: bool,
}

impl std::fmt::Debug for FaultDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FaultDevice")
            .field("inner", &self.inner.name())
            .field("rules", &self.faults.rules().len())
            .finish()
    }
}

impl FaultDevice {
    /// Wraps `inner`; `seed` makes probabilistic rules reproducible.
    pub fn new(inner: Arc<dyn BlockDevice>, faults: Arc<FaultSet>, seed: u64) -> FaultDevice {
        FaultDevice {
            inner,
            faults,
            device: None,
            rng: Rng::new(seed),
            inline: false,
        }
    }

    /// The same device below an inline-checksum member: it sees physical
    /// data-area offsets and maps them to the logical ones of its rules.
    pub fn with_inline_layout(mut self) -> FaultDevice {
        self.inline = true;
        self
    }

    /// The rules' view of the physical range `offset..+len`.
    fn logical(&self, offset: u64, len: u64) -> (u64, u64) {
        if !self.inline {
            return (offset, len);
        }
        let a = crate::integrity::tag::logical_of(offset);
        (a, crate::integrity::tag::logical_of(offset + len) - a)
    }

    /// Applies corrupt ranges (logical offsets) to `buf` at `offset`.
    fn corrupt(&self, buf: &mut [u8], offset: u64, ranges: &[(u64, u64)]) {
        if !self.inline {
            return corrupt(buf, offset, ranges);
        }
        use crate::integrity::tag::{logical_of, STRIDE, TAG};
        let block = (STRIDE - TAG) as usize;
        let mut pos = 0;
        while pos < buf.len() {
            let phys = offset + pos as u64;
            let in_block = (phys % STRIDE) as usize;
            let n = (STRIDE as usize - in_block).min(buf.len() - pos);
            let data = block.saturating_sub(in_block).min(n);
            corrupt(&mut buf[pos..pos + data], logical_of(phys), ranges);
            pos += n;
        }
    }

    /// The same device, obeying only unbound rules and rules bound to `tag`.
    pub fn with_device(mut self, tag: DeviceTag) -> FaultDevice {
        self.device = Some(tag);
        self
    }

    /// The rule set this device obeys.
    pub fn faults(&self) -> &Arc<FaultSet> {
        &self.faults
    }

    fn judge(&self, op: IoKind, offset: u64, len: u64) -> Option<Verdict> {
        if self.faults.is_empty() {
            return None;
        }
        let range = self.logical(offset, len);
        let mut verdict = Verdict::default();
        // Volume-only kinds are refused on members (`add_fault`, config).
        let member_kind =
            |r: &FaultRule| !r.spec.kind.volume_only() && r.spec.kind != FaultKind::Volatile;
        let any = self.faults.fire(
            self.device,
            op,
            range,
            &self.rng,
            member_kind,
            |rule| match rule.spec.kind {
                FaultKind::Delay => {
                    verdict.delay += Duration::from_micros(rule.spec.delay_us);
                }
                FaultKind::Corrupt => verdict.corrupt.push(rule.spec.range()),
                _ => verdict.fail = true,
            },
        );
        any.then_some(verdict)
    }

    /// Applies delay and error of a verdict; true when the op may proceed.
    async fn enforce(&self, verdict: &Verdict) -> BlockResult {
        if !verdict.delay.is_zero() {
            tokio::time::sleep(verdict.delay).await;
        }
        if verdict.fail {
            return Err(BlockError::io(
                self.inner.name().to_string(),
                std::io::Error::from_raw_os_error(libc::EIO),
            ));
        }
        Ok(())
    }
}

/// Flips every byte of `buf` (which starts at device offset `offset`) that
/// lies inside one of `ranges`.
pub(crate) fn corrupt(buf: &mut [u8], offset: u64, ranges: &[(u64, u64)]) {
    let end = offset + buf.len() as u64;
    for &(a, b) in ranges {
        let a = a.max(offset);
        let b = b.min(end);
        if a < b {
            for byte in &mut buf[(a - offset) as usize..(b - offset) as usize] {
                *byte = !*byte;
            }
        }
    }
}

impl FaultDevice {
    fn read_plain<'a>(&'a self, offset: ByteOffset, buf: &'a mut [u8]) -> IoFuture<'a> {
        let Some(verdict) = self.judge(IoKind::Read, offset.get(), buf.len() as u64) else {
            return self.inner.read(offset, buf);
        };
        crate::block::BoxFuture::new(async move {
            self.enforce(&verdict).await?;
            self.inner.read(offset, buf).await?;
            self.corrupt(buf, offset.get(), &verdict.corrupt);
            Ok(())
        })
    }

    fn write_plain<'a>(
        &'a self,
        at: ByteOffset,
        buf: &'a [u8],
        durability: Durability,
    ) -> IoFuture<'a> {
        let Some(verdict) = self.judge(IoKind::Write, at.get(), buf.len() as u64) else {
            return self.inner.write(at, buf, durability);
        };
        crate::block::BoxFuture::new(async move {
            self.enforce(&verdict).await?;
            if verdict.corrupt.is_empty() {
                return self.inner.write(at, buf, durability).await;
            }
            let mut bad = buf.to_vec();
            self.corrupt(&mut bad, at.get(), &verdict.corrupt);
            self.inner.write(at, &bad, durability).await
        })
    }

    fn read_vectored_plain<'a>(
        &'a self,
        offset: ByteOffset,
        bufs: &'a mut [std::io::IoSliceMut<'_>],
    ) -> IoFuture<'a> {
        let len = crate::iovec::len_mut(bufs) as u64;
        match self.judge(IoKind::Read, offset.get(), len) {
            None => self.inner.read_vectored(offset, bufs),
            Some(_) => crate::block::read_through_copy(self, offset, bufs),
        }
    }

    fn write_vectored_plain<'a>(
        &'a self,
        at: ByteOffset,
        bufs: &'a [std::io::IoSlice<'a>],
        durability: Durability,
    ) -> IoFuture<'a> {
        let len = crate::iovec::len(bufs) as u64;
        match self.judge(IoKind::Write, at.get(), len) {
            None => self.inner.write_vectored(at, bufs, durability),
            Some(_) => crate::block::write_through_copy(self, at, bufs, durability),
        }
    }

    fn flush_plain(&self) -> IoFuture<'_> {
        let Some(verdict) = self.judge(IoKind::Flush, 0, 0) else {
            return self.inner.flush();
        };
        crate::block::BoxFuture::new(async move {
            self.enforce(&verdict).await?;
            self.inner.flush().await
        })
    }

    fn discard_plain(&self, offset: ByteOffset, len: u64) -> IoFuture<'_> {
        let Some(verdict) = self.judge(IoKind::Write, offset.get(), len) else {
            return self.inner.discard(offset, len);
        };
        crate::block::BoxFuture::new(async move {
            self.enforce(&verdict).await?;
            self.inner.discard(offset, len).await
        })
    }

    fn write_zeroes_plain(&self, offset: ByteOffset, len: u64, may_unmap: bool) -> IoFuture<'_> {
        let Some(verdict) = self.judge(IoKind::Write, offset.get(), len) else {
            return self.inner.write_zeroes(offset, len, may_unmap);
        };
        crate::block::BoxFuture::new(async move {
            self.enforce(&verdict).await?;
            self.inner.write_zeroes(offset, len, may_unmap).await
        })
    }
}

/// Every operation under the rules (`volatile` rules act one layer down,
/// in the member's [`super::power_gate::PowerGate`], so that they cover
/// its metadata writes too).
impl BlockDevice for FaultDevice {
    crate::block::forward_to!(inner => name, size, merge_limit);

    fn read<'a>(&'a self, offset: ByteOffset, buf: &'a mut [u8]) -> IoFuture<'a> {
        self.read_plain(offset, buf)
    }

    fn write<'a>(&'a self, at: ByteOffset, buf: &'a [u8], d: Durability) -> IoFuture<'a> {
        self.write_plain(at, buf, d)
    }

    fn read_vectored<'a>(
        &'a self,
        offset: ByteOffset,
        bufs: &'a mut [std::io::IoSliceMut<'_>],
    ) -> IoFuture<'a> {
        self.read_vectored_plain(offset, bufs)
    }

    fn write_vectored<'a>(
        &'a self,
        at: ByteOffset,
        bufs: &'a [std::io::IoSlice<'a>],
        d: Durability,
    ) -> IoFuture<'a> {
        self.write_vectored_plain(at, bufs, d)
    }

    fn flush(&self) -> IoFuture<'_> {
        self.flush_plain()
    }

    fn discard(&self, offset: ByteOffset, len: u64) -> IoFuture<'_> {
        self.discard_plain(offset, len)
    }

    fn write_zeroes(&self, offset: ByteOffset, len: u64, may_unmap: bool) -> IoFuture<'_> {
        self.write_zeroes_plain(offset, len, may_unmap)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::member::memory::MemDevice;

    const SIZE: u64 = 64 << 10;

    fn device(rules: &[FaultSpec]) -> (Arc<MemDevice>, FaultDevice, Vec<Arc<FaultRule>>) {
        let mem = Arc::new(MemDevice::new("mem", SIZE));
        let set = Arc::new(FaultSet::new());
        let mut added = Vec::new();
        for (i, spec) in rules.iter().enumerate() {
            spec.validate().unwrap();
            let rule = Arc::new(FaultRule::new(i as u64 + 1, spec.clone()));
            set.add(rule.clone());
            added.push(rule);
        }
        let dev = FaultDevice::new(mem.clone(), set, 7);
        (mem, dev, added)
    }

    fn is_eio(r: BlockResult) -> bool {
        matches!(r, Err(ref e) if e.errno() == libc::EIO)
    }

    #[tokio::test]
    async fn empty_rule_list_passes_everything_through() {
        // Arrange
        let (mem, dev, _) = device(&[]);
        // Act
        dev.write(ByteOffset(0), &[9; 512], Durability::Normal)
            .await
            .unwrap();
        let mut buf = [0u8; 512];
        dev.read(ByteOffset(0), &mut buf).await.unwrap();
        // Assert
        assert_eq!(buf, [9; 512]);
        assert_eq!(mem.snapshot()[..512], [9; 512]);
    }

    #[tokio::test]
    async fn error_rule_fails_only_its_op_and_range_and_counts_hits() {
        // Arrange
        let spec = FaultSpec {
            op: FaultOp::Read,
            offset: Some(4096),
            length: Some(4096),
            ..FaultSpec::new(FaultKind::Error)
        };
        let (_mem, dev, rules) = device(&[spec]);
        let mut buf = [0u8; 512];
        // Act + Assert
        assert!(is_eio(dev.read(ByteOffset(4096 + 512), &mut buf).await));
        assert!(dev.read(ByteOffset(0), &mut buf).await.is_ok());
        assert!(dev.read(ByteOffset(8192), &mut buf).await.is_ok());
        assert!(dev
            .write(ByteOffset(4096), &buf, Durability::Normal)
            .await
            .is_ok());
        assert!(dev.flush().await.is_ok());
        assert_eq!(rules[0].hits(), 1);
    }

    #[tokio::test]
    async fn offline_rule_fails_every_operation() {
        // Arrange
        let spec = FaultSpec {
            op: FaultOp::Read,
            offset: Some(0),
            length: Some(1),
            ..FaultSpec::new(FaultKind::Offline)
        };
        let (_mem, dev, rules) = device(&[spec]);
        let mut buf = [0u8; 512];
        // Act + Assert: op and range filters do not narrow "offline".
        assert!(is_eio(dev.read(ByteOffset(8192), &mut buf).await));
        assert!(is_eio(
            dev.write(ByteOffset(8192), &buf, Durability::Fua).await
        ));
        assert!(is_eio(dev.flush().await));
        assert!(is_eio(dev.discard(ByteOffset(0), 4096).await));
        assert!(is_eio(dev.write_zeroes(ByteOffset(0), 4096, false).await));
        assert_eq!(rules[0].hits(), 5);
    }

    #[tokio::test]
    async fn corrupt_rule_alters_read_data_inside_its_range_only() {
        // Arrange
        let spec = FaultSpec {
            op: FaultOp::Read,
            offset: Some(100),
            length: Some(10),
            ..FaultSpec::new(FaultKind::Corrupt)
        };
        let (_mem, dev, rules) = device(&[spec]);
        dev.write(ByteOffset(0), &[0x11; 512], Durability::Normal)
            .await
            .unwrap();
        let mut buf = [0u8; 512];
        // Act
        dev.read(ByteOffset(0), &mut buf).await.unwrap();
        // Assert
        assert!(buf[..100].iter().all(|&b| b == 0x11));
        assert!(buf[100..110].iter().all(|&b| b == !0x11));
        assert!(buf[110..].iter().all(|&b| b == 0x11));
        assert_eq!(rules[0].hits(), 1);
    }

    #[tokio::test]
    async fn corrupt_write_rule_stores_altered_data() {
        // Arrange
        let spec = FaultSpec {
            op: FaultOp::Write,
            ..FaultSpec::new(FaultKind::Corrupt)
        };
        let (mem, dev, _) = device(&[spec]);
        // Act
        dev.write(ByteOffset(512), &[0xa5; 512], Durability::Normal)
            .await
            .unwrap();
        // Assert
        assert!(mem.snapshot()[512..1024].iter().all(|&b| b == !0xa5));
    }

    #[tokio::test]
    async fn delay_rule_slows_the_operation_but_keeps_it_correct() {
        // Arrange
        let spec = FaultSpec {
            delay_us: 30_000,
            ..FaultSpec::new(FaultKind::Delay)
        };
        let (_mem, dev, rules) = device(&[spec]);
        dev.write(ByteOffset(0), &[3; 512], Durability::Normal)
            .await
            .unwrap();
        let mut buf = [0u8; 512];
        // Act
        let start = std::time::Instant::now();
        dev.read(ByteOffset(0), &mut buf).await.unwrap();
        // Assert
        assert!(start.elapsed() >= Duration::from_millis(30));
        assert_eq!(buf, [3; 512]);
        assert_eq!(rules[0].hits(), 2);
    }

    #[tokio::test]
    async fn count_expires_the_rule_after_n_hits() {
        // Arrange
        let spec = FaultSpec {
            count: Some(2),
            ..FaultSpec::new(FaultKind::Error)
        };
        let (_mem, dev, rules) = device(&[spec]);
        let mut buf = [0u8; 512];
        // Act
        let results: Vec<bool> = futures::future::join_all(
            (0..4).map(|_| async { dev.read(ByteOffset(0), &mut [0u8; 512]).await.is_ok() }),
        )
        .await;
        // Assert
        assert_eq!(results.iter().filter(|ok| !**ok).count(), 2);
        assert!(dev.read(ByteOffset(0), &mut buf).await.is_ok());
        assert!(rules[0].expired());
        assert_eq!(rules[0].hits(), 2);
    }

    #[tokio::test]
    async fn probability_fires_about_that_often() {
        // Arrange
        let spec = FaultSpec {
            probability: 0.25,
            ..FaultSpec::new(FaultKind::Error)
        };
        let (_mem, dev, rules) = device(&[spec]);
        let mut buf = [0u8; 512];
        // Act
        let mut failures = 0;
        for _ in 0..4000 {
            if dev.read(ByteOffset(0), &mut buf).await.is_err() {
                failures += 1;
            }
        }
        // Assert
        assert!((800..1200).contains(&failures), "{failures} of 4000");
        assert_eq!(rules[0].hits(), failures);
    }

    #[tokio::test]
    async fn removing_a_rule_restores_normal_io() {
        // Arrange
        let (_mem, dev, rules) = device(&[FaultSpec::new(FaultKind::Error)]);
        let mut buf = [0u8; 512];
        assert!(dev.read(ByteOffset(0), &mut buf).await.is_err());
        // Act
        assert!(dev.faults().remove(rules[0].id));
        // Assert
        assert!(dev.faults().is_empty());
        assert!(dev.read(ByteOffset(0), &mut buf).await.is_ok());
        assert!(!dev.faults().remove(rules[0].id));
    }

    #[test]
    fn invalid_specs_are_refused() {
        let bad = [
            FaultSpec {
                probability: 1.5,
                ..FaultSpec::new(FaultKind::Error)
            },
            FaultSpec {
                probability: f64::NAN,
                ..FaultSpec::new(FaultKind::Error)
            },
            FaultSpec::new(FaultKind::Delay),
            FaultSpec {
                offset: Some(u64::MAX),
                length: Some(2),
                ..FaultSpec::new(FaultKind::Error)
            },
            FaultSpec {
                length: Some(0),
                ..FaultSpec::new(FaultKind::Error)
            },
            FaultSpec {
                count: Some(0),
                ..FaultSpec::new(FaultKind::Error)
            },
        ];
        for spec in bad {
            assert!(spec.validate().is_err(), "{spec:?}");
        }
    }

    #[tokio::test]
    async fn offline_rule_bound_to_a_device_spares_the_device_that_takes_its_slot() {
        // Arrange: one slot's rule set, the old device and its successor.
        let set = Arc::new(FaultSet::new());
        let old = FaultDevice::new(Arc::new(MemDevice::new("old", SIZE)), set.clone(), 1)
            .with_device(DeviceTag(1));
        let new = FaultDevice::new(Arc::new(MemDevice::new("new", SIZE)), set.clone(), 2)
            .with_device(DeviceTag(2));
        let rule = FaultRule::new(1, FaultSpec::new(FaultKind::Offline)).on_device(DeviceTag(1));
        set.add(Arc::new(rule));
        let mut buf = [0u8; 512];
        // Act + Assert
        assert!(is_eio(old.read(ByteOffset(0), &mut buf).await));
        assert!(new.read(ByteOffset(0), &mut buf).await.is_ok());
        assert!(new
            .write(ByteOffset(0), &buf, Durability::Normal)
            .await
            .is_ok());
        assert!(new.flush().await.is_ok());
    }
}
