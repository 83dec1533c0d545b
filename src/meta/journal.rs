//! The byte format of the RAID-5 partial-parity journal (docs/FORMAT.md §9):
//! batch encode/decode, ring scan, and the choice of the replay set. Pure
//! functions over bytes; nothing here panics on bad input.
//!
//! ```text
//!  ring bytes ─► scan_ring (every 4K offset: magic, CRC, identity) ─► batches
//!  batches of all members ─► newest_epoch ─► replay_set per ring
//!                  (epoch E only: N, then down to the first gap below N's durable_below)
//! ```

use uuid::Uuid;

use std::borrow::Borrow;

use crate::raid::ppl::{BatchEncoder, PplRecord, BATCH_HEADER, MAX_BATCH_ENTRIES};
use crate::raid::MemberIndex;

/// Magic of a batch header block.
pub const MAGIC: &[u8; 8] = b"VRAIDPPL";
/// Offset of the entries in the header block.
const ENTRIES_AT: usize = 96;
/// Bytes per entry.
const ENTRY: usize = 32;
/// Largest PP payload of one batch.
pub const MAX_DATA: usize = 64 << 20;
/// Largest parity row (the largest chunk).
const MAX_ROW: u32 = 16 << 20;
/// Entry flag: full-stripe entry without PP.
const FLAG_FULL: u32 = 1;
const CRC_AT: usize = 64;
/// `durable_below`: every batch of the ring and epoch with a smaller `seq`
/// was durable when this one was placed (0 in batches of older versions).
const DURABLE_AT: usize = 72;

const _: () = assert!(ENTRIES_AT + MAX_BATCH_ENTRIES * ENTRY <= BATCH_HEADER);

/// Why a block is not a valid batch.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum JournalError {
    /// Fewer bytes than the batch needs.
    #[error("batch truncated: {have} of {need} bytes")]
    Truncated {
        /// Bytes available.
        have: usize,
        /// Bytes needed.
        need: usize,
    },
    /// Not a batch header.
    #[error("bad magic")]
    Magic,
    /// Too many entries.
    #[error("{0} entries, at most 125")]
    Count(u32),
    /// An entry is malformed.
    #[error("entry {0} is invalid")]
    Entry(usize),
    /// `data_len` disagrees with the entries or is too large.
    #[error("data length {0} does not match the entries")]
    DataLen(u32),
    /// Reserved bytes are not zero.
    #[error("reserved bytes are not zero")]
    Reserved,
    /// `durable_below` is above the batch's own sequence number.
    #[error("durable_below {durable_below} above seq {seq}")]
    DurableBelow {
        /// The field.
        durable_below: u64,
        /// The batch's sequence number.
        seq: u64,
    },
    /// CRC mismatch.
    #[error("checksum mismatch")]
    Crc,
}

/// Whose ring a batch belongs to and which run wrote it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BatchId {
    /// The array.
    pub array_uuid: Uuid,
    /// The member whose ring it is.
    pub member_uuid: Uuid,
    /// The run: freshest superblock `events` at its assembly.
    pub epoch: u64,
}

/// A decoded batch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Batch {
    /// Who wrote it.
    pub id: BatchId,
    /// Sequence number within the member's ring and epoch.
    pub seq: u64,
    /// Every batch of the ring and epoch with a smaller `seq` was durable
    /// when this one was placed (0: not recorded, a batch of an older
    /// version; read as `seq`).
    pub durable_below: u64,
    /// Its entries, in order.
    pub records: Vec<PplRecord>,
    /// Offset in the ring (set by [`scan_ring`]).
    pub pos: u64,
    /// Bytes it occupies (header + padded PP).
    pub len: u64,
}

fn put(buf: &mut [u8], at: usize, bytes: &[u8]) {
    buf[at..at + bytes.len()].copy_from_slice(bytes);
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    let mut x = [0u8; 4];
    x.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(x)
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut x = [0u8; 8];
    x.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(x)
}

fn uuid_at(b: &[u8], at: usize) -> Uuid {
    let mut x = [0u8; 16];
    x.copy_from_slice(&b[at..at + 16]);
    Uuid::from_bytes(x)
}

/// Encodes a batch: header block, PP bytes, zero padding to 4 KiB. At most
/// [`MAX_BATCH_ENTRIES`] records are taken (the caller never gives more).
/// `durable_below` (≤ `seq`): every earlier batch below it is durable.
pub fn encode_batch<R: Borrow<PplRecord>>(
    id: &BatchId,
    seq: u64,
    durable_below: u64,
    records: &[R],
) -> Vec<u8> {
    let records: Vec<&PplRecord> = records
        .iter()
        .take(MAX_BATCH_ENTRIES)
        .map(|r| r.borrow())
        .collect();
    let data_len: usize = records.iter().map(|r| r.pp_len()).sum();
    let total = BATCH_HEADER + data_len.div_ceil(4096) * 4096;
    let mut buf = vec![0u8; total];
    put(&mut buf, 0, MAGIC);
    put(&mut buf, 8, id.array_uuid.as_bytes());
    put(&mut buf, 24, id.member_uuid.as_bytes());
    put(&mut buf, 40, &id.epoch.to_le_bytes());
    put(&mut buf, 48, &seq.to_le_bytes());
    put(&mut buf, 56, &(records.len() as u32).to_le_bytes());
    put(&mut buf, 60, &(data_len as u32).to_le_bytes());
    put(&mut buf, DURABLE_AT, &durable_below.min(seq).to_le_bytes());
    let mut at = BATCH_HEADER;
    for (i, r) in records.iter().enumerate() {
        let e = ENTRIES_AT + i * ENTRY;
        put(&mut buf, e, &r.stripe.to_le_bytes());
        put(&mut buf, e + 8, &r.start.to_le_bytes());
        put(&mut buf, e + 16, &r.len.to_le_bytes());
        put(&mut buf, e + 20, &r.rlo.to_le_bytes());
        put(&mut buf, e + 24, &r.rhi.to_le_bytes());
        put(&mut buf, e + 28, &u32::from(r.full).to_le_bytes());
        let n = r.pp_len().min(r.pp.len());
        put(&mut buf, at, &r.pp[..n]);
        at += r.pp_len();
    }
    let crc = batch_crc(
        &buf[..BATCH_HEADER],
        &buf[BATCH_HEADER..BATCH_HEADER + data_len],
    );
    put(&mut buf, CRC_AT, &crc.to_le_bytes());
    buf
}

fn batch_crc(header: &[u8], data: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(&header[..CRC_AT]);
    h.update(&[0u8; 4]);
    h.update(&header[CRC_AT + 4..BATCH_HEADER]);
    h.update(data);
    h.finalize()
}

/// Writes the magic and a matching CRC into a batch image of at least 4 KiB
/// (for fuzzing: lets arbitrary bytes reach the field checks). The CRC
/// covers as much PP as `data_len` asks for and the image holds.
pub fn reseal(buf: &mut [u8]) {
    if buf.len() < BATCH_HEADER {
        return;
    }
    buf[..8].copy_from_slice(MAGIC);
    let data_len = (u32_at(buf, 60) as usize).min(buf.len() - BATCH_HEADER);
    let crc = batch_crc(
        &buf[..BATCH_HEADER],
        &buf[BATCH_HEADER..BATCH_HEADER + data_len],
    );
    put(buf, CRC_AT, &crc.to_le_bytes());
}

/// Decodes the batch at the start of `bytes` (header block, then its PP).
pub fn decode_batch(bytes: &[u8]) -> Result<Batch, JournalError> {
    let need = BATCH_HEADER;
    let header = bytes.get(..need).ok_or(JournalError::Truncated {
        have: bytes.len(),
        need,
    })?;
    if &header[..8] != MAGIC {
        return Err(JournalError::Magic);
    }
    let count = u32_at(header, 56);
    if count as usize > MAX_BATCH_ENTRIES {
        return Err(JournalError::Count(count));
    }
    let data_len = u32_at(header, 60);
    if data_len as usize > MAX_DATA {
        return Err(JournalError::DataLen(data_len));
    }
    let entries_end = ENTRIES_AT + count as usize * ENTRY;
    if header[68..DURABLE_AT].iter().any(|&b| b != 0)
        || header[DURABLE_AT + 8..ENTRIES_AT].iter().any(|&b| b != 0)
        || header[entries_end..].iter().any(|&b| b != 0)
    {
        return Err(JournalError::Reserved);
    }
    let (seq, durable_below) = (u64_at(header, 48), u64_at(header, DURABLE_AT));
    if durable_below > seq {
        return Err(JournalError::DurableBelow { durable_below, seq });
    }
    let entries = decode_entries(header, count, data_len)?;
    let data_end = BATCH_HEADER + data_len as usize;
    let data = bytes
        .get(BATCH_HEADER..data_end)
        .ok_or(JournalError::Truncated {
            have: bytes.len(),
            need: data_end,
        })?;
    if batch_crc(header, data) != u32_at(header, CRC_AT) {
        return Err(JournalError::Crc);
    }
    let mut at = 0;
    let records = entries
        .into_iter()
        .map(|mut r| {
            let pp = r.pp_len();
            r.pp = data[at..at + pp].to_vec();
            at += pp;
            r
        })
        .collect();
    Ok(Batch {
        id: BatchId {
            array_uuid: uuid_at(header, 8),
            member_uuid: uuid_at(header, 24),
            epoch: u64_at(header, 40),
        },
        seq,
        durable_below,
        records,
        pos: 0,
        len: (BATCH_HEADER + (data_len as usize).div_ceil(4096) * 4096) as u64,
    })
}

/// The `count` entry heads of a batch header, as records without their PP
/// yet; the PP they ask for must add up to `data_len`.
fn decode_entries(
    header: &[u8],
    count: u32,
    data_len: u32,
) -> Result<Vec<PplRecord>, JournalError> {
    let mut entries = Vec::with_capacity(count as usize);
    let mut sum: u64 = 0;
    for i in 0..count as usize {
        let e = &header[ENTRIES_AT + i * ENTRY..ENTRIES_AT + (i + 1) * ENTRY];
        let (len, rlo, rhi, flags) = (u32_at(e, 16), u32_at(e, 20), u32_at(e, 24), u32_at(e, 28));
        if len == 0 || rlo >= rhi || rhi > MAX_ROW || flags & !FLAG_FULL != 0 {
            return Err(JournalError::Entry(i));
        }
        let full = flags & FLAG_FULL != 0;
        sum += u64::from(if full { 0 } else { rhi - rlo });
        entries.push(PplRecord {
            stripe: u64_at(e, 0),
            start: u64_at(e, 8),
            len,
            rlo,
            rhi,
            full,
            pp: Vec::new(),
        });
    }
    if sum != u64::from(data_len) {
        return Err(JournalError::DataLen(data_len));
    }
    Ok(entries)
}

/// Every valid batch of `array`/`member` in a ring image, in ring order.
/// Each 4K-aligned offset is tried; after a valid batch the scan goes on
/// behind it.
pub fn scan_ring(ring: &[u8], array: Uuid, member: Uuid) -> Vec<Batch> {
    let mut found = Vec::new();
    let mut pos = 0usize;
    while pos + BATCH_HEADER <= ring.len() {
        match decode_batch(&ring[pos..]) {
            Ok(mut b) if b.id.array_uuid == array && b.id.member_uuid == member => {
                b.pos = pos as u64;
                pos += b.len as usize;
                found.push(b);
            }
            _ => pos += 4096,
        }
    }
    found
}

/// The newest epoch among batches.
pub fn newest_epoch<'a>(batches: impl IntoIterator<Item = &'a Batch>) -> Option<u64> {
    batches.into_iter().map(|b| b.id.epoch).max()
}

/// The batches to replay from one ring, oldest first: only epoch `epoch`,
/// and among those the newest (`N`) and every older one down to the first
/// gap below `L`, the newest batch's `durable_below`: a missing sequence
/// number at or above `L` was in flight at the crash (its writes never
/// started), one below `L` was overwritten, and what is older is settled.
/// Empty if the ring's newest epoch is older.
pub fn replay_set(batches: &[Batch], epoch: u64) -> Vec<&Batch> {
    let mut of_epoch: Vec<&Batch> = batches.iter().filter(|b| b.id.epoch == epoch).collect();
    if newest_epoch(batches) != Some(epoch) {
        return Vec::new();
    }
    of_epoch.sort_by_key(|b| std::cmp::Reverse(b.seq));
    let Some(newest) = of_epoch.first() else {
        return Vec::new();
    };
    let low = match newest.durable_below {
        0 => newest.seq,
        l => l.min(newest.seq),
    };
    let mut run: Vec<&Batch> = Vec::new();
    for b in of_epoch {
        match run.last() {
            None => run.push(b),
            // The seqs between are missing: allowed only at or above `low`.
            Some(last) if b.seq < last.seq && b.seq + 1 >= low.min(last.seq) => run.push(b),
            // A duplicate sequence number cannot be written by vraid: stop.
            Some(_) => break,
        }
    }
    run.reverse();
    run
}

/// Encodes batches for the members of one array in one run.
#[derive(Clone, Debug)]
pub struct JournalEncoder {
    /// The array.
    pub array_uuid: Uuid,
    /// Member UUID by role (`None`: no journal written there).
    pub members: Vec<Option<Uuid>>,
    /// This run's epoch.
    pub epoch: u64,
}

impl BatchEncoder for JournalEncoder {
    fn encode(
        &self,
        member: MemberIndex,
        seq: u64,
        durable_below: u64,
        records: &[&PplRecord],
    ) -> Vec<u8> {
        let member_uuid = self
            .members
            .get(member.0)
            .copied()
            .flatten()
            .unwrap_or_default();
        let id = BatchId {
            array_uuid: self.array_uuid,
            member_uuid,
            epoch: self.epoch,
        };
        encode_batch(&id, seq, durable_below, records)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn id() -> BatchId {
        BatchId {
            array_uuid: Uuid::from_u128(0xa),
            member_uuid: Uuid::from_u128(0xb),
            epoch: 7,
        }
    }

    fn rec(stripe: u64, rlo: u32, rhi: u32, fill: u8) -> PplRecord {
        PplRecord {
            stripe,
            start: u64::from(rlo),
            len: rhi - rlo,
            rlo,
            rhi,
            full: false,
            pp: vec![fill; (rhi - rlo) as usize],
        }
    }

    fn full(stripe: u64) -> PplRecord {
        PplRecord {
            stripe,
            start: 0,
            len: 3 * 4096,
            rlo: 0,
            rhi: 4096,
            full: true,
            pp: Vec::new(),
        }
    }

    #[test]
    fn batch_round_trips() {
        let records = vec![rec(3, 512, 4096, 0x5a), full(9), rec(1, 0, 100, 1)];
        let bytes = encode_batch(&id(), 42, 40, &records);
        assert_eq!(bytes.len() % 4096, 0);
        let b = decode_batch(&bytes).unwrap();
        assert_eq!(
            (b.id, b.seq, b.durable_below, b.len),
            (id(), 42, 40, bytes.len() as u64)
        );
        assert_eq!(b.records, records);
    }

    #[test]
    fn every_single_byte_corruption_of_a_batch_is_detected() {
        let records = vec![rec(3, 512, 4096, 0x5a), full(9)];
        let bytes = encode_batch(&id(), 42, 40, &records);
        let data_end = BATCH_HEADER + 4096 - 512;
        for at in 0..data_end {
            for flip in [0x01u8, 0x80, 0xff] {
                let mut bad = bytes.clone();
                bad[at] ^= flip;
                assert!(
                    decode_batch(&bad).is_err(),
                    "flip {flip:#x} at {at} undetected"
                );
            }
        }
    }

    #[test]
    fn truncated_and_empty_input_is_refused() {
        let bytes = encode_batch(&id(), 1, 1, &[rec(0, 0, 4096, 9)]);
        for len in [0, 10, 4095, 4096, 8191] {
            assert!(decode_batch(&bytes[..len]).is_err(), "len {len}");
        }
        assert_eq!(decode_batch(&[0u8; 4096]), Err(JournalError::Magic));
    }

    fn ring_with(batches: &[(u64, u64, u64)]) -> Vec<u8> {
        // (position in 4K blocks, epoch, seq)
        let mut ring = vec![0u8; 64 * 4096];
        for &(blk, epoch, seq) in batches {
            let bytes = encode_batch(
                &BatchId { epoch, ..id() },
                seq,
                seq,
                &[rec(seq, 0, 4096, seq as u8)],
            );
            let at = blk as usize * 4096;
            ring[at..at + bytes.len()].copy_from_slice(&bytes);
        }
        ring
    }

    fn seqs(set: &[&Batch]) -> Vec<u64> {
        set.iter().map(|b| b.seq).collect()
    }

    #[test]
    fn replay_set_is_the_run_ending_at_the_newest() {
        // Wrapped ring: 9, 10 at the start, then stale 3, then 6, 7, 8.
        let ring = ring_with(&[
            (0, 7, 9),
            (2, 7, 10),
            (10, 7, 3),
            (20, 7, 6),
            (22, 7, 7),
            (24, 7, 8),
        ]);
        let found = scan_ring(&ring, id().array_uuid, id().member_uuid);
        assert_eq!(found.len(), 6);
        assert_eq!(seqs(&replay_set(&found, 7)), vec![6, 7, 8, 9, 10]);
    }

    #[test]
    fn older_epochs_and_foreign_batches_are_not_replayed() {
        let ring = ring_with(&[(0, 8, 1), (2, 8, 2), (4, 7, 3), (6, 7, 4)]);
        let found = scan_ring(&ring, id().array_uuid, id().member_uuid);
        assert_eq!(seqs(&replay_set(&found, 8)), vec![1, 2]);
        assert!(
            replay_set(&found, 9).is_empty(),
            "a ring older than the newest epoch"
        );
        assert!(scan_ring(&ring, id().array_uuid, Uuid::from_u128(0xc)).is_empty());
        assert!(scan_ring(&ring, Uuid::from_u128(0xc), id().member_uuid).is_empty());
    }

    #[test]
    fn a_torn_newest_batch_ends_the_run_before_it() {
        let mut ring = ring_with(&[(0, 7, 1), (2, 7, 2), (4, 7, 3)]);
        ring[4 * 4096 + 5000] ^= 1; // PP of batch 3
        let found = scan_ring(&ring, id().array_uuid, id().member_uuid);
        assert_eq!(seqs(&replay_set(&found, 7)), vec![1, 2]);
    }

    /// Like `ring_with`, with each batch's `durable_below`.
    fn ring_of(batches: &[(u64, u64, u64)]) -> Vec<Batch> {
        // (position in 4K blocks, seq, durable_below), epoch 7
        let mut ring = vec![0u8; 64 * 4096];
        for &(blk, seq, durable) in batches {
            let bytes = encode_batch(&id(), seq, durable, &[rec(seq, 0, 4096, seq as u8)]);
            let at = blk as usize * 4096;
            ring[at..at + bytes.len()].copy_from_slice(&bytes);
        }
        scan_ring(&ring, id().array_uuid, id().member_uuid)
    }

    #[test]
    fn gaps_of_batches_in_flight_at_the_crash_are_skipped() {
        // 12 and 14 were in flight when 15 was placed (durable_below 12)
        // and never landed; 11 and older were durable: a gap there (9)
        // means overwritten, and ends the set.
        let found = ring_of(&[
            (0, 8, 8),
            (4, 10, 10),
            (6, 11, 10),
            (10, 13, 11),
            (14, 15, 12),
        ]);
        assert_eq!(seqs(&replay_set(&found, 7)), vec![10, 11, 13, 15]);
        // The newest batch's field decides: 13 allowed gaps down to 11 only.
        let found = ring_of(&[(4, 10, 10), (10, 13, 11), (12, 15, 15)]);
        assert_eq!(seqs(&replay_set(&found, 7)), vec![15]);
    }

    #[test]
    fn batches_without_durable_below_replay_the_consecutive_run() {
        // Older versions wrote 0 there: read as the batch's own seq.
        let found = ring_of(&[(0, 3, 0), (2, 5, 0), (4, 6, 0)]);
        assert_eq!(seqs(&replay_set(&found, 7)), vec![5, 6]);
    }

    #[test]
    fn durable_below_above_seq_is_refused() {
        let mut bytes = encode_batch::<PplRecord>(&id(), 4, 4, &[]);
        bytes[DURABLE_AT] = 5;
        reseal(&mut bytes);
        assert_eq!(
            decode_batch(&bytes),
            Err(JournalError::DurableBelow {
                durable_below: 5,
                seq: 4
            })
        );
    }

    #[test]
    fn journal_ring_grows_with_the_member() {
        let len = |m: u64| crate::meta::metadata_layout(m).unwrap().journal_len;
        assert_eq!(len(256 << 20), 256 << 10);
        assert_eq!(len(1 << 30), 4 << 20);
        assert_eq!(len(4 << 30), 16 << 20);
        let l = crate::meta::metadata_layout(1 << 40).unwrap();
        assert_eq!(l.data_offset, (1 << 30) + (17 << 20));
    }

    proptest! {
        #[test]
        fn decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..9000)) {
            let _ = decode_batch(&bytes);
            let _ = scan_ring(&bytes, Uuid::nil(), Uuid::nil());
        }

        #[test]
        fn records_round_trip(recs in proptest::collection::vec(
            (any::<u64>(), any::<u64>(), 1u32..1000, 0u32..5000, 1u32..5000, any::<bool>(), any::<u8>()), 0..20)) {
            let records: Vec<PplRecord> = recs.into_iter().map(|(stripe, start, len, rlo, w, full, fill)| PplRecord {
                stripe, start, len, rlo, rhi: rlo + w, full,
                pp: if full { Vec::new() } else { vec![fill; w as usize] },
            }).collect();
            let bytes = encode_batch(&id(), 5, 3, &records);
            prop_assert_eq!(decode_batch(&bytes).unwrap().records, records);
        }
    }
}
