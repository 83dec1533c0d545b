//! A request given up on a connection (it timed out and went again on
//! another one) never reaches the server later: the connection is closed
//! abortively, so the kernel does not send its queued bytes on once the
//! server reads again (after a network cut heals, they would land seconds
//! later, over newer writes: the stale parity a re-joined RAID-5 member
//! kept after its catch-up).

use std::time::Duration;

use super::rmw_tests::open_uri;
use super::strict_server::{Setup, Strict};
use crate::block::{BlockDevice, Durability};
use crate::units::ByteOffset;

const SIZE: u64 = 1 << 20;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_given_up_on_a_stalled_connection_never_lands_over_a_newer_one() {
    // Arrange: connection 0 stops reading after its handshake, with a
    // receive buffer far below one request: the request waits in the
    // client's kernel, as it does behind a cut link.
    let mut setup = Setup::new(SIZE, 512);
    setup.multi_conn = false;
    setup.stall = Some(0);
    setup.recv_buffer = Some(1);
    let (server, addr) = Strict::start(setup).await;
    // member_timeout 4 s: a request times out after 2 s and goes again.
    let m = open_uri(format!("nbd://{addr}/x"), Duration::from_secs(4))
        .await
        .unwrap();
    let at = ByteOffset(65536);

    // Act: the first write times out on connection 0 and is applied on
    // connection 1; a newer write of the same bytes follows; then the
    // stalled connection reads again.
    m.write(at, &[1u8; 8192], Durability::Normal).await.unwrap();
    m.write(at, &[2u8; 8192], Durability::Normal).await.unwrap();
    server.release.notify_one();
    let end = server.stalled_end().await;

    // Assert: the newer write stays.
    let bytes = server.bytes();
    assert!(
        bytes[65536..65536 + 8192].iter().all(|&b| b == 2),
        "the given-up write landed late (stalled connection: {end})"
    );
    assert!(server.accepted.load(std::sync::atomic::Ordering::SeqCst) >= 2);
}
