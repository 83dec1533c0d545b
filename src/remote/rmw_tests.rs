//! Read-modify-write against a server whose minimum block is above 512
//! (the strict server refuses every unaligned request): sub-block writes,
//! zeroes and reads land as on a byte-addressed device, concurrent
//! sub-block writes to one block lose nothing, a server dying between the
//! read and the write gets the write again, and block sizes the protocol
//! forbids fail the open clearly.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use super::strict_server::{Setup, Strict};
use super::{RemoteMember, RemoteOptions};
use crate::block::{BlockDevice, Durability};
use crate::units::ByteOffset;

const SIZE: u64 = 1 << 20;

pub(super) async fn open_uri(uri: String, timeout: Duration) -> Result<Arc<RemoteMember>, String> {
    let path = std::path::PathBuf::from(uri);
    let opts = RemoteOptions {
        member_timeout: timeout,
    };
    tokio::task::spawn_blocking(move || RemoteMember::open(&path, opts, false))
        .await
        .unwrap()
        .map(Arc::new)
        .map_err(|e| crate::daemon::error_chain(&e))
}

async fn strict(min: u32) -> (Arc<Strict>, Arc<RemoteMember>) {
    let (s, addr) = Strict::start(Setup::new(SIZE, min)).await;
    let m = open_uri(format!("nbd://{addr}/x"), Duration::from_secs(5))
        .await
        .unwrap();
    (s, m)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sub_block_writes_zeroes_and_reads_land_as_on_a_byte_device() {
    let (server, m) = strict(4096).await;
    let mut model = vec![0u8; SIZE as usize];
    let writes: [(u64, usize, u8); 6] = [
        (512, 512, 1),
        (4096 * 3 - 100, 300, 2),
        (3584, 8192 + 1024, 3),
        (40960, 4096, 4),
        (65536 + 7, 1, 5),
        (SIZE - 512, 512, 6),
    ];

    for (at, len, b) in writes {
        m.write(ByteOffset(at), &vec![b; len], Durability::Fua)
            .await
            .unwrap();
        model[at as usize..at as usize + len].fill(b);
    }
    m.write_zeroes(ByteOffset(3600), 5000, false).await.unwrap();
    model[3600..8600].fill(0);
    m.discard(ByteOffset(40000), 2000).await.unwrap();
    model[40000..42000].fill(0);
    let mut odd = vec![0u8; 777];
    m.read(ByteOffset(4096 * 3 - 200), &mut odd).await.unwrap();
    let mut all = vec![0u8; SIZE as usize];
    m.read(ByteOffset(0), &mut all).await.unwrap();

    assert!(all == model, "what the member reads differs from the model");
    assert!(server.bytes() == model, "the server holds other bytes");
    assert_eq!(odd[..], model[4096 * 3 - 200..4096 * 3 + 577]);
    assert_eq!(server.unaligned.load(Ordering::SeqCst), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_sub_block_writes_to_one_block_lose_nothing() {
    // Four connections, so the read-modify-writes could interleave.
    let (s, addr) = Strict::start(Setup::new(SIZE, 65536)).await;
    let m = open_uri(
        format!("nbd://{addr}/x?connections=4"),
        Duration::from_secs(5),
    )
    .await
    .unwrap();

    for round in 0..4u8 {
        let writes = (0..16u64).map(|i| {
            let m = m.clone();
            tokio::spawn(async move {
                let b = round * 16 + i as u8 + 1;
                m.write(ByteOffset(i * 4096 + 100), &[b; 512], Durability::Normal)
                    .await
            })
        });
        for w in futures::future::join_all(writes).await {
            w.unwrap().unwrap();
        }
        let data = s.bytes();
        for i in 0..16usize {
            let b = round * 16 + i as u8 + 1;
            let at = i * 4096 + 100;
            assert!(
                data[at..at + 512].iter().all(|&x| x == b),
                "round {round}: write {i} lost"
            );
        }
    }
    assert_eq!(s.unaligned.load(Ordering::SeqCst), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_dying_between_the_read_and_the_write_gets_the_write_again() {
    let (s, m) = strict(4096).await;
    m.write(ByteOffset(0), &[7u8; 4096], Durability::Normal)
        .await
        .unwrap();
    // The next write (the write half of a read-modify-write) is dropped
    // with its connection, unapplied.
    s.die_in.store(1, Ordering::SeqCst);

    m.write(ByteOffset(1024), &[9u8; 512], Durability::Fua)
        .await
        .unwrap();

    let data = s.bytes();
    assert!(data[..1024].iter().all(|&b| b == 7));
    assert!(data[1024..1536].iter().all(|&b| b == 9));
    assert!(data[1536..4096].iter().all(|&b| b == 7));
    assert!(m.stats.retries.load(Ordering::Relaxed) >= 1);
    assert!(s.accepted.load(Ordering::SeqCst) >= 2, "no reconnect");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_64k_minimum_works_and_a_larger_one_fails_the_open_clearly() {
    let (s, m) = strict(65536).await;
    m.write(ByteOffset(70000), &[3u8; 10], Durability::Normal)
        .await
        .unwrap();
    assert!(s.bytes()[70000..70010].iter().all(|&b| b == 3));

    let mut big = Setup::new(SIZE, 1 << 17);
    big.sizes = (1 << 17, 1 << 17, 1 << 20);
    let (_s, addr) = Strict::start(big).await;
    let err = open_uri(format!("nbd://{addr}/x"), Duration::from_secs(2))
        .await
        .unwrap_err();
    assert!(err.contains("invalid block sizes min 131072"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_export_size_off_the_block_leaves_the_partial_block_unused() {
    let (s, addr) = Strict::start(Setup::new(SIZE + 1000, 4096)).await;
    let m = open_uri(format!("nbd://{addr}/x"), Duration::from_secs(5))
        .await
        .unwrap();

    assert_eq!(m.size(), SIZE);
    m.write(ByteOffset(SIZE - 1), &[1u8], Durability::Normal)
        .await
        .unwrap();
    assert!(m
        .write(ByteOffset(SIZE), &[1u8], Durability::Normal)
        .await
        .is_err());
    assert_eq!(s.unaligned.load(Ordering::SeqCst), 0);
}
