//! Fuzzes the NBD option parsers: header (magic check) and every payload,
//! the metadata context ones (`NBD_OPT_{LIST,SET}_META_CONTEXT`) included.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vraid::export::nbd::proto;

fuzz_target!(|data: &[u8]| {
    let Some((head, payload)) = data.split_first_chunk::<{ proto::OPTION_HEADER_LEN }>() else {
        return;
    };
    let header = match proto::parse_option_header(head) {
        Ok(header) => header,
        // Let the fuzzer explore payloads even when the magic is wrong.
        Err(_) => proto::OptionHeader {
            option: u32::from_be_bytes([head[8], head[9], head[10], head[11]]),
            length: payload.len() as u32,
        },
    };
    if let Ok(proto::ClientOption::Info(req) | proto::ClientOption::Go(req)) =
        proto::parse_option(header, payload)
    {
        assert!(req.name.len() <= proto::MAX_STRING);
        assert!(!req.name.contains('\0'));
    }
    let _ = proto::parse_info_request(payload);
    if let Ok(req) = proto::parse_meta_context_request(payload) {
        assert!(req.queries.len() <= proto::MAX_META_QUERIES);
        assert!(req.queries.iter().all(|q| q.len() <= proto::MAX_STRING));
    }
});
