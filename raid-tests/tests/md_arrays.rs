//! Arrays made by the real Linux md: QEMU under TCG boots the Debian 6.1
//! kernel with md's modules and Debian's mdadm (`raid-tests/guest/`,
//! `VRAID_GUEST=md`), which creates md arrays on raw files attached as
//! virtio disks, writes random data into each, prints the md5 of the whole
//! array as md reads it, and stops them. The host then runs `vraid
//! examine` on every member and `vraid serve --md` on the members, and
//! compares the md5 of what nbdcopy reads with the guest's (an ext4 is
//! also mounted through nbdfuse and its files checked); again with members
//! left out (one, two for RAID-6) to check reconstruction. The writable
//! round trip then writes through `vraid serve --md-writable` and boots
//! the guest again: md assembles each array, resyncs what a killed session
//! left dirty, runs `check` (mismatch_cnt 0), e2fsck -fn is clean and md
//! reads what vraid wrote. Arrays with md's internal bitmap are written
//! too: `mdadm -X` shows the bits and events vraid left, and a session
//! SIGKILLed mid-write is resynced by md over exactly its set bits.
//!
//! ```text
//!  guest: mdadm --create ... /dev/vdX.. ─► dd urandom ─► md5sum /dev/md0 ─► --stop
//!  host:  vraid examine --json each file (UUID, level, layout, role, csum)
//!         vraid serve --md FILES ─► nbdcopy ─► md5 == guest's   (whole)
//!         vraid serve --md FILES minus 1 or 2 ─► md5 == guest's (degraded)
//!         vraid serve --md-writable ─► qemu-io / ext4 via nbdfuse ─► SIGTERM
//!  guest: mdadm --assemble ─► check ─► mismatch_cnt, e2fsck, md5 == host's
//! ```

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use std::os::unix::fs::FileExt;

use raid_tests::*;

/// Boots take ~30 s on an idle TCG host; leave room for a loaded one.
const BOOT_TIMEOUT: Duration = Duration::from_secs(600);
const DISK_SIZE: u64 = 64 << 20;

/// One md array the guest makes.
struct MdSpec {
    name: &'static str,
    /// mdadm's `--level`: "0", "5", "linear", ...
    level: &'static str,
    /// mdadm's `--layout` ("-" for the default).
    layout: &'static str,
    metadata: &'static str,
    /// mdadm's `--chunk` in KiB ("-" for none).
    chunk: &'static str,
    first: usize,
    count: usize,
    bitmap: bool,
    /// An ext4 with files instead of random data (checked on the host with
    /// e2fsck and debugfs, whole and degraded).
    ext4: bool,
    /// The layout name `vraid examine` should show.
    layout_name: Option<&'static str>,
    /// Member sets (by role) to leave out for the degraded checks.
    lose: &'static [&'static [usize]],
}

impl MdSpec {
    fn arg(&self) -> String {
        format!(
            "{}:{}:{}:{}:{}:{}:{}:{}",
            self.name,
            self.level,
            self.layout,
            self.metadata,
            self.chunk,
            self.first,
            self.count,
            match (self.bitmap, self.ext4) {
                (true, true) => "bitmap-ext4",
                (true, _) => "bitmap",
                (_, true) => "ext4",
                _ => "-",
            }
        )
    }
}

/// What the guest printed of an array: size, md5, UUID.
struct Made {
    size: u64,
    md5: String,
    uuid: String,
}

fn guest_image() -> &'static (PathBuf, PathBuf) {
    static IMAGE: OnceLock<(PathBuf, PathBuf)> = OnceLock::new();
    IMAGE.get_or_init(|| {
        let root = workspace_root();
        let cache = root.join("target").join("guest-cache");
        run_ok(
            Command::new("bash")
                .arg(root.join("raid-tests/guest/build.sh"))
                .arg(&cache),
        );
        (cache.join("vmlinuz"), cache.join("initramfs.cpio.gz"))
    })
}

/// Boots the md guest on `disks` and returns its console.
fn boot_md_guest(disks: &[PathBuf], specs: &[MdSpec], scratch: &Path) -> String {
    boot_md_guest_try(disks, specs, scratch, "", 1)
}

/// Boots the md guest in verify mode: it assembles `specs` from `disks`
/// (as left by vraid), runs md's check and e2fsck, prints what it read.
fn boot_md_guest_verify(disks: &[PathBuf], specs: &[MdSpec], scratch: &Path) -> String {
    boot_md_guest_try(disks, specs, scratch, " VRAID_MD_MODE=verify", 1)
}

/// QEMU 10.0 under TCG sometimes aborts on an assertion of its own while
/// SeaBIOS and the guest kernel boot, before the test's guest script runs
/// (seen under load: `iotlb_to_section` in its memory map, and
/// `msix_table_mmio_write` with an MSI-X table write it maps past the
/// table): QEMU bugs, not vraid's (vraid does not run during the boot).
/// The boot is tried again (at most three times) when QEMU itself failed
/// an assertion before the guest's init started (its first line,
/// `VRAID-GUEST-START`, not printed). Any other failure fails the test.
fn qemu_aborted_in_tcg(status: &std::process::ExitStatus, console: &str) -> bool {
    let qemu_assert = console
        .lines()
        .any(|l| l.contains("qemu-system-x86_64: ") && l.contains("Assertion `"));
    !status.success() && qemu_assert && !console.contains("VRAID-")
}

#[test]
fn only_qemu_assertions_before_the_guest_started_are_booted_again() {
    use std::os::unix::process::ExitStatusExt;
    let abort = std::process::ExitStatus::from_raw(6);
    let msix = "Booting from ROM...\nqemu-system-x86_64: hw/pci/msix.c:228: \
                msix_table_mmio_write: Assertion `addr + size <= x' failed.\n";
    let iotlb = "qemu-system-x86_64: ../system/physmem.c:1: iotlb_to_section: \
                 Assertion `x' failed.\n";
    assert!(qemu_aborted_in_tcg(&abort, msix));
    assert!(qemu_aborted_in_tcg(&abort, iotlb));
    // Once the guest ran, the disks may have changed: no second boot.
    let started = format!("VRAID-GUEST-START\n{msix}");
    assert!(!qemu_aborted_in_tcg(&abort, &started));
    // Not an assertion of QEMU's own, or QEMU exited cleanly.
    assert!(!qemu_aborted_in_tcg(
        &abort,
        "Booting from ROM...\nKilled\n"
    ));
    let ok = std::process::ExitStatus::from_raw(0);
    assert!(!qemu_aborted_in_tcg(&ok, msix));
}

fn boot_md_guest_try(
    disks: &[PathBuf],
    specs: &[MdSpec],
    scratch: &Path,
    mode: &str,
    attempt: u32,
) -> String {
    let (kernel, initrd) = guest_image();
    let console = scratch.join("console.log");
    let log = std::fs::File::create(&console).unwrap();
    let arrays: Vec<String> = specs.iter().map(MdSpec::arg).collect();
    let mut cmd = Command::new("qemu-system-x86_64");
    cmd.args(["-machine", "q35", "-accel", "tcg", "-smp", "2", "-m", "512"])
        .args(["-vga", "none", "-nic", "none"])
        .arg("-kernel")
        .arg(kernel)
        .arg("-initrd")
        .arg(initrd)
        .arg("-append")
        .arg(format!(
            // no_timer_check: under TCG on a loaded host the kernel's IO-APIC
            // timer check can fail and panic the boot.
            "console=ttyS0 quiet panic=-1 no_timer_check VRAID_GUEST=md VRAID_MD_ARRAYS={}{mode}",
            arrays.join(",")
        ))
        .args(["-nographic", "-no-reboot"]);
    for d in disks {
        cmd.arg("-drive")
            .arg(format!("file={},format=raw,if=virtio", d.display()));
    }
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run qemu-system-x86_64: {e}"));
    let deadline = Instant::now() + BOOT_TIMEOUT;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "md guest did not power off within {BOOT_TIMEOUT:?}; console:\n{}",
                String::from_utf8_lossy(&std::fs::read(&console).unwrap())
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let text = String::from_utf8_lossy(&std::fs::read(&console).unwrap()).into_owned();
    if qemu_aborted_in_tcg(&status, &text) && attempt < 3 {
        eprintln!(
            "qemu failed an assertion of its own while booting (a QEMU bug): booting again\n{text}"
        );
        return boot_md_guest_try(disks, specs, scratch, mode, attempt + 1);
    }
    assert!(status.success(), "qemu exited with {status}:\n{text}");
    assert!(
        text.contains("VRAID-GUEST-PASS") && !text.contains("VRAID-GUEST-FAIL"),
        "md guest failed; console:\n{text}"
    );
    text
}

/// What follows `marker` on a console line: the marker may come after
/// other bytes (SeaBIOS leaves its screen-clearing escapes before the
/// guest's first line).
fn marked<'a>(line: &'a str, marker: &str) -> Option<&'a str> {
    line.find(marker).map(|at| line[at + marker.len()..].trim())
}

/// The guest's `VRAID-MD-ARRAY NAME SIZE MD5 UUID` line of `name`.
fn made(console: &str, name: &str) -> Made {
    let line = console
        .lines()
        .filter_map(|l| marked(l, "VRAID-MD-ARRAY "))
        .find(|l| l.split_whitespace().next() == Some(name))
        .unwrap_or_else(|| panic!("guest printed nothing for {name}:\n{console}"));
    let f: Vec<&str> = line.split_whitespace().collect();
    Made {
        size: f[1].parse().unwrap(),
        md5: f[2].to_string(),
        uuid: f.get(3).unwrap_or(&"").to_string(),
    }
}

/// md5 of the whole export, read with nbdcopy, and its size.
fn export_md5(uri: &str, scratch: &Path) -> (u64, String) {
    let out = export_image(uri, scratch);
    let size = std::fs::metadata(&out).unwrap().len();
    let sum = md5_of(&out);
    let _ = std::fs::remove_file(&out);
    (size, sum)
}

/// The whole export copied into a file with nbdcopy.
fn export_image(uri: &str, scratch: &Path) -> PathBuf {
    let out = scratch.join("md-export.raw");
    let _ = std::fs::remove_file(&out);
    run_ok(Command::new("nbdcopy").arg(uri).arg(&out));
    out
}

fn md5_of(path: &Path) -> String {
    let sum = run_ok(Command::new("md5sum").arg(path));
    sum.split_whitespace().next().unwrap().to_string()
}

/// The guest's `VRAID-MD-FILE NAME FILE MD5` lines of array `name`.
fn guest_files(console: &str, name: &str) -> Vec<(String, String)> {
    console
        .lines()
        .filter_map(|l| marked(l, "VRAID-MD-FILE "))
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .filter(|f| f.len() == 3 && f[0] == name)
        .map(|f| (f[1].to_string(), f[2].to_string()))
        .collect()
}

/// The ext4 in `image` is clean (`e2fsck -fn`) and holds `files` with the
/// md5 the guest printed (dumped with debugfs).
fn check_ext4(image: &Path, files: &[(String, String)], scratch: &Path) {
    assert!(!files.is_empty(), "guest printed no files");
    run_ok(Command::new("e2fsck").args(["-f", "-n"]).arg(image));
    for (file, md5) in files {
        let dump = scratch.join("md-dumped-file");
        let _ = std::fs::remove_file(&dump);
        run_ok(
            Command::new("debugfs")
                .arg("-R")
                .arg(format!("dump /{file} {}", dump.display()))
                .arg(image),
        );
        assert_eq!(&md5_of(&dump), md5, "file {file} read through vraid");
    }
}

fn serve_md(members: &[&PathBuf]) -> Server {
    let mut args = vec!["--md"];
    args.extend(members.iter().map(|p| p.to_str().unwrap()));
    Server::start(&args)
}

/// An nbdfuse mount of an export and a loop device on its file (this
/// kernel has no nbd module); torn down on drop.
struct FuseLoop {
    mountpoint: PathBuf,
    nbdfuse: Child,
    loopdev: Option<String>,
}

impl FuseLoop {
    fn attach(uri: &str, mountpoint: &Path, read_only: bool) -> FuseLoop {
        std::fs::create_dir_all(mountpoint).unwrap();
        let pidfile = mountpoint.with_extension("pid");
        let _ = std::fs::remove_file(&pidfile);
        let mut c = Command::new("nbdfuse");
        if read_only {
            c.arg("--readonly");
        }
        let nbdfuse = c
            .arg("-P")
            .arg(&pidfile)
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
        let mut l = Command::new("losetup");
        l.args(["--find", "--show", "--direct-io=off"]);
        if read_only {
            l.arg("--read-only");
        }
        let loopdev = run_ok(l.arg(mountpoint.join("nbd"))).trim().to_string();
        FuseLoop {
            mountpoint: mountpoint.to_path_buf(),
            nbdfuse,
            loopdev: Some(loopdev),
        }
    }

    /// Mounts the ext4 on the loop device at `dir`.
    fn mount(&self, dir: &Path, read_only: bool) {
        std::fs::create_dir_all(dir).unwrap();
        let opts = if read_only { "ro,noload" } else { "rw" };
        let loopdev = self.loopdev.as_deref().unwrap();
        run_ok(
            Command::new("mount")
                .args(["-t", "ext4", "-o", opts, loopdev])
                .arg(dir),
        );
    }
}

impl Drop for FuseLoop {
    fn drop(&mut self) {
        if let Some(dev) = self.loopdev.take() {
            let _ = Command::new("losetup").arg("-d").arg(&dev).status();
        }
        stop_nbdfuse(&self.mountpoint, &mut self.nbdfuse);
    }
}

/// Unmounts `dir` (a failure fails the test: a busy mount would keep the
/// loop device and nbdfuse).
fn umount(dir: &Path) {
    run_ok(Command::new("umount").arg(dir));
}

/// Mounts the ext4 of export `uri` read-only through nbdfuse and a loop
/// device and checks `files` (path, md5) are there with those bytes.
fn check_ext4_mounted(uri: &str, files: &[(String, String)], scratch: &Path) {
    let fuse = FuseLoop::attach(uri, &scratch.join("fuse-ro"), true);
    let mnt = scratch.join("mnt-ro");
    fuse.mount(&mnt, true);
    let sums: Vec<(String, String)> = files
        .iter()
        .map(|(f, _)| (f.clone(), md5_of(&mnt.join(f))))
        .collect();
    umount(&mnt);
    drop(fuse);
    assert_eq!(
        sums, files,
        "files read from the ext4 mounted through nbdfuse"
    );
}

/// Checks `vraid examine` of every member of `spec` against the guest.
fn check_examine(spec: &MdSpec, disks: &[PathBuf], m: &Made) {
    for role in 0..spec.count {
        let disk = &disks[spec.first + role];
        let e = examine(disk);
        let what = format!("{} member {role} ({}): {e:#}", spec.name, disk.display());
        assert_eq!(e["kind"], "md", "{what}");
        assert_eq!(e["version"], spec.metadata, "{what}");
        assert_eq!(e["array_uuid"], m.uuid.as_str(), "{what}");
        let level = match spec.level.parse::<u32>() {
            Ok(n) => format!("raid{n}"),
            Err(_) => spec.level.to_string(),
        };
        assert_eq!(e["raid_level"], level, "{what}");
        assert_eq!(e["raid_devices"], spec.count as u64, "{what}");
        assert_eq!(e["checksum_ok"], true, "{what}");
        assert_eq!(e["state"], "clean", "{what}");
        assert_eq!(e["bitmap"], spec.bitmap, "{what}");
        assert_eq!(e["reshape"], serde_json::Value::Null, "{what}");
        assert_eq!(e["device_role"]["kind"], "active", "{what}");
        assert_eq!(e["device_role"]["slot"], role as u64, "{what}");
        assert_eq!(e["array_state"], "A".repeat(spec.count), "{what}");
        if let Some(name) = spec.layout_name {
            assert_eq!(e["layout_name"], name, "{what}");
        }
        if spec.metadata != "0.90" {
            assert_eq!(e["name"], format!("vraidguest:{}", spec.name), "{what}");
        }
    }
    let text = run_ok(vraid(&["examine"]).arg(&disks[spec.first]));
    assert!(
        text.contains(&m.uuid) && text.contains("- correct"),
        "{text}"
    );
}

/// Serves `spec`'s members whole and with each `lose` set left out, and
/// compares every byte (by md5) with what md read in the guest; an ext4
/// is checked file by file too.
fn check_served(
    spec: &MdSpec,
    disks: &[PathBuf],
    m: &Made,
    files: &[(String, String)],
    scratch: &Path,
) {
    let export = if spec.metadata == "0.90" {
        m.uuid.clone()
    } else {
        spec.name.to_string()
    };
    let all: Vec<&PathBuf> = disks[spec.first..spec.first + spec.count].iter().collect();
    let mut sets: Vec<Vec<&PathBuf>> = vec![all.iter().rev().copied().collect()];
    for lose in spec.lose {
        let kept = (0..spec.count)
            .filter(|r| !lose.contains(r))
            .map(|r| all[r])
            .collect();
        sets.push(kept);
    }
    for members in sets {
        let server = serve_md(&members);
        let image = export_image(&server.uri(&export), scratch);
        if spec.ext4 {
            check_ext4_mounted(&server.uri(&export), files, scratch);
        }
        let log = server.log();
        assert_eq!(server.stop(), 0);
        let (size, md5) = (std::fs::metadata(&image).unwrap().len(), md5_of(&image));
        if spec.ext4 {
            check_ext4(&image, files, scratch);
        }
        let _ = std::fs::remove_file(&image);
        let what = format!(
            "{} served from {} of {} members",
            spec.name,
            members.len(),
            spec.count
        );
        assert_eq!(size, m.size, "{what}: size\n{log}");
        assert_eq!(md5, m.md5, "{what}: bytes differ from md's\n{log}");
        if members.len() < spec.count {
            assert!(log.contains("DEGRADED"), "{what}\n{log}");
        }
    }
}

/// Boots the guest once to make `specs` on 64 MiB disks (`resize`:
/// (disk, bytes) made smaller first), then checks every array.
fn run_guest_arrays(test: &str, specs: &[MdSpec], resize: &[(usize, u64)]) {
    let dir = scratch_dir(test);
    let disks = sparse_members(
        dir.path(),
        specs.iter().map(|s| s.first + s.count).max().unwrap(),
        DISK_SIZE,
    );
    for &(disk, size) in resize {
        std::fs::OpenOptions::new()
            .write(true)
            .open(&disks[disk])
            .unwrap()
            .set_len(size)
            .unwrap();
    }
    let console = boot_md_guest(&disks, specs, dir.path());
    for spec in specs {
        let m = made(&console, spec.name);
        check_examine(spec, &disks, &m);
        let files = guest_files(&console, spec.name);
        check_served(spec, &disks, &m, &files, dir.path());
        if spec.level == "6" && spec.layout == "-" {
            check_our_raid6_lays_out_md_s_bytes(spec, &disks, &m, dir.path());
        }
        if spec.level == "10" {
            check_our_raid10_lays_out_md_s_bytes(spec, &disks, &m, dir.path());
        }
    }
}

/// vraid's own RAID-6 (md's default left-symmetric layout), given the
/// bytes of `spec`'s md array through a `vraid create --level 6` of as
/// many members and the same chunk, holds on every member byte for byte
/// what the kernel's md wrote there: data, P and Q.
fn check_our_raid6_lays_out_md_s_bytes(spec: &MdSpec, disks: &[PathBuf], m: &Made, dir: &Path) {
    let md_members = &disks[spec.first..spec.first + spec.count];
    let md_server = serve_md(&md_members.iter().collect::<Vec<_>>());
    let image = export_image(&md_server.uri(spec.name), dir);
    assert_eq!(md_server.stop(), 0);

    let ours_dir = dir.join("our-raid6");
    std::fs::create_dir_all(&ours_dir).unwrap();
    let ours = member_paths(&ours_dir, spec.count);
    create_array(6, &format!("{}K", spec.chunk), "128M", "r6", &ours);
    let mut args = vec!["--no-journal"];
    args.extend(ours.iter().map(|p| p.to_str().unwrap()));
    let server = Server::start(&args);
    run_ok(Command::new("nbdcopy").arg(&image).arg(server.uri("r6")));
    assert_eq!(server.stop(), 0);

    let per_member = m.size / (spec.count as u64 - 2);
    let read = |path: &Path, at: u64| {
        let mut buf = vec![0u8; per_member as usize];
        std::fs::File::open(path)
            .unwrap()
            .read_exact_at(&mut buf, at)
            .unwrap();
        buf
    };
    for role in 0..spec.count {
        let md_at = examine(&md_members[role])["data_offset"].as_u64().unwrap() * 512;
        let our_at = examine(&ours[role])["data_offset"].as_u64().unwrap();
        let (theirs, mine) = (read(&md_members[role], md_at), read(&ours[role], our_at));
        let first_diff = theirs.iter().zip(&mine).position(|(a, b)| a != b);
        assert_eq!(
            first_diff, None,
            "{}: member {role} differs from md's at byte {first_diff:?} of its data area",
            spec.name
        );
    }
    let _ = std::fs::remove_file(&image);
}

/// Rows between a far layout's copies (md's `calc_sectors`: chunks in use
/// per device, then the stride), for members of `dev_rows` chunk rows.
fn far_stride_rows(dev_rows: u64, disks: u64, far: u64) -> u64 {
    let chunks = dev_rows / far * disks;
    (chunks * far).div_ceil(disks) / far
}

/// vraid's own RAID-10 in the same layout (near, far or offset copies),
/// given the bytes of `spec`'s md array, holds on every member byte for
/// byte what the kernel's md wrote in every chunk row md filled whole; far
/// copies are compared at each array's own stride (md's is set by its
/// device size, vraid's by its members' data area).
fn check_our_raid10_lays_out_md_s_bytes(spec: &MdSpec, disks: &[PathBuf], m: &Made, dir: &Path) {
    let md_members = &disks[spec.first..spec.first + spec.count];
    let md_server = serve_md(&md_members.iter().collect::<Vec<_>>());
    let image = export_image(&md_server.uri(spec.name), dir);
    assert_eq!(md_server.stop(), 0);

    let ours_dir = dir.join(format!("our-{}", spec.name));
    std::fs::create_dir_all(&ours_dir).unwrap();
    let ours = member_paths(&ours_dir, spec.count);
    let mut c = vraid(&["create", "--level", "10", "--layout", spec.layout]);
    c.args([
        "--chunk-size",
        &format!("{}K", spec.chunk),
        "--member-size",
        "128M",
    ]);
    c.args(["--name", "r10"]).args(&ours);
    run_ok(&mut c);
    let mut args: Vec<&str> = ours.iter().map(|p| p.to_str().unwrap()).collect();
    args.push("--no-checksums");
    let server = Server::start(&args);
    run_ok(Command::new("nbdcopy").arg(&image).arg(server.uri("r10")));
    assert_eq!(server.stop(), 0);

    let chunk: u64 = spec.chunk.parse::<u64>().unwrap() << 10;
    // Rows md filled whole: near copies fill slots row by row; offset
    // copies fill a pair of rows per `count` chunks; far copies one row
    // per `count` chunks, again a stride down.
    let (chunks, n) = (m.size / chunk, spec.count as u64);
    let full_rows = match spec.layout.as_bytes()[0] {
        b'o' => chunks / n * 2,
        b'f' => chunks / n,
        _ => chunks * 2 / n,
    };
    let per_member = full_rows * chunk;
    let read = |path: &Path, at: u64| {
        let mut buf = vec![0u8; per_member as usize];
        std::fs::File::open(path)
            .unwrap()
            .read_exact_at(&mut buf, at)
            .unwrap();
        buf
    };
    let md_e = examine(&md_members[0]);
    let md_rows = md_e["used_dev_size"].as_u64().unwrap() * 512 / chunk;
    let our_rows = examine(&ours[0])["data_size"].as_u64().unwrap() / chunk;
    let mut regions = vec![(0, 0)];
    if spec.layout.starts_with('f') {
        let far: u64 = spec.layout[1..].parse().unwrap();
        for copy in 1..far {
            regions.push((
                copy * far_stride_rows(md_rows, n, far) * chunk,
                copy * far_stride_rows(our_rows, n, far) * chunk,
            ));
        }
    }
    for role in 0..spec.count {
        let md_at = examine(&md_members[role])["data_offset"].as_u64().unwrap() * 512;
        let our_at = examine(&ours[role])["data_offset"].as_u64().unwrap();
        for &(md_off, our_off) in &regions {
            let theirs = read(&md_members[role], md_at + md_off);
            let mine = read(&ours[role], our_at + our_off);
            let first_diff = theirs.iter().zip(&mine).position(|(a, b)| a != b);
            assert_eq!(
                first_diff, None,
                "{}: member {role} differs from md's at byte {first_diff:?} of the \
                 region {md_off} (md) / {our_off} (vraid) of its data area",
                spec.name
            );
        }
    }
    let _ = std::fs::remove_file(&image);
}

#[test]
fn md_raid5_raid6_raid0_made_by_linux_are_served_whole_and_degraded() {
    run_guest_arrays(
        "md-parity",
        &[
            MdSpec {
                name: "r5ls",
                level: "5",
                layout: "-",
                metadata: "1.2",
                chunk: "64",
                first: 0,
                count: 4,
                bitmap: true,
                ext4: false,
                layout_name: Some("left-symmetric"),
                lose: &[&[0], &[3]],
            },
            MdSpec {
                name: "r5ra",
                level: "5",
                layout: "right-asymmetric",
                metadata: "0.90",
                chunk: "32",
                first: 4,
                count: 4,
                bitmap: false,
                ext4: false,
                layout_name: Some("right-asymmetric"),
                lose: &[&[1]],
            },
            MdSpec {
                name: "r6",
                level: "6",
                layout: "-",
                metadata: "1.0",
                chunk: "64",
                first: 8,
                count: 5,
                bitmap: false,
                ext4: false,
                layout_name: Some("left-symmetric"),
                lose: &[&[0, 1], &[2, 4], &[3]],
            },
            MdSpec {
                name: "r0",
                level: "0",
                layout: "-",
                metadata: "1.1",
                chunk: "128",
                first: 13,
                count: 3,
                bitmap: false,
                ext4: false,
                layout_name: None,
                lose: &[],
            },
        ],
        &[],
    );
}

#[test]
fn md_raid1_raid10_and_raid6_q_last_made_by_linux_with_ext4_are_served_whole_and_degraded() {
    run_guest_arrays(
        "md-mirror",
        &[
            MdSpec {
                name: "r1",
                level: "1",
                layout: "-",
                metadata: "1.2",
                chunk: "-",
                first: 0,
                count: 3,
                bitmap: false,
                ext4: false,
                layout_name: None,
                lose: &[&[0, 2]],
            },
            MdSpec {
                name: "r10n2",
                level: "10",
                layout: "n2",
                metadata: "1.2",
                chunk: "64",
                first: 3,
                count: 3,
                bitmap: false,
                ext4: true,
                layout_name: Some("near=2"),
                lose: &[&[1]],
            },
            MdSpec {
                name: "r10f2",
                level: "10",
                layout: "f2",
                metadata: "1.0",
                chunk: "64",
                first: 6,
                count: 4,
                bitmap: false,
                ext4: false,
                layout_name: Some("far=2"),
                lose: &[&[0], &[1, 3]],
            },
            MdSpec {
                name: "r10o2",
                level: "10",
                layout: "o2",
                metadata: "1.1",
                chunk: "64",
                first: 10,
                count: 4,
                bitmap: false,
                ext4: false,
                layout_name: Some("offset=2"),
                lose: &[&[2]],
            },
            MdSpec {
                name: "r6q",
                level: "6",
                layout: "left-symmetric-6",
                metadata: "1.2",
                chunk: "64",
                first: 14,
                count: 4,
                bitmap: false,
                ext4: true,
                layout_name: Some("left-symmetric-6"),
                lose: &[&[0, 3], &[1]],
            },
        ],
        &[],
    );
}

#[test]
fn md_multi_zone_raid0_in_both_layouts_and_linear_made_by_linux_are_served() {
    // Members of different sizes: RAID-0 then has several strip zones.
    let zoned = |name, layout: &'static str, first| MdSpec {
        name,
        level: "0",
        layout,
        metadata: "1.2",
        chunk: "64",
        first,
        count: 3,
        bitmap: false,
        ext4: false,
        layout_name: Some(layout),
        lose: &[],
    };
    run_guest_arrays(
        "md-zones",
        &[
            zoned("zalt", "alternate", 0),
            zoned("zorig", "original", 3),
            MdSpec {
                name: "lin",
                level: "linear",
                layout: "-",
                metadata: "1.0",
                chunk: "-",
                first: 6,
                count: 3,
                bitmap: false,
                ext4: false,
                layout_name: None,
                lose: &[],
            },
        ],
        &[
            (1, 40 << 20),
            (2, 52 << 20),
            (3, 36 << 20),
            (5, 50 << 20),
            (6, 44 << 20),
            (8, 56 << 20),
        ],
    );
}

#[test]
fn md_raid0_missing_a_member_mixed_arrays_and_bad_checksums_are_refused_and_config_md_serves() {
    // Arrange: two RAID-0 arrays from one boot.
    let specs = [
        MdSpec {
            name: "a",
            level: "0",
            layout: "-",
            metadata: "1.2",
            chunk: "64",
            first: 0,
            count: 2,
            bitmap: false,
            ext4: false,
            layout_name: None,
            lose: &[],
        },
        MdSpec {
            name: "b",
            level: "0",
            layout: "-",
            metadata: "1.2",
            chunk: "64",
            first: 2,
            count: 2,
            bitmap: false,
            ext4: false,
            layout_name: None,
            lose: &[],
        },
    ];
    let dir = scratch_dir("md-refusals");
    let disks = sparse_members(dir.path(), 4, DISK_SIZE);
    let console = boot_md_guest(&disks, &specs, dir.path());
    let b = made(&console, "b");
    let cfg = dir.path().join("md.toml");
    std::fs::write(
        &cfg,
        format!(
            "[[md]]\nmembers = [{:?}, {:?}]\nname = \"bee\"\n",
            disks[3], disks[2]
        ),
    )
    .unwrap();

    // Act
    let server = Server::start(&["--config", cfg.to_str().unwrap()]);
    let (size, md5) = export_md5(&server.uri("bee"), dir.path());
    assert_eq!(server.stop(), 0);
    let serve = |members: &[&PathBuf]| {
        let mut c = vraid(&["serve", "--nbd", "127.0.0.1:0", "--md"]);
        c.args(members.iter().map(|p| p.as_os_str()));
        run(c)
    };
    let missing = serve(&[&disks[0]]);
    let mixed = serve(&[&disks[0], &disks[1], &disks[2]]);
    // A corrupt superblock byte: the member is left out, so RAID-0 fails.
    let mut sb = peek(&disks[1], 4096, 4096);
    sb[100] ^= 0x40;
    poke(&disks[1], 4096, &sb);
    let corrupt = serve(&[&disks[0], &disks[1]]);
    let examined = run(vraid(&["examine", "--json"]).arg(&disks[1]));

    // Assert
    assert_eq!(
        (size, md5),
        (b.size, b.md5),
        "[[md]] in a config serves array b"
    );
    let err = |o: &std::process::Output| String::from_utf8_lossy(&o.stderr).into_owned();
    assert!(!missing.status.success());
    assert!(
        err(&missing).contains("1 of 2 members missing"),
        "{}",
        err(&missing)
    );
    assert!(!mixed.status.success());
    assert!(
        err(&mixed).contains("different md arrays"),
        "{}",
        err(&mixed)
    );
    assert!(!corrupt.status.success());
    assert!(err(&corrupt).contains("checksum"), "{}", err(&corrupt));
    let e: serde_json::Value = serde_json::from_slice(&examined.stdout).unwrap();
    assert_eq!(e["checksum_ok"], false, "{e:#}");
}

/// `vraid serve --md-writable --md MEMBERS...`.
fn serve_md_writable(members: &[&PathBuf]) -> Server {
    let mut args = vec!["--md-writable", "--md"];
    args.extend(members.iter().map(|p| p.to_str().unwrap()));
    Server::start(&args)
}

/// The members of `spec`, by role.
fn members_of<'a>(spec: &MdSpec, disks: &'a [PathBuf]) -> Vec<&'a PathBuf> {
    disks[spec.first..spec.first + spec.count].iter().collect()
}

/// The members of `spec` but the roles in `lost`.
fn present_of<'a>(spec: &MdSpec, disks: &'a [PathBuf], lost: &[usize]) -> Vec<&'a PathBuf> {
    let all = members_of(spec, disks).into_iter().enumerate();
    all.filter(|(r, _)| !lost.contains(r))
        .map(|(_, p)| p)
        .collect()
}

/// The export name of `spec` (0.90 arrays have no name: the UUID).
fn export_of(spec: &MdSpec, m: &Made) -> String {
    if spec.metadata == "0.90" {
        m.uuid.clone()
    } else {
        spec.name.to_string()
    }
}

/// Every member's superblock after a writable session: checksum right,
/// `state` as given, `events` events on each.
fn assert_superblocks(members: &[&PathBuf], state: &str, events: u64, what: &str) {
    for m in members {
        let e = examine(m);
        assert_eq!(e["checksum_ok"], true, "{what}: {e:#}");
        assert_eq!(e["state"], state, "{what}: {e:#}");
        assert_eq!(e["events"], events, "{what}: {e:#}");
    }
}

/// What the host expects the guest's md to read after vraid wrote.
struct Written {
    name: &'static str,
    md5: String,
    files: Vec<(String, String)>,
}

/// Changes the ext4 of `spec` through `vraid serve --md-writable`, an
/// nbdfuse mount and a loop device (files added, one rewritten, one
/// removed), stops the server cleanly and returns what md should read.
fn write_ext4_through_vraid(
    spec: &MdSpec,
    disks: &[PathBuf],
    lost: &[usize],
    m: &Made,
    files: &[(String, String)],
    scratch: &Path,
) -> Written {
    let members = present_of(spec, disks, lost);
    let events = examine(members[0])["events"].as_u64().unwrap();
    let server = serve_md_writable(&members);
    let uri = server.uri(&export_of(spec, m));
    let fuse = FuseLoop::attach(&uri, &scratch.join("fuse-rw"), false);
    let mnt = scratch.join("mnt-rw");
    fuse.mount(&mnt, false);
    let mut expect: Vec<(String, String)> = files
        .iter()
        .filter(|(f, _)| f != "dir/small")
        .cloned()
        .collect();
    std::fs::remove_file(mnt.join("dir/small")).unwrap();
    std::fs::create_dir_all(mnt.join("new")).unwrap();
    for (file, len, seed) in [
        ("dir/odd", 4097 * 5, 1),
        ("new/a.bin", 700_001, 2),
        ("new/b.bin", 5000, 3),
    ] {
        std::fs::write(mnt.join(file), pseudo_random(len, seed + spec.first as u64)).unwrap();
        expect.retain(|(f, _)| f != file);
        expect.push((file.to_string(), md5_of(&mnt.join(file))));
    }
    umount(&mnt);
    drop(fuse);
    let (_, md5) = export_md5(&uri, scratch);
    assert_eq!(server.stop(), 0);
    let what = format!("{} after an orderly writable session", spec.name);
    assert_superblocks(&members, "clean", events + 2, &what);
    expect.sort();
    Written {
        name: spec.name,
        md5,
        files: expect,
    }
}

/// Writes patterns through `vraid serve --md-writable` with qemu-io (odd
/// offsets and lengths across chunks, the end of the array), then stops
/// the server cleanly, or with SIGKILL when `kill` (the array is then
/// left dirty, refused writable, still served read-only).
fn write_pattern_through_vraid(
    spec: &MdSpec,
    disks: &[PathBuf],
    lost: &[usize],
    m: &Made,
    kill: bool,
    scratch: &Path,
) -> Written {
    let members = present_of(spec, disks, lost);
    let events = examine(members[0])["events"].as_u64().unwrap();
    let server = serve_md_writable(&members);
    let uri = server.uri(&export_of(spec, m));
    let src = scratch.join("pattern.bin");
    std::fs::write(&src, pseudo_random(3 << 20, spec.first as u64)).unwrap();
    let src = src.display();
    qemu_io(
        &uri,
        &[
            format!("write -s {src} 12345 1000000"),
            format!("write -s {src} {} 3145728", (m.size / 2) & !511),
            format!("write -P 0x5a {} 4096", m.size - 4096),
            "write -z 8388608 65536".to_string(),
            "flush".to_string(),
        ],
    );
    let (_, md5) = export_md5(&uri, scratch);
    let what = format!("{} after a writable session", spec.name);
    if kill {
        server.kill();
        assert_superblocks(&members, "active", events + 1, &what);
        let refused = run(
            vraid(&["serve", "--nbd", "127.0.0.1:0", "--md-writable", "--md"])
                .args(members.iter().map(|p| p.as_os_str())),
        );
        let err = String::from_utf8_lossy(&refused.stderr).into_owned();
        assert!(
            !refused.status.success() && err.contains("not stopped cleanly"),
            "{err}"
        );
        let ro = serve_md(&members);
        assert_eq!(
            export_md5(&ro.uri(&export_of(spec, m)), scratch).1,
            md5,
            "{what}"
        );
        assert_eq!(ro.stop(), 0);
    } else {
        assert_eq!(server.stop(), 0);
        assert_superblocks(&members, "clean", events + 2, &what);
    }
    Written {
        name: spec.name,
        md5,
        files: Vec::new(),
    }
}

/// md's write-intent bitmap as one member image holds it (its copy sits
/// `bitmap_offset` sectors from the 1.x superblock, 4 KiB after a 0.90
/// one): the bits set, bytes per bit, events and events_cleared.
struct HostBitmap {
    set: Vec<u64>,
    chunk: u64,
    events: u64,
    events_cleared: u64,
}

fn host_bitmap(member: &Path) -> HostBitmap {
    host_bitmap_at(member, bitmap_at(member))
}

/// Byte offset of `member`'s bitmap copy.
fn bitmap_at(member: &Path) -> u64 {
    let e = examine(member);
    let sb_at = e["super_offset"].as_u64().unwrap() * 512;
    match e["version"].as_str().unwrap() {
        "0.90" => sb_at + 4096,
        _ => sb_at
            .checked_add_signed(e["bitmap_offset"].as_i64().unwrap() * 512)
            .unwrap(),
    }
}

fn host_bitmap_at(member: &Path, at: u64) -> HostBitmap {
    let sb = peek(member, at, 256);
    let le32 = |o: usize| u32::from_le_bytes(sb[o..o + 4].try_into().unwrap()) as u64;
    let le64 = |o: usize| u64::from_le_bytes(sb[o..o + 8].try_into().unwrap());
    assert_eq!(le32(0), 0x6d74_6962, "{}: bitmap magic", member.display());
    let chunk = le32(52);
    let bits = le64(40).div_ceil(chunk / 512);
    let bytes = peek(member, at + 256, bits.div_ceil(8) as usize);
    HostBitmap {
        set: (0..bits)
            .filter(|b| bytes[(b / 8) as usize] & (1 << (b % 8)) != 0)
            .collect(),
        chunk,
        events: le64(24),
        events_cleared: le64(32),
    }
}

/// A copy of `spec`'s members with member 0's bitmap magic broken:
/// `--md-writable` refuses it in one line naming the bitmap, nothing is
/// written, and read-only serving still gives md's bytes.
fn check_corrupt_bitmap_refused(spec: &MdSpec, disks: &[PathBuf], m: &Made, scratch: &Path) {
    let copies: Vec<PathBuf> = members_of(spec, disks)
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let to = scratch.join(format!("corrupt-bitmap-{i}.img"));
            run_ok(Command::new("cp").arg("--sparse=always").arg(p).arg(&to));
            to
        })
        .collect();
    poke(&copies[0], bitmap_at(&copies[0]), b"junk");
    let refs: Vec<&PathBuf> = copies.iter().collect();
    let before: Vec<String> = copies.iter().map(|p| md5_of(p)).collect();
    let out = run(
        vraid(&["serve", "--nbd", "127.0.0.1:0", "--md-writable", "--md"])
            .args(copies.iter().map(|p| p.as_os_str())),
    );
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains("not writable: bitmap: ") && err.contains("magic") && !err.contains("panick"),
        "{err}"
    );
    let after: Vec<String> = copies.iter().map(|p| md5_of(p)).collect();
    assert_eq!(before, after, "a refused writable start changed a member");
    let ro = serve_md(&refs);
    assert_eq!(export_md5(&ro.uri(&export_of(spec, m)), scratch).1, m.md5);
    assert_eq!(ro.stop(), 0);
    for c in copies {
        let _ = std::fs::remove_file(c);
    }
}

/// An orderly writable session on a bitmap array: the bitmap's events
/// follow the superblocks' (E+2, events_cleared too) and the bits set
/// before it are the bits set after it.
fn write_bitmap_array_through_vraid(
    spec: &MdSpec,
    disks: &[PathBuf],
    m: &Made,
    scratch: &Path,
) -> Written {
    let members = members_of(spec, disks);
    let events = examine(members[0])["events"].as_u64().unwrap();
    let before = host_bitmap(members[0]);
    let w = write_pattern_through_vraid(spec, disks, &[], m, false, scratch);
    for p in &members {
        let b = host_bitmap(p);
        let what = format!("{} bitmap of {}", spec.name, p.display());
        assert_eq!(
            (b.events, b.events_cleared),
            (events + 2, events + 2),
            "{what}"
        );
        assert_eq!(
            b.set, before.set,
            "{what}: the session's bits cleared at close"
        );
    }
    w
}

/// Kills `vraid serve --md-writable` with SIGKILL while nbdcopy is still
/// writing 48 MiB into the RAID-5 `spec` (once bits for 8 bitmap chunks
/// are on member 0), then corrupts one 4 KiB page of parity in a stripe
/// whose bit is set (md's bitmap resync must rewrite it) and one in a
/// stripe whose bit is clear (md must leave it: its first `check` counts
/// exactly those 8 sectors). Returns what md should read and the bits.
fn kill_mid_write_through_vraid(
    spec: &MdSpec,
    disks: &[PathBuf],
    m: &Made,
    scratch: &Path,
) -> (Written, HostBitmap) {
    let members = members_of(spec, disks);
    let events = examine(members[0])["events"].as_u64().unwrap();
    let server = serve_md_writable(&members);
    let uri = server.uri(&export_of(spec, m));
    let src = scratch.join("kill-src.bin");
    std::fs::write(&src, pseudo_random(48 << 20, 77)).unwrap();
    let mut copy = Command::new("nbdcopy")
        .arg(&src)
        .arg(&uri)
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    let at = bitmap_at(members[0]);
    while host_bitmap_at(members[0], at).set.len() < 8 {
        assert!(Instant::now() < deadline, "no bitmap bits set within 120 s");
        assert!(
            copy.try_wait().unwrap().is_none(),
            "nbdcopy ended before the kill"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(
        copy.try_wait().unwrap().is_none(),
        "nbdcopy ended before the kill"
    );
    server.kill();
    let _ = copy.wait();
    let _ = std::fs::remove_file(&src);
    let what = format!("{} after SIGKILL mid-write", spec.name);
    assert_superblocks(&members, "active", events + 1, &what);
    let bits = host_bitmap(members[0]);
    for p in &members[1..] {
        assert_eq!(host_bitmap(p).set, bits.set, "{what}: every member's bits");
    }
    let ro = serve_md(&members);
    let md5 = export_md5(&ro.uri(&export_of(spec, m)), scratch).1;
    assert_eq!(ro.stop(), 0);
    let dirty = bits.set[0];
    let clean = (0..bits.set.last().unwrap() + 40)
        .rev()
        .find(|b| !bits.set.contains(b))
        .unwrap();
    for bit in [dirty, clean] {
        corrupt_parity_page(spec, &members, bit * bits.chunk);
    }
    let w = Written {
        name: spec.name,
        md5,
        files: Vec::new(),
    };
    (w, bits)
}

/// Flips one 4 KiB page of the parity of the left-asymmetric RAID-5
/// stripe at member data byte `at` (md: parity on disk n-1 - stripe mod n).
fn corrupt_parity_page(spec: &MdSpec, members: &[&PathBuf], at: u64) {
    let chunk: u64 = spec.chunk.parse::<u64>().unwrap() * 1024;
    let n = members.len() as u64;
    let parity = (n - 1 - (at / chunk) % n) as usize;
    let data = examine(members[parity])["data_offset"].as_u64().unwrap() * 512;
    let page: Vec<u8> = peek(members[parity], data + at, 4096)
        .iter()
        .map(|b| !b)
        .collect();
    poke(members[parity], data + at, &page);
}

/// The guest's `VRAID-MD-VERIFY NAME MD5 MISMATCH FSCK AFTER_REPAIR`
/// fields of `name`.
fn verified(console: &str, name: &str) -> (String, String, String, String) {
    let line = console
        .lines()
        .filter_map(|l| marked(l, "VRAID-MD-VERIFY "))
        .find(|l| l.split_whitespace().next() == Some(name))
        .unwrap_or_else(|| panic!("guest verified nothing for {name}:\n{console}"));
    let f: Vec<&str> = line.split_whitespace().collect();
    (
        f[1].to_string(),
        f[2].to_string(),
        f[3].to_string(),
        f[4].to_string(),
    )
}

/// The guest's `VRAID-MD-BITMAP NAME BITS DIRTY EVENTS` of `name`.
fn guest_bitmap(console: &str, name: &str) -> (u64, u64, u64) {
    let line = console
        .lines()
        .filter_map(|l| marked(l, "VRAID-MD-BITMAP "))
        .find(|l| l.split_whitespace().next() == Some(name))
        .unwrap_or_else(|| panic!("guest printed no bitmap for {name}:\n{console}"));
    let f: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .map(|x| x.parse().unwrap())
        .collect();
    assert_eq!(f.len(), 3, "{line}");
    (f[0], f[1], f[2])
}

fn writable_specs() -> Vec<MdSpec> {
    let spec = |name, level, layout, metadata, chunk, first, count| MdSpec {
        name,
        level,
        layout,
        metadata,
        chunk,
        first,
        count,
        bitmap: false,
        ext4: true,
        layout_name: None,
        lose: &[],
    };
    vec![
        // RAID-0 has no redundancy: nothing to leave out.
        spec("w0", "0", "-", "1.2", "64", 0, 2),
        MdSpec {
            lose: &[&[0, 1]],
            ..spec("w1", "1", "-", "1.2", "-", 2, 3)
        },
        MdSpec {
            lose: &[&[2]],
            ..spec("w5", "5", "-", "1.2", "64", 5, 4)
        },
        MdSpec {
            lose: &[&[0, 3]],
            ..spec("w6", "6", "-", "1.0", "64", 9, 5)
        },
        MdSpec {
            ext4: false,
            lose: &[&[1]],
            ..spec("w10", "10", "n2", "0.90", "64", 14, 4)
        },
        // Killed mid-write: md's bitmap resync covers what it tore.
        MdSpec {
            ext4: false,
            bitmap: true,
            ..spec("k5", "5", "left-asymmetric", "1.1", "32", 18, 3)
        },
        MdSpec {
            ext4: false,
            bitmap: true,
            lose: &[&[0]],
            ..spec("b1", "1", "-", "1.2", "-", 21, 2)
        },
        // 1.0: the bitmap sits before the superblock, after the data.
        MdSpec {
            ext4: false,
            bitmap: true,
            lose: &[&[1]],
            ..spec("b5", "5", "-", "1.0", "64", 23, 3)
        },
    ]
}

#[test]
fn md_arrays_written_through_vraid_are_assembled_checked_and_fsck_clean_by_linux_md() {
    // Arrange: one boot makes every array; the read-only checks first.
    let specs = writable_specs();
    let dir = scratch_dir("md-writable");
    let disks = sparse_members(dir.path(), 26, DISK_SIZE);
    let console = boot_md_guest(&disks, &specs, dir.path());
    let mut made_by_md = Vec::new();
    for spec in &specs {
        let m = made(&console, spec.name);
        let files = guest_files(&console, spec.name);
        check_served(spec, &disks, &m, &files, dir.path());
        made_by_md.push((m, files));
    }

    // Act: write through vraid (one session killed), then md reads it all.
    let mut killed_bits = None;
    let written: Vec<Written> = specs
        .iter()
        .zip(&made_by_md)
        .map(|(spec, (m, files))| match spec.name {
            "b1" => {
                check_corrupt_bitmap_refused(spec, &disks, m, dir.path());
                write_bitmap_array_through_vraid(spec, &disks, m, dir.path())
            }
            "b5" => write_bitmap_array_through_vraid(spec, &disks, m, dir.path()),
            "k5" => {
                let (w, bits) = kill_mid_write_through_vraid(spec, &disks, m, dir.path());
                killed_bits = Some(bits);
                w
            }
            _ if spec.ext4 => write_ext4_through_vraid(spec, &disks, &[], m, files, dir.path()),
            _ => write_pattern_through_vraid(spec, &disks, &[], m, false, dir.path()),
        })
        .collect();
    let bitmaps: Vec<(&str, HostBitmap)> = specs
        .iter()
        .filter(|s| s.bitmap)
        .map(|s| (s.name, host_bitmap(&disks[s.first])))
        .collect();
    let verify = boot_md_guest_verify(&disks, &specs, dir.path());

    // Assert
    for (name, host) in &bitmaps {
        let (_, dirty, events) = guest_bitmap(&verify, name);
        assert_eq!(
            dirty,
            host.set.len() as u64,
            "{name}: mdadm -X dirty bits\n{verify}"
        );
        assert_eq!(events, host.events, "{name}: mdadm -X events\n{verify}");
    }
    let killed = killed_bits.expect("k5 was killed");
    assert!(!killed.set.is_empty(), "the killed session left bits set");
    for (w, (m, _)) in written.iter().zip(&made_by_md) {
        let (md5, mismatch, fsck, after) = verified(&verify, w.name);
        if w.name == "k5" {
            // md resynced the set bits only: the page of parity torn under
            // a set bit was rewritten, the one under a clear bit was not
            // (RAID-5 counts 8 sectors per 4 KiB page).
            assert_eq!(
                mismatch, "8",
                "k5: first check after the bitmap resync\n{verify}"
            );
            assert_eq!(after, "0", "k5: check after repair\n{verify}");
            assert_eq!(&md5, &w.md5, "k5: md reads what vraid wrote\n{verify}");
            continue;
        }
        let want = if w.md5.is_empty() { &m.md5 } else { &w.md5 };
        assert_eq!(
            &md5, want,
            "{}: md reads what vraid wrote\n{verify}",
            w.name
        );
        let redundant = w.name != "w0";
        let want_mismatch = if redundant { "0" } else { "-" };
        assert_eq!(mismatch, want_mismatch, "{}: md's check\n{verify}", w.name);
        assert_eq!(after, mismatch, "{}: no repair was needed", w.name);
        if !w.files.is_empty() {
            assert_eq!(fsck, "0", "{}: e2fsck -fn in the guest\n{verify}", w.name);
            let mut files = guest_files(&verify, w.name);
            files.sort();
            assert_eq!(files, w.files, "{}: files md's ext4 holds", w.name);
        }
    }
}

/// Degraded arrays for the re-add round trip: each spec's `lose[0]` are
/// the members the host takes away before vraid writes.
fn degraded_specs() -> Vec<MdSpec> {
    let spec = |name, level, chunk, first, count, ext4, lose| MdSpec {
        name,
        level,
        layout: "-",
        metadata: "1.2",
        chunk,
        first,
        count,
        bitmap: true,
        ext4,
        layout_name: None,
        lose,
    };
    vec![
        spec("d1", "1", "-", 0, 3, true, &[&[1]]),
        spec("d5", "5", "64", 3, 4, true, &[&[2]]),
        spec("d6", "6", "64", 7, 5, false, &[&[0, 3]]),
    ]
}

/// The guest's `VRAID-MARKER NAME FIELDS...` lines of `name`, fields split.
fn guest_lines(console: &str, marker: &str, name: &str) -> Vec<Vec<String>> {
    console
        .lines()
        .filter_map(|l| marked(l, marker))
        .map(|l| l.split_whitespace().map(str::to_string).collect::<Vec<_>>())
        .filter(|f| f.first().map(String::as_str) == Some(name))
        .collect()
}

/// One degraded session: written through vraid without `spec.lose[0]`,
/// the bitmap as md keeps it degraded (events E+2, events_cleared kept,
/// no bit cleared), and the stale members given back to vraid left out.
fn write_degraded(
    spec: &MdSpec,
    disks: &[PathBuf],
    m: &Made,
    files: &[(String, String)],
    scratch: &Path,
) -> (Written, HostBitmap) {
    let lost = spec.lose[0];
    let present = present_of(spec, disks, lost);
    let before = host_bitmap(present[0]);
    let w = if spec.ext4 {
        write_ext4_through_vraid(spec, disks, lost, m, files, scratch)
    } else {
        write_pattern_through_vraid(spec, disks, lost, m, false, scratch)
    };
    let after = host_bitmap(present[0]);
    for p in &present {
        let b = host_bitmap(p);
        let what = format!("{} bitmap of {}", spec.name, p.display());
        let want = (before.events + 2, before.events_cleared);
        assert_eq!((b.events, b.events_cleared), want, "{what}");
        assert!(before.set.iter().all(|x| b.set.contains(x)), "{what}");
        assert!(
            b.set.len() > before.set.len(),
            "{what}: the session's bits kept"
        );
        assert_eq!(b.set, after.set, "{what}: every present member's bits");
    }
    // Red team: the stale members given too are left out (events, and
    // the roles the freshest records missing): md's bytes are vraid's.
    let ro = serve_md(&members_of(spec, disks));
    let got = export_md5(&ro.uri(&export_of(spec, m)), scratch).1;
    assert_eq!(got, w.md5, "{}: stale members given back", spec.name);
    assert_eq!(ro.stop(), 0);
    (w, after)
}

/// What the guest read of `w`'s array degraded, recovered and checked.
fn check_readd(console: &str, spec: &MdSpec, w: &Written, host: &HostBitmap) {
    let name = spec.name;
    let deg = &guest_lines(console, "VRAID-MD-DEGRADED ", name)[0];
    assert_eq!(deg[1], w.md5, "{name}: md reads it degraded\n{console}");
    let fsck = if spec.ext4 { "0" } else { "-" };
    assert_eq!(deg[2], fsck, "{name}: e2fsck degraded\n{console}");
    assert_eq!(
        deg[3],
        spec.lose[0].len().to_string(),
        "{name}: md degraded"
    );
    let (_, dirty, events) = guest_bitmap(console, name);
    assert_eq!(
        (dirty, events),
        (host.set.len() as u64, host.events),
        "{name}"
    );
    let readd = guest_lines(console, "VRAID-MD-READD ", name);
    eprintln!("{name}: degraded {deg:?}, bitmap dirty {dirty} events {events}, re-add {readd:?}");
    assert_eq!(readd.len(), spec.lose[0].len(), "{name}\n{console}");
    for r in &readd {
        let sectors: u64 = r[2].parse().unwrap();
        // Recovery copies the set chunks only (md's Bitmap_sync); 1 MiB
        // for md's superblock and bitmap writes.
        let bound = dirty * host.chunk + (1 << 20);
        assert!(
            sectors > 0 && sectors * 512 <= bound && sectors * 512 < DISK_SIZE / 4,
            "{name}: {} got {sectors} sectors, dirty bits allow {bound} bytes\n{console}",
            r[1]
        );
    }
    let (md5, mismatch, fsck_after, after) = verified(console, name);
    assert_eq!(md5, w.md5, "{name}: md reads it after recovery\n{console}");
    assert_eq!(
        (mismatch.as_str(), after.as_str()),
        ("0", "0"),
        "{name}: check\n{console}"
    );
    assert_eq!(fsck_after, fsck, "{name}: e2fsck after recovery\n{console}");
    if spec.ext4 {
        let mut files = guest_files(console, name);
        files.sort();
        files.dedup();
        assert_eq!(files, w.files, "{name}: files md's ext4 holds");
    }
}

#[test]
fn md_degraded_arrays_written_through_vraid_are_re_added_and_recovered_by_linux_md() {
    // Arrange: md makes RAID-1, 5 and 6 with internal bitmaps.
    let specs = degraded_specs();
    let dir = scratch_dir("md-degraded");
    let disks = sparse_members(dir.path(), 12, DISK_SIZE);
    let console = boot_md_guest(&disks, &specs, dir.path());

    // Act: vraid writes each without its lost members; md assembles the
    // rest, reads it, re-adds the stale ones and recovers them.
    let written: Vec<(Written, HostBitmap)> = specs
        .iter()
        .map(|spec| {
            let m = made(&console, spec.name);
            let files = guest_files(&console, spec.name);
            write_degraded(spec, &disks, &m, &files, dir.path())
        })
        .collect();
    let stale: Vec<String> = specs
        .iter()
        .map(|s| {
            let roles: Vec<String> = s.lose[0].iter().map(|r| r.to_string()).collect();
            format!("{}:{}", s.name, roles.join("+"))
        })
        .collect();
    let mode = format!(" VRAID_MD_MODE=readd VRAID_MD_STALE={}", stale.join(","));
    let readd = boot_md_guest_try(&disks, &specs, dir.path(), &mode, 1);

    // Assert
    for (spec, (w, host)) in specs.iter().zip(&written) {
        check_readd(&readd, spec, w, host);
    }
}
