//! A loop device attached with `losetup` over a file, detached when
//! dropped (tests that check members under or over loop devices).

use std::path::Path;
use std::process::Command;

use crate::run_ok;

/// `/dev/loopN` over a file; `losetup -d` on drop.
#[derive(Debug)]
pub struct LoopDev(pub String);

impl LoopDev {
    /// Attaches the first free loop device to `file` from byte `offset`.
    pub fn attach(file: &Path, offset: u64) -> LoopDev {
        let mut c = Command::new("losetup");
        c.args(["-f", "--show", "-o", &offset.to_string()])
            .arg(file);
        LoopDev(run_ok(&mut c).trim().to_string())
    }
}

impl Drop for LoopDev {
    fn drop(&mut self) {
        let _ = Command::new("losetup").args(["-d", &self.0]).status();
    }
}
