//! Fuzzes the md superblock parsers (0.90 in either byte order, 1.0, 1.1,
//! 1.2): never panics on any bytes and device size, and a superblock that
//! parses gives an examine report that formats.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vraid::md::superblock::{parse_at, MdVersion};
use vraid::md::MdReport;

fuzz_target!(|data: &[u8]| {
    if data.len() < 9 {
        return;
    }
    let size = u64::from_le_bytes(data[..8].try_into().expect("8 bytes"));
    let version = MdVersion::ALL[usize::from(data[8]) % 4];
    // The input is the start of the 4 KiB block, zero-padded (libFuzzer's
    // inputs stay under 4 KiB); as given, it is a short read.
    let given = &data[9..];
    let mut block = vec![0u8; 4096];
    let n = given.len().min(4096);
    block[..n].copy_from_slice(&given[..n]);
    let _ = parse_at(version, given, size);
    for size in [size, size % (1 << 40), 64 << 20] {
        if let Ok(sb) = parse_at(version, &block, size) {
            let _ = sb.verify();
            let report = MdReport::new("fuzz", &sb);
            let _ = report.to_string();
        }
    }
});
