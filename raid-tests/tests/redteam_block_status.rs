//! Red team (session 9, RT3) of NBD block status and QoS: `base:allocation`
//! must never call a range that holds data a zero hole (backup tools that
//! trust it skip the range). Every stage here compares what real clients
//! copy when they trust the extents (`nbdcopy`, `qemu-img convert`) with a
//! full read that ignores them (`nbdcopy --no-extents`): edge writes,
//! TRIM/WRITE_ZEROES, data held in the volatile write cache, a degraded
//! array, a member rebuilt from a file full of old bytes, a restart, and
//! an array created over files that held data. Then protocol abuse by a
//! hand-rolled client and nbdsh, and a QoS-throttled client that hangs up
//! with requests queued.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use raid_tests::*;

const MIB: u64 = 1 << 20;

/// Writes `len` bytes of `byte` at `at` of a file (creating it sparse).
fn scribble(path: &Path, at: u64, len: usize, byte: u8) {
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .unwrap();
    std::os::unix::fs::FileExt::write_all_at(&f, &vec![byte; len], at).unwrap();
}

/// True when two files hold the same bytes (read in pieces).
fn same_bytes(a: &Path, b: &Path) -> Result<(), String> {
    let (mut fa, mut fb) = (
        std::fs::File::open(a).unwrap(),
        std::fs::File::open(b).unwrap(),
    );
    let (la, lb) = (fa.metadata().unwrap().len(), fb.metadata().unwrap().len());
    if la != lb {
        return Err(format!(
            "{} is {la} bytes, {} {lb}",
            a.display(),
            b.display()
        ));
    }
    let (mut x, mut y) = (vec![0u8; 4 << 20], vec![0u8; 4 << 20]);
    let mut pos = 0u64;
    while pos < la {
        let n = ((la - pos) as usize).min(x.len());
        fa.read_exact(&mut x[..n]).unwrap();
        fb.read_exact(&mut y[..n]).unwrap();
        if x[..n] != y[..n] {
            let i = (0..n).find(|&i| x[i] != y[i]).unwrap();
            return Err(format!(
                "first difference at byte {}: {:#x} vs {:#x}",
                pos + i as u64,
                x[i],
                y[i]
            ));
        }
        pos += n as u64;
    }
    Ok(())
}

/// Copies the export three ways (nbdcopy trusting extents, qemu-img
/// convert trusting them, nbdcopy --no-extents) and asserts they agree.
fn copies_agree(uri: &str, dir: &Path, stage: &str) {
    let full = dir.join("full.img");
    let fast = dir.join("fast.img");
    let qemu = dir.join("qemu.img");
    for f in [&full, &fast, &qemu] {
        let _ = std::fs::remove_file(f);
    }
    run_ok(Command::new("nbdcopy").args(["--no-extents", uri, full.to_str().unwrap()]));
    run_ok(Command::new("nbdcopy").args([uri, fast.to_str().unwrap()]));
    run_ok(Command::new("qemu-img").args([
        "convert",
        "-f",
        "raw",
        "-O",
        "raw",
        uri,
        qemu.to_str().unwrap(),
    ]));
    if let Err(e) = same_bytes(&full, &fast) {
        panic!("{stage}: nbdcopy with extents lost data: {e}");
    }
    if let Err(e) = same_bytes(&full, &qemu) {
        panic!("{stage}: qemu-img convert lost data: {e}");
    }
    for f in [&full, &fast, &qemu] {
        let _ = std::fs::remove_file(f);
    }
}

/// An nbdsh (libnbd) script run against `uri`; its output.
fn nbdsh(uri: &str, script: &str) -> String {
    // nbdsh runs `python3` from PATH; libnbd's module is the
    // distribution interpreter's, which a pyenv shim may shadow.
    let path = std::env::var("PATH").unwrap_or_default();
    let mut c = Command::new("nbdsh");
    c.env("PATH", format!("/usr/bin:{path}"));
    run_ok(c.args(["-u", uri, "-c", script]))
}

/// The volume's status object.
fn vol_status(control: &Path) -> serde_json::Value {
    volume_status(control, "vol0")
}

/// Polls `cond` on the status until it holds (bounded).
fn wait_status(control: &Path, what: &str, cond: impl Fn(&serde_json::Value) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let st = vol_status(control);
        if cond(&st) {
            return;
        }
        assert!(Instant::now() < deadline, "{what}: {st}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

struct Array {
    dir: tempfile::TempDir,
    paths: Vec<PathBuf>,
    control: PathBuf,
    server: Server,
}

fn serve(dir: tempfile::TempDir, paths: Vec<PathBuf>, extra: &[&str]) -> Array {
    let control = dir.path().join("control.sock");
    let mut args: Vec<&str> = paths.iter().map(|p| p.to_str().unwrap()).collect();
    args.extend(["--control", control.to_str().unwrap()]);
    args.extend(extra);
    let server = Server::start(&args);
    Array {
        dir,
        paths,
        control,
        server,
    }
}

/// A 3-member RAID-5 of 512M members whose files held old bytes (0xee,
/// 0x77) in places before `vraid create`.
fn raid5_over_old_data(test: &str) -> Array {
    let dir = scratch_dir(test);
    let paths = member_paths(dir.path(), 3);
    for (i, p) in paths.iter().enumerate() {
        std::fs::File::create(p)
            .unwrap()
            .set_len(512 * MIB)
            .unwrap();
        for at in [MIB, 200 * MIB + 4096 * i as u64, 511 * MIB] {
            scribble(p, at, 256 << 10, 0xee - i as u8);
        }
    }
    // `create` notices the old bytes at the end and wants --force.
    force_create(5, "512M", &paths);
    serve(dir, paths, &[])
}

/// `vraid create --force` (members that hold old bytes).
fn force_create(level: u32, size: &str, paths: &[PathBuf]) {
    let l = level.to_string();
    let mut c = vraid(&["create", "--force", "--level", &l, "--member-size", size]);
    run_ok(c.args(paths));
}

#[test]
fn copies_trusting_extents_equal_full_reads_through_cache_degrade_rebuild_restart() {
    let a = raid5_over_old_data("rt3-bs-stages");
    let uri = a.server.uri("vol0");
    let size: u64 = nbdsh(&uri, "print(h.get_size())").trim().parse().unwrap();

    // Fresh array over old bytes: all of it reads as zeroes.
    copies_agree(&uri, a.dir.path(), "fresh over old bytes");
    let probe = format!(
        "import sys\nb = h.pread(1 << 20, {})\nprint(b.count(0) == len(b))",
        198 * MIB
    );
    assert_eq!(nbdsh(&uri, &probe).trim(), "True", "old bytes show");

    // Edge writes: unaligned, the last bytes, TRIM and WRITE_ZEROES over data.
    let last = size - 4097;
    qemu_io(
        &uri,
        &[
            "write -P 0xab 130M 1M".to_string(),
            "write -P 0x5a 300000001 4097".to_string(),
            format!("write -P 0x3c {last} 4097"),
            "discard 130M 64k".to_string(),
            "write -z 131M 4k".to_string(),
            "write -P 0x11 400M 8M".to_string(),
            "write -z 400M 8M".to_string(),
        ],
    );
    copies_agree(&uri, a.dir.path(), "edge writes, trim, zeroes");

    // Volatile cache: writes acknowledged, held in memory, not flushed.
    vraid_ctl_ok(&a.control, &["set", "vol0", "--cache", "volatile"]);
    let cached = format!(
        "h.pwrite(b'\\x77' * 65536, {})\nh.pwrite(b'\\x78' * 512, {})\nh.shutdown()",
        600 * MIB + 512,
        900 * MIB + 3
    );
    nbdsh(&uri, &cached);
    let dirty = vol_status(&a.control)["cache"]["dirty_bytes"]
        .as_u64()
        .unwrap();
    assert!(dirty > 0, "the writes are only cached");
    copies_agree(&uri, a.dir.path(), "data in the volatile cache");
    vraid_ctl_ok(&a.control, &["set", "vol0", "--cache", "writethrough"]);

    // Degraded, written while degraded (a region first written now).
    vraid_ctl_ok(&a.control, &["fail", "vol0", "1"]);
    vraid_ctl_ok(&a.control, &["remove", "vol0", "1"]);
    qemu_io(&uri, &["write -P 0x42 800M 128k".to_string()]);
    copies_agree(&uri, a.dir.path(), "degraded");

    // Rebuilt onto a file full of old bytes, then the other members'
    // redundancy is taken away so the new member is read.
    let new = a.dir.path().join("new.img");
    std::fs::File::create(&new)
        .unwrap()
        .set_len(512 * MIB)
        .unwrap();
    for at in [0, 64 * MIB, 250 * MIB, 450 * MIB, 511 * MIB] {
        scribble(&new, at, MIB as usize, 0xdd);
    }
    vraid_ctl_ok(
        &a.control,
        &["add", "vol0", new.to_str().unwrap(), "--force"],
    );
    wait_status(&a.control, "rebuild", |st| {
        member_states(st).iter().all(|s| s == "active")
    });
    vraid_ctl_ok(&a.control, &["fail", "vol0", "0"]);
    copies_agree(&uri, a.dir.path(), "rebuilt member, member 0 failed");

    // Restart: the map comes back from the members.
    let Array {
        dir,
        mut paths,
        server,
        ..
    } = a;
    assert_eq!(server.stop(), 0);
    paths[1] = new;
    let a = serve(dir, paths, &[]);
    copies_agree(&a.server.uri("vol0"), a.dir.path(), "after a restart");
    let _ = &a.paths;
}

/// Block status chunks: (context id, descriptors (length, flags)).
type Status = Vec<(u32, Vec<(u32, u32)>)>;

/// A hand-rolled NBD client: just enough protocol to misbehave.
struct Raw(TcpStream);

/// One reply chunk (or a simple reply: `kind` 0, `error` set).
#[derive(Debug)]
struct Chunk {
    flags: u16,
    kind: u16,
    error: u32,
    payload: Vec<u8>,
}

impl Raw {
    fn connect(server: &Server) -> Raw {
        let mut s = TcpStream::connect(server.addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        let mut greeting = [0u8; 18];
        s.read_exact(&mut greeting).unwrap();
        // Fixed newstyle, no zeroes.
        s.write_all(&3u32.to_be_bytes()).unwrap();
        Raw(s)
    }

    /// Sends one option; every reply (type, payload) up to the final one.
    fn option(&mut self, code: u32, payload: &[u8]) -> Vec<(u32, Vec<u8>)> {
        let mut b = 0x4948_4156_454f_5054u64.to_be_bytes().to_vec();
        b.extend_from_slice(&code.to_be_bytes());
        b.extend_from_slice(&(payload.len() as u32).to_be_bytes());
        b.extend_from_slice(payload);
        self.0.write_all(&b).unwrap();
        let mut out = Vec::new();
        loop {
            let mut head = [0u8; 20];
            self.0.read_exact(&mut head).unwrap();
            let kind = u32::from_be_bytes(head[12..16].try_into().unwrap());
            let len = u32::from_be_bytes(head[16..20].try_into().unwrap());
            let mut body = vec![0u8; len as usize];
            self.0.read_exact(&mut body).unwrap();
            out.push((kind, body));
            if kind == 1 || kind & (1 << 31) != 0 {
                return out;
            }
        }
    }

    /// NBD_OPT_GO for `name`; the export size.
    fn go(&mut self, name: &str) -> u64 {
        let mut p = (name.len() as u32).to_be_bytes().to_vec();
        p.extend_from_slice(name.as_bytes());
        p.extend_from_slice(&0u16.to_be_bytes());
        let replies = self.option(7, &p);
        assert_eq!(replies.last().unwrap().0, 1, "GO: {replies:?}");
        let info = replies
            .iter()
            .find(|(k, b)| *k == 3 && b[..2] == [0, 0])
            .expect("NBD_INFO_EXPORT");
        u64::from_be_bytes(info.1[2..10].try_into().unwrap())
    }

    fn request(&mut self, kind: u16, flags: u16, cookie: u64, offset: u64, len: u32) {
        let mut b = 0x2560_9513u32.to_be_bytes().to_vec();
        b.extend_from_slice(&flags.to_be_bytes());
        b.extend_from_slice(&kind.to_be_bytes());
        b.extend_from_slice(&cookie.to_be_bytes());
        b.extend_from_slice(&offset.to_be_bytes());
        b.extend_from_slice(&len.to_be_bytes());
        self.0.write_all(&b).unwrap();
    }

    /// Reads one reply chunk.
    fn chunk(&mut self) -> Chunk {
        let mut magic = [0u8; 4];
        self.0.read_exact(&mut magic).unwrap();
        if u32::from_be_bytes(magic) == 0x6744_6698 {
            let mut rest = [0u8; 12];
            self.0.read_exact(&mut rest).unwrap();
            let error = u32::from_be_bytes(rest[..4].try_into().unwrap());
            return Chunk {
                flags: 1,
                kind: 0,
                error,
                payload: Vec::new(),
            };
        }
        assert_eq!(u32::from_be_bytes(magic), 0x668e_33ef, "reply magic");
        let mut head = [0u8; 16];
        self.0.read_exact(&mut head).unwrap();
        let len = u32::from_be_bytes(head[12..16].try_into().unwrap());
        let mut payload = vec![0u8; len as usize];
        self.0.read_exact(&mut payload).unwrap();
        let kind = u16::from_be_bytes(head[2..4].try_into().unwrap());
        let error = match kind & 0x8000 {
            0 => 0,
            _ => u32::from_be_bytes(payload[..4].try_into().unwrap()),
        };
        Chunk {
            flags: u16::from_be_bytes(head[..2].try_into().unwrap()),
            kind,
            error,
            payload,
        }
    }

    /// BLOCK_STATUS: Ok(context id, descriptors) or Err(NBD error).
    fn block_status(&mut self, flags: u16, offset: u64, len: u32) -> Result<Status, u32> {
        self.request(7, flags, 77, offset, len);
        let mut out = Vec::new();
        loop {
            let c = self.chunk();
            if c.error != 0 {
                assert_eq!(c.flags & 1, 1, "an error is the last chunk here");
                return Err(c.error);
            }
            assert_eq!(c.kind, 5, "BLOCK_STATUS chunk: {c:?}");
            let id = u32::from_be_bytes(c.payload[..4].try_into().unwrap());
            let d = c.payload[4..]
                .chunks(8)
                .map(|x| {
                    let l = u32::from_be_bytes(x[..4].try_into().unwrap());
                    (l, u32::from_be_bytes(x[4..].try_into().unwrap()))
                })
                .collect();
            out.push((id, d));
            if c.flags & 1 == 1 {
                return Ok(out);
            }
        }
    }

    /// A READ of `len` bytes at `offset` works (the connection is alive).
    fn read_ok(&mut self, offset: u64, len: u32) {
        self.request(0, 0, 5, offset, len);
        let c = self.chunk();
        assert_eq!((c.error, c.kind), (0, 1), "READ: {c:?}");
    }
}

fn meta_payload(name: &str, queries: &[&str]) -> Vec<u8> {
    let mut p = (name.len() as u32).to_be_bytes().to_vec();
    p.extend_from_slice(name.as_bytes());
    p.extend_from_slice(&(queries.len() as u32).to_be_bytes());
    for q in queries {
        p.extend_from_slice(&(q.len() as u32).to_be_bytes());
        p.extend_from_slice(q.as_bytes());
    }
    p
}

/// Structured replies on, then SET_META_CONTEXT with `queries` for `meta`
/// (none: no SET), then GO to `go`: the context id given and the size.
fn session(server: &Server, meta: Option<(&str, &[&str])>, go: &str) -> (Raw, Option<u32>, u64) {
    let mut r = Raw::connect(server);
    assert_eq!(r.option(8, &[]).last().unwrap().0, 1);
    let mut id = None;
    if let Some((name, queries)) = meta {
        for (kind, body) in r.option(10, &meta_payload(name, queries)) {
            if kind == 4 {
                id = Some(u32::from_be_bytes(body[..4].try_into().unwrap()));
            }
        }
    }
    let size = r.go(go);
    (r, id, size)
}

const EINVAL: u32 = 22;
const REQ_ONE: u16 = 1 << 3;

fn fresh_raid5(test: &str) -> Array {
    let dir = scratch_dir(test);
    let paths = member_paths(dir.path(), 3);
    create_array(5, "64K", "512M", "vol0", &paths);
    let a = serve(dir, paths, &[]);
    qemu_io(
        &a.server.uri("vol0"),
        &["write -P 0xab 130M 1M".to_string()],
    );
    a
}

#[test]
fn block_status_abuse_gets_einval_or_bounded_answers_and_the_connection_lives() {
    let a = fresh_raid5("rt3-bs-abuse");
    let base = ["base:allocation"];

    // No context negotiated: EINVAL, the connection goes on.
    let (mut r, id, size) = session(&a.server, None, "vol0");
    assert_eq!(id, None);
    assert_eq!(r.block_status(0, 0, 4096), Err(EINVAL));
    r.read_ok(0, 4096);
    // Selected for another name than the one opened: nothing selected.
    let (mut r, id, _) = session(&a.server, Some(("nope", &base)), "vol0");
    assert_eq!(id, None, "no export nope");
    assert_eq!(r.block_status(0, 0, 4096), Err(EINVAL));
    // Selected, then a second SET that selects nothing replaces it.
    let mut r2 = Raw::connect(&a.server);
    assert_eq!(r2.option(8, &[]).last().unwrap().0, 1);
    r2.option(10, &meta_payload("vol0", &base));
    let again = r2.option(10, &meta_payload("vol0", &[]));
    assert_eq!(again.len(), 1, "{again:?}");
    r2.go("vol0");
    assert_eq!(r2.block_status(0, 0, 4096), Err(EINVAL));

    let (mut r, id, size2) = session(&a.server, Some(("vol0", &base)), "vol0");
    assert_eq!(size, size2);
    let id = id.expect("base:allocation selected");
    // Out of range, empty, past the end: EINVAL; the connection lives.
    for (offset, len) in [
        (size, 1),
        (size - 1, 2),
        (0, 0),
        (u64::MAX - 10, 100),
        (size - 4096, u32::MAX),
    ] {
        assert_eq!(
            r.block_status(0, offset, len),
            Err(EINVAL),
            "{offset}+{len}"
        );
    }
    r.read_ok(size - 4096, 4096);
    // Answers stay inside the request, carry our id, and are never a
    // zero hole where data was written (130M..131M).
    let cases = [
        (0, 0, 4096u32),
        (0, 12345, 999),
        (0, size - 1, 1),
        (0, 0, size.min(u64::from(u32::MAX)) as u32),
        (REQ_ONE, 0, size.min(u64::from(u32::MAX)) as u32),
        (REQ_ONE, 130 * MIB + 1, 7),
        (0, 129 * MIB + 17, 3 * MIB as u32),
    ];
    for (flags, offset, len) in cases {
        let got = r.block_status(flags, offset, len).unwrap();
        assert_eq!(got.len(), 1, "one context");
        let (cid, d) = &got[0];
        assert_eq!(*cid, id, "the id we were given");
        assert!(!d.is_empty(), "at least one descriptor");
        if flags & REQ_ONE != 0 {
            assert_eq!(d.len(), 1, "REQ_ONE: {d:?}");
        }
        let total: u64 = d.iter().map(|(l, _)| u64::from(*l)).sum();
        assert!(
            total > 0 && total <= u64::from(len),
            "{offset}+{len}: {d:?}"
        );
        assert!(d.iter().all(|(l, _)| *l > 0), "{d:?}");
        let mut pos = offset;
        for (l, flags) in d {
            let end = pos + u64::from(*l);
            let holds_data = pos < 131 * MIB && end > 130 * MIB;
            assert!(
                !(holds_data && flags & 2 != 0),
                "zero over data: {offset}+{len}: {d:?}"
            );
            pos = end;
        }
    }
    r.read_ok(130 * MIB, 4096);
}

/// Two RAID-1 volumes (`slow`, `fast`) of 64M members in one server.
fn two_volumes(test: &str) -> (tempfile::TempDir, PathBuf, Server) {
    let dir = scratch_dir(test);
    let mut config = String::new();
    for name in ["slow", "fast"] {
        let paths: Vec<PathBuf> = (0..2)
            .map(|i| dir.path().join(format!("{name}{i}.img")))
            .collect();
        create_array(1, "64K", "64M", name, &paths);
        config += &format!(
            "[[volume]]\nname = {name:?}\nlevel = 1\nmembers = [{:?}, {:?}]\n",
            paths[0], paths[1]
        );
    }
    let cfg = dir.path().join("vraid.toml");
    std::fs::write(&cfg, config).unwrap();
    let control = dir.path().join("control.sock");
    let server = Server::start(&[
        "--config",
        cfg.to_str().unwrap(),
        "--control",
        control.to_str().unwrap(),
    ]);
    (dir, control, server)
}

/// Sends `n` WRITEs of `len` bytes to `export` without waiting for any
/// reply, then hangs up.
fn queue_writes_and_hang_up(server: &Server, export: &str, n: u64, len: usize) {
    let mut r = Raw::connect(server);
    r.go(export);
    let data = vec![0x5au8; len];
    for i in 0..n {
        r.request(1, 0, i, i * len as u64, len as u32);
        r.0.write_all(&data).unwrap();
    }
    r.0.shutdown(std::net::Shutdown::Both).unwrap();
}

fn waiting(control: &Path, name: &str) -> u64 {
    volume_status(control, name)["qos"]["waiting"]
        .as_u64()
        .unwrap()
}

/// Runs `f` on a thread; its result if it ends within `secs`.
fn within<T: Send + 'static>(secs: u64, f: impl FnOnce() -> T + Send + 'static) -> Option<T> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(Duration::from_secs(secs)).ok()
}

#[test]
fn a_throttled_volume_whose_client_hung_up_does_not_starve_another_volume() {
    let (_dir, control, server) = two_volumes("rt3-qos-starve");
    // 1 byte/s: the first 4 MiB write passes and leaves a debt of weeks.
    vraid_ctl_ok(&control, &["set", "slow", "--write-bps", "1"]);

    queue_writes_and_hang_up(&server, "slow", 8, 4 << 20);
    let deadline = Instant::now() + Duration::from_secs(60);
    while waiting(&control, "slow") < 4 {
        assert!(Instant::now() < deadline, "the writes never queued");
        std::thread::sleep(Duration::from_millis(50));
    }

    // The other volume still reads and writes big requests.
    let uri = server.uri("fast");
    let done = within(60, move || {
        qemu_io_try(&uri, &["write -P 0x61 0 4M", "read -P 0x61 0 4M"])
    });
    let (ok, out) = done.expect("the fast volume hung behind the throttled one");
    assert!(ok, "{out}");
    assert!(waiting(&control, "slow") >= 3, "slow's writes still wait");

    // Lifting the limit drains the dead client's queue; the server goes on.
    vraid_ctl_ok(&control, &["set", "slow", "--write-bps", "none"]);
    let deadline = Instant::now() + Duration::from_secs(60);
    while waiting(&control, "slow") > 0 {
        assert!(Instant::now() < deadline, "queued writes never drained");
        std::thread::sleep(Duration::from_millis(50));
    }
    let (ok, out) = qemu_io_try(&server.uri("slow"), &["read -P 0x5a 0 4M"]);
    assert!(ok, "{out}");
}

#[test]
fn raid0_raid1_and_raid6_copies_trusting_extents_equal_full_reads() {
    for (level, n) in [(0u32, 2usize), (1, 2), (6, 4)] {
        let dir = scratch_dir(&format!("rt3-bs-level{level}"));
        let paths = member_paths(dir.path(), n);
        for p in &paths {
            std::fs::File::create(p)
                .unwrap()
                .set_len(256 * MIB)
                .unwrap();
            scribble(p, 100 * MIB, 1 << 20, 0xe0 + level as u8);
        }
        force_create(level, "256M", &paths);
        let journal: &[&str] = if level == 6 { &["--no-journal"] } else { &[] };
        let a = serve(dir, paths, journal);
        let uri = a.server.uri("vol0");
        qemu_io(
            &uri,
            &[
                "write -P 0x21 70M 64k".to_string(),
                "write -P 0x22 150000003 5000".to_string(),
            ],
        );
        copies_agree(&uri, a.dir.path(), &format!("RAID-{level}"));
    }
}
