//! Lone requests run on the caller's thread (`lone`); batches, flushes and
//! FUA writes go through the ring. Each test has its own engine, so other
//! tests' I/O never makes its ring busy.

use std::path::Path;
use std::sync::Arc;

use super::lone::inline_runs_here;
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
    let data = pattern(1, 4096);
    let before = inline_runs_here();

    m.write(ByteOffset(8192), &data, Durability::Normal)
        .await
        .unwrap();
    let mut back = vec![0u8; 4096];
    m.read(ByteOffset(8192), &mut back).await.unwrap();

    assert_eq!(inline_runs_here() - before, 2, "write and read inline");
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
