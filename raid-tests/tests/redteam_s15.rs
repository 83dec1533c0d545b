//! Red team of session 14's changes (tmpfs members on the `inline` engine,
//! `vraid fail` of a replace's new member, retired checksum stores, writes
//! widened into holes, split-cluster pools, the NBD RequestSet), tried as a
//! careless user and a hostile client would. Each test is a break found.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use raid_tests::fuse_loop::FuseLoop;
use raid_tests::nbd_raw::wait_until;
use raid_tests::*;

// ---- A block-device member under engine `auto`

/// A block device whose I/O can be held: nbdkit's file plugin behind its
/// log filter (each request is logged as it arrives) and its pause filter,
/// mounted by nbdfuse, with a loop device on the file.
struct HeldDisk {
    nbdkit: Child,
    pause: PathBuf,
    log: PathBuf,
    // Dropped before `nbdkit` is killed (fields drop in order).
    fuse: Option<FuseLoop>,
}

impl HeldDisk {
    fn new(dir: &Path, size: u64) -> HeldDisk {
        let backing = dir.join("held.img");
        std::fs::File::create(&backing)
            .unwrap()
            .set_len(size)
            .unwrap();
        let (sock, pause, log) = (
            dir.join("held.sock"),
            dir.join("held.pause"),
            dir.join("held.log"),
        );
        let nbdkit = Command::new("nbdkit")
            .args(["-f", "--exit-with-parent", "-U"])
            .arg(&sock)
            .args(["--filter=log", "--filter=pause", "file"])
            .arg(&backing)
            .arg(format!("logfile={}", log.display()))
            .arg(format!("pause-control={}", pause.display()))
            .stdin(Stdio::null())
            .spawn()
            .expect("spawn nbdkit (package nbdkit)");
        wait_until("nbdkit's socket", Duration::from_secs(20), || sock.exists());
        let uri = format!("nbd+unix:///?socket={}", sock.display());
        let fuse = FuseLoop::attach(&uri, &dir.join("held.mnt"));
        HeldDisk {
            nbdkit,
            pause,
            log,
            fuse: Some(fuse),
        }
    }

    fn dev(&self) -> &str {
        self.fuse.as_ref().unwrap().dev()
    }

    /// Sends `cmd` to the pause filter and waits for its echo.
    fn control(&self, cmd: u8) {
        let mut s = UnixStream::connect(&self.pause).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        s.write_all(&[cmd]).unwrap();
        let mut echo = [0u8];
        s.read_exact(&mut echo).unwrap();
        assert_eq!(echo[0], cmd.to_ascii_uppercase());
    }

    /// Holds the disk until the guard drops: a test that panics while the
    /// disk is held resumes it before its server is stopped (a held member
    /// blocks the server's clean stop).
    fn hold(&self) -> Held<'_> {
        self.control(b'p');
        Held(self)
    }

    /// WRITE requests that reached nbdkit (held ones included).
    fn writes_seen(&self) -> usize {
        self.seen(" Write ")
    }

    /// READ requests that reached nbdkit (held ones included).
    fn reads_seen(&self) -> usize {
        self.seen(" Read ")
    }

    fn seen(&self, what: &str) -> usize {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains(what) && !l.contains("return"))
            .count()
    }

    /// The export's file under the nbdfuse mount (a regular file on FUSE).
    fn fuse_file(dir: &Path) -> PathBuf {
        dir.join("held.mnt").join("nbd")
    }

    /// Drops the page cache of the FUSE file, so reads reach nbdkit.
    fn drop_cache(dir: &Path) {
        let file = Self::fuse_file(dir);
        run_ok(Command::new("dd").args([
            "if=/dev/null".to_string(),
            format!("of={}", file.display()),
            "oflag=nocache".to_string(),
            "conv=notrunc,fdatasync".to_string(),
            "count=0".to_string(),
        ]));
    }
}

/// The disk held by [`HeldDisk::hold`]; resumed on drop.
struct Held<'a>(&'a HeldDisk);

impl Drop for Held<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let _ = UnixStream::connect(&self.0.pause).map(|mut s| s.write_all(b"r"));
        } else {
            self.0.control(b'r');
        }
    }
}

impl Drop for HeldDisk {
    fn drop(&mut self) {
        let _ = UnixStream::connect(&self.pause).map(|mut s| s.write_all(b"r"));
        drop(self.fuse.take());
        let _ = self.nbdkit.kill();
        let _ = self.nbdkit.wait();
    }
}

/// True if `vraid status` answers within `limit`.
fn status_answers_within(control: &Path, limit: Duration) -> bool {
    let mut status = vraid(&["status", "--control", control.to_str().unwrap()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if let Some(exit) = status.try_wait().unwrap() {
            return exit.success();
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = status.kill();
    let _ = status.wait();
    false
}

/// A break found here: engine `auto` put every member named by a device
/// node (`/dev/sdb`, `/dev/loop0`, `/dev/nvme0n1`) on the `inline`
/// engine meant for tmpfs members, since `statfs` of a node under /dev
/// reports devtmpfs, whose magic is tmpfs's. Its requests of up to 64 KiB
/// then ran as plain `pwrite`/`pread` on the runtime's worker threads: a
/// disk that stops answering for a while stopped the whole daemon with
/// it — the control socket, every other volume and every timeout (here
/// `vraid status` waited as long as the disk was held). A block device
/// now runs on the ring.
#[test]
fn a_held_write_to_a_block_device_member_leaves_the_daemon_answering() {
    // Arrange: RAID-1 of a holdable block device and a file.
    let dir = scratch_dir("rt15-blockdev-engine");
    let disk = HeldDisk::new(dir.path(), 64 << 20);
    let file = dir.path().join("m1.img");
    std::fs::File::create(&file)
        .unwrap()
        .set_len(64 << 20)
        .unwrap();
    let members = [PathBuf::from(disk.dev()), file.clone()];
    create_array(1, "64K", "60M", "vol0", &members);
    let ctl = dir.path().join("ctl.sock");
    let server = Server::start(&[
        "--control",
        ctl.to_str().unwrap(),
        disk.dev(),
        file.to_str().unwrap(),
    ]);
    let uri = server.uri("vol0");
    qemu_io(&uri, &["write -P 1 0 1M".to_string()]);

    // Act: hold the disk; 64 KiB writes from four clients reach it.
    disk.control(b'p');
    let seen = disk.writes_seen();
    let writers: Vec<Child> = (1..=4)
        .map(|k| {
            qemu_io_command(&uri, &[format!("write -P 2 {} 64K", k << 16)])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap()
        })
        .collect();
    wait_until("a write held at the disk", Duration::from_secs(30), || {
        disk.writes_seen() > seen
    });
    let answered = status_answers_within(&ctl, Duration::from_secs(5));
    disk.control(b'r');
    let finished: Vec<bool> = writers
        .into_iter()
        .map(|mut w| w.wait().unwrap().success())
        .collect();

    // Assert
    assert!(
        answered,
        "vraid status did not answer while a member write was held\n{}",
        server.log()
    );
    assert_eq!(finished, [true; 4]);
    qemu_io(&uri, &["read -P 2 64K 256K".to_string()]);
    assert_eq!(server.stop(), 0);
}

/// True if `child` exits successfully within `limit`; killed otherwise.
fn finishes_within(mut child: Child, limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if let Some(exit) = child.try_wait().unwrap() {
            return exit.success();
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
    false
}

/// A server of `vol0` (RAID-0, 64 KiB chunks) over `held` (plus a plain
/// file when there is one held member) and `vol1` (RAID-1 of two plain
/// files), `vol0`'s first 20 MiB written with byte 1; and its control
/// socket.
fn two_volumes(dir: &Path, held: &[PathBuf]) -> (Server, PathBuf) {
    let plain = |name: &str| {
        let path = dir.join(name);
        std::fs::File::create(&path)
            .unwrap()
            .set_len(64 << 20)
            .unwrap();
        path
    };
    let mut vol0 = held.to_vec();
    if vol0.len() == 1 {
        vol0.push(plain("plain0.img"));
    }
    let vol1 = vec![plain("other0.img"), plain("other1.img")];
    create_array(0, "64K", "60M", "vol0", &vol0);
    create_array(1, "64K", "60M", "vol1", &vol1);
    let list = |m: &[PathBuf]| {
        let quoted: Vec<String> = m
            .iter()
            .map(|p| format!("{:?}", p.display().to_string()))
            .collect();
        quoted.join(", ")
    };
    let config = dir.join("vraid.toml");
    let text = format!(
        "[[volume]]\nname = \"vol0\"\nlevel = 0\nchunk_size = \"64K\"\nmembers = [{}]\n\n\
         [[volume]]\nname = \"vol1\"\nlevel = 1\nchunk_size = \"64K\"\nmembers = [{}]\n",
        list(&vol0),
        list(&vol1)
    );
    std::fs::write(&config, text).unwrap();
    let ctl = dir.join("ctl.sock");
    let server = Server::start(&[
        "--config",
        config.to_str().unwrap(),
        "--control",
        ctl.to_str().unwrap(),
    ]);
    qemu_io(
        &server.uri("vol0"),
        &["write -P 1 0 20M".to_string(), "flush".into()],
    );
    qemu_io(
        &server.uri("vol1"),
        &["write -P 2 0 1M".to_string(), "flush".into()],
    );
    (server, ctl)
}

/// With [`two_volumes`] over `held`: 4 KiB reads of `vol0` from four
/// clients, 4 MiB apart (member 0, even chunks), are held at the disk.
/// The control socket and `vol1` must answer meanwhile; the disk is
/// resumed before the server stops (a held member blocks a clean stop).
fn held_reads_leave_the_daemon_answering(dir: &Path, disk: &HeldDisk, held: &[PathBuf]) {
    // Arrange
    let (server, ctl) = two_volumes(dir, held);
    let (uri0, uri1) = (server.uri("vol0"), server.uri("vol1"));
    HeldDisk::drop_cache(dir);
    let seen = disk.reads_seen();

    // Act
    let hold = disk.hold();
    let clients: Vec<Child> = (1..=4)
        .map(|k| {
            qemu_io_command(&uri0, &[format!("read -P 1 {} 4K", k << 22)])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap()
        })
        .collect();
    wait_until(
        "a request held at the disk",
        Duration::from_secs(30),
        || disk.reads_seen() > seen,
    );
    let answered = status_answers_within(&ctl, Duration::from_secs(5));
    let other = qemu_io_command(&uri1, &["read -P 2 0 64K"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let other_answered = finishes_within(other, Duration::from_secs(5));
    drop(hold);
    let finished: Vec<bool> = clients
        .into_iter()
        .map(|mut c| c.wait().unwrap().success())
        .collect();

    // Assert
    assert!(
        answered,
        "vraid status did not answer while member requests were held\n{}",
        server.log()
    );
    assert!(
        other_answered,
        "another volume did not answer while member requests were held"
    );
    assert_eq!(finished, [true; 4]);
    assert_eq!(server.stop(), 0);
}

/// A break found here (session 16, on the lone-request path of s15-disk
/// 459ba8d): a member request of at most 64 KiB begun while the io_uring
/// engine was idle ran as a plain `preadv` on the runtime worker. A member
/// file on FUSE (here nbdfuse) whose server holds a read held that worker;
/// the next client's read did the same on the other one, and the control
/// socket and every other volume stopped answering. Only regular files on
/// a local disk file system run a request inline now.
#[test]
fn held_reads_of_a_member_file_on_fuse_leave_the_daemon_answering() {
    let dir = scratch_dir("rt16-held-fuse-file");
    let disk = HeldDisk::new(dir.path(), 64 << 20);
    // The file itself is the member: no loop device over it (a member
    // under a loop device is refused as in use).
    run_ok(Command::new("losetup").args(["-d", disk.dev()]));
    let held = HeldDisk::fuse_file(dir.path());
    held_reads_leave_the_daemon_answering(dir.path(), &disk, &[held]);
}

/// A RAID-5 of three members written with byte `pattern` (100 MiB), a
/// replace of member 0 onto `new.img` running at 1 MB/s.
struct SlowReplace {
    dir: tempfile::TempDir,
    paths: Vec<PathBuf>,
    ctl: PathBuf,
    server: Server,
    uri: String,
    new: PathBuf,
}

impl SlowReplace {
    fn start(name: &str, pattern: u8) -> Self {
        let dir = scratch_dir(name);
        let paths = sparse_members(dir.path(), 3, 64 << 20);
        create_array(5, "64K", "64M", "vol0", &paths);
        let ctl = dir.path().join("ctl.sock");
        let mut args = vec!["--control", ctl.to_str().unwrap()];
        args.extend(paths.iter().map(|p| p.to_str().unwrap()));
        let server = Server::start(&args);
        let uri = server.uri("vol0");
        qemu_io(
            &uri,
            &[format!("write -P {pattern} 0 100M"), "flush".into()],
        );
        let new = dir.path().join("new.img");
        std::fs::File::create(&new)
            .unwrap()
            .set_len(64 << 20)
            .unwrap();
        vraid_ctl_ok(&ctl, &["set", "vol0", "--rebuild-max-mbps", "1"]);
        let (old, new_s) = (paths[0].to_str().unwrap(), new.to_str().unwrap());
        vraid_ctl_ok(&ctl, &["replace", "vol0", old, new_s]);
        Self {
            dir,
            paths,
            ctl,
            server,
            uri,
            new,
        }
    }
}

// ---- `vraid fail NEW` of a replace whose old member failed meanwhile

/// A break found here: the old member of a replace fails (an I/O error, or
/// `vraid fail VOL ROLE`); the copy goes on as a rebuild onto the new
/// member. The operator then stops it with `vraid fail VOL NEW` and was
/// told "the old member keeps serving" — the role had no member left and
/// the array no redundancy. The reply now says what the role is.
#[test]
fn stopping_a_replace_whose_old_member_failed_does_not_say_it_keeps_serving() {
    // Arrange: a RAID-5 written, a slow replace of member 0 running.
    let SlowReplace {
        dir: _dir,
        ctl,
        server,
        uri,
        new,
        ..
    } = SlowReplace::start("rt15-replace-old-failed", 5);
    let new_s = new.to_str().unwrap();

    // Act: the old member fails, then the operator stops the replace.
    vraid_ctl_ok(&ctl, &["fail", "vol0", "0"]);
    let stopped = vraid_ctl_ok(&ctl, &["fail", "vol0", new_s]);

    // Assert: the reply does not claim the old member serves; it is down.
    let v = volume_status(&ctl, "vol0");
    assert_eq!(member_states(&v)[0], "failed", "{v}");
    assert!(
        !stopped.contains("keeps serving") && stopped.contains("failed"),
        "{stopped}"
    );
    qemu_io(&uri, &["read -P 5 0 100M".to_string()]);
    assert_eq!(server.stop(), 0);
}

// ---- Members named through a hard link (or a bind mount)

/// A break found here: `vraid add` and `replace` know a hard link (or a
/// bind-mounted path) of a member for the same file, but `vraid fail`
/// named the member only by its path string or symlinks: `vraid fail VOL
/// LINK` of the new member of a replace, or of an active member, was
/// refused ("has no member"), the replace going on. Paths now also match
/// by device identity (st_dev and st_ino, a block device's st_rdev).
#[test]
fn fail_through_a_hard_link_stops_a_replace_and_fails_a_member() {
    // Arrange: a RAID-5 written, a slow replace of member 0 running.
    let SlowReplace {
        dir,
        paths,
        ctl,
        server,
        uri,
        new,
    } = SlowReplace::start("rt15-fail-hard-link", 6);
    let (new_link, m2_link) = (dir.path().join("new-link"), dir.path().join("m2-link"));
    std::fs::hard_link(&new, &new_link).unwrap();
    std::fs::hard_link(&paths[2], &m2_link).unwrap();
    let old = paths[0].to_str().unwrap();

    // Act
    let stop = vraid_ctl(&ctl, &["fail", "vol0", new_link.to_str().unwrap()]);
    let after_stop = volume_status(&ctl, "vol0");
    let fail = vraid_ctl(&ctl, &["fail", "vol0", m2_link.to_str().unwrap()]);
    let after_fail = volume_status(&ctl, "vol0");

    // Assert
    let text = |o: &std::process::Output| {
        String::from_utf8_lossy(&o.stdout).to_string() + &String::from_utf8_lossy(&o.stderr)
    };
    assert!(stop.status.success(), "{}", text(&stop));
    assert!(after_stop["replace"].is_null(), "{after_stop}");
    assert_eq!(after_stop["members"][0]["path"], old, "{after_stop}");
    assert!(fail.status.success(), "{}", text(&fail));
    assert_eq!(member_states(&after_fail), ["active", "active", "failed"]);
    qemu_io(&uri, &["read -P 6 0 100M".to_string()]);
    assert_eq!(server.stop(), 0);
}
