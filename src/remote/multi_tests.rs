//! Several connections per member (`CAN_MULTI_CONN`): requests spread
//! over them, one connection only when the server does not advertise the
//! flag, a server that advertises it and then refuses extra connections
//! still serves on one (without being hammered), and a connection that
//! goes silent costs its requests one request timeout, not the member.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::rmw_tests::open_uri;
use super::strict_server::{Setup, Strict};
use super::RemoteMember;
use crate::block::{BlockDevice, Durability};
use crate::units::ByteOffset;

const SIZE: u64 = 8 << 20;

/// `rounds` rounds of 32 concurrent 4 KiB writes (each block its own
/// pattern), then every block read back and checked.
async fn load(m: &Arc<RemoteMember>, rounds: u64) {
    for r in 0..rounds {
        let writes = (0..32u64).map(|i| {
            let m = m.clone();
            tokio::spawn(async move {
                let at = ((r * 32 + i) * 4096) % SIZE;
                let b = (at / 4096 % 251) as u8 + 1;
                m.write(ByteOffset(at), &[b; 4096], Durability::Normal)
                    .await
            })
        });
        for w in futures::future::join_all(writes).await {
            w.unwrap().unwrap();
        }
    }
    m.flush().await.unwrap();
    let blocks = (rounds * 32).min(SIZE / 4096);
    let mut back = vec![0u8; (blocks * 4096) as usize];
    m.read(ByteOffset(0), &mut back).await.unwrap();
    for (i, block) in back.chunks(4096).enumerate() {
        let b = (i % 251) as u8 + 1;
        assert!(block.iter().all(|&x| x == b), "block {i} differs");
    }
}

/// Polls `cond` every 10 ms for at most 10 s.
async fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !cond() {
        assert!(Instant::now() < deadline, "{what}: not within 10 s");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_spread_over_the_connections_a_multi_conn_server_allows() {
    let (s, addr) = Strict::start(Setup::new(SIZE, 1)).await;
    let m = open_uri(
        format!("nbd://{addr}/x?connections=4"),
        Duration::from_secs(5),
    )
    .await
    .unwrap();

    load(&m, 2).await;
    eventually("four connections", || m.connections() == 4).await;
    load(&m, 4).await;

    let served = s.served.lock().unwrap().clone();
    assert_eq!(served.len(), 4, "connections accepted: {served:?}");
    assert!(
        served.iter().all(|&n| n > 0),
        "a connection idle: {served:?}"
    );
    assert_eq!(m.stats.snapshot().connections, 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_connection_when_the_server_does_not_allow_several() {
    let mut setup = Setup::new(SIZE, 1);
    setup.multi_conn = false;
    let (s, addr) = Strict::start(setup).await;
    let m = open_uri(
        format!("nbd://{addr}/x?connections=4"),
        Duration::from_secs(5),
    )
    .await
    .unwrap();

    load(&m, 4).await;

    assert_eq!(s.accepted.load(Ordering::SeqCst), 1);
    assert_eq!(m.connections(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_refusing_extra_connections_serves_on_one_without_being_hammered() {
    let mut setup = Setup::new(SIZE, 1);
    setup.refuse_from = 1;
    let (s, addr) = Strict::start(setup).await;
    let m = open_uri(
        format!("nbd://{addr}/x?connections=4"),
        Duration::from_secs(5),
    )
    .await
    .unwrap();
    let started = Instant::now();

    for _ in 0..10 {
        load(&m, 2).await;
    }

    // Three extra slots, each retried no sooner than 100 ms, 200 ms, ...
    // after its last failure: a handful of attempts per second at most.
    let secs = started.elapsed().as_secs_f64();
    let attempts = s.accepted.load(Ordering::SeqCst) - 1;
    assert!(
        (attempts as f64) <= 3.0 * (secs / 0.1).log2().max(1.0) + 6.0,
        "{attempts} attempts in {secs:.1} s"
    );
    assert_eq!(m.stats.snapshot().reconnects, 0);
    assert_eq!(s.served.lock().unwrap()[1..].iter().sum::<usize>(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_connection_costs_its_requests_one_timeout_not_the_member() {
    let mut setup = Setup::new(SIZE, 1);
    setup.silent = Some(1);
    let (s, addr) = Strict::start(setup).await;
    // request_timeout is member_timeout / 2, at least 500 ms.
    let m = open_uri(
        format!("nbd://{addr}/x?connections=2"),
        Duration::from_secs(3),
    )
    .await
    .unwrap();
    load(&m, 1).await;
    eventually("a second connection", || m.connections() == 2).await;

    load(&m, 4).await;

    let snap = m.stats.snapshot();
    assert!(snap.timeouts >= 1, "{snap:?}");
    assert!(snap.retries >= 1, "{snap:?}");
    assert_eq!(snap.reconnects, 0, "the member never went down: {snap:?}");
    assert!(s.accepted.load(Ordering::SeqCst) >= 2);
}
