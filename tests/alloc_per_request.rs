//! Heap allocations per request on the engine's data path (issue 10).
//!
//! A counting global allocator (this test binary only) counts every
//! allocation made by any thread (the test's runtime and the io_uring
//! thread) while a [`Volume`] over real file members (on tmpfs when there
//! is one, O_DIRECT, real io_uring) serves `N` requests after a warm-up.
//! Each case asserts the count it achieves today, so a change that adds
//! allocations to a request fails here; a change that removes some lowers
//! the bound in `CASES`.
//!
//! Two stacks ([`Stack`]): the bare one (a window per member, the volume)
//! and the one the daemon builds (`daemon::bringup`, `daemon::serve`):
//!
//! ```text
//!  FencedDevice ─► StatsDevice ─► QosDevice ─► VolumeFaultDevice ─►
//!  LogDevice ─► WriteCache ─► Volume ─► per member: StatsDevice ─►
//!  ChecksumDevice (block checksums on, the default) ─► FaultDevice ─►
//!  Window ─► FileMember (io_uring)
//! ```
//!
//! Not included: the export (NBD: `tests/nbd_allocations.rs`; vhost-user).
//!
//! One `#[test]` runs every case in turn: the counter is process-wide, and
//! tests running in parallel would count each other.

use std::alloc::{GlobalAlloc, Layout, System};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use vraid::block::{BlockDevice, BlockError, BoxFuture, Durability, Window};
use vraid::export::fence::{Fence, FencedDevice};
use vraid::integrity::Checksums;
use vraid::member::fault::{FaultDevice, FaultSet};
use vraid::member::{create_sparse, open_member, EngineKind, MemberOptions};
use vraid::metrics::stats::{IoStats, StatsDevice};
use vraid::raid::{ChunkSize, Geometry, Level, MemberIndex, MemberState, Volume, VolumeEvents};
use vraid::units::ByteOffset;
use vraid::volfault::ClientStack;

/// Counts allocations while `COUNTING` is set.
struct Counting;

static COUNTING: AtomicBool = AtomicBool::new(false);
static ALLOCS: AtomicU64 = AtomicU64::new(0);

// SAFETY: every call is forwarded unchanged to `System`; the counter has
// no effect on the memory handed out.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if COUNTING.load(Ordering::Relaxed) {
            ALLOCS.fetch_add(1, Ordering::Relaxed);
            trace(layout);
        }
        // SAFETY: the caller's contract, passed on.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if COUNTING.load(Ordering::Relaxed) {
            ALLOCS.fetch_add(1, Ordering::Relaxed);
        }
        // SAFETY: the caller's contract, passed on.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if COUNTING.load(Ordering::Relaxed) {
            ALLOCS.fetch_add(1, Ordering::Relaxed);
        }
        // SAFETY: the caller's contract, passed on.
        unsafe { System.realloc(ptr, layout, new_size) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: the caller's contract, passed on.
        unsafe { System.dealloc(ptr, layout) }
    }
}

/// Allocations left to print a backtrace of (`ALLOC_TRACE=N`, to find
/// where a count comes from; off by default).
static TRACE_LEFT: AtomicU64 = AtomicU64::new(0);

thread_local! {
    static IN_TRACE: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

fn trace(layout: Layout) {
    if TRACE_LEFT.load(Ordering::Relaxed) == 0 || IN_TRACE.with(|t| t.replace(true)) {
        return;
    }
    let take = TRACE_LEFT.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1));
    if take.is_ok() {
        let bt = std::backtrace::Backtrace::force_capture();
        eprintln!("allocation of {} bytes:\n{bt}", layout.size());
    }
    IN_TRACE.with(|t| t.set(false));
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Requests counted per case, after as many of warm-up.
const N: u64 = 2000;
const MEMBERS: usize = 4;
const MEMBER_SIZE: u64 = 64 << 20;
/// The data area of a member; its block checksums lie after it.
const DATA_SIZE: u64 = 56 << 20;

/// Which layers serve the requests.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Stack {
    /// A window per member, the volume.
    Bare,
    /// What the daemon stacks (module doc).
    Daemon,
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Kind {
    Read,
    Write,
}

/// A level, a request, its size, and the most allocations per request it
/// may make (what the engine achieves today) through each [`Stack`]:
/// `[bare, daemon]`.
struct Case {
    level: Level,
    kind: Kind,
    len: usize,
    max_per_request: [f64; 2],
}

const CASES: &[Case] = &[
    Case {
        level: Level::Raid0,
        kind: Kind::Read,
        len: 4096,
        max_per_request: [0.0, 0.0],
    },
    Case {
        level: Level::Raid0,
        kind: Kind::Write,
        len: 4096,
        max_per_request: [0.0, 0.0],
    },
    Case {
        level: Level::Raid1,
        kind: Kind::Read,
        len: 4096,
        max_per_request: [0.0, 0.0],
    },
    Case {
        level: Level::Raid1,
        kind: Kind::Write,
        len: 4096,
        max_per_request: [0.0, 0.0],
    },
    Case {
        level: Level::Raid5,
        kind: Kind::Read,
        len: 4096,
        max_per_request: [0.0, 0.0],
    },
    Case {
        level: Level::Raid5,
        kind: Kind::Write,
        len: 4096,
        // The buffer of old parity and old data (session 14; was 4 and 6).
        max_per_request: [1.0, 1.0],
    },
    Case {
        level: Level::Raid0,
        kind: Kind::Read,
        len: 65536,
        max_per_request: [0.0, 0.0],
    },
];

struct NoEvents;

impl VolumeEvents for NoEvents {
    fn member_failed(
        &self,
        _member: MemberIndex,
        _error: &BlockError,
        _states: &[MemberState],
    ) -> BoxFuture<'_, ()> {
        BoxFuture::new(async {})
    }
}

fn scratch() -> tempfile::TempDir {
    let shm = Path::new("/dev/shm");
    if shm.is_dir() {
        if let Ok(dir) = tempfile::tempdir_in(shm) {
            return dir;
        }
    }
    tempfile::tempdir().expect("temp dir")
}

/// Member `i` of the volume: its data window, behind the daemon's member
/// layers for [`Stack::Daemon`].
fn member(
    dir: &Path,
    level: Level,
    i: usize,
    stack: Stack,
    csums: &Checksums,
) -> Arc<dyn BlockDevice> {
    let opts = MemberOptions {
        engine: EngineKind::Uring,
        ..MemberOptions::default()
    };
    let path = dir.join(format!("{level:?}-{stack:?}-{i}"));
    create_sparse(&path, MEMBER_SIZE).expect("member file");
    let file: Arc<dyn BlockDevice> = open_member(&path, &opts).expect("open member");
    let window: Arc<dyn BlockDevice> =
        Arc::new(Window::new(file.clone(), 0, DATA_SIZE).expect("window"));
    if stack == Stack::Bare {
        return window;
    }
    let faulty = Arc::new(FaultDevice::new(
        window,
        Arc::new(FaultSet::new()),
        i as u64,
    ));
    let trusted = Arc::new(|_| true);
    let errors = Arc::new(AtomicU64::new(0));
    let checked = csums.wrap(i, file, DATA_SIZE, faulty, true, trusted, errors);
    Arc::new(StatsDevice::new(checked, IoStats::new()))
}

/// A volume over `MEMBERS` real files on the io_uring engine, behind the
/// layers of `stack`.
fn volume(dir: &Path, level: Level, stack: Stack) -> Arc<dyn BlockDevice> {
    let csums = Checksums::new();
    let members = (0..MEMBERS)
        .map(|i| Some(member(dir, level, i, stack, &csums)))
        .collect();
    let chunk = ChunkSize::new(64 << 10).expect("chunk");
    let geometry = Geometry::new(level, MEMBERS, chunk, DATA_SIZE).expect("geometry");
    let vol = Volume::new(format!("{level:?}"), geometry, members, Arc::new(NoEvents));
    let vol: Arc<dyn BlockDevice> = Arc::new(vol.expect("volume"));
    if stack == Stack::Bare {
        return vol;
    }
    let client = ClientStack::new(vol).device;
    let counted = Arc::new(StatsDevice::new(client, IoStats::new()));
    Arc::new(FencedDevice::new(counted, Fence::new()))
}

/// A small deterministic generator of request offsets.
struct Offsets(u64);

impl Offsets {
    fn next(&mut self, size: u64, len: usize) -> ByteOffset {
        self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1);
        let slots = size / len as u64;
        ByteOffset((self.0 >> 17) % slots * len as u64)
    }
}

async fn run(
    vol: &dyn BlockDevice,
    case: &Case,
    offsets: &mut Offsets,
    count: u64,
    buf: &mut [u8],
) {
    for _ in 0..count {
        let at = offsets.next(vol.size(), case.len);
        match case.kind {
            Kind::Read => vol.read(at, buf).await.expect("read"),
            Kind::Write => vol.write(at, buf, Durability::Normal).await.expect("write"),
        }
    }
}

/// Allocations per request of `case` through `stack`, after a warm-up.
async fn measure(dir: &Path, case: &Case, stack: Stack) -> f64 {
    let vol = volume(dir, case.level, stack);
    let vol = &*vol;
    let mut buf = vec![0x5a_u8; case.len];
    let mut offsets = Offsets(7);
    // Warm-up: every member written where the reads will go, pools and
    // tables grown to their steady size.
    run(vol, case, &mut offsets, N, &mut buf).await;
    ALLOCS.store(0, Ordering::SeqCst);
    let traces = std::env::var("ALLOC_TRACE")
        .ok()
        .and_then(|n| n.parse().ok());
    TRACE_LEFT.store(traces.unwrap_or(0), Ordering::SeqCst);
    COUNTING.store(true, Ordering::SeqCst);
    run(vol, case, &mut offsets, N, &mut buf).await;
    COUNTING.store(false, Ordering::SeqCst);
    TRACE_LEFT.store(0, Ordering::SeqCst);
    let pool = vraid::future_pool::stats();
    println!(
        "  future pool since start: {} futures boxed, {} blocks from the heap",
        pool.boxed_futures, pool.heap_blocks
    );
    ALLOCS.load(Ordering::SeqCst) as f64 / N as f64
}

#[test]
fn allocations_per_request_stay_at_what_the_engine_achieves() {
    let dir = scratch();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let mut over = Vec::new();
    for (s, stack) in [Stack::Bare, Stack::Daemon].into_iter().enumerate() {
        for case in CASES {
            let per_request = rt.block_on(measure(dir.path(), case, stack));
            let name = format!("{stack:?} {:?} {:?} {}", case.level, case.kind, case.len);
            println!("allocations per request: {name}: {per_request:.2}");
            // A few allocations over the run (tables growing, the
            // runtime's own bookkeeping) are not per-request costs.
            let max = case.max_per_request[s];
            if per_request > max + 0.01 {
                over.push(format!("{name}: {per_request:.2} > {max}"));
            }
        }
    }
    assert!(
        over.is_empty(),
        "more allocations per request than before: {over:?}"
    );
}
