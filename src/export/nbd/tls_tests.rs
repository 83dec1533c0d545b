//! `NBD_OPT_STARTTLS` in the option state machine: what each TLS state
//! answers, without a TLS handshake (the e2e tests in raid-tests/tests/tls.rs
//! run real clients over real TLS).

use super::handshake::{negotiate_bytes_tls, TlsState};
use super::proto;
use super::tests::{client_bytes, go_payload, mem_export, option_replies, MIB};
use super::ExportTable;

fn table() -> ExportTable {
    let (_, e) = mem_export("vol", MIB, false);
    ExportTable::new(vec![e])
}

#[test]
fn required_tls_refuses_every_option_but_starttls_and_abort() {
    let input = client_bytes(&[
        (proto::OPT_LIST, vec![]),
        (proto::OPT_STRUCTURED_REPLY, vec![]),
        (proto::OPT_INFO, go_payload("vol", &[])),
        (proto::OPT_GO, go_payload("vol", &[])),
        (proto::OPT_STARTTLS, vec![]),
    ]);

    let t = negotiate_bytes_tls(&table(), TlsState::Offered { required: true }, &input);

    assert!(t.export.is_none());
    assert!(t.starttls, "STARTTLS accepted after the refusals");
    let tls_reqd = proto::REP_ERR_TLS_REQD;
    assert_eq!(
        option_replies(&t.output),
        vec![
            (proto::OPT_LIST, tls_reqd),
            (proto::OPT_STRUCTURED_REPLY, tls_reqd),
            (proto::OPT_INFO, tls_reqd),
            (proto::OPT_GO, tls_reqd),
            (proto::OPT_STARTTLS, proto::REP_ACK),
        ]
    );
}

#[test]
fn required_tls_closes_on_export_name_and_acks_abort() {
    let name = client_bytes(&[(proto::OPT_EXPORT_NAME, b"vol".to_vec())]);
    let abort = client_bytes(&[(proto::OPT_ABORT, vec![])]);
    let required = TlsState::Offered { required: true };

    let by_name = negotiate_bytes_tls(&table(), required, &name);
    let aborted = negotiate_bytes_tls(&table(), required, &abort);

    assert!(by_name.export.is_none());
    assert_eq!(by_name.output.len(), 18, "greeting only, then close");
    assert_eq!(
        option_replies(&aborted.output),
        vec![(proto::OPT_ABORT, proto::REP_ACK)]
    );
}

#[test]
fn allowed_tls_serves_plain_text_and_accepts_starttls() {
    let plain = client_bytes(&[(proto::OPT_GO, go_payload("vol", &[]))]);
    let tls = client_bytes(&[(proto::OPT_STARTTLS, vec![])]);
    let allowed = TlsState::Offered { required: false };

    assert!(negotiate_bytes_tls(&table(), allowed, &plain)
        .export
        .is_some());
    assert!(negotiate_bytes_tls(&table(), allowed, &tls).starttls);
}

#[test]
fn starttls_is_unsupported_when_off_invalid_when_active_or_with_payload() {
    let twice = client_bytes(&[
        (proto::OPT_STARTTLS, vec![]),
        (proto::OPT_GO, go_payload("vol", &[])),
    ]);
    let payload = client_bytes(&[(proto::OPT_STARTTLS, vec![1])]);

    let off = negotiate_bytes_tls(&table(), TlsState::Off, &twice);
    let active = negotiate_bytes_tls(&table(), TlsState::Active, &twice);
    let bad = negotiate_bytes_tls(&table(), TlsState::Offered { required: false }, &payload);

    assert_eq!(
        option_replies(&off.output)[0],
        (proto::OPT_STARTTLS, proto::REP_ERR_UNSUP)
    );
    assert!(off.export.is_some(), "handshake goes on in plain text");
    assert_eq!(
        option_replies(&active.output)[0],
        (proto::OPT_STARTTLS, proto::REP_ERR_INVALID)
    );
    assert!(active.export.is_some());
    assert!(!bad.starttls);
    assert_eq!(
        option_replies(&bad.output),
        vec![(proto::OPT_STARTTLS, proto::REP_ERR_INVALID)]
    );
}
