//! The write-intent hook: before a write touches a region of the members,
//! the volume asks a [`WriteIntent`] to record it (the on-disk bitmap lives
//! in `meta::bitmap`; tests use [`MemIntent`]), and reports it done after.
//!
//! ```text
//!  Volume::write ─► member_span(range) ─► intent.mark(span).await ─► level write
//!                                                       └── IntentGuard drop ─► intent.done(span)
//! ```
//!
//! Spans are member data-area offsets: RAID-1 the volume range itself,
//! RAID-5 the whole stripes it touches (parity changes too).

use std::sync::{Arc, Mutex};

use crate::block::{BlockResult, BoxFuture};
use crate::units::ByteOffset;

/// Records which member regions may have writes in flight.
pub trait WriteIntent: Send + Sync {
    /// Records that `start..end` (member data offsets) is about to be
    /// written; resolves once that record is durable.
    fn mark(&self, start: ByteOffset, end: ByteOffset) -> BoxFuture<'_, BlockResult>;
    /// The write of `start..end` announced by `mark` has completed.
    fn done(&self, start: ByteOffset, end: ByteOffset);
    /// The write of `start..end` failed part-way (out of space): keep its
    /// regions recorded until a resync covers them.
    fn keep(&self, start: ByteOffset, end: ByteOffset) {
        let _ = (start, end);
    }
    /// False while the region holding member data offset `offset` is not
    /// known to be in sync (dirty at assembly, or kept by `keep`) until a
    /// resync covers it.
    fn settled(&self, offset: ByteOffset) -> bool {
        let _ = offset;
        true
    }
}

/// Calls [`WriteIntent::done`] when dropped (also when the request is cancelled).
pub(super) struct IntentGuard {
    intent: Arc<dyn WriteIntent>,
    start: ByteOffset,
    end: ByteOffset,
}

impl IntentGuard {
    pub(super) fn new(intent: Arc<dyn WriteIntent>, start: ByteOffset, end: ByteOffset) -> Self {
        IntentGuard { intent, start, end }
    }
}

impl IntentGuard {
    /// Keeps the guarded regions recorded past `done` ([`WriteIntent::keep`]).
    pub(super) fn keep(&self) {
        self.intent.keep(self.start, self.end);
    }
}

impl Drop for IntentGuard {
    fn drop(&mut self) {
        self.intent.done(self.start, self.end);
    }
}

/// An in-memory write intent for tests: logs every mark and done.
#[derive(Debug, Default)]
pub struct MemIntent {
    /// `(is_mark, start, end)` in call order.
    pub log: Mutex<Vec<(bool, u64, u64)>>,
}

impl WriteIntent for MemIntent {
    fn mark(&self, start: ByteOffset, end: ByteOffset) -> BoxFuture<'_, BlockResult> {
        self.log
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push((true, start.get(), end.get()));
        crate::block::BoxFuture::new(async { Ok(()) })
    }

    fn done(&self, start: ByteOffset, end: ByteOffset) {
        self.log
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push((false, start.get(), end.get()));
    }
}
