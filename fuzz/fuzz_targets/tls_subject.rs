//! The allow list's certificate name parsers: the subject-CN walker over
//! arbitrary DER, and the whole certificate (rustls-webpki, then the walker).
#![no_main]

use libfuzzer_sys::fuzz_target;
use vraid::tls::names::{certificate_names, subject_common_names};

fuzz_target!(|data: &[u8]| {
    for name in subject_common_names(data) {
        assert!(name.len() < data.len(), "a name is part of its input");
    }
    let _ = certificate_names(data);
});
