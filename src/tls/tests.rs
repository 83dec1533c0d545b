//! The connector against the acceptor over an in-memory duplex stream, with
//! certificates made by openssl: server name checks, client certificates
//! and the allow list, both sides of one handshake at a time.

use std::path::{Path, PathBuf};
use std::process::Command;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::{AllowList, ClientTls, ServerTls, ServerTlsConfig, TlsMode};

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .current_dir(dir)
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
        ])
        .args(["-nodes", "-days", "2"])
        .args(args)
        .output()
        .expect("openssl (Debian package openssl)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Records sealed by `tx` from (inner type, content) pairs.
pub(crate) fn seal_all(tx: &mut super::record::Direction, records: &[(u8, &[u8])]) -> Vec<u8> {
    let mut wire = Vec::new();
    for (inner, content) in records {
        let at = wire.len();
        wire.resize(
            at + super::record::HEADER + content.len() + 1 + super::record::TAG,
            0,
        );
        wire[at + super::record::HEADER..at + super::record::HEADER + content.len()]
            .copy_from_slice(content);
        tx.seal(&mut wire[at..], *inner);
    }
    wire
}

/// A server of `dir`'s PKI (`pki`) that keeps rustls for the whole
/// connection (record layer `rustls`), TLS required.
pub(crate) fn rustls_only_server(dir: &Path) -> ServerTls {
    ServerTls::load(&super::ServerTlsConfig {
        mode: super::TlsMode::Require,
        cert: dir.join("server.pem"),
        key: dir.join("server-key.pem"),
        record_layer: super::RecordLayer::Rustls,
        ..super::ServerTlsConfig::default()
    })
    .unwrap()
}

/// CA, server cert for localhost, clients "a" and "b".
pub(crate) fn pki() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path();
    openssl(
        p,
        &[
            "-subj",
            "/CN=ca",
            "-keyout",
            "ca-key.pem",
            "-out",
            "ca.pem",
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign",
        ],
    );
    for (name, eku, san) in [
        ("server", "serverAuth", "subjectAltName=DNS:localhost"),
        ("a", "clientAuth", "subjectAltName=DNS:a.example"),
        ("b", "clientAuth", "subjectAltName=DNS:b.example"),
    ] {
        let (cn, key, cert) = (
            format!("/CN={name}"),
            format!("{name}-key.pem"),
            format!("{name}.pem"),
        );
        let eku = format!("extendedKeyUsage={eku}");
        openssl(
            p,
            &[
                "-subj",
                &cn,
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca-key.pem",
                "-addext",
                &eku,
                "-addext",
                san,
                "-addext",
                "basicConstraints=critical,CA:FALSE",
                "-keyout",
                &key,
                "-out",
                &cert,
            ],
        );
    }
    dir
}

pub(crate) fn server(dir: &Path, allow: &[&str]) -> ServerTls {
    ServerTls::load(&ServerTlsConfig {
        mode: TlsMode::Require,
        cert: dir.join("server.pem"),
        key: dir.join("server-key.pem"),
        ca: Some(dir.join("ca.pem")),
        allow: AllowList::new(allow.iter().map(|s| s.to_string()).collect()),
        ..ServerTlsConfig::default()
    })
    .unwrap()
}

pub(crate) fn client(dir: &Path, who: Option<&str>) -> ClientTls {
    let paths: Option<(PathBuf, PathBuf)> = who.map(|w| {
        (
            dir.join(format!("{w}.pem")),
            dir.join(format!("{w}-key.pem")),
        )
    });
    let identity = paths.as_ref().map(|(c, k)| (c.as_path(), k.as_path()));
    ClientTls::load(&dir.join("ca.pem"), identity).unwrap()
}

/// Runs both sides; true if bytes went through in both directions.
async fn exchange(server: &ServerTls, client: &ClientTls, name: &str) -> bool {
    let (c, s) = tokio::io::duplex(64 * 1024);
    let serving = async {
        let mut tls = server.accept(s).await.ok()?;
        let mut buf = [0u8; 4];
        tls.read_exact(&mut buf).await.ok()?;
        tls.write_all(b"pong").await.ok()?;
        tls.flush().await.ok()
    };
    let asking = async {
        let mut tls = client.connect(name, c).await.ok()?;
        tls.write_all(b"ping").await.ok()?;
        let mut buf = [0u8; 4];
        tls.read_exact(&mut buf).await.ok()?;
        (&buf == b"pong").then_some(())
    };
    let (served, asked) = tokio::join!(serving, asking);
    served.is_some() && asked.is_some()
}

#[tokio::test]
async fn listed_client_by_cn_or_san_is_served_others_are_refused() {
    let dir = pki();
    let p = dir.path();
    let by_cn = server(p, &["a"]);
    let by_san = server(p, &["B.example"]);

    assert!(exchange(&by_cn, &client(p, Some("a")), "localhost").await);
    assert!(!exchange(&by_cn, &client(p, Some("b")), "localhost").await);
    assert!(!exchange(&by_cn, &client(p, None), "localhost").await);
    assert!(exchange(&by_san, &client(p, Some("b")), "localhost").await);
}

#[tokio::test]
async fn connector_checks_the_server_name_and_refuses_bad_names() {
    let dir = pki();
    let p = dir.path();
    let s = server(p, &[]);
    let c = client(p, Some("a"));

    assert!(exchange(&s, &c, "localhost").await);
    assert!(!exchange(&s, &c, "elsewhere.example").await);
    assert!(matches!(
        c.connect("", tokio::io::duplex(16).0).await,
        Err(super::TlsError::ServerName(_))
    ));
}

#[test]
fn missing_or_empty_pem_files_are_errors_not_panics() {
    let dir = tempfile::tempdir().unwrap();
    let empty = dir.path().join("empty.pem");
    std::fs::write(&empty, "").unwrap();
    assert!(ClientTls::load(&empty, None).is_err());
    assert!(ClientTls::load(&dir.path().join("absent.pem"), None).is_err());
    let config = ServerTlsConfig {
        mode: TlsMode::Allow,
        cert: empty.clone(),
        key: empty,
        ..ServerTlsConfig::default()
    };
    assert!(ServerTls::load(&config).is_err());
}
