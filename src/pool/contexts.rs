//! NBD metadata contexts of a pool volume: `qemu:dirty-bitmap:OTHER`, the
//! clusters where the volume differs from a related volume of its pool
//! (docs/FORMAT.md §11, "Changed blocks"), named as QEMU names its
//! bitmaps so `nbdinfo --map=qemu:dirty-bitmap:SNAP` and incremental
//! backup tools read only what changed.
//!
//! Offered on volume `X`'s export, asked at each negotiation (snapshots
//! come and go): every snapshot taken of X; X's parent (the volume a
//! snapshot was taken of, the snapshot a clone was made from); and the
//! other snapshots of X's parent (an incremental backup between two
//! snapshots).

use std::sync::{Arc, Weak};

use crate::block::{BlockError, BlockResult, BoxFuture};
use crate::export::nbd::meta::{ContextSource, MetaContext, StatusExtents};
use crate::pool::pool::Listed;
use crate::pool::Pool;

/// `NBD_STATE_DIRTY` of the `qemu:dirty-bitmap:` namespace.
pub const STATE_DIRTY: u32 = 1;

/// The prefix of changed-block context names.
pub const DIRTY_PREFIX: &str = "qemu:dirty-bitmap:";

/// Changed clusters of volume `volume` against volume `other`.
#[derive(Debug)]
pub struct DirtyContext {
    pool: Weak<Pool>,
    volume: u32,
    other: u32,
    name: String,
}

impl MetaContext for DirtyContext {
    fn name(&self) -> &str {
        &self.name
    }

    fn extents(&self, offset: u64, len: u64) -> BoxFuture<'_, BlockResult<StatusExtents>> {
        crate::block::BoxFuture::new(async move {
            let pool = self.pool.upgrade().ok_or_else(|| gone(&self.name))?;
            let runs = pool
                .changed(self.volume, self.other, offset, len)
                .await
                .map_err(|e| e.into_block(&self.name))?;
            Ok(runs
                .into_iter()
                .map(|(n, dirty)| (n, if dirty { STATE_DIRTY } else { 0 }))
                .collect())
        })
    }
}

fn gone(name: &str) -> BlockError {
    BlockError::io(name, std::io::Error::other("the pool is closed"))
}

/// True when `y` is offered as a changed-blocks base on `x`'s export.
fn related(x: &Listed, y: &Listed) -> bool {
    x.id != y.id
        && ((y.snapshot && y.parent == x.id)
            || x.parent == y.id
            || (y.snapshot && x.parent != 0 && y.parent == x.parent))
}

/// The changed-blocks contexts of one volume's export.
#[derive(Debug)]
pub struct PoolContexts {
    pool: Weak<Pool>,
    volume: u32,
}

impl PoolContexts {
    /// The source for volume `volume` of `pool`.
    pub fn new(pool: &Arc<Pool>, volume: u32) -> PoolContexts {
        PoolContexts {
            pool: Arc::downgrade(pool),
            volume,
        }
    }
}

impl ContextSource for PoolContexts {
    fn contexts(&self) -> Vec<Arc<dyn MetaContext>> {
        let Some(pool) = self.pool.upgrade() else {
            return Vec::new();
        };
        let listing = pool.listing();
        let Some(x) = listing.iter().find(|v| v.id == self.volume) else {
            return Vec::new();
        };
        listing
            .iter()
            .filter(|y| related(x, y))
            .map(|y| {
                Arc::new(DirtyContext {
                    pool: self.pool.clone(),
                    volume: self.volume,
                    other: y.id,
                    name: format!("{DIRTY_PREFIX}{}", y.name),
                }) as Arc<dyn MetaContext>
            })
            .collect()
    }
}
