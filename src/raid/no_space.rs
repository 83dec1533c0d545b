//! Out of space under the members is not a member failure. A member file on
//! a filesystem that fills returns ENOSPC on writes to its holes; the
//! member is fine, the request cannot be done now. So a member op that
//! fails that way leaves the member active, and the client request that
//! issued it fails with ENOSPC once all its member ops are done:
//!
//! ```text
//!  Volume::write ─► watch(level write) ─► member_op ─ ENOSPC ─► note()
//!        ▲                                   (no retry, member stays active)
//!        └── hit? ─► keep the write-intent regions, Err(ENOSPC)
//! ```
//!
//! The other members of the request may have taken their part, so mirrors
//! or parity of the regions it touched may disagree: those regions stay
//! set in the write-intent bitmap, and the array stays dirty at shutdown,
//! so the next start resyncs them (docs/FORMAT.md §6).
//!
//! The flag is task-local: a request and its member ops run in one task
//! (joined futures), so concurrent requests never see each other's hits.

use std::cell::Cell;
use std::future::Future;

use crate::block::BlockError;

tokio::task_local! {
    static HIT: Cell<bool>;
}

/// Records that a member op of the current request ran out of space (a
/// no-op outside [`watch`]).
pub(super) fn note() {
    let _ = HIT.try_with(|hit| hit.set(true));
}

/// Notes `result` if it ran out of space: a checksum reseal of a resync
/// step (a member write of its own, outside the member ops) that cannot
/// get space fails the step with ENOSPC like a member op would, so the
/// range stays owed instead of being cleared with stale checksums.
pub(super) fn note_result(result: &crate::block::BlockResult) {
    if result.as_ref().is_err_and(BlockError::is_no_space) {
        note();
    }
}

/// Whether a member op of the current request ran out of space so far.
pub(super) fn hit() -> bool {
    HIT.try_with(Cell::get).unwrap_or(false)
}

/// Runs a request; returns its result and whether any of its member ops
/// ran out of space. A combinator, not an `async` block: the request's
/// future is held once (an `async fn` taking it kept it in its argument
/// and in its await slot, three times the request's size in the volume's
/// future, all of it copied into the future pool per request).
pub(super) fn watch<F: Future>(request: F) -> impl Future<Output = (F::Output, bool)> {
    use futures::FutureExt as _;
    HIT.scope(
        Cell::new(false),
        request.map(|out| (out, HIT.with(Cell::get))),
    )
}

/// The error a request that ran out of space fails with.
pub(super) fn error(volume: &str) -> BlockError {
    BlockError::io(
        volume.to_string(),
        std::io::Error::from_raw_os_error(libc::ENOSPC),
    )
}
