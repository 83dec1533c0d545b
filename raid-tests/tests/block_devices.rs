//! Members that are block devices (loop devices over files): size comes from
//! the BLKGETSIZE64 ioctl, I/O is O_DIRECT on the device.

use std::path::PathBuf;
use std::process::Command;

use raid_tests::*;

/// Loop devices detached on drop.
struct Loops(Vec<String>);

impl Drop for Loops {
    fn drop(&mut self) {
        for dev in &self.0 {
            let _ = Command::new("losetup").arg("-d").arg(dev).status();
        }
    }
}

#[test]
fn raid5_on_loop_devices_serves_and_survives_restart() {
    // Arrange
    let dir = scratch_dir("loopdev");
    let mut loops = Loops(Vec::new());
    for i in 0..3 {
        let f = dir.path().join(format!("backing{i}.img"));
        std::fs::File::create(&f)
            .unwrap()
            .set_len(40 << 20)
            .unwrap();
        let dev = run_ok(Command::new("losetup").args(["--find", "--show"]).arg(&f));
        loops.0.push(dev.trim().to_string());
    }
    let members: Vec<PathBuf> = loops.0.iter().map(PathBuf::from).collect();
    create_array(5, "64K", "1G", "blk", &members);
    let args: Vec<&str> = loops.0.iter().map(String::as_str).collect();

    // Act
    let server = Server::start(&args);
    let info = run_ok(Command::new("nbdinfo").arg("--json").arg(server.uri("blk")));
    qemu_io(
        &server.uri("blk"),
        &[
            "write -P 0x3c 100000 777777".into(),
            "write -P 0x3d 5000000 131072".into(),
        ],
    );
    assert_eq!(server.stop(), 0);
    let server = Server::start(&args);

    // Assert
    let v: serde_json::Value = serde_json::from_str(&info).unwrap();
    let size = v["exports"][0]["export-size"].as_u64().unwrap();
    // 2 data members x (40 MiB device - metadata area): the ioctl size, not --member-size.
    assert!(
        size > 2 * (36 << 20) && size <= 2 * (40 << 20),
        "size {size}"
    );
    qemu_io(
        &server.uri("blk"),
        &[
            "read -P 0x3c 100000 777777".into(),
            "read -P 0x3d 5000000 131072".into(),
        ],
    );
    assert_eq!(examine(&members[1])["role"], 1);
    assert_eq!(server.stop(), 0);
}
