//! [`NbdTarget`]: a replay written to an NBD export (another vraid
//! volume's export, qemu-nbd, nbdkit) through the remote member client
//! (`crate::remote::RemoteMember`), one request at a time from the
//! offline `vraid log` verbs.
//!
//! The verbs run synchronously inside the runtime (`main`'s `block_on`);
//! each request is driven with `block_in_place` + `Handle::block_on` so
//! the client's reader and writer tasks keep running on the other
//! workers. A target smaller than the log's volume is refused before
//! anything is written.

use std::future::Future;
use std::path::{Path, PathBuf};

use super::LogError;
use crate::block::{BlockDevice, BlockResult, Durability};
use crate::remote::{RemoteMember, RemoteOptions};
use crate::units::ByteOffset;

/// An NBD export a replay writes.
#[derive(Debug)]
pub struct NbdTarget {
    member: RemoteMember,
    uri: PathBuf,
}

impl NbdTarget {
    /// Connects to `uri` and checks it holds `size` bytes and is writable.
    pub fn open(uri: &Path, size: u64) -> Result<NbdTarget, LogError> {
        if tokio::runtime::Handle::try_current().is_err() {
            return Err(LogError::Target {
                target: uri.display().to_string(),
                why: "an NBD target needs the async runtime".into(),
            });
        }
        let member = RemoteMember::open(uri, RemoteOptions::from_env(), false).map_err(|e| {
            LogError::Target {
                target: uri.display().to_string(),
                why: crate::daemon::error_chain(&e),
            }
        })?;
        let t = NbdTarget {
            member,
            uri: uri.to_path_buf(),
        };
        if t.member.size() < size {
            return Err(t.fail(format!(
                "the export holds {} bytes, smaller than the log's volume ({size} bytes)",
                t.member.size()
            )));
        }
        if t.member
            .negotiated()
            .has(crate::export::nbd::proto::TFLAG_READ_ONLY)
        {
            return Err(t.fail("the export is read-only".into()));
        }
        Ok(t)
    }

    fn fail(&self, why: String) -> LogError {
        LogError::Target {
            target: self.uri.display().to_string(),
            why,
        }
    }

    fn run<'a>(&self, io: impl Future<Output = BlockResult> + 'a) -> Result<(), LogError> {
        let handle = tokio::runtime::Handle::current();
        tokio::task::block_in_place(|| handle.block_on(io))
            .map_err(|e| self.fail(crate::daemon::error_chain(&e)))
    }

    pub(super) fn write(&self, at: u64, data: &[u8]) -> Result<(), LogError> {
        self.run(self.member.write(ByteOffset(at), data, Durability::Normal))
    }

    /// NBD WRITE_ZEROES (unmapping allowed, as a trim in the log reads
    /// back zeroes), or zero buffers when the server offers none.
    pub(super) fn zero(&self, at: u64, len: u64) -> Result<(), LogError> {
        self.run(self.member.write_zeroes(ByteOffset(at), len, true))
    }

    /// NBD FLUSH.
    pub(super) fn sync(&self) -> Result<(), LogError> {
        self.run(self.member.flush())
    }
}
