//! The daemon's side of Linux md arrays: `vraid examine` of an md member
//! and `vraid serve --md MEMBER...`, which opens the members read-only
//! (O_RDONLY, claimed as vraid members are: nothing is written), reads their md
//! superblocks, assembles the array (`md::assemble`) and exports it as a
//! read-only NBD volume beside any vraid volumes. With `--md-writable` (or
//! `writable = true` in `[[md]]`) the members are opened read-write, the
//! array is refused with the reason if it cannot be written safely, and
//! [`MdServed::close`] marks it clean at an orderly shutdown.
//!
//! ```text
//!  paths ─► open (O_RDONLY unless writable) ─► md::superblock::read
//!        ─► md::assemble ─► MdVolume (::writable) ─► nbd::Export
//!  shutdown ─► MdServed::close ─► superblocks clean
//! ```

use std::path::PathBuf;
use std::sync::Arc;

use tracing::{info, warn};

use super::DaemonError;
use crate::block::BlockDevice;
use crate::export::nbd::Export;
use crate::export::vhost::VhostExport;
use crate::md::{self, MdReport, MdVolume};
use crate::member::{self, MemberOptions};

/// The md report of a device holding an md superblock (a bad checksum
/// still gives one: it shows bad); `Err` with the reason when one is found
/// but a field is out of bounds; `Ok(None)` when there is none.
pub async fn examine(device: &dyn BlockDevice) -> Result<Option<MdReport>, String> {
    match md::superblock::read(device).await {
        Ok(sb) => Ok(Some(MdReport::new(device.name(), &sb))),
        Err(md::MdSuperblockError::NotMd) => Ok(None),
        Err(e) => Err(e.to_string()),
    }
}

/// An md array assembled for serving.
pub struct MdServed {
    pub volume: Arc<MdVolume>,
}

/// Opens `paths` (read-only unless `writable`) and assembles the md array
/// they hold, exported as `name` if given.
pub async fn bring_up(
    paths: &[PathBuf],
    name: Option<&str>,
    writable: bool,
    opts: &MemberOptions,
) -> Result<MdServed, DaemonError> {
    let opts = MemberOptions {
        read_only: !writable,
        ..*opts
    };
    refuse_served_here(paths)?;
    let mut members = Vec::with_capacity(paths.len());
    for path in paths {
        let device: Arc<dyn BlockDevice> = member::open_member(path, &opts)?;
        let sb = md::superblock::read(&*device)
            .await
            .map_err(|e| DaemonError::Usage(format!("{}: {e}", path.display())))?;
        members.push((device, sb));
    }
    let mut array = md::assemble(members).map_err(|e| DaemonError::Usage(e.to_string()))?;
    if let Some(name) = name {
        array.name = name.to_string();
    }
    for l in &array.left_out {
        warn!("md {}: {} left out: {}", array.name, l.device, l.why);
    }
    let missing = array.missing();
    info!(
        "md {} ({}): {}, {} of {} members{}, {} bytes, {}",
        array.name,
        array.uuid,
        md::assemble::level_name(array.level_number),
        array.slots.len() - missing,
        array.slots.len(),
        if missing > 0 { " (DEGRADED)" } else { "" },
        array.size,
        if writable { "writable" } else { "read-only" }
    );
    let volume = match writable {
        true => MdVolume::writable(array)
            .await
            .map_err(DaemonError::Usage)?,
        false => MdVolume::new(array),
    };
    Ok(MdServed {
        volume: Arc::new(volume),
    })
}

/// Refuses a member this server already serves (a vraid volume's member,
/// or one of another `[[md]]` array, under any spelling): claims of this
/// process do not stop it, and two writers of one file would corrupt it.
fn refuse_served_here(paths: &[PathBuf]) -> Result<(), DaemonError> {
    for path in paths {
        let Ok(id) = member::DeviceId::of_path(path) else {
            continue;
        };
        if member::claim::held_by_this_process(id) {
            return Err(DaemonError::Usage(format!(
                "{}: already a member of a volume or md array this server serves",
                path.display()
            )));
        }
    }
    Ok(())
}

/// Marks every written array clean (orderly shutdown).
pub async fn close_all(served: &[MdServed]) {
    for m in served {
        m.close().await;
    }
}

impl MdServed {
    /// Adds its export name to `taken`, refusing one already there (the
    /// NBD export table would silently keep only the later of the two).
    pub fn claim_name(&self, taken: &mut Vec<String>) -> Result<(), DaemonError> {
        let a = self.volume.array();
        if taken.contains(&a.name) {
            return Err(DaemonError::Usage(format!(
                "md array {}: export name {:?} is already served; give it another \
                 (`name` in its [[md]] table)",
                a.uuid, a.name
            )));
        }
        taken.push(a.name.clone());
        Ok(())
    }

    /// Marks a written array clean (orderly shutdown); logs a failure.
    pub async fn close(&self) {
        if let Err(e) = self.volume.close().await {
            warn!(
                "md {}: could not mark it clean (md will resync it): {e}",
                self.volume.array().name
            );
        }
    }

    /// Its vhost-user-blk export on `socket`, named as the array.
    pub fn vhost_export(&self, socket: PathBuf, num_queues: u16) -> VhostExport {
        let a = self.volume.array();
        let chunk = a.chunk_bytes.max(4096);
        let data_members = match &a.level {
            md::assemble::MdLevel::Parity(p) => p.data_disks(),
            md::assemble::MdLevel::Raid0(_) => a.slots.len(),
            _ => 1,
        };
        VhostExport {
            device: self.volume.clone() as Arc<dyn BlockDevice>,
            socket,
            name: a.name.clone(),
            read_only: !self.volume.is_writable(),
            num_queues,
            min_io: chunk,
            opt_io: chunk * data_members as u64,
        }
    }

    /// Its NBD export, named as the array.
    pub fn export(&self) -> Export {
        let a = self.volume.array();
        let writable = self.volume.is_writable();
        Export {
            name: a.name.clone(),
            description: format!(
                "Linux md {} array {}, {} members, {}",
                md::assemble::level_name(a.level_number),
                a.uuid,
                a.slots.len(),
                if writable { "writable" } else { "read-only" }
            ),
            device: self.volume.clone() as Arc<dyn BlockDevice>,
            read_only: !writable,
            preferred_block: 4096,
            multi_conn: true,
            contexts: Default::default(),
        }
    }
}
