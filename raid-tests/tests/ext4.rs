//! A real ext4 filesystem on a RAID-5 volume: nbdfuse exposes the export as a
//! file, losetup turns it into a block device, mkfs.ext4 + mount + files +
//! umount + e2fsck, then a server restart and the files are checked again.
//! (This kernel has no nbd module, so nbdfuse stands in for nbd-client.)

use std::path::{Path, PathBuf};
use std::process::Command;

use raid_tests::fuse_loop::FuseLoop;
use raid_tests::*;

fn write_files(root: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut files = Vec::new();
    for i in 0..24u64 {
        let len = 1000 + (i as usize * 377_000) % (3 << 20);
        let data = pseudo_random(len, 1000 + i);
        let path = root.join(format!("dir{}/file{i}.bin", i % 4));
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, &data).unwrap();
        files.push((path, data));
    }
    files
}

fn check_files(files: &[(PathBuf, Vec<u8>)]) {
    for (path, data) in files {
        let got = std::fs::read(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
        assert!(got == *data, "{} differs", path.display());
    }
}

#[test]
fn ext4_on_raid5_through_nbdfuse_survives_restart() {
    // Arrange
    let dir = scratch_dir("ext4");
    let paths = member_paths(dir.path(), 4);
    create_array(5, "64K", "64M", "vol0", &paths);
    let member_args: Vec<&str> = paths.iter().map(|p| p.to_str().unwrap()).collect();
    let mnt = dir.path().join("fuse");
    let fsdir = dir.path().join("fuse.fs");
    std::fs::create_dir_all(&fsdir).unwrap();

    // Act: mkfs, mount, write, unmount, fsck.
    let server = Server::start(&member_args);
    let files = {
        let fl = FuseLoop::attach(&server.uri("vol0"), &mnt);
        run_ok(
            Command::new("mkfs.ext4")
                .args(["-q", "-F", "-E", "stride=16,stripe_width=48"])
                .arg(fl.dev()),
        );
        run_ok(Command::new("mount").arg(fl.dev()).arg(&fsdir));
        let files = write_files(&fsdir);
        run_ok(&mut Command::new("sync"));
        check_files(&files);
        run_ok(Command::new("umount").arg(&fsdir));
        run_ok(Command::new("e2fsck").args(["-f", "-n"]).arg(fl.dev()));
        files
            .into_iter()
            .map(|(p, d)| (p.strip_prefix(&fsdir).unwrap().to_path_buf(), d))
            .collect::<Vec<_>>()
    };
    assert_eq!(server.stop(), 0);

    // Assert: after a restart the filesystem is clean and every file intact.
    let server = Server::start(&member_args);
    let fl = FuseLoop::attach(&server.uri("vol0"), &mnt);
    run_ok(Command::new("e2fsck").args(["-f", "-n"]).arg(fl.dev()));
    run_ok(
        Command::new("mount")
            .args(["-o", "ro"])
            .arg(fl.dev())
            .arg(&fsdir),
    );
    let files: Vec<_> = files.into_iter().map(|(p, d)| (fsdir.join(p), d)).collect();
    check_files(&files);
    run_ok(Command::new("umount").arg(&fsdir));
    drop(fl);
    assert_eq!(server.stop(), 0);
}
