//! An nbdfuse mount of an NBD export and a loop device on its file (this
//! kernel has no nbd module): a real block device for mkfs and mount.
//! Torn down on drop (unmounting `MOUNTPOINT.fs` if a test mounted there).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::{run_ok, stop_nbdfuse};

/// nbdfuse + losetup over one export.
#[derive(Debug)]
pub struct FuseLoop {
    mountpoint: PathBuf,
    nbdfuse: Child,
    dev: String,
}

impl FuseLoop {
    /// Mounts `uri` with nbdfuse at `mountpoint` and attaches a loop
    /// device to its file.
    pub fn attach(uri: &str, mountpoint: &Path) -> FuseLoop {
        Self::attach_with(uri, mountpoint, &[])
    }

    /// As `attach`, with the kernel's attribute cache off (`attr_timeout=0`):
    /// every getattr of the file goes to nbdfuse, so a stopped nbdfuse
    /// blocks it at once, not after the cached attributes expire.
    pub fn attach_uncached(uri: &str, mountpoint: &Path) -> FuseLoop {
        Self::attach_with(uri, mountpoint, &["-o", "attr_timeout=0"])
    }

    fn attach_with(uri: &str, mountpoint: &Path, opts: &[&str]) -> FuseLoop {
        std::fs::create_dir_all(mountpoint).unwrap();
        let pidfile = mountpoint.with_extension("pid");
        let _ = std::fs::remove_file(&pidfile);
        let nbdfuse = Command::new("nbdfuse")
            .arg("-P")
            .arg(&pidfile)
            .args(opts)
            .arg(mountpoint)
            .arg(uri)
            .stdin(Stdio::null())
            .spawn()
            .expect("spawn nbdfuse (package libnbd-bin)");
        let deadline = Instant::now() + Duration::from_secs(20);
        while !pidfile.exists() || !mountpoint.join("nbd").exists() {
            assert!(Instant::now() < deadline, "nbdfuse did not come up");
            std::thread::sleep(Duration::from_millis(50));
        }
        let dev = run_ok(
            Command::new("losetup")
                .args(["--find", "--show", "--direct-io=off"])
                .arg(mountpoint.join("nbd")),
        )
        .trim()
        .to_string();
        FuseLoop {
            mountpoint: mountpoint.to_path_buf(),
            nbdfuse,
            dev,
        }
    }

    /// The loop device.
    pub fn dev(&self) -> &str {
        &self.dev
    }

    /// Unmounts the file system at [`FuseLoop::fs_dir`], trying again for
    /// up to 10 s while umount says the target is busy (a transient hold,
    /// seen once with other test binaries running beside this one).
    pub fn umount_fs(&self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let out = Command::new("umount")
                .arg(self.fs_dir())
                .output()
                .expect("run umount");
            if out.status.success() {
                return;
            }
            let err = String::from_utf8_lossy(&out.stderr);
            assert!(
                err.contains("busy") && Instant::now() < deadline,
                "umount {}: {err}",
                self.fs_dir().display()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Where a test mounts the file system: `MOUNTPOINT.fs`.
    pub fn fs_dir(&self) -> PathBuf {
        self.mountpoint.with_extension("fs")
    }
}

impl Drop for FuseLoop {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.fs_dir()).status();
        let _ = Command::new("losetup").arg("-d").arg(&self.dev).status();
        stop_nbdfuse(&self.mountpoint, &mut self.nbdfuse);
    }
}
