//! Metadata context negotiation through the handshake state machine:
//! what a client asking for `base:allocation` (or asking badly) gets.

use std::sync::Arc;

use super::handshake::{Negotiation, Step};
use super::proto::{self, ClientFlags, OptionHeader};
use super::{Export, ExportTable};
use crate::block::BlockDevice;
use crate::member::memory::MemDevice;

fn export(name: &str) -> Export {
    Export {
        name: name.to_string(),
        description: String::new(),
        device: Arc::new(MemDevice::new(name, 1 << 20)) as Arc<dyn BlockDevice>,
        read_only: false,
        preferred_block: 4096,
        multi_conn: true,
        contexts: Default::default(),
    }
}

fn meta_payload(name: &str, queries: &[&str]) -> Vec<u8> {
    let mut p = (name.len() as u32).to_be_bytes().to_vec();
    p.extend_from_slice(name.as_bytes());
    p.extend_from_slice(&(queries.len() as u32).to_be_bytes());
    for q in queries {
        p.extend_from_slice(&(q.len() as u32).to_be_bytes());
        p.extend_from_slice(q.as_bytes());
    }
    p
}

/// Sends one option; returns the (reply type, payload) of each reply.
fn send(neg: &mut Negotiation<'_>, option: u32, payload: &[u8]) -> (Step, Vec<(u32, Vec<u8>)>) {
    let mut out = Vec::new();
    let header = OptionHeader {
        option,
        length: payload.len() as u32,
    };
    let step = neg.handle(header, payload, &mut out);
    let mut replies = Vec::new();
    let mut rest = &out[..];
    while rest.len() >= 20 {
        assert_eq!(u32::from_be_bytes(rest[8..12].try_into().unwrap()), option);
        let kind = u32::from_be_bytes(rest[12..16].try_into().unwrap());
        let len = u32::from_be_bytes(rest[16..20].try_into().unwrap()) as usize;
        replies.push((kind, rest[20..20 + len].to_vec()));
        rest = &rest[20 + len..];
    }
    (step, replies)
}

fn kinds(replies: &[(u32, Vec<u8>)]) -> Vec<u32> {
    replies.iter().map(|r| r.0).collect()
}

fn structured(table: &ExportTable) -> Negotiation<'_> {
    let mut neg = Negotiation::new(table, ClientFlags::default());
    send(&mut neg, proto::OPT_STRUCTURED_REPLY, &[]);
    neg
}

#[test]
fn set_meta_context_selects_base_allocation_for_the_export_entered() {
    let table = ExportTable::new(vec![export("a"), export("b")]);
    let mut neg = structured(&table);

    let (_, replies) = send(
        &mut neg,
        proto::OPT_SET_META_CONTEXT,
        &meta_payload("a", &["x-other:thing", "base:allocation", "base:"]),
    );
    let (step, _) = send(&mut neg, proto::OPT_GO, &[0, 0, 0, 1, b'a', 0, 0]);

    assert_eq!(
        kinds(&replies),
        vec![proto::REP_META_CONTEXT, proto::REP_ACK]
    );
    assert_eq!(&replies[0].1[..4], &1u32.to_be_bytes());
    assert_eq!(&replies[0].1[4..], b"base:allocation");
    let Step::Transmit(chosen) = step else {
        panic!("GO did not enter transmission");
    };
    assert_eq!(neg.selection(&chosen).iter().count(), 1);
    let other = table.lookup("b").unwrap();
    assert!(
        neg.selection(&other).is_empty(),
        "selected for another export"
    );
}

#[test]
fn list_meta_context_names_every_context_or_the_ones_queried() {
    let table = ExportTable::new(vec![export("a")]);
    let mut neg = structured(&table);

    let (_, all) = send(
        &mut neg,
        proto::OPT_LIST_META_CONTEXT,
        &meta_payload("", &[]),
    );
    let (_, base) = send(
        &mut neg,
        proto::OPT_LIST_META_CONTEXT,
        &meta_payload("a", &["base:"]),
    );
    let (_, none) = send(
        &mut neg,
        proto::OPT_LIST_META_CONTEXT,
        &meta_payload("a", &["qemu:dirty-bitmap:"]),
    );

    for replies in [&all, &base] {
        assert_eq!(
            kinds(replies),
            vec![proto::REP_META_CONTEXT, proto::REP_ACK]
        );
        assert_eq!(replies[0].1, b"\0\0\0\0base:allocation");
    }
    assert_eq!(kinds(&none), vec![proto::REP_ACK]);
}

#[test]
fn malformed_meta_context_options_get_error_replies_and_clear_the_selection() {
    let table = ExportTable::new(vec![export("a")]);
    let mut plain = Negotiation::new(&table, ClientFlags::default());
    let good = meta_payload("a", &["base:allocation"]);
    let many: Vec<&str> = vec!["base:allocation"; proto::MAX_META_QUERIES + 1];
    let mut truncated = good.clone();
    truncated.pop();
    let mut huge = meta_payload("a", &[]);
    huge[5..9].copy_from_slice(&1u32.to_be_bytes());
    huge.extend_from_slice(&u32::MAX.to_be_bytes());
    let mut neg = structured(&table);
    send(&mut neg, proto::OPT_SET_META_CONTEXT, &good);

    let cases: Vec<(&str, Vec<u8>, u32)> = vec![
        ("truncated", truncated, proto::REP_ERR_INVALID),
        ("query past the end", huge, proto::REP_ERR_INVALID),
        (
            "too many queries",
            meta_payload("a", &many),
            proto::REP_ERR_TOO_BIG,
        ),
        (
            "no namespace",
            meta_payload("a", &["allocation"]),
            proto::REP_ERR_INVALID,
        ),
        (
            "unknown export",
            meta_payload("zz", &["base:allocation"]),
            proto::REP_ERR_UNKNOWN,
        ),
    ];
    for (what, payload, want) in cases {
        let (step, replies) = send(&mut neg, proto::OPT_SET_META_CONTEXT, &payload);
        assert!(matches!(step, Step::Continue), "{what}");
        assert_eq!(kinds(&replies), vec![want], "{what}");
    }
    let (_, before_structured) = send(&mut plain, proto::OPT_SET_META_CONTEXT, &good);

    assert_eq!(kinds(&before_structured), vec![proto::REP_ERR_INVALID]);
    let a = table.lookup("a").unwrap();
    assert!(
        neg.selection(&a).is_empty(),
        "a failed SET clears the selection"
    );
}
