//! Remote (NBD) members against real servers: a RAID-1 of a local file and
//! an export of nbdkit (memory and file plugins), qemu-nbd, or another
//! vraid, written through our export with fio verify and compared byte for
//! byte; the remote server SIGKILLed under load (the array goes on
//! degraded, fio sees no error), restarted and re-added with a bitmap
//! catch-up of the dirty regions only.

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use raid_tests::*;

/// Bytes of every member.
const MEMBER: &str = "256M";

/// A remote NBD server the test runs, killed when dropped.
struct Remote {
    child: Option<Child>,
    port: u16,
    /// The export name in the URI.
    export: String,
    /// vraid's own server, when the remote is one.
    vraid: Option<Server>,
    /// `nbds://` with this `tls-certificates` directory.
    tls: Option<PathBuf>,
}

impl Remote {
    /// `nbdkit ARGS...` on a fresh (or the given) port.
    fn nbdkit(port: u16, plugin: &[&str]) -> Remote {
        let child = Command::new("nbdkit")
            .args(["-f", "-i", "127.0.0.1", "-p", &port.to_string()])
            .args(plugin)
            .stdin(Stdio::null())
            .spawn()
            .expect("spawn nbdkit");
        Remote::ready(child, port, "")
    }

    /// `qemu-nbd` serving `file` as export `exp`.
    fn qemu_nbd(file: &Path) -> Remote {
        let port = free_port();
        let child = Command::new("qemu-nbd")
            .args(["-f", "raw", "-t", "-b", "127.0.0.1", "-x", "exp"])
            .args(["-p", &port.to_string()])
            .arg(file)
            .stdin(Stdio::null())
            .spawn()
            .expect("spawn qemu-nbd");
        Remote::ready(child, port, "exp")
    }

    /// Another vraid serving a RAID-1 of two files in `dir` as `rvol`.
    fn vraid(dir: &Path) -> Remote {
        Remote::vraid_with(dir, &[])
    }

    /// [`Remote::vraid`] with more `vraid serve` options.
    fn vraid_with(dir: &Path, extra: &[String]) -> Remote {
        let paths = vec![dir.join("r0.img"), dir.join("r1.img")];
        create_array(1, "64K", "288M", "rvol", &paths);
        let control = dir.join("rctl.sock");
        let mut args = vec![
            paths[0].to_str().unwrap(),
            paths[1].to_str().unwrap(),
            "--control",
            control.to_str().unwrap(),
        ];
        args.extend(extra.iter().map(String::as_str));
        let server = Server::start(&args);
        Remote {
            child: None,
            port: server.addr.port(),
            export: "rvol".into(),
            vraid: Some(server),
            tls: None,
        }
    }

    fn ready(mut child: Child, port: u16, export: &str) -> Remote {
        let deadline = Instant::now() + Duration::from_secs(30);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(child.try_wait().unwrap().is_none(), "NBD server exited");
            assert!(Instant::now() < deadline, "NBD server not up in 30 s");
            std::thread::sleep(Duration::from_millis(20));
        }
        Remote {
            child: Some(child),
            port,
            export: export.into(),
            vraid: None,
            tls: None,
        }
    }

    fn uri(&self) -> String {
        match &self.tls {
            None => format!("nbd://127.0.0.1:{}/{}", self.port, self.export),
            Some(d) => format!(
                "nbds://localhost:{}/{}?tls-certificates={}",
                self.port,
                self.export,
                d.display()
            ),
        }
    }

    /// Names the export `nbds://`, trusting the CA of `client_dir`.
    fn over_tls(mut self, client_dir: PathBuf) -> Remote {
        self.tls = Some(client_dir);
        self
    }

    /// SIGKILL.
    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        if let Some(s) = self.vraid.take() {
            s.kill();
        }
    }

    /// Copies the whole export into `file` (for `member_data`).
    fn dump(&self, file: &Path) {
        run_ok(Command::new("nbdcopy").arg(self.uri()).arg(file));
    }
}

impl Drop for Remote {
    fn drop(&mut self) {
        self.kill();
    }
}

fn control_args(control: &Path, members: &[&str]) -> Vec<String> {
    let mut a: Vec<String> = members.iter().map(|s| s.to_string()).collect();
    a.extend(["--control".into(), control.display().to_string()]);
    a
}

/// Served without automatic re-join: these tests re-add with `vraid add`
/// (the automatic one is `remote_mirror.rs`'s).
fn start(members: &[&str], control: &Path, timeout: &str) -> Server {
    let mut args = control_args(control, members);
    args.push("--no-auto-rejoin".into());
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    Server::start_with_env(&args, &[("VRAID_MEMBER_TIMEOUT", timeout)])
}

/// fio writes 16 MiB with verify through our export, whose second mirror
/// is `remote`; then both mirrors hold the same bytes.
fn mirror_over(remote: &Remote, dir: &Path) {
    // Arrange
    let local = dir.join("local.img");
    let uri = remote.uri();
    create_array(
        1,
        "64K",
        MEMBER,
        "vol0",
        &[local.clone(), PathBuf::from(&uri)],
    );
    let control = dir.join("ctl.sock");
    let server = start(&[local.to_str().unwrap(), &uri], &control, "30s");

    // Act
    assert_fio_clean(
        fio_verify_cmd(&server.uri("vol0"), "mirror", "16M", "0")
            .stdout(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let status = volume_status(&control, "vol0");
    assert_eq!(server.stop(), 0);

    // Assert
    assert_eq!(member_states(&status), vec!["active", "active"]);
    let dump = dir.join("remote.dump");
    remote.dump(&dump);
    assert!(member_data(&local) == member_data(&dump), "mirrors differ");
}

#[test]
fn raid1_with_an_nbdkit_memory_member_mirrors_byte_for_byte() {
    let dir = scratch_dir("remote-nbdkit-mem");
    let remote = Remote::nbdkit(free_port(), &["memory", "384M"]);
    mirror_over(&remote, dir.path());
}

#[test]
fn raid1_with_an_nbdkit_file_member_mirrors_byte_for_byte() {
    let dir = scratch_dir("remote-nbdkit-file");
    let file = dir.path().join("remote.img");
    std::fs::File::create(&file)
        .unwrap()
        .set_len(384 << 20)
        .unwrap();
    let remote = Remote::nbdkit(free_port(), &["file", file.to_str().unwrap()]);
    mirror_over(&remote, dir.path());
    assert!(member_data(&file) == member_data(&dir.path().join("local.img")));
}

#[test]
fn raid1_with_a_qemu_nbd_member_mirrors_byte_for_byte() {
    let dir = scratch_dir("remote-qemu-nbd");
    let file = dir.path().join("remote.img");
    std::fs::File::create(&file)
        .unwrap()
        .set_len(384 << 20)
        .unwrap();
    let remote = Remote::qemu_nbd(&file);
    mirror_over(&remote, dir.path());
}

#[test]
fn raid1_with_a_vraid_export_member_mirrors_byte_for_byte() {
    let dir = scratch_dir("remote-vraid");
    let remote = Remote::vraid(dir.path());
    mirror_over(&remote, dir.path());
}

/// Polls `cond` every 50 ms for at most `secs` seconds.
fn wait_until(secs: u64, what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !cond() {
        assert!(Instant::now() < deadline, "{what} not within {secs} s");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Bytes allocated to `file` on disk.
fn allocated(file: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(file).unwrap().blocks() * 512
}

/// The number after `prefix` in the first log line holding it.
fn logged_number(log: &str, prefix: &str) -> u64 {
    let at = log.find(prefix).unwrap() + prefix.len();
    log[at..]
        .chars()
        .take_while(char::is_ascii_digit)
        .collect::<String>()
        .parse()
        .unwrap()
}

#[test]
fn remote_member_killed_under_load_fails_then_readds_from_the_bitmap() {
    // Arrange: a whole RAID-1 of a local file and an nbdkit file export,
    // started once so the bitmap is maintained.
    let dir = scratch_dir("remote-kill");
    let (local, file) = (dir.path().join("local.img"), dir.path().join("remote.img"));
    std::fs::File::create(&file)
        .unwrap()
        .set_len(384 << 20)
        .unwrap();
    let port = free_port();
    let mut remote = Remote::nbdkit(port, &["file", file.to_str().unwrap()]);
    let uri = remote.uri();
    create_array(
        1,
        "64K",
        MEMBER,
        "vol0",
        &[local.clone(), PathBuf::from(&uri)],
    );
    let control = dir.path().join("ctl.sock");
    let members = [local.to_str().unwrap(), uri.as_str()];
    assert_eq!(start(&members, &control, "3s").stop(), 0);
    let server = start(&members, &control, "3s");
    let before = allocated(&file);

    // Act: SIGKILL the remote server while fio writes.
    let fio = fio_verify_cmd(&server.uri("vol0"), "cut", "24M", "0")
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    wait_until(60, "writes reaching the remote", || {
        allocated(&file) > before + (1 << 20)
    });
    remote.kill();
    assert_fio_clean(fio);
    wait_until(60, "the remote member failed", || {
        member_states(&volume_status(&control, "vol0"))[1] == "failed"
    });
    let remote = Remote::nbdkit(port, &["file", file.to_str().unwrap()]);
    vraid_ctl_ok(&control, &["add", "vol0", &remote.uri()]);
    let done = "recovery of member 1 finished";
    let log = server.wait_log(done, Duration::from_secs(120));

    // Assert: only dirty regions copied, data intact, mirrors equal.
    let copied = logged_number(&log, &format!("{done}: copied "));
    let data_size = examine(&local)["data_size"].as_u64().unwrap();
    // fio wrote 24 MiB at offset 0: one 64 MiB bitmap region.
    assert!(
        copied > 0 && copied <= 64 << 20,
        "copied {copied} of {data_size}"
    );
    assert!(copied * 3 < data_size, "copied {copied} of {data_size}");
    assert!(log.contains("catching up"), "not a bitmap re-add:\n{log}");
    let status = volume_status(&control, "vol0");
    assert_fio_clean(
        fio_verify_cmd(&server.uri("vol0"), "after", "8M", "64M")
            .stdout(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    assert_eq!(server.stop(), 0);
    assert_eq!(member_states(&status), vec!["active", "active"]);
    assert!(member_data(&local) == member_data(&file), "mirrors differ");
}

#[test]
fn the_same_export_twice_in_one_array_is_refused() {
    let dir = scratch_dir("remote-twice");
    let remote = Remote::nbdkit(free_port(), &["memory", "384M"]);
    let uri = remote.uri();
    // The same port spelled with a leading zero: another path, one export.
    let spelled = uri.replace("127.0.0.1:", "127.0.0.1:0");
    let out = run(vraid(&[
        "create",
        "--level",
        "1",
        "--chunk-size",
        "64K",
        "--member-size",
        MEMBER,
        "--name",
        "vol0",
    ])
    .arg(dir.path().join("local.img"))
    .arg(&uri)
    .arg(&spelled));
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("are the same device"), "{err}");
}

/// A network namespace with a veth pair to it and nbdkit inside, all
/// removed when dropped (also when the test fails).
struct Netns {
    name: String,
    /// The root namespace's end of the veth pair.
    outer: String,
    /// The remote's address (port 10809, NBD's default).
    addr: String,
    nbdkit: Option<Child>,
}

fn ip(args: &[&str]) {
    run_ok(Command::new("ip").args(args));
}

impl Netns {
    /// Namespace, veth pair (10.213.N.1 outside, .2 inside), nbdkit
    /// serving `file` inside on port 10809.
    fn with_nbdkit(file: &Path) -> Netns {
        let id = std::process::id() % 250;
        let name = format!("vraidn-{}", std::process::id());
        let (outer, inner) = (format!("vrn{id}a"), format!("vrn{id}b"));
        let mut ns = Netns {
            name: name.clone(),
            outer: outer.clone(),
            addr: format!("10.213.{id}.2"),
            nbdkit: None,
        };
        ip(&["netns", "add", &name]);
        ip(&[
            "link", "add", &outer, "type", "veth", "peer", "name", &inner,
        ]);
        ip(&["link", "set", &inner, "netns", &name]);
        ip(&["addr", "add", &format!("10.213.{id}.1/30"), "dev", &outer]);
        ip(&["link", "set", &outer, "up"]);
        let inside = |args: &[&str]| {
            let mut a = vec!["netns", "exec", name.as_str(), "ip"];
            a.extend_from_slice(args);
            ip(&a);
        };
        inside(&["addr", "add", &format!("10.213.{id}.2/30"), "dev", &inner]);
        inside(&["link", "set", &inner, "up"]);
        inside(&["link", "set", "lo", "up"]);
        ns.nbdkit = Some(
            Command::new("ip")
                .args([
                    "netns", "exec", &name, "nbdkit", "-f", "-i", &ns.addr, "-p", "10809",
                ])
                .args(["file", file.to_str().unwrap()])
                .stdin(Stdio::null())
                .spawn()
                .expect("spawn nbdkit in the namespace"),
        );
        ns.wait_reachable();
        ns
    }

    fn uri(&self) -> String {
        format!("nbd://{}/", self.addr)
    }

    fn wait_reachable(&self) {
        let at: std::net::SocketAddr = format!("{}:10809", self.addr).parse().unwrap();
        wait_until(30, "nbdkit reachable in the namespace", || {
            TcpStream::connect_timeout(&at, Duration::from_millis(200)).is_ok()
        });
    }

    /// Takes the link down (`false`) or up.
    fn link(&self, up: bool) {
        ip(&["link", "set", &self.outer, if up { "up" } else { "down" }]);
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        if let Some(mut c) = self.nbdkit.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        // Deleting the namespace removes its veth end and so the pair.
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
        let _ = Command::new("ip")
            .args(["link", "del", &self.outer])
            .stderr(Stdio::null())
            .status();
    }
}

#[test]
fn link_down_longer_than_member_timeout_fails_the_member_and_readds_it() {
    // Arrange: a RAID-1 of a local file and nbdkit in another namespace.
    let dir = scratch_dir("remote-netns");
    let (local, file) = (dir.path().join("local.img"), dir.path().join("remote.img"));
    std::fs::File::create(&file)
        .unwrap()
        .set_len(384 << 20)
        .unwrap();
    let ns = Netns::with_nbdkit(&file);
    let uri = ns.uri();
    create_array(
        1,
        "64K",
        MEMBER,
        "vol0",
        &[local.clone(), PathBuf::from(&uri)],
    );
    let control = dir.path().join("ctl.sock");
    let members = [local.to_str().unwrap(), uri.as_str()];
    assert_eq!(start(&members, &control, "2s").stop(), 0);
    let server = start(&members, &control, "2s");
    let before = allocated(&file);

    // Act: the link goes down under fio load, for longer than member_timeout.
    let fio = fio_verify_cmd(&server.uri("vol0"), "cut", "24M", "0")
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    wait_until(60, "writes reaching the remote", || {
        allocated(&file) > before + (1 << 20)
    });
    ns.link(false);
    wait_until(60, "the remote member failed", || {
        member_states(&volume_status(&control, "vol0"))[1] == "failed"
    });
    assert_fio_clean(fio);
    ns.link(true);
    ns.wait_reachable();
    vraid_ctl_ok(&control, &["add", "vol0", &uri]);
    let done = "recovery of member 1 finished";
    let log = server.wait_log(done, Duration::from_secs(120));

    // Assert: a bitmap catch-up of one region, mirrors equal.
    let copied = logged_number(&log, &format!("{done}: copied "));
    assert!(copied > 0 && copied <= 64 << 20, "copied {copied}");
    let status = volume_status(&control, "vol0");
    assert_eq!(server.stop(), 0);
    assert_eq!(member_states(&status), vec!["active", "active"]);
    assert!(member_data(&local) == member_data(&file), "mirrors differ");
}

#[test]
fn a_config_file_volume_with_a_remote_member_is_created_and_served() {
    // Arrange: a config naming a local file and an nbdkit export, created
    // at first start.
    let dir = scratch_dir("remote-config");
    let remote = Remote::nbdkit(free_port(), &["memory", "384M"]);
    let local = dir.path().join("local.img");
    let config = dir.path().join("vraid.toml");
    std::fs::write(
        &config,
        format!(
            "[server]\nmember_timeout = \"5s\"\n\n[[volume]]\nname = \"vol0\"\nlevel = 1\n\
             members = [{:?}, {:?}]\ncreate = {{ member_size = \"{MEMBER}\" }}\n",
            local.display().to_string(),
            remote.uri()
        ),
    )
    .unwrap();
    let control = dir.path().join("ctl.sock");
    let args = [
        "--config",
        config.to_str().unwrap(),
        "--control",
        control.to_str().unwrap(),
    ];

    // Act
    let server = Server::start(&args);
    assert_fio_clean(
        fio_verify_cmd(&server.uri("vol0"), "cfg", "8M", "0")
            .stdout(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let status = volume_status(&control, "vol0");
    assert_eq!(server.stop(), 0);

    // Assert
    assert_eq!(member_states(&status), vec!["active", "active"]);
    let dump = dir.path().join("remote.dump");
    remote.dump(&dump);
    assert!(member_data(&local) == member_data(&dump), "mirrors differ");
}

/// qemu-io writes patterns through our export, whose second mirror is
/// `remote` (an `nbds://` member), reads them back, then both mirrors
/// hold the same bytes. Returns the export's log.
fn mirror_over_qemu_io(remote: &Remote, dir: &Path) -> String {
    // Arrange
    let local = dir.join("local.img");
    let uri = remote.uri();
    create_array(
        1,
        "64K",
        MEMBER,
        "vol0",
        &[local.clone(), PathBuf::from(&uri)],
    );
    let control = dir.join("ctl.sock");
    let server = start(&[local.to_str().unwrap(), &uri], &control, "30s");
    let writes = [
        (0x5a, 0u64, "4M"),
        (0xa5, 100 << 20, "8M"),
        (0x3c, 200 << 20, "1M"),
    ];

    // Act
    for (p, at, len) in writes {
        qemu_io(
            &server.uri("vol0"),
            &[format!("write -P {p:#x} {at} {len}")],
        );
    }
    for (p, at, len) in writes {
        qemu_io(&server.uri("vol0"), &[format!("read -P {p:#x} {at} {len}")]);
    }
    let status = volume_status(&control, "vol0");
    let log = server.log();
    assert_eq!(server.stop(), 0);

    // Assert
    assert_eq!(member_states(&status), vec!["active", "active"]);
    let dump = dir.join("remote.dump");
    remote.dump(&dump);
    let data = member_data(&dump);
    assert!(member_data(&local) == data, "mirrors differ");
    assert!(data[100 << 20..(100 << 20) + 4096]
        .iter()
        .all(|&b| b == 0xa5));
    log
}

/// Our record layer ran the member's link after the options (FORMAT §14).
fn assert_our_record_layer(log: &str) {
    assert!(
        log.contains("nbds:// member: TLS record layer: ours"),
        "{log}"
    );
}

fn nbdkit_tls(port: u16, server_dir: &Path, plugin: &[&str]) -> Remote {
    let certs = format!("--tls-certificates={}", server_dir.display());
    let mut args = vec!["--tls=require", certs.as_str()];
    args.extend(plugin);
    Remote::nbdkit(port, &args)
}

#[test]
fn raid1_with_an_nbds_nbdkit_member_mirrors_byte_for_byte() {
    let dir = scratch_dir("remote-nbds-nbdkit");
    let pki = TestPki::new(dir.path());
    let remote = nbdkit_tls(free_port(), &pki.server_dir(), &["memory", "384M"])
        .over_tls(pki.anonymous_client());
    assert_our_record_layer(&mirror_over_qemu_io(&remote, dir.path()));
}

#[test]
fn raid1_with_an_nbds_vraid_export_member_mirrors_byte_for_byte() {
    let dir = scratch_dir("remote-nbds-vraid");
    let pki = TestPki::new(dir.path());
    let remote =
        Remote::vraid_with(dir.path(), &pki.serve_args("require")).over_tls(pki.anonymous_client());
    assert_our_record_layer(&mirror_over_qemu_io(&remote, dir.path()));
}

fn create_fails(dir: &Path, member: &str) -> String {
    let out = run(vraid(&[
        "create",
        "--level",
        "1",
        "--member-size",
        MEMBER,
        "--name",
        "vol0",
    ])
    .arg(dir.join("local.img"))
    .arg(member));
    assert!(!out.status.success());
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn nbds_members_refuse_an_untrusted_server_and_a_server_without_tls() {
    // Arrange: nbdkit with a certificate of our CA; a client trusting
    // another CA only; a plain nbdkit that does not offer STARTTLS.
    let dir = scratch_dir("remote-nbds-refused");
    let pki = TestPki::new(dir.path());
    let other = TestPki::new(&dir.path().join("other"));
    let remote = nbdkit_tls(free_port(), &pki.server_dir(), &["memory", "384M"]);
    let plain = Remote::nbdkit(free_port(), &["memory", "384M"]);

    // Act
    let untrusted = create_fails(dir.path(), &remote.over_tls(other.anonymous_client()).uri());
    let refused = create_fails(dir.path(), &plain.over_tls(pki.anonymous_client()).uri());

    // Assert
    assert!(untrusted.contains("TLS with"), "{untrusted}");
    assert!(untrusted.contains("certificate"), "{untrusted}");
    assert!(refused.contains("refused NBD_OPT_STARTTLS"), "{refused}");
}

/// The `vraid_member_remote_reconnects_total` value of role 1 in `text`.
fn scraped_reconnects(text: &str) -> u64 {
    let line = text
        .lines()
        .find(|l| {
            l.starts_with("vraid_member_remote_reconnects_total{") && l.contains("member=\"1\"")
        })
        .unwrap_or_else(|| panic!("no remote reconnects series:\n{text}"));
    line.rsplit(' ').next().unwrap().parse().unwrap()
}

#[test]
fn remote_member_stats_count_a_reconnect_after_the_server_restarts() {
    // Arrange: a RAID-1 of a local file and an nbdkit file export, with
    // member_timeout long enough for a restart; writes answered.
    let dir = scratch_dir("remote-stats");
    let (local, file) = (dir.path().join("local.img"), dir.path().join("remote.img"));
    std::fs::File::create(&file)
        .unwrap()
        .set_len(384 << 20)
        .unwrap();
    let port = free_port();
    let mut remote = Remote::nbdkit(port, &["file", file.to_str().unwrap()]);
    let uri = remote.uri();
    create_array(
        1,
        "64K",
        MEMBER,
        "vol0",
        &[local.clone(), PathBuf::from(&uri)],
    );
    let control = dir.path().join("ctl.sock");
    let metrics = format!("127.0.0.1:{}", free_port());
    let mut args = control_args(&control, &[local.to_str().unwrap(), &uri]);
    args.extend(["--metrics".into(), metrics.clone()]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let server = Server::start_with_env(&args, &[("VRAID_MEMBER_TIMEOUT", "60s")]);
    qemu_io(&server.uri("vol0"), &["write -P 0x11 0 1M".to_string()]);
    let first = volume_status(&control, "vol0")["members"][1]["remote"].clone();

    // Act: SIGKILL the server, restart it on the same port, write again.
    remote.kill();
    let _remote = Remote::nbdkit(port, &["file", file.to_str().unwrap()]);
    qemu_io(&server.uri("vol0"), &["write -P 0x22 1M 1M".to_string()]);
    let status = volume_status(&control, "vol0");
    let text = vraid_ctl_ok(&control, &["status"]);
    let scraped = scrape(&metrics);
    assert_eq!(server.stop(), 0);

    // Assert: no reconnect before, one after; latency measured; in the
    // text, the JSON and the metrics alike.
    assert_eq!(first["reconnects"], 0, "{first}");
    assert!(first["requests"].as_u64().unwrap() > 0, "{first}");
    let after = &status["members"][1]["remote"];
    assert_eq!(member_states(&status), vec!["active", "active"]);
    assert_eq!(after["reconnects"], 1, "{after}");
    assert!(after["latency_us_max"].as_u64().unwrap() > 0, "{after}");
    assert!(status["members"][0].get("remote").is_none());
    assert!(text.contains("1 reconnects"), "{text}");
    assert_eq!(scraped_reconnects(&scraped), 1);
}

#[test]
fn raid1_with_an_nbds_unix_member_checks_the_tls_hostname() {
    // Arrange: nbdkit over TLS on a Unix socket (certificate for localhost).
    let dir = scratch_dir("remote-nbds-unix");
    let pki = TestPki::new(dir.path());
    let sock = dir.path().join("nbdkit.sock");
    let certs = format!("--tls-certificates={}", pki.server_dir().display());
    let mut nbdkit = Command::new("nbdkit")
        .args(["-f", "-U"])
        .arg(&sock)
        .args(["--tls=require", &certs, "memory", "384M"])
        .stdin(Stdio::null())
        .spawn()
        .expect("spawn nbdkit");
    wait_for_socket(&sock);
    let client = pki.anonymous_client();
    let uri = |host: &str| {
        format!(
            "nbds+unix:///?socket={}&tls-certificates={}&tls-hostname={host}",
            sock.display(),
            client.display()
        )
    };
    let local = dir.path().join("local.img");

    // Act
    let wrong = create_fails(dir.path(), &uri("elsewhere.example"));
    let good = uri("localhost");
    create_array(
        1,
        "64K",
        MEMBER,
        "vol0",
        &[local.clone(), PathBuf::from(&good)],
    );
    let control = dir.path().join("ctl.sock");
    let server = start(&[local.to_str().unwrap(), &good], &control, "30s");
    qemu_io(&server.uri("vol0"), &["write -P 0x77 8M 2M".to_string()]);
    qemu_io(&server.uri("vol0"), &["read -P 0x77 8M 2M".to_string()]);
    let status = volume_status(&control, "vol0");
    assert_eq!(server.stop(), 0);
    let _ = nbdkit.kill();
    let _ = nbdkit.wait();

    // Assert
    assert!(wrong.contains("TLS with"), "{wrong}");
    assert_eq!(member_states(&status), vec!["active", "active"]);
    assert!(status["members"][1]["remote"]["requests"].as_u64().unwrap() > 0);
}
