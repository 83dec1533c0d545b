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
}
