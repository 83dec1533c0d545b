//! Conformance tests for [`FileMember`] on real files, run once per engine.
//!
//! Files live under `target/member-tests/` (the real disk, where O_DIRECT
//! works); the tmpfs tests use `/dev/shm`.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tempfile::TempDir;

use super::*;
use crate::block::{BlockDevice, BlockError, Durability};
use crate::units::ByteOffset;

const MIB: u64 = 1 << 20;

struct Fixture {
    _dir: TempDir,
    path: PathBuf,
    member: Arc<FileMember>,
}

fn disk_dir() -> TempDir {
    let base = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("target")
        .join("member-tests");
    std::fs::create_dir_all(&base).unwrap();
    tempfile::tempdir_in(base).unwrap()
}

fn fixture_in(dir: TempDir, kind: EngineKind, size: u64, direct: bool) -> Fixture {
    let path = dir.path().join("member.img");
    create_sparse(&path, size).unwrap();
    let opts = MemberOptions {
        engine: kind,
        direct,
        exclusive: true,
        read_only: false,
        ..MemberOptions::default()
    };
    let member = open_member(&path, &opts).unwrap();
    assert_eq!(member.engine_kind(), kind);
    Fixture {
        _dir: dir,
        path,
        member,
    }
}

fn fixture(kind: EngineKind, size: u64) -> Fixture {
    fixture_in(disk_dir(), kind, size, true)
}

/// Deterministic pseudo-random bytes.
fn pattern(seed: u64, len: usize) -> Vec<u8> {
    crate::raid::test_support::pattern(len, seed)
}

async fn read_vec(dev: &dyn BlockDevice, offset: u64, len: usize) -> Vec<u8> {
    let mut buf = vec![0xEE; len];
    dev.read(ByteOffset(offset), &mut buf).await.unwrap();
    buf
}

async fn write(dev: &dyn BlockDevice, offset: u64, data: &[u8]) {
    dev.write(ByteOffset(offset), data, Durability::Normal)
        .await
        .unwrap();
}

/// Writes `data` at `offset` over a patterned background and checks the
/// whole surrounding area reads back as expected.
async fn check_write_in_context(kind: EngineKind, offset: u64, data: &[u8]) {
    let f = fixture(kind, 16 * MIB);
    let dev = &*f.member;
    let ctx_start = offset.saturating_sub(8192) / 4096 * 4096;
    let ctx_end = (offset + data.len() as u64 + 8192).div_ceil(4096) * 4096;
    let background = pattern(7, (ctx_end - ctx_start) as usize);
    write(dev, ctx_start, &background).await;

    write(dev, offset, data).await;

    let mut expected = background;
    let at = (offset - ctx_start) as usize;
    expected[at..at + data.len()].copy_from_slice(data);
    let got = read_vec(dev, ctx_start, expected.len()).await;
    assert!(got == expected, "context around {offset} differs");
    assert_eq!(read_vec(dev, offset, data.len()).await, data);
}

async fn aligned_write_reads_back(kind: EngineKind) {
    check_write_in_context(kind, 64 * 1024, &pattern(1, 64 * 1024)).await;
}

async fn one_byte_write_at_offset_3_reads_back(kind: EngineKind) {
    check_write_in_context(kind, 3, &[0x5A]).await;
}

async fn write_of_513_bytes_at_4095_reads_back(kind: EngineKind) {
    check_write_in_context(kind, 4095, &pattern(2, 513)).await;
}

async fn unaligned_multi_mib_span_across_io_split_reads_back(kind: EngineKind) {
    check_write_in_context(kind, 6 * MIB + 1234, &pattern(3, (3 * MIB + 17) as usize)).await;
}

async fn unaligned_read_of_one_byte_returns_that_byte(kind: EngineKind) {
    let f = fixture(kind, 4 * MIB);
    let data = pattern(4, 8192);
    write(&*f.member, 0, &data).await;

    let got = read_vec(&*f.member, 4097, 1).await;

    assert_eq!(got, [data[4097]]);
}

async fn fua_write_reads_back(kind: EngineKind) {
    let f = fixture(kind, 4 * MIB);
    let data = pattern(5, 12_288);

    f.member
        .write(ByteOffset(8192), &data, Durability::Fua)
        .await
        .unwrap();
    f.member
        .write(ByteOffset(100_001), &data[..99], Durability::Fua)
        .await
        .unwrap();

    assert_eq!(read_vec(&*f.member, 8192, data.len()).await, data);
    assert_eq!(read_vec(&*f.member, 100_001, 99).await, &data[..99]);
}

async fn flush_after_writes_succeeds(kind: EngineKind) {
    let f = fixture(kind, 4 * MIB);
    write(&*f.member, 4096, &pattern(6, 4096)).await;
    write(&*f.member, 10, &pattern(6, 10)).await;

    f.member.flush().await.unwrap();

    assert_eq!(read_vec(&*f.member, 10, 10).await, pattern(6, 10));
}

async fn discard_reads_zeroes_and_frees_blocks(kind: EngineKind) {
    let f = fixture(kind, 16 * MIB);
    write(&*f.member, 0, &pattern(8, (8 * MIB) as usize)).await;
    f.member.flush().await.unwrap();
    let blocks_before = std::fs::metadata(&f.path).unwrap().blocks();

    f.member.discard(ByteOffset(MIB), 4 * MIB).await.unwrap();

    let blocks_after = std::fs::metadata(&f.path).unwrap().blocks();
    assert!(
        blocks_after + 4 * MIB / 512 <= blocks_before,
        "st_blocks {blocks_before} -> {blocks_after}"
    );
    assert!(read_vec(&*f.member, MIB, (4 * MIB) as usize)
        .await
        .iter()
        .all(|&b| b == 0));
    assert_eq!(
        read_vec(&*f.member, MIB - 10, 10).await,
        pattern(8, MIB as usize)[(MIB - 10) as usize..]
    );
}

async fn write_zeroes_reads_zeroes(kind: EngineKind) {
    for may_unmap in [false, true] {
        let f = fixture(kind, 4 * MIB);
        let data = pattern(9, (2 * MIB) as usize);
        write(&*f.member, 0, &data).await;

        f.member
            .write_zeroes(ByteOffset(1000), 300_000, may_unmap)
            .await
            .unwrap();

        let got = read_vec(&*f.member, 0, data.len()).await;
        assert_eq!(got[..1000], data[..1000]);
        assert!(got[1000..301_000].iter().all(|&b| b == 0));
        assert_eq!(got[301_000..], data[301_000..]);
    }
}

async fn out_of_range_is_rejected(kind: EngineKind) {
    let f = fixture(kind, MIB);
    let dev = &*f.member;
    let mut buf = [0u8; 2];
    let out = |r: Result<(), BlockError>| matches!(r, Err(BlockError::OutOfRange { .. }));

    assert!(out(dev.read(ByteOffset(MIB - 1), &mut buf).await));
    assert!(out(dev.read(ByteOffset(u64::MAX), &mut buf).await));
    assert!(out(dev
        .write(ByteOffset(MIB), &buf, Durability::Normal)
        .await));
    assert!(out(dev.discard(ByteOffset(0), MIB + 1).await));
    assert!(out(dev
        .write_zeroes(ByteOffset(u64::MAX - 1), 4, true)
        .await));
    assert!(dev.read(ByteOffset(MIB - 2), &mut buf).await.is_ok());
}

async fn concurrent_random_writes_read_back(kind: EngineKind) {
    let f = fixture(kind, 16 * MIB);
    let slot = 32 * 1024u64;
    let mut model = vec![0u8; (256 * slot) as usize];
    let mut writes = Vec::new();
    for i in 0..256u64 {
        let r = pattern(i + 100, 8);
        // Half aligned 4K blocks, half arbitrary ranges, inside distinct slots.
        let (off, len) = if i.is_multiple_of(2) {
            (u64::from(r[0] % 4) * 4096, 4096 * (1 + u64::from(r[1] % 4)))
        } else {
            (
                u64::from(r[0]) * 13,
                1 + u64::from(u16::from_le_bytes([r[1], r[2]])) % 16_000,
            )
        };
        let at = i * slot + off;
        let data = pattern(i, len as usize);
        model[at as usize..(at + len) as usize].copy_from_slice(&data);
        writes.push((at, data));
    }

    let member = &*f.member;
    futures::future::join_all(writes.iter().map(|(at, data)| async move {
        member
            .write(ByteOffset(*at), data, Durability::Normal)
            .await
            .unwrap();
    }))
    .await;

    assert!(read_vec(member, 0, model.len()).await == model);
}

async fn dropped_read_future_is_harmless(kind: EngineKind) {
    let f = fixture(kind, 16 * MIB);
    let data = pattern(11, 4096);
    write(&*f.member, 0, &data).await;

    for _ in 0..32 {
        let mut big = vec![0u8; (8 * MIB) as usize];
        let mut fut = f.member.read(ByteOffset(0), &mut big);
        // Poll once so the request is really submitted (it may even have
        // completed already), then drop it.
        let _ = futures::poll!(fut.as_mut());
        drop(fut);
    }

    assert_eq!(read_vec(&*f.member, 0, 4096).await, data);
    write(&*f.member, 4096, &data).await;
    assert_eq!(read_vec(&*f.member, 4096, 4096).await, data);
}

async fn read_past_end_of_unaligned_file_yields_its_tail(kind: EngineKind) {
    let f = fixture(kind, 10_000);
    let data = pattern(12, 10_000);
    write(&*f.member, 0, &data).await;

    let got = read_vec(&*f.member, 9_990, 10).await;

    assert_eq!(got, &data[9_990..]);
}

async fn buffered_member_on_tmpfs_round_trips(kind: EngineKind) {
    for direct in [false, true] {
        let dir = tempfile::tempdir_in("/dev/shm").unwrap();
        let f = fixture_in(dir, kind, 4 * MIB, direct);
        if !direct {
            assert!(!f.member.is_direct());
        }
        let data = pattern(13, 5000);

        write(&*f.member, 4095, &data).await;
        write(&*f.member, 65536, &data[..4096]).await;
        f.member
            .write_zeroes(ByteOffset(5000), 100, false)
            .await
            .unwrap();
        f.member.flush().await.unwrap();

        let mut expected = data.clone();
        expected[905..1005].fill(0);
        assert_eq!(read_vec(&*f.member, 4095, 5000).await, expected);
        assert_eq!(read_vec(&*f.member, 65536, 4096).await, &data[..4096]);
    }
}

/// Two 4 KiB-aligned segments and an odd one: the aligned list goes
/// straight to the kernel on io_uring, the odd one through a bounce.
async fn vectored_io_reads_back_and_bounces_only_unaligned(kind: EngineKind) {
    use std::io::{IoSlice, IoSliceMut};
    let f = fixture(kind, 4 * MIB);
    let data = pattern(21, 3 * 4096);
    let buf = buf::AlignedBuf::copy_from(&data);
    let (a, b) = buf.as_slice().split_at(4096);
    let before = f.member.bounced_bytes();

    f.member
        .write_vectored(
            ByteOffset(8192),
            &[IoSlice::new(b), IoSlice::new(a)],
            Durability::Normal,
        )
        .await
        .unwrap();
    let mut out = buf::AlignedBuf::new(3 * 4096);
    let (x, y) = out.as_mut_slice().split_at_mut(8192);
    f.member
        .read_vectored(
            ByteOffset(8192),
            &mut [IoSliceMut::new(y), IoSliceMut::new(x)],
        )
        .await
        .unwrap();
    let aligned_bounce = f.member.bounced_bytes() - before;
    let mut odd = vec![0u8; 100];
    f.member
        .read_vectored(ByteOffset(8192 + 8), &mut [IoSliceMut::new(&mut odd)])
        .await
        .unwrap();

    let mut expected = data[4096..].to_vec();
    expected.extend_from_slice(&data[..4096]);
    let got = out.as_slice();
    assert_eq!([&got[8192..], &got[..8192]].concat(), expected);
    assert_eq!(&odd[..], &expected[8..108]);
    let odd_bounce = f.member.bounced_bytes() - before - aligned_bounce;
    match kind {
        EngineKind::Uring | EngineKind::Inline => {
            assert_eq!((aligned_bounce, odd_bounce), (0, 100))
        }
        _ => assert_eq!((aligned_bounce, odd_bounce), (6 * 4096, 100)),
    }
}

/// A dropped zero-copy read must not let the kernel write into the
/// caller's buffer afterwards: the drop waits for the completion.
async fn dropped_zero_copy_read_leaves_the_buffer_alone(kind: EngineKind) {
    let f = fixture(kind, 16 * MIB);
    write(&*f.member, 0, &pattern(22, (8 * MIB) as usize)).await;

    for _ in 0..16 {
        let mut big = buf::AlignedBuf::new((8 * MIB) as usize);
        let mut fut = f.member.read(ByteOffset(0), big.as_mut_slice());
        let _ = futures::poll!(fut.as_mut());
        drop(fut);
        big.as_mut_slice().fill(0x55);
        // Another request through the same engine: a late completion of
        // the dropped read would land before this one's.
        read_vec(&*f.member, 0, 4096).await;

        assert!(big.as_slice().iter().all(|&b| b == 0x55));
    }
}

macro_rules! for_each_engine {
    ($($name:ident),* $(,)?) => {
        mod uring_engine {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(super::EngineKind::Uring).await
                }
            )*
        }
        mod sync_engine {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(super::EngineKind::Sync).await
                }
            )*
        }
        mod inline_engine {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(super::EngineKind::Inline).await
                }
            )*
        }
    };
}

for_each_engine!(
    aligned_write_reads_back,
    one_byte_write_at_offset_3_reads_back,
    write_of_513_bytes_at_4095_reads_back,
    unaligned_multi_mib_span_across_io_split_reads_back,
    unaligned_read_of_one_byte_returns_that_byte,
    fua_write_reads_back,
    flush_after_writes_succeeds,
    discard_reads_zeroes_and_frees_blocks,
    write_zeroes_reads_zeroes,
    out_of_range_is_rejected,
    concurrent_random_writes_read_back,
    dropped_read_future_is_harmless,
    read_past_end_of_unaligned_file_yields_its_tail,
    buffered_member_on_tmpfs_round_trips,
    vectored_io_reads_back_and_bounces_only_unaligned,
    dropped_zero_copy_read_leaves_the_buffer_alone,
);

#[tokio::test]
async fn two_members_share_one_small_engine() {
    let engine = UringEngine::new(4).unwrap();
    let (dir_a, dir_b) = (disk_dir(), disk_dir());
    let (pa, pb) = (dir_a.path().join("a"), dir_b.path().join("b"));
    create_sparse(&pa, 4 * MIB).unwrap();
    create_sparse(&pb, 4 * MIB).unwrap();
    let a = open_member_on(&pa, true, Arc::clone(&engine)).unwrap();
    let b = open_member_on(&pb, true, Arc::clone(&engine)).unwrap();
    let (da, db) = (pattern(20, 4096), pattern(21, 4096));

    // 64 writes each through a ring of depth 4: back-pressure, not errors.
    let writes = (0..64u64).flat_map(|i| {
        let (a, b, da, db) = (&a, &b, &da, &db);
        [
            crate::block::BoxFuture::new(async move {
                a.write(ByteOffset(i * 4096), da, Durability::Normal).await
            }) as crate::block::BoxFuture<'_, _>,
            crate::block::BoxFuture::new(async move {
                b.write(ByteOffset(i * 4096), db, Durability::Normal).await
            }),
        ]
    });
    for r in futures::future::join_all(writes).await {
        r.unwrap();
    }

    assert_eq!(read_vec(&*a, 63 * 4096, 4096).await, da);
    assert_eq!(read_vec(&*b, 63 * 4096, 4096).await, db);
    drop((a, b));
    assert_eq!(Arc::strong_count(&engine), 1);
}

#[tokio::test]
async fn engine_stops_after_dropped_futures_and_last_handle() {
    let engine = UringEngine::new(8).unwrap();
    let dir = disk_dir();
    let path = dir.path().join("m");
    create_sparse(&path, 8 * MIB).unwrap();
    let member = open_member_on(&path, true, engine).unwrap();
    let mut big = vec![0u8; (8 * MIB) as usize];
    let mut fut = member.read(ByteOffset(0), &mut big);
    let _ = futures::poll!(fut.as_mut());
    drop(fut);

    // Dropping the member drops the last engine handle, which joins the
    // ring thread once the abandoned read has completed. Dropped on its own
    // thread, so that a ring thread that never stops fails the test instead
    // of hanging it.
    let (dropped_tx, dropped) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        drop(member);
        let _ = dropped_tx.send(());
    });
    dropped
        .recv_timeout(std::time::Duration::from_secs(30))
        .expect("the ring thread did not stop within 30 s of its last handle being dropped");
}

#[test]
fn o_direct_is_used_on_the_real_disk() {
    let dir = disk_dir();
    let path = dir.path().join("direct.img");
    create_sparse(&path, MIB).unwrap();
    let opts = MemberOptions {
        engine: EngineKind::Sync,
        direct: true,
        exclusive: true,
        read_only: false,
        ..MemberOptions::default()
    };

    let member = open_member(&path, &opts).unwrap();

    assert!(member.is_direct());
    let fd = member.direct_fd().unwrap();
    let info = std::fs::read_to_string(format!("/proc/self/fdinfo/{fd}")).unwrap();
    let flags = info
        .lines()
        .find_map(|l| l.strip_prefix("flags:"))
        .map(|v| u32::from_str_radix(v.trim(), 8).unwrap())
        .unwrap();
    assert_ne!(flags & libc::O_DIRECT as u32, 0, "fdinfo flags {flags:o}");
    assert!([512, 4096].contains(&member.block_size()));
}

#[test]
fn o_direct_refusal_falls_back_to_buffered_but_other_errors_stand() {
    let path = Path::new("/nowhere/m.img");
    let refused = Err(std::io::Error::from_raw_os_error(libc::EINVAL));
    let denied = Err(std::io::Error::from_raw_os_error(libc::EACCES));

    let fallback = FileMember::direct_or_buffered_for_test(path, refused);
    let failure = FileMember::direct_or_buffered_for_test(path, denied);

    assert!(matches!(fallback, Ok(None)));
    assert_eq!(failure.unwrap_err().raw_os_error(), Some(libc::EACCES));
}

#[test]
fn create_sparse_accepts_same_size_and_refuses_others() {
    let dir = disk_dir();
    let path = dir.path().join("s.img");

    create_sparse(&path, MIB).unwrap();

    assert!(create_sparse(&path, MIB).is_ok());
    assert_eq!(std::fs::metadata(&path).unwrap().len(), MIB);
    assert!(matches!(
        create_sparse(&path, 2 * MIB),
        Err(MemberError::SizeMismatch { .. })
    ));
    assert!(matches!(
        create_sparse(dir.path(), MIB),
        Err(MemberError::NotRegularFile { .. })
    ));
}

#[test]
fn open_refuses_directories_and_missing_paths_naming_the_path() {
    let dir = disk_dir();
    let opts = MemberOptions::default();

    let on_dir = open_member(dir.path(), &opts).unwrap_err();
    let missing = open_member(&dir.path().join("nope"), &opts).unwrap_err();

    assert!(matches!(on_dir, MemberError::NotFileOrDevice { .. }));
    assert!(matches!(missing, MemberError::Open { .. }));
    assert!(missing.to_string().contains("nope"));
}

#[test]
fn engine_kind_parses_env_values() {
    assert_eq!("uring".parse::<EngineKind>().unwrap(), EngineKind::Uring);
    assert_eq!("SYNC".parse::<EngineKind>().unwrap(), EngineKind::Sync);
    assert_eq!("auto".parse::<EngineKind>().unwrap(), EngineKind::Auto);
    assert_eq!("inline".parse::<EngineKind>().unwrap(), EngineKind::Inline);
    assert!("aio".parse::<EngineKind>().is_err());
    assert_eq!(MemberOptions::default().engine, EngineKind::from_env());
    assert!(MemberOptions::default().direct);
}

/// `auto` serves a member on tmpfs on the calling thread (io_uring would
/// punt every request to its workers) and one on the disk on the ring.
#[test]
fn auto_engine_is_inline_on_tmpfs_and_the_ring_on_the_disk() {
    let opts = MemberOptions {
        engine: EngineKind::Auto,
        ..MemberOptions::default()
    };
    let (shm, disk) = (tempfile::tempdir_in("/dev/shm").unwrap(), disk_dir());
    let (on_shm, on_disk) = (shm.path().join("m"), disk.path().join("m"));
    create_sparse(&on_shm, MIB).unwrap();
    create_sparse(&on_disk, MIB).unwrap();

    let a = open_member(&on_shm, &opts).unwrap();
    let b = open_member(&on_disk, &opts).unwrap();

    assert_eq!(a.engine_kind(), EngineKind::Inline);
    assert_eq!(b.engine_kind(), EngineKind::Uring);
}

/// A device node is not on a memory filesystem, though `statfs` of a node
/// under /dev reports devtmpfs, whose magic is tmpfs's: engine `auto` ran
/// every disk named by its node on the calling thread (redteam_s15).
#[test]
fn device_nodes_are_not_on_a_memory_filesystem() {
    let shm = tempfile::tempdir_in("/dev/shm").unwrap();
    let on_shm = shm.path().join("m");
    create_sparse(&on_shm, MIB).unwrap();

    assert!(super::file::on_memory_fs(&on_shm));
    assert!(!super::file::on_memory_fs(Path::new("/dev/null")));
}

/// Inline-layout units (4608 bytes, docs/FORMAT.md §8 "Writes into holes")
/// written into a sparse file on the disk, neighbours concurrently: the
/// kernel refuses them without blocking (ext4 would drain the file's I/O
/// for each), so they are widened to whole 4 KiB blocks, and no widened
/// write puts back stale bytes of a neighbour sharing its edge blocks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unaligned_units_into_holes_are_widened_without_clobbering_neighbours() {
    use futures::stream::{FuturesUnordered, StreamExt};
    const UNIT: u64 = 4608;
    let f = fixture(EngineKind::Uring, 32 * MIB);
    let dev = Arc::clone(&f.member);
    assert!(dev.is_direct(), "target/ is on a filesystem with O_DIRECT");
    assert_eq!(dev.block_size(), 512, "member-tests need 512-byte sectors");
    let units = 4096u64;
    let untried = crate::member::nowait::counts().untried;
    // Every unit, in runs of 64 neighbours in flight at once, twice (the
    // second pass overwrites allocated blocks).
    for pass in 0..2u64 {
        for run in (0..units).step_by(64) {
            let mut writes: FuturesUnordered<_> = (run..run + 64)
                .map(|i| {
                    let dev = Arc::clone(&dev);
                    async move {
                        let data = pattern(pass * units + i, UNIT as usize);
                        write(&*dev, i * UNIT, &data).await;
                    }
                })
                .collect();
            while writes.next().await.is_some() {}
            if pass == 0 {
                assert!(dev.widened_writes() > 0, "no write into a hole was widened");
            }
        }
        if pass == 0 {
            // After a streak of refusals most writes into holes skip the try.
            let skipped = crate::member::nowait::counts().untried - untried;
            assert!(
                skipped > units / 2,
                "{skipped} of {units} writes skipped the try"
            );
        }
        // Checked after each pass: the second would rewrite what a
        // widening of the first clobbered.
        let got = read_vec(&*dev, 0, (units * UNIT) as usize).await;
        for i in 0..units {
            let at = (i * UNIT) as usize;
            let want = pattern(pass * units + i, UNIT as usize);
            assert!(
                got[at..at + UNIT as usize] == want[..],
                "pass {pass}: unit {i} differs"
            );
        }
    }
}

/// A member file written through the page cache before it was opened (a
/// `dd` or `cp` of its data, the bench's written members): the kernel
/// refuses an `RWF_NOWAIT` direct write over any cached page, so every
/// inline unit written over it was widened (an edge read and a wider write
/// instead of one write) although its blocks are allocated and written.
/// Opening the member drops its clean cached pages: none is widened.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn units_over_cached_pages_of_a_written_file_are_not_widened() {
    use std::io::Write;
    const UNIT: u64 = 4608;
    let dir = disk_dir();
    let path = dir.path().join("member.img");
    let mut file = std::fs::File::create(&path).unwrap();
    file.write_all(&pattern(5, (4 * MIB) as usize)).unwrap();
    file.sync_all().unwrap();
    drop(file);
    let opts = MemberOptions {
        engine: EngineKind::Uring,
        ..MemberOptions::default()
    };
    let dev = open_member(&path, &opts).unwrap();
    assert!(dev.is_direct() && dev.block_size() == 512);
    // One at a time: nothing else in flight may make the kernel refuse.
    for i in 1..64u64 {
        write(&*dev, i * UNIT, &pattern(i, UNIT as usize)).await;
    }
    assert_eq!(
        dev.widened_writes(),
        0,
        "units over written, cached blocks widened"
    );
    let got = read_vec(&*dev, UNIT, (63 * UNIT) as usize).await;
    for i in 1..64u64 {
        let at = ((i - 1) * UNIT) as usize;
        assert!(
            got[at..at + UNIT as usize] == pattern(i, UNIT as usize)[..],
            "unit {i}"
        );
    }
}
