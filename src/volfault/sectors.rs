//! The bad sectors of one `bad-sector` rule (as dm-dust keeps them): a set
//! of 512-byte sectors held as disjoint byte ranges, so a rule over a
//! whole volume costs one entry; a write removes the sectors it touches.

use std::collections::BTreeMap;

/// Sector size of bad-sector rules.
pub const SECTOR: u64 = 512;

/// Disjoint, sector-aligned byte ranges `start -> end`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SectorSet(BTreeMap<u64, u64>);

impl SectorSet {
    /// The sectors touching `[start, end)` (clamped to `size`).
    pub fn covering(start: u64, end: u64, size: u64) -> SectorSet {
        let (a, b) = outward(start, end.min(size));
        let mut set = SectorSet::default();
        if a < b {
            set.0.insert(a, b);
        }
        set
    }

    /// True when no sector is left.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Bad bytes left (a multiple of [`SECTOR`]).
    pub fn bytes(&self) -> u64 {
        self.0.iter().map(|(a, b)| b - a).sum()
    }

    /// True when `[offset, offset + len)` touches a bad sector.
    pub fn overlaps(&self, offset: u64, len: u64) -> bool {
        let end = offset.saturating_add(len.max(1));
        self.0
            .range(..end)
            .next_back()
            .is_some_and(|(_, &b)| b > offset)
    }

    /// Heals the sectors `[offset, offset + len)` touches.
    pub fn heal(&mut self, offset: u64, len: u64) {
        let (a, b) = outward(offset, offset.saturating_add(len));
        if a >= b {
            return;
        }
        let hit: Vec<(u64, u64)> = self
            .0
            .range(..b)
            .filter(|(_, &e)| e > a)
            .map(|(&s, &e)| (s, e))
            .collect();
        for (s, e) in hit {
            self.0.remove(&s);
            if s < a {
                self.0.insert(s, a);
            }
            if e > b {
                self.0.insert(b, e);
            }
        }
    }
}

/// `[start, end)` widened to whole sectors.
fn outward(start: u64, end: u64) -> (u64, u64) {
    let a = start / SECTOR * SECTOR;
    let b = end.div_ceil(SECTOR).saturating_mul(SECTOR);
    (a, b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_write_heals_only_the_sectors_it_touches() {
        // Arrange
        let mut set = SectorSet::covering(4096, 8192, 1 << 20);
        // Act
        set.heal(4096 + 600, 100);
        // Assert
        assert!(set.overlaps(4096, 512));
        assert!(!set.overlaps(4096 + 512, 512));
        assert!(set.overlaps(4096 + 1024, 1));
        assert_eq!(set.bytes(), 4096 - 512);
    }

    #[test]
    fn a_rule_to_the_end_is_clamped_to_the_volume() {
        let set = SectorSet::covering(1000, u64::MAX, 1 << 20);
        assert_eq!(set.bytes(), (1 << 20) - 512);
        assert!(!set.overlaps(0, 512));
        assert!(set.overlaps(511, 2));
    }
}
