//! Malformed and hostile NBD traffic against the real server, each case
//! while a second, well-behaved client (qemu-io) keeps working.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::time::Duration;

use raid_tests::*;

const IHAVEOPT: u64 = 0x4948_4156_454f_5054;
const OPT_REPLY_MAGIC: u64 = 0x0003_e889_0455_65a9;
const REQ_MAGIC: u32 = 0x2560_9513;
const SIMPLE_REPLY_MAGIC: u32 = 0x6744_6698;
const OPT_GO: u32 = 7;
const REP_ACK: u32 = 1;
const REP_ERR_UNSUP: u32 = 0x8000_0001;
const CMD_READ: u16 = 0;
const CMD_WRITE: u16 = 1;

/// A hand-rolled client that speaks just enough NBD to misbehave precisely.
struct RawClient {
    s: TcpStream,
}

impl RawClient {
    fn handshake(addr: SocketAddr) -> RawClient {
        let mut s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut hello = [0u8; 18];
        s.read_exact(&mut hello).unwrap();
        assert_eq!(&hello[..8], b"NBDMAGIC");
        assert_eq!(
            u64::from_be_bytes(hello[8..16].try_into().unwrap()),
            IHAVEOPT
        );
        // FIXED_NEWSTYLE | NO_ZEROES
        s.write_all(&3u32.to_be_bytes()).unwrap();
        RawClient { s }
    }

    fn send_option(&mut self, opt: u32, payload: &[u8]) {
        let mut m = Vec::new();
        m.extend_from_slice(&IHAVEOPT.to_be_bytes());
        m.extend_from_slice(&opt.to_be_bytes());
        m.extend_from_slice(&(payload.len() as u32).to_be_bytes());
        m.extend_from_slice(payload);
        self.s.write_all(&m).unwrap();
    }

    /// Reads one option reply: (option, reply type, payload).
    fn option_reply(&mut self) -> (u32, u32, Vec<u8>) {
        let mut h = [0u8; 20];
        self.s.read_exact(&mut h).unwrap();
        assert_eq!(
            u64::from_be_bytes(h[..8].try_into().unwrap()),
            OPT_REPLY_MAGIC
        );
        let opt = u32::from_be_bytes(h[8..12].try_into().unwrap());
        let ty = u32::from_be_bytes(h[12..16].try_into().unwrap());
        let len = u32::from_be_bytes(h[16..20].try_into().unwrap()) as usize;
        let mut p = vec![0u8; len];
        self.s.read_exact(&mut p).unwrap();
        (opt, ty, p)
    }

    /// NBD_OPT_GO for `name`; returns the export size.
    fn go(&mut self, name: &str) -> u64 {
        let mut p = Vec::new();
        p.extend_from_slice(&(name.len() as u32).to_be_bytes());
        p.extend_from_slice(name.as_bytes());
        p.extend_from_slice(&0u16.to_be_bytes());
        self.send_option(OPT_GO, &p);
        let mut size = 0;
        loop {
            let (opt, ty, payload) = self.option_reply();
            assert_eq!(opt, OPT_GO);
            if ty == REP_ACK {
                return size;
            }
            assert_eq!(ty, 3, "expected NBD_REP_INFO, got {ty:#x}");
            if u16::from_be_bytes(payload[..2].try_into().unwrap()) == 0 {
                size = u64::from_be_bytes(payload[2..10].try_into().unwrap());
            }
        }
    }

    fn request(&mut self, ty: u16, cookie: u64, offset: u64, len: u32, data: &[u8]) {
        let mut m = Vec::new();
        m.extend_from_slice(&REQ_MAGIC.to_be_bytes());
        m.extend_from_slice(&0u16.to_be_bytes());
        m.extend_from_slice(&ty.to_be_bytes());
        m.extend_from_slice(&cookie.to_be_bytes());
        m.extend_from_slice(&offset.to_be_bytes());
        m.extend_from_slice(&len.to_be_bytes());
        m.extend_from_slice(data);
        self.s.write_all(&m).unwrap();
    }

    /// Reads a simple reply: (error, cookie), and `data_len` payload bytes on success.
    fn simple_reply(&mut self, data_len: usize) -> (u32, u64, Vec<u8>) {
        let mut h = [0u8; 16];
        self.s.read_exact(&mut h).unwrap();
        assert_eq!(
            u32::from_be_bytes(h[..4].try_into().unwrap()),
            SIMPLE_REPLY_MAGIC
        );
        let err = u32::from_be_bytes(h[4..8].try_into().unwrap());
        let cookie = u64::from_be_bytes(h[8..16].try_into().unwrap());
        let mut data = vec![0u8; if err == 0 { data_len } else { 0 }];
        self.s.read_exact(&mut data).unwrap();
        (err, cookie, data)
    }

    /// True once the server has closed the connection.
    fn closed_by_server(&mut self) -> bool {
        let mut b = [0u8; 1];
        matches!(self.s.read(&mut b), Ok(0) | Err(_))
    }
}

fn serve_raid5(test: &str) -> (tempfile::TempDir, Server) {
    let dir = scratch_dir(test);
    let paths = member_paths(dir.path(), 3);
    create_array(5, "64K", "16M", "vol0", &paths);
    let args: Vec<&str> = paths.iter().map(|p| p.to_str().unwrap()).collect();
    let server = Server::start(&args);
    qemu_io(&server.uri("vol0"), &["write -P 0x77 0 1M".into()]);
    (dir, server)
}

fn second_client_still_works(server: &Server) {
    qemu_io(
        &server.uri("vol0"),
        &["read -P 0x77 0 1M".into(), "write -P 0x77 4096 4096".into()],
    );
}

#[test]
fn out_of_range_read_gets_einval_and_connection_stays_usable() {
    // Arrange
    let (_dir, server) = serve_raid5("oor");
    let mut c = RawClient::handshake(server.addr);
    let size = c.go("vol0");

    // Act
    c.request(CMD_READ, 1, size - 512, 1024, &[]);
    let (err, cookie, _) = c.simple_reply(1024);
    c.request(CMD_READ, 2, 0, 4096, &[]);
    let (err2, cookie2, data) = c.simple_reply(4096);

    // Assert
    assert_eq!((err, cookie), (22, 1), "EINVAL for a read past the end");
    assert_eq!((err2, cookie2), (0, 2));
    assert!(data.iter().all(|&b| b == 0x77));
    second_client_still_works(&server);
    assert_eq!(server.stop(), 0);
}

#[test]
fn out_of_range_write_gets_enospc_and_connection_stays_usable() {
    // Arrange
    let (_dir, server) = serve_raid5("oor-write");
    let mut c = RawClient::handshake(server.addr);
    let size = c.go("vol0");

    // Act
    c.request(CMD_WRITE, 9, size - 100, 200, &[1u8; 200]);
    let (err, cookie, _) = c.simple_reply(0);
    c.request(CMD_READ, 10, 0, 512, &[]);
    let (err2, _, _) = c.simple_reply(512);

    // Assert
    assert_eq!((err, cookie), (28, 9), "ENOSPC for a write past the end");
    assert_eq!(err2, 0);
    second_client_still_works(&server);
    assert_eq!(server.stop(), 0);
}

#[test]
fn unknown_option_gets_err_unsup_and_handshake_continues() {
    // Arrange
    let (_dir, server) = serve_raid5("unknown-opt");
    let mut c = RawClient::handshake(server.addr);

    // Act
    c.send_option(0x4242, b"whatever");
    let (opt, ty, _) = c.option_reply();
    let size = c.go("vol0");
    c.request(CMD_READ, 3, 0, 512, &[]);
    let (err, _, data) = c.simple_reply(512);

    // Assert
    assert_eq!((opt, ty), (0x4242, REP_ERR_UNSUP));
    assert!(size > 0);
    assert_eq!(err, 0);
    assert!(data.iter().all(|&b| b == 0x77));
    second_client_still_works(&server);
    assert_eq!(server.stop(), 0);
}

#[test]
fn bad_request_magic_closes_only_that_connection() {
    // Arrange
    let (_dir, server) = serve_raid5("bad-magic");
    let mut c = RawClient::handshake(server.addr);
    c.go("vol0");

    // Act
    c.s.write_all(&[0xde; 28]).unwrap();

    // Assert
    assert!(c.closed_by_server());
    second_client_still_works(&server);
    assert_eq!(server.stop(), 0);
}

#[test]
fn overlong_read_is_refused_and_connection_stays_usable() {
    // Arrange
    let (_dir, server) = serve_raid5("overlong");
    let mut c = RawClient::handshake(server.addr);
    c.go("vol0");

    // Act: 1 GiB read, far above the advertised maximum block size.
    c.request(CMD_READ, 4, 0, 1 << 30, &[]);
    let (err, cookie, _) = c.simple_reply(0);
    c.request(CMD_READ, 5, 0, 512, &[]);
    let (err2, _, _) = c.simple_reply(512);

    // Assert
    assert_ne!(err, 0, "over-long read must fail");
    assert_eq!(cookie, 4);
    assert_eq!(err2, 0);
    second_client_still_works(&server);
    assert_eq!(server.stop(), 0);
}

#[test]
fn client_vanishing_mid_write_leaves_server_serving() {
    // Arrange
    let (_dir, server) = serve_raid5("vanish");

    // Act: announce 1 MiB writes, send half the payload, hang up; repeat.
    for i in 0..20 {
        let mut c = RawClient::handshake(server.addr);
        c.go("vol0");
        c.request(CMD_WRITE, i, 2 << 20, 1 << 20, &vec![0xee; 512 << 10]);
        c.s.shutdown(Shutdown::Both).unwrap();
    }
    // And garbage before the handshake completes.
    for _ in 0..5 {
        let mut s = TcpStream::connect(server.addr).unwrap();
        let _ = s.write_all(b"GET / HTTP/1.1\r\n\r\n");
    }

    // Assert: a half-sent write never lands partially, others keep working.
    qemu_io(&server.uri("vol0"), &["read -P 0 2M 1M".into()]);
    second_client_still_works(&server);
    assert_eq!(server.stop(), 0, "clean shutdown after abrupt clients");
}

#[test]
fn unknown_export_is_refused_and_handshake_continues() {
    // Arrange
    let (_dir, server) = serve_raid5("unknown-export");
    let mut c = RawClient::handshake(server.addr);

    // Act
    let mut p = Vec::new();
    p.extend_from_slice(&4u32.to_be_bytes());
    p.extend_from_slice(b"nope");
    p.extend_from_slice(&0u16.to_be_bytes());
    c.send_option(OPT_GO, &p);
    let (_, ty, _) = c.option_reply();
    let size = c.go("vol0");

    // Assert
    assert_eq!(ty, 0x8000_0006, "NBD_REP_ERR_UNKNOWN");
    assert!(size > 0);
    second_client_still_works(&server);
    assert_eq!(server.stop(), 0);
}
