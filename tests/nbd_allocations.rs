//! Heap allocations per NBD request, counted (issue 10).
//!
//! A counting global allocator (this test binary only, so no other test
//! pays for it or shares its counter) wraps the system allocator. The server
//! runs on a current-thread runtime over an in-memory device and a Unix
//! socket; a blocking client on its own thread pipelines 4 KiB reads and
//! writes, 32 at a time, and counts the allocations the process made while
//! it was served. The client allocates nothing in that window (its buffers
//! are made before), so the count is the server's: the NBD layer's own plus
//! the device's future (in the future pool: none in steady state).
//! The device is RAM behind a lock, so nothing else allocates.
//!
//! ```text
//!  client thread ─ 32 requests (one write) ─► Unix socket ─► NbdServer
//!        ▲ counter read before and after             │ MemDevice
//!        └──────────── 32 replies ◄──────────────────┘
//! ```

use std::alloc::{GlobalAlloc, Layout, System};
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use std::sync::Mutex;

use vraid::block::{BlockDevice, BoxFuture, Durability, IoFuture};
use vraid::export::nbd::proto::{self, Command, Request};
use vraid::export::nbd::{Export, NbdServer};
use vraid::units::ByteOffset;

/// Counts every allocation (and reallocation) of the process.
struct Counting;

static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);

// SAFETY: every method hands its arguments unchanged to `System`, which
// upholds the `GlobalAlloc` contract; the counter has no effect on memory.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: the caller's contract for `alloc` is passed on as is.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: as for `alloc`.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from `System` through this allocator.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: as for `dealloc`; the new size is the caller's.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

const BLOCK: usize = 4096;
const DEPTH: usize = 32;
const WARMUP_BATCHES: usize = 50;
const BATCHES: usize = 300;
/// Most allocations a 4 KiB READ or WRITE may cost the NBD layer and the
/// in-memory device together: none in steady state since the requests in
/// flight live in reused slots (session 14; before: 1, the request's
/// `FuturesUnordered` node; 2 before the future pool, session 13). A
/// tenth over 0 leaves room for nothing per request, only for a rare
/// growth of a pool.
const MAX_PER_REQUEST: f64 = 0.1;

/// A blocking NBD client after `NBD_OPT_EXPORT_NAME` (simple replies).
struct Client {
    s: UnixStream,
    requests: Vec<u8>,
    replies: Vec<u8>,
}

impl Client {
    fn connect(path: &std::path::Path) -> Client {
        let mut s = UnixStream::connect(path).unwrap();
        let mut greeting = [0u8; 18];
        s.read_exact(&mut greeting).unwrap();
        let flags = proto::FLAG_C_FIXED_NEWSTYLE | proto::FLAG_C_NO_ZEROES;
        s.write_all(&flags.to_be_bytes()).unwrap();
        let mut opt = Vec::new();
        opt.extend_from_slice(&proto::IHAVEOPT.to_be_bytes());
        opt.extend_from_slice(&proto::OPT_EXPORT_NAME.to_be_bytes());
        opt.extend_from_slice(&1u32.to_be_bytes());
        opt.push(b'a');
        s.write_all(&opt).unwrap();
        let mut size_flags = [0u8; 10];
        s.read_exact(&mut size_flags).unwrap();
        Client {
            s,
            requests: Vec::with_capacity(DEPTH * (proto::REQUEST_LEN + BLOCK)),
            replies: vec![0u8; DEPTH * (proto::SIMPLE_REPLY_LEN + BLOCK)],
        }
    }

    /// Encodes one batch of `DEPTH` requests of `command` (before counting).
    fn prepare(&mut self, command: Command) {
        self.requests.clear();
        for k in 0..DEPTH {
            let r = Request {
                flags: 0,
                command,
                cookie: k as u64,
                offset: (k * BLOCK) as u64,
                length: BLOCK as u32,
            };
            self.requests.extend_from_slice(&proto::encode_request(&r));
            if command == Command::Write {
                self.requests.extend(std::iter::repeat_n(k as u8, BLOCK));
            }
        }
    }

    /// Sends the prepared batch and reads its replies; allocates nothing.
    fn run_batch(&mut self, command: Command) {
        self.s.write_all(&self.requests).unwrap();
        let data = if command == Command::Read { BLOCK } else { 0 };
        for _ in 0..DEPTH {
            let reply = &mut self.replies[..proto::SIMPLE_REPLY_LEN + data];
            let (head, body) = reply.split_at_mut(proto::SIMPLE_REPLY_LEN);
            self.s.read_exact(head).unwrap();
            assert_eq!(&head[..4], &proto::SIMPLE_REPLY_MAGIC.to_be_bytes());
            assert_eq!(&head[4..8], &[0; 4], "request failed");
            self.s.read_exact(body).unwrap();
        }
    }

    /// Allocations per request over `BATCHES` batches after a warm-up.
    fn allocations_per_request(&mut self, command: Command) -> f64 {
        self.prepare(command);
        for _ in 0..WARMUP_BATCHES {
            self.run_batch(command);
        }
        let before = ALLOCATIONS.load(Ordering::SeqCst);
        for _ in 0..BATCHES {
            self.run_batch(command);
        }
        let after = ALLOCATIONS.load(Ordering::SeqCst);
        (after - before) as f64 / (BATCHES * DEPTH) as f64
    }
}

/// RAM behind a lock: the least a device can cost (one pooled future per
/// call, as the trait demands). `member::memory` is for unit tests only.
struct Ram(Mutex<Vec<u8>>);

impl Ram {
    fn range(at: ByteOffset, len: usize) -> std::ops::Range<usize> {
        at.get() as usize..at.get() as usize + len
    }
}

impl BlockDevice for Ram {
    fn name(&self) -> &str {
        "ram"
    }

    fn size(&self) -> u64 {
        self.0.lock().unwrap().len() as u64
    }

    fn read<'a>(&'a self, offset: ByteOffset, buf: &'a mut [u8]) -> IoFuture<'a> {
        BoxFuture::new(async move {
            buf.copy_from_slice(&self.0.lock().unwrap()[Ram::range(offset, buf.len())]);
            Ok(())
        })
    }

    fn write<'a>(&'a self, offset: ByteOffset, buf: &'a [u8], _: Durability) -> IoFuture<'a> {
        BoxFuture::new(async move {
            self.0.lock().unwrap()[Ram::range(offset, buf.len())].copy_from_slice(buf);
            Ok(())
        })
    }

    fn flush(&self) -> IoFuture<'_> {
        BoxFuture::new(async { Ok(()) })
    }

    fn discard(&self, offset: ByteOffset, len: u64) -> IoFuture<'_> {
        self.write_zeroes(offset, len, true)
    }

    fn write_zeroes(&self, offset: ByteOffset, len: u64, _: bool) -> IoFuture<'_> {
        BoxFuture::new(async move {
            self.0.lock().unwrap()[Ram::range(offset, len as usize)].fill(0);
            Ok(())
        })
    }
}

#[test]
fn nbd_reads_and_writes_of_4k_allocate_nothing_in_steady_state() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("nbd.sock");
    let device = Arc::new(Ram(Mutex::new(vec![0; 1 << 20])));
    let export = Export {
        name: "a".to_string(),
        description: String::new(),
        device: device as Arc<dyn BlockDevice>,
        read_only: false,
        preferred_block: 4096,
        multi_conn: true,
        contexts: Default::default(),
    };
    let server = Arc::new(NbdServer::new(vec![export]));
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let listener = rt.block_on(async { tokio::net::UnixListener::bind(&path).unwrap() });
    rt.spawn(server.clone().serve_unix(listener));

    let client = std::thread::spawn(move || {
        let mut c = Client::connect(&path);
        let writes = c.allocations_per_request(Command::Write);
        let reads = c.allocations_per_request(Command::Read);
        (reads, writes)
    });
    let (reads, writes) = rt.block_on(async {
        tokio::task::spawn_blocking(move || client.join().unwrap())
            .await
            .unwrap()
    });
    server.shutdown();

    println!("allocations per 4 KiB request: read {reads:.2}, write {writes:.2}");
    assert!(
        reads <= MAX_PER_REQUEST && writes <= MAX_PER_REQUEST,
        "allocations per 4 KiB request: read {reads:.2}, write {writes:.2} (at most {MAX_PER_REQUEST})"
    );
}
