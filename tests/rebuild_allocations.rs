//! Buffer allocations of a RAID-5/6 rebuild pass (issue 13).
//!
//! A counting global allocator (this test binary only) counts the
//! allocations of 64 KiB or more (step and source buffers; the small
//! bookkeeping of a step is not counted) made by any thread while a
//! [`Volume`] over real sparse files (io_uring, O_DIRECT) rebuilds one
//! member (RAID-5) or two at once (RAID-6) onto new real files.
//!
//! A pass keeps its buffers from step to step: at most `DEPTH` (16) steps
//! are in flight, each with one buffer per rebuilt member and one per
//! source member (RAID-6: and a recovery scratch), and the members'
//! aligned-buffer pool (`member::buf`) fills to what its reads have in
//! flight, so the count is bounded by `2 x 16 x (rebuilt + members)`
//! however many steps the pass takes (here 64 steps of 2 MiB). Before the
//! pass reused its source buffers: 213, 11517 and 11910 (a buffer per
//! source and step, or per stripe piece); after: 78, 135, 113.
//!
//! One `#[test]` runs every case in turn: the counter is process-wide.

use std::alloc::{GlobalAlloc, Layout, System};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use vraid::block::{BlockDevice, BlockError, BoxFuture, Durability, Window};
use vraid::member::{create_sparse, open_member, EngineKind, MemberOptions};
use vraid::raid::rebuild::{RebuildControl, RebuildSink};
use vraid::raid::{ChunkSize, Geometry, Level, MemberIndex, MemberState, Volume, VolumeEvents};
use vraid::units::ByteOffset;

/// Counts allocations of [`BIG`] bytes or more while `COUNTING` is set.
struct Counting;

static COUNTING: AtomicBool = AtomicBool::new(false);
static BIG_ALLOCS: AtomicU64 = AtomicU64::new(0);
const BIG: usize = 64 << 10;

fn count(size: usize) {
    if size >= BIG && COUNTING.load(Ordering::Relaxed) {
        BIG_ALLOCS.fetch_add(1, Ordering::Relaxed);
    }
}

// SAFETY: every call is forwarded unchanged to `System`; the counter has
// no effect on the memory handed out.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count(layout.size());
        // SAFETY: forwarded with the caller's layout.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        count(layout.size());
        // SAFETY: forwarded with the caller's layout.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count(new_size);
        // SAFETY: forwarded with the caller's pointer and layout.
        unsafe { System.realloc(ptr, layout, new_size) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded with the caller's pointer and layout.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

const CHUNK: u64 = 64 << 10;
/// The data area of a member: 64 rebuild steps of 2 MiB.
const DATA_SIZE: u64 = 128 << 20;
/// Steps a pass keeps in flight (`rebuild::DEPTH`).
const DEPTH: u64 = 16;

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

struct NoRecord;

impl RebuildSink for NoRecord {
    fn checkpoint(&self, _m: MemberIndex, _up_to: u64) -> BoxFuture<'_, Result<(), String>> {
        BoxFuture::new(async { Ok(()) })
    }
    fn finished(&self, _m: MemberIndex) -> BoxFuture<'_, Result<(), String>> {
        BoxFuture::new(async { Ok(()) })
    }
}

/// A sparse member file on the io_uring engine.
fn file(dir: &Path, name: &str) -> Arc<dyn BlockDevice> {
    let opts = MemberOptions {
        engine: EngineKind::Uring,
        ..MemberOptions::default()
    };
    let path = dir.join(name);
    create_sparse(&path, DATA_SIZE).expect("member file");
    let file = open_member(&path, &opts).expect("open member");
    Arc::new(Window::new(file, 0, DATA_SIZE).expect("window"))
}

/// Large allocations while `level` over `members` files, with the slots
/// `lost` down, rebuilds them onto new files (after one client write).
async fn rebuild_allocations(dir: &Path, level: Level, members: usize, lost: &[usize]) -> u64 {
    let devices = (0..members)
        .map(|i| (!lost.contains(&i)).then(|| file(dir, &format!("{level:?}-{i}"))))
        .collect();
    let chunk = ChunkSize::new(CHUNK).expect("chunk");
    let geometry = Geometry::new(level, members, chunk, DATA_SIZE).expect("geometry");
    let vol = Volume::new(format!("{level:?}"), geometry, devices, Arc::new(NoEvents));
    let vol = vol.expect("volume");
    vol.write(ByteOffset(0), &vec![0x5a; 1 << 20], Durability::Normal)
        .await
        .expect("write");
    let slots: Vec<MemberIndex> = lost.iter().map(|&i| MemberIndex(i)).collect();
    for &m in &slots {
        let target = file(dir, &format!("{level:?}-new-{}", m.0));
        vol.attach_rebuild_target(m, target, 0).expect("attach");
    }
    BIG_ALLOCS.store(0, Ordering::SeqCst);
    COUNTING.store(true, Ordering::SeqCst);
    let done = vol
        .rebuild_together(&slots, None, &RebuildControl::new(0), &NoRecord)
        .await;
    COUNTING.store(false, Ordering::SeqCst);
    let copied = done.expect("rebuild");
    assert!(copied >= DATA_SIZE, "rebuilt {copied} bytes");
    let mut back = vec![0; 1 << 20];
    vol.read(ByteOffset(0), &mut back).await.expect("read");
    assert!(back.iter().all(|&b| b == 0x5a), "rebuilt data differs");
    BIG_ALLOCS.load(Ordering::SeqCst)
}

#[test]
fn a_rebuild_pass_reuses_its_source_buffers() {
    let dir = tempfile::tempdir_in("/var/tmp").expect("temp dir");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let cases: [(Level, usize, &[usize]); 3] = [
        (Level::Raid5, 4, &[3]),
        (Level::Raid6, 5, &[1]),
        (Level::Raid6, 5, &[0, 4]),
    ];
    let mut over = Vec::new();
    for (level, members, lost) in cases {
        let big = rt.block_on(rebuild_allocations(dir.path(), level, members, lost));
        let bound = 2 * DEPTH * (members + lost.len()) as u64;
        println!(
            "{level:?} x{members}, rebuilding {lost:?}: {big} buffers of >= 64 KiB (bound {bound})"
        );
        if big > bound {
            over.push(format!("{level:?} {lost:?}: {big} > {bound}"));
        }
    }
    assert!(
        over.is_empty(),
        "a rebuild pass allocates per step: {over:?}"
    );
}
