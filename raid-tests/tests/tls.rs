//! TLS on the NBD exports (`--tls`, NBD_OPT_STARTTLS) with real clients:
//! nbdinfo and nbdcopy (libnbd, GnuTLS) and qemu-img (QEMU's
//! tls-creds-x509), with certificates made by openssl in the test.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use raid_tests::*;

const MIB: usize = 1024 * 1024;

/// A RAID-1 `vol0` of two sparse 64 MiB members in `dir`, as serve arguments.
fn raid1(dir: &Path) -> Vec<String> {
    let paths = member_paths(dir, 2);
    create_array(1, "64K", "64M", "vol0", &paths);
    paths.iter().map(|p| p.display().to_string()).collect()
}

fn start(pki_args: Vec<String>, members: &[String], extra: &[&str]) -> Server {
    let mut args: Vec<&str> = pki_args.iter().map(String::as_str).collect();
    args.extend(extra);
    args.extend(members.iter().map(String::as_str));
    Server::start(&args)
}

/// `nbds://` URI of `vol0` with libnbd's certificate directory.
fn nbds(server: &Server, certs: &Path) -> String {
    format!(
        "nbds://{}/vol0?tls-certificates={}",
        server.addr,
        certs.display()
    )
}

/// QEMU's `--object` for X.509 client credentials from `certs`.
fn qemu_creds(certs: &Path) -> String {
    format!(
        "tls-creds-x509,id=tls0,endpoint=client,dir={}",
        certs.display()
    )
}

/// QEMU's `--image-opts` for `vol0` over TLS.
fn qemu_image(server: &Server) -> String {
    format!(
        "driver=nbd,server.type=inet,server.host=127.0.0.1,server.port={},export=vol0,tls-creds=tls0",
        server.addr.port()
    )
}

/// qemu-img writes `src` (raw) at the start of the export over TLS.
fn qemu_img_write(server: &Server, certs: &Path, src: &Path) {
    let mut c = Command::new("qemu-img");
    c.args(["convert", "-n", "-f", "raw"])
        .arg("--object")
        .arg(qemu_creds(certs))
        .arg(src)
        .arg("--target-image-opts")
        .arg(qemu_image(server));
    run_ok(c);
}

/// qemu-img reads the whole export over TLS into `dst`.
fn qemu_img_read(server: &Server, certs: &Path, dst: &Path) -> std::process::Output {
    let _ = std::fs::remove_file(dst);
    let mut c = Command::new("qemu-img");
    c.arg("convert")
        .arg("--object")
        .arg(qemu_creds(certs))
        .arg("--image-opts")
        .arg(qemu_image(server))
        .args(["-O", "raw"])
        .arg(dst);
    run(c)
}

fn nbdinfo(uri: &str) -> std::process::Output {
    run(Command::new("nbdinfo").arg(uri))
}

fn text(out: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[test]
fn nbdinfo_nbdcopy_and_qemu_img_read_and_write_over_required_tls() {
    clients_read_and_write_over_tls("tls-clients", "ours");
}

#[test]
fn the_same_clients_with_rustls_as_the_record_layer() {
    clients_read_and_write_over_tls("tls-clients-rustls", "rustls");
}

/// nbdinfo, nbdcopy and qemu-img (GnuTLS) against the server with
/// `--tls-record-layer=LAYER` (FORMAT.md §14), and the log naming it.
fn clients_read_and_write_over_tls(scratch: &str, layer: &str) {
    // Arrange
    let dir = scratch_dir(scratch);
    let pki = TestPki::new(dir.path());
    let members = raid1(dir.path());
    let flag = format!("--tls-record-layer={layer}");
    let server = start(pki.serve_args("require"), &members, &[&flag]);
    let certs = pki.anonymous_client();
    let uri = nbds(&server, &certs);
    let by_qemu = pseudo_random(3 * MIB + 4096, 1);
    let by_nbdcopy = pseudo_random(2 * MIB, 2);
    let src = dir.path().join("qemu-src.raw");
    std::fs::write(&src, &by_qemu).unwrap();

    // Act: qemu-img writes, nbdcopy reads; nbdcopy writes, qemu-img reads.
    let info = run_ok(Command::new("nbdinfo").arg(&uri));
    qemu_img_write(&server, &certs, &src);
    let read_by_nbdcopy = read_export(&uri, dir.path());
    write_export(&uri, &by_nbdcopy, dir.path());
    let dst = dir.path().join("qemu-dst.raw");
    let qemu_read = qemu_img_read(&server, &certs, &dst);

    // Assert
    assert!(info.contains("with TLS"), "nbdinfo:\n{info}");
    assert!(info.contains("export-size:"), "{info}");
    assert_eq!(&read_by_nbdcopy[..by_qemu.len()], &by_qemu[..]);
    assert!(
        qemu_read.status.success(),
        "qemu-img read:\n{}",
        text(&qemu_read)
    );
    let read_by_qemu = std::fs::read(&dst).unwrap();
    assert_eq!(&read_by_qemu[..by_nbdcopy.len()], &by_nbdcopy[..]);
    assert_eq!(
        &read_by_qemu[by_nbdcopy.len()..by_qemu.len()],
        &by_qemu[by_nbdcopy.len()..],
        "qemu-img's bytes beyond nbdcopy's write are still there"
    );
    let log = server.log();
    let other = if layer == "ours" { "rustls" } else { "ours" };
    assert!(
        log.contains(&format!("NBD TLS record layer: {layer}")),
        "{log}"
    );
    assert!(
        !log.contains(&format!("NBD TLS record layer: {other}")),
        "{log}"
    );
    assert_eq!(server.stop(), 0);
}

#[test]
fn plain_client_is_refused_under_require_and_served_under_allow() {
    // Arrange
    let dir = scratch_dir("tls-modes");
    let pki = TestPki::new(dir.path());
    let members = raid1(dir.path());
    let certs = pki.anonymous_client();

    // Act + Assert: require.
    let server = start(pki.serve_args("require"), &members, &[]);
    let plain = nbdinfo(&server.uri("vol0"));
    let (qemu_ok, qemu_out) = qemu_io_try(&server.uri("vol0"), &["read 0 4096"]);
    assert!(
        !plain.status.success(),
        "plain nbdinfo served:\n{}",
        text(&plain)
    );
    assert!(!text(&plain).contains("export-size"), "{}", text(&plain));
    assert!(!qemu_ok, "plain qemu-io served:\n{qemu_out}");
    assert!(nbdinfo(&nbds(&server, &certs)).status.success());
    assert_eq!(server.stop(), 0);

    // Act + Assert: allow.
    let server = start(pki.serve_args("allow"), &members, &[]);
    let plain = run_ok(Command::new("nbdinfo").arg(server.uri("vol0")));
    let tls = run_ok(Command::new("nbdinfo").arg(nbds(&server, &certs)));
    qemu_io(&server.uri("vol0"), &["write -P 0x5a 0 64k".to_string()]);
    assert!(!plain.contains("with TLS"), "{plain}");
    assert!(tls.contains("with TLS"), "{tls}");
    assert_eq!(
        &read_export(&nbds(&server, &certs), dir.path())[..65536],
        &[0x5a; 65536][..]
    );
    assert_eq!(server.stop(), 0);
}

#[test]
fn client_certificate_not_on_the_allow_list_or_from_another_ca_is_refused() {
    // Arrange
    let dir = scratch_dir("tls-allow");
    let pki = TestPki::new(dir.path());
    let other = TestPki::new(&dir.path().join("other"));
    let members = raid1(dir.path());
    let ca = pki.ca_cert().display().to_string();
    let extra = [
        "--tls-ca",
        ca.as_str(),
        "--tls-allow",
        "client-a",
        "client-c",
    ];
    let server = start(pki.serve_args("require"), &members, &extra);
    let allowed = pki.client("client-a", None);
    let listed_elsewhere = pki.client("client-c", Some(&other));
    let not_listed = pki.client("client-b", None);
    let anonymous = pki.anonymous_client();

    // Act
    let ok = nbdinfo(&nbds(&server, &allowed));
    let refused: Vec<(&str, std::process::Output)> = [
        ("CN not on the list", &not_listed),
        ("signed by another CA", &listed_elsewhere),
        ("no client certificate", &anonymous),
    ]
    .into_iter()
    .map(|(why, certs)| (why, nbdinfo(&nbds(&server, certs))))
    .collect();
    let dst = dir.path().join("dst.raw");
    let qemu_allowed = qemu_img_read(&server, &allowed, &dst);
    let qemu_refused = qemu_img_read(&server, &not_listed, &dst);

    // Assert
    assert!(
        ok.status.success(),
        "allowed client refused:\n{}",
        text(&ok)
    );
    for (why, out) in &refused {
        assert!(!out.status.success(), "{why}: served:\n{}", text(out));
    }
    assert!(qemu_allowed.status.success(), "{}", text(&qemu_allowed));
    assert!(
        !qemu_refused.status.success(),
        "qemu-img with client-b served"
    );
    server.wait_log("not on the allow list", Duration::from_secs(10));
    assert_eq!(server.stop(), 0);
}

/// NBD greeting, client flags, then `NBD_OPT_*` with an empty payload;
/// returns the reply type.
fn raw_option(stream: &mut TcpStream, option: u32, payload: &[u8]) -> u32 {
    let mut opt = Vec::new();
    opt.extend_from_slice(b"IHAVEOPT");
    opt.extend_from_slice(&option.to_be_bytes());
    opt.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    opt.extend_from_slice(payload);
    stream.write_all(&opt).unwrap();
    let mut reply = [0u8; 20];
    stream.read_exact(&mut reply).unwrap();
    let len = u32::from_be_bytes(reply[16..20].try_into().unwrap());
    let mut rest = vec![0u8; len as usize];
    stream.read_exact(&mut rest).unwrap();
    u32::from_be_bytes(reply[12..16].try_into().unwrap())
}

fn raw_connect(server: &Server) -> TcpStream {
    let mut s = TcpStream::connect(server.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut greeting = [0u8; 18];
    s.read_exact(&mut greeting).unwrap();
    assert_eq!(&greeting[..8], b"NBDMAGIC");
    s.write_all(&1u32.to_be_bytes()).unwrap();
    s
}

/// Whether the server closes the connection (EOF or reset) before the read timeout.
fn closed_by_server(stream: &mut TcpStream) -> bool {
    let mut buf = [0u8; 4096];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return true,
            Err(_) => return false,
        }
    }
}

#[test]
fn malformed_and_aborted_tls_handshakes_hurt_neither_other_clients_nor_the_server() {
    // Arrange
    let dir = scratch_dir("tls-bad");
    let pki = TestPki::new(dir.path());
    let members = raid1(dir.path());
    let server = start(pki.serve_args("require"), &members, &[]);
    let certs = pki.anonymous_client();
    let data = pseudo_random(32 * MIB, 7);
    let src = dir.path().join("src.raw");
    std::fs::write(&src, &data).unwrap();
    let mut copy = Command::new("nbdcopy")
        .arg(&src)
        .arg(nbds(&server, &certs))
        .stdin(Stdio::null())
        .spawn()
        .unwrap();

    // Act: while nbdcopy writes over TLS, clients misbehave.
    let mut go = Vec::new();
    go.extend_from_slice(&4u32.to_be_bytes());
    go.extend_from_slice(b"vol0");
    go.extend_from_slice(&0u16.to_be_bytes());
    let mut outcomes = Vec::new();
    for round in 0..10 {
        let mut s = raw_connect(&server);
        let plain_go = raw_option(&mut s, 7, &go);
        let starttls = raw_option(&mut s, 5, &[]);
        match round % 3 {
            // Garbage where a ClientHello belongs.
            0 => s
                .write_all(b"\x16\x03\x01\x00\x10not a client hello at all")
                .unwrap(),
            // A record header promising more than ever comes, then EOF.
            1 => {
                s.write_all(b"\x16\x03\x01\x40\x00\x01").unwrap();
                s.shutdown(std::net::Shutdown::Write).unwrap();
            }
            // Gone right after STARTTLS.
            _ => s.shutdown(std::net::Shutdown::Write).unwrap(),
        }
        outcomes.push((plain_go, starttls, closed_by_server(&mut s)));
    }
    let status = copy.wait().unwrap();

    // Assert
    for (plain_go, starttls, closed) in outcomes {
        assert_eq!(
            plain_go, 0x8000_0005,
            "NBD_REP_ERR_TLS_REQD for GO in plain text"
        );
        assert_eq!(starttls, 1, "NBD_REP_ACK for STARTTLS");
        assert!(closed, "server kept a broken TLS connection open");
    }
    assert!(
        status.success(),
        "nbdcopy over TLS failed alongside bad clients"
    );
    assert_eq!(
        &read_export(&nbds(&server, &certs), dir.path())[..data.len()],
        &data[..]
    );
    server.wait_log("NBD TLS handshake failed", Duration::from_secs(10));
    assert_eq!(server.stop(), 0);
}

#[test]
fn tls_keys_in_the_config_file_serve_tls() {
    // Arrange
    let dir = scratch_dir("tls-config");
    let pki = TestPki::new(dir.path());
    let members = raid1(dir.path());
    let sd = pki.server_dir();
    let config = dir.path().join("vraid.toml");
    let quoted: Vec<String> = members.iter().map(|m| format!("{m:?}")).collect();
    std::fs::write(
        &config,
        format!(
            "[server]\ntls = \"require\"\ntls_cert = {:?}\ntls_key = {:?}\ntls_ca = {:?}\n\
             tls_allow = [\"client-a\"]\n\n[[volume]]\nname = \"vol0\"\nlevel = 1\n\
             members = [{}]\n",
            sd.join("server-cert.pem"),
            sd.join("server-key.pem"),
            pki.ca_cert(),
            quoted.join(", ")
        ),
    )
    .unwrap();
    let config_arg: PathBuf = config;

    // Act
    let server = Server::start(&["--config", config_arg.to_str().unwrap()]);
    let allowed = nbdinfo(&nbds(&server, &pki.client("client-a", None)));
    let other = nbdinfo(&nbds(&server, &pki.client("client-b", None)));
    let plain = nbdinfo(&server.uri("vol0"));

    // Assert
    assert!(allowed.status.success(), "{}", text(&allowed));
    assert!(!other.status.success());
    assert!(!plain.status.success());
    assert_eq!(server.stop(), 0);
}
