//! Lone requests run on the caller's thread (`lone`); batches, flushes and
//! FUA writes go through the ring. Each test has its own engine, so other
//! tests' I/O never makes its ring busy.

use std::path::Path;
use std::sync::Arc;

use std::sync::atomic::Ordering;

use super::lone::{inline_runs_here, refused_runs, refused_runs_here};
use super::{create_sparse, open_member_on, FileMember, UringEngine};
use crate::block::{BlockDevice, Durability};
use crate::units::ByteOffset;

const MIB: u64 = 1 << 20;

fn member(dir: &Path, engine: &Arc<UringEngine>) -> Arc<FileMember> {
    let path = dir.join("member.img");
    create_sparse(&path, 4 * MIB).unwrap();
    let member = open_member_on(&path, true, Arc::clone(engine)).unwrap();
    assert!(
        member.is_direct(),
        "target/ is on a filesystem with O_DIRECT"
    );
    member
}

fn disk_dir() -> tempfile::TempDir {
    let base = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/member-tests");
    std::fs::create_dir_all(&base).unwrap();
    tempfile::tempdir_in(base).unwrap()
}

fn pattern(seed: u64, len: usize) -> Vec<u8> {
    crate::raid::test_support::pattern(len, seed)
}

#[tokio::test]
async fn a_lone_read_and_write_run_on_the_callers_thread() {
    let dir = disk_dir();
    let engine = UringEngine::new(8).unwrap();
    let m = member(dir.path(), &engine);
    let (old, data) = (pattern(9, 4096), pattern(1, 4096));
    m.write(ByteOffset(8192), &old, Durability::Normal)
        .await
        .unwrap();
    let before = inline_runs_here();

    m.write(ByteOffset(8192), &data, Durability::Normal)
        .await
        .unwrap();
    let mut back = vec![0u8; 4096];
    m.read(ByteOffset(8192), &mut back).await.unwrap();

    assert_eq!(inline_runs_here() - before, 2, "write and read inline");
    assert!(back == data);
}

/// A write into a hole of a sparse file allocates (ext4 would block on
/// its journal): `RWF_NOWAIT` refuses it inline, the ring writes it.
#[tokio::test]
async fn a_write_the_kernel_would_block_on_goes_to_the_ring() {
    let dir = disk_dir();
    let engine = UringEngine::new(8).unwrap();
    let m = member(dir.path(), &engine);
    let data = pattern(6, 4096);
    let (before, refused) = (inline_runs_here(), refused_runs());

    m.write(ByteOffset(MIB), &data, Durability::Normal)
        .await
        .unwrap();
    let mut back = vec![0u8; 4096];
    m.read(ByteOffset(MIB), &mut back).await.unwrap();

    assert!(
        refused_runs() > refused,
        "the hole write was refused inline"
    );
    assert_eq!(inline_runs_here() - before, 1, "only the read ran inline");
    assert!(back == data);
}

/// A 1 KiB write over written blocks (off the 4 KiB granule, so it asks
/// for `RWF_NOWAIT` itself) runs inline, as a 4 KiB one does: one
/// syscall, no ring round trip (session 17: 1 KiB writes cost 1.35x 4 KiB
/// ones when they all went through the ring).
#[tokio::test]
async fn a_write_off_the_granule_runs_inline() {
    let dir = disk_dir();
    let engine = UringEngine::new(8).unwrap();
    let m = member(dir.path(), &engine);
    assert!(
        m.block_size() < 4096,
        "the test file system takes 512-byte direct I/O"
    );
    let (old, data) = (pattern(10, 4096), pattern(11, 1024));
    m.write(ByteOffset(8192), &old, Durability::Normal)
        .await
        .unwrap();
    let (before, widened) = (inline_runs_here(), m.widened_writes());

    m.write(ByteOffset(8192 + 1024), &data, Durability::Normal)
        .await
        .unwrap();

    assert_eq!(inline_runs_here() - before, 1, "the 1 KiB write ran inline");
    assert_eq!(m.widened_writes(), widened, "taken as it is, not widened");
    let mut back = vec![0u8; 4096];
    m.read(ByteOffset(8192), &mut back).await.unwrap();
    let mut want = old.clone();
    want[1024..2048].copy_from_slice(&data);
    assert!(back == want);
}

/// A 1 KiB write into a hole: the inline `RWF_NOWAIT` refusal is the
/// write's own EAGAIN (it is widened at once), not sent to the ring to be
/// refused a second time; the edge read runs inline, the widened write
/// (an allocation) is refused inline too and goes to the ring.
#[tokio::test]
async fn a_refused_write_off_the_granule_is_widened_without_the_ring() {
    let dir = disk_dir();
    let engine = UringEngine::new(8).unwrap();
    let m = member(dir.path(), &engine);
    let data = pattern(12, 1024);
    let (before, refused) = (inline_runs_here(), refused_runs_here());

    m.write(ByteOffset(MIB + 1024), &data, Durability::Normal)
        .await
        .unwrap();

    assert_eq!(
        refused_runs_here() - refused,
        2,
        "the try and the widened write"
    );
    assert_eq!(inline_runs_here() - before, 1, "the edge read");
    let mut back = vec![0u8; 4096];
    m.read(ByteOffset(MIB), &mut back).await.unwrap();
    assert!(back[1024..2048] == data[..] && back[..1024].iter().all(|&b| b == 0));
}

/// While one lone request is inline (its slot taken), another goes to the
/// ring: a stalled member holds one runtime worker at most.
#[tokio::test]
async fn a_second_lone_request_goes_to_the_ring_while_one_is_inline() {
    let dir = disk_dir();
    let engine = UringEngine::new(8).unwrap();
    let m = member(dir.path(), &engine);
    let data = pattern(7, 4096);
    m.write(ByteOffset(0), &data, Durability::Normal)
        .await
        .unwrap();
    let before = inline_runs_here();

    engine.lone_running().store(true, Ordering::Release);
    let mut back = vec![0u8; 4096];
    let held = m.read(ByteOffset(0), &mut back).await;
    engine.lone_running().store(false, Ordering::Release);
    let mut again = vec![0u8; 4096];
    m.read(ByteOffset(0), &mut again).await.unwrap();

    held.unwrap();
    assert_eq!(
        inline_runs_here() - before,
        1,
        "only the read after ran inline"
    );
    assert!(back == data && again == data);
}

/// Members off a local disk file system (here tmpfs: a FUSE or network
/// file system is alike) never run a request inline.
#[tokio::test]
async fn a_member_off_a_local_disk_file_system_stays_on_the_ring() {
    let dir = tempfile::tempdir_in("/dev/shm").unwrap();
    let engine = UringEngine::new(8).unwrap();
    let path = dir.path().join("member.img");
    create_sparse(&path, 4 * MIB).unwrap();
    let m = open_member_on(&path, true, Arc::clone(&engine)).unwrap();
    let data = pattern(8, 4096);
    let before = inline_runs_here();

    for _ in 0..2 {
        m.write(ByteOffset(0), &data, Durability::Normal)
            .await
            .unwrap();
    }
    let mut back = vec![0u8; 4096];
    m.read(ByteOffset(0), &mut back).await.unwrap();

    assert_eq!(inline_runs_here(), before);
    assert!(back == data);
}

#[tokio::test]
async fn requests_begun_together_go_to_the_ring() {
    let dir = disk_dir();
    let engine = UringEngine::new(8).unwrap();
    let m = member(dir.path(), &engine);
    let (a, b) = (pattern(2, 4096), pattern(3, 4096));
    let before = inline_runs_here();

    let (wa, wb) = futures::join!(
        m.write(ByteOffset(0), &a, Durability::Normal),
        m.write(ByteOffset(MIB), &b, Durability::Normal),
    );
    let (mut ra, mut rb) = (vec![0u8; 4096], vec![0u8; 4096]);
    let (x, y) = futures::join!(
        m.read(ByteOffset(0), &mut ra),
        m.read(ByteOffset(MIB), &mut rb)
    );

    assert_eq!(
        inline_runs_here(),
        before,
        "a batch reaches the ring at once"
    );
    wa.unwrap();
    wb.unwrap();
    x.unwrap();
    y.unwrap();
    assert!(ra == a && rb == b);
}

#[tokio::test]
async fn flushes_fua_writes_and_a_disabled_engine_stay_on_the_ring() {
    let dir = disk_dir();
    let engine = UringEngine::new(8).unwrap();
    let m = member(dir.path(), &engine);
    let data = pattern(4, 4096);
    let before = inline_runs_here();

    m.write(ByteOffset(0), &data, Durability::Fua)
        .await
        .unwrap();
    m.flush().await.unwrap();
    engine.set_lone_inline(false);
    let mut back = vec![0u8; 4096];
    m.read(ByteOffset(0), &mut back).await.unwrap();

    assert_eq!(inline_runs_here(), before);
    assert!(back == data);
}

#[tokio::test]
async fn a_lone_vectored_read_lands_in_the_callers_segments() {
    use std::io::IoSliceMut;
    let dir = disk_dir();
    let engine = UringEngine::new(8).unwrap();
    let m = member(dir.path(), &engine);
    let data = pattern(5, 8192);
    m.write(ByteOffset(4096), &data, Durability::Normal)
        .await
        .unwrap();
    let before = inline_runs_here();
    let mut x = crate::member::buf::AlignedBuf::new(4096);
    let mut y = crate::member::buf::AlignedBuf::new(4096);

    {
        let list = &mut [
            IoSliceMut::new(x.as_mut_slice()),
            IoSliceMut::new(y.as_mut_slice()),
        ];
        m.read_vectored(ByteOffset(4096), list).await.unwrap();
    }

    assert_eq!(inline_runs_here() - before, 1, "one READV, inline");
    assert!(x.as_slice() == &data[..4096] && y.as_slice() == &data[4096..]);
}
