//! Runs a volume operation to its end even if the request that started it
//! is dropped (a front-end gone, a queue reset). A RAID-5 stripe write cut
//! off between its data and its parity writes would leave the parity wrong
//! with no crash for the resync to find; so exports never cancel a write.
//!
//! ```text
//!  request future ─► FinishOnDrop(op) ─► polled in place (no extra hop)
//!  request dropped before op ends ─► op spawned on the tokio runtime
//! ```

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::runtime::Handle;

use crate::block::BoxFuture;

/// An owned operation polled where it is awaited, handed to the runtime
/// to finish if it is dropped first.
pub struct FinishOnDrop<T: Send + 'static> {
    op: Option<BoxFuture<'static, T>>,
    runtime: Option<Handle>,
}

impl<T: Send + 'static> std::fmt::Debug for FinishOnDrop<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FinishOnDrop")
            .field("running", &self.op.is_some())
            .finish()
    }
}

impl<T: Send + 'static> FinishOnDrop<T> {
    /// Wraps `op`; the runtime to finish it on is the current one, if any
    /// (without one a dropped operation is dropped with it).
    pub fn new(op: impl Future<Output = T> + Send + 'static) -> Self {
        FinishOnDrop {
            op: Some(crate::block::BoxFuture::new(op)),
            runtime: Handle::try_current().ok(),
        }
    }
}

impl<T: Send + 'static> Future for FinishOnDrop<T> {
    type Output = T;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<T> {
        let Some(op) = self.op.as_mut() else {
            // Polled again after completion: never ready again.
            return Poll::Pending;
        };
        match op.as_mut().poll(cx) {
            Poll::Ready(v) => {
                self.op = None;
                Poll::Ready(v)
            }
            Poll::Pending => Poll::Pending,
        }
    }
}

impl<T: Send + 'static> Drop for FinishOnDrop<T> {
    fn drop(&mut self) {
        if let (Some(op), Some(rt)) = (self.op.take(), self.runtime.take()) {
            rt.spawn(async move {
                let _ = op.await;
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::FinishOnDrop;

    #[tokio::test]
    async fn a_dropped_operation_still_runs_to_its_end() {
        // Arrange: an operation that ends only once told to, after its
        // request is gone.
        let (go_tx, go) = tokio::sync::oneshot::channel::<()>();
        let (done_tx, done) = tokio::sync::oneshot::channel::<()>();
        let mut op = crate::block::BoxFuture::new(FinishOnDrop::new(async move {
            let _ = go.await;
            let _ = done_tx.send(());
        }));

        // Act: poll once (the operation starts), then drop the request.
        assert!(futures::poll!(op.as_mut()).is_pending());
        drop(op);
        let _ = go_tx.send(());

        // Assert
        let finished = tokio::time::timeout(Duration::from_secs(10), done).await;
        assert!(
            matches!(finished, Ok(Ok(()))),
            "the dropped operation did not run to its end"
        );
    }

    #[tokio::test]
    async fn a_completed_operation_gives_its_output() {
        assert_eq!(FinishOnDrop::new(async { 7 }).await, 7);
    }
}
