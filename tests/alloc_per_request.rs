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
//! One `#[test]` runs every case in turn: the counter is process-wide, and
//! tests running in parallel would count each other.

use std::alloc::{GlobalAlloc, Layout, System};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use vraid::block::{BlockDevice, BlockError, BoxFuture, Durability, Window};
use vraid::member::{create_sparse, open_member, EngineKind, MemberOptions};
use vraid::raid::{ChunkSize, Geometry, Level, MemberIndex, MemberState, Volume, VolumeEvents};
use vraid::units::ByteOffset;

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

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Requests counted per case, after as many of warm-up.
const N: u64 = 2000;
const MEMBERS: usize = 4;
const MEMBER_SIZE: u64 = 64 << 20;

#[derive(Clone, Copy, Debug, PartialEq)]
enum Kind {
    Read,
    Write,
}

/// A level, a request, its size, and the most allocations per request it
/// may make (what the engine achieves today).
struct Case {
    level: Level,
    kind: Kind,
    len: usize,
    max_per_request: f64,
}

const CASES: &[Case] = &[
    Case {
        level: Level::Raid0,
        kind: Kind::Read,
        len: 4096,
        max_per_request: 2.0,
    },
    Case {
        level: Level::Raid0,
        kind: Kind::Write,
        len: 4096,
        max_per_request: 2.0,
    },
    Case {
        level: Level::Raid1,
        kind: Kind::Read,
        len: 4096,
        max_per_request: 2.0,
    },
    Case {
        level: Level::Raid1,
        kind: Kind::Write,
        len: 4096,
        max_per_request: 5.0,
    },
    Case {
        level: Level::Raid5,
        kind: Kind::Read,
        len: 4096,
        max_per_request: 2.0,
    },
    Case {
        level: Level::Raid5,
        kind: Kind::Write,
        len: 4096,
        max_per_request: 11.0,
    },
    Case {
        level: Level::Raid0,
        kind: Kind::Read,
        len: 65536,
        max_per_request: 2.0,
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
        Box::pin(async {})
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

/// A volume over `MEMBERS` real files, each behind a window (as the
/// daemon stacks them), on the io_uring engine.
fn volume(dir: &Path, level: Level) -> Volume {
    let opts = MemberOptions {
        engine: EngineKind::Uring,
        ..MemberOptions::default()
    };
    let members = (0..MEMBERS)
        .map(|i| {
            let path = dir.join(format!("{level:?}-{i}"));
            create_sparse(&path, MEMBER_SIZE).expect("member file");
            let file: Arc<dyn BlockDevice> = open_member(&path, &opts).expect("open member");
            let window: Arc<dyn BlockDevice> =
                Arc::new(Window::new(file, 0, MEMBER_SIZE).expect("window"));
            Some(window)
        })
        .collect();
    let chunk = ChunkSize::new(64 << 10).expect("chunk");
    let geometry = Geometry::new(level, MEMBERS, chunk, MEMBER_SIZE).expect("geometry");
    Volume::new(format!("{level:?}"), geometry, members, Arc::new(NoEvents)).expect("volume")
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

async fn run(vol: &Volume, case: &Case, offsets: &mut Offsets, count: u64, buf: &mut [u8]) {
    for _ in 0..count {
        let at = offsets.next(vol.size(), case.len);
        match case.kind {
            Kind::Read => vol.read(at, buf).await.expect("read"),
            Kind::Write => vol.write(at, buf, Durability::Normal).await.expect("write"),
        }
    }
}

/// Allocations per request of `case`, after a warm-up.
async fn measure(dir: &Path, case: &Case) -> f64 {
    let vol = volume(dir, case.level);
    let mut buf = vec![0x5a_u8; case.len];
    let mut offsets = Offsets(7);
    // Warm-up: every member written where the reads will go, pools and
    // tables grown to their steady size.
    run(&vol, case, &mut offsets, N, &mut buf).await;
    ALLOCS.store(0, Ordering::SeqCst);
    COUNTING.store(true, Ordering::SeqCst);
    run(&vol, case, &mut offsets, N, &mut buf).await;
    COUNTING.store(false, Ordering::SeqCst);
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
    for case in CASES {
        let per_request = rt.block_on(measure(dir.path(), case));
        let name = format!("{:?} {:?} {}", case.level, case.kind, case.len);
        println!("allocations per request: {name}: {per_request:.2}");
        // A few allocations over the run (tables growing, the runtime's
        // own bookkeeping) are not per-request costs.
        if per_request > case.max_per_request + 0.05 {
            over.push(format!(
                "{name}: {per_request:.2} > {}",
                case.max_per_request
            ));
        }
    }
    assert!(
        over.is_empty(),
        "more allocations per request than before: {over:?}"
    );
}
