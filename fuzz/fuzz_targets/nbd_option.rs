//! Fuzzes the NBD option parsers: header (magic check) and every payload.
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
});
