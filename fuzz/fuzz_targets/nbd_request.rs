//! Fuzzes the NBD request parser and checks it round-trips through the encoder.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vraid::export::nbd::proto;

fuzz_target!(|data: &[u8]| {
    let Some((head, _)) = data.split_first_chunk::<{ proto::REQUEST_LEN }>() else {
        return;
    };
    if let Ok(req) = proto::parse_request(head) {
        assert_eq!(&proto::encode_request(&req), head);
    }
});
