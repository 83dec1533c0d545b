//! Mirror policies kept in the superblock (issue 13, FORMAT.md §6): the
//! write-mostly roles and write-behind, applied at bring-up (stored policy
//! plus what the config adds) and changed live by `vraid set`
//! (`mirror.set` on the control socket).
//!
//! ```text
//!  bring-up: superblock policy ∪ config ─► Volume (before resync/writes)
//!     ─► template (written by the start-up mark_dirty)
//!  vraid set: turning on  ─► superblock update ─► Volume
//!             turning off ─► pause write-behind, drain ─► superblock
//!                            update ─► Volume (write-mostly cleared)
//! ```

use std::path::Path;
use std::sync::Arc;

use tracing::info;

use super::array::{ArrayHandle, ArrayOptions};
use super::DaemonError;
use crate::control::params::MirrorSetParams;
use crate::control::replies::MirrorReply;
use crate::meta::{ArrayMetadata, MirrorPolicy};
use crate::raid::{BehindLimits, Level, MemberIndex, Volume};

/// The stored bounds of `limits`: KiB rounded up, both at least 1.
fn stored(limits: BehindLimits) -> (u32, u32) {
    let kib = limits.max_bytes.div_ceil(1024).clamp(1, u32::MAX as u64);
    let requests = limits.max_requests.clamp(1, u32::MAX as u64);
    (kib as u32, requests as u32)
}

/// The run-time limits of stored bounds.
fn limits((kib, requests): (u32, u32)) -> BehindLimits {
    BehindLimits {
        max_bytes: u64::from(kib) << 10,
        max_requests: u64::from(requests),
    }
}

/// The reply naming `p`.
pub(super) fn reply(p: &MirrorPolicy) -> MirrorReply {
    MirrorReply {
        write_mostly: (0..32).filter(|&r| p.is_write_mostly(r)).collect(),
        write_behind: p.write_behind.map(|b| limits(b).max_bytes),
        write_behind_requests: p.write_behind.map(|b| limits(b).max_requests),
    }
}

/// Refuses a policy the array cannot keep: write-mostly needs RAID-1,
/// write-behind a write-mostly role and the bitmap.
fn check(name: &str, p: &MirrorPolicy, level: Level, bitmap: bool) -> Result<(), DaemonError> {
    if *p != MirrorPolicy::default() && level != Level::Raid1 {
        return Err(DaemonError::Usage(format!(
            "{name}: write-mostly members need a RAID-1"
        )));
    }
    if p.write_behind.is_some() && p.write_mostly == 0 {
        return Err(DaemonError::Usage(format!(
            "{name}: write-behind applies to write-mostly members: name one"
        )));
    }
    if p.write_behind.is_some() && !bitmap {
        return Err(DaemonError::Usage(format!(
            "{name}: write-behind needs the write-intent bitmap"
        )));
    }
    Ok(())
}

/// Bring-up: the freshest superblock's policy plus what `aopts.mirror`
/// (config or flags) adds, set on `volume` before anything reads or writes, and
/// left in the template for the start-up `mark_dirty` to write.
pub(super) async fn apply(
    volume: &Arc<Volume>,
    metadata: &ArrayMetadata,
    paths: &[Option<String>],
    aopts: &ArrayOptions,
    bitmap: bool,
) -> Result<(), DaemonError> {
    let (mirror, read_only) = (&aopts.mirror, aopts.read_only);
    let name = volume.volume_name().to_string();
    let old = metadata.mirror_policy().await;
    let mut p = old;
    for m in &mirror.write_mostly {
        match role_of(m, paths) {
            Some(role) => p.set_write_mostly(role, true),
            None => tracing::warn!("{name}: write-mostly member {m} is not present"),
        }
    }
    if let Some(l) = mirror.write_behind {
        p.write_behind = Some(stored(l));
    }
    let writing = !read_only;
    let asked = mirror.write_behind.is_some() && writing;
    // A stored write-behind whose write-mostly members were all replaced
    // (they do not pass the policy on) stays, idle, as md keeps it in its
    // bitmap; only asking for it anew needs a write-mostly role.
    let idle = p.write_behind.is_some() && p.write_mostly == 0 && mirror.write_behind.is_none();
    let checked = MirrorPolicy {
        write_behind: p.write_behind.filter(|_| !idle),
        ..p
    };
    check(&name, &checked, volume.geometry().level(), bitmap || !asked)?;
    for role in 0..volume.geometry().members() {
        volume.set_write_mostly(MemberIndex(role), p.is_write_mostly(role));
    }
    match p.write_behind.filter(|_| writing) {
        Some(b) if bitmap => volume.start_write_behind(limits(b)),
        Some(_) => tracing::warn!(
            "{name}: write-behind (kept in the superblocks) stays off: this run keeps no \
             write-intent bitmap; writes reach every member before they are acknowledged"
        ),
        None => {}
    }
    if p != old {
        info!(
            "{name}: mirror policy {:?} (kept in the superblocks)",
            reply(&p)
        );
        metadata.set_mirror_policy(p, false).await?;
    }
    Ok(())
}

/// The role a member is named by: a role number, or its path as given.
pub(super) fn role_of(m: &str, paths: &[Option<String>]) -> Option<usize> {
    if let Ok(role) = m.parse::<usize>() {
        return (role < paths.len()).then_some(role);
    }
    paths
        .iter()
        .position(|p| p.as_deref().is_some_and(|p| Path::new(p) == Path::new(m)))
}

/// `p` with the change of `set` on `role`.
fn changed(
    mut p: MirrorPolicy,
    role: Option<usize>,
    set: &MirrorSetParams,
) -> Result<MirrorPolicy, DaemonError> {
    match (role, set.write_mostly) {
        (Some(r), Some(on)) => p.set_write_mostly(r, on),
        (None, Some(_)) => {
            return Err(DaemonError::Usage(
                "--write-mostly needs --member".to_string(),
            ))
        }
        (Some(_), None) => {
            return Err(DaemonError::Usage(
                "--member needs --write-mostly on|off".to_string(),
            ))
        }
        (None, None) => {}
    }
    let requests = set.write_behind_requests;
    match (set.write_behind, p.write_behind) {
        (Some(0), _) => p.write_behind = None,
        (Some(bytes), now) => {
            let old = now.map_or(BehindLimits::default(), limits);
            p.write_behind = Some(stored(BehindLimits {
                max_bytes: bytes,
                max_requests: requests.unwrap_or(old.max_requests),
            }));
        }
        (None, Some(now)) if requests.is_some() => {
            let mut l = limits(now);
            l.max_requests = requests.unwrap_or(l.max_requests);
            p.write_behind = Some(stored(l));
        }
        (None, None) if requests.is_some() => {
            return Err(DaemonError::Usage(
                "--write-behind-requests needs write-behind on (--write-behind SIZE)".to_string(),
            ))
        }
        _ => {}
    }
    Ok(p)
}

impl ArrayHandle {
    /// `vraid set` of the mirror policies: persisted on every member
    /// before use when turned on; write-behind paused and drained before
    /// the update when anything is turned off (FORMAT.md §6, cases 91-92).
    pub(super) async fn set_mirror(
        &self,
        role: Option<usize>,
        set: &MirrorSetParams,
    ) -> Result<MirrorReply, DaemonError> {
        let lock = self.member_set();
        let _serialized = lock.lock().await;
        let vol = self.volume();
        let meta = self.metadata();
        let old = meta.mirror_policy().await;
        let new = changed(old, role, set)?;
        let bitmap = meta.bitmap_valid().await;
        check(self.name(), &new, vol.geometry().level(), bitmap)?;
        let off = old.write_mostly & !new.write_mostly != 0
            || (old.write_behind.is_some() && new.write_behind.is_none());
        if off {
            vol.pause_write_behind().await;
        }
        if let Err(e) = meta.set_mirror_policy(new, true).await {
            if let Some(b) = old.write_behind.filter(|_| off) {
                vol.start_write_behind(limits(b));
            }
            return Err(e.into());
        }
        for r in 0..vol.geometry().members() {
            vol.set_write_mostly(MemberIndex(r), new.is_write_mostly(r));
        }
        if let Some(b) = new.write_behind {
            vol.start_write_behind(limits(b));
        }
        info!("{}: mirror policy now {:?}", self.name(), reply(&new));
        Ok(reply(&new))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(
        write_mostly: Option<bool>,
        behind: Option<u64>,
        requests: Option<u64>,
    ) -> MirrorSetParams {
        MirrorSetParams {
            volume: "vol0".into(),
            member: None,
            write_mostly,
            write_behind: behind,
            write_behind_requests: requests,
        }
    }

    #[test]
    fn a_change_sets_only_what_it_names() {
        // Arrange
        let none = MirrorPolicy::default();

        // Act
        let wm = changed(none, Some(1), &set(Some(true), None, None)).unwrap();
        let wb = changed(wm, None, &set(None, Some(4 << 20), None)).unwrap();
        let req = changed(wb, None, &set(None, None, Some(7))).unwrap();
        let off = changed(req, None, &set(None, Some(0), None)).unwrap();

        // Assert
        assert_eq!(wm.write_mostly, 0b10);
        assert_eq!(wb.write_behind, Some((4096, 256)));
        assert_eq!(req.write_behind, Some((4096, 7)));
        assert_eq!((off.write_mostly, off.write_behind), (0b10, None));
    }

    #[test]
    fn a_change_without_its_other_half_is_refused() {
        let none = MirrorPolicy::default();
        assert!(changed(none, None, &set(Some(true), None, None)).is_err());
        assert!(changed(none, Some(0), &set(None, None, None)).is_err());
        assert!(changed(none, None, &set(None, None, Some(3))).is_err());
        let p = MirrorPolicy {
            write_mostly: 0,
            write_behind: Some((8, 1)),
        };
        assert!(check("vol0", &p, Level::Raid1, true).is_err());
        let p = MirrorPolicy {
            write_mostly: 1,
            write_behind: Some((8, 1)),
        };
        assert!(check("vol0", &p, Level::Raid1, false).is_err());
        assert!(check("vol0", &p, Level::Raid5, true).is_err());
        assert!(check("vol0", &p, Level::Raid1, true).is_ok());
    }

    #[test]
    fn stored_bounds_round_up_to_whole_kib_and_back() {
        let l = BehindLimits {
            max_bytes: 1500,
            max_requests: 0,
        };
        assert_eq!(stored(l), (2, 1));
        assert_eq!(limits((2, 1)).max_bytes, 2048);
    }
}
