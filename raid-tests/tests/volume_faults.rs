//! Volume faults and the volatile write cache seen by real clients:
//! qemu-io and fio over NBD get EIO exactly where a volume rule says, a
//! stall times out a libblkio (virtio-blk) request until it is cleared, bad sectors
//! heal when rewritten, a torn write lands a prefix, a stalled request
//! resumes after `vraid fault clear`; unflushed writes vanish in a power
//! cut while flushed ones stay; the vhost-user-blk export sees the same
//! rules (libblkio); ext4 over nbdfuse + loop keeps every fsynced file and
//! stays e2fsck-clean across 20 random-subset power cuts, while files
//! renamed into place without fsync are lost (the harness finds the bug). Everything
//! through the control verbs and `status`.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use raid_tests::fuse_loop::FuseLoop;
use raid_tests::*;
use serde_json::Value;

/// A RAID-1 of two sparse 64M members served with its own control socket.
struct Vol {
    _dir: tempfile::TempDir,
    control: PathBuf,
    server: Server,
    uri: String,
}

fn serve_vol(test: &str, extra: &[&str]) -> Vol {
    let dir = scratch_dir(test);
    let paths = member_paths(dir.path(), 2);
    create_array(1, "64K", "64M", "vol0", &paths);
    let control = dir.path().join("control.sock");
    let mut args: Vec<&str> = paths.iter().map(|p| p.to_str().unwrap()).collect();
    args.extend(["--control", control.to_str().unwrap()]);
    args.extend(extra);
    let server = Server::start(&args);
    let uri = server.uri("vol0");
    Vol {
        _dir: dir,
        control,
        server,
        uri,
    }
}

/// `vraid fault add vol0 --volume ARGS...`; returns the rule id.
fn add_volume_fault(control: &Path, args: &[&str]) -> u64 {
    let mut all = vec!["fault", "add", "vol0", "--volume"];
    all.extend(args);
    let out = vraid_ctl_ok(control, &all);
    // "fault ID added on volume vol0"
    out.split_whitespace()
        .nth(1)
        .and_then(|id| id.parse().ok())
        .unwrap_or_else(|| panic!("no rule id in {out:?}"))
}

fn volume_faults(control: &Path) -> Vec<Value> {
    let out = vraid_ctl_ok(control, &["fault", "list", "--json"]);
    let v: Value = serde_json::from_str(&out).unwrap();
    v["volume_faults"].as_array().unwrap().clone()
}

fn hits(control: &Path, id: u64) -> u64 {
    let rules = volume_faults(control);
    let rule = rules.iter().find(|f| f["id"] == id);
    rule.unwrap_or_else(|| panic!("no rule {id} in {rules:?}"))["hits"]
        .as_u64()
        .unwrap()
}

/// Polls `status` until `f(volume entry)` holds; panics after `secs`.
fn wait_status(control: &Path, secs: u64, what: &str, f: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        let v = volume_status(control, "vol0");
        if f(&v) {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "{what} not seen within {secs}s: {v}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// nbdsh (libnbd's shell) running `script` against `uri`; its stdout.
fn nbdsh(uri: &str, script: &str) -> Vec<u8> {
    // nbdsh runs `python3` from PATH; the `nbd` module is installed for
    // the distribution's interpreter, which a pyenv shim may shadow.
    let path = std::env::var("PATH").unwrap_or_default();
    let mut c = Command::new("nbdsh");
    c.env("PATH", format!("/usr/bin:{path}"));
    let out = run(c.args(["-u", uri, "-c", script]));
    assert!(
        out.status.success(),
        "nbdsh: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// `len` bytes at `at`, read without sending a FLUSH (qemu-io sends one
/// when it closes the export, even after reads only).
fn read_unflushed(uri: &str, at: u64, len: usize) -> Vec<u8> {
    let script =
        format!("import sys\nsys.stdout.buffer.write(h.pread({len}, {at}))\nh.shutdown()\n");
    nbdsh(uri, &script)
}

/// Writes `(offset, len, byte)` in order with nbdsh (libnbd), one request
/// at a time and no FLUSH, not even at disconnect (qemu-io flushes when
/// it closes the export, whatever its cache mode), so they stay in a
/// volatile cache.
fn write_unflushed(uri: &str, writes: &[(u64, usize, u8)]) {
    let mut script = String::new();
    for (at, len, byte) in writes {
        script.push_str(&format!("h.pwrite(bytes([{byte}]) * {len}, {at})\n"));
    }
    script.push_str("h.shutdown()\n");
    nbdsh(uri, &script);
}

fn powercut(control: &Path, extra: &[&str]) -> Value {
    let mut args = vec!["fault", "powercut", "vol0", "--json"];
    args.extend(extra);
    serde_json::from_str(&vraid_ctl_ok(control, &args)).unwrap()
}

#[test]
fn volume_error_rule_fails_reads_exactly_in_its_range() {
    // Arrange
    let v = serve_vol("vf-error", &[]);
    qemu_io(&v.uri, &["write -P 0x33 0 4M".into()]);
    let id = add_volume_fault(
        &v.control,
        &[
            "--kind", "error", "--op", "read", "--offset", "1M", "--length", "64K",
        ],
    );
    // Act
    let inside = qemu_io_try(&v.uri, &["read -P 0x33 1040K 4K"]);
    let edge = qemu_io_try(&v.uri, &["read -P 0x33 1020K 8K"]);
    let before = qemu_io_try(&v.uri, &["read -P 0x33 1020K 4K"]);
    let last = qemu_io_try(&v.uri, &["read -P 0x33 1084K 4K"]);
    let beyond = qemu_io_try(&v.uri, &["read -P 0x33 1088K 4K", "read -P 0x33 2M 64K"]);
    let write = qemu_io_try(&v.uri, &["write -P 0x33 1M 4K"]);
    // Assert
    assert!(
        !inside.0 && inside.1.contains("Input/output error"),
        "{}",
        inside.1
    );
    assert!(!edge.0, "a read overlapping the range fails: {}", edge.1);
    assert!(before.0, "{}", before.1);
    assert!(!last.0, "the range's last block fails: {}", last.1);
    assert!(beyond.0, "the range ends at 1M+64K: {}", beyond.1);
    assert!(write.0, "op read spares writes: {}", write.1);
    assert_eq!(hits(&v.control, id), 3);
    let st = volume_status(&v.control, "vol0");
    assert_eq!(st["volume_faults"]["rules"], 1);
    // The client saw the errors; the members underneath saw none.
    assert_eq!(st["io"]["errors"], 3, "{st}");
    let members = st["members"].as_array().unwrap();
    assert!(members.iter().all(|m| m["io"]["errors"] == 0), "{st}");
    vraid_ctl_ok(&v.control, &["fault", "clear", &id.to_string()]);
    assert!(qemu_io_try(&v.uri, &["read -P 0x33 1040K 4K"]).0);
    assert!(volume_faults(&v.control).is_empty());
}

/// Runs fio over `0..2M` of the export, 4 KiB sequential `rw`, going on
/// after errors of that kind; returns (requests that failed, first errno).
fn fio_errors(uri: &str, rw: &str) -> (u64, u64) {
    let out = run(Command::new("fio").args([
        "--name=eio",
        "--ioengine=nbd",
        &format!("--uri={uri}"),
        &format!("--rw={rw}"),
        "--bs=4k",
        "--size=2M",
        &format!(
            "--continue_on_error={}",
            if rw == "read" { "read" } else { "write" }
        ),
        "--output-format=json",
    ]));
    let text = String::from_utf8_lossy(&out.stdout);
    let v: Value = serde_json::from_str(&text[text.find('{').unwrap()..])
        .unwrap_or_else(|e| panic!("fio JSON: {e}: {text}"));
    let job = &v["jobs"][0];
    (
        job["total_err"].as_u64().unwrap_or_else(|| panic!("{job}")),
        job["first_error"].as_u64().unwrap_or(0),
    )
}

#[test]
fn fio_gets_eio_exactly_where_the_rules_say() {
    // Arrange: a read rule on 1M..+64K and a write rule on 1536K..+8K.
    let v = serve_vol("vf-fio", &[]);
    qemu_io(&v.uri, &["write -P 0x21 0 2M".into()]);
    let read_rule = add_volume_fault(
        &v.control,
        &[
            "--kind", "error", "--op", "read", "--offset", "1M", "--length", "64K",
        ],
    );
    let write_rule = add_volume_fault(
        &v.control,
        &[
            "--kind", "error", "--op", "write", "--offset", "1536K", "--length", "8K",
        ],
    );
    // Act
    let reads = fio_errors(&v.uri, "read");
    let writes = fio_errors(&v.uri, "write");
    // Assert: the 16 reads of the read range failed with EIO, the 2
    // writes of the write range too, nothing else.
    assert_eq!(reads, (16, libc::EIO as u64));
    assert_eq!(writes, (2, libc::EIO as u64));
    assert_eq!(hits(&v.control, read_rule), 16);
    assert_eq!(hits(&v.control, write_rule), 2);
    // The failed writes landed nothing: the old bytes are still there.
    assert!(qemu_io_try(&v.uri, &["read -P 0x21 1536K 8K"]).0);
    vraid_ctl_ok(&v.control, &["fault", "clear"]);
    assert_eq!(fio_errors(&v.uri, "read"), (0, 0));
}

#[test]
fn bad_sectors_fail_reads_until_rewritten() {
    // Arrange
    let v = serve_vol("vf-dust", &[]);
    let id = add_volume_fault(
        &v.control,
        &["--kind", "bad-sector", "--offset", "8M", "--length", "1K"],
    );
    assert_eq!(
        volume_status(&v.control, "vol0")["volume_faults"]["bad_bytes"],
        1024
    );
    // Act + Assert: both sectors bad, then heal one by one.
    assert!(!qemu_io_try(&v.uri, &["read 8M 512"]).0);
    assert!(!qemu_io_try(&v.uri, &["read 8M 4K"]).0);
    assert!(
        qemu_io_try(&v.uri, &["read 8193K 512"]).0,
        "the next sector is good"
    );
    qemu_io(&v.uri, &["write -P 0x44 8M 512".into()]);
    assert!(qemu_io_try(&v.uri, &["read -P 0x44 8M 512"]).0);
    assert!(
        !qemu_io_try(&v.uri, &["read 8M 1K"]).0,
        "the second sector is still bad"
    );
    qemu_io(&v.uri, &["write -P 0x45 8M 1K".into()]);
    assert!(qemu_io_try(&v.uri, &["read -P 0x45 8M 1K"]).0);
    assert_eq!(
        volume_status(&v.control, "vol0")["volume_faults"]["bad_bytes"],
        0
    );
    assert_eq!(hits(&v.control, id), 3);
}

#[test]
fn torn_write_lands_a_prefix_of_its_blocks_then_fails() {
    // Arrange
    let v = serve_vol("vf-torn", &[]);
    qemu_io(&v.uri, &["write -P 0x00 16M 64K".into()]);
    let id = add_volume_fault(&v.control, &["--kind", "torn", "--count", "1"]);
    // Act
    let torn = qemu_io_try(&v.uri, &["write -P 0xab 16M 64K"]);
    // Assert: EIO; the first block landed, the last did not.
    assert!(!torn.0, "{}", torn.1);
    assert_eq!(hits(&v.control, id), 1);
    assert!(qemu_io_try(&v.uri, &["read -P 0xab 16M 4K"]).0);
    assert!(qemu_io_try(&v.uri, &["read -P 0x00 16444K 4K"]).0);
    let data = read_export(&v.uri, v._dir.path());
    let region = &data[16 << 20..(16 << 20) + (64 << 10)];
    let landed = region.iter().take_while(|&&b| b == 0xab).count();
    assert_eq!(landed % 4096, 0, "whole blocks land");
    assert!(region[landed..].iter().all(|&b| b == 0));
    // The rule spent its count: the retry lands whole.
    assert!(qemu_io_try(&v.uri, &["write -P 0xab 16M 64K", "read -P 0xab 16M 64K"]).0);
}

#[test]
fn stalled_write_resumes_once_after_fault_clear() {
    // Arrange
    let v = serve_vol("vf-stall", &[]);
    let id = add_volume_fault(
        &v.control,
        &[
            "--kind", "stall", "--op", "write", "--offset", "4M", "--length", "4K",
        ],
    );
    let mut writer = qemu_io_command(&v.uri, &["write -P 0x5a 4M 4K"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Act: the write is held (status says so), reads elsewhere still pass.
    wait_status(&v.control, 30, "a stalled request", |s| {
        s["volume_faults"]["stalled"] == 1
    });
    assert!(
        writer.try_wait().unwrap().is_none(),
        "the writer is still waiting"
    );
    assert!(
        qemu_io_try(&v.uri, &["read -P 0 4M 4K"]).0,
        "nothing landed while stalled"
    );
    vraid_ctl_ok(&v.control, &["fault", "clear", &id.to_string()]);
    // Assert
    let out = writer.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(qemu_io_try(&v.uri, &["read -P 0x5a 4M 4K"]).0);
    assert_eq!(
        volume_status(&v.control, "vol0")["volume_faults"]["stalled"],
        0
    );
}

#[test]
fn delay_and_readonly_rules_act_on_the_client_and_are_counted() {
    let v = serve_vol("vf-delay", &[]);
    let delay = add_volume_fault(
        &v.control,
        &["--kind", "delay", "--delay", "20ms", "--op", "read"],
    );
    let ro = add_volume_fault(&v.control, &["--kind", "readonly", "--offset", "32M"]);
    assert!(qemu_io_try(&v.uri, &["write -P 0x61 0 4K", "read -P 0x61 0 4K"]).0);
    let refused = qemu_io_try(&v.uri, &["write -P 0x62 40M 4K"]);
    assert!(!refused.0, "{}", refused.1);
    assert!(hits(&v.control, delay) >= 1);
    assert_eq!(hits(&v.control, ro), 1);
    let text = vraid_ctl_ok(&v.control, &["fault", "list"]);
    assert!(
        text.contains("readonly") && text.contains("volume"),
        "{text}"
    );
}

#[test]
fn power_cut_drops_unflushed_writes_and_keeps_flushed_ones() {
    // Arrange: a flushed write, then the volume volatile and an unflushed
    // overwrite of half of it plus a new region.
    let v = serve_vol("vf-powercut", &[]);
    vraid_ctl_ok(&v.control, &["set", "vol0", "--cache", "volatile"]);
    qemu_io(&v.uri, &["write -P 0x11 0 128K".into(), "flush".into()]);
    write_unflushed(&v.uri, &[(0, 64 << 10, 0x22), (1 << 20, 64 << 10, 0x23)]);
    let st = wait_status(&v.control, 5, "dirty writes", |s| {
        s["cache"]["dirty_writes"] == 2
    });
    assert_eq!(st["cache"]["mode"], "volatile");
    assert_eq!(
        read_unflushed(&v.uri, 0, 128 << 10),
        [[0x22; 64 << 10], [0x11; 64 << 10]].concat(),
        "reads see the cache"
    );
    assert_eq!(
        read_unflushed(&v.uri, 1 << 20, 64 << 10),
        vec![0x23; 64 << 10]
    );
    // Act
    let cut = powercut(&v.control, &["--keep", "none", "--seed", "3"]);
    // Assert
    assert_eq!(cut["dropped_writes"], 2, "{cut}");
    assert_eq!(cut["dropped_bytes"], 128 << 10, "{cut}");
    assert_eq!(cut["seed"], 3);
    let back = qemu_io_try(&v.uri, &["read -P 0x11 0 128K", "read -P 0 1M 64K"]);
    assert!(back.0, "old data back, new region empty: {}", back.1);
    let st = volume_status(&v.control, "vol0");
    assert_eq!(st["cache"]["powercuts"], 1);
    assert_eq!(st["cache"]["dirty_writes"], 0);
    assert_eq!(st["cache"]["last_powercut"]["keep"], "none");
    let text = vraid_ctl_ok(&v.control, &["status"]);
    assert!(
        text.contains("write cache: volatile") && text.contains("1 power cuts dropped 2 writes"),
        "{text}"
    );
    // The volume goes on from there, still volatile.
    qemu_io(&v.uri, &["write -P 0x33 0 4K".into(), "flush".into()]);
    assert_eq!(powercut(&v.control, &[])["dropped_writes"], 0);
    assert!(qemu_io_try(&v.uri, &["read -P 0x33 0 4K"]).0);
}

#[test]
fn ordered_prefix_power_cut_keeps_the_oldest_writes_in_order() {
    // Arrange: eight unflushed writes to distinct places, in order.
    let v = serve_vol("vf-prefix", &[]);
    vraid_ctl_ok(&v.control, &["set", "vol0", "--cache", "volatile"]);
    let writes: Vec<(u64, usize, u8)> = (1..=8u8)
        .map(|i| (u64::from(i) * (2 << 20), 4096, i))
        .collect();
    write_unflushed(&v.uri, &writes);
    // Act
    let cut = powercut(&v.control, &["--keep", "ordered-prefix", "--seed", "11"]);
    // Assert: the first `kept` writes are there, the others are not.
    let kept = cut["kept_writes"].as_u64().unwrap();
    assert_eq!(kept + cut["dropped_writes"].as_u64().unwrap(), 8, "{cut}");
    // Seed 11 cuts inside the sequence (3 kept): both sides are checked.
    assert!((1..8).contains(&kept), "{cut}");
    for i in 1..=8u64 {
        let want = if i <= kept { i } else { 0 };
        let r = qemu_io_try(&v.uri, &[format!("read -P {want} {}M 4K", i * 2)]);
        assert!(r.0, "write {i} (kept {kept}): {}", r.1);
    }
}

#[test]
fn writethrough_switch_writes_the_cache_back_so_a_power_cut_loses_nothing() {
    let v = serve_vol("vf-switch", &[]);
    vraid_ctl_ok(
        &v.control,
        &["set", "vol0", "--cache", "volatile", "--cache-size", "1M"],
    );
    let writes: Vec<(u64, usize, u8)> = (0..12)
        .map(|i| (i * (256 << 10), 256 << 10, 0x77))
        .collect();
    write_unflushed(&v.uri, &writes);
    // More than the budget: the oldest went to the volume already.
    let st = volume_status(&v.control, "vol0");
    assert!(
        st["cache"]["dirty_bytes"].as_u64().unwrap() <= 1 << 20,
        "{st}"
    );
    vraid_ctl_ok(&v.control, &["set", "vol0", "--cache", "writethrough"]);
    assert_eq!(powercut(&v.control, &[])["dropped_writes"], 0);
    assert!(qemu_io_try(&v.uri, &["read -P 0x77 0 3M"]).0);
}

#[test]
fn bad_volume_fault_and_cache_parameters_get_clear_errors() {
    let v = serve_vol("vf-badparams", &[]);
    for (args, needle) in [
        (
            vec!["fault", "add", "vol0", "--volume", "--kind", "offline"],
            "member fault",
        ),
        (
            vec!["fault", "add", "vol0", "0", "--kind", "stall"],
            "volume fault",
        ),
        (
            vec![
                "fault", "add", "vol0", "--volume", "--kind", "torn", "--op", "read",
            ],
            "never fires",
        ),
        (
            vec![
                "fault",
                "add",
                "vol0",
                "--volume",
                "--kind",
                "error",
                "--probability",
                "2",
            ],
            "probability",
        ),
        (vec!["fault", "powercut", "nosuch"], "unknown volume"),
        (vec!["set", "vol0", "--cache-size", "1K"], "minimum"),
    ] {
        let out = vraid_ctl(&v.control, &args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} succeeded");
        assert!(err.contains(needle), "{args:?}: {err}");
    }
    let raw = control_request(
        &v.control,
        br#"{"jsonrpc":"2.0","id":1,"method":"fault.powercut","params":{"volume":"vol0","keep":"most"}}"#,
    );
    assert_eq!(raw["error"]["code"], -32602, "{raw}");
    let raw = control_request(
        &v.control,
        br#"{"jsonrpc":"2.0","id":2,"method":"fault.add_volume","params":{"volume":"vol0","kind":"error","offset":18446744073709551615,"length":2}}"#,
    );
    assert_eq!(raw["error"]["code"], -32602, "{raw}");
    // The daemon is fine.
    assert!(qemu_io_try(&v.uri, &["write -P 1 0 4K", "read -P 1 0 4K"]).0);
    assert!(v.server.log().find("panicked").is_none());
}

#[test]
fn config_sets_the_cache_and_start_up_volume_faults() {
    let dir = scratch_dir("vf-config");
    let paths = member_paths(dir.path(), 2);
    create_array(1, "64K", "64M", "vol0", &paths);
    let control = dir.path().join("control.sock");
    let config = dir.path().join("vraid.toml");
    std::fs::write(
        &config,
        format!(
            "[server]\ncontrol = {:?}\n\n[[volume]]\nname = \"vol0\"\nlevel = 1\nmembers = [{:?}, {:?}]\n\
             cache = \"volatile\"\ncache_size = \"8M\"\n\n[[volume.fault]]\nvolume = true\nkind = \"error\"\n\
             op = \"read\"\noffset = \"1M\"\nlength = 4096\n",
            control, paths[0], paths[1]
        ),
    )
    .unwrap();
    let server = Server::start(&["--config", config.to_str().unwrap()]);
    let uri = server.uri("vol0");
    let st = volume_status(&control, "vol0");
    assert_eq!(st["cache"]["mode"], "volatile");
    assert_eq!(st["cache"]["capacity"], 8 << 20);
    assert!(!qemu_io_try(&uri, &["read 1M 4K"]).0);
    assert!(qemu_io_try(&uri, &["read 2M 4K"]).0);
    assert_eq!(volume_faults(&control).len(), 1);
}

/// A minimal libblkio (virtio-blk-vhost-user) client: one queue, one
/// mapped buffer, one request at a time.
struct Blk {
    blkio: blkio::Blkio,
    queue: blkio::Blkioq,
    region: blkio::MemoryRegion,
}

impl Blk {
    fn connect(sock: &Path) -> Blk {
        let mut blkio = blkio::Blkio::new("virtio-blk-vhost-user").unwrap();
        blkio.set_str("path", sock.to_str().unwrap()).unwrap();
        blkio.connect().unwrap();
        blkio.set_i32("num-queues", 1).unwrap();
        let mut started = blkio.start().unwrap();
        let region = blkio.alloc_mem_region(1 << 20).unwrap();
        blkio.map_mem_region(&region).unwrap();
        let queue = started.queues.remove(0);
        Blk {
            blkio,
            queue,
            region,
        }
    }

    fn buf(&mut self) -> &mut [u8] {
        // SAFETY: the region is `len` bytes libblkio mapped for us; it
        // lives as long as `self.blkio`, and no request is in flight while
        // the slice is borrowed (every method waits for its completion).
        unsafe { std::slice::from_raw_parts_mut(self.region.addr as *mut u8, self.region.len) }
    }

    /// Waits for the one request in flight; its `ret` (0 or -errno).
    fn reap(&mut self) -> i32 {
        let mut slot = [std::mem::MaybeUninit::<blkio::Completion>::uninit()];
        let mut timeout = Duration::from_secs(30);
        let got = self
            .queue
            .do_io(&mut slot, 1, Some(&mut timeout), None)
            .unwrap();
        assert_eq!(got, 1, "no completion within 30 s");
        // SAFETY: do_io initialised the first `got` (1) completions.
        unsafe { slot[0].assume_init_ref() }.ret
    }

    fn write(&mut self, offset: u64, data: &[u8]) -> i32 {
        self.buf()[..data.len()].copy_from_slice(data);
        let ptr = self.region.addr as *const u8;
        let flags = blkio::ReqFlags::empty();
        self.queue.write(offset, ptr, data.len(), 0, flags);
        self.reap()
    }

    fn read(&mut self, offset: u64, len: usize) -> Result<Vec<u8>, i32> {
        let ptr = self.region.addr as *mut u8;
        self.queue
            .read(offset, ptr, len, 0, blkio::ReqFlags::empty());
        match self.reap() {
            0 => Ok(self.buf()[..len].to_vec()),
            ret => Err(ret),
        }
    }
}

impl Drop for Blk {
    fn drop(&mut self) {
        self.blkio.unmap_mem_region(&self.region);
        self.blkio.free_mem_region(&self.region);
    }
}

#[test]
fn the_vhost_user_blk_export_sees_volume_faults_and_the_volatile_cache() {
    // Arrange
    let dir = scratch_dir("vf-vhost");
    let sock = dir.path().join("vol0.sock");
    let v = serve_vol(
        "vf-vhost-vol",
        &["--vhost-user-blk", sock.to_str().unwrap()],
    );
    wait_for_socket(&sock);
    let mut blk = Blk::connect(&sock);
    let id = add_volume_fault(
        &v.control,
        &[
            "--kind", "error", "--op", "read", "--offset", "1M", "--length", "4K",
        ],
    );
    // Act + Assert: EIO exactly in the range, over virtio-blk.
    assert_eq!(blk.read(1 << 20, 4096), Err(-libc::EIO));
    assert!(blk.read(2 << 20, 4096).is_ok());
    assert_eq!(hits(&v.control, id), 1);
    // A write held by the volatile cache, seen by NBD, lost in a power cut.
    vraid_ctl_ok(&v.control, &["set", "vol0", "--cache", "volatile"]);
    assert_eq!(blk.write(3 << 20, &[0x66; 4096]), 0);
    assert_eq!(read_unflushed(&v.uri, 3 << 20, 4096), vec![0x66; 4096]);
    assert_eq!(powercut(&v.control, &[])["dropped_writes"], 1);
    assert_eq!(blk.read(3 << 20, 4096).unwrap(), vec![0; 4096]);
    // Flushed through virtio, a write survives.
    assert_eq!(blk.write(3 << 20, &[0x67; 4096]), 0);
    blk.queue.flush(0, blkio::ReqFlags::empty());
    assert_eq!(blk.reap(), 0);
    assert_eq!(powercut(&v.control, &[])["dropped_writes"], 0);
    assert_eq!(blk.read(3 << 20, 4096).unwrap(), vec![0x67; 4096]);
}

#[test]
fn a_stall_times_out_a_virtio_blk_request_and_clearing_it_completes_it() {
    // Arrange: libblkio (a real virtio-blk driver) with a request timeout.
    let dir = scratch_dir("vf-vhost-stall");
    let sock = dir.path().join("vol0.sock");
    let v = serve_vol(
        "vf-vhost-stall-vol",
        &["--vhost-user-blk", sock.to_str().unwrap()],
    );
    wait_for_socket(&sock);
    let mut blk = Blk::connect(&sock);
    assert_eq!(blk.write(1 << 20, &[0x42; 4096]), 0);
    let id = add_volume_fault(
        &v.control,
        &[
            "--kind", "stall", "--op", "read", "--offset", "1M", "--length", "4K",
        ],
    );
    // Act: the read is submitted; the client's 2 s timeout expires.
    let ptr = blk.region.addr as *mut u8;
    blk.queue
        .read(1 << 20, ptr, 4096, 0, blkio::ReqFlags::empty());
    let mut slot = [std::mem::MaybeUninit::<blkio::Completion>::uninit()];
    let mut timeout = Duration::from_secs(2);
    let timed_out = blk.queue.do_io(&mut slot, 1, Some(&mut timeout), None);
    // Assert: timed out, held in vraid; cleared, it completes with the data.
    let err = timed_out.expect_err("the stalled read completed");
    assert_eq!(err.errno(), blkio::Errno::TIME, "{err}");
    assert_eq!(
        volume_status(&v.control, "vol0")["volume_faults"]["stalled"],
        1
    );
    assert_eq!(hits(&v.control, id), 1);
    vraid_ctl_ok(&v.control, &["fault", "clear", &id.to_string()]);
    assert_eq!(blk.reap(), 0);
    assert_eq!(blk.buf()[..4096], [0x42; 4096]);
}

/// Writes `data` to `path`; with `sync`, fsyncs the file and its
/// directory (the file then must survive any power cut); without, only
/// starts its write-back (`sync_file_range`, no FLUSH): its blocks reach
/// the volume's volatile cache and may be lost.
fn write_file(path: &Path, data: &[u8], sync: bool) {
    use std::io::Write;
    use std::os::fd::AsRawFd;
    let mut f = std::fs::File::create(path).unwrap();
    f.write_all(data).unwrap();
    if sync {
        f.sync_all().unwrap();
        std::fs::File::open(path.parent().unwrap())
            .unwrap()
            .sync_all()
            .unwrap();
        return;
    }
    let flags = libc::SYNC_FILE_RANGE_WRITE | libc::SYNC_FILE_RANGE_WAIT_AFTER;
    // SAFETY: sync_file_range on a descriptor we own; no memory is passed.
    let rc = unsafe { libc::sync_file_range(f.as_raw_fd(), 0, 0, flags) };
    assert_eq!(
        rc,
        0,
        "sync_file_range: {}",
        std::io::Error::last_os_error()
    );
}

/// Unmounts a filesystem whose disk fails writes: the kernel's failing
/// write-back can keep it busy for a moment, so this retries (bounded).
fn unmount_failing(fsdir: &Path) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let out = run(Command::new("umount").arg(fsdir));
        if out.status.success() {
            return;
        }
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            Instant::now() < deadline,
            "{} stays mounted: {err}",
            fsdir.display()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn ext4_keeps_every_fsynced_file_across_power_cuts() {
    // Arrange: ext4 on a volatile volume through nbdfuse + loop.
    const CUTS: u64 = 20;
    let v = serve_vol("vf-ext4", &[]);
    let dir = v._dir.path();
    let (mnt, fsdir) = (dir.join("fuse"), dir.join("fuse.fs"));
    std::fs::create_dir_all(&fsdir).unwrap();
    vraid_ctl_ok(&v.control, &["set", "vol0", "--cache", "volatile"]);
    {
        let fl = FuseLoop::attach(&v.uri, &mnt);
        run_ok(Command::new("mkfs.ext4").args(["-q", "-F"]).arg(fl.dev()));
    }
    let mut synced: Vec<(String, Vec<u8>)> = Vec::new();
    // The last file of each round, renamed into place without fsync: the
    // "wrong" workload.
    let mut unsynced: Option<(String, Vec<u8>)> = None;
    let (mut dropped, mut lost) = (0, 0);
    for round in 0..CUTS {
        let fl = FuseLoop::attach(&v.uri, &mnt);
        // Assert (after the previous cut): the journal replays, the
        // filesystem is clean, every fsynced file is intact.
        run_ok(Command::new("mount").arg(fl.dev()).arg(&fsdir));
        run_ok(Command::new("umount").arg(&fsdir));
        run_ok(Command::new("e2fsck").args(["-f", "-n"]).arg(fl.dev()));
        run_ok(Command::new("mount").arg(fl.dev()).arg(&fsdir));
        for (name, data) in &synced {
            let got = std::fs::read(fsdir.join(name))
                .unwrap_or_else(|e| panic!("round {round}: {name}: {e}"));
            assert!(got == *data, "round {round}: fsynced {name} differs");
        }
        if let Some((name, data)) = unsynced.take() {
            lost += u32::from(std::fs::read(fsdir.join(name)).ok() != Some(data));
        }
        // Act: files fsynced and files not, then the power goes (the disk
        // first stops taking writes, so nothing after the cut lands).
        for i in 0..6u64 {
            let name = format!("r{round}-{i}.bin");
            let data = pseudo_random(4096 + (i as usize * 50_000) % 300_000, round * 10 + i);
            let sync = i % 2 == 0;
            if sync {
                write_file(&fsdir.join(&name), &data, true);
            } else {
                // The wrong way to replace a file: write a temporary, rename
                // it into place, no fsync of either.
                let tmp = fsdir.join(format!("{name}.tmp"));
                write_file(&tmp, &data, false);
                std::fs::rename(&tmp, fsdir.join(&name)).unwrap();
            }
            if sync {
                synced.push((name, data));
            } else {
                unsynced = Some((name, data));
            }
        }
        let id = add_volume_fault(&v.control, &["--kind", "error", "--op", "write"]);
        let seed = round.to_string();
        let cut = powercut(&v.control, &["--keep", "random-subset", "--seed", &seed]);
        dropped += cut["dropped_writes"].as_u64().unwrap();
        // The kernel's own dirty state dies with the "machine": its
        // write-back now fails, as after a real power cut.
        unmount_failing(&fsdir);
        drop(fl);
        vraid_ctl_ok(&v.control, &["fault", "clear", &id.to_string()]);
    }
    // The cache was in play: the cuts lost writes the kernel had sent, and
    // a file the workload renamed into place without fsync went missing or
    // wrong: the harness finds a missing fsync, not only that ext4 is fine.
    assert!(dropped > 0, "no cut dropped anything");
    assert!(
        lost > 0,
        "no file renamed without fsync was ever lost in {CUTS} cuts"
    );
    eprintln!(
        "{CUTS} power cuts: {dropped} writes dropped, {lost} files renamed without fsync lost"
    );
    let fl = FuseLoop::attach(&v.uri, &mnt);
    run_ok(Command::new("mount").arg(fl.dev()).arg(&fsdir));
    run_ok(Command::new("umount").arg(&fsdir));
    run_ok(Command::new("e2fsck").args(["-f", "-n"]).arg(fl.dev()));
}
