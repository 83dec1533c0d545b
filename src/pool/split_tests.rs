//! Tests of the split-cluster format layer: entry tagging, record bytes
//! and checks, granule geometry, chain resolution (corrupt chains end in
//! an error), and a property test of the design's write rules (split,
//! split on top, fill, completion, conversion, snapshots) against a model
//! of which write each granule of each volume last saw.

use std::collections::HashMap;

use proptest::prelude::*;

use super::*;
use crate::pool::format::{FormatError, Geometry, Kind};
use crate::pool::page::Page;

const MIB: u64 = 1 << 20;

fn geo() -> Geometry {
    Geometry::plan(1 << 30, 20).unwrap()
}

#[test]
fn granules_are_64k_or_a_64th_and_a_64k_pool_never_splits() {
    assert_eq!((granule_size(64 << 10), granules(64 << 10)), (64 << 10, 1));
    assert_eq!((granule_size(MIB), granules(MIB)), (64 << 10, 16));
    assert_eq!((granule_size(64 * MIB), granules(64 * MIB)), (MIB, 64));
    assert_eq!(full_mask(MIB), 0xffff);
    assert_eq!(full_mask(64 * MIB), u64::MAX);
    assert_eq!(touched(MIB, 0, 4096), 1);
    assert_eq!(touched(MIB, (64 << 10) - 512, 1024), 0b11);
    assert_eq!(touched(MIB, 0, MIB), 0xffff);
}

#[test]
fn entries_round_trip_and_bad_slots_are_refused() {
    let r = SplitRef {
        block: 123_456,
        slot: 126,
    };
    for e in [Entry::Hole, Entry::Plain(77), Entry::Split(r)] {
        assert_eq!(Entry::decode(e.encode()).unwrap(), e);
    }
    assert!(Entry::Split(r).encode() & SPLIT_TAG != 0);
    assert!(Entry::decode(SPLIT_TAG | 127).is_err());
}

fn rec(new: u64, base: u64, mask: u64, depth: u32) -> SplitRecord {
    SplitRecord {
        new,
        base,
        mask,
        count: 1,
        depth,
    }
}

#[test]
fn records_round_trip_in_a_split_page_and_bad_fields_are_refused() {
    let g = geo();
    let c = g.first_data_cluster;
    let mut p = Page::new(Kind::Split, g.meta_start(), &[7; 16]);
    let a = rec(c + 1, c, 0b101, 1);
    a.write(&mut p, 0);
    a.write(&mut p, RECORDS_PER_SPLIT_PAGE - 1);
    assert_eq!(SplitRecord::read(&p, 0), a);
    assert_eq!(SplitRecord::read(&p, RECORDS_PER_SPLIT_PAGE - 1), a);
    assert!(SplitRecord::read(&p, 5).is_free());
    a.check(&g).unwrap();
    let below = Entry::Split(SplitRef {
        block: g.meta_start(),
        slot: 0,
    })
    .encode();
    rec(c + 2, below, 1, 2).check(&g).unwrap();
    rec(c + 2, 0, 0xffff, 1).check(&g).unwrap();
    let bad: &[SplitRecord] = &[
        rec(0, c, 1, 1),           // new outside the data area
        rec(c + 1, c, 1 << 16, 1), // granule past the cluster
        rec(c + 1, c, 1, 0),       // depth 0
        rec(c + 1, c, 1, MAX_SPLIT_DEPTH + 1),
        rec(c + 1, 0, 1, 1),                  // no base, granules missing
        rec(c + 1, c, 1, 2),                  // plain base deeper than 1
        rec(c + 1, below, 1, 1),              // split base at depth 1
        rec(c + 1, SPLIT_TAG | 5 << 7, 1, 2), // base outside the map area
        SplitRecord {
            mask: 1,
            ..SplitRecord::default()
        },
    ];
    for r in bad {
        assert!(r.check(&g).is_err(), "{r:?}");
    }
}

type Records = HashMap<SplitRef, SplitRecord>;

fn get(recs: &Records) -> impl FnMut(SplitRef) -> Result<SplitRecord, FormatError> + '_ {
    |r| Ok(recs.get(&r).copied().unwrap_or_default())
}

fn at(slot: usize) -> SplitRef {
    SplitRef { block: 9, slot }
}

#[test]
fn a_chain_resolves_each_granule_to_the_newest_copy() {
    let mut recs = Records::new();
    recs.insert(at(0), rec(101, 100, 0b0001, 1));
    recs.insert(at(1), rec(102, Entry::Split(at(0)).encode(), 0b0010, 2));
    let top = Entry::Split(at(1)).encode();
    let got: Vec<_> = (0..3)
        .map(|g| resolve(top, g, get(&recs)).unwrap())
        .collect();
    assert_eq!(got, vec![Some(101), Some(102), Some(100)]);
    assert_eq!(resolve(0, 0, get(&recs)).unwrap(), None);
    assert_eq!(resolve(55, 3, get(&recs)).unwrap(), Some(55));
}

#[test]
fn corrupt_chains_end_in_an_error_not_a_loop() {
    let mut recs = Records::new();
    // A cycle: slot 0's base is slot 1, slot 1's base is slot 0.
    recs.insert(at(0), rec(1, Entry::Split(at(1)).encode(), 0, 2));
    recs.insert(at(1), rec(2, Entry::Split(at(0)).encode(), 0, 2));
    assert!(resolve(Entry::Split(at(0)).encode(), 3, get(&recs)).is_err());
    // A reference to a free slot.
    assert!(resolve(Entry::Split(at(7)).encode(), 0, get(&recs)).is_err());
    // Completed without the granule.
    recs.insert(at(2), rec(3, 0, 0b1, 1));
    assert!(resolve(Entry::Split(at(2)).encode(), 1, get(&recs)).is_err());
}

/// The design's write rules over records in a map, with reference counts,
/// against a model: per volume and granule, the id of the last write (0:
/// the original cluster's bytes). Physical clusters hold write ids per
/// granule.
#[derive(Default)]
struct Sim {
    recs: Records,
    next_slot: usize,
    /// Per physical cluster: the write id each granule holds.
    data: HashMap<u64, Vec<u32>>,
    next_cluster: u64,
    /// Per volume: its leaf entry for the one virtual cluster.
    vols: Vec<u64>,
    model: Vec<Vec<u32>>,
}

const G: u32 = 4;

#[derive(Clone, Debug)]
enum Op {
    Write { vol: usize, gran: u32, id: u32 },
    Snapshot { vol: usize },
    Complete { vol: usize },
}

impl Sim {
    fn new() -> Sim {
        let mut s = Sim {
            next_cluster: 2,
            ..Sim::default()
        };
        s.data.insert(1, vec![0; G as usize]);
        s.vols.push(1);
        s.model.push(vec![0; G as usize]);
        s
    }

    fn refs(&self, e: u64) -> usize {
        let from_vols = self.vols.iter().filter(|v| **v == e).count();
        let from_recs = self.recs.values().filter(|r| r.base == e).count();
        from_vols + from_recs
    }

    fn fresh(&mut self, from: u64) -> u64 {
        let c = self.next_cluster;
        self.next_cluster += 1;
        let bytes = (0..G).map(|g| self.read(from, g)).collect();
        self.data.insert(c, bytes);
        c
    }

    fn read(&self, e: u64, g: u32) -> u32 {
        let c = resolve(e, g, get(&self.recs)).unwrap().unwrap();
        self.data[&c][g as usize]
    }

    fn write(&mut self, vol: usize, gran: u32, id: u32) {
        let e = self.vols[vol];
        let exclusive = self.refs(e) == 1;
        match Entry::decode(e).unwrap() {
            Entry::Plain(c) if exclusive => self.data.get_mut(&c).unwrap()[gran as usize] = id,
            Entry::Split(r) if exclusive => {
                // In place if masked, else a fill: same bytes either way.
                let rec = self.recs.get_mut(&r).unwrap();
                rec.mask |= 1 << gran;
                let new = rec.new;
                self.data.get_mut(&new).unwrap()[gran as usize] = id;
            }
            _ => {
                let depth = match Entry::decode(e).unwrap() {
                    Entry::Split(r) => self.recs[&r].depth + 1,
                    _ => 1,
                };
                let n = self.fresh(e);
                self.data.get_mut(&n).unwrap()[gran as usize] = id;
                let slot = at(self.next_slot);
                self.next_slot += 1;
                self.recs.insert(slot, rec(n, e, 1 << gran, depth));
                self.vols[vol] = Entry::Split(slot).encode();
            }
        }
        self.model[vol][gran as usize] = id;
    }

    fn complete(&mut self, vol: usize) {
        let Entry::Split(r) = Entry::decode(self.vols[vol]).unwrap() else {
            return;
        };
        let rec = self.recs[&r];
        for g in 0..G {
            if rec.mask >> g & 1 == 0 {
                let b = self.read(rec.base, g);
                self.data.get_mut(&rec.new).unwrap()[g as usize] = b;
            }
        }
        let done = self.recs.get_mut(&r).unwrap();
        done.mask = (1 << G) - 1;
        done.base = 0;
        if self.refs(self.vols[vol]) == 1 {
            self.vols[vol] = rec.new;
        }
    }

    fn apply(&mut self, op: &Op) {
        match *op {
            Op::Write { vol, gran, id } => self.write(vol % self.vols.len(), gran, id),
            Op::Snapshot { vol } => {
                let v = vol % self.vols.len();
                self.vols.push(self.vols[v]);
                self.model.push(self.model[v].clone());
            }
            Op::Complete { vol } => self.complete(vol % self.vols.len()),
        }
    }
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0..4usize, 0..G, 1..1000u32).prop_map(|(vol, gran, id)| Op::Write { vol, gran, id }),
        1 => (0..4usize).prop_map(|vol| Op::Snapshot { vol }),
        1 => (0..4usize).prop_map(|vol| Op::Complete { vol }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]
    #[test]
    fn split_rules_keep_every_volume_equal_to_its_model(ops in proptest::collection::vec(op(), 1..40)) {
        let mut s = Sim::new();
        for op in &ops {
            s.apply(op);
            for v in 0..s.vols.len() {
                let got: Vec<u32> = (0..G).map(|g| s.read(s.vols[v], g)).collect();
                prop_assert_eq!(&got, &s.model[v], "volume {} after {:?}", v, op);
            }
        }
    }
}
