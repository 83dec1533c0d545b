//! Raw NBD clients for the export-bound tests (a hostile client cannot be a
//! stock tool): TCP connections from chosen 127/8 source addresses, the
//! fixed-newstyle handshake by hand, and a bounded qemu-io probe that shows
//! a normal client is still served.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpStream};
use std::os::fd::FromRawFd;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::{create_array, member_paths, run, Server};

/// A RAID-5 of four 64 MiB members (192 MiB volume) named vol0.
pub fn raid5_vol0(dir: &Path) -> Vec<PathBuf> {
    let members = member_paths(dir, 4);
    create_array(5, "64K", "64M", "vol0", &members);
    members
}

/// `vraid serve EXTRA... MEMBERS...`.
pub fn serve_members(members: &[PathBuf], extra: &[&str]) -> Server {
    let mut args: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
    args.extend(members.iter().map(|m| m.display().to_string()));
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    Server::start(&refs)
}

/// Opens a TCP connection to `to` from source address `from` (any address
/// of 127/8 is loopback), so an attack can come from many "clients".
pub fn connect_from(from: Ipv4Addr, to: SocketAddr) -> std::io::Result<TcpStream> {
    let SocketAddr::V4(to) = to else {
        panic!("IPv4 only")
    };
    let sin = |a: SocketAddrV4| libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: a.port().to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from(*a.ip()).to_be(),
        },
        sin_zero: [0; 8],
    };
    let len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
    // SAFETY: socket(2) takes no pointers; the result is checked.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `fd` is a socket we just created and own; nobody else has it.
    let stream = unsafe { TcpStream::from_raw_fd(fd) };
    let (src, dst) = (sin(SocketAddrV4::new(from, 0)), sin(to));
    // SAFETY: both addresses are live sockaddr_in values of `len` bytes.
    let ok = unsafe {
        libc::bind(fd, (&src as *const libc::sockaddr_in).cast(), len) == 0
            && libc::connect(fd, (&dst as *const libc::sockaddr_in).cast(), len) == 0
    };
    if !ok {
        return Err(std::io::Error::last_os_error());
    }
    Ok(stream)
}

/// Does the fixed-newstyle handshake with `NBD_OPT_EXPORT_NAME` (no zeroes)
/// and returns the export size.
pub fn nbd_handshake(s: &mut TcpStream, export: &str) -> u64 {
    let mut greeting = [0u8; 18];
    s.read_exact(&mut greeting).expect("greeting");
    assert_eq!(&greeting[..16], b"NBDMAGICIHAVEOPT");
    s.write_all(&3u32.to_be_bytes()).unwrap(); // FIXED_NEWSTYLE | NO_ZEROES
    let mut opt = b"IHAVEOPT".to_vec();
    opt.extend_from_slice(&1u32.to_be_bytes()); // NBD_OPT_EXPORT_NAME
    opt.extend_from_slice(&(export.len() as u32).to_be_bytes());
    opt.extend_from_slice(export.as_bytes());
    s.write_all(&opt).unwrap();
    let mut info = [0u8; 10];
    s.read_exact(&mut info).expect("export info");
    u64::from_be_bytes(info[..8].try_into().unwrap())
}

/// qemu-io reading 1 MiB, killed after `limit`: (finished in time, output).
pub fn qemu_io_read_within(uri: &str, limit: Duration) -> (bool, String) {
    let secs = limit.as_secs().to_string();
    let out = run(Command::new("timeout").args([
        secs.as_str(),
        "qemu-io",
        "-f",
        "raw",
        "-c",
        "read 0 1M",
        uri,
    ]));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (
        out.status.success() && text.contains("read 1048576/1048576"),
        text,
    )
}

/// Polls `cond` every 50 ms until it holds; panics with `what` after `limit`.
pub fn wait_until(what: &str, limit: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !cond() {
        assert!(Instant::now() < deadline, "{what} not within {limit:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}
