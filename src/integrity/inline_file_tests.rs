//! The inline layout over a real file member on io_uring: whole-block
//! reads go straight into an aligned buffer (no bounce copy in the member)
//! and read back what was written (issue 15, session 18).

use std::path::Path;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;

use super::inline::InlineDevice;
use super::page::BLOCK;
use super::tag::STRIDE;
use crate::block::{BlockDevice, Durability};
use crate::member::{create_sparse, open_member, EngineKind, MemberOptions};
use crate::raid::test_support::pattern;
use crate::units::ByteOffset;

const BLOCKS: u64 = 64;

#[tokio::test]
async fn whole_block_inline_reads_on_a_file_member_are_not_bounced() {
    let base = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("target")
        .join("member-tests");
    std::fs::create_dir_all(&base).unwrap();
    let dir = tempfile::tempdir_in(base).unwrap();
    let path = dir.path().join("inline.img");
    create_sparse(&path, BLOCKS * STRIDE).unwrap();
    let opts = MemberOptions {
        engine: EngineKind::Uring,
        direct: true,
        exclusive: true,
        read_only: false,
        ..MemberOptions::default()
    };
    let member = open_member(&path, &opts).unwrap();
    let dev = InlineDevice::new(
        member.clone(),
        Arc::new(|_| true),
        Arc::new(AtomicU64::new(0)),
    );
    let data = pattern((BLOCKS * BLOCK) as usize, 7);
    dev.write(ByteOffset(0), &data, Durability::Normal)
        .await
        .unwrap();

    let before = member.bounced_bytes();
    for (offset, len) in [(0, BLOCK), (5 * BLOCK, 3 * BLOCK), (BLOCK, 60 * BLOCK)] {
        let mut out = vec![0u8; len as usize];
        dev.read(ByteOffset(offset), &mut out).await.unwrap();
        let at = offset as usize;
        assert_eq!(out, data[at..at + len as usize], "read at {offset}");
    }
    // Every read was whole 4608-byte units on the O_DIRECT descriptor:
    // before session 18 each went through a bounce buffer (its Vec was
    // not aligned), 64 units' worth here.
    assert_eq!(member.bounced_bytes() - before, 0);
}
