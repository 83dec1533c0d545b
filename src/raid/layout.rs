//! Pure RAID address math: no I/O, no allocation on the mapping path.
//!
//! A volume byte range is split into per-member [`Extent`]s, one per chunk it
//! touches, in volume order:
//!
//! ```text
//!  volume  [ c0 | c1 | c2 | c3 | c4 | c5 ... ]      RAID-5, 4 members, left-symmetric
//!  stripe 0: m0=c0  m1=c1  m2=c2  m3=P
//!  stripe 1: m0=c4  m1=c5  m2=P   m3=c3
//!  stripe 2: m0=c8  m1=P   m2=c6  m3=c7
//!  stripe 3: m0=P   m1=c9  m2=c10 m3=c11
//! ```
//!
//! RAID-0 stripes chunks round-robin over all members; RAID-5 uses md's
//! default left-symmetric layout (parity member `(n-1) - (s mod n)`, data
//! chunk `d` on member `(parity + 1 + d) mod n`); RAID-6 uses md's default
//! left-symmetric layout too (`layout = 2`: P on `(n-1) - (s mod n)`, Q on
//! the member after it, data chunk `d` on `(P + 2 + d) mod n`, so data chunk
//! `d` is Q-syndrome slot `d`, as md's `raid6_idx_to_slot` counts); RAID-1
//! maps every byte to the same offset on every mirror (extents name member 0).

use std::fmt;

use super::raid10_layout::Raid10Map;
use super::Level;
use crate::units::ByteOffset;

/// Errors building a [`Geometry`] or [`ChunkSize`].
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum LayoutError {
    /// The chunk size is not a power of two between 4 KiB and 16 MiB.
    #[error("invalid chunk size {0}: expected a power of two from 4 KiB to 16 MiB")]
    ChunkSize(u64),
    /// Too few (or absurdly many) members for the level.
    #[error("{level} needs at least {min} members (and at most {MAX_MEMBERS}), got {got}")]
    MemberCount {
        /// The level.
        level: Level,
        /// Its minimum.
        min: usize,
        /// What was given.
        got: usize,
    },
    /// The member data area holds less than one chunk.
    #[error("member data size {size} is smaller than one chunk of {chunk}")]
    TooSmall {
        /// Given member data size.
        size: u64,
        /// Chunk size.
        chunk: u64,
    },
    /// The volume size does not fit in 64 bits.
    #[error("volume size overflows")]
    Overflow,
    /// md's RAID-10 placement refused the shape for these members.
    #[error("RAID-10: {0}")]
    Raid10(#[from] super::raid10_layout::Raid10Error),
}

/// Most members an array may have.
pub const MAX_MEMBERS: usize = 256;

/// Index of a member in the array (its role / slot).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct MemberIndex(pub usize);

/// Index of a stripe (one chunk row across all members).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct StripeIndex(pub u64);

/// Index of a RAID-1 lock region (a fixed span of every mirror; RAID-1 has
/// no stripes).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RegionIndex(pub u64);

impl fmt::Display for MemberIndex {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "member {}", self.0)
    }
}

/// A chunk size: a power of two from 4 KiB to 16 MiB.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ChunkSize(u64);

impl ChunkSize {
    /// Smallest chunk.
    pub const MIN: u64 = 4 << 10;
    /// Largest chunk.
    pub const MAX: u64 = 16 << 20;

    /// Validates `bytes`.
    pub fn new(bytes: u64) -> Result<ChunkSize, LayoutError> {
        if bytes.is_power_of_two() && (Self::MIN..=Self::MAX).contains(&bytes) {
            Ok(ChunkSize(bytes))
        } else {
            Err(LayoutError::ChunkSize(bytes))
        }
    }

    /// Size in bytes.
    pub const fn get(self) -> u64 {
        self.0
    }
}

/// The shape of an array: level, member count, chunk and per-member data size.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Geometry {
    level: Level,
    members: usize,
    chunk: ChunkSize,
    member_data_size: u64,
    /// Where RAID-10 keeps the copies of each chunk.
    raid10: Option<Raid10Map>,
}

/// One contiguous piece of a volume range on one member, never crossing a chunk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Extent {
    /// Member holding the bytes (member 0 for RAID-1: every mirror holds them).
    pub member: MemberIndex,
    /// Offset on the member's data area.
    pub member_offset: ByteOffset,
    /// Offset in the volume.
    pub volume_offset: ByteOffset,
    /// Length in bytes.
    pub len: u64,
    /// Stripe the bytes belong to.
    pub stripe: StripeIndex,
    /// Data chunk index within the stripe (0 for RAID-1).
    pub data_index: usize,
}

/// What a member byte holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MemberByte {
    /// Data of this volume offset.
    Data(ByteOffset),
    /// Parity (RAID-5 parity, RAID-6 P) of this stripe.
    Parity(StripeIndex),
    /// RAID-6 Q syndrome of this stripe.
    Q(StripeIndex),
}

impl Geometry {
    /// Validates and builds a geometry. For striped levels the member data
    /// size is rounded down to a whole number of chunks.
    pub fn new(
        level: Level,
        members: usize,
        chunk: ChunkSize,
        member_data_size: u64,
    ) -> Result<Geometry, LayoutError> {
        if members < level.min_members() || members > MAX_MEMBERS {
            return Err(LayoutError::MemberCount {
                level,
                min: level.min_members(),
                got: members,
            });
        }
        let size = match level {
            Level::Raid1 => member_data_size,
            Level::Raid0 | Level::Raid5 | Level::Raid6 | Level::Raid10(_) => {
                member_data_size - member_data_size % chunk.get()
            }
        };
        if size < chunk.get() {
            return Err(LayoutError::TooSmall {
                size: member_data_size,
                chunk: chunk.get(),
            });
        }
        let raid10 = match level {
            Level::Raid10(shape) => Some(Raid10Map::new(
                shape,
                members,
                chunk.get(),
                size / chunk.get(),
            )?),
            _ => None,
        };
        let geometry = Geometry {
            level,
            members,
            chunk,
            member_data_size: size,
            raid10,
        };
        size.checked_mul(geometry.data_members() as u64)
            .ok_or(LayoutError::Overflow)?;
        Ok(geometry)
    }

    /// The level.
    pub fn level(&self) -> Level {
        self.level
    }

    /// Number of members (including missing ones).
    pub fn members(&self) -> usize {
        self.members
    }

    /// Chunk size.
    pub fn chunk(&self) -> ChunkSize {
        self.chunk
    }

    /// Bytes used on each member's data area.
    pub fn member_data_size(&self) -> u64 {
        self.member_data_size
    }

    /// Data chunks per stripe (1 for RAID-1 and RAID-10, whose "stripe"
    /// is one chunk).
    pub fn data_members(&self) -> usize {
        match self.level {
            Level::Raid0 => self.members,
            Level::Raid1 | Level::Raid10(_) => 1,
            Level::Raid5 => self.members - 1,
            Level::Raid6 => self.members - 2,
        }
    }

    /// The member range (data-area offsets) a write of volume range
    /// `offset..+len` (`len > 0`) touches on the members, for the
    /// write-intent bitmap: whole chunk rows for striped levels.
    pub fn member_span(&self, offset: ByteOffset, len: u64) -> (ByteOffset, ByteOffset) {
        match self.level {
            Level::Raid5 | Level::Raid6 | Level::Raid0 => {
                let sds = self.stripe_data_size();
                let chunk = self.chunk.get();
                let first = offset.get() / sds;
                let last = (offset.get() + len - 1) / sds;
                (ByteOffset(first * chunk), ByteOffset((last + 1) * chunk))
            }
            Level::Raid1 => (offset, ByteOffset(offset.get() + len)),
            Level::Raid10(_) => self.raid10_span(offset, len),
        }
    }

    /// Usable size of the volume.
    pub fn volume_size(&self) -> u64 {
        match &self.raid10 {
            Some(map) => map.chunks() * self.chunk.get(),
            None => self.member_data_size * self.data_members() as u64,
        }
    }

    /// Data bytes in one stripe.
    pub fn stripe_data_size(&self) -> u64 {
        self.chunk.get() * self.data_members() as u64
    }

    /// Number of stripes (chunk rows) on the array.
    pub fn stripe_count(&self) -> u64 {
        self.member_data_size / self.chunk.get()
    }

    /// Member holding the parity of `stripe` (RAID-5), or its P (RAID-6).
    pub fn parity_member(&self, stripe: StripeIndex) -> Option<MemberIndex> {
        match self.level {
            Level::Raid5 | Level::Raid6 => {
                let n = self.members as u64;
                Some(MemberIndex((n - 1 - stripe.0 % n) as usize))
            }
            Level::Raid0 | Level::Raid1 | Level::Raid10(_) => None,
        }
    }

    /// Member holding the Q syndrome of `stripe` (RAID-6 only): the one
    /// after P.
    pub fn q_member(&self, stripe: StripeIndex) -> Option<MemberIndex> {
        match (self.level, self.parity_member(stripe)) {
            (Level::Raid6, Some(p)) => Some(MemberIndex((p.0 + 1) % self.members)),
            _ => None,
        }
    }

    /// Parity members before the data of a stripe (1 for RAID-5, 2 for
    /// RAID-6 whose Q follows P).
    fn parity_width(&self) -> usize {
        match self.level {
            Level::Raid6 => 2,
            _ => 1,
        }
    }

    /// Member holding data chunk `data_index` of `stripe`.
    pub fn data_member(&self, stripe: StripeIndex, data_index: usize) -> MemberIndex {
        match self.parity_member(stripe) {
            Some(p) => MemberIndex((p.0 + self.parity_width() + data_index) % self.members),
            None if self.level == Level::Raid1 => MemberIndex(0),
            None => MemberIndex(data_index),
        }
    }

    /// Data chunk index that `member` holds in `stripe`; `None` for parity.
    pub fn data_index(&self, stripe: StripeIndex, member: MemberIndex) -> Option<usize> {
        match self.parity_member(stripe) {
            Some(p) if p == member => None,
            Some(_) if self.q_member(stripe) == Some(member) => None,
            Some(p) => Some((member.0 + self.members - p.0 - self.parity_width()) % self.members),
            None => Some(member.0),
        }
    }

    /// Splits `[offset, offset + len)` into extents, in volume order. The
    /// range is clamped to the volume: callers check it first.
    pub fn extents(&self, offset: ByteOffset, len: u64) -> Extents<'_> {
        let size = self.volume_size();
        let start = offset.get().min(size);
        let end = offset.get().saturating_add(len).min(size);
        Extents {
            geometry: self,
            pos: start,
            end,
        }
    }

    /// Maps one volume offset (must be inside the volume) to its extent of
    /// at most `max_len` bytes.
    fn extent_at(&self, volume_offset: u64, max_len: u64) -> Extent {
        if let Some(map) = &self.raid10 {
            return self.raid10_extent(map, volume_offset, max_len);
        }
        if self.level == Level::Raid1 {
            return Extent {
                member: MemberIndex(0),
                member_offset: ByteOffset(volume_offset),
                volume_offset: ByteOffset(volume_offset),
                len: max_len,
                stripe: StripeIndex(0),
                data_index: 0,
            };
        }
        let chunk = self.chunk.get();
        let stripe = StripeIndex(volume_offset / self.stripe_data_size());
        let in_stripe = volume_offset % self.stripe_data_size();
        let data_index = (in_stripe / chunk) as usize;
        let in_chunk = in_stripe % chunk;
        Extent {
            member: self.data_member(stripe, data_index),
            member_offset: ByteOffset(stripe.0 * chunk + in_chunk),
            volume_offset: ByteOffset(volume_offset),
            len: max_len.min(chunk - in_chunk),
            stripe,
            data_index,
        }
    }

    /// Inverse mapping: what `member_offset` on `member` holds, or `None`
    /// when outside the data area or the array.
    pub fn locate(&self, member: MemberIndex, member_offset: ByteOffset) -> Option<MemberByte> {
        let off = member_offset.get();
        if member.0 >= self.members || off >= self.member_data_size {
            return None;
        }
        if self.level == Level::Raid1 {
            return Some(MemberByte::Data(member_offset));
        }
        let chunk = self.chunk.get();
        if let Some(map) = &self.raid10 {
            let v = map.chunk_at(member, off / chunk)?;
            return Some(MemberByte::Data(ByteOffset(v * chunk + off % chunk)));
        }
        let stripe = StripeIndex(off / chunk);
        let data_index = match self.data_index(stripe, member) {
            None if self.q_member(stripe) == Some(member) => return Some(MemberByte::Q(stripe)),
            None => return Some(MemberByte::Parity(stripe)),
            Some(d) => d as u64,
        };
        Some(MemberByte::Data(ByteOffset(
            stripe.0 * self.stripe_data_size() + data_index * chunk + off % chunk,
        )))
    }
}

/// RAID-10 (`raid10_layout.rs`): each volume chunk has whole-row copies.
impl Geometry {
    /// The RAID-10 chunk map (`None` for the other levels).
    pub fn raid10(&self) -> Option<&Raid10Map> {
        self.raid10.as_ref()
    }

    /// True when the data stays available with the members in `down`
    /// missing (by index): RAID-10 when every chunk keeps a copy, the
    /// other levels while no more are down than their redundancy.
    pub fn tolerates(&self, down: &[bool]) -> bool {
        match &self.raid10 {
            Some(map) => map.survives(down),
            None => {
                let n = down.iter().filter(|&&d| d).count();
                n <= self.level.redundancy(self.members)
            }
        }
    }

    /// The extent of a volume offset on its chunk's first copy.
    fn raid10_extent(&self, map: &Raid10Map, volume_offset: u64, max_len: u64) -> Extent {
        let chunk = self.chunk.get();
        let in_chunk = volume_offset % chunk;
        let first = map.copies(volume_offset / chunk)[0];
        Extent {
            member: first.member,
            member_offset: ByteOffset(first.row * chunk + in_chunk),
            volume_offset: ByteOffset(volume_offset),
            len: max_len.min(chunk - in_chunk),
            stripe: StripeIndex(first.row),
            data_index: 0,
        }
    }

    /// The member rows every copy of the chunks of `offset..+len` lies
    /// in, first to last (for far layouts a wide span: the bitmap marks
    /// the regions between too).
    fn raid10_span(&self, offset: ByteOffset, len: u64) -> (ByteOffset, ByteOffset) {
        let chunk = self.chunk.get();
        let (first, last) = (offset.get() / chunk, (offset.get() + len - 1) / chunk);
        let (mut lo, mut hi) = (u64::MAX, 0);
        if let Some(map) = &self.raid10 {
            for c in first..=last.min(map.chunks().saturating_sub(1)) {
                for k in map.copies(c) {
                    lo = lo.min(k.row);
                    hi = hi.max(k.row + 1);
                }
            }
        }
        (ByteOffset(lo.min(hi) * chunk), ByteOffset(hi * chunk))
    }
}

/// A volume range cut at stripe boundaries: a partial head, whole stripes,
/// a partial tail (either partial part may be empty).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StripeSplit {
    /// Leading partial-stripe range (offset, len).
    pub head: (ByteOffset, u64),
    /// First whole stripe and how many whole stripes follow.
    pub full: (StripeIndex, u64),
    /// Trailing partial-stripe range (offset, len).
    pub tail: (ByteOffset, u64),
}

impl Geometry {
    /// Cuts `[offset, offset + len)` into head, whole stripes and tail.
    /// For RAID-1 a "stripe" is one chunk of the volume.
    pub fn split_stripes(&self, offset: ByteOffset, len: u64) -> StripeSplit {
        let sds = self.stripe_data_size();
        let (a, b) = (offset.get(), offset.get().saturating_add(len));
        let first = a.div_ceil(sds);
        let end = b / sds;
        if first >= end {
            return StripeSplit {
                head: (offset, len),
                full: (StripeIndex(first), 0),
                tail: (ByteOffset(b), 0),
            };
        }
        StripeSplit {
            head: (offset, first * sds - a),
            full: (StripeIndex(first), end - first),
            tail: (ByteOffset(end * sds), b - end * sds),
        }
    }
}

/// Iterator over the extents of a volume range (see [`Geometry::extents`]).
#[derive(Debug, Clone)]
pub struct Extents<'a> {
    geometry: &'a Geometry,
    pos: u64,
    end: u64,
}

impl Iterator for Extents<'_> {
    type Item = Extent;

    fn next(&mut self) -> Option<Extent> {
        if self.pos >= self.end {
            return None;
        }
        let extent = self.geometry.extent_at(self.pos, self.end - self.pos);
        self.pos += extent.len;
        Some(extent)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const K4: u64 = 4096;

    fn geometry_strategy() -> impl Strategy<Value = Geometry> {
        (
            prop_oneof![
                Just(Level::Raid0),
                Just(Level::Raid1),
                Just(Level::Raid5),
                Just(Level::Raid6)
            ],
            2usize..=8,
            0u32..3,
            1u64..6,
            0u64..K4,
        )
            .prop_filter_map("too few members", |(level, n, shift, chunks, extra)| {
                let chunk = ChunkSize::new(K4 << shift).ok()?;
                Geometry::new(level, n, chunk, chunks * chunk.get() + extra).ok()
            })
    }

    #[test]
    fn chunk_size_accepts_only_powers_of_two_in_range() {
        assert!(ChunkSize::new(4096).is_ok());
        assert!(ChunkSize::new(16 << 20).is_ok());
        assert_eq!(ChunkSize::new(2048), Err(LayoutError::ChunkSize(2048)));
        assert!(ChunkSize::new(32 << 20).is_err());
        assert!(ChunkSize::new(12288).is_err());
        assert!(ChunkSize::new(0).is_err());
    }

    #[test]
    fn geometry_rounds_striped_member_size_down_to_chunks() {
        let chunk = ChunkSize::new(K4).unwrap();
        let g = Geometry::new(Level::Raid5, 3, chunk, 3 * K4 + 100).unwrap();
        assert_eq!(g.member_data_size(), 3 * K4);
        assert_eq!(g.volume_size(), 6 * K4);
        let g = Geometry::new(Level::Raid1, 2, chunk, 3 * K4 + 100).unwrap();
        assert_eq!(g.volume_size(), 3 * K4 + 100);
    }

    #[test]
    fn geometry_refuses_too_few_members_and_tiny_members() {
        let chunk = ChunkSize::new(K4).unwrap();
        assert!(matches!(
            Geometry::new(Level::Raid5, 2, chunk, 1 << 20),
            Err(LayoutError::MemberCount { .. })
        ));
        assert!(matches!(
            Geometry::new(Level::Raid0, 2, chunk, K4 - 1),
            Err(LayoutError::TooSmall { .. })
        ));
        assert!(Geometry::new(Level::Raid0, 2, chunk, u64::MAX).is_err());
    }

    /// md's left-symmetric table for 4 members (drivers/md/raid5.c,
    /// ALGORITHM_LEFT_SYMMETRIC): row = stripe, entry = what each member holds
    /// (`P` parity, otherwise the data chunk number within the volume).
    #[test]
    fn raid5_four_members_match_md_left_symmetric_table() {
        const P: i64 = -1;
        let table: [[i64; 4]; 5] = [
            [0, 1, 2, P],
            [4, 5, P, 3],
            [8, P, 6, 7],
            [P, 9, 10, 11],
            [12, 13, 14, P],
        ];
        let chunk = ChunkSize::new(K4).unwrap();
        let g = Geometry::new(Level::Raid5, 4, chunk, 5 * K4).unwrap();
        for (s, row) in table.iter().enumerate() {
            for (m, &want) in row.iter().enumerate() {
                let got = g.locate(MemberIndex(m), ByteOffset(s as u64 * K4));
                let want = if want == P {
                    MemberByte::Parity(StripeIndex(s as u64))
                } else {
                    MemberByte::Data(ByteOffset(want as u64 * K4))
                };
                assert_eq!(got, Some(want), "stripe {s} member {m}");
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        #[test]
        fn split_stripes_partitions_the_range(g in geometry_strategy(), a in 0u64..1 << 20, len in 0u64..1 << 20) {
            let sp = g.split_stripes(ByteOffset(a), len);
            let sds = g.stripe_data_size();
            prop_assert_eq!(sp.head.0.get(), a);
            let full_start = sp.head.0.get() + sp.head.1;
            if sp.full.1 > 0 {
                prop_assert_eq!(full_start, sp.full.0 .0 * sds);
                prop_assert!(sp.head.1 < sds && sp.tail.1 < sds);
            }
            let full_end = full_start + sp.full.1 * sds;
            prop_assert_eq!(sp.tail.0.get(), full_end);
            prop_assert_eq!(sp.tail.0.get() + sp.tail.1, a + len);
        }

        #[test]
        fn every_volume_byte_maps_to_one_member_byte_and_back(g in geometry_strategy()) {
            let step = 509; // prime: lands on varied in-chunk offsets
            let mut seen = std::collections::HashSet::new();
            let mut v = 0;
            while v < g.volume_size() {
                let e = g.extents(ByteOffset(v), 1).next().unwrap();
                prop_assert_eq!(e.len, 1);
                prop_assert!(e.member_offset.get() < g.member_data_size());
                prop_assert!(seen.insert((e.member, e.member_offset)));
                prop_assert_eq!(g.locate(e.member, e.member_offset), Some(MemberByte::Data(ByteOffset(v))));
                v += step;
            }
        }

        #[test]
        fn every_member_byte_is_data_or_parity_consistently(g in geometry_strategy()) {
            let mut data = 0u64;
            for m in 0..g.members() {
                let mut off = 0;
                while off < g.member_data_size() {
                    match g.locate(MemberIndex(m), ByteOffset(off)).unwrap() {
                        MemberByte::Data(v) => {
                            data += 1;
                            prop_assert!(v.get() < g.volume_size());
                            if g.level() != Level::Raid1 {
                                let e = g.extents(v, 1).next().unwrap();
                                prop_assert_eq!((e.member, e.member_offset), (MemberIndex(m), ByteOffset(off)));
                            }
                        }
                        MemberByte::Parity(s) => {
                            prop_assert_eq!(s.0, off / g.chunk().get());
                            prop_assert_eq!(g.parity_member(s), Some(MemberIndex(m)));
                        }
                        MemberByte::Q(s) => {
                            prop_assert_eq!(s.0, off / g.chunk().get());
                            prop_assert_eq!(g.q_member(s), Some(MemberIndex(m)));
                        }
                    }
                    off += 1021;
                }
            }
            prop_assert!(data > 0);
        }

        #[test]
        fn raid5_parity_rotates_left_symmetric(n in 3usize..=8, s in 0u64..1000) {
            let chunk = ChunkSize::new(K4).unwrap();
            let g = Geometry::new(Level::Raid5, n, chunk, 1000 * K4).unwrap();
            let p = g.parity_member(StripeIndex(s)).unwrap();
            prop_assert_eq!(p.0 as u64, (n as u64 - 1) - s % n as u64);
            let mut members: Vec<usize> = (0..n - 1).map(|d| g.data_member(StripeIndex(s), d).0).collect();
            prop_assert_eq!(members[0], (p.0 + 1) % n);
            members.push(p.0);
            members.sort_unstable();
            prop_assert_eq!(members, (0..n).collect::<Vec<_>>());
        }

        /// Our RAID-6 placement is md's left-symmetric (layout 2), P, Q and
        /// every data chunk, and data index `d` is md's Q slot `d`.
        #[test]
        fn raid6_layout_is_md_left_symmetric(n in 4usize..=16, s in 0u64..10_000) {
            let chunk = ChunkSize::new(K4).unwrap();
            let g = Geometry::new(Level::Raid6, n, chunk, 10_000 * K4).unwrap();
            let md = super::super::md_layout::ParityLayout::new(6, n, 2).unwrap();
            prop_assert_eq!(g.data_members(), md.data_disks());
            let roles = md.roles(s);
            prop_assert_eq!(g.parity_member(StripeIndex(s)), Some(MemberIndex(roles.p)));
            prop_assert_eq!(g.q_member(StripeIndex(s)), roles.q.map(MemberIndex));
            for d in 0..g.data_members() {
                let m = g.data_member(StripeIndex(s), d);
                prop_assert_eq!(m.0, md.data_disk(s, d));
                prop_assert_eq!(g.data_index(StripeIndex(s), m), Some(d));
                prop_assert_eq!(md.q_slot(s, m.0), Some(d));
                let chunk_no = s * g.data_members() as u64 + d as u64;
                prop_assert_eq!(md.locate(chunk_no), (s, m.0));
            }
            for m in [roles.p, roles.q.unwrap()] {
                prop_assert_eq!(g.data_index(StripeIndex(s), MemberIndex(m)), None);
            }
        }

        #[test]
        fn extents_cover_the_request_exactly_in_order(
            g in geometry_strategy(), a in any::<u64>(), b in any::<u64>()
        ) {
            let size = g.volume_size();
            let (start, end) = { let x = a % (size + 1); let y = b % (size + 1); (x.min(y), x.max(y)) };
            let mut pos = start;
            for e in g.extents(ByteOffset(start), end - start) {
                prop_assert_eq!(e.volume_offset.get(), pos);
                prop_assert!(e.len > 0);
                if g.level() != Level::Raid1 {
                    let c = g.chunk().get();
                    prop_assert!(e.member_offset.get() % c + e.len <= c, "extent crosses a chunk");
                }
                prop_assert_eq!(g.locate(e.member, e.member_offset), Some(MemberByte::Data(e.volume_offset)));
                pos += e.len;
            }
            prop_assert_eq!(pos, end);
        }
    }
}
