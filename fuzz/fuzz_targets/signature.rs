//! Fuzzes the pre-write signature probe: never panics on any head, tail
//! and device size.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vraid::meta::signature::probe;

fuzz_target!(|data: &[u8]| {
    if data.len() < 10 {
        return;
    }
    let size = u64::from_le_bytes(data[..8].try_into().expect("8 bytes"));
    let split = usize::from(data[8]) * 257 % (data.len() - 9 + 1);
    let (head, tail) = data[9..].split_at(split.min(data.len() - 9));
    let _ = probe(head, tail, size);
    let _ = probe(head, tail, (head.len() + tail.len()) as u64);
});
