//! What the sync passes ask about the written-region map (docs/FORMAT.md
//! §10): which member data regions were ever written. The on-disk map
//! lives in `meta::written`; a volume without one counts everything as
//! written.
//!
//! ```text
//!  pieces(map, a, b) ─► (start, end, written?) per region of a..b
//!  rebuild / resync / scrub: written ─► work; else ─► skipped_bytes
//! ```

use std::sync::Arc;

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
            Box::pin(async { Ok(()) })
        }
        fn finished(
            &self,
            _: super::super::MemberIndex,
        ) -> crate::block::BoxFuture<'_, Result<(), String>> {
            Box::pin(async { Ok(()) })
        }
    }
}
