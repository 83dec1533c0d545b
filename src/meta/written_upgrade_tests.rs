//! The upgrade scan on real sparse member files: regions holding data on
//! any member count as written, holes do not, in both checksum layouts;
//! the upgrade writes the image everywhere, then the flag.

use std::path::Path;
use std::sync::Arc;

use super::*;
use crate::block::{BlockDevice, Durability};
use crate::member::{create_sparse, open_member, MemberOptions};
use crate::meta::{assemble, create::create_array_with, CreateSpec};
use crate::raid::{Level, WrittenRegions};

const MIB: u64 = 1 << 20;

fn members(dir: &Path, n: usize) -> Vec<Arc<dyn BlockDevice>> {
    (0..n)
        .map(|i| {
            let path = dir.join(format!("m{i}.img"));
            create_sparse(&path, 1 << 30).unwrap();
            let m: Arc<dyn BlockDevice> = open_member(&path, &MemberOptions::default()).unwrap();
            m
        })
        .collect()
}

async fn array(layout: ChecksumLayout) -> (tempfile::TempDir, Vec<Arc<dyn BlockDevice>>) {
    let base = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/upgrade-tests");
    std::fs::create_dir_all(&base).unwrap();
    let dir = tempfile::tempdir_in(base).unwrap();
    let devs = members(dir.path(), 3);
    let spec = CreateSpec {
        name: "up".into(),
        level: Level::Raid5,
        chunk_size: 64 << 10,
        force: false,
    };
    create_array_with(&devs, &spec, layout).await.unwrap();
    (dir, devs)
}

async fn assembled(devs: &[Arc<dyn BlockDevice>]) -> Assembly {
    let named = devs
        .iter()
        .enumerate()
        .map(|(i, d)| (format!("/m{i}"), d.clone()))
        .collect();
    assemble(named).await.unwrap()
}

/// Bytes written straight onto member `m` at its data-area byte `at`.
async fn poke(asm: &Assembly, devs: &[Arc<dyn BlockDevice>], m: usize, at: u64) {
    devs[m]
        .write(
            ByteOffset(asm.data_offset + at),
            &[0xab; 4096],
            Durability::Normal,
        )
        .await
        .unwrap();
}

async fn scans_regions_holding_data(layout: ChecksumLayout, stride: u64) {
    // Arrange: data on member 0 in region 3, on member 2 in region 0, on
    // member 1 at the very end of region 1 (its last block).
    let (_dir, devs) = array(layout).await;
    let asm = assembled(&devs).await;
    assert!(asm.written_map);
    poke(&asm, &devs, 0, (200 * MIB) / 4096 * stride).await;
    poke(&asm, &devs, 2, (10 * MIB) / 4096 * stride).await;
    poke(&asm, &devs, 1, (128 * MIB - 4096) / 4096 * stride).await;

    // Act
    let image = scan(&asm).await.unwrap();

    // Assert: exactly regions 0, 1 and 3.
    let map = WrittenMap::new(image, asm.data_size);
    let written: Vec<u64> = (0..asm.data_size.div_ceil(64 * MIB))
        .filter(|&r| map.is_written(r * 64 * MIB, (r + 1) * 64 * MIB))
        .collect();
    assert_eq!(written, vec![0, 1, 3]);
}

#[tokio::test]
async fn the_scan_finds_the_regions_holding_data_separate_layout() {
    scans_regions_holding_data(ChecksumLayout::Separate, 4096).await;
}

#[tokio::test]
async fn the_scan_finds_the_regions_holding_data_inline_layout() {
    scans_regions_holding_data(ChecksumLayout::Inline, STRIDE).await;
}

#[tokio::test]
async fn an_upgrade_writes_the_image_everywhere_then_the_flag() {
    // Arrange: an array whose superblocks lack the flag (a build before
    // the map), with data in region 2.
    let (_dir, devs) = array(ChecksumLayout::Separate).await;
    let asm = assembled(&devs).await;
    asm.metadata.clear_written_map_for_tests().await.unwrap();
    let asm = assembled(&devs).await;
    assert!(!asm.written_map);
    assert_eq!(not_upgradable(&asm, false), None);
    assert!(not_upgradable(&asm, true).is_some());
    poke(&asm, &devs, 1, 130 * MIB).await;

    // Act
    let map = upgrade(&asm).await.unwrap();

    // Assert: one region in memory, and after a new assembly.
    assert_eq!(map.written_bytes(), 64 * MIB);
    let again = assembled(&devs).await;
    assert!(again.written_map);
    let shift = again.layout.bitmap_region_shift;
    let loaded = WrittenMap::load(&again.metadata, shift, again.data_size).await;
    assert_eq!(loaded.written_bytes(), 64 * MIB);
    assert!(loaded.is_written(128 * MIB, 192 * MIB));
}
