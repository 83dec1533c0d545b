//! RAID-10 shape and map: names and numbers, and the map against md's own
//! formulas (`md_layout::Raid10Layout`, which `vraid serve --md` uses).

use super::*;
use crate::raid::layout::{ChunkSize, Geometry, MemberByte};
use crate::raid::md_layout::Replica;
use crate::raid::Level;
use crate::units::ByteOffset;
use proptest::prelude::*;

const SHAPES: [&str; 6] = ["n2", "n3", "f2", "f3", "o2", "o3"];

#[test]
fn shape_names_round_trip_through_mds_layout_numbers() {
    let codes = [0x102, 0x103, 0x201, 0x301, 0x10201, 0x10301];
    for (name, code) in SHAPES.iter().zip(codes) {
        let s: Raid10Shape = name.parse().unwrap();
        assert_eq!(s.code(), code, "{name}");
        assert_eq!(s.to_string(), *name);
        assert_eq!(Raid10Shape::from_code(code), Ok(s));
    }
    assert_eq!(Raid10Shape::default(), "n2".parse().unwrap());
}

#[test]
fn unknown_shapes_and_numbers_are_refused() {
    for bad in ["", "n", "n1", "n4", "x2", "f22", "2n"] {
        assert!(bad.parse::<Raid10Shape>().is_err(), "{bad}");
    }
    for code in [0, 0x101, 0x202, 0x104, 0x20102, 0x1_0102] {
        assert!(Raid10Shape::from_code(code).is_err(), "{code:#x}");
    }
}

#[test]
fn n2_over_3_members_places_chunks_as_mds_picture() {
    // md(4): A on dev0+dev1, B on dev2 and dev0 one row down, C dev1+dev2.
    let map = Raid10Map::new(Raid10Shape::N2, 3, 4096, 10).unwrap();
    let copy = |m, row| ChunkCopy {
        member: MemberIndex(m),
        row,
    };
    assert_eq!(map.copies(0), vec![copy(0, 0), copy(1, 0)]);
    assert_eq!(map.copies(1), vec![copy(2, 0), copy(0, 1)]);
    assert_eq!(map.copies(2), vec![copy(1, 1), copy(2, 1)]);
    assert_eq!(map.chunks(), 15);
}

#[test]
fn n2_over_4_survives_one_failure_per_pair_but_not_a_whole_pair() {
    let map = Raid10Map::new(Raid10Shape::N2, 4, 4096, 16).unwrap();
    assert!(map.survives(&[true, false, true, false]));
    assert!(map.survives(&[false, true, false, true]));
    assert!(!map.survives(&[true, true, false, false]));
    assert!(!map.survives(&[false, false, true, true]));
}

fn shape() -> impl Strategy<Value = Raid10Shape> {
    prop::sample::select(SHAPES.to_vec()).prop_map(|s| s.parse().unwrap())
}

fn map_case() -> impl Strategy<Value = (Raid10Shape, usize, u64, u64)> {
    (shape(), 2usize..9, 0u32..3, 1u64..40).prop_filter_map(
        "too few members for the copies",
        |(shape, members, shift, rows)| {
            let chunk = 4096u64 << shift;
            Raid10Map::new(shape, members, chunk, rows)
                .ok()
                .map(|_| (shape, members, chunk, rows))
        },
    )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    /// Every chunk has `copies` copies on distinct members, every used row
    /// holds exactly one chunk's copy (the map is a bijection between
    /// chunk copies and used rows), and `chunk_at` inverts `copies`.
    #[test]
    fn copies_are_distinct_and_every_used_row_holds_one_copy((shape, members, chunk, rows) in map_case()) {
        let map = Raid10Map::new(shape, members, chunk, rows).unwrap();
        let mut seen = std::collections::HashSet::new();
        for c in 0..map.chunks() {
            let copies = map.copies(c);
            prop_assert_eq!(copies.len(), shape.copies());
            let mut on: Vec<usize> = copies.iter().map(|k| k.member.0).collect();
            on.sort_unstable();
            on.dedup();
            prop_assert_eq!(on.len(), shape.copies(), "chunk {} {:?}", c, copies);
            for k in copies {
                prop_assert!(k.row < rows, "chunk {} copy {:?} past {} rows", c, k, rows);
                prop_assert!(seen.insert(k), "two chunks on {:?}", k);
                prop_assert_eq!(map.chunk_at(k.member, k.row), Some(c));
            }
        }
        let used = (0..members)
            .flat_map(|m| (0..rows).map(move |r| (m, r)))
            .filter(|&(m, r)| map.chunk_at(MemberIndex(m), r).is_some())
            .count();
        prop_assert_eq!(used, seen.len());
        // md uses all but less than one row per member (per far copy).
        let slack = (members * shape.copies()) as u64;
        prop_assert!(members as u64 * rows - used as u64 <= slack + rows % shape.copies() as u64 * members as u64);
    }

    /// The map is md's: the same copies, in the same order, as md's own
    /// `__raid10_find_phys` for every sector of the chunk, and the same
    /// array size as md's `raid10_size`.
    #[test]
    fn map_matches_mds_formulas((shape, members, chunk, rows) in map_case(), c in 0u64..1000, s in 0u64..8) {
        let map = Raid10Map::new(shape, members, chunk, rows).unwrap();
        let cs = chunk / 512;
        let md = crate::raid::md_layout::Raid10Layout::new(shape.code(), members, cs, rows * cs).unwrap();
        prop_assert_eq!(map.chunks() * cs, md.array_sectors(rows * cs));
        let c = c % map.chunks();
        let sector = c * cs + s * cs / 8;
        let want: Vec<Replica> = md.find_phys(sector);
        let got: Vec<Replica> = map
            .copies(c)
            .iter()
            .map(|k| Replica { disk: k.member.0, sector: k.row * cs + s * cs / 8 })
            .collect();
        prop_assert_eq!(got, want);
    }

    /// Through `Geometry`: a volume byte's extent is its first copy, and
    /// what that member byte holds maps back to it.
    #[test]
    fn geometry_extents_and_locate_agree((shape, members, chunk, rows) in map_case(), v in any::<u64>()) {
        let g = Geometry::new(Level::Raid10(shape), members, ChunkSize::new(chunk).unwrap(), rows * chunk).unwrap();
        let v = v % g.volume_size();
        let e = g.extents(ByteOffset(v), 1).next().unwrap();
        prop_assert_eq!(g.locate(e.member, e.member_offset), Some(MemberByte::Data(ByteOffset(v))));
        let (lo, hi) = g.member_span(ByteOffset(v), 1);
        for k in g.raid10().unwrap().copies(v / chunk) {
            prop_assert!(lo.get() <= k.row * chunk && (k.row + 1) * chunk <= hi.get());
        }
    }

    /// `survives` says yes exactly when every chunk keeps a live copy.
    #[test]
    fn survives_iff_every_chunk_keeps_a_copy((shape, members, chunk, rows) in map_case(), mask in any::<u16>()) {
        let map = Raid10Map::new(shape, members, chunk, rows).unwrap();
        let down: Vec<bool> = (0..members).map(|m| mask >> m & 1 == 1).collect();
        let every = (0..map.chunks()).all(|c| map.copies(c).iter().any(|k| !down[k.member.0]));
        prop_assert_eq!(map.survives(&down), every);
    }
}
