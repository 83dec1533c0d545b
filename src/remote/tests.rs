//! RemoteMember against vraid's own NBD server in this process (a memory
//! device behind it): every operation lands on the device, a request made
//! while the server is gone is sent again once it is back, and a server
//! gone longer than `member_timeout` fails the request.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use super::{RemoteMember, RemoteOptions};
use crate::block::{forward_to, BlockDevice, Durability, IoFuture};
use crate::export::nbd::proto::Command;
use crate::export::nbd::{Export, NbdServer};
use crate::member::memory::MemDevice;
use crate::units::ByteOffset;

const SIZE: u64 = 8 << 20;

/// The served device, counting the FUA writes that reach it.
struct FuaCount {
    inner: Arc<MemDevice>,
    fua: std::sync::atomic::AtomicU64,
}

impl BlockDevice for FuaCount {
    forward_to!(inner => name, size, read, flush, discard, write_zeroes);

    fn write<'a>(&'a self, offset: ByteOffset, buf: &'a [u8], d: Durability) -> IoFuture<'a> {
        if d == Durability::Fua {
            self.fua.fetch_add(1, Ordering::Relaxed);
        }
        self.inner.write(offset, buf, d)
    }
}

async fn serve(
    dev: Arc<dyn BlockDevice>,
    addr: &str,
) -> (Arc<NbdServer>, SocketAddr, JoinHandle<()>) {
    let export = Export {
        name: "m".into(),
        description: String::new(),
        device: dev,
        read_only: false,
        preferred_block: 4096,
        multi_conn: true,
        contexts: Default::default(),
    };
    let server = Arc::new(NbdServer::new(vec![export]));
    let listener = TcpListener::bind(addr).await.unwrap();
    let at = listener.local_addr().unwrap();
    let s = server.clone();
    let task = tokio::spawn(async move {
        let _ = s.serve_tcp(listener).await;
    });
    (server, at, task)
}

async fn open(addr: SocketAddr, timeout: Duration) -> Arc<RemoteMember> {
    let path = std::path::PathBuf::from(format!("nbd://{addr}/m"));
    let opts = RemoteOptions {
        member_timeout: timeout,
    };
    let m = tokio::task::spawn_blocking(move || RemoteMember::open(&path, opts, false))
        .await
        .unwrap()
        .unwrap();
    Arc::new(m)
}

async fn stop(server: Arc<NbdServer>, task: JoinHandle<()>) {
    server.shutdown();
    task.await.unwrap();
    server.wait_idle().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_operation_lands_on_the_served_device() {
    let dev = Arc::new(MemDevice::new("m", SIZE));
    let counted = Arc::new(FuaCount {
        inner: dev.clone(),
        fua: 0.into(),
    });
    let (_server, addr, _task) = serve(counted.clone(), "127.0.0.1:0").await;
    let m = open(addr, Duration::from_secs(5)).await;
    assert_eq!(m.size(), SIZE);

    m.write(ByteOffset(4096), &[7u8; 8192], Durability::Fua)
        .await
        .unwrap();
    m.write(ByteOffset(1 << 20), &[9u8; 3 << 20], Durability::Normal)
        .await
        .unwrap();
    m.flush().await.unwrap();
    m.write_zeroes(ByteOffset(8192), 4096, false).await.unwrap();
    m.discard(ByteOffset(2 << 20), 4096).await.unwrap();
    let mut back = vec![0u8; SIZE as usize];
    m.read(ByteOffset(0), &mut back).await.unwrap();

    let want = dev.snapshot();
    assert!(back == want);
    assert_eq!(&want[4096..8192], &[7u8; 4096][..]);
    assert_eq!(&want[8192..12288], &[0u8; 4096][..]);
    assert_eq!(want[(2 << 20) + 1], 0);
    assert_eq!(want[(2 << 20) + 4096], 9);
    assert_eq!(
        counted.fua.load(Ordering::Relaxed),
        1,
        "FUA reaches the device"
    );
    assert!(dev.flushes() >= 1, "FLUSH reaches the device");
    assert!(m.read(ByteOffset(SIZE), &mut [0u8; 1]).await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_made_while_the_server_is_gone_is_sent_again_when_it_is_back() {
    let dev = Arc::new(MemDevice::new("m", SIZE));
    let (server, addr, task) = serve(dev.clone() as Arc<dyn BlockDevice>, "127.0.0.1:0").await;
    let m = open(addr, Duration::from_secs(30)).await;
    stop(server, task).await;

    let writer = {
        let m = m.clone();
        tokio::spawn(async move { m.write(ByteOffset(0), &[5u8; 4096], Durability::Fua).await })
    };
    let (_server, _, _task) = serve(dev.clone() as Arc<dyn BlockDevice>, &addr.to_string()).await;
    writer.await.unwrap().unwrap();

    assert_eq!(&dev.snapshot()[..4096], &[5u8; 4096][..]);
    assert!(m.stats.reconnects.load(Ordering::Relaxed) >= 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_gone_longer_than_member_timeout_fails_the_request() {
    let dev = Arc::new(MemDevice::new("m", SIZE));
    let (server, addr, task) = serve(dev as Arc<dyn BlockDevice>, "127.0.0.1:0").await;
    let m = open(addr, Duration::from_millis(300)).await;
    stop(server, task).await;

    let err = m.read(ByteOffset(0), &mut [0u8; 4096]).await.unwrap_err();

    assert!(err.to_string().contains(&addr.to_string()), "{err}");
    assert_eq!(err.errno(), libc::EIO);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_writes_dropped_half_way_never_leave_half_a_request_on_the_wire() {
    // Arrange: 4 MiB writes go from the caller's buffer (conn::DIRECT_WRITE).
    let dev = Arc::new(MemDevice::new("m", SIZE));
    let (_server, addr, _task) = serve(dev.clone(), "127.0.0.1:0").await;
    let m = open(addr, Duration::from_secs(5)).await;
    const HALF: usize = 4 << 20;

    // Act: writes of 0..4 MiB given up at different moments, then whole
    // writes and reads on the same member.
    for i in 1..=24u8 {
        let data = vec![i; HALF];
        let wait = Duration::from_micros(40 * u64::from(i));
        let _ = tokio::time::timeout(wait, m.write(ByteOffset(0), &data, Durability::Normal)).await;
    }
    m.write(ByteOffset(HALF as u64), &[0xEE; HALF], Durability::Normal)
        .await
        .unwrap();
    let mut back = vec![0u8; SIZE as usize];
    m.read(ByteOffset(0), &mut back).await.unwrap();
    m.read(ByteOffset(0), &mut back).await.unwrap();

    // Assert: each block holds one write's bytes (never a request header
    // or the start of the next request read as payload), the whole write
    // landed, and the reads (reused reply buffers) match the device.
    for block in back[..HALF].chunks(4096) {
        assert!(
            block.iter().all(|&b| b == block[0] && b <= 24),
            "mixed block"
        );
    }
    assert!(back[HALF..].iter().all(|&b| b == 0xEE));
    assert!(back == dev.snapshot());
}

/// A connection whose server reads nothing (4 KiB of pipe, then writes
/// wait forever).
fn stuck_conn() -> (super::conn::Conn, tokio::io::DuplexStream) {
    let (ours, theirs) = tokio::io::duplex(4096);
    let (r, w) = tokio::io::split(ours);
    let info = super::handshake::Negotiated {
        size: 1 << 30,
        flags: 0,
        sizes: super::reply::BlockSizes::default(),
        structured: true,
    };
    (super::conn::Conn::start(r, w, info), theirs)
}

#[tokio::test]
async fn a_large_write_given_up_half_way_closes_its_connection() {
    // Arrange
    let (conn, _server) = stuck_conn();
    let payload = vec![1u8; 1 << 20];

    // Act: the caller writes from its buffer and gives up mid-payload.
    let call = conn.call(Command::Write, 0, 0, 1 << 20, &payload);
    let gave_up = tokio::time::timeout(Duration::from_millis(50), call).await;

    // Assert: half a request is on the wire: nothing may follow it.
    assert!(gave_up.is_err());
    assert!(conn.is_closed());
}

#[tokio::test]
async fn a_large_write_given_up_before_it_was_sent_is_forgotten() {
    // Arrange: a small request holds the socket (the writer task is
    // stuck in it).
    let (conn, _server) = stuck_conn();
    let small = conn.call(Command::Write, 0, 0, 8192, &[2u8; 8192]);
    assert!(tokio::time::timeout(Duration::from_millis(20), small)
        .await
        .is_err());

    // Act: a large write waits for the socket and is given up.
    let payload = vec![1u8; 1 << 20];
    let call = conn.call(Command::Write, 0, 0, 1 << 20, &payload);
    let gave_up = tokio::time::timeout(Duration::from_millis(50), call).await;

    // Assert: nothing of it was sent; only the small one is in flight.
    assert!(gave_up.is_err());
    assert!(!conn.is_closed());
    assert_eq!(conn.in_flight(), Some(1));
}
