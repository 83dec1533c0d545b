//! Fuzzes md's write-intent bitmap superblock parser and its checks: never
//! panics on any bytes, and a bitmap that passes the checks gives a bit
//! geometry whose area is bounded and whose bit math stays inside it.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vraid::md::bitmap::{parse, Bits, Expect, AREA_MAX};

fuzz_target!(|data: &[u8]| {
    if data.len() < 16 {
        return;
    }
    let events = u64::from_le_bytes(data[..8].try_into().expect("8 bytes"));
    let domain = u64::from_le_bytes(data[8..16].try_into().expect("8 bytes"));
    let Ok(sb) = parse(&data[16..]) else {
        return;
    };
    let want = Expect {
        uuid: &sb.uuid,
        events,
        domain_sectors: domain,
    };
    if let Ok(g) = sb.check(&want) {
        assert!(g.area_bytes <= AREA_MAX && g.area_bytes % 512 == 0);
        if g.area_bytes <= 1 << 20 {
            let mut bits = Bits::new(g, vec![0; g.area_bytes as usize]);
            let sectors = bits.set_range(domain / 2, domain);
            assert!(sectors.iter().all(|s| s * 512 < g.area_bytes));
            bits.clear_session(events);
            assert_eq!(bits.count_set(), 0);
        }
    }
});
