//! Red team of session 15's changes (change notification, the member
//! page-cache drop and RWF_NOWAIT refusal streak, split-cluster write case
//! 4, RAID-0 member runs up to `merge_limit`, reused rebuild source
//! buffers), tried with real clients against the real binary.

use std::mem::MaybeUninit;
use std::path::{Path, PathBuf};
use std::time::Duration;

use blkio::{Blkio, Blkioq, Completion, MemoryRegion, ReqFlags};
use raid_tests::*;

// ---- RAID-0 member runs under vhost-user-blk scatter-gather lists

/// One libblkio connection with a mapped buffer region.
struct Vhost {
    blkio: Blkio,
    queue: Blkioq,
    region: MemoryRegion,
}

impl Vhost {
    fn connect(sock: &Path, buf_len: usize) -> Vhost {
        Vhost::connect_sized(sock, buf_len, None)
    }

    /// As [`Vhost::connect`], with a virtqueue of `queue_size` descriptors
    /// (libblkio's default is 256).
    fn connect_sized(sock: &Path, buf_len: usize, queue_size: Option<i32>) -> Vhost {
        let mut blkio = Blkio::new("virtio-blk-vhost-user").unwrap();
        blkio.set_str("path", sock.to_str().unwrap()).unwrap();
        blkio.connect().unwrap();
        blkio.set_i32("num-queues", 1).unwrap();
        if let Some(n) = queue_size {
            blkio.set_i32("queue-size", n).unwrap();
        }
        let mut outcome = blkio.start().unwrap();
        let region = blkio.alloc_mem_region(buf_len).unwrap();
        blkio.map_mem_region(&region).unwrap();
        let queue = outcome.queues.remove(0);
        Vhost {
            blkio,
            queue,
            region,
        }
    }

    fn buf(&mut self) -> &mut [u8] {
        // SAFETY: the region is `len` bytes libblkio mapped for us; it lives
        // as long as `self.blkio`, and no request is in flight while the
        // slice is borrowed (every call waits for its completion).
        unsafe { std::slice::from_raw_parts_mut(self.region.addr as *mut u8, self.region.len) }
    }

    /// The request's `ret` once it completes.
    fn reap(&mut self) -> i32 {
        let mut slot = [MaybeUninit::<Completion>::uninit()];
        let mut timeout = Duration::from_secs(60);
        let got = self
            .queue
            .do_io(&mut slot, 1, Some(&mut timeout), None)
            .expect("do_io");
        assert_eq!(got, 1, "no completion within 60 s");
        // SAFETY: do_io initialised the one completion it reported.
        unsafe { slot[0].assume_init_ref() }.ret
    }

    /// The iovecs of `segs` (buffer offset, length) in the region.
    fn iovecs(&self, segs: &[(usize, usize)]) -> Vec<libc::iovec> {
        segs.iter()
            .map(|&(at, len)| libc::iovec {
                iov_base: (self.region.addr + at) as *mut libc::c_void,
                iov_len: len,
            })
            .collect()
    }

    /// WRITEV of `data` at volume `offset`, cut into `segs`.
    fn writev(&mut self, offset: u64, segs: &[(usize, usize)], data: &[u8]) -> i32 {
        let mut from = 0;
        for &(at, len) in segs {
            self.buf()[at..at + len].copy_from_slice(&data[from..from + len]);
            from += len;
        }
        let iov = self.iovecs(segs);
        let flags = ReqFlags::empty();
        self.queue
            .writev(offset, iov.as_ptr(), iov.len() as u32, 0, flags);
        self.reap()
    }

    /// READV at volume `offset` into `segs`: the bytes, in order.
    fn readv(&mut self, offset: u64, segs: &[(usize, usize)]) -> Result<Vec<u8>, i32> {
        let iov = self.iovecs(segs);
        let flags = ReqFlags::empty();
        self.queue
            .readv(offset, iov.as_ptr(), iov.len() as u32, 0, flags);
        match self.reap() {
            0 => Ok(segs
                .iter()
                .flat_map(|&(at, len)| self.buf()[at..at + len].to_vec())
                .collect()),
            ret => Err(ret),
        }
    }
}

impl Drop for Vhost {
    fn drop(&mut self) {
        self.blkio.unmap_mem_region(&self.region);
        self.blkio.free_mem_region(&self.region);
    }
}

/// A scatter-gather list of `count` segments (lengths multiples of 512,
/// some not 4 KiB; memory offsets 4 KiB-aligned, 512-aligned or odd) for
/// `total` bytes at most, placed apart in a region; `seed` picks them.
fn segments(count: usize, seed: u64, region: usize) -> Vec<(usize, usize)> {
    let r = pseudo_random(count * 2, seed);
    let mut at = 0;
    let mut segs = Vec::new();
    for i in 0..count {
        let len = [512, 1024, 3584, 4096, 8192, 12288, 65536, 131072][r[2 * i] as usize % 8];
        let skew = [0, 0, 512, 1][r[2 * i + 1] as usize % 4];
        let start = at + skew;
        if start + len > region {
            break;
        }
        segs.push((start, len));
        at = (start + len).next_multiple_of(4096);
    }
    segs
}

/// Attack: RAID-0 of 4 KiB chunks over 2 io_uring members (runs merge up
/// to 8 MiB and 1024 segments) and a tmpfs one (inline engine, 64 KiB), written and read through vhost-user-blk
/// with lists of up to 254 segments (the `seg_max` we advertise; 128 KiB each at
/// most: up to 8128 chunk pieces a request, past the 1024-segment cap) of mixed sizes and alignments at
/// aligned and 512-byte offsets; every byte is checked over vhost (with a
/// different list) and over NBD. Held in session 16.
#[test]
fn raid0_runs_of_many_odd_segments_read_back_byte_exact() {
    let dir = scratch_dir("redteam-s16-r0-segments");
    // Member 1 on tmpfs: the inline engine, runs of at most 64 KiB there.
    let shm = tempfile::tempdir_in("/dev/shm").unwrap();
    let mut members = member_paths(dir.path(), 3);
    members[1] = shm.path().join("m1.img");
    create_array(0, "4K", "48M", "vol0", &members);
    let sock = dir.path().join("vol0.sock");
    let mut args: Vec<String> = vec!["--vhost-user-blk".into(), sock.display().to_string()];
    args.extend(members.iter().map(|m| m.display().to_string()));
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let server = Server::start(&refs);
    wait_for_socket(&sock);
    let region = 64 << 20;
    let mut c = Vhost::connect(&sock, region);
    let size = 96u64 << 20;
    let mut model = vec![0u8; size as usize];
    for round in 0..12u64 {
        let segs = segments([254, 100, 254, 17][round as usize % 4], round + 1, region);
        let len: usize = segs.iter().map(|s| s.1).sum();
        let offset = (round * 7_340_544) % (size - len as u64) / 512 * 512;
        let data = pseudo_random(len, 100 + round);
        assert_eq!(c.writev(offset, &segs, &data), 0, "round {round}");
        model[offset as usize..offset as usize + len].copy_from_slice(&data);
        let other = segments(254, 50 + round, region);
        let mut got = Vec::new();
        let mut at = offset;
        while got.len() < len {
            let mut take = Vec::new();
            let mut n = 0;
            for &(a, l) in &other {
                let l = l.min(len - got.len() - n);
                if l == 0 {
                    break;
                }
                take.push((a, l));
                n += l;
            }
            got.extend(c.readv(at, &take).unwrap());
            at += n as u64;
        }
        assert!(got == data, "round {round}: vhost readback differs");
    }
    drop(c);
    let nbd = read_export(&server.uri("vol0"), dir.path());
    let bad = (0..model.len() / 4096)
        .filter(|b| nbd[b * 4096..(b + 1) * 4096] != model[b * 4096..(b + 1) * 4096])
        .count();
    assert_eq!(bad, 0, "4 KiB blocks differing over NBD");
    assert_eq!(server.stop(), 0);
}

/// Attack: a vhost-user-blk request of 1000 segments, past the `seg_max`
/// of 254 we advertise (the red team's hang). libblkio 0.5.1 never sends
/// it on its default 256-descriptor queue: virtio-driver's `add_request`
/// fails with "Not enough free descriptors" for a 1002-descriptor chain and
/// libblkio puts the request back on its backlog for ever (client side; it
/// does not check `max-segments`). On a 1024-descriptor queue the chain
/// does arrive: vraid must answer it (it runs it, as QEMU does with chains
/// over `seg_max` that fit the queue) and the queue must go on working.
/// Held in session 16.
#[test]
fn a_1000_segment_request_over_seg_max_is_answered_and_the_queue_goes_on() {
    let dir = scratch_dir("redteam-s16-1000-segments");
    let members = member_paths(dir.path(), 2);
    create_array(0, "4K", "16M", "vol0", &members);
    let sock = dir.path().join("vol0.sock");
    let mut args: Vec<String> = vec!["--vhost-user-blk".into(), sock.display().to_string()];
    args.extend(members.iter().map(|m| m.display().to_string()));
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let server = Server::start(&refs);
    wait_for_socket(&sock);
    let region = 8 << 20;
    let mut c = Vhost::connect_sized(&sock, region, Some(1024));
    // 1000 segments of 512 bytes, each at its own 4 KiB slot, some skewed.
    let segs: Vec<(usize, usize)> = (0..1000).map(|i| (i * 4096 + (i % 3) * 512, 512)).collect();
    let len = 1000 * 512;
    let data = pseudo_random(len, 77);
    assert_eq!(c.writev(1 << 20, &segs, &data), 0, "1000-segment write");
    let back: Vec<(usize, usize)> = segs.iter().map(|&(a, l)| (a + 1, l)).collect();
    let got = c.readv(1 << 20, &back).expect("1000-segment read");
    assert!(got == data, "1000-segment readback differs");
    // The queue still serves ordinary requests after the long chains.
    let small = pseudo_random(4096, 78);
    assert_eq!(c.writev(0, &[(0, 4096)], &small), 0);
    assert_eq!(c.readv(0, &[(8192, 4096)]).unwrap(), small);
    drop(c);
    let nbd = read_export(&server.uri("vol0"), dir.path());
    assert!(
        nbd[1 << 20..(1 << 20) + len] == data[..],
        "NBD readback differs"
    );
    assert_eq!(server.stop(), 0);
}

// ---- Change notification: SIGTERM while `vraid fail` waits on a pass

/// Break: `vraid fail` of a member being rebuilt holds the array's
/// member-set lock while it waits for the pass to let go. A SIGTERM then
/// cancelled the pass as a shutdown (the abandon was dropped: the role
/// stayed recorded as rebuilding onto the member the operator failed), so
/// the wait never settled; the finished pass's task then queued for the
/// lock to activate the next spare, and shutdown hung 10 s until it
/// aborted that task ("a sync task did not stop"), the `fail` client
/// getting no reply. Now a target the operator abandoned ends as abandoned
/// even at shutdown (the reply comes, the superblocks record the role
/// down), and no spare is activated once shutdown began.
#[test]
fn sigterm_while_fail_waits_on_a_rebuild_stops_at_once_and_records_the_fail() {
    let dir = scratch_dir("redteam-s16-fail-sigterm");
    let paths = sparse_members(dir.path(), 3, 64 << 20);
    create_array(1, "64K", "64M", "vol0", &paths);
    let spares: Vec<PathBuf> = (1..=2)
        .map(|i| dir.path().join(format!("spare{i}.img")))
        .collect();
    for s in &spares {
        std::fs::File::create(s).unwrap().set_len(64 << 20).unwrap();
    }
    let list = |ps: &[PathBuf]| {
        let v: Vec<String> = ps.iter().map(|p| format!("{p:?}")).collect();
        v.join(", ")
    };
    let config = dir.path().join("c.toml");
    std::fs::write(
        &config,
        format!(
            "[[volume]]\nname = \"vol0\"\nlevel = 1\nmembers = [{}]\nspares = [{}]\nrebuild_max_mbps = 1\n",
            list(&paths),
            list(&spares)
        ),
    )
    .unwrap();
    let ctl = dir.path().join("ctl.sock");
    let server = Server::start(&[
        "--config",
        config.to_str().unwrap(),
        "--control",
        ctl.to_str().unwrap(),
    ]);
    qemu_io(
        &server.uri("vol0"),
        &["write -P 5 0 60M".into(), "flush".into()],
    );
    vraid_ctl_ok(&ctl, &["fail", "vol0", "1"]);
    server.wait_log("rebuild started", Duration::from_secs(30));

    // Act: fail the member being rebuilt (onto spare 1), SIGTERM while the
    // reply waits for the 1 MB/s pass to notice.
    let ctl2 = ctl.clone();
    let failing = std::thread::spawn(move || vraid_ctl(&ctl2, &["fail", "vol0", "1"]));
    server.wait_log("rebuild abandoned", Duration::from_secs(30));
    let started = std::time::Instant::now();
    let log = server.log();
    let code = server.stop();
    let stop_took = started.elapsed();
    let reply = failing.join().unwrap();

    // Assert: a prompt clean stop, the fail answered and recorded.
    let log = log + &String::from_utf8_lossy(&reply.stderr);
    assert_eq!(code, 0);
    assert!(
        stop_took < Duration::from_secs(5),
        "stop took {stop_took:?}"
    );
    assert!(
        reply.status.success(),
        "fail: {}",
        String::from_utf8_lossy(&reply.stderr)
    );
    let table = examine(&paths[0])["members"].clone();
    let role1 = &table[1];
    assert_ne!(role1["state"], "rebuilding", "{table}\n{log}");
}

// ---- RAID-6 two-member rebuild through reused source buffers

/// Pattern writes (`pattern`, offset, length) spread over `size` bytes,
/// some 512-byte aligned only, with gaps never written.
fn scattered_writes(size: u64, seed: u64, count: usize) -> Vec<(u8, u64, u64)> {
    let r = pseudo_random(count * 3, seed);
    (0..count)
        .map(|i| {
            let len = [512u64, 1024, 4096, 12288, 65536, 200704, 1 << 20][r[3 * i] as usize % 7];
            let at = (u64::from(r[3 * i + 1]) << 8 | u64::from(r[3 * i + 2])) * (size / 65536);
            let at = at / 512 * 512;
            (1 + (i % 250) as u8, at.min(size - len), len)
        })
        .collect()
}

fn apply(uri: &str, model: &mut [u8], writes: &[(u8, u64, u64)]) {
    let cmds: Vec<String> = writes
        .iter()
        .map(|(p, at, len)| format!("write -P {p} {at} {len}"))
        .collect();
    qemu_io(uri, &cmds);
    for &(p, at, len) in writes {
        model[at as usize..(at + len) as usize].fill(p);
    }
}

/// Attack: a RAID-6 of 4 KiB chunks whose member data is not a multiple
/// of the 2 MiB rebuild step (a short last step), two members rebuilt (one
/// pass after the other) onto members full of old bytes, with never-written gaps and
/// client writes during the pass; then the two other members failed, so
/// every read goes through the rebuilt ones. Held in session 16 (also
/// RAID-5 4K/64K/1M/4M chunks and RAID-6 8M chunks, by hand).
#[test]
fn raid6_two_rebuilt_members_serve_the_data_alone() {
    let dir = scratch_dir("redteam-s16-r6-rebuild");
    let mut paths = member_paths(dir.path(), 5);
    create_array(6, "4K", "39001K", "vol0", &paths);
    let ctl = dir.path().join("ctl.sock");
    let mut args = vec!["--control", ctl.to_str().unwrap()];
    let refs: Vec<String> = paths.iter().map(|p| p.display().to_string()).collect();
    args.extend(refs.iter().map(String::as_str));
    let server = Server::start(&args);
    let uri = server.uri("vol0");
    let size = volume_status(&ctl, "vol0")["size"].as_u64().unwrap();
    assert_ne!(size / 3 % (2 << 20), 0, "a short last step");
    let mut model = vec![0u8; size as usize];
    apply(&uri, &mut model, &scattered_writes(size, 7, 60));
    apply(&uri, &mut model, &[(77, size - 4096, 4096)]);
    vraid_ctl_ok(&ctl, &["set", "vol0", "--rebuild-max-mbps", "20"]);
    for role in [1, 4] {
        vraid_ctl_ok(&ctl, &["fail", "vol0", &role.to_string()]);
        vraid_ctl_ok(&ctl, &["remove", "vol0", &role.to_string()]);
        let new = dir.path().join(format!("new{role}.img"));
        let len = std::fs::metadata(&paths[0]).unwrap().len() as usize;
        std::fs::write(&new, pseudo_random(len, 1000 + role as u64)).unwrap();
        vraid_ctl_ok(&ctl, &["add", "vol0", new.to_str().unwrap(), "--force"]);
        paths[role] = new;
    }
    for round in 0..4 {
        apply(&uri, &mut model, &scattered_writes(size, 20 + round, 10));
    }
    for role in [1, 4] {
        let done = format!("rebuild of member {role} finished");
        server.wait_log(&done, Duration::from_secs(300));
    }
    assert_eq!(
        member_states(&volume_status(&ctl, "vol0")),
        vec!["active"; 5]
    );
    let whole = read_export(&uri, dir.path());
    for role in ["0", "2"] {
        vraid_ctl_ok(&ctl, &["fail", "vol0", role]);
    }
    let through_rebuilt = read_export(&uri, dir.path());

    let differing = |got: &[u8]| {
        (0..model.len() / 4096)
            .filter(|b| got[b * 4096..(b + 1) * 4096] != model[b * 4096..(b + 1) * 4096])
            .count()
    };
    assert_eq!(differing(&whole), 0, "blocks differing, whole array");
    assert_eq!(
        differing(&through_rebuilt),
        0,
        "blocks differing, read through the rebuilt members"
    );
    assert_eq!(server.stop(), 0);
}
