//! Fuzzes the partial-parity journal decoder (docs/FORMAT.md §9): decoding
//! a batch or scanning a ring never panics, whatever a batch accepts
//! re-encodes to the same bytes, and the replay set holds one epoch in
//! rising sequence order, with gaps only at or above the newest batch's
//! `durable_below`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vraid::meta::journal::{
    decode_batch, encode_batch, newest_epoch, replay_set, reseal, scan_ring,
};

fuzz_target!(|raw: &[u8]| {
    // Half the inputs get a valid magic and CRC, so the field checks run.
    let mut owned = raw.to_vec();
    if raw.first().is_some_and(|b| b & 1 == 1) {
        reseal(&mut owned);
    }
    let data = &owned[..];
    if let Ok(b) = decode_batch(data) {
        let again = encode_batch(&b.id, b.seq, b.durable_below, &b.records);
        let n = (again.len()).min(data.len());
        let crc_covered = 4096 + b.records.iter().map(|r| r.pp.len()).sum::<usize>();
        assert_eq!(&again[..crc_covered.min(n)], &data[..crc_covered.min(n)]);
    }
    let (array, member) = match decode_batch(data) {
        Ok(b) => (b.id.array_uuid, b.id.member_uuid),
        Err(_) => (Default::default(), Default::default()),
    };
    let batches = scan_ring(data, array, member);
    if let Some(epoch) = newest_epoch(&batches) {
        let set = replay_set(&batches, epoch);
        let low = set.last().map_or(0, |n| match n.durable_below {
            0 => n.seq,
            l => l,
        });
        for w in set.windows(2) {
            assert!(w[0].seq < w[1].seq);
            assert!(w[0].seq + 1 == w[1].seq || w[0].seq + 1 >= low);
            assert_eq!(w[0].id.epoch, epoch);
        }
    }
});
