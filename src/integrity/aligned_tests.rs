//! The inline layout's writes into filesystem holes, on real sparse files
//! (O_DIRECT on the build's filesystem): widened to whole 4 KiB blocks
//! when the blocks are holes, left alone otherwise, and never losing a
//! neighbour's bytes to the padding.

use std::path::Path;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};

use super::aligned::{envelope, Probe};
use super::inline::InlineDevice;
use super::page::BLOCK;
use super::tag::STRIDE;
use crate::block::{Allocation, BlockDevice, Durability, IoFuture, Window};
use crate::member::{create_sparse, open_member, EngineKind, MemberOptions};
use crate::raid::test_support::pattern;
use crate::units::ByteOffset;

const BASE: u64 = 1 << 20;
const BLOCKS: u64 = 128;

/// Records the (offset, length) of every write it passes on.
struct Recording {
    inner: Arc<dyn BlockDevice>,
    writes: Mutex<Vec<(u64, u64)>>,
}

impl BlockDevice for Recording {
    crate::block::forward_to!(inner => name, size, read, flush, discard, write_zeroes);

    fn write<'a>(&'a self, at: ByteOffset, buf: &'a [u8], d: Durability) -> IoFuture<'a> {
        self.writes
            .lock()
            .unwrap()
            .push((at.get(), buf.len() as u64));
        self.inner.write(at, buf, d)
    }
}

fn disk_dir() -> tempfile::TempDir {
    let base = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("target")
        .join("aligned-tests");
    std::fs::create_dir_all(&base).unwrap();
    tempfile::tempdir_in(base).unwrap()
}

fn member(dir: &Path) -> Arc<dyn BlockDevice> {
    let path = dir.join("m.img");
    create_sparse(&path, BASE + BLOCKS * STRIDE + (1 << 20)).unwrap();
    let opts = MemberOptions {
        engine: EngineKind::Auto,
        direct: true,
        exclusive: true,
        read_only: false,
        ..MemberOptions::default()
    };
    open_member(&path, &opts).unwrap()
}

/// An inline device over the data area at `BASE` of `member`, its writes
/// recorded, probing `member` for holes when `probe`.
fn inline_over(member: &Arc<dyn BlockDevice>, probe: bool) -> (InlineDevice, Arc<Recording>) {
    let window = Window::new(member.clone(), BASE, BLOCKS * STRIDE).unwrap();
    let rec = Arc::new(Recording {
        inner: Arc::new(window),
        writes: Mutex::new(Vec::new()),
    });
    let dev = InlineDevice::new(rec.clone(), Arc::new(|_| true), Arc::new(AtomicU64::new(0)));
    let dev = if probe {
        dev.with_probe(Probe {
            member: member.clone(),
            base: BASE,
        })
    } else {
        dev
    };
    (dev, rec)
}

async fn write_block(dev: &InlineDevice, block: u64, seed: u64) {
    dev.write(
        ByteOffset(block * BLOCK),
        &pattern(BLOCK as usize, seed),
        Durability::Normal,
    )
    .await
    .unwrap();
}

async fn read_block(dev: &InlineDevice, block: u64) -> Vec<u8> {
    let mut buf = vec![0u8; BLOCK as usize];
    dev.read(ByteOffset(block * BLOCK), &mut buf).await.unwrap();
    buf
}

#[tokio::test]
async fn a_sparse_file_reports_its_holes_and_data() {
    let dir = disk_dir();
    let m = member(dir.path());
    m.write(ByteOffset(BASE + 8192), &[7u8; 4096], Durability::Normal)
        .await
        .unwrap();
    let map = m.allocation(ByteOffset(BASE), 5 * 4096).await.unwrap();
    let states: Vec<(u64, Allocation)> = map.iter().map(|x| (x.len, x.state)).collect();
    assert_eq!(
        states,
        vec![
            (8192, Allocation::HOLE_ZERO),
            (4096, Allocation::DATA),
            (8192, Allocation::HOLE_ZERO)
        ]
    );
}

#[tokio::test]
async fn a_unit_written_into_holes_goes_out_as_whole_filesystem_blocks() {
    // Arrange
    let dir = disk_dir();
    let m = member(dir.path());
    let (dev, rec) = inline_over(&m, true);

    // Act: block 3 (unit 13824..18432) into holes, then block 2, whose
    // unit shares the filesystem block 12288..16384 now holding data.
    write_block(&dev, 3, 3).await;
    write_block(&dev, 2, 2).await;
    write_block(&dev, 16, 16).await;

    // Assert: the first and last widened to their 8 KiB envelope, block 2
    // written as it is; every block reads back, neighbours as zeroes.
    let writes = rec.writes.lock().unwrap().clone();
    assert_eq!(envelope(3 * STRIDE, STRIDE), (12288, 20480));
    assert_eq!(
        writes,
        vec![(12288, 8192), (2 * STRIDE, STRIDE), (16 * STRIDE, 8192)]
    );
    for (b, want) in [
        (2, pattern(4096, 2)),
        (3, pattern(4096, 3)),
        (16, pattern(4096, 16)),
    ] {
        assert_eq!(read_block(&dev, b).await, want, "block {b}");
    }
    for b in [1, 4, 15, 17] {
        assert_eq!(read_block(&dev, b).await, vec![0u8; 4096], "block {b}");
    }
}

#[tokio::test]
async fn without_a_probe_units_are_written_as_they_are() {
    let dir = disk_dir();
    let m = member(dir.path());
    let (dev, rec) = inline_over(&m, false);
    write_block(&dev, 3, 3).await;
    assert_eq!(*rec.writes.lock().unwrap(), vec![(3 * STRIDE, STRIDE)]);
    assert_eq!(read_block(&dev, 3).await, pattern(4096, 3));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writes_of_neighbouring_units_into_holes_lose_nothing() {
    for round in 0..4u64 {
        // Arrange: a fresh sparse member.
        let dir = disk_dir();
        let m = member(dir.path());
        let (dev, _) = inline_over(&m, true);
        let dev = Arc::new(dev);

        // Act: every block written at once, in a scrambled order, so
        // neighbours probe the same holes before either lands.
        let order: Vec<u64> = (0..BLOCKS).map(|i| (i * 37 + round) % BLOCKS).collect();
        let writes = order.iter().map(|&b| {
            let dev = dev.clone();
            tokio::spawn(async move { write_block(&dev, b, b + 1000 * round).await })
        });
        for w in futures::future::join_all(writes).await {
            w.unwrap();
        }

        // Assert: no padding wiped a neighbour.
        for b in 0..BLOCKS {
            assert_eq!(
                read_block(&dev, b).await,
                pattern(4096, b + 1000 * round),
                "round {round} block {b}"
            );
        }
    }
}
