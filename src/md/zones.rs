//! md's RAID-0 strip zones and linear concatenation, as pure math in
//! 512-byte sectors: where array sector S lives (member role, sector past
//! the member's data offset).
//!
//! ```text
//!  RAID-0 over members of 3, 3 and 5 chunks (md's create_strip_zones):
//!   zone 0: every member, 3 chunks each, striped   array chunks 0..9
//!   zone 1: members larger than 3 chunks (the 5)   array chunks 9..11
//!  in zone z, chunk c (original layout: counted from the array start;
//!  alternate: from the zone start) goes to zone member c mod n, at row
//!  (zone offset div (chunk x n)) past the zone's device start.
//!  linear: members one after another, in role order.
//! ```

/// One strip zone.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Zone {
    /// Array sector where the zone ends.
    end: u64,
    /// Member sector where the zone starts on each of its members.
    dev_start: u64,
    /// Its members (roles), in role order.
    devs: Vec<usize>,
}

/// md's two RAID-0 multi-zone layouts (`RAID0_ORIG_LAYOUT`,
/// `RAID0_ALT_MULTIZONE_LAYOUT`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Raid0Layout {
    Original,
    Alternate,
}

/// A RAID-0 array's zones.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Raid0Map {
    zones: Vec<Zone>,
    chunk: u64,
    layout: Raid0Layout,
}

impl Raid0Map {
    /// From the members' sizes in sectors (by role) and the chunk in
    /// sectors; each size is rounded down to whole chunks as md does.
    /// `None` for a layout of several zones without a multi-zone layout
    /// (md refuses to start those too).
    pub fn new(sizes: &[u64], chunk: u64, layout: Option<Raid0Layout>) -> Option<Raid0Map> {
        let chunk = chunk.max(1);
        let sizes: Vec<u64> = sizes.iter().map(|s| s / chunk * chunk).collect();
        let mut distinct = sizes.clone();
        distinct.sort_unstable();
        distinct.dedup();
        if distinct.len() > 1 && layout.is_none() {
            return None;
        }
        let mut zones = Vec::with_capacity(distinct.len());
        let (mut end, mut start) = (0u64, 0u64);
        for &size in distinct.iter().filter(|s| **s > 0) {
            let devs: Vec<usize> = (0..sizes.len()).filter(|&d| sizes[d] > start).collect();
            end += (size - start) * devs.len() as u64;
            zones.push(Zone {
                end,
                dev_start: start,
                devs,
            });
            start = size;
        }
        Some(Raid0Map {
            zones,
            chunk,
            layout: layout.unwrap_or(Raid0Layout::Alternate),
        })
    }

    /// Array size in sectors.
    pub fn sectors(&self) -> u64 {
        self.zones.last().map_or(0, |z| z.end)
    }

    /// (role, member sector) of array sector `sector` (below `sectors()`).
    pub fn map(&self, sector: u64) -> (usize, u64) {
        let i = self
            .zones
            .iter()
            .position(|z| sector < z.end)
            .unwrap_or(self.zones.len().saturating_sub(1));
        let zone = &self.zones[i];
        let in_zone = sector - if i == 0 { 0 } else { self.zones[i - 1].end };
        let key = match self.layout {
            Raid0Layout::Original => sector,
            Raid0Layout::Alternate => in_zone,
        };
        let n = zone.devs.len() as u64;
        let dev = zone.devs[((key / self.chunk) % n) as usize];
        let row = in_zone / (self.chunk * n);
        (dev, zone.dev_start + row * self.chunk + key % self.chunk)
    }

    /// Sectors left in the chunk holding array sector `sector`.
    pub fn chunk_left(&self, sector: u64) -> u64 {
        self.chunk - sector % self.chunk
    }
}

/// md linear: members one after another, in role order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LinearMap {
    /// Array sector where each member ends.
    ends: Vec<u64>,
}

impl LinearMap {
    /// From the members' sizes in sectors, rounded down to `chunk` sectors
    /// when md's `chunk_sectors` is set.
    pub fn new(sizes: &[u64], chunk: u64) -> LinearMap {
        let mut end = 0;
        let ends = sizes
            .iter()
            .map(|s| {
                end += s.checked_div(chunk).map_or(*s, |c| c * chunk);
                end
            })
            .collect();
        LinearMap { ends }
    }

    pub fn sectors(&self) -> u64 {
        self.ends.last().copied().unwrap_or(0)
    }

    /// (role, member sector, sectors left on that member) of `sector`.
    pub fn map(&self, sector: u64) -> (usize, u64, u64) {
        let i = self
            .ends
            .iter()
            .position(|e| sector < *e)
            .unwrap_or(self.ends.len().saturating_sub(1));
        let start = if i == 0 { 0 } else { self.ends[i - 1] };
        (i, sector - start, self.ends[i].saturating_sub(sector))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// Every array sector lands on a distinct member sector inside that
        /// member's chunk-rounded size, and the array uses all of them.
        #[test]
        fn raid0_zones_map_the_array_one_to_one_onto_the_members(
            chunks in prop::collection::vec(0u64..12, 1..6),
            extra in 0u64..8, alt in any::<bool>(),
        ) {
            let chunk = 8;
            let sizes: Vec<u64> = chunks.iter().map(|c| c * chunk + extra).collect();
            let layout = if alt { Raid0Layout::Alternate } else { Raid0Layout::Original };
            let m = Raid0Map::new(&sizes, chunk, Some(layout)).unwrap();
            prop_assert_eq!(m.sectors(), chunks.iter().sum::<u64>() * chunk);
            let mut seen = std::collections::HashSet::new();
            for s in 0..m.sectors() {
                let (dev, at) = m.map(s);
                prop_assert!(at < chunks[dev] * chunk, "sector {} -> {} {}", s, dev, at);
                prop_assert!(seen.insert((dev, at)), "sector {} maps twice", s);
            }
        }
    }

    #[test]
    fn one_zone_stripes_chunks_over_every_member() {
        let m = Raid0Map::new(&[100, 100, 100], 8, None).unwrap();
        assert_eq!(m.sectors(), 96 * 3);
        assert_eq!(m.map(0), (0, 0));
        assert_eq!(m.map(8), (1, 0));
        assert_eq!(m.map(16 + 3), (2, 3));
        assert_eq!(m.map(24), (0, 8));
    }

    #[test]
    fn second_zone_uses_only_the_larger_members_in_either_layout() {
        // Members of 3, 5 and 3 chunks of 8 sectors.
        let alt = Raid0Map::new(&[24, 40, 24], 8, Some(Raid0Layout::Alternate)).unwrap();
        assert_eq!(alt.sectors(), 72 + 16);
        assert_eq!(alt.map(72), (1, 24));
        assert_eq!(alt.map(80), (1, 32));
        // Original: the chunk number counts from the array start (chunk 9
        // of a one-member zone is still on its only member).
        let orig = Raid0Map::new(&[24, 40, 24], 8, Some(Raid0Layout::Original)).unwrap();
        assert_eq!(orig.map(72), (1, 24));
        let two = Raid0Map::new(&[24, 40, 40], 8, Some(Raid0Layout::Original)).unwrap();
        // Zone 1 = members 1 and 2; array chunk 9 is odd: original picks
        // member 2 first, alternate member 1.
        assert_eq!(two.map(72).0, 2);
        let two_alt = Raid0Map::new(&[24, 40, 40], 8, Some(Raid0Layout::Alternate)).unwrap();
        assert_eq!(two_alt.map(72).0, 1);
        assert!(Raid0Map::new(&[24, 40], 8, None).is_none());
    }

    #[test]
    fn linear_concatenates_members_in_role_order() {
        let l = LinearMap::new(&[100, 50], 8);
        assert_eq!(l.sectors(), 96 + 48);
        assert_eq!(l.map(95), (0, 95, 1));
        assert_eq!(l.map(96), (1, 0, 48));
    }
}
