//! Real guests on vhost-user-blk: QEMU under TCG boots a Debian 6.1 kernel
//! with a busybox initramfs (`raid-tests/guest/`), attaches a volume through
//! `vhost-user-blk-pci`, and the guest writes and reads patterns with O_DIRECT,
//! makes ext4, writes files and verifies them after a remount. The host then
//! reads the same volume over NBD and checks the pattern bytes, runs
//! `e2fsck -fn` and compares every file's md5 with what the guest printed.
//!
//! ```text
//!  build.sh ──> vmlinuz + initramfs ──> qemu-system-x86_64 (TCG, 2 vCPUs)
//!                                              │ vhost-user-blk, 2 queues
//!  vraid serve --vhost-user-blk SOCK --nbd ADDR ┤
//!                                              │ NBD
//!  host checks: nbdcopy -> patterns, e2fsck, debugfs dump + md5sum
//! ```
//!
//! vraid runs RAID-5 of four members, optimal (booted twice: the second boot,
//! a new frontend on the same server, only reads back what the first wrote)
//! and degraded (a member file deleted before `serve`). The
//! qemu-storage-daemon variant runs the same guest against a plain raw file
//! and flips bytes to show the host checks catch them: it proves the guest
//! and the checks, so a failure of the vraid variants points at vraid.
//!
//! Pools: two thin volumes of one RAID-5 pool, declared in the config with
//! a vhost-user-blk socket each, attached to one guest (`pool-test.sh`):
//! each formatted, mounted and filled at once; after the daemon's clean
//! stop and a restart the host reads both over NBD, runs e2fsck and
//! compares every file with the guest's md5.
//!
//! Stall: a volume `stall` rule holds one guest write (`stall-test.sh`);
//! the guest's hung-task detector reports the writer blocked, then the
//! rule is cleared and the write completes with the right bytes.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use raid_tests::*;

/// Bytes the ext4 filesystem covers at the start of the disk; the raw
/// patterns live after it.
const FS_MIB: u64 = 64;
/// Boots take ~10-30 s on TCG; leave room for a loaded 2-core machine.
const BOOT_TIMEOUT: Duration = Duration::from_secs(300);
const MARK_PASS: &str = "VRAID-GUEST-PASS";
const MARK_FAIL: &str = "VRAID-GUEST-FAIL";

/// Kernel and initramfs built once per test binary by `guest/build.sh`.
struct GuestImage {
    kernel: PathBuf,
    initrd: PathBuf,
}

fn guest_image() -> &'static GuestImage {
    static IMAGE: OnceLock<GuestImage> = OnceLock::new();
    IMAGE.get_or_init(|| {
        let root = workspace_root();
        let cache = root.join("target").join("guest-cache");
        run_ok(
            Command::new("bash")
                .arg(root.join("raid-tests/guest/build.sh"))
                .arg(&cache),
        );
        GuestImage {
            kernel: cache.join("vmlinuz"),
            initrd: cache.join("initramfs.cpio.gz"),
        }
    })
}

/// What a boot of the guest does (`VRAID_MODE` in guest-test.sh).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum GuestMode {
    /// Write patterns, make ext4, write files, verify them.
    Write,
    /// Only read back what an earlier `Write` boot left on the volume.
    Verify,
}

/// What the guest is told on its command line and what the host checks.
#[derive(Debug)]
struct GuestPlan {
    mode: GuestMode,
    size: u64,
    queues: u32,
    /// Expected (minimum_io_size, optimal_io_size), when the export sets them.
    topology: Option<(u64, u64)>,
    /// (offset, length) byte ranges written with O_DIRECT, past the filesystem.
    patterns: Vec<(u64, u64)>,
}

impl GuestPlan {
    /// Patterns that start off chunk and stripe boundaries and cross several
    /// of them, the last one ending 64 KiB before the end of the disk.
    fn for_size(size: u64, queues: u32, topology: Option<(u64, u64)>) -> GuestPlan {
        let fs_end = FS_MIB << 20;
        assert!(
            size >= fs_end + (8 << 20),
            "disk of {size} bytes too small for the guest plan"
        );
        let tail_len = 200 << 10;
        let tail = (size - (64 << 10) - tail_len) & !511;
        GuestPlan {
            mode: GuestMode::Write,
            size,
            queues,
            topology,
            patterns: vec![
                (fs_end + (60 << 10), 1 << 20),
                (fs_end + (3 << 20) + 4608, 777 * 512),
                (tail, tail_len),
            ],
        }
    }

    fn kernel_cmdline(&self) -> String {
        let patterns: Vec<String> = self
            .patterns
            .iter()
            .map(|(off, len)| format!("{off}:{len}"))
            .collect();
        let mode = match self.mode {
            GuestMode::Write => "write",
            GuestMode::Verify => "verify",
        };
        // no_timer_check: under TCG on a loaded host the kernel's IO-APIC
        // timer check can fail and panic the boot (seen in md_arrays.rs).
        let mut line = format!(
            "console=ttyS0 quiet panic=-1 no_timer_check VRAID_MODE={mode} VRAID_SIZE={} VRAID_QUEUES={} VRAID_FS_MIB={FS_MIB} VRAID_PATTERNS={}",
            self.size,
            self.queues,
            patterns.join(",")
        );
        if let Some((min_io, opt_io)) = self.topology {
            line.push_str(&format!(" VRAID_MIN_IO={min_io} VRAID_OPT_IO={opt_io}"));
        }
        line
    }
}

/// The bytes `guest-test.sh`'s `pattern_bytes OFFSET LENGTH` writes.
fn pattern_bytes(offset: u64, len: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(len as usize + 36);
    let mut line = 0u64;
    while (out.len() as u64) < len {
        out.extend_from_slice(format!("vraid-guest {offset:012} {line:010}\n").as_bytes());
        line += 1;
    }
    out.truncate(len as usize);
    out
}

/// A child process killed when dropped.
struct Reaped(Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn wait_for_socket(sock: &Path, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !sock.exists() {
        assert!(
            Instant::now() < deadline,
            "{what} did not create {} within 30 s",
            sock.display()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Boots the guest on the vhost-user-blk socket and returns its console.
fn boot_guest(sock: &Path, plan: &GuestPlan, scratch: &Path) -> String {
    run_guest(&[sock], plan.queues, &plan.kernel_cmdline(), scratch)
}

/// Boots the guest with one vhost-user-blk disk per socket (in order:
/// vda, vdb, ...) and `cmdline`; returns its console once it powered off.
fn run_guest(socks: &[&Path], queues: u32, cmdline: &str, scratch: &Path) -> String {
    let (qemu, console) = spawn_guest(socks, queues, cmdline, scratch);
    wait_guest(qemu, &console)
}

/// Starts QEMU on the sockets; returns it and the path of its console log.
fn spawn_guest(socks: &[&Path], queues: u32, cmdline: &str, scratch: &Path) -> (Reaped, PathBuf) {
    let image = guest_image();
    let console = scratch.join("console.log");
    let log = std::fs::File::create(&console).unwrap();
    let mut cmd = Command::new("qemu-system-x86_64");
    cmd.args(["-machine", "q35", "-accel", "tcg", "-smp", "2", "-m", "512"])
        .args(["-object", "memory-backend-memfd,id=mem,size=512M,share=on"])
        .args(["-numa", "node,memdev=mem"]);
    for (i, sock) in socks.iter().enumerate() {
        cmd.arg("-chardev")
            .arg(format!("socket,id=c{i},path={}", sock.display()))
            .arg("-device")
            .arg(format!(
                "vhost-user-blk-pci,chardev=c{i},num-queues={queues}"
            ));
    }
    let child = cmd
        .arg("-kernel")
        .arg(&image.kernel)
        .arg("-initrd")
        .arg(&image.initrd)
        .arg("-append")
        .arg(cmdline)
        .args(["-nographic", "-no-reboot"])
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run qemu-system-x86_64: {e} (is it installed?)"));
    (Reaped(child), console)
}

/// Waits (bounded) for the guest to power off; returns its console.
fn wait_guest(mut qemu: Reaped, console: &Path) -> String {
    let deadline = Instant::now() + BOOT_TIMEOUT;
    let status = loop {
        if let Some(status) = qemu.0.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            drop(qemu);
            panic!(
                "guest did not power off within {BOOT_TIMEOUT:?}; console:\n{}",
                String::from_utf8_lossy(&std::fs::read(console).unwrap())
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let text = String::from_utf8_lossy(&std::fs::read(console).unwrap()).into_owned();
    assert!(
        status.success(),
        "qemu exited with {status}; console:\n{text}"
    );
    text
}

/// Checks the guest's verdict and, over NBD, the bytes it left on the volume.
fn check_guest_result(console: &str, uri: &str, plan: &GuestPlan, scratch: &Path) {
    assert!(
        console.contains(MARK_PASS) && !console.contains(MARK_FAIL),
        "guest test failed; console:\n{console}"
    );
    // (The line may follow the firmware's terminal escapes.)
    if let Some(line) = console
        .lines()
        .find_map(|l| l.find("vda: ").map(|i| &l[i..]))
    {
        eprintln!("guest saw {line}");
    }

    let image = scratch.join("volume-after-guest.raw");
    let _ = std::fs::remove_file(&image);
    run_ok(Command::new("nbdcopy").arg(uri).arg(&image));
    let data = std::fs::read(&image).unwrap();
    assert_eq!(
        data.len() as u64,
        plan.size,
        "NBD size differs from the guest's"
    );
    for &(off, len) in &plan.patterns {
        let got = &data[off as usize..(off + len) as usize];
        assert!(
            got == pattern_bytes(off, len).as_slice(),
            "pattern at {off}:{len} differs over NBD"
        );
    }

    run_ok(Command::new("e2fsck").args(["-f", "-n"]).arg(&image));
    let sums: Vec<(&str, &str)> = console
        .lines()
        .filter_map(|l| l.trim().strip_prefix("VRAID-MD5 "))
        .filter_map(|l| l.split_once(' '))
        .collect();
    assert_eq!(sums.len(), 42, "guest printed {} file sums", sums.len());
    let dump = scratch.join("files");
    std::fs::create_dir_all(dump.join("small")).unwrap();
    let script: String = sums
        .iter()
        .map(|(_, name)| format!("dump /{name} {}\n", dump.join(name).display()))
        .collect();
    let script_path = scratch.join("debugfs.cmds");
    std::fs::write(&script_path, script).unwrap();
    run_ok(
        Command::new("debugfs")
            .arg("-f")
            .arg(&script_path)
            .arg(&image),
    );
    let names: Vec<&str> = sums.iter().map(|(_, n)| *n).collect();
    let host_sums = run_ok(Command::new("md5sum").args(&names).current_dir(&dump));
    for ((guest_sum, name), host_line) in sums.iter().zip(host_sums.lines()) {
        assert_eq!(
            host_line,
            format!("{guest_sum}  {name}"),
            "file {name} differs between guest and NBD"
        );
    }
}

/// `vraid serve` with a vhost-user-blk export of `members` beside NBD.
fn serve_vhost(members: &[PathBuf], sock: &Path, queues: u32) -> Server {
    let queues = queues.to_string();
    let mut args = vec![
        "--vhost-user-blk",
        sock.to_str().unwrap(),
        "--vhost-queues",
        &queues,
    ];
    args.extend(members.iter().map(|p| p.to_str().unwrap()));
    let server = Server::start(&args);
    wait_for_socket(sock, "vraid serve");
    server
}

fn nbd_size(uri: &str) -> u64 {
    let out = run_ok(Command::new("nbdinfo").arg("--size").arg(uri));
    out.trim()
        .parse()
        .unwrap_or_else(|e| panic!("nbdinfo --size said {out:?}: {e}"))
}

/// RAID-5 of four 32 MiB members, 64 KiB chunks: the guest should see
/// minimum_io_size = chunk and optimal_io_size = full data stripe.
const R5_CHUNK: u64 = 64 << 10;
const R5_TOPOLOGY: (u64, u64) = (R5_CHUNK, 3 * R5_CHUNK);

#[test]
fn guest_formats_and_mounts_raid5_and_a_second_boot_reads_it_back() {
    // Arrange
    let dir = scratch_dir("guest-r5");
    let paths = member_paths(dir.path(), 4);
    create_array(5, "64K", "32M", "vol0", &paths);
    let sock = dir.path().join("vol0.sock");
    let server = serve_vhost(&paths, &sock, 2);
    let uri = server.uri("vol0");
    let mut plan = GuestPlan::for_size(nbd_size(&uri), 2, Some(R5_TOPOLOGY));

    // Act: one boot writes; a second boot on the same server (QEMU gone,
    // a new frontend connecting) reads it all back.
    let console = boot_guest(&sock, &plan, dir.path());
    check_guest_result(&console, &uri, &plan, dir.path());
    plan.mode = GuestMode::Verify;
    let second = boot_guest(&sock, &plan, dir.path());

    // Assert
    check_guest_result(&second, &uri, &plan, dir.path());
    assert!(second.contains("ext4 from the earlier boot ok"), "{second}");
    assert_eq!(server.stop(), 0);
}

#[test]
fn guest_formats_and_mounts_degraded_raid5_over_vhost_user_blk() {
    // Arrange
    let dir = scratch_dir("guest-r5-degraded");
    let paths = member_paths(dir.path(), 4);
    create_array(5, "64K", "32M", "vol0", &paths);
    std::fs::remove_file(&paths[1]).unwrap();
    let survivors = [paths[0].clone(), paths[2].clone(), paths[3].clone()];
    let sock = dir.path().join("vol0.sock");
    let server = serve_vhost(&survivors, &sock, 2);
    assert!(
        server.log().to_lowercase().contains("degraded"),
        "vraid should report the array degraded:\n{}",
        server.log()
    );
    let uri = server.uri("vol0");
    let plan = GuestPlan::for_size(nbd_size(&uri), 2, Some(R5_TOPOLOGY));

    // Act
    let console = boot_guest(&sock, &plan, dir.path());

    // Assert
    check_guest_result(&console, &uri, &plan, dir.path());
    assert_eq!(server.stop(), 0);
}

#[test]
fn guest_checks_pass_on_qemu_storage_daemon_raw_file() {
    // Arrange: the reference implementation, exporting one raw file over
    // vhost-user-blk and NBD at once.
    let dir = scratch_dir("guest-qsd");
    let img = dir.path().join("disk.raw");
    let size: u64 = 96 << 20;
    std::fs::File::create(&img).unwrap().set_len(size).unwrap();
    let sock = dir.path().join("qsd.sock");
    let nbd_sock = dir.path().join("qsd-nbd.sock");
    let _qsd = Reaped(
        Command::new("qemu-storage-daemon")
            .arg("--blockdev")
            .arg(format!(
                "driver=file,node-name=f,filename={}",
                img.display()
            ))
            .arg("--export")
            .arg(format!(
                "type=vhost-user-blk,id=v,node-name=f,addr.type=unix,addr.path={},writable=on,num-queues=2",
                sock.display()
            ))
            .arg("--nbd-server")
            .arg(format!("addr.type=unix,addr.path={}", nbd_sock.display()))
            .args(["--export", "type=nbd,id=n,node-name=f,name=vol0"])
            .stdin(Stdio::null())
            .spawn()
            .expect("cannot run qemu-storage-daemon (is qemu-utils 10 installed?)"),
    );
    wait_for_socket(&sock, "qemu-storage-daemon");
    wait_for_socket(&nbd_sock, "qemu-storage-daemon");
    let uri = format!("nbd+unix:///vol0?socket={}", nbd_sock.display());
    let plan = GuestPlan::for_size(size, 2, None);

    // Act
    let console = boot_guest(&sock, &plan, dir.path());

    // Assert
    check_guest_result(&console, &uri, &plan, dir.path());
    // The host checks catch one flipped byte in a pattern and in a file.
    let flip = |offset: u64| {
        use std::os::unix::fs::FileExt;
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&img)
            .unwrap();
        let mut b = [0u8; 1];
        f.read_exact_at(&mut b, offset).unwrap();
        f.write_all_at(&[b[0] ^ 0x20], offset).unwrap();
    };
    let (p_off, p_len) = plan.patterns[1];
    flip(p_off + p_len / 2);
    let caught = std::panic::catch_unwind(|| {
        check_guest_result(&console, &uri, &plan, dir.path());
    });
    assert!(caught.is_err(), "a corrupted pattern byte went unnoticed");
    flip(p_off + p_len / 2);
    let file_offset = find_file_offset(&dir.path().join("volume-after-guest.raw"), "random-b");
    flip(file_offset + 100);
    let caught = std::panic::catch_unwind(|| {
        check_guest_result(&console, &uri, &plan, dir.path());
    });
    assert!(caught.is_err(), "a corrupted file byte went unnoticed");
}

/// Byte offset of the first block of `/name` in an ext4 image (debugfs bmap).
fn find_file_offset(image: &Path, name: &str) -> u64 {
    let out = run_ok(
        Command::new("debugfs")
            .arg("-R")
            .arg(format!("bmap /{name} 0"))
            .arg(image),
    );
    let block: u64 = out
        .trim()
        .parse()
        .unwrap_or_else(|e| panic!("debugfs bmap said {out:?}: {e}"));
    block * 4096
}

#[test]
fn pattern_bytes_match_the_guest_script_format() {
    // Arrange / Act
    let bytes = pattern_bytes(1234, 80);

    // Assert
    assert_eq!(
        &bytes[..],
        &b"vraid-guest 000000001234 0000000000\nvraid-guest 000000001234 0000000001\nvraid-gu"[..]
    );
}

/// The config of a RAID-5 array of four members with a pool and two
/// volumes, each on a vhost-user-blk socket of its own.
fn pool_guest_config(dir: &Path, control: &Path) -> PathBuf {
    let members: Vec<String> = (0..4)
        .map(|i| format!("\"{}\"", dir.join(format!("m{i}.img")).display()))
        .collect();
    let text = format!(
        "[server]\ncontrol = \"{}\"\n\n\
         [[volume]]\nname = \"vol0\"\nlevel = 5\nmembers = [{}]\ncreate = {{ member_size = \"96M\" }}\n\n\
         [[pool]]\narray = \"vol0\"\ncluster_size = \"256K\"\n\n\
         [[pool.volume]]\nname = \"guest-a\"\nsize = \"{POOL_A}\"\nvhost_user_blk = \"{}\"\nnum_queues = 2\n\n\
         [[pool.volume]]\nname = \"guest-b\"\nsize = \"{POOL_B}\"\nvhost_user_blk = \"{}\"\nnum_queues = 2\n",
        control.display(),
        members.join(", "),
        dir.join("a.sock").display(),
        dir.join("b.sock").display(),
    );
    let path = dir.join("vraid.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// Sizes of the two pool volumes (different, so the guest tells them apart).
const POOL_A: u64 = 96 << 20;
const POOL_B: u64 = 80 << 20;

/// The host's check of one pool volume: e2fsck clean, every file the guest
/// summed (`VRAID-MD5 tag ...`) equal over NBD.
fn check_pool_volume(console: &str, tag: &str, uri: &str, scratch: &Path) {
    let image = scratch.join(format!("{tag}.raw"));
    let _ = std::fs::remove_file(&image);
    run_ok(Command::new("nbdcopy").arg(uri).arg(&image));
    run_ok(Command::new("e2fsck").args(["-f", "-n"]).arg(&image));
    let sums: Vec<(&str, &str)> = console
        .lines()
        .filter_map(|l| l.trim().strip_prefix(&format!("VRAID-MD5 {tag} ")))
        .filter_map(|l| l.split_once(' '))
        .collect();
    assert_eq!(
        sums.len(),
        17,
        "guest printed {} sums for {tag}",
        sums.len()
    );
    let dump = scratch.join(format!("files-{tag}"));
    std::fs::create_dir_all(dump.join("small")).unwrap();
    let script: String = sums
        .iter()
        .map(|(_, name)| format!("dump /{name} {}\n", dump.join(name).display()))
        .collect();
    let script_path = scratch.join(format!("debugfs-{tag}.cmds"));
    std::fs::write(&script_path, script).unwrap();
    run_ok(
        Command::new("debugfs")
            .arg("-f")
            .arg(&script_path)
            .arg(&image),
    );
    let names: Vec<&str> = sums.iter().map(|(_, n)| *n).collect();
    let host = run_ok(Command::new("md5sum").args(&names).current_dir(&dump));
    for ((sum, name), line) in sums.iter().zip(host.lines()) {
        assert_eq!(
            line,
            format!("{sum}  {name}"),
            "{tag}: {name} differs over NBD"
        );
    }
    let _ = std::fs::remove_file(&image);
}

#[test]
fn guest_formats_and_mounts_two_vhost_volumes_of_one_pool() {
    // Arrange: the config lays the pool and creates both volumes.
    let dir = scratch_dir("guest-pool");
    let control = dir.path().join("control.sock");
    let config = pool_guest_config(dir.path(), &control);
    let args = ["--config", config.to_str().unwrap()];
    let server = Server::start(&args);
    let (a, b) = (dir.path().join("a.sock"), dir.path().join("b.sock"));
    wait_for_socket(&a, "vraid serve");
    wait_for_socket(&b, "vraid serve");
    let cmdline = format!(
        "console=ttyS0 quiet panic=-1 no_timer_check VRAID_GUEST=pool VRAID_SIZE_A={POOL_A} VRAID_SIZE_B={POOL_B}"
    );

    // Act
    let console = run_guest(&[&a, &b], 2, &cmdline, dir.path());
    let status = status_json(&control);
    assert_eq!(server.stop(), 0);
    let server = Server::start(&args);

    // Assert
    assert!(
        console.contains("pool volumes ok") && console.contains(MARK_PASS),
        "guest failed; console:\n{console}"
    );
    assert!(!console.contains(MARK_FAIL), "{console}");
    let vols = status["pool_volumes"].as_array().unwrap();
    for (name, sock) in [("guest-a", &a), ("guest-b", &b)] {
        let v = vols.iter().find(|v| v["name"] == name).unwrap();
        assert_eq!(v["vhost_socket"], sock.to_str().unwrap(), "{v}");
        assert!(v["io"]["write_bytes"].as_u64().unwrap() > 4 << 20, "{v}");
        assert!(v["mapped_bytes"].as_u64().unwrap() > 4 << 20, "{v}");
    }
    check_pool_volume(&console, "a", &server.uri("guest-a"), dir.path());
    check_pool_volume(&console, "b", &server.uri("guest-b"), dir.path());
    let check = vraid_ctl_ok(&control, &["pool", "check", "vol0"]);
    assert!(check.contains("2 volumes"), "{check}");
    assert_eq!(server.stop(), 0);
}

/// Polls the console (bounded) until it holds `needle`; panics if QEMU
/// exits first or `limit` passes.
fn wait_console(qemu: &mut Reaped, console: &Path, needle: &str, limit: Duration) -> String {
    let deadline = Instant::now() + limit;
    loop {
        let text = String::from_utf8_lossy(&std::fs::read(console).unwrap()).into_owned();
        if text.contains(needle) {
            return text;
        }
        if let Some(status) = qemu.0.try_wait().unwrap() {
            panic!("qemu exited ({status}) before {needle:?}; console:\n{text}");
        }
        assert!(
            Instant::now() < deadline,
            "no {needle:?} within {limit:?}; console:\n{text}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Hits of volume rule `id` in `fault list --json`.
fn volume_rule_hits(control: &Path, id: &str) -> u64 {
    let out = vraid_ctl_ok(control, &["fault", "list", "--json"]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let rules = v["volume_faults"].as_array().unwrap();
    let id: u64 = id.parse().unwrap();
    let rule = rules.iter().find(|r| r["id"] == id);
    rule.unwrap_or_else(|| panic!("no rule {id} in {rules:?}"))["hits"]
        .as_u64()
        .unwrap()
}

#[test]
fn a_stall_rule_blocks_a_guest_write_past_its_hung_task_timeout_until_cleared() {
    // Arrange: RAID-1 on vhost-user-blk; writes to 4 KiB at 8 MiB stall.
    let dir = scratch_dir("guest-stall");
    let paths = member_paths(dir.path(), 2);
    create_array(1, "64K", "64M", "vol0", &paths);
    let sock = dir.path().join("vol0.sock");
    let control = dir.path().join("control.sock");
    let mut args = vec![
        "--vhost-user-blk",
        sock.to_str().unwrap(),
        "--control",
        control.to_str().unwrap(),
    ];
    args.extend(paths.iter().map(|p| p.to_str().unwrap()));
    let server = Server::start(&args);
    wait_for_socket(&sock, "vraid serve");
    let offset: u64 = 8 << 20;
    let added = vraid_ctl_ok(
        &control,
        &[
            "fault", "add", "vol0", "--volume", "--kind", "stall", "--op", "write", "--offset",
            "8M", "--length", "4K",
        ],
    );
    let id = added.split_whitespace().nth(1).unwrap().to_string();
    let cmdline = format!(
        "console=ttyS0 quiet panic=-1 no_timer_check VRAID_GUEST=stall VRAID_STALL_OFFSET={offset}"
    );

    // Act: the guest's write hangs until its hung-task detector reports
    // it; then the rule is cleared and the guest waits for the write.
    let (mut qemu, console) = spawn_guest(&[&sock], 1, &cmdline, dir.path());
    let blocked = wait_console(&mut qemu, &console, "VRAID-STALL-BLOCKED", BOOT_TIMEOUT);
    let held = volume_status(&control, "vol0");
    let held_hits = volume_rule_hits(&control, &id);
    vraid_ctl_ok(&control, &["fault", "clear", &id]);
    let text = wait_guest(qemu, &console);

    // Assert: held in vraid while the guest reported it blocked; released,
    // the write completed and its bytes are on the volume.
    assert_eq!(held["volume_faults"]["stalled"], 1, "{held}");
    assert_eq!(held_hits, 1);
    assert!(
        blocked.contains("blocked for more than 5 seconds"),
        "{blocked}"
    );
    assert!(
        text.contains("stall released ok") && text.contains(MARK_PASS),
        "guest failed; console:\n{text}"
    );
    assert!(!text.contains(MARK_FAIL), "{text}");
    for line in text.lines().filter(|l| l.contains("stall")) {
        eprintln!("guest: {}", line.trim());
    }
    let after = volume_status(&control, "vol0");
    assert_eq!(after["volume_faults"]["stalled"], 0, "{after}");
    let data = read_export(&server.uri("vol0"), dir.path());
    let at = offset as usize;
    assert!(
        data[at..at + 4096] == pattern_bytes(offset, 4096)[..],
        "the released write's bytes differ over NBD"
    );
    assert_eq!(server.stop(), 0);
}
