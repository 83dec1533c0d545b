//! Fuzzes the pool metadata parsers (docs/FORMAT.md §11): the header, the
//! page check, the summary and volume records of a page that passes it,
//! and journal records. Never panics; whatever parses passes its own checks.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vraid::pool::format::{
    decode_record, record_count, Geometry, Header, Kind, Summary, VolumeRecord, BLOCK,
    RECORDS_PER_DIR,
};
use vraid::pool::page::Page;

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
    if let Some(count) = record_count(&block, &uuid, at, 1, 64) {
        let mut rec = data.to_vec();
        rec.resize(BLOCK * 2, 0);
        let _ = decode_record(&rec, count);
    }
});
