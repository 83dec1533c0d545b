//! The volatile write cache's contents, as pure data (no I/O, no async):
//! acknowledged writes not yet on the volume, in arrival order, with an
//! offset index for reads, trimming by newer durable writes, and the power
//! cut's choice of what survives. `cache.rs` drives it; the proptests of
//! `cache_tests.rs` check it against a plain model.
//!
//! ```text
//!  pieces: (seq, offset) ─► Piece     one write = one seq; FUA trimming
//!  index:  (offset, seq)              may split it into several pieces
//! ```

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::member::fault::Rng;

/// Fixed cost charged per piece on top of its data, so that many small
/// zeroing entries (which hold no data) still fill the cache. What a
/// piece really holds besides its data: its entry in `pieces` and in
/// `index` (B-tree nodes about half full), the buffer's `Arc` header and
/// allocator rounding, about 200 bytes measured (1-byte writes: 50M of
/// RSS for 254k pieces); 64 let 1-byte writes hold 3x the budget.
pub const PIECE_OVERHEAD: u64 = 256;

/// What a cached write puts on the volume.
#[derive(Clone, Debug)]
pub enum Payload {
    /// These bytes: `data[start..start + len]` of a shared buffer.
    Data {
        /// The write's buffer.
        data: Arc<[u8]>,
        /// Where this piece starts in it.
        start: usize,
    },
    /// Zeroes (a write-zeroes; `unmap`: a discard or an unmapping zeroing).
    Zero {
        /// Written back as a discard rather than a zeroing.
        unmap: bool,
    },
}

/// One cached piece of a write.
#[derive(Clone, Debug)]
pub struct Piece {
    /// Arrival order of its write (its writes's identity).
    pub seq: u64,
    /// Volume byte offset.
    pub offset: u64,
    /// Bytes.
    pub len: u64,
    /// What it writes.
    pub payload: Payload,
}

impl Piece {
    /// Its bytes laid over `buf`, which holds the volume's bytes from
    /// `at`: only the overlap is touched.
    pub fn overlay(&self, buf: &mut [u8], at: u64) {
        let start = self.offset.max(at);
        let end = (self.offset + self.len).min(at + buf.len() as u64);
        if start >= end {
            return;
        }
        let dst = &mut buf[(start - at) as usize..(end - at) as usize];
        match &self.payload {
            Payload::Data { data, start: s } => {
                let from = s + (start - self.offset) as usize;
                dst.copy_from_slice(&data[from..from + dst.len()]);
            }
            Payload::Zero { .. } => dst.fill(0),
        }
    }

    /// The part of it in `[a, b)` (which must overlap it).
    fn slice(&self, a: u64, b: u64) -> Piece {
        let a = a.max(self.offset);
        let b = b.min(self.offset + self.len);
        let payload = match &self.payload {
            // A copy of its bytes only: a remnant sharing the whole
            // write's buffer would hold memory the budget does not charge.
            Payload::Data { data, start } => {
                let from = start + (a - self.offset) as usize;
                Payload::Data {
                    data: Arc::from(&data[from..from + (b - a) as usize]),
                    start: 0,
                }
            }
            z @ Payload::Zero { .. } => z.clone(),
        };
        Piece {
            seq: self.seq,
            offset: a,
            len: b - a,
            payload,
        }
    }

    /// What it costs the cache's budget.
    pub fn cost(&self) -> u64 {
        let data = match self.payload {
            Payload::Data { .. } => self.len,
            Payload::Zero { .. } => 0,
        };
        data + PIECE_OVERHEAD
    }
}

/// Which unflushed writes survive a power cut.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum KeepPolicy {
    /// None of them.
    #[default]
    None,
    /// The oldest N of them, in arrival order (N chosen at random, 0..=all).
    OrderedPrefix,
    /// Each write independently, with probability 1/2.
    RandomSubset,
}

/// What a power cut dropped and kept (`vraid fault powercut`, status).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PowerCutReport {
    /// The policy used.
    pub keep: KeepPolicy,
    /// The seed of its choice (give it again to repeat the cut).
    pub seed: u64,
    /// Unflushed writes lost.
    pub dropped_writes: u64,
    /// Their bytes.
    pub dropped_bytes: u64,
    /// Unflushed writes that survived (written to the volume).
    pub kept_writes: u64,
    /// Their bytes.
    pub kept_bytes: u64,
}

/// The cut itself: the report, and which writes (by seq) went.
#[derive(Clone, Debug, Default)]
pub struct PowerCut {
    /// For the user.
    pub report: PowerCutReport,
    /// Seqs of the dropped writes, ascending.
    pub dropped: Vec<u64>,
    /// Keys of the kept pieces, in write-back order.
    pub kept: Vec<(u64, u64)>,
}

/// The cache's contents.
#[derive(Debug, Default)]
pub struct CacheState {
    pieces: BTreeMap<(u64, u64), Piece>,
    index: BTreeSet<(u64, u64)>,
    /// Longest piece ever held: bounds the index scan of a lookup.
    max_len: u64,
    next_seq: u64,
    cost: u64,
    data_bytes: u64,
    /// Bumped by every power cut: a flush that spans one fails.
    epoch: u64,
}

impl CacheState {
    /// An empty cache.
    pub fn new() -> CacheState {
        CacheState::default()
    }

    /// True when nothing is cached.
    pub fn is_empty(&self) -> bool {
        self.pieces.is_empty()
    }

    /// Budget used (data bytes plus per-piece overhead).
    pub fn cost(&self) -> u64 {
        self.cost
    }

    /// Data bytes cached (zeroing pieces counted by their length).
    pub fn bytes(&self) -> u64 {
        self.data_bytes
    }

    /// Writes with at least one piece cached.
    pub fn writes(&self) -> u64 {
        let mut seqs: Vec<u64> = self.pieces.keys().map(|k| k.0).collect();
        seqs.dedup();
        seqs.len() as u64
    }

    /// The power-cut epoch now.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// A new write's place in the order (for writes that bypass the cache
    /// but must still order against it).
    pub fn next_seq(&mut self) -> u64 {
        self.next_seq += 1;
        self.next_seq
    }

    /// The seq the next write would get: every write acknowledged so far
    /// is below it.
    pub fn seq_bound(&self) -> u64 {
        self.next_seq + 1
    }

    /// Caches a write of `len` bytes at `offset`; returns its seq.
    pub fn insert(&mut self, offset: u64, len: u64, payload: Payload) -> u64 {
        let seq = self.next_seq();
        self.put(Piece {
            seq,
            offset,
            len,
            payload,
        });
        seq
    }

    fn put(&mut self, p: Piece) {
        if p.len == 0 {
            return;
        }
        self.max_len = self.max_len.max(p.len);
        self.cost += p.cost();
        self.data_bytes += p.len;
        self.index.insert((p.offset, p.seq));
        self.pieces.insert((p.seq, p.offset), p);
    }

    /// Removes every piece of write `seq` (a write that failed).
    pub fn remove_write(&mut self, seq: u64) {
        let keys: Vec<(u64, u64)> = self
            .pieces
            .range((seq, 0)..=(seq, u64::MAX))
            .map(|(k, _)| *k)
            .collect();
        for key in keys {
            self.remove(key);
        }
    }

    /// The piece at `key` (seq, offset).
    pub fn get(&self, key: (u64, u64)) -> Option<Piece> {
        self.pieces.get(&key).cloned()
    }

    /// Removes the piece at `key`; returns it.
    pub fn remove(&mut self, key: (u64, u64)) -> Option<Piece> {
        let p = self.pieces.remove(&key)?;
        self.index.remove(&(p.offset, p.seq));
        self.cost -= p.cost();
        self.data_bytes -= p.len;
        Some(p)
    }

    /// The pieces overlapping `[offset, offset + len)`, oldest first.
    pub fn overlapping(&self, offset: u64, len: u64) -> Vec<Piece> {
        let end = offset.saturating_add(len);
        let from = (offset.saturating_sub(self.max_len), 0);
        let mut out: Vec<Piece> = self
            .index
            .range(from..(end, 0))
            .filter_map(|k| self.pieces.get(&(k.1, k.0)))
            .filter(|p| p.offset + p.len > offset)
            .cloned()
            .collect();
        out.sort_by_key(|p| (p.seq, p.offset));
        out
    }

    /// The oldest piece of a write older than `bound`.
    pub fn oldest_below(&self, bound: u64) -> Option<Piece> {
        self.pieces
            .first_key_value()
            .filter(|(k, _)| k.0 < bound)
            .map(|(_, p)| p.clone())
    }

    /// The oldest writes older than `bound`, whole (every piece of each),
    /// in order: about `max` pieces, none overlapping a piece of an older
    /// write in the batch, so they can be written back at once in any
    /// order with the same result. Never empty while such a write exists.
    pub fn oldest_batch(&self, bound: u64, max: usize) -> Vec<Piece> {
        let mut batch: Vec<Piece> = Vec::new();
        // Where the pieces of the write being added start in `batch`.
        let mut write_start = 0;
        for p in self.pieces.values().take_while(|p| p.seq < bound) {
            if batch.last().is_none_or(|l| l.seq != p.seq) {
                if batch.len() >= max {
                    break;
                }
                write_start = batch.len();
            }
            let overlaps = batch[..write_start]
                .iter()
                .any(|b| b.offset < p.offset + p.len && p.offset < b.offset + b.len);
            if overlaps {
                batch.truncate(write_start);
                break;
            }
            batch.push(p.clone());
        }
        batch
    }

    /// Cuts `[offset, offset + len)` out of every piece of a write older
    /// than `seq`: a durable newer write there supersedes them, so they
    /// must never be written back over it.
    pub fn trim(&mut self, offset: u64, len: u64, seq: u64) {
        let end = offset.saturating_add(len);
        let hit: Vec<Piece> = self
            .overlapping(offset, len)
            .into_iter()
            .filter(|p| p.seq < seq)
            .collect();
        for p in hit {
            self.remove((p.seq, p.offset));
            if p.offset < offset {
                self.put(p.slice(p.offset, offset));
            }
            if p.offset + p.len > end {
                self.put(p.slice(end, p.offset + p.len));
            }
        }
    }

    /// Power is lost: drops the writes `keep` and `seed` do not keep (all
    /// their pieces) and returns what it did; the kept pieces stay until
    /// the caller writes them back. Bumps the epoch.
    pub fn power_cut(&mut self, keep: KeepPolicy, seed: u64) -> PowerCut {
        self.epoch += 1;
        let mut seqs: Vec<u64> = self.pieces.keys().map(|k| k.0).collect();
        seqs.dedup();
        let rng = Rng::new(seed);
        let kept: BTreeSet<u64> = match keep {
            KeepPolicy::None => BTreeSet::new(),
            KeepPolicy::OrderedPrefix => {
                let n = (rng.next_u64() % (seqs.len() as u64 + 1)) as usize;
                seqs[..n].iter().copied().collect()
            }
            KeepPolicy::RandomSubset => seqs
                .iter()
                .copied()
                .filter(|_| rng.next_u64() & 1 == 1)
                .collect(),
        };
        let mut cut = PowerCut {
            report: PowerCutReport {
                keep,
                seed,
                ..PowerCutReport::default()
            },
            ..PowerCut::default()
        };
        let keys: Vec<(u64, u64)> = self.pieces.keys().copied().collect();
        for key in keys {
            if kept.contains(&key.0) {
                cut.report.kept_bytes += self.pieces[&key].len;
                cut.kept.push(key);
            } else if let Some(p) = self.remove(key) {
                cut.report.dropped_bytes += p.len;
            }
        }
        cut.report.kept_writes = kept.len() as u64;
        cut.dropped = seqs.into_iter().filter(|s| !kept.contains(s)).collect();
        cut.report.dropped_writes = cut.dropped.len() as u64;
        cut
    }
}
