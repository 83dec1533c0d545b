//! Our TLS 1.3 record layer's receive side (FORMAT.md §14): raw bytes, and
//! records sealed with the reader's key around arbitrary inner plaintexts
//! (types, zero padding, alerts, KeyUpdate and other handshake messages).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(out) = vraid::tls::fuzz_receive(data) {
        assert!(out.len() <= data.len(), "content is part of its input");
    }
});
