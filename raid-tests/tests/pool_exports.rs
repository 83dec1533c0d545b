//! Pool volumes as exports (issue 11): a vhost-user-blk socket per volume
//! (libblkio's virtio-blk driver) through the same client stack as its NBD
//! export, a full pool failing the allocating write with
//! VIRTIO_BLK_S_IOERR, a pooled array never exported raw over vhost,
//! `pool create` refusing data and connected clients (and cutting them off
//! with --force), `[[pool]]` in the config (also `split_clusters`, the
//! version in `pool list` and `status`), pool volumes in `status` and
//! the metrics with fill events, `cache.set` and `fault powercut` on pool
//! volumes, and a member failed and rebuilt under three volumes running
//! fio verify.

use std::mem::MaybeUninit;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use blkio::{Blkio, Blkioq, Completion, MemoryRegion, ReqFlags};
use raid_tests::*;

/// One libblkio connection with a 1 MiB buffer region.
struct Client {
    blkio: Blkio,
    queue: Blkioq,
    region: MemoryRegion,
}

impl Client {
    fn connect(sock: &Path) -> Client {
        let mut blkio = Blkio::new("virtio-blk-vhost-user").unwrap();
        blkio.set_str("path", sock.to_str().unwrap()).unwrap();
        blkio.connect().expect("blkio connect");
        blkio.set_i32("num-queues", 1).unwrap();
        let mut outcome = blkio.start().expect("blkio start");
        let region = blkio.alloc_mem_region(1 << 20).unwrap();
        blkio.map_mem_region(&region).unwrap();
        Client {
            blkio,
            queue: outcome.queues.remove(0),
            region,
        }
    }

    fn capacity(&self) -> u64 {
        self.blkio.get_u64("capacity").unwrap()
    }

    fn buf(&mut self) -> &mut [u8] {
        // SAFETY: the region is `len` bytes libblkio mapped for us; no
        // request is in flight while the slice is borrowed.
        unsafe { std::slice::from_raw_parts_mut(self.region.addr as *mut u8, self.region.len) }
    }

    fn reap(&mut self) -> i32 {
        let mut slot = [MaybeUninit::<Completion>::uninit()];
        let mut timeout = Duration::from_secs(30);
        let got = self
            .queue
            .do_io(&mut slot, 1, Some(&mut timeout), None)
            .expect("do_io");
        assert_eq!(got, 1, "no completion within 30 s");
        // SAFETY: do_io initialised the one completion it reported.
        unsafe { slot[0].assume_init_ref().ret }
    }

    /// A write whose completion may never come (a cut-off frontend):
    /// `None` when `do_io` fails or times out.
    fn try_write(&mut self, offset: u64, byte: u8, len: usize) -> Option<i32> {
        self.buf()[..len].fill(byte);
        let ptr = self.region.addr as *const u8;
        self.queue.write(offset, ptr, len, 0, ReqFlags::empty());
        let mut slot = [MaybeUninit::<Completion>::uninit()];
        let mut timeout = Duration::from_secs(5);
        match self.queue.do_io(&mut slot, 1, Some(&mut timeout), None) {
            // SAFETY: do_io initialised the one completion it reported.
            Ok(1) => Some(unsafe { slot[0].assume_init_ref().ret }),
            _ => None,
        }
    }

    fn write(&mut self, offset: u64, byte: u8, len: usize) -> i32 {
        self.buf()[..len].fill(byte);
        let ptr = self.region.addr as *const u8;
        self.queue.write(offset, ptr, len, 0, ReqFlags::empty());
        self.reap()
    }

    fn read(&mut self, offset: u64, len: usize) -> Result<Vec<u8>, i32> {
        let ptr = self.region.addr as *mut u8;
        self.queue.read(offset, ptr, len, 0, ReqFlags::empty());
        match self.reap() {
            0 => Ok(self.buf()[..len].to_vec()),
            ret => Err(ret),
        }
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        self.blkio.unmap_mem_region(&self.region);
        self.blkio.free_mem_region(&self.region);
    }
}

/// A RAID-5 array `vol0` of `n` members of `size`, served with a control
/// socket and `extra` arguments; returns the server, control socket and
/// the serve arguments.
fn serve_raid5(dir: &Path, n: usize, size: &str, extra: &[&str]) -> (Server, PathBuf, Vec<String>) {
    let paths = member_paths(dir, n);
    create_array(5, "64K", size, "vol0", &paths);
    let control = dir.join("control.sock");
    let mut args: Vec<String> = paths.iter().map(|p| p.display().to_string()).collect();
    args.extend(["--control".into(), control.display().to_string()]);
    args.extend(extra.iter().map(|s| s.to_string()));
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    (Server::start(&refs), control, args)
}

fn restart(args: &[String]) -> Server {
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    Server::start(&refs)
}

fn stderr_of(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// The `pool_volumes` entry of `name` in `status --json`.
fn pool_volume(control: &Path, name: &str) -> serde_json::Value {
    let status = status_json(control);
    status["pool_volumes"]
        .as_array()
        .and_then(|v| v.iter().find(|v| v["name"] == name).cloned())
        .unwrap_or_else(|| panic!("no pool volume {name} in {status}"))
}

#[test]
fn pool_volumes_on_their_own_vhost_sockets_share_the_nbd_stack_and_a_full_pool_fails_with_ioerr() {
    // Arrange: ~90 MiB of pool under a 1 GiB volume and a small one.
    let dir = scratch_dir("pool-vhost");
    let (server, control, _) = serve_raid5(dir.path(), 3, "64M", &[]);
    vraid_ctl_ok(
        &control,
        &["pool", "create", "vol0", "--cluster-size", "1M"],
    );
    let (big_sock, small_sock) = (dir.path().join("big.sock"), dir.path().join("small.sock"));
    let out = vraid_ctl_ok(
        &control,
        &[
            "volume",
            "create",
            "vol0",
            "small",
            "--size",
            "8M",
            "--vhost-socket",
            small_sock.to_str().unwrap(),
            "--vhost-queues",
            "1",
        ],
    );
    assert!(out.contains("vhost-user-blk"), "{out}");
    wait_for_socket(&small_sock);
    let mut small = Client::connect(&small_sock);
    assert_eq!(small.capacity(), 8 << 20);
    assert_eq!(small.write(0, 0x5a, 65536), 0);

    // Act: over vhost, fill the pool through a 1 GiB volume on a socket
    // of its own, a cluster at a time.
    vraid_ctl_ok(
        &control,
        &[
            "volume",
            "create",
            "vol0",
            "big",
            "--size",
            "1G",
            "--vhost-socket",
            big_sock.to_str().unwrap(),
        ],
    );
    wait_for_socket(&big_sock);
    let mut big = Client::connect(&big_sock);
    let mut failed_at = None;
    for i in 0..200u64 {
        let ret = big.write(i << 20, 0x77, 4096);
        if ret != 0 {
            failed_at = Some((i, ret));
            break;
        }
    }

    // Assert
    let (at, ret) = failed_at.expect("a 1 GiB volume filled a 90 MiB pool");
    assert_eq!(ret, -libc::EIO, "full pool over vhost: {ret}");
    assert!(at > 50, "failed after {at} clusters");
    assert_eq!(
        big.write(0, 0x78, 4096),
        0,
        "an allocated cluster stopped taking writes"
    );
    assert_eq!(big.read(0, 4096).unwrap(), vec![0x78; 4096]);
    assert_eq!(
        small.write(4096, 0x5b, 4096),
        0,
        "the other volume lost its mapped cluster"
    );
    qemu_io(
        &server.uri("small"),
        &["read -P 0x5a 0 4k".into(), "read -P 0x5b 4k 4k".into()],
    );
    let v = pool_volume(&control, "small");
    assert_eq!(v["vhost_socket"], small_sock.to_str().unwrap(), "{v}");
    assert!(v["io"]["writes"].as_u64().unwrap() >= 2, "{v}");
    assert!(
        v["io"]["reads"].as_u64().unwrap() >= 2,
        "vhost and NBD reads counted together: {v}"
    );
    let b = pool_volume(&control, "big");
    assert!(b["io"]["errors"].as_u64().unwrap() >= 1, "{b}");
    // A volume's QoS and faults act on its vhost requests too.
    vraid_ctl_ok(
        &control,
        &[
            "fault", "add", "small", "--volume", "--kind", "error", "--op", "read",
        ],
    );
    assert!(
        small.read(0, 4096).is_err(),
        "a volume fault rule missed the vhost export"
    );
    vraid_ctl_ok(&control, &["fault", "clear"]);
    // Deleting a volume stops its socket.
    drop(big);
    vraid_ctl_ok(&control, &["volume", "delete", "big"]);
    assert!(
        std::os::unix::net::UnixStream::connect(&big_sock).is_err(),
        "a deleted volume's socket still answers"
    );
    vraid_ctl_ok(&control, &["pool", "check", "vol0"]);
    drop(small);
    assert_eq!(server.stop(), 0);
}

#[test]
fn a_pooled_array_is_never_exported_raw_over_vhost() {
    // Arrange: a pool on vol0, then a restart that asks for vol0's socket.
    let dir = scratch_dir("pool-raw-vhost");
    let (server, control, args) = serve_raid5(dir.path(), 3, "32M", &[]);
    vraid_ctl_ok(&control, &["pool", "create", "vol0"]);
    vraid_ctl_ok(&control, &["volume", "create", "vol0", "a", "--size", "8M"]);
    assert_eq!(server.stop(), 0);
    let sock = dir.path().join("vol0.sock");
    let mut with_vhost = args.clone();
    with_vhost.extend(["--vhost-user-blk".into(), sock.display().to_string()]);

    // Act
    let server = restart(&with_vhost);

    // Assert
    let log = server.wait_log(
        "not exported raw over vhost-user-blk",
        Duration::from_secs(10),
    );
    assert!(log.contains("array holds a pool"), "{log}");
    assert!(
        std::os::unix::net::UnixStream::connect(&sock).is_err(),
        "the pooled array's vhost socket answers"
    );
    qemu_io(
        &server.uri("a"),
        &["write -P 1 0 4k".into(), "read -P 1 0 4k".into()],
    );
    assert_eq!(server.stop(), 0);
}

#[test]
fn pool_create_refuses_connected_clients_and_cuts_them_off_with_force() {
    // Arrange: vol0 served over NBD and vhost, a blkio frontend and an fio
    // writer on its raw exports.
    let dir = scratch_dir("pool-takeover");
    let sock = dir.path().join("vol0.sock");
    let (server, control, _) = serve_raid5(
        dir.path(),
        3,
        "32M",
        &["--vhost-user-blk", sock.to_str().unwrap()],
    );
    wait_for_socket(&sock);
    let mut frontend = Client::connect(&sock);
    assert_eq!(frontend.write(8 << 20, 0x11, 4096), 0);
    let fio = Command::new("fio")
        .args([
            "--name=raw",
            "--ioengine=nbd",
            "--rw=randwrite",
            "--bs=4k",
            "--iodepth=4",
        ])
        .args(["--size=16M", "--time_based", "--runtime=60"])
        .arg(format!("--uri={}", server.uri("vol0")))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while volume_status(&control, "vol0")["io"]["writes"]
        .as_u64()
        .unwrap()
        < 10
    {
        assert!(Instant::now() < deadline, "fio wrote nothing in 30 s");
        std::thread::sleep(Duration::from_millis(50));
    }

    // Act
    let refused = vraid_ctl(&control, &["pool", "create", "vol0"]);
    let forced = vraid_ctl(&control, &["pool", "create", "vol0", "--force"]);
    let fio_out = fio.wait_with_output().unwrap();
    let cut_write = frontend.try_write(0, 0x22, 4096);

    // Assert
    assert!(!refused.status.success());
    let text = stderr_of(&refused);
    assert!(
        text.contains("client(s) are connected") && text.contains("--force"),
        "{text}"
    );
    assert!(forced.status.success(), "{}", stderr_of(&forced));
    assert!(
        !fio_out.status.success(),
        "fio kept writing to the raw array after --force"
    );
    assert_ne!(
        cut_write,
        Some(0),
        "the raw vhost frontend still writes after --force"
    );
    assert!(
        std::os::unix::net::UnixStream::connect(&sock).is_err(),
        "the pooled array's vhost socket still answers"
    );
    drop(frontend);
    vraid_ctl_ok(
        &control,
        &["volume", "create", "vol0", "a", "--size", "16M"],
    );
    let check = vraid_ctl(&control, &["pool", "check", "vol0"]);
    assert!(
        check.status.success(),
        "{}",
        String::from_utf8_lossy(&check.stdout)
    );
    assert_eq!(server.stop(), 0);
}

#[test]
fn pool_create_finds_data_past_the_first_4k_and_names_it() {
    // Arrange
    let dir = scratch_dir("pool-signature");
    let (server, control, _) = serve_raid5(dir.path(), 3, "32M", &[]);
    let size: u64 = run_ok(Command::new("nbdinfo").args(["--size", &server.uri("vol0")]))
        .trim()
        .parse()
        .unwrap();

    // Act: a byte at 512 KiB, then one in the last MiB (first cleared).
    qemu_io(&server.uri("vol0"), &["write -P 0x42 512k 4k".into()]);
    let head = vraid_ctl(&control, &["pool", "create", "vol0"]);
    qemu_io(
        &server.uri("vol0"),
        &[
            "write -z 512k 4k".into(),
            format!("write -P 0x43 {} 4k", size - 8192),
        ],
    );
    let tail = vraid_ctl(&control, &["pool", "create", "vol0"]);
    let forced = vraid_ctl(&control, &["pool", "create", "vol0", "--force"]);

    // Assert
    let head = stderr_of(&head);
    assert!(
        head.contains("a non-zero byte at 524288") && head.contains("--force"),
        "{head}"
    );
    let tail = stderr_of(&tail);
    assert!(
        tail.contains(&format!("a non-zero byte at {}", size - 8192)),
        "{tail}"
    );
    assert!(forced.status.success(), "{}", stderr_of(&forced));
    assert_eq!(server.stop(), 0);
}

fn config_text(dir: &Path, control: &Path, pool: &str) -> String {
    let members: Vec<String> = member_paths(dir, 3)
        .iter()
        .map(|p| format!("\"{}\"", p.display()))
        .collect();
    format!(
        "[server]\ncontrol = \"{}\"\n\n[[volume]]\nname = \"vol0\"\nlevel = 5\nmembers = [{}]\n\
         create = {{ member_size = \"48M\" }}\n\n{pool}",
        control.display(),
        members.join(", ")
    )
}

fn serve_config(dir: &Path, text: &str) -> std::process::Output {
    let path = dir.join("vraid.toml");
    std::fs::write(&path, text).unwrap();
    run(vraid(&[
        "serve",
        "--nbd",
        "127.0.0.1:0",
        "--config",
        path.to_str().unwrap(),
    ]))
}

#[test]
fn config_pools_are_laid_their_volumes_created_and_wrong_configs_refused() {
    // Arrange
    let dir = scratch_dir("pool-config");
    let control = dir.path().join("control.sock");
    let good = "[[pool]]\narray = \"vol0\"\ncluster_size = \"64K\"\nfill_events = [50, 75]\n\n\
                [[pool.volume]]\nname = \"db\"\nsize = \"16M\"\ncache = \"volatile\"\n\
                [pool.volume.qos]\niops = 300\n\n\
                [[pool.volume]]\nname = \"web\"\nsize = \"8M\"\n";
    let path = dir.path().join("vraid.toml");
    std::fs::write(&path, config_text(dir.path(), &control, good)).unwrap();
    let args = ["--config", path.to_str().unwrap()];

    // Act: first start lays the pool and creates both volumes.
    let server = Server::start(&args);
    qemu_io(
        &server.uri("web"),
        &["write -P 0x3c 0 64k".into(), "flush".into()],
    );
    vraid_ctl_ok(
        &control,
        &["volume", "create", "vol0", "extra", "--size", "4M"],
    );
    qemu_io(
        &server.uri("extra"),
        &["write -P 0x3d 0 4k".into(), "flush".into()],
    );
    vraid_ctl_ok(&control, &["volume", "snapshot", "web", "websnap"]);
    let status = status_json(&control);
    assert_eq!(server.stop(), 0);
    // Second start: the same config finds everything there; a bigger size grows.
    let grown = good.replace("size = \"8M\"", "size = \"12M\"");
    std::fs::write(&path, config_text(dir.path(), &control, &grown)).unwrap();
    let server = Server::start(&args);
    let web_size = run_ok(Command::new("nbdinfo").args(["--size", &server.uri("web")]));
    qemu_io(&server.uri("web"), &["read -P 0x3c 0 64k".into()]);
    qemu_io(&server.uri("extra"), &["read -P 0x3d 0 4k".into()]);
    assert_eq!(server.stop(), 0);
    // Wrong configs: each refused at start, naming what is wrong.
    let wrong = [
        (
            good.replace("array = \"vol0\"", "array = \"vol9\""),
            "unknown array \"vol9\"",
        ),
        (
            good.replace("cluster_size = \"64K\"", "cluster_size = \"1M\""),
            "64 KiB clusters, the config says 1024 KiB",
        ),
        (
            good.replace("name = \"web\"", "name = \"websnap\""),
            "\"websnap\" is a snapshot",
        ),
        (
            good.replace("name = \"web\"", "name = \"db\""),
            "name \"db\" is already",
        ),
        (
            good.replace("size = \"8M\"", "size = \"-8M\""),
            "pool[0].volume[1].size",
        ),
        (
            good.replace("cache = \"volatile\"", "cahce = \"volatile\""),
            "unknown field `cahce`",
        ),
    ];
    let outcomes: Vec<(String, &str)> = wrong
        .iter()
        .map(|(pool, want)| {
            let out = serve_config(dir.path(), &config_text(dir.path(), &control, pool));
            assert!(!out.status.success(), "started with a wrong config: {want}");
            (stderr_of(&out), *want)
        })
        .collect();

    // Assert
    let vols = status["pool_volumes"].as_array().unwrap();
    let db = vols.iter().find(|v| v["name"] == "db").unwrap();
    assert_eq!(db["qos"]["limits"]["iops"], 300, "{db}");
    assert_eq!(db["cache"]["mode"], "volatile", "{db}");
    assert_eq!(
        status["pools"][0]["space"]["cluster_size"],
        64 << 10,
        "{status}"
    );
    assert_eq!(
        status["pools"][0]["fill_events"],
        serde_json::json!([50, 75])
    );
    assert_eq!(status["pools"][0]["version"], 2, "{status}");
    assert_eq!(web_size.trim(), (12u64 << 20).to_string());
    for (stderr, want) in outcomes {
        assert!(stderr.contains(want), "want {want:?} in:\n{stderr}");
    }
    // Nothing a refused start did touched the volumes.
    std::fs::write(&path, config_text(dir.path(), &control, good)).unwrap();
    let server = Server::start(&args);
    qemu_io(&server.uri("extra"), &["read -P 0x3d 0 4k".into()]);
    run_ok(Command::new("qemu-io").args([
        "-r",
        "-f",
        "raw",
        "-c",
        "read -P 0x3c 0 64k",
        &server.uri("websnap"),
    ]));
    vraid_ctl_ok(&control, &["pool", "check", "vol0"]);
    assert_eq!(server.stop(), 0);
}

#[test]
fn config_split_clusters_lays_version_3_shown_in_list_and_status_and_must_match() {
    // Arrange
    let dir = scratch_dir("pool-config-split");
    let control = dir.path().join("control.sock");
    let good = "[[pool]]\narray = \"vol0\"\nsplit_clusters = true\n\n\
                [[pool.volume]]\nname = \"web\"\nsize = \"8M\"\n";
    let path = dir.path().join("vraid.toml");
    std::fs::write(&path, config_text(dir.path(), &control, good)).unwrap();
    let args = ["--config", path.to_str().unwrap()];

    // Act: lay it, write, snapshot, write again (a split), read both.
    let server = Server::start(&args);
    qemu_io(
        &server.uri("web"),
        &["write -P 0x3c 0 2M".into(), "flush".into()],
    );
    vraid_ctl_ok(&control, &["volume", "snapshot", "web", "websnap"]);
    qemu_io(
        &server.uri("web"),
        &["write -P 0x5a 1M 4k".into(), "flush".into()],
    );
    let status = status_json(&control);
    let list = vraid_ctl_ok(&control, &["pool", "list"]);
    let list_json = vraid_ctl_ok(&control, &["pool", "list", "--json"]);
    qemu_io(
        &server.uri("web"),
        &["read -P 0x3c 0 1M".into(), "read -P 0x5a 1M 4k".into()],
    );
    run_ok(Command::new("qemu-io").args([
        "-r",
        "-f",
        "raw",
        "-c",
        "read -P 0x3c 0 2M",
        &server.uri("websnap"),
    ]));
    let check = vraid_ctl_ok(&control, &["pool", "check", "vol0"]);
    assert_eq!(server.stop(), 0);
    let flipped = good.replace("split_clusters = true", "split_clusters = false");
    let refused = serve_config(dir.path(), &config_text(dir.path(), &control, &flipped));

    // Assert
    assert_eq!(status["pools"][0]["version"], 3, "{status}");
    assert!(list.contains("version 3 (split clusters)"), "{list}");
    let listed: serde_json::Value = serde_json::from_str(&list_json).unwrap();
    assert_eq!(listed[0]["version"], 3, "{listed}");
    assert!(check.contains("clusters referenced"), "{check}");
    assert!(
        !refused.status.success(),
        "started with the version flipped"
    );
    let stderr = stderr_of(&refused);
    assert!(
        stderr.contains("version 3, the config says split_clusters = false"),
        "{stderr}"
    );
}

/// Polls `status --json` until `pred` holds on its events (30 s at most).
fn wait_events(
    control: &Path,
    what: &str,
    pred: impl Fn(&[serde_json::Value]) -> bool,
) -> Vec<serde_json::Value> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let events = status_json(control)["events"].as_array().unwrap().clone();
        if pred(&events) {
            return events;
        }
        assert!(
            Instant::now() < deadline,
            "{what} not seen in 30 s: {events:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn count(events: &[serde_json::Value], kind: &str, threshold: &str) -> usize {
    events
        .iter()
        .filter(|e| e["kind"] == kind && e["message"].as_str().unwrap().contains(threshold))
        .count()
}

#[test]
fn status_and_metrics_show_pool_space_and_volume_io_and_fill_events_fire_once_per_crossing() {
    // Arrange
    let dir = scratch_dir("pool-status");
    let port = free_port();
    let metrics = format!("127.0.0.1:{port}");
    let (server, control, _) = serve_raid5(dir.path(), 3, "48M", &["--metrics", &metrics]);
    vraid_ctl_ok(
        &control,
        &["pool", "create", "vol0", "--cluster-size", "1M"],
    );
    vraid_ctl_ok(
        &control,
        &["volume", "create", "vol0", "a", "--size", "200M"],
    );
    vraid_ctl_ok(&control, &["pool", "set", "vol0", "--fill-events", "20,40"]);
    let bad = vraid_ctl(&control, &["pool", "set", "vol0", "--fill-events", "40,20"]);

    // Act: fill past 20 %, wait, write more (still under 40), then trim
    // back under 15 % and refill past 20 %.
    let total = status_json(&control)["pools"][0]["space"]["total_bytes"]
        .as_u64()
        .unwrap();
    let mib = |pct: u64| total * pct / 100 / (1 << 20) + 1;
    let fill = |from: u64, to: u64| {
        let cmds: Vec<String> = (from..to).map(|i| format!("write -P 9 {i}M 4k")).collect();
        qemu_io(&server.uri("a"), &cmds);
    };
    fill(0, mib(22));
    let first = wait_events(&control, "pool_fill 20%", |e| {
        count(e, "pool_fill", "threshold 20%") == 1
    });
    fill(mib(22), mib(30));
    qemu_io(
        &server.uri("a"),
        &[format!("discard 0 {}M", mib(30)), "flush".into()],
    );
    wait_events(&control, "pool_fill_cleared", |e| {
        count(e, "pool_fill_cleared", "threshold 20%") == 1
    });
    fill(0, mib(22));
    let last = wait_events(&control, "second pool_fill 20%", |e| {
        count(e, "pool_fill", "threshold 20%") == 2
    });
    let text = vraid_ctl_ok(&control, &["status"]);
    let scrape = scrape(&metrics);

    // Assert
    assert!(
        !bad.status.success() && stderr_of(&bad).contains("ascending"),
        "{}",
        stderr_of(&bad)
    );
    assert_eq!(count(&first, "pool_fill", "threshold 40%"), 0, "{first:?}");
    assert_eq!(count(&last, "pool_fill", "threshold 40%"), 0, "{last:?}");
    assert_eq!(count(&last, "pool_fill", "threshold 20%"), 2, "{last:?}");
    let v = pool_volume(&control, "a");
    assert_eq!(v["pool"], "vol0");
    assert_eq!(v["size"], 200u64 << 20);
    assert!(v["io"]["writes"].as_u64().unwrap() >= 2 * mib(22), "{v}");
    assert!(v["io"]["trims"].as_u64().unwrap() >= 1, "{v}");
    let pools = &status_json(&control)["pools"][0];
    assert!(pools["overcommit"].as_f64().unwrap() > 1.0, "{pools}");
    assert!(
        text.contains("overcommit") && text.contains("fill events at 20%, 40%"),
        "{text}"
    );
    assert!(text.contains("volume a (pool vol0)"), "{text}");
    for needle in [
        "vraid_pool_used_bytes{pool=\"vol0\"}",
        "vraid_pool_overcommit_ratio{pool=\"vol0\"}",
        "vraid_pool_volume_mapped_bytes{volume=\"a\",pool=\"vol0\"}",
        "vraid_volume_ops_total{volume=\"a\",op=\"write\"}",
    ] {
        assert!(scrape.contains(needle), "{needle} missing:\n{scrape}");
    }
    assert_eq!(server.stop(), 0);
}

#[test]
fn cache_set_and_power_cut_act_on_pool_volumes() {
    // Arrange
    let dir = scratch_dir("pool-cache");
    let (server, control, _) = serve_raid5(dir.path(), 3, "32M", &[]);
    vraid_ctl_ok(
        &control,
        &["pool", "create", "vol0", "--cluster-size", "64K"],
    );
    for name in ["a", "b"] {
        vraid_ctl_ok(
            &control,
            &["volume", "create", "vol0", name, "--size", "8M"],
        );
    }
    vraid_ctl_ok(&control, &["set", "a", "--cache", "volatile"]);

    // Act: flushed writes, then unflushed ones, then a power cut of a.
    qemu_io(
        &server.uri("a"),
        &["write -P 1 0 64k".into(), "flush".into()],
    );
    qemu_io(&server.uri("b"), &["write -P 2 0 64k".into()]);
    // nbdsh: no FLUSH, not even at disconnect (qemu-io sends one).
    let path = std::env::var("PATH").unwrap_or_default();
    let script =
        "h.pwrite(bytes([3]) * 65536, 65536)\nh.pwrite(bytes([4]) * 4096, 0)\nh.shutdown()\n";
    let mut c = Command::new("nbdsh");
    c.env("PATH", format!("/usr/bin:{path}"));
    run_ok(c.args(["-u", &server.uri("a"), "-c", script]));
    let dirty = pool_volume(&control, "a")["cache"]["dirty_bytes"]
        .as_u64()
        .unwrap();
    let cut = vraid_ctl_ok(&control, &["fault", "powercut", "a", "--keep", "none"]);

    // Assert
    assert!(dirty >= 64 << 10, "unflushed writes not held: {dirty}");
    assert!(cut.contains("dropped"), "{cut}");
    qemu_io(
        &server.uri("a"),
        &["read -P 1 0 64k".into(), "read -P 0 64k 64k".into()],
    );
    qemu_io(&server.uri("b"), &["read -P 2 0 64k".into()]);
    let events = status_json(&control)["events"].clone();
    let kinds: Vec<&str> = events
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["volume"] == "a")
        .map(|e| e["kind"].as_str().unwrap())
        .collect();
    assert!(
        kinds.contains(&"cache_mode") && kinds.contains(&"power_cut"),
        "{events}"
    );
    vraid_ctl_ok(&control, &["set", "a", "--cache", "writethrough"]);
    assert_eq!(pool_volume(&control, "a")["cache"]["mode"], "writethrough");
    let unknown = vraid_ctl(&control, &["set", "nope", "--cache", "volatile"]);
    assert!(
        stderr_of(&unknown).contains("unknown volume"),
        "{}",
        stderr_of(&unknown)
    );
    vraid_ctl_ok(&control, &["pool", "check", "vol0"]);
    assert_eq!(server.stop(), 0);
}

#[test]
fn a_member_fails_and_is_rebuilt_while_three_pool_volumes_run_fio_verify() {
    // Arrange
    let dir = scratch_dir("pool-rebuild");
    let (server, control, _) = serve_raid5(dir.path(), 3, "128M", &[]);
    vraid_ctl_ok(
        &control,
        &["pool", "create", "vol0", "--cluster-size", "64K"],
    );
    for i in 0..3 {
        vraid_ctl_ok(
            &control,
            &[
                "volume",
                "create",
                "vol0",
                &format!("v{i}"),
                "--size",
                "48M",
            ],
        );
    }
    let jobs: Vec<_> = (0..3)
        .map(|i| {
            let mut c = fio_verify_cmd(&server.uri(&format!("v{i}")), &format!("v{i}"), "40M", "0");
            c.stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let deadline = Instant::now() + Duration::from_secs(60);
    while pool_volume(&control, "v2")["io"]["writes"]
        .as_u64()
        .unwrap()
        < 50
    {
        assert!(Instant::now() < deadline, "fio wrote nothing to v2 in 60 s");
        std::thread::sleep(Duration::from_millis(50));
    }

    // Act: fail member 1, take it out, add a new one while fio runs.
    let new = dir.path().join("new.img");
    std::fs::File::create(&new)
        .unwrap()
        .set_len(128 << 20)
        .unwrap();
    fail_remove_add(&control, "1", &new);
    let deadline = Instant::now() + Duration::from_secs(240);
    loop {
        let v = volume_status(&control, "vol0");
        if v["state"] == "optimal" && member_states(&v).iter().all(|s| s == "active") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "rebuild did not finish in 240 s: {v}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }

    // Assert
    for job in jobs {
        assert_fio_clean(job);
    }
    let events = status_json(&control)["events"].to_string();
    assert!(
        events.contains("member_failed") || events.contains("degraded"),
        "{events}"
    );
    let check = vraid_ctl_ok(&control, &["pool", "check", "vol0"]);
    assert!(check.contains("3 volumes"), "{check}");
    for i in 0..3 {
        let mut c = fio_verify_cmd(&server.uri(&format!("v{i}")), &format!("v{i}"), "40M", "0");
        c.args(["--verify_only"]);
        assert_fio_clean(
            c.stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap(),
        );
    }
    assert_eq!(server.stop(), 0);
}
