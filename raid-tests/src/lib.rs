//! Harness for the end-to-end tests: runs the real `vraid` binary and real
//! NBD clients (qemu-io, qemu-img, nbdinfo, nbdcopy, fio, nbdfuse) as
//! subprocesses against member files on the real disk.
//!
//! The binary is `$VRAID_BIN`, or `target/release/vraid`, or
//! `target/debug/vraid`. A missing binary or client tool fails the test; it
//! never skips it.

pub mod fuse_loop;
pub mod loop_dev;
pub mod md_image;
pub mod nbd_raw;
pub mod netns;

use std::borrow::BorrowMut;
use std::io::{BufRead, BufReader, Read};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Path of the workspace root.
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("raid-tests lives in the workspace")
        .to_path_buf()
}

/// The `vraid` binary under test.
pub fn vraid_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("VRAID_BIN") {
        return PathBuf::from(p);
    }
    let root = workspace_root();
    for profile in ["release", "debug"] {
        let p = root.join("target").join(profile).join("vraid");
        if p.exists() {
            return p;
        }
    }
    panic!("vraid binary not found: run `cargo build --release -p vraid` or set VRAID_BIN");
}

/// A scratch directory on the real disk (O_DIRECT works there, unlike tmpfs).
pub fn scratch_dir(test: &str) -> tempfile::TempDir {
    let base = workspace_root().join("target").join("raid-tests-tmp");
    std::fs::create_dir_all(&base).expect("create scratch base");
    tempfile::Builder::new()
        .prefix(&format!("{test}-"))
        .tempdir_in(base)
        .expect("create scratch dir")
}

/// A loopback port nobody listens on right now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("bind an ephemeral port")
}

/// Runs a command to completion; panics with its output if it fails.
pub fn run_ok(mut cmd: impl BorrowMut<Command>) -> String {
    let cmd = cmd.borrow_mut();
    let out = run(&mut *cmd);
    assert!(
        out.status.success(),
        "command failed: {cmd:?}\nstatus: {}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs a command to completion and returns its output.
pub fn run(mut cmd: impl BorrowMut<Command>) -> Output {
    let cmd = cmd.borrow_mut();
    cmd.stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e} (is the tool installed?)"))
}

/// A `vraid` command with the given arguments.
pub fn vraid(args: &[&str]) -> Command {
    let mut c = Command::new(vraid_bin());
    c.args(args);
    c
}

/// Member paths `m0.img .. m{n-1}.img` in `dir`.
pub fn member_paths(dir: &Path, n: usize) -> Vec<PathBuf> {
    (0..n).map(|i| dir.join(format!("m{i}.img"))).collect()
}

/// [`member_paths`] created as sparse files of `size` bytes.
pub fn sparse_members(dir: &Path, n: usize, size: u64) -> Vec<PathBuf> {
    let members = member_paths(dir, n);
    for m in &members {
        std::fs::File::create(m).unwrap().set_len(size).unwrap();
    }
    members
}

/// Fails and removes role `role` of `vol0`, then adds `new` (with
/// `--force`) in its place: the rebuild starts.
pub fn fail_remove_add(control: &Path, role: &str, new: &Path) {
    vraid_ctl_ok(control, &["fail", "vol0", role]);
    vraid_ctl_ok(control, &["remove", "vol0", role]);
    vraid_ctl_ok(control, &["add", "vol0", new.to_str().unwrap(), "--force"]);
}

/// Creates an array with `vraid create`.
pub fn create_array(level: u32, chunk: &str, member_size: &str, name: &str, members: &[PathBuf]) {
    let mut c = vraid(&[
        "create",
        "--level",
        &level.to_string(),
        "--chunk-size",
        chunk,
        "--member-size",
        member_size,
        "--name",
        name,
    ]);
    c.args(members);
    run_ok(&mut c);
}

/// A running `vraid serve`, stopped with SIGTERM when dropped.
#[derive(Debug)]
pub struct Server {
    child: Option<Child>,
    /// TCP address it serves NBD on.
    pub addr: SocketAddr,
    log: Arc<Mutex<String>>,
}

impl Server {
    /// Starts `vraid serve --nbd 127.0.0.1:PORT EXTRA...` and waits until it accepts.
    pub fn start(extra: &[&str]) -> Server {
        Self::start_with_env(extra, &[])
    }

    /// Like [`Server::start`], with extra environment variables.
    pub fn start_with_env(extra: &[&str], env: &[(&str, &str)]) -> Server {
        Self::spawn(extra, env, None)
    }

    /// Like [`Server::start`], run in working directory `cwd`.
    pub fn start_in(cwd: &Path, extra: &[&str]) -> Server {
        Self::spawn(extra, &[], Some(cwd))
    }

    fn spawn(extra: &[&str], env: &[(&str, &str)], cwd: Option<&Path>) -> Server {
        let port = free_port();
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let mut cmd = Command::new(vraid_bin());
        cmd.arg("serve")
            .arg("--nbd")
            .arg(addr.to_string())
            .args(extra)
            .env("RUST_LOG", "info")
            // A control socket of its own unless the test picks one, so
            // servers running in parallel do not share the default path.
            .env(
                "VRAID_CONTROL",
                std::env::temp_dir().join(format!("vraid-test-ctl-{port}.sock")),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (k, v) in env {
            cmd.env(k, v);
        }
        if let Some(cwd) = cwd {
            cmd.current_dir(cwd);
        }
        let mut child = cmd.spawn().expect("spawn vraid serve");
        let log = Arc::new(Mutex::new(String::new()));
        for stream in [
            Box::new(child.stdout.take().unwrap()) as Box<dyn Read + Send>,
            Box::new(child.stderr.take().unwrap()),
        ] {
            let log = log.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stream).lines().map_while(Result::ok) {
                    eprintln!("[vraid] {line}");
                    log.lock().unwrap().push_str(&(line + "\n"));
                }
            });
        }
        let mut server = Server {
            child: Some(child),
            addr,
            log,
        };
        server.wait_ready();
        server
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                std::thread::sleep(Duration::from_millis(100));
                panic!("vraid serve exited early with {status}:\n{}", self.log());
            }
            // Its own log line first: a connect alone may reach another
            // process that held the port for a moment (`free_port` only
            // picks a port nobody held when it looked).
            let listening = format!("listening on TCP addr=Some({})", self.addr);
            if self.log().contains(&listening) && TcpStream::connect(self.addr).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!(
            "vraid serve did not listen on {} within 30 s:\n{}",
            self.addr,
            self.log()
        );
    }

    /// NBD URI of an export.
    pub fn uri(&self, export: &str) -> String {
        format!("nbd://{}/{export}", self.addr)
    }

    /// Everything the server printed so far.
    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// Sends SIGTERM and waits; returns the exit code.
    pub fn stop(mut self) -> i32 {
        self.terminate()
    }

    /// SIGKILL: a crash, no clean shutdown.
    pub fn kill(mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Waits until the log contains `needle`; panics with the log after `timeout`.
    pub fn wait_log(&self, needle: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let log = self.log();
            if log.contains(needle) {
                return log;
            }
            if Instant::now() > deadline {
                panic!("{needle:?} not logged within {timeout:?}:\n{log}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn terminate(&mut self) -> i32 {
        let Some(mut child) = self.child.take() else {
            return 0;
        };
        // SAFETY: kill(2) on our own child's pid with SIGTERM touches no memory.
        unsafe {
            libc::kill(child.id() as libc::pid_t, libc::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                std::thread::sleep(Duration::from_millis(50));
                return status.code().unwrap_or(-1);
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "vraid serve did not stop within 30 s of SIGTERM:\n{}",
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if self.child.is_some() {
            self.terminate();
        }
    }
}

/// `qemu-io -f raw -c CMD... URI`, to run or spawn.
pub fn qemu_io_command<S: AsRef<str>>(uri: &str, cmds: &[S]) -> Command {
    let mut c = Command::new("qemu-io");
    c.args(["-f", "raw"]);
    for cmd in cmds {
        c.arg("-c").arg(cmd.as_ref());
    }
    c.arg(uri);
    c
}

/// qemu-io that may fail: (success, combined output). Success means exit
/// status 0 and no error, failure or pattern-mismatch message.
pub fn qemu_io_try<S: AsRef<str>>(uri: &str, cmds: &[S]) -> (bool, String) {
    let out = run(&mut qemu_io_command(uri, cmds));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let ok = out.status.success()
        && !text.contains("error")
        && !text.contains("failed")
        && !text.contains("Pattern verification");
    (ok, text)
}

/// `len` bytes of a member file at file offset `at`.
pub fn peek(member: &Path, at: u64, len: usize) -> Vec<u8> {
    use std::os::unix::fs::FileExt;
    let mut b = vec![0u8; len];
    std::fs::File::open(member)
        .unwrap()
        .read_exact_at(&mut b, at)
        .unwrap();
    b
}

/// Overwrites bytes of a member file at file offset `at` (and syncs it).
pub fn poke(member: &Path, at: u64, bytes: &[u8]) {
    use std::os::unix::fs::FileExt;
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(member)
        .unwrap();
    f.write_all_at(bytes, at).unwrap();
    f.sync_all().unwrap();
}

/// Flips one byte (XOR 0xa5) of a member file at file offset `at`: silent
/// corruption underneath the daemon.
pub fn flip_byte(member: &Path, at: u64) {
    let b = peek(member, at, 1)[0];
    poke(member, at, &[b ^ 0xa5]);
}

/// Runs qemu-io commands against an NBD URI; panics on failure or on a
/// "Pattern verification failed" line.
pub fn qemu_io(uri: &str, cmds: &[String]) -> String {
    let out = run_ok(&mut qemu_io_command(uri, cmds));
    assert!(
        !out.contains("verification failed") && !out.contains("error"),
        "qemu-io reported a problem:\n{out}"
    );
    out
}

/// Deterministic pseudo-random bytes (xorshift), so failures are reproducible.
pub fn pseudo_random(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    let mut v = Vec::with_capacity(len + 8);
    while v.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v.extend_from_slice(&x.to_le_bytes());
    }
    v.truncate(len);
    v
}

/// A member file that can be made to fail at will: nbdkit's file plugin
/// behind its error filter, exposed as a file by nbdfuse. While the trigger
/// file exists every I/O to the member returns EIO — a disk dying mid-run.
#[derive(Debug)]
pub struct FlakyMember {
    nbdkit: Child,
    nbdfuse: Child,
    mountpoint: PathBuf,
    trigger: PathBuf,
}

impl FlakyMember {
    /// Backs the member with `backing` (created sparse with `size` bytes if missing).
    pub fn new(dir: &Path, tag: &str, backing: &Path, size: u64) -> FlakyMember {
        if !backing.exists() {
            let f = std::fs::File::create(backing).unwrap();
            f.set_len(size).unwrap();
        }
        let sock = dir.join(format!("{tag}.nbdkit.sock"));
        let trigger = dir.join(format!("{tag}.fail"));
        let _ = std::fs::remove_file(&trigger);
        let nbdkit = Command::new("nbdkit")
            .args(["-f", "--exit-with-parent", "-U"])
            .arg(&sock)
            .args(["--filter=error", "file"])
            .arg(backing)
            .args(["error=EIO", "error-rate=100%"])
            .arg(format!("error-file={}", trigger.display()))
            .stdin(Stdio::null())
            .spawn()
            .expect("spawn nbdkit (package nbdkit)");
        let deadline = Instant::now() + Duration::from_secs(20);
        while !sock.exists() {
            assert!(Instant::now() < deadline, "nbdkit did not come up");
            std::thread::sleep(Duration::from_millis(20));
        }
        let mountpoint = dir.join(format!("{tag}.mnt"));
        std::fs::create_dir_all(&mountpoint).unwrap();
        let pidfile = dir.join(format!("{tag}.nbdfuse.pid"));
        let nbdfuse = Command::new("nbdfuse")
            .arg("-P")
            .arg(&pidfile)
            .arg(mountpoint.join("disk"))
            .arg("--unix")
            .arg(&sock)
            .stdin(Stdio::null())
            .spawn()
            .expect("spawn nbdfuse (package libnbd-bin)");
        while !pidfile.exists() || !mountpoint.join("disk").exists() {
            assert!(Instant::now() < deadline, "nbdfuse did not come up");
            std::thread::sleep(Duration::from_millis(20));
        }
        FlakyMember {
            nbdkit,
            nbdfuse,
            mountpoint,
            trigger,
        }
    }

    /// The member path to give vraid.
    pub fn path(&self) -> PathBuf {
        self.mountpoint.join("disk")
    }

    /// From now on every I/O fails with EIO.
    pub fn fail(&self) {
        std::fs::write(&self.trigger, b"").unwrap();
    }

    /// I/O works again.
    pub fn heal(&self) {
        let _ = std::fs::remove_file(&self.trigger);
    }
}

/// Unmounts an nbdfuse mount and reaps its process (killed after 10 s).
pub fn stop_nbdfuse(mountpoint: &Path, nbdfuse: &mut Child) {
    let _ = Command::new("fusermount3")
        .arg("-u")
        .arg(mountpoint)
        .status();
    let deadline = Instant::now() + Duration::from_secs(10);
    while nbdfuse.try_wait().unwrap().is_none() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = nbdfuse.kill();
    let _ = nbdfuse.wait();
}

impl Drop for FlakyMember {
    fn drop(&mut self) {
        stop_nbdfuse(&self.mountpoint, &mut self.nbdfuse);
        let _ = self.nbdkit.kill();
        let _ = self.nbdkit.wait();
    }
}

/// `vraid examine --json` of a member, parsed.
pub fn examine(member: &Path) -> serde_json::Value {
    let out = run_ok(vraid(&["examine", "--json"]).arg(member));
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("examine JSON: {e}\n{out}"))
}

/// Reads the whole export with nbdcopy into memory.
pub fn read_export(uri: &str, scratch: &Path) -> Vec<u8> {
    let out = scratch.join("export-dump.raw");
    let _ = std::fs::remove_file(&out);
    run_ok(Command::new("nbdcopy").arg(uri).arg(&out));
    let data = std::fs::read(&out).unwrap();
    let _ = std::fs::remove_file(&out);
    data
}

/// Writes `data` at offset 0 of the export with nbdcopy.
pub fn write_export(uri: &str, data: &[u8], scratch: &Path) {
    let src = scratch.join("export-src.raw");
    std::fs::write(&src, data).unwrap();
    run_ok(Command::new("nbdcopy").arg(&src).arg(uri));
    let _ = std::fs::remove_file(&src);
}

/// `vraid ARGS... --control PATH` (the control verbs), run to completion.
pub fn vraid_ctl(control: &Path, args: &[&str]) -> Output {
    let mut c = vraid(args);
    c.arg("--control").arg(control);
    run(c)
}

/// Like [`vraid_ctl`], panicking unless it succeeds; returns stdout.
pub fn vraid_ctl_ok(control: &Path, args: &[&str]) -> String {
    let mut c = vraid(args);
    c.arg("--control").arg(control);
    run_ok(c)
}

/// Sends one raw line to a control socket and returns the parsed reply line.
pub fn control_request(control: &Path, line: &[u8]) -> serde_json::Value {
    use std::io::Write;
    let mut s = std::os::unix::net::UnixStream::connect(control)
        .unwrap_or_else(|e| panic!("connect {}: {e}", control.display()));
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    s.write_all(line).unwrap();
    s.write_all(b"\n").unwrap();
    let mut reply = String::new();
    BufReader::new(s).read_line(&mut reply).unwrap();
    serde_json::from_str(&reply).unwrap_or_else(|e| panic!("reply {reply:?}: {e}"))
}

/// `vraid status --json` of the daemon at `control`, parsed.
pub fn status_json(control: &Path) -> serde_json::Value {
    let out = vraid_ctl_ok(control, &["status", "--json"]);
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("status JSON: {e}\n{out}"))
}

/// A fio verify job against `uri` (randwrite 4k-64k, crc32c), not yet started.
pub fn fio_verify_cmd(uri: &str, name: &str, size: &str, offset: &str) -> Command {
    let mut c = Command::new("fio");
    c.args([
        &format!("--name={name}"),
        "--ioengine=nbd",
        "--rw=randwrite",
        "--bsrange=4k-64k",
        "--iodepth=8",
        &format!("--size={size}"),
        &format!("--offset={offset}"),
        "--verify=crc32c",
        "--do_verify=1",
        "--verify_fatal=1",
        "--verify_state_save=0",
        "--output-format=json",
    ])
    .arg(format!("--uri={uri}"));
    c
}

/// Waits for a spawned fio and asserts every job finished without error.
pub fn assert_fio_clean(child: Child) {
    let out = child.wait_with_output().expect("wait for fio");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "fio failed ({}):\n{text}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_str(&text[text.find('{').unwrap()..]).unwrap();
    for job in v["jobs"].as_array().unwrap() {
        assert_eq!(job["error"], 0, "fio job failed: {job}");
    }
}

/// Waits until a Unix socket at `path` accepts connections (30 s at most).
pub fn wait_for_socket(path: &Path) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::os::unix::net::UnixStream::connect(path).is_err() {
        assert!(
            Instant::now() < deadline,
            "nothing listens on {} after 30 s",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The data area of a member file (`data_offset..data_offset + data_size`
/// from its superblock), read directly from the file.
pub fn member_data(member: &Path) -> Vec<u8> {
    use std::os::unix::fs::FileExt;
    let sb = examine(member);
    let offset = sb["data_offset"].as_u64().unwrap();
    let size = sb["data_size"].as_u64().unwrap();
    let mut buf = vec![0u8; size as usize];
    std::fs::File::open(member)
        .unwrap()
        .read_exact_at(&mut buf, offset)
        .unwrap();
    buf
}

/// Stripes (chunk rows) whose chunks do not XOR to zero across `members`
/// (a RAID-5's members in any order): parity is consistent when empty.
pub fn bad_parity_stripes(members: &[PathBuf], chunk: usize) -> Vec<usize> {
    let data: Vec<Vec<u8>> = members.iter().map(|m| member_data(m)).collect();
    let len = data[0].len();
    (0..len / chunk)
        .filter(|&s| {
            let mut x = vec![0u8; chunk];
            for d in &data {
                for (a, b) in x.iter_mut().zip(&d[s * chunk..(s + 1) * chunk]) {
                    *a ^= b;
                }
            }
            x.iter().any(|&b| b != 0)
        })
        .collect()
}

/// `x·2` in GF(2^8) with polynomial 0x11d.
fn gf_mul2(x: u8) -> u8 {
    (x << 1) ^ if x & 0x80 != 0 { 0x1d } else { 0 }
}

/// Stripes of a RAID-6's members (in role order) whose P or Q is not that
/// of their data, computed independently of vraid: P on `n-1-(s mod n)`,
/// Q after it, data chunk `d` on the `d`-th member after Q with Q
/// coefficient 2^d (md's left-symmetric layout).
pub fn bad_syndrome_stripes(members: &[PathBuf], chunk: usize) -> Vec<usize> {
    let data: Vec<Vec<u8>> = members.iter().map(|m| member_data(m)).collect();
    let n = data.len();
    (0..data[0].len() / chunk)
        .filter(|&s| {
            let at = |m: usize| &data[m][s * chunk..(s + 1) * chunk];
            let p_m = n - 1 - s % n;
            let (mut p, mut q) = (vec![0u8; chunk], vec![0u8; chunk]);
            for d in (0..n - 2).rev() {
                let dm = at((p_m + 2 + d) % n);
                for i in 0..chunk {
                    p[i] ^= dm[i];
                    q[i] = gf_mul2(q[i]) ^ dm[i];
                }
            }
            at(p_m) != p.as_slice() || at((p_m + 1) % n) != q.as_slice()
        })
        .collect()
}

impl Server {
    /// The server's process id (for /proc/PID/...).
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("server running").id()
    }
}

/// Descriptors process `pid` has open now.
pub fn fd_count(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("read /proc/PID/fd")
        .count()
}

/// A `/proc/PID/status` field in KiB (`VmRSS`, `VmHWM`...).
pub fn proc_status_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("read status");
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"))
}

/// The `status --json` entry of volume `name`.
pub fn volume_status(control: &Path, name: &str) -> serde_json::Value {
    let status = status_json(control);
    status["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == name)
        .cloned()
        .unwrap_or_else(|| panic!("no volume {name} in {status}"))
}

/// The `state` of every member of a volume's status entry, by role.
pub fn member_states(volume: &serde_json::Value) -> Vec<String> {
    volume["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["state"].as_str().unwrap().to_string())
        .collect()
}

/// The whole HTTP reply (head and body) to `GET /metrics` on `addr`.
pub fn scrape(addr: &str) -> String {
    use std::io::Write;
    let mut s = TcpStream::connect(addr).unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    text
}

/// X.509 credentials for TLS tests, made with `openssl` (EC P-256): a CA,
/// a server certificate for `localhost` / 127.0.0.1, and client
/// certificates by common name. Directories are laid out as QEMU's
/// `tls-creds-x509` and libnbd's `tls-certificates` expect them.
#[derive(Debug)]
pub struct TestPki {
    root: PathBuf,
}

impl TestPki {
    /// Makes the CA and the server certificate under `dir/pki`.
    pub fn new(dir: &Path) -> TestPki {
        let root = dir.join("pki");
        std::fs::create_dir_all(&root).unwrap();
        let pki = TestPki { root };
        let mut ca = Command::new("openssl");
        ca.args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
        ])
        .args(["-nodes", "-days", "2", "-subj", "/CN=vraid test CA"])
        .args(["-addext", "basicConstraints=critical,CA:TRUE"])
        .args(["-addext", "keyUsage=critical,keyCertSign,cRLSign"])
        .arg("-keyout")
        .arg(pki.ca_key())
        .arg("-out")
        .arg(pki.ca_cert());
        run_ok(ca);
        let server = pki.root.join("server");
        pki.leaf(
            &server,
            "server",
            "localhost",
            "serverAuth",
            Some("DNS:localhost,IP:127.0.0.1"),
        );
        pki
    }

    fn ca_key(&self) -> PathBuf {
        self.root.join("ca-key.pem")
    }

    /// The CA certificate (PEM).
    pub fn ca_cert(&self) -> PathBuf {
        self.root.join("ca-cert.pem")
    }

    /// The server's directory: `ca-cert.pem`, `server-cert.pem`, `server-key.pem`.
    pub fn server_dir(&self) -> PathBuf {
        self.root.join("server")
    }

    /// A client directory with the CA only (no client certificate).
    pub fn anonymous_client(&self) -> PathBuf {
        let dir = self.root.join("anonymous");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::copy(self.ca_cert(), dir.join("ca-cert.pem")).unwrap();
        dir
    }

    /// A client directory whose `client-cert.pem` has subject CN `cn`,
    /// signed by `ca` (this PKI's CA unless another is given).
    pub fn client(&self, cn: &str, ca: Option<&TestPki>) -> PathBuf {
        let dir = self.root.join(format!("client-{cn}"));
        ca.unwrap_or(self)
            .leaf(&dir, "client", cn, "clientAuth", None);
        std::fs::copy(self.ca_cert(), dir.join("ca-cert.pem")).unwrap();
        dir
    }

    /// `dir/{prefix}-cert.pem` and `-key.pem` signed by the CA, plus the CA.
    fn leaf(&self, dir: &Path, prefix: &str, cn: &str, eku: &str, san: Option<&str>) {
        std::fs::create_dir_all(dir).unwrap();
        let mut c = Command::new("openssl");
        c.args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
        ])
        .args(["-nodes", "-days", "2", "-subj", &format!("/CN={cn}")])
        .arg("-CA")
        .arg(self.ca_cert())
        .arg("-CAkey")
        .arg(self.ca_key())
        .args(["-addext", "basicConstraints=critical,CA:FALSE"])
        .args([
            "-addext",
            "keyUsage=critical,digitalSignature,keyEncipherment",
        ])
        .args(["-addext", &format!("extendedKeyUsage={eku}")])
        .arg("-keyout")
        .arg(dir.join(format!("{prefix}-key.pem")))
        .arg("-out")
        .arg(dir.join(format!("{prefix}-cert.pem")));
        if let Some(san) = san {
            c.args(["-addext", &format!("subjectAltName={san}")]);
        }
        run_ok(c);
        std::fs::copy(self.ca_cert(), dir.join("ca-cert.pem")).unwrap();
    }

    /// `vraid serve` options serving with this PKI's server certificate.
    pub fn serve_args(&self, mode: &str) -> Vec<String> {
        let dir = self.server_dir();
        vec![
            format!("--tls={mode}"),
            "--tls-cert".into(),
            dir.join("server-cert.pem").display().to_string(),
            "--tls-key".into(),
            dir.join("server-key.pem").display().to_string(),
        ]
    }
}
