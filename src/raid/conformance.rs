//! Model-based conformance suite run against every RAID level.
//!
//! Random sequences of write / read / discard / write_zeroes / flush at
//! unaligned offsets are applied to a volume and to a plain `Vec<u8>`; every
//! read must match the model (RAID-10 in all six md layouts, odd member
//! counts included). Redundant arrays also lose members mid-sequence
//! (up to their redundancy) or start with one missing. After each sequence
//! the whole volume is compared, RAID-5 parity is checked on every stripe and
//! RAID-1 mirrors are compared, for members still active. Down members are
//! also rebuilt onto fresh devices while writes run concurrently. Every
//! case runs with and without block checksums on the members, and RAID-5/6
//! with and without the write-hole journal (in memory): at the end the
//! journal is replayed as after a crash (from the rings of the active
//! members) and must change nothing. A second suite flips bytes under one
//! member and checks reads heal them.

use proptest::prelude::*;

use super::layout::{MemberIndex, StripeIndex};
use super::test_support::{pattern, Array};
use super::volume::MemberState;
use super::Level;
use crate::block::{BlockDevice, Durability};
use crate::units::ByteOffset;

#[derive(Clone, Debug)]
enum Op {
    Write {
        at: u64,
        len: u64,
        seed: u64,
        fua: bool,
    },
    Read {
        at: u64,
        len: u64,
    },
    Discard {
        at: u64,
        len: u64,
    },
    Zeroes {
        at: u64,
        len: u64,
        unmap: bool,
    },
    Flush,
    Fail {
        member: usize,
    },
    /// Rebuild the first down member onto a fresh device while a write
    /// runs concurrently.
    Rebuild {
        at: u64,
        len: u64,
        seed: u64,
    },
    /// Two writes to adjacent (disjoint) ranges, issued concurrently.
    Pair {
        at: u64,
        len: u64,
        len2: u64,
        seed: u64,
    },
}

#[derive(Clone, Debug)]
struct Case {
    level: Level,
    members: usize,
    chunk: u64,
    member_size: u64,
    missing: Option<usize>,
    /// A second missing member (RAID-6).
    missing2: Option<usize>,
    ops: Vec<Op>,
    /// Members wrapped in checksum devices.
    checksums: bool,
    /// RAID-5/6: writes log their partial parity (replayed at the end).
    journal: bool,
}

fn op_strategy() -> impl Strategy<Value = Op> {
    let len = prop_oneof![0u64..600, 0u64..70_000];
    prop_oneof![
        6 => (any::<u64>(), len.clone(), any::<u64>(), any::<bool>())
            .prop_map(|(at, len, seed, fua)| Op::Write { at, len, seed, fua }),
        4 => (any::<u64>(), len.clone()).prop_map(|(at, len)| Op::Read { at, len }),
        1 => (any::<u64>(), len.clone()).prop_map(|(at, len)| Op::Discard { at, len }),
        1 => (any::<u64>(), len, any::<bool>()).prop_map(|(at, len, unmap)| Op::Zeroes { at, len, unmap }),
        1 => Just(Op::Flush),
        1 => (0usize..8).prop_map(|member| Op::Fail { member }),
        1 => (any::<u64>(), 0u64..70_000, any::<u64>())
            .prop_map(|(at, len, seed)| Op::Rebuild { at, len, seed }),
        2 => (any::<u64>(), 0u64..20_000, 0u64..20_000, any::<u64>())
            .prop_map(|(at, len, len2, seed)| Op::Pair { at, len, len2, seed }),
    ]
}

fn case_strategy() -> impl Strategy<Value = Case> {
    let level = prop_oneof![
        Just(Level::Raid0),
        Just(Level::Raid1),
        Just(Level::Raid5),
        Just(Level::Raid6),
        raid10_level(),
    ];
    level
        .prop_flat_map(|level| {
            let members = match level {
                Level::Raid0 => 2usize..=4,
                Level::Raid1 => 2usize..=3,
                Level::Raid5 => 3usize..=5,
                Level::Raid6 => 4usize..=6,
                Level::Raid10(s) => s.copies()..=5,
            };
            // RAID-10's far copies need a row per copy at least.
            let chunks = if level.raid10_shape().is_some() {
                3u64..6
            } else {
                1u64..5
            };
            (
                Just(level),
                members,
                0u32..3,
                chunks,
                0u64..3000,
                proptest::option::weighted(0.25, 0usize..8),
                proptest::option::weighted(0.25, 0usize..8),
                proptest::collection::vec(op_strategy(), 1..32),
                any::<bool>(),
                any::<bool>(),
            )
        })
        .prop_map(
            |(level, members, shift, chunks, extra, missing, missing2, ops, checksums, journal)| {
                let chunk = 4096u64 << shift;
                Case {
                    level,
                    members,
                    chunk,
                    member_size: chunks * chunk + extra,
                    missing: missing
                        .filter(|_| level != Level::Raid0)
                        .map(|m| m % members),
                    // RAID-6 (and RAID-10, where its copies allow) may
                    // start with two members missing.
                    missing2: missing2
                        .filter(|_| level == Level::Raid6 || level.raid10_shape().is_some())
                        .map(|m| m % members),
                    ops,
                    checksums,
                    journal,
                }
            },
        )
}

/// RAID-10 in each of its layouts.
fn raid10_level() -> impl Strategy<Value = Level> {
    prop::sample::select(vec!["n2", "n3", "f2", "f3", "o2", "o3"])
        .prop_map(|s| Level::Raid10(s.parse().unwrap()))
}

/// Clamps a random (at, len) into the volume.
fn range(size: u64, at: u64, len: u64) -> (u64, u64) {
    let at = at % (size + 1);
    (at, len.min(size - at))
}

/// The volume of a case with block checksums on its members, or without.
fn build_array(
    case: &Case,
    missing: &[usize],
    csums: &std::sync::Arc<crate::integrity::Checksums>,
    errors: &std::sync::Arc<std::sync::atomic::AtomicU64>,
) -> Array {
    let (level, members, chunk, size) = (case.level, case.members, case.chunk, case.member_size);
    if !case.checksums {
        return Array::new(level, members, chunk, size, missing);
    }
    let Array {
        devices,
        events,
        volume,
    } = Array::new_wrapped(level, members, chunk, size, missing, |i, d| {
        csums.wrap_in_memory(i, d, false, errors.clone())
    });
    Array {
        devices,
        events,
        volume: volume.with_checksums(csums.clone()),
    }
}

/// A case running: its volume, the model of the volume's bytes, and what
/// the case did to the members.
struct Run<'a> {
    case: &'a Case,
    vol: &'a super::Volume,
    csums: &'a std::sync::Arc<crate::integrity::Checksums>,
    errors: &'a std::sync::Arc<std::sync::atomic::AtomicU64>,
    /// The device in each slot (rebuilds put fresh ones in).
    devices: Vec<std::sync::Arc<super::test_support::TestDevice>>,
    missing: Vec<usize>,
    rebuilt_failed: Vec<MemberIndex>,
    model: Vec<u8>,
    /// Members down (missing or made failing), by slot.
    down: Vec<bool>,
    /// The in-memory journal (entries by ring).
    log: std::sync::Arc<super::ppl::MemParityLog>,
}

async fn run(case: Case) -> Result<(), TestCaseError> {
    let mut missing: Vec<usize> = case.missing.into_iter().collect();
    if let Some(m) = case.missing2.filter(|m| !missing.contains(m)) {
        missing.push(m);
    }
    let mut down = vec![false; case.members];
    for &m in &missing {
        down[m] = true;
    }
    let g = super::Geometry::new(
        case.level,
        case.members,
        super::ChunkSize::new(case.chunk).unwrap(),
        case.member_size,
    )
    .unwrap();
    if !g.tolerates(&down) {
        // Two RAID-10 members holding the same chunks: start with one.
        down[missing.pop().unwrap_or(0)] = false;
    }
    let csums = crate::integrity::Checksums::new();
    let errors = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let mut array = build_array(&case, &missing, &csums, &errors);
    let log = std::sync::Arc::new(super::ppl::MemParityLog::default());
    if case.journal {
        array.volume = array.volume.with_parity_log(log.clone());
    }
    for d in &array.devices {
        d.yield_first
            .store(true, std::sync::atomic::Ordering::SeqCst);
    }
    let mut run = Run {
        case: &case,
        vol: &array.volume,
        csums: &csums,
        errors: &errors,
        devices: array.devices.clone(),
        down,
        missing,
        rebuilt_failed: Vec::new(),
        model: vec![0u8; array.volume.size() as usize],
        log: log.clone(),
    };
    for op in &case.ops {
        run.apply(op).await?;
    }
    replay_as_after_a_crash(&run).await?;
    run.check_end(&array).await
}

impl Run<'_> {
    /// Applies `op` to the volume and the model; reads are checked.
    async fn apply(&mut self, op: &Op) -> Result<(), TestCaseError> {
        let (vol, size) = (self.vol, self.vol.size());
        match *op {
            Op::Write { at, len, seed, fua } => {
                let (at, len) = range(size, at, len);
                let data = pattern(len as usize, seed);
                let dur = if fua {
                    Durability::Fua
                } else {
                    Durability::Normal
                };
                vol.write(ByteOffset(at), &data, dur)
                    .await
                    .map_err(fail("write"))?;
                self.model[at as usize..(at + len) as usize].copy_from_slice(&data);
            }
            Op::Read { at, len } => {
                let (at, len) = range(size, at, len);
                let mut buf = vec![0xEE; len as usize];
                vol.read(ByteOffset(at), &mut buf)
                    .await
                    .map_err(fail("read"))?;
                prop_assert!(
                    buf == self.model[at as usize..(at + len) as usize],
                    "read at {at} len {len} differs"
                );
            }
            Op::Discard { at, len } => {
                let (at, len) = range(size, at, len);
                vol.discard(ByteOffset(at), len)
                    .await
                    .map_err(fail("discard"))?;
                self.model[at as usize..(at + len) as usize].fill(0);
            }
            Op::Zeroes { at, len, unmap } => {
                let (at, len) = range(size, at, len);
                vol.write_zeroes(ByteOffset(at), len, unmap)
                    .await
                    .map_err(fail("zeroes"))?;
                self.model[at as usize..(at + len) as usize].fill(0);
            }
            Op::Flush => vol.flush().await.map_err(fail("flush"))?,
            Op::Pair {
                at,
                len,
                len2,
                seed,
            } => self.pair(at, len, len2, seed).await?,
            Op::Rebuild { at, len, seed } => self.rebuild(at, len, seed).await?,
            Op::Fail { member } => self.fail(member),
        }
        Ok(())
    }

    /// Two concurrent writes to adjacent ranges.
    async fn pair(&mut self, at: u64, len: u64, len2: u64, seed: u64) -> Result<(), TestCaseError> {
        let (vol, size) = (self.vol, self.vol.size());
        let (at, len) = range(size, at, len);
        let (at2, len2) = range(size, at + len, len2);
        let (a, b) = (pattern(len as usize, seed), pattern(len2 as usize, !seed));
        let (ra, rb) = futures::join!(
            vol.write(ByteOffset(at), &a, Durability::Normal),
            vol.write(ByteOffset(at2), &b, Durability::Normal)
        );
        ra.map_err(fail("pair write"))?;
        rb.map_err(fail("pair write"))?;
        self.model[at as usize..(at + len) as usize].copy_from_slice(&a);
        self.model[at2 as usize..(at2 + len2) as usize].copy_from_slice(&b);
        Ok(())
    }

    /// Rebuilds the first down member onto a fresh device while a write
    /// runs concurrently.
    async fn rebuild(&mut self, at: u64, len: u64, seed: u64) -> Result<(), TestCaseError> {
        let (case, vol, size) = (self.case, self.vol, self.vol.size());
        let down = (0..case.members).find(|&m| {
            matches!(
                vol.state(MemberIndex(m)),
                MemberState::Failed | MemberState::Missing
            )
        });
        let Some(m) = down else { return Ok(()) };
        let fresh = super::test_support::TestDevice::new("fresh", case.member_size);
        fresh
            .yield_first
            .store(true, std::sync::atomic::Ordering::SeqCst);
        let target: std::sync::Arc<dyn BlockDevice> = if case.checksums {
            self.csums
                .wrap_in_memory(m, fresh.clone(), true, self.errors.clone())
        } else {
            fresh.clone()
        };
        vol.attach_rebuild_target(MemberIndex(m), target, 0)
            .map_err(|e| TestCaseError::fail(format!("attach: {e}")))?;
        let was_failed = vol.state(MemberIndex(m)) == MemberState::Rebuilding { up_to: 0 }
            && !self.missing.contains(&m);
        let (at, len) = range(size, at, len);
        let data = pattern(len as usize, seed);
        let ctl = super::rebuild::RebuildControl::new(0);
        let (rebuilt, written) = futures::join!(
            vol.rebuild(MemberIndex(m), None, &ctl, &NoSink),
            vol.write(ByteOffset(at), &data, Durability::Normal)
        );
        rebuilt.map_err(|e| TestCaseError::fail(format!("rebuild: {e}")))?;
        written.map_err(fail("write during rebuild"))?;
        self.model[at as usize..(at + len) as usize].copy_from_slice(&data);
        prop_assert_eq!(vol.state(MemberIndex(m)), MemberState::Active);
        self.devices[m] = fresh;
        if was_failed {
            self.rebuilt_failed.push(MemberIndex(m));
        }
        self.missing.retain(|&x| x != m);
        self.down[m] = false;
        // The new member starts a ring of its own (FORMAT.md §9 case 33):
        // entries of the slot's previous member predate writes it missed.
        let mut records = self.log.records.lock().unwrap();
        records.retain(|(r, _)| r.0 != m);
        Ok(())
    }

    /// Makes `member` fail its I/O, while the level still tolerates it.
    fn fail(&mut self, member: usize) {
        let member = member % self.case.members;
        let mut down = self.down.clone();
        down[member] = true;
        if self.vol.geometry().tolerates(&down)
            && !self.missing.contains(&member)
            && self.vol.state(MemberIndex(member)) == MemberState::Active
        {
            self.devices[member].mem.set_failing(true);
            self.down = down;
        }
    }

    /// The whole volume equals the model, every failure is recorded once,
    /// no checksum error was seen, and redundancy is consistent.
    async fn check_end(self, array: &Array) -> Result<(), TestCaseError> {
        let (case, vol) = (self.case, self.vol);
        let mut whole = vec![0u8; vol.size() as usize];
        vol.read(ByteOffset(0), &mut whole)
            .await
            .map_err(fail("final read"))?;
        prop_assert!(whole == self.model, "final contents differ from the model");
        let mut failed: Vec<MemberIndex> = (0..case.members)
            .map(MemberIndex)
            .filter(|&m| vol.state(m) == MemberState::Failed)
            .collect();
        prop_assert_eq!(
            self.errors.load(std::sync::atomic::Ordering::SeqCst),
            0,
            "no checksum error without corruption"
        );
        failed.extend(self.rebuilt_failed);
        failed.sort();
        let mut recorded = array.events.failed.lock().unwrap().clone();
        recorded.sort();
        prop_assert_eq!(recorded, failed, "every failure is recorded exactly once");
        check_redundancy(vol, &self.devices, &self.model)
    }
}

/// Replays every logged entry from the rings of the active members, as an
/// assembly after a crash would: every write completed, so the partial
/// parity (and partial Q) of each must give the parity already on disk.
async fn replay_as_after_a_crash(run: &Run<'_>) -> Result<(), TestCaseError> {
    let records: Vec<_> = run
        .log
        .records
        .lock()
        .unwrap()
        .iter()
        .filter(|(m, _)| run.vol.state(*m) == MemberState::Active)
        .cloned()
        .collect();
    if records.is_empty() {
        return Ok(());
    }
    super::ppl::replay(run.vol, &records)
        .await
        .map_err(fail("journal replay"))?;
    Ok(())
}

/// Rebuild progress goes nowhere in the model.
struct NoSink;

impl super::rebuild::RebuildSink for NoSink {
    fn checkpoint(
        &self,
        _: MemberIndex,
        _: u64,
    ) -> crate::block::BoxFuture<'_, Result<(), String>> {
        crate::block::BoxFuture::new(async { Ok(()) })
    }
    fn finished(&self, _: MemberIndex) -> crate::block::BoxFuture<'_, Result<(), String>> {
        crate::block::BoxFuture::new(async { Ok(()) })
    }
}

fn fail(what: &'static str) -> impl Fn(crate::block::BlockError) -> TestCaseError {
    move |e| TestCaseError::fail(format!("{what} failed: {e}"))
}

/// RAID-5: XOR of every member's chunk is zero on every stripe when all
/// members are active. RAID-1: active mirrors equal the model.
fn check_redundancy(
    vol: &super::Volume,
    devices: &[std::sync::Arc<super::test_support::TestDevice>],
    model: &[u8],
) -> Result<(), TestCaseError> {
    let g = vol.geometry();
    let states = vol.member_states();
    let active: Vec<usize> = (0..g.members())
        .filter(|&m| states[m] == MemberState::Active)
        .collect();
    let snaps: Vec<Vec<u8>> = devices.iter().map(|d| d.mem.snapshot()).collect();
    let mds = g.member_data_size() as usize;
    match g.level() {
        Level::Raid0 => {}
        Level::Raid1 => {
            prop_assert!(
                snaps[active[0]][..mds] == *model,
                "mirror differs from the model"
            );
            for &m in &active[1..] {
                prop_assert!(
                    snaps[m][..mds] == snaps[active[0]][..mds],
                    "mirror {m} differs"
                );
            }
        }
        Level::Raid5 if active.len() == g.members() => {
            let c = g.chunk().get() as usize;
            for s in 0..g.stripe_count() as usize {
                let mut x = vec![0u8; c];
                for snap in &snaps {
                    super::parity::xor_into(&mut x, &snap[s * c..(s + 1) * c]);
                }
                let p = g
                    .parity_member(StripeIndex(s as u64))
                    .unwrap_or(MemberIndex(0));
                prop_assert!(
                    x.iter().all(|&b| b == 0),
                    "stripe {s} parity on {p} is wrong"
                );
            }
        }
        Level::Raid6 if active.len() == g.members() => check_syndromes(g, &snaps)?,
        Level::Raid5 | Level::Raid6 => {}
        Level::Raid10(_) => check_copies(g, &states, &snaps, model)?,
    }
    Ok(())
}

/// RAID-10: every copy of every chunk on an active member equals the model.
fn check_copies(
    g: &super::Geometry,
    states: &[MemberState],
    snaps: &[Vec<u8>],
    model: &[u8],
) -> Result<(), TestCaseError> {
    let (Some(map), c) = (g.raid10(), g.chunk().get() as usize) else {
        return Err(TestCaseError::fail("RAID-10 without a chunk map"));
    };
    for v in 0..map.chunks() as usize {
        for k in map.copies(v as u64) {
            if states[k.member.0] != MemberState::Active {
                continue;
            }
            let row = k.row as usize;
            prop_assert!(
                snaps[k.member.0][row * c..(row + 1) * c] == model[v * c..(v + 1) * c],
                "chunk {v}: copy on {} row {row} differs",
                k.member
            );
        }
    }
    Ok(())
}

/// RAID-6: P and Q of every stripe are those of its data, in md's slot order.
fn check_syndromes(g: &super::Geometry, snaps: &[Vec<u8>]) -> Result<(), TestCaseError> {
    let c = g.chunk().get() as usize;
    for s in 0..g.stripe_count() {
        let at = |m: MemberIndex| &snaps[m.0][s as usize * c..(s as usize + 1) * c];
        let stripe = StripeIndex(s);
        let data: Vec<&[u8]> = (0..g.data_members())
            .map(|d| at(g.data_member(stripe, d)))
            .collect();
        let (p, q) = super::syndrome::reference::syndrome(&data, c);
        let pm = g.parity_member(stripe).unwrap_or(MemberIndex(0));
        let qm = g.q_member(stripe).unwrap_or(MemberIndex(0));
        prop_assert!(at(pm) == p, "stripe {s}: P on {pm} is wrong");
        prop_assert!(at(qm) == q, "stripe {s}: Q on {qm} is wrong");
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn every_level_behaves_like_a_flat_byte_array(case in case_strategy()) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(run(case))?;
    }
}

/// One step of the corruption suite.
#[derive(Clone, Debug)]
enum FlipOp {
    Write {
        at: u64,
        len: u64,
        seed: u64,
    },
    Read {
        at: u64,
        len: u64,
    },
    /// Flip a byte of member `bad` at this member data offset.
    Flip {
        at: u64,
    },
}

fn flip_case() -> impl Strategy<Value = (Level, usize, u64, Vec<FlipOp>)> {
    let op = prop_oneof![
        (0u64..1 << 20, 1u64..40_000, any::<u64>()).prop_map(|(at, len, seed)| FlipOp::Write {
            at,
            len,
            seed
        }),
        (0u64..1 << 20, 1u64..40_000).prop_map(|(at, len)| FlipOp::Read { at, len }),
        (0u64..1 << 20).prop_map(|at| FlipOp::Flip { at }),
    ];
    (
        prop_oneof![
            Just(Level::Raid1),
            Just(Level::Raid5),
            Just(Level::Raid6),
            raid10_level()
        ],
        0usize..3,
        0u32..3,
        proptest::collection::vec(op, 1..24),
    )
        .prop_map(|(level, bad, shift, ops)| (level, bad, 4096u64 << shift, ops))
}

/// Bytes flipped under one member (below the checksum layer) never reach
/// the client: every read returns the model's bytes, no member is failed,
/// and (RAID-1) every bad block read has been rewritten from a mirror.
async fn run_flips(
    level: Level,
    bad: usize,
    chunk: u64,
    ops: Vec<FlipOp>,
) -> Result<(), TestCaseError> {
    let members = match level {
        Level::Raid1 => 2,
        Level::Raid6 => 4,
        Level::Raid10(s) => s.copies() + 1,
        _ => 3,
    };
    let member_size = 16 * chunk;
    let csums = crate::integrity::Checksums::new();
    let errors = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let Array {
        devices,
        events,
        volume,
    } = Array::new_wrapped(level, members, chunk, member_size, &[], |i, d| {
        csums.wrap_in_memory(i, d, false, errors.clone())
    });
    let vol = volume.with_checksums(csums.clone());
    let size = vol.size();
    // Every block gets a checksum first.
    let mut model = pattern(size as usize, 99);
    vol.write(ByteOffset(0), &model, Durability::Normal)
        .await
        .map_err(fail("initial write"))?;
    let dev = &devices[bad % members];
    for op in ops {
        match op {
            FlipOp::Write { at, len, seed } => {
                let (at, len) = range(size, at, len);
                let data = pattern(len as usize, seed);
                vol.write(ByteOffset(at), &data, Durability::Normal)
                    .await
                    .map_err(fail("write"))?;
                model[at as usize..(at + len) as usize].copy_from_slice(&data);
            }
            FlipOp::Read { at, len } => {
                let (at, len) = range(size, at, len);
                let mut buf = vec![0u8; len as usize];
                vol.read(ByteOffset(at), &mut buf)
                    .await
                    .map_err(fail("read"))?;
                prop_assert!(
                    buf == model[at as usize..(at + len) as usize],
                    "read at {at}+{len}"
                );
            }
            FlipOp::Flip { at } => {
                let at = at % member_size;
                super::test_support::xor_byte(&dev.mem, at, 0x81)
                    .await
                    .map_err(fail("flip"))?;
            }
        }
    }
    // Read everything (through every mirror for RAID-1), then the members
    // must hold no bad block any more.
    for _ in 0..members {
        let mut whole = vec![0u8; size as usize];
        vol.read(ByteOffset(0), &mut whole)
            .await
            .map_err(fail("final read"))?;
        prop_assert!(whole == model, "final contents differ");
    }
    prop_assert!(events.failed.lock().unwrap().is_empty(), "no member failed");
    // RAID-5 parity is not read by reads (only by writes and scrub), so a
    // bad parity block may remain; mirrors are all read by the rotation.
    if level == Level::Raid1 {
        check_redundancy(&vol, &devices, &model)?;
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    #[test]
    fn flipped_bytes_under_one_member_never_reach_the_client(
        (level, bad, chunk, ops) in flip_case()
    ) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(run_flips(level, bad, chunk, ops))?;
    }
}
