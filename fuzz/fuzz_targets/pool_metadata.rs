//! Fuzzes the pool metadata parsers (docs/FORMAT.md §11): the header, the
//! page check, the summary and volume records of a page that passes it,
//! journal records, and split records (a kind-8 page: each record's check,
//! each u64 as a leaf entry, and every entry resolved granule by granule
//! through the page's records, which must end). Never panics; whatever
//! parses passes its own checks.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vraid::pool::format::{
    decode_record, record_count, Geometry, Header, Kind, Summary, VolumeRecord, BLOCK,
    RECORDS_PER_DIR,
};
use vraid::pool::page::Page;
use vraid::pool::split::{
    resolve, Entry, SplitRecord, SplitRef, RECORDS_PER_SPLIT_PAGE, SPLIT_RECORD_BYTES,
};

fuzz_target!(|data: &[u8]| {
    let mut block = vec![0u8; BLOCK];
    let n = data.len().min(BLOCK);
    block[..n].copy_from_slice(&data[..n]);
    if let Ok(h) = Header::decode(&block, 0) {
        assert!(h.geometry.meta_end() > 0);
    }
    let uuid: [u8; 16] = block[16..32].try_into().expect("16 bytes");
    let at = u64::from_le_bytes(block[8..16].try_into().expect("8 bytes"));
    let geo = Geometry::plan(1 << 30, 16).expect("a 1 GiB pool");
    // Make the page pass its checksum so the typed readers see the bytes.
    let mut page = Page::new(Kind::Directory, at, &uuid);
    page.bytes_mut()[32..].copy_from_slice(&block[32..]);
    page.seal();
    let page = Page::verify(page.bytes(), at, &[Kind::Directory], &uuid).expect("sealed");
    let summary = Summary::read(&page);
    let _ = summary.check(&geo);
    for i in 0..RECORDS_PER_DIR {
        let _ = VolumeRecord::read(&page, i, &geo);
    }
    let _ = Page::verify(&block, at, &[Kind::Leaf, Kind::Interior], &uuid);
    split_page(&page, at, &geo);
    if let Some(count) = record_count(&block, &uuid, at, 1, 64) {
        let mut rec = data.to_vec();
        rec.resize(BLOCK * 2, 0);
        let _ = decode_record(&rec, count);
    }
});

/// The sealed page read as a split page: records checked, every u64 decoded
/// as a leaf entry and resolved for every granule of a 1 MiB cluster
/// through this page's records (any other block: a free slot).
fn split_page(page: &Page, at: u64, geo: &Geometry) {
    let recs: Vec<SplitRecord> = (0..RECORDS_PER_SPLIT_PAGE)
        .map(|s| SplitRecord::read(page, s))
        .collect();
    for r in &recs {
        let _ = r.check(geo);
    }
    let get = |r: SplitRef| -> Result<SplitRecord, vraid::pool::format::FormatError> {
        Ok(match r.block == at {
            true => recs[r.slot],
            false => SplitRecord::default(),
        })
    };
    let words = (BLOCK - 32) / 8;
    assert_eq!(words * 8, RECORDS_PER_SPLIT_PAGE * SPLIT_RECORD_BYTES);
    for w in 0..words {
        let e = page.u64_at(32 + 8 * w);
        if let Ok(d) = Entry::decode(e) {
            assert_eq!(d.encode(), e);
        }
        for g in 0..16 {
            let _ = resolve(e, g, get);
        }
    }
}
