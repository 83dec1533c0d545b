//! What the sync passes ask about the written-region map (docs/FORMAT.md
//! §10): which member data regions were ever written. The on-disk map
//! lives in `meta::written`; a volume without one counts everything as
//! written.
//!
//! ```text
//!  pieces(map, a, b) ─► (start, end, written?) per region of a..b
//!  rebuild / resync / scrub: written ─► work; else ─► skipped_bytes
//!  allocation(geometry, map, volume range) ─► exports (NBD base:allocation):
//!      never written ─► hole, reads as zeroes; else data
//! ```

use std::sync::Arc;

use super::layout::Geometry;
use crate::block::{push_extent, Allocation, AllocationMap};
use crate::units::ByteOffset;

/// The regions of member data that were ever written.
pub trait WrittenRegions: Send + Sync + std::fmt::Debug {
    /// Bytes of member data one region covers (a power of two).
    fn region_size(&self) -> u64;
    /// Was any region overlapping member bytes `start..end` ever written?
    fn is_written(&self, start: u64, end: u64) -> bool;
    /// Bytes of member data counted as written.
    fn written_bytes(&self) -> u64;
}

/// `a..b` cut at region boundaries, each piece with whether it is written
/// (asked when the piece is reached, so later writes count). Without a
/// map: one piece, written.
pub fn pieces(
    map: Option<&Arc<dyn WrittenRegions>>,
    a: u64,
    b: u64,
) -> impl Iterator<Item = (u64, u64, bool)> + '_ {
    let size = map.map_or(u64::MAX, |m| m.region_size().max(1));
    let mut pos = a;
    std::iter::from_fn(move || {
        (pos < b).then(|| {
            let end = match size {
                u64::MAX => b,
                s => (pos / s + 1).saturating_mul(s).min(b),
            };
            let piece = (pos, end, map.is_none_or(|m| m.is_written(pos, end)));
            pos = end;
            piece
        })
    })
}

/// Most pieces one [`allocation`] answer looks at (a shorter answer is
/// fine: the asker asks again from its end).
const MAX_ALLOCATION_PIECES: usize = 1 << 16;

/// The allocation of volume bytes `offset..offset + len`: a region never
/// written reads as zeroes on every member (docs/FORMAT.md §10), so it is
/// a hole that reads as zeroes; the rest is data. Without a map: all data.
pub fn allocation(
    geometry: &Geometry,
    map: Option<&Arc<dyn WrittenRegions>>,
    offset: u64,
    len: u64,
) -> AllocationMap {
    let Some(map) = map else {
        let mut all = AllocationMap::new();
        push_extent(&mut all, len, Allocation::DATA);
        return all;
    };
    // Volume bytes whose member rows fill whole regions (or one row when
    // a chunk is larger than a region).
    let rows = (map.region_size().max(1) / geometry.chunk().get()).max(1);
    let group = geometry.stripe_data_size().saturating_mul(rows);
    let end = offset.saturating_add(len);
    let mut out = AllocationMap::new();
    let mut pos = offset;
    for _ in 0..MAX_ALLOCATION_PIECES {
        if pos >= end {
            break;
        }
        let piece_end = (pos / group + 1).saturating_mul(group).min(end);
        let (a, b) = geometry.member_span(ByteOffset(pos), piece_end - pos);
        let state = match map.is_written(a.get(), b.get()) {
            true => Allocation::DATA,
            false => Allocation::HOLE_ZERO,
        };
        push_extent(&mut out, piece_end - pos, state);
        pos = piece_end;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug)]
    struct Every(u64);

    impl WrittenRegions for Every {
        fn region_size(&self) -> u64 {
            64
        }
        fn is_written(&self, start: u64, _end: u64) -> bool {
            (start / 64).is_multiple_of(self.0)
        }
        fn written_bytes(&self) -> u64 {
            0
        }
    }

    /// Regions of 1 MiB; the listed ones written.
    #[derive(Debug)]
    struct Written(Vec<u64>);

    impl WrittenRegions for Written {
        fn region_size(&self) -> u64 {
            1 << 20
        }
        fn is_written(&self, start: u64, end: u64) -> bool {
            (start >> 20..=(end - 1) >> 20).any(|r| self.0.contains(&r))
        }
        fn written_bytes(&self) -> u64 {
            0
        }
    }

    #[test]
    fn never_written_regions_are_holes_that_read_as_zeroes() {
        use super::super::{ChunkSize, Level};
        let chunk = ChunkSize::new(64 << 10).unwrap();
        let g = Geometry::new(Level::Raid5, 3, chunk, 8 << 20).unwrap();
        let map: Arc<dyn WrittenRegions> = Arc::new(Written(vec![1]));
        let mib = 1u64 << 20;

        let got = allocation(&g, Some(&map), 0, 16 * mib);

        // A member region of 1 MiB holds 2 MiB of a 3-member RAID-5.
        let e = |len, state| crate::block::AllocationExtent { len, state };
        assert_eq!(
            got,
            vec![
                e(2 * mib, Allocation::HOLE_ZERO),
                e(2 * mib, Allocation::DATA),
                e(12 * mib, Allocation::HOLE_ZERO),
            ]
        );
        assert_eq!(
            allocation(&g, Some(&map), 3 * mib, 4096),
            vec![e(4096, Allocation::DATA)]
        );
        assert_eq!(allocation(&g, None, 5, 7), vec![e(7, Allocation::DATA)]);
    }

    #[test]
    fn pieces_cut_at_regions_and_ask_the_map() {
        let map: Arc<dyn WrittenRegions> = Arc::new(Every(2));
        let got: Vec<_> = pieces(Some(&map), 10, 200).collect();
        assert_eq!(
            got,
            vec![
                (10, 64, true),
                (64, 128, false),
                (128, 192, true),
                (192, 200, false)
            ]
        );
        assert_eq!(pieces(None, 5, 9).collect::<Vec<_>>(), vec![(5, 9, true)]);
        assert_eq!(pieces(Some(&map), 9, 9).count(), 0);
    }

    /// Regions of 1 MiB marked by the test where it writes.
    #[derive(Debug, Default)]
    struct Marked(std::sync::Mutex<std::collections::BTreeSet<u64>>);

    impl WrittenRegions for Marked {
        fn region_size(&self) -> u64 {
            1 << 20
        }
        fn is_written(&self, start: u64, end: u64) -> bool {
            let set = self.0.lock().unwrap();
            (start >> 20..=(end - 1) >> 20).any(|r| set.contains(&r))
        }
        fn written_bytes(&self) -> u64 {
            self.0.lock().unwrap().len() as u64 * self.region_size()
        }
    }

    #[tokio::test]
    async fn raid5_rebuild_resync_and_scrub_touch_only_marked_regions() {
        use super::super::rebuild::RebuildControl;
        use super::super::test_support::{pattern, Array, TestDevice};
        use super::super::{Level, MemberIndex};
        use crate::block::{BlockDevice, Durability};
        use crate::units::ByteOffset;

        // Arrange: member 1 missing; whole stripes written in 3 regions.
        let (chunk, member_size) = (64u64 << 10, 16u64 << 20);
        let Array {
            devices, volume, ..
        } = Array::new(Level::Raid5, 4, chunk, member_size, &[1]);
        let map = Arc::new(Marked::default());
        let vol = volume.with_written(map.clone());
        let mut model = vec![0u8; vol.size() as usize];
        for (i, stripe) in [3u64, 40, 41, 200].into_iter().enumerate() {
            let at = stripe * 3 * chunk;
            let data = pattern(3 * chunk as usize, i as u64);
            map.0.lock().unwrap().insert((stripe * chunk) >> 20);
            vol.write(ByteOffset(at), &data, Durability::Normal)
                .await
                .unwrap();
            model[at as usize..][..data.len()].copy_from_slice(&data);
        }
        let written = map.written_bytes();
        assert_eq!(written, 3 << 20);
        let fresh = TestDevice::new("new", member_size);
        vol.attach_rebuild_target(MemberIndex(1), fresh.clone(), 0)
            .unwrap();
        let ctl = RebuildControl::new(0);

        // Act
        let copied = vol
            .rebuild(MemberIndex(1), None, &ctl, &NoSink)
            .await
            .unwrap();
        let last = vol.last_sync().unwrap();
        let resynced = vol
            .resync(vec![(0, member_size)], &ctl, &|_, _| {})
            .await
            .unwrap();
        let resync = vol.last_sync().unwrap();
        let scrub = vol.scrub(false, &ctl, &Default::default()).await;

        // Assert
        assert_eq!(copied, written);
        assert_eq!(last.skipped_bytes, member_size - written);
        assert_eq!(last.done_bytes, member_size);
        assert_eq!(resynced, 0);
        assert_eq!(resync.skipped_bytes, member_size - written);
        assert_eq!(scrub.found(), 0);
        assert_eq!(scrub.skipped_bytes, member_size - written);
        assert_eq!(scrub.bytes_checked, 4 * written);
        let mut whole = vec![0u8; vol.size() as usize];
        vol.read(ByteOffset(0), &mut whole).await.unwrap();
        assert!(whole == model);
        // Member 1 as rebuilt, with another member gone, still reads back.
        drop(vol);
        let mut devs = devices;
        devs[1] = fresh;
        let geometry = super::super::Geometry::new(
            Level::Raid5,
            4,
            super::super::ChunkSize::new(chunk).unwrap(),
            member_size,
        )
        .unwrap();
        let again = Array::over(geometry, devs, &[0]);
        again.volume.read(ByteOffset(0), &mut whole).await.unwrap();
        assert!(whole == model, "the rebuilt member holds the data");
    }

    struct NoSink;

    impl super::super::RebuildSink for NoSink {
        fn checkpoint(
            &self,
            _: super::super::MemberIndex,
            _: u64,
        ) -> crate::block::BoxFuture<'_, Result<(), String>> {
            crate::block::BoxFuture::new(async { Ok(()) })
        }
        fn finished(
            &self,
            _: super::super::MemberIndex,
        ) -> crate::block::BoxFuture<'_, Result<(), String>> {
            crate::block::BoxFuture::new(async { Ok(()) })
        }
    }
}
