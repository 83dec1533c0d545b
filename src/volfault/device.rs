//! The volume fault device: applies a volume's rules to each request a
//! client sends, before it reaches the cache and the volume.
//!
//! A request's matching rules combine into one [`Verdict`], applied in
//! this order: stall (wait until the rule is cleared), delay, failure
//! (error, readonly, bad sector), then the request runs, torn (a prefix
//! of its blocks, then EIO) or corrupted. A write that succeeds heals the
//! bad sectors it covers.

use std::io::{IoSlice, IoSliceMut};
use std::sync::Arc;
use std::time::Duration;

use super::VolumeFaults;
use crate::block::{BlockDevice, BlockError, BlockResult, Durability, IoFuture};
use crate::member::fault::{corrupt, FaultKind, FaultRule, IoKind};
use crate::units::ByteOffset;

/// Block size of torn writes: a torn write lands whole blocks of it.
pub const TORN_BLOCK: u64 = 4096;

/// What the matching rules ask of one request.
#[derive(Debug, Default)]
struct Verdict {
    stall: Vec<u64>,
    delay: Duration,
    fail: Option<Failure>,
    corrupt: Vec<(u64, u64)>,
    torn: bool,
}

#[derive(Clone, Copy, Debug)]
enum Failure {
    Eio,
    ReadOnly,
}

/// The request as the rules see it.
#[derive(Clone, Copy, Debug)]
enum Req {
    Read,
    /// A write; `data`: with a buffer (not a discard or zeroing).
    Write {
        data: bool,
    },
    Flush,
}

/// Volume faults as a [`BlockDevice`].
pub struct VolumeFaultDevice {
    inner: Arc<dyn BlockDevice>,
    faults: Arc<VolumeFaults>,
}

impl std::fmt::Debug for VolumeFaultDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VolumeFaultDevice")
            .field("inner", &self.inner.name())
            .finish_non_exhaustive()
    }
}

impl VolumeFaultDevice {
    /// `inner` under the rules of `faults`.
    pub fn new(inner: Arc<dyn BlockDevice>, faults: Arc<VolumeFaults>) -> VolumeFaultDevice {
        VolumeFaultDevice { inner, faults }
    }

    /// Whether `rule` may fire on `req` at `offset..+len` before its
    /// filters run (so that a rule that cannot act is not counted).
    fn eligible(&self, rule: &FaultRule, req: Req, offset: u64, len: u64) -> bool {
        match (rule.spec.kind, req) {
            (FaultKind::Readonly, Req::Write { .. }) => true,
            (FaultKind::Readonly, _) => false,
            (FaultKind::BadSector, Req::Read) => self.faults.bad_in(rule.id, offset, len),
            (FaultKind::BadSector, _) => false,
            (FaultKind::Torn, Req::Write { data: true }) => len > TORN_BLOCK,
            (FaultKind::Torn, _) => false,
            _ => true,
        }
    }

    fn judge(&self, req: Req, offset: u64, len: u64) -> Option<Verdict> {
        let op = match req {
            Req::Read => IoKind::Read,
            Req::Write { .. } => IoKind::Write,
            Req::Flush => IoKind::Flush,
        };
        let mut v = Verdict::default();
        let eligible = |r: &FaultRule| self.eligible(r, req, offset, len);
        let f = &self.faults;
        let any =
            f.rules.fire(
                None,
                op,
                (offset, len),
                &f.rng,
                eligible,
                |rule| match rule.spec.kind {
                    FaultKind::Stall => v.stall.push(rule.id),
                    FaultKind::Delay => v.delay += Duration::from_micros(rule.spec.delay_us),
                    FaultKind::Corrupt => v.corrupt.push(rule.spec.range()),
                    FaultKind::Torn => v.torn = true,
                    FaultKind::Readonly => v.fail = v.fail.or(Some(Failure::ReadOnly)),
                    _ => v.fail = Some(Failure::Eio),
                },
            );
        any.then_some(v)
    }

    /// Stall, delay and failure of a verdict; Ok when the request may run.
    async fn enforce(&self, v: &Verdict) -> BlockResult {
        if !v.stall.is_empty() {
            self.faults.wait_cleared(&v.stall).await;
        }
        if !v.delay.is_zero() {
            tokio::time::sleep(v.delay).await;
        }
        match v.fail {
            None => Ok(()),
            Some(Failure::ReadOnly) => Err(BlockError::ReadOnly),
            Some(Failure::Eio) => Err(self.eio()),
        }
    }

    fn eio(&self) -> BlockError {
        BlockError::io(
            self.inner.name().to_string(),
            std::io::Error::from_raw_os_error(libc::EIO),
        )
    }

    /// A write under a verdict: corrupted, torn, healed.
    async fn write_judged(
        &self,
        at: ByteOffset,
        buf: &[u8],
        d: Durability,
        v: Verdict,
    ) -> BlockResult {
        self.enforce(&v).await?;
        let mut data = std::borrow::Cow::Borrowed(buf);
        if !v.corrupt.is_empty() {
            corrupt(data.to_mut(), at.get(), &v.corrupt);
        }
        if v.torn {
            let blocks = (buf.len() as u64).div_ceil(TORN_BLOCK);
            let landed = 1 + self.faults.rng.next_u64() % (blocks - 1);
            let prefix = (landed * TORN_BLOCK) as usize;
            self.inner.write(at, &data[..prefix], d).await?;
            self.faults.heal(at.get(), prefix as u64);
            return Err(self.eio());
        }
        self.inner.write(at, &data, d).await?;
        self.faults.heal(at.get(), buf.len() as u64);
        Ok(())
    }

    /// A discard or zeroing under a verdict; `run` builds it only once
    /// the verdict lets it go (the cache picks its path when a request is
    /// built: a stalled one must not have picked it yet).
    async fn zero_judged<'a>(
        &'a self,
        run: impl FnOnce() -> IoFuture<'a>,
        at: u64,
        len: u64,
        v: Option<Verdict>,
    ) -> BlockResult {
        if let Some(v) = &v {
            self.enforce(v).await?;
        }
        run().await?;
        self.faults.heal(at, len);
        Ok(())
    }
}

impl BlockDevice for VolumeFaultDevice {
    crate::block::forward_to!(inner => name, size, mark_lost, reserve);

    /// The volume's map, but nothing is sure to read as zeroes while a
    /// rule may corrupt or fail reads.
    fn allocation(
        &self,
        offset: ByteOffset,
        len: u64,
    ) -> crate::block::BoxFuture<'_, BlockResult<crate::block::AllocationMap>> {
        if self.faults.rules().rules().is_empty() {
            return self.inner.allocation(offset, len);
        }
        crate::block::BoxFuture::new(async move {
            let mut map = self.inner.allocation(offset, len).await?;
            for e in &mut map {
                e.state.zero = false;
            }
            Ok(map)
        })
    }

    fn read<'a>(&'a self, offset: ByteOffset, buf: &'a mut [u8]) -> IoFuture<'a> {
        let Some(v) = self.judge(Req::Read, offset.get(), buf.len() as u64) else {
            return self.inner.read(offset, buf);
        };
        crate::block::BoxFuture::new(async move {
            self.enforce(&v).await?;
            self.inner.read(offset, buf).await?;
            corrupt(buf, offset.get(), &v.corrupt);
            Ok(())
        })
    }

    fn write<'a>(&'a self, at: ByteOffset, buf: &'a [u8], durability: Durability) -> IoFuture<'a> {
        let len = buf.len() as u64;
        match self.judge(Req::Write { data: true }, at.get(), len) {
            Some(v) => crate::block::BoxFuture::new(self.write_judged(at, buf, durability, v)),
            None if !self.faults.has_bad_sectors() => self.inner.write(at, buf, durability),
            None => crate::block::BoxFuture::new(async move {
                self.inner.write(at, buf, durability).await?;
                self.faults.heal(at.get(), len);
                Ok(())
            }),
        }
    }

    /// Without a rule for it, the list goes through untouched (zero
    /// copy); a judged read corrupts each segment at its own offset.
    fn read_vectored<'a>(
        &'a self,
        offset: ByteOffset,
        bufs: &'a mut [IoSliceMut<'_>],
    ) -> IoFuture<'a> {
        let len = crate::iovec::len_mut(bufs) as u64;
        let Some(v) = self.judge(Req::Read, offset.get(), len) else {
            return self.inner.read_vectored(offset, bufs);
        };
        crate::block::BoxFuture::new(async move {
            self.enforce(&v).await?;
            self.inner.read_vectored(offset, bufs).await?;
            let mut at = offset.get();
            for seg in bufs.iter_mut() {
                corrupt(seg, at, &v.corrupt);
                at += seg.len() as u64;
            }
            Ok(())
        })
    }

    /// Without a rule or bad sectors, the list goes through untouched
    /// (zero copy); otherwise through one contiguous copy, judged once.
    fn write_vectored<'a>(
        &'a self,
        at: ByteOffset,
        bufs: &'a [IoSlice<'a>],
        durability: Durability,
    ) -> IoFuture<'a> {
        let len = crate::iovec::len(bufs) as u64;
        let verdict = self.judge(Req::Write { data: true }, at.get(), len);
        if verdict.is_none() && !self.faults.has_bad_sectors() {
            return self.inner.write_vectored(at, bufs, durability);
        }
        crate::block::BoxFuture::new(async move {
            let mut data = vec![0u8; len as usize];
            crate::iovec::gather(bufs, &mut data);
            match verdict {
                Some(v) => self.write_judged(at, &data, durability, v).await,
                None => {
                    self.inner.write(at, &data, durability).await?;
                    self.faults.heal(at.get(), len);
                    Ok(())
                }
            }
        })
    }

    fn flush(&self) -> IoFuture<'_> {
        let Some(v) = self.judge(Req::Flush, 0, 0) else {
            return self.inner.flush();
        };
        crate::block::BoxFuture::new(async move {
            self.enforce(&v).await?;
            self.inner.flush().await
        })
    }

    fn discard(&self, offset: ByteOffset, len: u64) -> IoFuture<'_> {
        let v = self.judge(Req::Write { data: false }, offset.get(), len);
        let run = move || self.inner.discard(offset, len);
        crate::block::BoxFuture::new(self.zero_judged(run, offset.get(), len, v))
    }

    fn write_zeroes(&self, offset: ByteOffset, len: u64, may_unmap: bool) -> IoFuture<'_> {
        let v = self.judge(Req::Write { data: false }, offset.get(), len);
        let run = move || self.inner.write_zeroes(offset, len, may_unmap);
        crate::block::BoxFuture::new(self.zero_judged(run, offset.get(), len, v))
    }
}
