//! The names a certificate holds, for the client allow list: the subject's
//! common names (parsed here from the subject's DER) and the DNS names of
//! its subject alternative names (rustls-webpki parses those).
//!
//! The subject bytes come from a certificate the CA check already accepted,
//! but the parser still treats them as untrusted (fuzzed: `tls_subject`).

/// DER tag of SET.
const SET: u8 = 0x31;
/// DER tag of SEQUENCE.
const SEQUENCE: u8 = 0x30;
/// DER tag of OBJECT IDENTIFIER.
const OID: u8 = 0x06;
/// DER encoding of the OID 2.5.4.3 (id-at-commonName), without its header.
const CN_OID: &[u8] = &[0x55, 0x04, 0x03];
/// String types a CN may use: UTF8String, PrintableString, T61String
/// (read as Latin-1 bytes only when ASCII), IA5String.
const STRING_TAGS: &[u8] = &[0x0c, 0x13, 0x14, 0x16];

/// Splits one DER TLV off the front of `input`: (tag, contents, rest).
/// Only definite lengths up to four length bytes (DER forbids the rest).
fn tlv(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    let (&first, mut rest) = rest.split_first()?;
    let len = if first < 0x80 {
        usize::from(first)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let (bytes, after) = rest.split_at(n);
        rest = after;
        bytes
            .iter()
            .fold(0usize, |acc, &b| (acc << 8) | usize::from(b))
    };
    if rest.len() < len {
        return None;
    }
    let (contents, rest) = rest.split_at(len);
    Some((tag, contents, rest))
}

/// The common names in a subject (the contents of its RDNSequence, as
/// `rustls-webpki`'s `Cert::subject` returns them). Malformed parts end the
/// walk; what was found before them is kept.
pub fn subject_common_names(subject: &[u8]) -> Vec<String> {
    let mut names = Vec::new();
    let mut rdns = subject;
    while let Some((SET, mut set, rest)) = tlv(rdns) {
        rdns = rest;
        while let Some((SEQUENCE, attr, more)) = tlv(set) {
            set = more;
            if let Some(name) = common_name(attr) {
                names.push(name);
            }
        }
    }
    names
}

/// The value of an AttributeTypeAndValue if it is a common name in a string type.
fn common_name(attr: &[u8]) -> Option<String> {
    let (OID, oid, value) = tlv(attr)? else {
        return None;
    };
    if oid != CN_OID {
        return None;
    }
    let (tag, bytes, _) = tlv(value)?;
    if !STRING_TAGS.contains(&tag) {
        return None;
    }
    let s = std::str::from_utf8(bytes).ok()?;
    (tag != 0x14 || s.is_ascii()).then(|| s.to_string())
}

/// Every name of an end-entity certificate in DER: subject CNs, then SAN
/// DNS names. None if the certificate does not parse.
pub fn certificate_names(der: &[u8]) -> Option<Vec<String>> {
    let der = rustls::pki_types::CertificateDer::from(der);
    let cert = webpki::EndEntityCert::try_from(&der).ok()?;
    let mut names = subject_common_names(cert.subject());
    names.extend(cert.valid_dns_names().map(str::to_string));
    Some(names)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn der(tag: u8, contents: &[u8]) -> Vec<u8> {
        let mut v = vec![tag];
        if contents.len() < 0x80 {
            v.push(contents.len() as u8);
        } else {
            v.push(0x82);
            v.extend_from_slice(&(contents.len() as u16).to_be_bytes());
        }
        v.extend_from_slice(contents);
        v
    }

    fn rdn(oid: &[u8], tag: u8, value: &[u8]) -> Vec<u8> {
        let mut attr = der(OID, oid);
        attr.extend(der(tag, value));
        der(SET, &der(SEQUENCE, &attr))
    }

    #[test]
    fn common_names_are_found_among_other_attributes() {
        let mut subject = rdn(&[0x55, 0x04, 0x06], 0x13, b"FR");
        subject.extend(rdn(CN_OID, 0x0c, b"client-a"));
        subject.extend(rdn(CN_OID, 0x13, b"alias"));

        assert_eq!(subject_common_names(&subject), vec!["client-a", "alias"]);
    }

    #[test]
    fn long_form_lengths_parse_and_truncation_keeps_what_came_before() {
        let long = vec![b'x'; 200];
        let mut subject = rdn(CN_OID, 0x0c, &long);
        subject.extend(rdn(CN_OID, 0x0c, b"second"));
        let cut = subject.len() - 2;

        assert_eq!(subject_common_names(&subject).len(), 2);
        assert_eq!(subject_common_names(&subject[..cut]).len(), 1);
    }

    #[test]
    fn non_string_or_non_utf8_values_are_skipped() {
        let mut subject = rdn(CN_OID, 0x04, b"octets");
        subject.extend(rdn(CN_OID, 0x0c, &[0xff, 0xfe]));
        subject.extend(rdn(CN_OID, 0x14, &[0xe9]));

        assert!(subject_common_names(&subject).is_empty());
    }

    #[test]
    fn garbage_does_not_panic() {
        for input in [
            &[][..],
            &[0x31],
            &[0x31, 0x85, 1, 2, 3, 4, 5],
            &[0x31, 0xff],
        ] {
            assert!(subject_common_names(input).is_empty());
        }
        assert!(certificate_names(b"not a certificate").is_none());
    }
}
