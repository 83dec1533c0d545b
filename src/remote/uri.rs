//! NBD member URIs (the NBD URI standard, `doc/uri.md` of the NBD project):
//! `nbd://HOST[:PORT]/EXPORT`, `nbd+unix:///EXPORT?socket=PATH` and their
//! TLS forms `nbds://`, `nbds+unix://`.
//!
//! A member path that starts with one of these schemes is a remote member.
//! [`NbdUri::canonical`] is its identity: two paths naming the same export
//! of the same server (port spelled or not) are one member.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, ToSocketAddrs};
use std::path::{Path, PathBuf};

/// The IANA port of NBD.
pub const DEFAULT_PORT: u16 = 10809;

/// A URI that is not a valid NBD member URI.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum UriError {
    /// Not one of the four schemes.
    #[error("{0}: not an nbd://, nbd+unix://, nbds:// or nbds+unix:// URI")]
    Scheme(String),
    /// A TCP URI without a host.
    #[error("{0}: no host")]
    NoHost(String),
    /// The port is not a number from 1 to 65535.
    #[error("{0}: bad port")]
    Port(String),
    /// A Unix URI without `?socket=PATH`.
    #[error("{0}: a Unix-socket URI needs ?socket=PATH")]
    NoSocket(String),
    /// A Unix URI with a host, or query parameters we do not know.
    #[error("{0}: {1}")]
    Unsupported(String, &'static str),
}

/// Where the server listens.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Endpoint {
    /// TCP host (name or address; IPv6 without brackets) and port.
    Tcp {
        /// Host.
        host: String,
        /// Port.
        port: u16,
    },
    /// A Unix socket path.
    Unix(PathBuf),
}

/// A parsed NBD member URI.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct NbdUri {
    /// Where to connect.
    pub endpoint: Endpoint,
    /// Export name (empty: the server's default export).
    pub export: String,
    /// TLS (`nbds`).
    pub tls: bool,
    /// `?tls-certificates=DIR`: `ca-cert.pem` and optionally
    /// `client-cert.pem` / `client-key.pem` (libnbd's layout).
    pub tls_certificates: Option<PathBuf>,
    /// `?tls-hostname=NAME`: the name the server certificate must carry
    /// (default: the URI's host; `localhost` for Unix sockets).
    pub tls_hostname: Option<String>,
    /// `?connections=N` (1 to [`MAX_CONNECTIONS`]): connections to open when
    /// the server advertises `CAN_MULTI_CONN` (default
    /// [`DEFAULT_CONNECTIONS`]). Not part of the identity.
    pub connections: Option<usize>,
}

/// Connections a remote member opens to a server that advertises
/// `CAN_MULTI_CONN`, unless `?connections=N` says otherwise: two lets the
/// server side (vraid's one task per connection, TLS records, nbdkit's
/// per-connection request thread) and our reply reader use two cores and
/// keeps a large transfer from holding up the small requests behind it;
/// more rarely pays on small hosts and costs the server a session each.
pub const DEFAULT_CONNECTIONS: usize = 2;
/// Most connections one remote member may open.
pub const MAX_CONNECTIONS: usize = 16;

/// True when `path` is written as a URI (`SCHEME://...`), valid or not: a
/// member path with an unknown scheme (`nbdx://`, `http://`) is refused
/// when opened ([`UriError::Scheme`]), never taken as a relative file name.
pub fn is_nbd_uri(path: &Path) -> bool {
    let Some((scheme, _)) = path.to_str().and_then(|s| s.split_once("://")) else {
        return false;
    };
    let mut chars = scheme.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic())
        && chars.all(|c| c.is_ascii_alphanumeric() || "+-.".contains(c))
}

impl NbdUri {
    /// Parses a URI.
    pub fn parse(s: &str) -> Result<NbdUri, UriError> {
        let (scheme, rest) = s
            .split_once("://")
            .ok_or_else(|| UriError::Scheme(s.into()))?;
        let (tls, unix) = match scheme {
            "nbd" => (false, false),
            "nbds" => (true, false),
            "nbd+unix" => (false, true),
            "nbds+unix" => (true, true),
            _ => return Err(UriError::Scheme(s.into())),
        };
        let (rest, query) = match rest.split_once('?') {
            Some((r, q)) => (r, Some(q)),
            None => (rest, None),
        };
        let (authority, export) = match rest.split_once('/') {
            Some((a, e)) => (a, percent_decode(e)),
            None => (rest, String::new()),
        };
        let q = Query::parse(s, query, tls)?;
        let endpoint = if unix {
            unix_endpoint(s, authority, q.socket)?
        } else {
            if q.socket.is_some() {
                return Err(UriError::Unsupported(s.into(), "socket= is for nbd+unix"));
            }
            tcp_endpoint(s, authority)?
        };
        Ok(NbdUri {
            endpoint,
            export,
            tls,
            tls_certificates: q.tls_certificates,
            tls_hostname: q.tls_hostname,
            connections: q.connections,
        })
    }

    /// Connections to open when the server allows several.
    pub fn connections(&self) -> usize {
        self.connections.unwrap_or(DEFAULT_CONNECTIONS)
    }

    /// Parses a member path written as a URI.
    pub fn from_path(path: &Path) -> Result<NbdUri, UriError> {
        let s = path
            .to_str()
            .ok_or_else(|| UriError::Scheme(path.display().to_string()))?;
        NbdUri::parse(s)
    }

    /// The identity of the export: scheme, endpoint with its port, export.
    pub fn canonical(&self) -> String {
        self.to_string()
    }

    /// The identity of the export for "same device" checks: the canonical
    /// URI with the host resolved to its first address (any loopback
    /// address as 127.0.0.1), the socket path made canonical and TLS left
    /// out, so two spellings of one export are one member. Blocking (DNS).
    pub fn identity(&self) -> String {
        let mut u = self.clone();
        u.tls = false;
        match &mut u.endpoint {
            Endpoint::Tcp { host, port } => {
                if let Some(ip) = resolve(host, *port) {
                    *host = ip.to_string();
                }
            }
            Endpoint::Unix(p) => {
                if let Ok(c) = std::fs::canonicalize(&*p) {
                    *p = c;
                }
            }
        }
        u.to_string()
    }
}

/// The first address of `host`, loopback as 127.0.0.1, IPv4-mapped IPv6
/// as IPv4.
fn resolve(host: &str, port: u16) -> Option<IpAddr> {
    let addr = (host, port).to_socket_addrs().ok()?.next()?;
    Some(match addr.ip() {
        ip if ip.is_loopback() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
        ip => ip,
    })
}

impl fmt::Display for NbdUri {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = if self.tls { "s" } else { "" };
        match &self.endpoint {
            Endpoint::Tcp { host, port } if host.contains(':') => {
                write!(f, "nbd{s}://[{host}]:{port}/{}", self.export)
            }
            Endpoint::Tcp { host, port } => write!(f, "nbd{s}://{host}:{port}/{}", self.export),
            Endpoint::Unix(p) => write!(f, "nbd{s}+unix:///{}?socket={}", self.export, p.display()),
        }
    }
}

/// The query parameters we know.
#[derive(Default)]
struct Query {
    socket: Option<PathBuf>,
    tls_certificates: Option<PathBuf>,
    tls_hostname: Option<String>,
    connections: Option<usize>,
}

impl Query {
    /// `socket=`, `connections=`, and for TLS URIs `tls-certificates=` and
    /// `tls-hostname=`.
    fn parse(s: &str, query: Option<&str>, tls: bool) -> Result<Query, UriError> {
        let mut q = Query::default();
        for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
            let (k, v) = match pair.split_once('=') {
                Some((k, v)) if !v.is_empty() => (k, percent_decode(v)),
                _ => return Err(UriError::Unsupported(s.into(), "bad query parameter")),
            };
            match k {
                "socket" => q.socket = Some(PathBuf::from(v)),
                "tls-certificates" if tls => q.tls_certificates = Some(PathBuf::from(v)),
                "tls-hostname" if tls => q.tls_hostname = Some(v),
                "connections" => q.connections = Some(parse_connections(s, &v)?),
                _ => return Err(UriError::Unsupported(s.into(), "unknown query parameter")),
            }
        }
        Ok(q)
    }
}

fn parse_connections(s: &str, v: &str) -> Result<usize, UriError> {
    v.parse::<usize>()
        .ok()
        .filter(|n| (1..=MAX_CONNECTIONS).contains(n))
        .ok_or_else(|| UriError::Unsupported(s.into(), "connections= must be 1 to 16"))
}

fn unix_endpoint(s: &str, authority: &str, socket: Option<PathBuf>) -> Result<Endpoint, UriError> {
    if !authority.is_empty() {
        return Err(UriError::Unsupported(
            s.into(),
            "a Unix-socket URI has no host",
        ));
    }
    socket
        .map(Endpoint::Unix)
        .ok_or_else(|| UriError::NoSocket(s.into()))
}

fn tcp_endpoint(s: &str, authority: &str) -> Result<Endpoint, UriError> {
    let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
        let (h, after) = v6
            .split_once(']')
            .ok_or_else(|| UriError::NoHost(s.into()))?;
        (h, after.strip_prefix(':'))
    } else {
        match authority.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (authority, None),
        }
    };
    if host.is_empty() {
        return Err(UriError::NoHost(s.into()));
    }
    let port = match port {
        None => DEFAULT_PORT,
        Some(p) => p
            .parse::<u16>()
            .ok()
            .filter(|&p| p != 0)
            .ok_or_else(|| UriError::Port(s.into()))?,
    };
    Ok(Endpoint::Tcp {
        host: host.to_string(),
        port,
    })
}

/// Decodes `%XX` escapes; malformed escapes stay as they are.
fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = b
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok());
        match (b[i], hex.and_then(|h| u8::from_str_radix(h, 16).ok())) {
            (b'%', Some(v)) => {
                out.push(v);
                i += 3;
            }
            (c, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tcp_uris_parse_with_and_without_port() {
        let u = NbdUri::parse("nbd://127.0.0.1:10900/vol0").unwrap();
        assert_eq!(
            u.endpoint,
            Endpoint::Tcp {
                host: "127.0.0.1".into(),
                port: 10900
            }
        );
        assert_eq!(u.export, "vol0");
        assert!(!u.tls);
        let d = NbdUri::parse("nbd://example/").unwrap();
        assert_eq!(d.canonical(), "nbd://example:10809/");
        assert_eq!(
            NbdUri::parse("nbd://[::1]:99/a%20b").unwrap().canonical(),
            "nbd://[::1]:99/a b"
        );
        assert!(NbdUri::parse("nbds://h/x").unwrap().tls);
    }

    #[test]
    fn unix_uris_need_a_socket_and_no_host() {
        let u = NbdUri::parse("nbd+unix:///e?socket=/run/s.sock").unwrap();
        assert_eq!(u.endpoint, Endpoint::Unix("/run/s.sock".into()));
        assert_eq!(u.export, "e");
        assert!(NbdUri::parse("nbd+unix:///e").is_err());
        assert!(NbdUri::parse("nbd+unix://h/e?socket=/s").is_err());
        assert!(NbdUri::parse("nbds+unix:///?socket=/s").unwrap().tls);
        let t = NbdUri::parse("nbds+unix:///e?socket=/s&tls-certificates=/p%20q&tls-hostname=h")
            .unwrap();
        assert_eq!(t.tls_certificates, Some(PathBuf::from("/p q")));
        assert_eq!(t.tls_hostname.as_deref(), Some("h"));
        assert!(NbdUri::parse("nbd://h/e?tls-certificates=/p").is_err());
        assert!(NbdUri::parse("nbd://h/e?socket=/s").is_err());
    }

    #[test]
    fn spellings_of_one_export_have_one_identity() {
        let id = |s: &str| NbdUri::parse(s).unwrap().identity();
        let one = id("nbd://127.0.0.1:10809/x");
        for same in [
            "nbd://localhost/x",
            "nbd://localhost:10809/x",
            "nbd://[::1]/x",
            "nbd://127.0.0.1/x",
            "nbds://127.0.0.1/x",
            "nbd://127.0.0.1:10809/%78",
        ] {
            assert_eq!(id(same), one, "{same}");
        }
        assert_ne!(id("nbd://127.0.0.1:10810/x"), one);
        assert_ne!(id("nbd://127.0.0.1/y"), one);
        let (dir, name) = (
            std::env::temp_dir(),
            format!("rt-{}.sock", std::process::id()),
        );
        let a = format!("nbd+unix:///x?socket={}/{name}", dir.display());
        let b = format!("nbd+unix:///x?socket={}/./{name}", dir.display());
        std::fs::write(dir.join(&name), b"").unwrap();
        let (ia, ib) = (id(&a), id(&b));
        std::fs::remove_file(dir.join(&name)).unwrap();
        assert_eq!(ia, ib);
    }

    #[test]
    fn connections_are_a_query_parameter_outside_the_identity() {
        let u = NbdUri::parse("nbd://h:1/x?connections=4").unwrap();
        assert_eq!(u.connections(), 4);
        assert_eq!(u.canonical(), "nbd://h:1/x");
        assert_eq!(
            NbdUri::parse("nbd://h:1/x").unwrap().connections(),
            DEFAULT_CONNECTIONS
        );
        let unix = NbdUri::parse("nbd+unix:///x?socket=/s&connections=1").unwrap();
        assert_eq!(unix.connections(), 1);
        for bad in ["0", "17", "-1", "two", ""] {
            let uri = format!("nbd://h/x?connections={bad}");
            assert!(NbdUri::parse(&uri).is_err(), "{uri}");
        }
    }

    #[test]
    fn bad_uris_are_refused() {
        for bad in [
            "http://h/x",
            "nbd://",
            "nbd://:1/x",
            "nbd://h:0/x",
            "nbd://h:99999/x",
        ] {
            assert!(NbdUri::parse(bad).is_err(), "{bad}");
        }
        assert!(is_nbd_uri(Path::new("nbd://h/x")));
        assert!(!is_nbd_uri(Path::new("/tmp/nbd://x")));
        assert!(!is_nbd_uri(Path::new("nbd:x")));
        // Red team: a mistyped scheme is a bad URI, not a file "nbdx:/h/x".
        for typo in ["nbdx://h/x", "http://h/x", "NBD://h/x"] {
            assert!(is_nbd_uri(Path::new(typo)), "{typo}");
            assert!(NbdUri::from_path(Path::new(typo)).is_err(), "{typo}");
        }
    }
}
