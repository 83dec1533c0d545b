//! The vhost-user-blk export driven by a real virtio-blk driver: libblkio's
//! `virtio-blk-vhost-user` (the `blkio` crate) against `vraid serve
//! --vhost-user-blk SOCK`, with qemu-io reading the same volume over NBD.

use std::mem::MaybeUninit;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use blkio::{Blkio, Blkioq, Completion, MemoryRegion, ReqFlags};
use raid_tests::{
    create_array, member_paths, pseudo_random, qemu_io, read_export, scratch_dir, vraid,
    wait_for_socket, Server,
};

const CHUNK: u64 = 64 << 10;
/// RAID-5 over 4 members: 3 data chunks per stripe.
const STRIPE: u64 = 3 * CHUNK;

/// One libblkio connection with a mapped buffer region.
struct Client {
    blkio: Blkio,
    queues: Vec<Blkioq>,
    region: MemoryRegion,
}

impl Client {
    fn connect(sock: &Path, queues: i32, buf_len: usize) -> Client {
        Self::try_connect(sock, queues, buf_len, false).expect("blkio connect/start")
    }

    fn try_connect(
        sock: &Path,
        queues: i32,
        buf_len: usize,
        read_only: bool,
    ) -> Result<Client, blkio::Error> {
        let mut blkio = Blkio::new("virtio-blk-vhost-user")?;
        blkio.set_str("path", sock.to_str().unwrap())?;
        blkio.set_bool("read-only", read_only)?;
        blkio.connect()?;
        blkio.set_i32("num-queues", queues)?;
        let outcome = blkio.start()?;
        let region = blkio.alloc_mem_region(buf_len)?;
        blkio.map_mem_region(&region)?;
        Ok(Client {
            blkio,
            queues: outcome.queues,
            region,
        })
    }

    fn capacity(&self) -> u64 {
        self.blkio.get_u64("capacity").unwrap()
    }

    fn buf(&mut self) -> &mut [u8] {
        // SAFETY: the region is `len` bytes of memory libblkio mapped for
        // us; it lives as long as `self.blkio` and no request is in flight
        // while the slice is borrowed (every helper waits for completions).
        unsafe { std::slice::from_raw_parts_mut(self.region.addr as *mut u8, self.region.len) }
    }

    /// Waits for `n` completions on queue `q`; returns their `ret` by user_data.
    fn reap(&mut self, q: usize, n: usize) -> Vec<(usize, i32)> {
        let mut done = Vec::new();
        let mut slots: Vec<MaybeUninit<Completion>> =
            (0..n).map(|_| MaybeUninit::uninit()).collect();
        while done.len() < n {
            let want = n - done.len();
            let mut timeout = Duration::from_secs(30);
            let got = self.queues[q]
                .do_io(&mut slots[..want], want, Some(&mut timeout), None)
                .expect("do_io");
            assert!(got > 0, "no completion within 30 s");
            for slot in &slots[..got] {
                // SAFETY: do_io initialised the first `got` completions.
                let c = unsafe { slot.assume_init_ref() };
                done.push((c.user_data, c.ret));
            }
        }
        done.sort_unstable();
        done
    }

    /// Writes `data` at `offset` through buffer offset `at`, waits.
    fn write(&mut self, offset: u64, data: &[u8], at: usize) -> i32 {
        self.buf()[at..at + data.len()].copy_from_slice(data);
        let ptr = (self.region.addr + at) as *const u8;
        self.queues[0].write(offset, ptr, data.len(), 0, ReqFlags::empty());
        self.reap(0, 1)[0].1
    }

    /// Reads `len` bytes at `offset`; `Err(ret)` on failure.
    fn read(&mut self, offset: u64, len: usize) -> Result<Vec<u8>, i32> {
        let ptr = self.region.addr as *mut u8;
        self.queues[0].read(offset, ptr, len, 0, ReqFlags::empty());
        match self.reap(0, 1)[0].1 {
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

/// A RAID-5 array of four 32 MiB members served with a vhost-user-blk socket.
fn raid5_server(dir: &Path, extra: &[&str]) -> (Server, PathBuf, Vec<PathBuf>) {
    let members = member_paths(dir, 4);
    create_array(5, "64K", "32M", "vol0", &members);
    let sock = dir.join("vol0.sock");
    let server = start(&sock, &members, extra);
    (server, sock, members)
}

fn start(sock: &Path, members: &[PathBuf], extra: &[&str]) -> Server {
    let mut args: Vec<String> = vec!["--vhost-user-blk".into(), sock.display().to_string()];
    args.extend(extra.iter().map(|s| s.to_string()));
    args.extend(members.iter().map(|m| m.display().to_string()));
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let server = Server::start(&refs);
    wait_for_socket(sock);
    server
}

#[test]
fn raid5_pattern_io_across_chunk_and_stripe_boundaries_reads_back_over_both_exports() {
    let dir = scratch_dir("vhost-pattern");
    let (server, sock, _) = raid5_server(dir.path(), &[]);
    let mut c = Client::connect(&sock, 1, 4 << 20);
    // (offset, len): straddling a chunk, a stripe, several stripes, a full
    // stripe, a lone sector and the last sectors of the volume.
    let cap = c.capacity();
    let cases = [
        (CHUNK - 4096, 8192),
        (STRIPE - 8192, 16384),
        (STRIPE + 9216, 3 * STRIPE + 1024),
        (5 * STRIPE, STRIPE),
        (9 * STRIPE + 1536, 512),
        (cap - 8192, 8192),
    ];

    // Act: all writes in flight at once, then all reads at once.
    let mut at = 0usize;
    let mut placed = Vec::new();
    for (i, &(offset, len)) in cases.iter().enumerate() {
        let data = pseudo_random(len as usize, i as u64 + 1);
        c.buf()[at..at + data.len()].copy_from_slice(&data);
        let ptr = (c.region.addr + at) as *const u8;
        c.queues[0].write(offset, ptr, data.len(), i, ReqFlags::empty());
        placed.push((at, data));
        at += len as usize;
    }
    let writes = c.reap(0, cases.len());
    c.buf()[..at].fill(0);
    for (i, &(offset, len)) in cases.iter().enumerate() {
        let ptr = (c.region.addr + placed[i].0) as *mut u8;
        c.queues[0].read(offset, ptr, len as usize, i, ReqFlags::empty());
    }
    let reads = c.reap(0, cases.len());

    assert!(writes.iter().all(|&(_, ret)| ret == 0), "{writes:?}");
    assert!(reads.iter().all(|&(_, ret)| ret == 0), "{reads:?}");
    for (i, (at, data)) in placed.iter().enumerate() {
        let got = &c.buf()[*at..*at + data.len()];
        let first = got.iter().zip(data).position(|(a, b)| a != b);
        assert!(
            first.is_none(),
            "case {i} {:?} read back different bytes from byte {first:?}",
            cases[i]
        );
    }
    // The same bytes over NBD, from another client of the same server.
    assert_eq!(c.write(STRIPE - 4096, &[0xab; 12288], 0), 0);
    qemu_io(
        &server.uri("vol0"),
        &[format!("read -P 0xab {} 12288", STRIPE - 4096)],
    );
}

#[test]
fn flush_discard_and_write_zeroes_clear_ranges() {
    let dir = scratch_dir("vhost-clear");
    let (server, sock, _) = raid5_server(dir.path(), &[]);
    let mut c = Client::connect(&sock, 1, 1 << 20);
    assert_eq!(c.write(0, &[0x5a; 1 << 20], 0), 0);

    c.queues[0].write_zeroes(CHUNK - 4096, 8192, 1, ReqFlags::empty());
    c.queues[0].discard(STRIPE, 65536, 2, ReqFlags::empty());
    c.queues[0].write_zeroes(2 * STRIPE, 4096, 3, ReqFlags::NO_UNMAP);
    let cleared = c.reap(0, 3);
    c.queues[0].flush(4, ReqFlags::empty());
    let flushed = c.reap(0, 1);

    assert_eq!(cleared, vec![(1, 0), (2, 0), (3, 0)]);
    assert_eq!(flushed, vec![(4, 0)]);
    let data = c.read(0, 1 << 20).unwrap();
    let zero = |a: u64, l: u64| data[a as usize..(a + l) as usize].iter().all(|&b| b == 0);
    let kept = |a: u64, l: u64| {
        data[a as usize..(a + l) as usize]
            .iter()
            .all(|&b| b == 0x5a)
    };
    assert!(kept(0, CHUNK - 4096) && zero(CHUNK - 4096, 8192));
    assert!(kept(CHUNK + 4096, STRIPE - CHUNK - 4096) && zero(STRIPE, 65536));
    assert!(zero(2 * STRIPE, 4096) && kept(2 * STRIPE + 4096, 4096));
    qemu_io(
        &server.uri("vol0"),
        &[
            format!("read -P 0 {STRIPE} 65536"),
            format!("read -P 0x5a {} 4096", STRIPE + 65536),
        ],
    );
}

#[test]
fn two_queues_serve_requests_at_the_same_time() {
    let dir = scratch_dir("vhost-mq");
    let (server, sock, _) = raid5_server(dir.path(), &["--vhost-queues", "2"]);
    let mut c = Client::connect(&sock, 2, 2 << 20);
    let base = c.region.addr;
    let queues = std::mem::take(&mut c.queues);

    // Act: each queue, from its own thread, keeps 16 writes of 64 KiB in
    // flight over its own megabyte, then reads it back.
    let results: Vec<(Vec<u8>, Vec<u8>)> = std::thread::scope(|s| {
        let handles: Vec<_> = queues
            .into_iter()
            .enumerate()
            .map(|(qi, mut q)| {
                s.spawn(move || {
                    let mine = base + qi * (1 << 20);
                    let disk = qi as u64 * (1 << 20);
                    let data = pseudo_random(1 << 20, 100 + qi as u64);
                    // SAFETY: each thread owns its own megabyte of the region.
                    let buf = unsafe { std::slice::from_raw_parts_mut(mine as *mut u8, 1 << 20) };
                    buf.copy_from_slice(&data);
                    for k in 0..16usize {
                        let off = k * 65536;
                        q.write(
                            disk + off as u64,
                            (mine + off) as *const u8,
                            65536,
                            k,
                            ReqFlags::empty(),
                        );
                    }
                    wait(&mut q, 16);
                    buf.fill(0);
                    for k in 0..16usize {
                        let off = k * 65536;
                        q.read(
                            disk + off as u64,
                            (mine + off) as *mut u8,
                            65536,
                            k,
                            ReqFlags::empty(),
                        );
                    }
                    wait(&mut q, 16);
                    (data, buf.to_vec())
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });

    for (qi, (written, read)) in results.iter().enumerate() {
        assert!(written == read, "queue {qi} read back different bytes");
    }
    let uri = server.uri("vol0");
    let nbd = raid_tests::read_export(&uri, dir.path());
    assert!(nbd[..1 << 20] == results[0].0[..] && nbd[1 << 20..2 << 20] == results[1].0[..]);
}

fn wait(q: &mut Blkioq, n: usize) {
    let mut slots: Vec<MaybeUninit<Completion>> = (0..n).map(|_| MaybeUninit::uninit()).collect();
    let mut left = n;
    while left > 0 {
        let mut timeout = Duration::from_secs(30);
        let got = q
            .do_io(&mut slots[..left], left, Some(&mut timeout), None)
            .expect("do_io");
        assert!(got > 0, "no completion within 30 s");
        for slot in &slots[..got] {
            // SAFETY: do_io initialised the first `got` completions.
            let c = unsafe { slot.assume_init_ref() };
            assert_eq!(c.ret, 0, "request {} failed", c.user_data);
        }
        left -= got;
    }
}

#[test]
fn frontend_can_disconnect_and_reconnect_and_data_stays() {
    let dir = scratch_dir("vhost-reconnect");
    let (server, sock, _) = raid5_server(dir.path(), &[]);

    for round in 0..3u64 {
        let data = pseudo_random(256 << 10, round + 7);
        let offset = round * STRIPE + 4096;
        {
            let mut c = Client::connect(&sock, 1, 1 << 20);
            assert_eq!(c.write(offset, &data, 0), 0);
        } // dropped: the frontend disconnects

        let mut c = Client::connect(&sock, 1, 1 << 20);
        assert!(c.read(offset, data.len()).unwrap() == data, "round {round}");
    }
    qemu_io(&server.uri("vol0"), &["read 0 64k".to_string()]);
}

#[test]
fn requests_past_the_end_fail_and_the_device_keeps_serving() {
    let dir = scratch_dir("vhost-past-end");
    let (_server, sock, _) = raid5_server(dir.path(), &[]);
    let mut c = Client::connect(&sock, 1, 1 << 20);
    let cap = c.capacity();

    let straddle = c.read(cap - 512, 1024);
    let beyond = c.read(cap, 512);
    let far = c.read(cap + (1 << 30), 4096);
    let last = c.read(cap - 512, 512);

    assert!(straddle.is_err() && beyond.is_err() && far.is_err());
    assert!(last.is_ok());
}

#[test]
fn read_only_export_is_advertised_read_only_and_refuses_writes() {
    let dir = scratch_dir("vhost-ro");
    let members = member_paths(dir.path(), 4);
    create_array(5, "64K", "32M", "vol0", &members);
    let sock = dir.path().join("vol0.sock");
    {
        let _rw = start(&sock, &members, &[]);
        let mut c = Client::connect(&sock, 1, 1 << 20);
        assert_eq!(c.write(8192, &[0x33; 4096], 0), 0);
    }
    let server = start(&sock, &members, &["--read-only"]);

    let writable = Client::try_connect(&sock, 1, 1 << 20, false);
    let mut ro = Client::connect_read_only(&sock);
    let data = ro.read(8192, 4096).unwrap();
    let nbd_write = raid_tests::run(
        std::process::Command::new("qemu-io")
            .args(["-f", "raw", "-c", "write 0 4k"])
            .arg(server.uri("vol0")),
    );

    let err = writable
        .err()
        .expect("a read-only device must refuse a writable start");
    assert_eq!(err.errno(), blkio::Errno::ROFS, "{}", err.message());
    assert!(data.iter().all(|&b| b == 0x33));
    let nbd_out = String::from_utf8_lossy(&nbd_write.stdout).to_string()
        + &String::from_utf8_lossy(&nbd_write.stderr);
    assert!(
        !nbd_write.status.success() || nbd_out.contains("failed"),
        "{nbd_out}"
    );
}

impl Client {
    fn connect_read_only(sock: &Path) -> Client {
        Self::try_connect(sock, 1, 1 << 20, true).expect("read-only connect")
    }
}

#[test]
fn socket_is_private_stale_file_is_replaced_and_live_one_refused() {
    let dir = scratch_dir("vhost-socket");
    let members = member_paths(dir.path(), 4);
    create_array(5, "64K", "32M", "vol0", &members);
    let sock = dir.path().join("vol0.sock");
    // A stale socket: bound, then abandoned.
    drop(std::os::unix::net::UnixListener::bind(&sock).unwrap());
    assert!(sock.exists());

    let _server = start(&sock, &members, &[]);
    let mode = std::fs::metadata(&sock).unwrap().permissions().mode() & 0o777;
    // Another array, same socket: refused before its members are touched.
    let other_dir = dir.path().join("other");
    std::fs::create_dir_all(&other_dir).unwrap();
    let others = member_paths(&other_dir, 2);
    create_array(1, "64K", "8M", "vol1", &others);
    let second = raid_tests::run(
        vraid(&["serve", "--nbd", "127.0.0.1:0", "--vhost-user-blk"])
            .arg(&sock)
            .args(&others),
    );

    assert!(std::fs::metadata(&sock).unwrap().file_type().is_socket());
    assert_eq!(mode, 0o600);
    assert!(!second.status.success());
    let stderr = String::from_utf8_lossy(&second.stderr);
    assert!(stderr.contains("in use"), "{stderr}");
    let mut c = Client::connect(&sock, 1, 1 << 20);
    assert!(c.read(0, 4096).is_ok());
}

#[test]
fn sigterm_with_a_connected_frontend_stops_cleanly_and_keeps_the_data() {
    let dir = scratch_dir("vhost-sigterm");
    let (server, sock, members) = raid5_server(dir.path(), &[]);
    let mut c = Client::connect(&sock, 1, 1 << 20);
    let data = pseudo_random(128 << 10, 42);
    assert_eq!(c.write(3 * CHUNK, &data, 0), 0);

    let code = server.stop();

    assert_eq!(code, 0);
    assert!(!sock.exists(), "socket file left behind");
    drop(c);
    let _again = start(&sock, &members, &[]);
    let mut c = Client::connect(&sock, 1, 1 << 20);
    assert!(c.read(3 * CHUNK, data.len()).unwrap() == data);
}

#[test]
fn demo_exports_vol0_sock_beside_nbd() {
    let dir = scratch_dir("vhost-demo");
    let server = Server::start_in(dir.path(), &[]);
    let sock = dir.path().join("vraid-data").join("vol0.sock");
    wait_for_socket(&sock);
    let mut c = Client::connect(&sock, 2, 1 << 20);

    let ret = c.write(1 << 20, &[0x6c; 65536], 0);

    assert_eq!(ret, 0);
    assert!(server
        .log()
        .contains("vhost-user-blk: vraid-data/vol0.sock"));
    qemu_io(
        &server.uri("vol0"),
        &[format!("read -P 0x6c {} 65536", 1 << 20)],
    );
}

#[test]
fn config_volume_with_vhost_socket_serves_its_queues() {
    let dir = scratch_dir("vhost-config");
    let members = member_paths(dir.path(), 4);
    let sock = dir.path().join("r0.sock");
    let config = dir.path().join("vraid.toml");
    let list = members
        .iter()
        .map(|m| format!("{:?}", m.display().to_string()))
        .collect::<Vec<_>>()
        .join(", ");
    std::fs::write(
        &config,
        format!(
            "[[volume]]\nname = \"r0\"\nlevel = 0\nchunk_size = \"128K\"\nmembers = [{list}]\n\
             create = {{ member_size = \"16M\" }}\nvhost_user_blk = {:?}\nnum_queues = 2\n",
            sock.display().to_string()
        ),
    )
    .unwrap();
    let _server = Server::start(&["--config", config.to_str().unwrap()]);
    wait_for_socket(&sock);

    let three = Client::try_connect(&sock, 3, 1 << 20, false);
    let mut two = Client::connect(&sock, 2, 1 << 20);
    let data = pseudo_random(512 << 10, 9);
    let ret = two.write(128 << 10, &data, 0);

    assert!(three.is_err(), "a third queue must be refused");
    assert_eq!(ret, 0);
    assert!(two.read(128 << 10, data.len()).unwrap() == data);
}

#[test]
fn frontend_vanishing_with_requests_in_flight_leaves_the_server_serving() {
    let dir = scratch_dir("vhost-vanish");
    let (server, sock, _) = raid5_server(dir.path(), &[]);

    for round in 0..3 {
        let mut c = Client::connect(&sock, 1, 2 << 20);
        for k in 0..32usize {
            let ptr = (c.region.addr + k * 65536) as *const u8;
            c.queues[0].write(k as u64 * 65536, ptr, 65536, k, ReqFlags::empty());
        }
        // Kick the queue without waiting for anything, then vanish.
        let mut none: [MaybeUninit<Completion>; 0] = [];
        let mut zero = Duration::ZERO;
        let _ = c.queues[0].do_io(&mut none, 0, Some(&mut zero), None);
        drop(c);
        eprintln!("round {round}: disconnected with writes in flight");
    }

    let mut c = Client::connect(&sock, 1, 1 << 20);
    let data = pseudo_random(65536, 5);
    assert_eq!(c.write(4 << 20, &data, 0), 0);
    assert!(c.read(4 << 20, data.len()).unwrap() == data);
    assert!(
        !server.log().contains("still in flight"),
        "{}",
        server.log()
    );
}

/// An md array (two md 1.2 RAID-1 images) over vhost-user-blk: read-only
/// by default (a writable start refused, the bytes read back), and with
/// `--md-writable` written through libblkio, read over NBD from the same
/// server, both mirrors holding it and md's superblocks clean after.
#[test]
fn md_array_is_exported_over_vhost_user_blk_read_only_and_writable() {
    use raid_tests::md_image;
    let dir = scratch_dir("vhost-md");
    let data = pseudo_random(md_image::DATA_SECTORS as usize * 512, 4);
    let members = md_image::raid1_members(dir.path(), 0x51, &data);
    let sock = dir.path().join("md.sock");

    let server = start(&sock, &members, &["--md"]);
    assert!(Client::try_connect(&sock, 1, 1 << 20, false).is_err());
    let mut ro = Client::connect_read_only(&sock);
    assert_eq!(ro.capacity(), data.len() as u64);
    assert!(ro.read(3 << 20, 1 << 20).unwrap() == data[3 << 20..4 << 20]);
    drop(ro);
    assert_eq!(server.stop(), 0);

    let server = start(&sock, &members, &["--md-writable", "--md"]);
    let mut c = Client::connect(&sock, 1, 1 << 20);
    let new = pseudo_random(391 * 512, 5);
    assert_eq!(c.write(123 * 512, &new, 0), 0);
    drop(c);
    let nbd = read_export(&server.uri("redmd"), dir.path());
    assert_eq!(server.stop(), 0);

    let mut want = data.clone();
    want[123 * 512..123 * 512 + new.len()].copy_from_slice(&new);
    assert!(nbd == want, "NBD reads what vhost-user-blk wrote");
    for m in &members {
        let at = md_image::DATA_OFFSET * 512;
        let len = want.len();
        assert!(raid_tests::peek(m, at, len) == want, "{}", m.display());
        let e = raid_tests::examine(m);
        assert_eq!(
            (e["state"].as_str(), e["events"].as_u64()),
            (Some("clean"), Some(12))
        );
    }
}
