//! Which device a member is, and the claim vraid holds on it.
//!
//! ```text
//!  identity : DeviceId::Block { rdev }        (any node of one block device)
//!             DeviceId::File { dev, ino }     (any path, link or bind mount)
//!  claim    : block device ─► O_EXCL at open (the kernel refuses others: EBUSY)
//!             regular file ─► flock(LOCK_EX) on the member's descriptor
//!  probe    : in_use_elsewhere(path) ─► the same test, without claiming
//! ```
//!
//! "Held exclusively" for a regular file means an exclusive `flock` held
//! by another process: every vraid process takes one on each member it
//! opens for writing, and other programs can do the same (`flock(1)`).
//! A lock whose holder has exited (its io_uring teardown still holds the
//! file for a moment after a SIGKILL) is waited for, up to 10 s.
//! Claims of this process are counted in a registry, so opening a member
//! twice in one daemon (a failed member added back) is not "in use";
//! whether it is already part of an array is the array's question.

use std::collections::HashMap;
use std::fmt;
use std::fs::{File, Metadata, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::Path;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

/// How long a lock left by a process that has exited may take to go away
/// (its io_uring requests still hold the file until they are torn down).
const RELEASE_WAIT: Duration = Duration::from_secs(10);

/// A device by identity, never by path string.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum DeviceId {
    /// A block device: its device number.
    Block {
        /// `st_rdev`.
        rdev: u64,
    },
    /// A regular file: filesystem device and inode.
    File {
        /// `st_dev`.
        dev: u64,
        /// `st_ino`.
        ino: u64,
    },
    /// A remote member (an NBD export): a hash of its canonical URI.
    Remote {
        /// FNV-1a of the canonical URI.
        key: u64,
    },
}

impl DeviceId {
    /// The identity of what `meta` describes.
    pub fn of_metadata(meta: &Metadata) -> DeviceId {
        if meta.file_type().is_block_device() {
            DeviceId::Block { rdev: meta.rdev() }
        } else {
            DeviceId::File {
                dev: meta.dev(),
                ino: meta.ino(),
            }
        }
    }

    /// The identity of the file `path` names (symlinks followed).
    pub fn of_path(path: &Path) -> io::Result<DeviceId> {
        std::fs::metadata(path).map(|m| DeviceId::of_metadata(&m))
    }

    /// The identity of a remote member by its canonical URI.
    pub fn remote(canonical: &str) -> DeviceId {
        let key = canonical.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
        });
        DeviceId::Remote { key }
    }

    /// The identity of an open file.
    pub fn of_file(file: &File) -> io::Result<DeviceId> {
        file.metadata().map(|m| DeviceId::of_metadata(&m))
    }
}

impl fmt::Display for DeviceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            DeviceId::Block { rdev } => {
                write!(
                    f,
                    "block device {}:{}",
                    libc::major(rdev),
                    libc::minor(rdev)
                )
            }
            DeviceId::File { dev, ino } => write!(
                f,
                "inode {ino} on device {}:{}",
                libc::major(dev),
                libc::minor(dev)
            ),
            DeviceId::Remote { key } => write!(f, "remote export {key:016x}"),
        }
    }
}

/// Claims this process holds, by device.
fn held() -> &'static Mutex<HashMap<DeviceId, usize>> {
    static HELD: OnceLock<Mutex<HashMap<DeviceId, usize>>> = OnceLock::new();
    HELD.get_or_init(|| Mutex::new(HashMap::new()))
}

/// Whether this process holds a claim on `id`.
pub fn held_by_this_process(id: DeviceId) -> bool {
    held_here(id)
}

fn held_here(id: DeviceId) -> bool {
    held()
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .contains_key(&id)
}

/// This process's claim on one member; released when the member closes.
#[derive(Debug)]
pub struct Claim {
    id: DeviceId,
}

impl Claim {
    /// The claimed device.
    pub fn id(&self) -> DeviceId {
        self.id
    }
}

impl Drop for Claim {
    fn drop(&mut self) {
        let mut held = held().lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = held.get_mut(&self.id) {
            *n -= 1;
            if *n == 0 {
                held.remove(&self.id);
            }
        }
    }
}

/// Another process holds the device exclusively.
#[derive(Debug, thiserror::Error)]
#[error("held exclusively by another process")]
pub struct Busy;

/// Claims an opened member: a regular file gets an exclusive `flock` on
/// `file` (block devices were opened `O_EXCL`, which is their claim).
/// Fails only when another process holds the file.
pub fn claim(file: &File, id: DeviceId) -> Result<Claim, Busy> {
    if let DeviceId::File { dev, ino } = id {
        let deadline = Instant::now() + RELEASE_WAIT;
        loop {
            match flock(file, libc::LOCK_EX) {
                Err(e) if e.raw_os_error() == Some(libc::EWOULDBLOCK) => {
                    if held_here(id) {
                        break;
                    }
                    if holder_alive(dev, ino) || Instant::now() >= deadline {
                        return Err(Busy);
                    }
                    // The holder has exited; the kernel drops its lock once
                    // its last reference (io_uring teardown) is gone, with
                    // no notification to wait on.
                    std::thread::sleep(Duration::from_millis(20));
                }
                // Claimed, or a filesystem without flock: nothing to claim.
                _ => break,
            }
        }
        let elsewhere =
            loop_device_over(id).is_some() || active_swap(id) || byte_range_locked(file);
        if elsewhere && !held_here(id) {
            return Err(Busy);
        }
    }
    *held()
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .entry(id)
        .or_insert(0) += 1;
    Ok(Claim { id })
}

/// Whether another process holds `path` exclusively (a vraid serving it,
/// a `flock -x`, a mounted or md-claimed block device). Claims of this
/// process do not count.
pub fn in_use_elsewhere(path: &Path) -> io::Result<bool> {
    let meta = std::fs::metadata(path)?;
    let id = DeviceId::of_metadata(&meta);
    if held_here(id) {
        return Ok(false);
    }
    if meta.file_type().is_block_device() {
        return match OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_EXCL)
            .open(path)
        {
            Ok(_) => Ok(false),
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) => Ok(true),
            Err(e) => Err(e),
        };
    }
    if loop_device_over(id).is_some() || active_swap(id) {
        return Ok(true);
    }
    // An exclusive probe: a shared `flock -s` holder keeps vraid's claim
    // (LOCK_EX) off the file as surely as an exclusive one.
    let file = File::open(path)?;
    if byte_range_locked(&file) {
        return Ok(true);
    }
    match flock(&file, libc::LOCK_EX) {
        Ok(()) => Ok(false),
        Err(e) if e.raw_os_error() == Some(libc::EWOULDBLOCK) => Ok(true),
        Err(_) => Ok(false),
    }
}

/// The loop device whose backing file is `id` (the backing file's device
/// and inode as the loop driver reports them, `LOOP_GET_STATUS64`), if one
/// is attached: whatever is on it (a mount, md, a VM) writes the file
/// behind vraid's back. The backing file's path is never looked up: a
/// loop device over a file on a hung FUSE or network mount would block
/// the lookup, and with it every `add` and assembly.
pub fn loop_device_over(id: DeviceId) -> Option<String> {
    let DeviceId::File { dev, ino } = id else {
        return None;
    };
    std::fs::read_dir("/sys/block")
        .ok()?
        .filter_map(Result::ok)
        .filter(|entry| entry.path().join("loop").exists())
        .find_map(|entry| {
            if elsewhere_remote(&entry.path(), dev) {
                return None;
            }
            let node = format!("/dev/{}", entry.file_name().to_string_lossy());
            (loop_backing(Path::new(&node))? == (dev, ino)).then_some(node)
        })
}

/// File systems whose `getattr` may wait on a process or a server (FUSE,
/// network): `LOOP_GET_STATUS64` asks the backing file's one, so a held
/// one blocks it (a SIGSTOPped nbdfuse did, for ever).
const REMOTE_FS: [&str; 9] = [
    "fuse", "fuseblk", "nfs", "nfs4", "cifs", "smb3", "9p", "ceph", "afs",
];

/// Whether loop device `sys` (its /sys/block directory) is backed by a
/// file on a FUSE or network file system other than device `dev` (so
/// not over a member there), found from strings alone: the backing
/// file's path as sysfs prints it and the mount table, no file system
/// asked. Those file systems give every file the mount's device number.
fn elsewhere_remote(sys: &Path, dev: u64) -> bool {
    let Ok(backing) = std::fs::read_to_string(sys.join("loop/backing_file")) else {
        return false;
    };
    let Ok(table) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return false;
    };
    mount_of(&table, backing.trim_end_matches('\n')).is_some_and(|(mdev, fs)| {
        mdev != dev && REMOTE_FS.contains(&fs.split('.').next().unwrap_or(""))
    })
}

/// The (device, file system type) of the mount in `mountinfo` holding
/// `path`: the longest mount point that is a prefix of it.
fn mount_of<'a>(mountinfo: &'a str, path: &str) -> Option<(u64, &'a str)> {
    let unescape = |s: &str| {
        s.replace("\\040", " ")
            .replace("\\011", "\t")
            .replace("\\012", "\n")
            .replace("\\134", "\\")
    };
    let under = |mp: &str| {
        mp == "/" || path == mp || path.strip_prefix(mp).is_some_and(|r| r.starts_with('/'))
    };
    mountinfo
        .lines()
        .filter_map(|line| {
            let f: Vec<&str> = line.split(' ').collect();
            let sep = f.iter().position(|x| *x == "-")?;
            let (major, minor) = f.get(2)?.split_once(':')?;
            let mp = unescape(f.get(4)?);
            let dev = libc::makedev(major.parse().ok()?, minor.parse().ok()?);
            under(&mp).then_some((mp.len(), dev, *f.get(sep + 1)?))
        })
        .max_by_key(|m| m.0)
        .map(|(_, dev, fs)| (dev, fs))
}

/// `struct loop_info64` of `<linux/loop.h>`, the fields read here first.
#[repr(C)]
struct LoopInfo64 {
    device: u64,
    inode: u64,
    rest: [u8; 216],
}

/// The backing file's (device, inode) of loop device `node`, or None
/// when it cannot be opened or has no backing file (ENXIO).
fn loop_backing(node: &Path) -> Option<(u64, u64)> {
    const LOOP_GET_STATUS64: libc::c_ulong = 0x4C05;
    let file = std::fs::File::open(node).ok()?;
    let mut info = LoopInfo64 {
        device: 0,
        inode: 0,
        rest: [0; 216],
    };
    // SAFETY: `file` is an open descriptor; LOOP_GET_STATUS64 writes one
    // `struct loop_info64` (232 bytes, the size of `LoopInfo64`) into
    // `info`, which lives across the call.
    let rc = unsafe {
        libc::ioctl(
            std::os::fd::AsRawFd::as_raw_fd(&file),
            LOOP_GET_STATUS64 as _,
            &mut info as *mut LoopInfo64,
        )
    };
    (rc == 0).then_some((info.device, info.inode))
}

/// Whether `id` is an active swap file (`/proc/swaps`, by identity): the
/// kernel refuses writes to it (ETXTBSY), so it can never be a member.
pub fn active_swap(id: DeviceId) -> bool {
    let Ok(swaps) = std::fs::read_to_string("/proc/swaps") else {
        return false;
    };
    swaps.lines().skip(1).any(|line| {
        // The name is the first field, with spaces written as "\040".
        let name = line.split_whitespace().next().unwrap_or("");
        let name = name.replace("\\040", " ");
        DeviceId::of_path(Path::new(&name)).is_ok_and(|other| other == id)
    })
}

/// Whether another process (or open file) holds a POSIX or OFD byte-range
/// lock anywhere in `file`: qemu locks the images it runs a VM on this way
/// (bytes 100 and up), databases their files. vraid takes none.
fn byte_range_locked(file: &File) -> bool {
    // SAFETY: an all-zero `flock` is a valid value of the plain C struct.
    let mut fl: libc::flock = unsafe { std::mem::zeroed() };
    fl.l_type = libc::F_WRLCK as libc::c_short;
    fl.l_whence = libc::SEEK_SET as libc::c_short;
    // SAFETY: `fl` is valid for reads and writes for the call; `file` owns
    // the descriptor.
    let rc = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_OFD_GETLK, &mut fl) };
    rc == 0 && fl.l_type != libc::F_UNLCK as libc::c_short
}

/// Whether a live process holds a `flock` on file `dev`/`ino`, per
/// `/proc/locks` ("1: FLOCK  ADVISORY  WRITE PID MAJ:MIN:INODE 0 EOF").
/// True when it cannot tell.
fn holder_alive(dev: u64, ino: u64) -> bool {
    let Ok(locks) = std::fs::read_to_string("/proc/locks") else {
        return true;
    };
    let file = format!("{:02x}:{:02x}:{ino}", libc::major(dev), libc::minor(dev));
    locks
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .filter(|t| t.get(1) == Some(&"FLOCK") && t.get(5) == Some(&file.as_str()))
        .any(
            |t| match t.get(4).and_then(|p| p.parse::<libc::pid_t>().ok()) {
                Some(pid) if pid > 0 => alive(pid),
                _ => true,
            },
        )
}

/// Whether process `pid` exists and is not on its way out (see
/// [`exiting`]). True when it cannot tell.
pub fn alive(pid: libc::pid_t) -> bool {
    // SAFETY: signal 0 only checks that `pid` exists; no memory is touched.
    let rc = unsafe { libc::kill(pid, 0) };
    let exists = rc == 0 || io::Error::last_os_error().raw_os_error() != Some(libc::ESRCH);
    exists && !exiting(pid)
}

/// Whether `pid` is exiting: a zombie, or `PF_EXITING` set in its flags
/// (`/proc/PID/stat` field 9). A SIGKILLed process stays in `do_exit`
/// while its io_uring requests are cancelled, with its descriptors (locks,
/// listening sockets) still open, though it will never serve again.
fn exiting(pid: libc::pid_t) -> bool {
    const PF_EXITING: u64 = 0x4;
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    // The command name may hold spaces and parentheses: fields follow the last ')'.
    let Some((_, rest)) = stat.rsplit_once(')') else {
        return false;
    };
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let zombie = matches!(fields.first(), Some(&("Z" | "X" | "x")));
    let flags = fields.get(6).and_then(|f| f.parse::<u64>().ok());
    zombie || flags.is_some_and(|f| f & PF_EXITING != 0) || sigkill_pending(pid)
}

/// Whether SIGKILL is pending for `pid` (`ShdPnd` in `/proc/PID/status`):
/// delivered to a thread in uninterruptible sleep (an O_DIRECT write),
/// before `PF_EXITING` is set; it cannot be blocked or ignored.
fn sigkill_pending(pid: libc::pid_t) -> bool {
    let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) else {
        return false;
    };
    status
        .lines()
        .find_map(|l| l.strip_prefix("ShdPnd:"))
        .and_then(|mask| u64::from_str_radix(mask.trim(), 16).ok())
        .is_some_and(|mask| mask & (1 << (libc::SIGKILL - 1)) != 0)
}

/// `flock(fd, op | LOCK_NB)`; a shared probe lock is dropped with `file`.
fn flock(file: &File, op: libc::c_int) -> io::Result<()> {
    // SAFETY: `file` owns a valid descriptor for the duration of the call;
    // flock has no memory effects.
    let rc = unsafe { libc::flock(file.as_raw_fd(), op | libc::LOCK_NB) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch() -> (tempfile::TempDir, std::path::PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.img");
        std::fs::write(&path, [0u8; 4096]).unwrap();
        (dir, path)
    }

    #[test]
    fn a_loop_device_over_a_file_is_found_by_the_drivers_device_and_inode() {
        // Arrange: a loop device over the file, then the file renamed
        // (found by the identity the driver reports, not by a name).
        let (dir, path) = scratch();
        let out = std::process::Command::new("losetup")
            .args(["-f", "--show"])
            .arg(&path)
            .output()
            .expect("losetup (util-linux) runs");
        assert!(out.status.success(), "losetup: {out:?}");
        let dev = String::from_utf8(out.stdout).unwrap().trim().to_string();
        let moved = dir.path().join("moved.img");
        std::fs::rename(&path, &moved).unwrap();
        let id = DeviceId::of_path(&moved).unwrap();

        // Act
        let found = loop_device_over(id);
        let other = loop_device_over(DeviceId::File { dev: 0, ino: 1 });
        let _ = std::process::Command::new("losetup")
            .args(["-d", &dev])
            .status();

        // Assert
        assert_eq!(found.as_deref(), Some(dev.as_str()));
        assert_eq!(other, None);
    }

    #[test]
    fn the_mount_of_a_loop_backing_path_is_found_from_the_mount_table_alone() {
        let table = "22 1 254:0 / / rw,relatime - ext4 /dev/vda rw\n\
            47 22 0:40 / /var/tmp/a\\040b rw - fuse /dev/fuse rw\n\
            48 22 0:41 / /var/tmp/a rw - fuse.sshfs host: rw\n";
        let fuse = libc::makedev(0, 40);
        assert_eq!(mount_of(table, "/var/tmp/a b/nbd"), Some((fuse, "fuse")));
        let sshfs = libc::makedev(0, 41);
        assert_eq!(mount_of(table, "/var/tmp/a/x"), Some((sshfs, "fuse.sshfs")));
        let root = libc::makedev(254, 0);
        assert_eq!(mount_of(table, "/var/tmp/ab/x"), Some((root, "ext4")));
        assert_eq!(mount_of(table, "/var/tmp/a"), Some((sshfs, "fuse.sshfs")));
    }

    fn open_rw(path: &Path) -> File {
        OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .unwrap()
    }

    #[test]
    fn one_process_may_claim_a_file_twice_and_names_it_the_same() {
        let (dir, path) = scratch();
        std::os::unix::fs::symlink(&path, dir.path().join("link")).unwrap();
        let (a, b) = (open_rw(&path), open_rw(&dir.path().join("link")));
        let id = DeviceId::of_file(&a).unwrap();
        assert_eq!(DeviceId::of_file(&b).unwrap(), id);

        let first = claim(&a, id).unwrap();
        let second = claim(&b, id).unwrap();

        assert!(!in_use_elsewhere(&path).unwrap());
        drop((first, second));
        assert!(!held_here(id));
    }

    #[test]
    fn a_shared_flock_holder_makes_the_file_in_use() {
        let (_dir, path) = scratch();
        let mut child = std::process::Command::new("flock")
            .args(["-s", "--no-fork"])
            .arg(&path)
            .args(["sleep", "30"])
            .spawn()
            .unwrap();
        // Poll /proc/locks until flock(1) holds its lock.
        let id = DeviceId::of_path(&path).unwrap();
        let DeviceId::File { dev, ino } = id else {
            unreachable!()
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while !holder_alive(dev, ino) || !lock_listed(dev, ino) {
            assert!(Instant::now() < deadline, "flock(1) never took the lock");
            std::thread::sleep(Duration::from_millis(10));
        }

        let busy = in_use_elsewhere(&path).unwrap();

        let _ = child.kill();
        let _ = child.wait();
        assert!(busy, "a `flock -s` holder was not seen");
    }

    fn lock_listed(dev: u64, ino: u64) -> bool {
        let file = format!("{:02x}:{:02x}:{ino}", libc::major(dev), libc::minor(dev));
        std::fs::read_to_string("/proc/locks")
            .unwrap()
            .lines()
            .any(|l| l.contains(&file))
    }

    #[test]
    fn a_zombie_is_not_alive() {
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id() as libc::pid_t;
        let deadline = Instant::now() + Duration::from_secs(10);
        // Not reaped: it stays a zombie until `wait`.
        while alive(pid) {
            assert!(Instant::now() < deadline, "`true` never exited");
            std::thread::sleep(Duration::from_millis(10));
        }
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
        child.wait().unwrap();
        assert!(stat.contains(") Z"), "{stat}");
    }

    #[test]
    fn a_file_locked_by_a_live_process_is_busy_at_once() {
        let (_dir, path) = scratch();
        let mut child = std::process::Command::new("flock")
            .args(["-x", "--no-fork"])
            .arg(&path)
            .args(["sleep", "30"])
            .spawn()
            .unwrap();
        let file = open_rw(&path);
        let id = DeviceId::of_file(&file).unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while !in_use_elsewhere(&path).unwrap() {
            assert!(Instant::now() < deadline, "flock(1) never took the lock");
            std::thread::sleep(Duration::from_millis(10));
        }

        let started = Instant::now();
        let claimed = claim(&file, id);

        let _ = child.kill();
        let _ = child.wait();
        assert!(claimed.is_err());
        assert!(
            started.elapsed() < RELEASE_WAIT / 2,
            "waited for a live holder"
        );
    }
}
