//! The limiter and the QoS device on tokio's paused clock: the bucket
//! math as time, not as sleeps.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::*;
use crate::block::{BlockDevice, Durability};
use crate::member::memory::MemDevice;
use crate::units::ByteOffset;

fn limits(f: impl FnOnce(&mut QosLimits)) -> QosLimits {
    let mut l = QosLimits::default();
    f(&mut l);
    l
}

#[tokio::test(start_paused = true)]
async fn without_limits_nothing_waits_or_counts() {
    let l = Limiter::default();
    let t0 = Instant::now();

    for _ in 0..1000 {
        l.admit(Direction::Write, 4096).await;
    }

    assert_eq!(Instant::now(), t0);
    assert_eq!(l.status().throttled_requests, 0);
}

#[tokio::test(start_paused = true)]
async fn an_iops_limit_lets_the_burst_through_then_paces_requests() {
    let l = Limiter::new(limits(|l| l.iops = 100));
    let t0 = Instant::now();

    for _ in 0..10 {
        l.admit(Direction::Read, 4096).await;
    }
    assert_eq!(Instant::now(), t0, "the 100 ms burst holds 10 requests");
    for _ in 0..100 {
        l.admit(Direction::Read, 4096).await;
    }

    assert_eq!(Instant::now() - t0, Duration::from_secs(1));
    let st = l.status();
    assert_eq!(st.throttled_requests, 100);
    assert_eq!(st.throttled_us, 1_000_000);
}

#[tokio::test(start_paused = true)]
async fn a_bytes_limit_paces_by_bytes_and_ignores_trims() {
    let l = Limiter::new(limits(|l| {
        l.write_bps = 1 << 20;
        l.burst_ms = 1000;
    }));
    let t0 = Instant::now();

    for _ in 0..5 {
        l.admit(Direction::Write, 1 << 20).await;
    }
    for _ in 0..100 {
        l.admit(Direction::Write, 0).await;
    }
    l.admit(Direction::Read, 1 << 30).await;

    // The first from the 1 s burst, then one a second; TRIMs and reads
    // have no bucket here.
    assert_eq!(Instant::now() - t0, Duration::from_secs(4));
}

#[tokio::test(start_paused = true)]
async fn reads_do_not_queue_behind_writes_held_by_the_write_limit() {
    let l = Arc::new(Limiter::new(limits(|l| l.write_iops = 1)));
    l.admit(Direction::Write, 0).await;
    let t0 = Instant::now();
    let held = {
        let l = l.clone();
        tokio::spawn(async move {
            l.admit(Direction::Write, 0).await;
        })
    };
    tokio::task::yield_now().await;

    l.admit(Direction::Read, 4096).await;

    assert_eq!(Instant::now(), t0);
    assert_eq!(l.status().waiting, 1);
    held.await.unwrap();
    assert_eq!(Instant::now() - t0, Duration::from_secs(1));
}

#[tokio::test(start_paused = true)]
async fn removing_the_limit_releases_waiting_requests_at_once() {
    let l = Arc::new(Limiter::new(limits(|l| l.iops = 1)));
    l.admit(Direction::Read, 0).await;
    let t0 = Instant::now();
    let waiter = blocked_reader(&l).await;

    l.set(QosLimits::default());
    waiter.await.unwrap();

    assert_eq!(Instant::now() - t0, Duration::from_millis(10));
    assert!(!l.enabled());
}

#[tokio::test(start_paused = true)]
async fn the_device_holds_reads_and_writes_and_passes_flushes() {
    let mem = Arc::new(MemDevice::new("vol", 1 << 20));
    let limiter = Arc::new(Limiter::new(limits(|l| l.iops = 10)));
    let dev = QosDevice::new(mem, limiter.clone());
    let t0 = Instant::now();
    let mut buf = vec![0u8; 4096];

    for i in 0..11u64 {
        dev.write(ByteOffset(i * 4096), &buf, Durability::Normal)
            .await
            .unwrap();
    }
    let after_writes = Instant::now() - t0;
    dev.read(ByteOffset(0), &mut buf).await.unwrap();
    for _ in 0..100 {
        dev.flush().await.unwrap();
    }

    assert_eq!(after_writes, Duration::from_millis(1000));
    assert_eq!(Instant::now() - t0, Duration::from_millis(1100));
    assert_eq!(limiter.status().throttled_requests, 11);
}

#[test]
fn an_update_changes_only_the_fields_it_sets() {
    let l = limits(|l| {
        l.iops = 5;
        l.bps = 7;
    });
    let u = QosUpdate {
        iops: Some(0),
        write_bps: Some(9),
        ..QosUpdate::default()
    };

    let n = l.updated(&u);

    assert_eq!((n.iops, n.bps, n.write_bps), (0, 7, 9));
    assert!(n.any());
    assert!(!QosLimits::default().any());
    assert_eq!(QosLimits::default().describe(), "no limits");
}

/// Red team (RT3): a request admitted ahead (`BlockDevice::admit`, as
/// the NBD server does before it takes its device budget) runs under
/// `prepaid` without being charged again; outside it, the device waits.
#[tokio::test(start_paused = true)]
async fn an_admitted_request_is_not_charged_twice() {
    let unlimited = QosDevice::new(
        Arc::new(MemDevice::new("u", 1 << 20)),
        Arc::new(Limiter::default()),
    );
    assert!(
        unlimited.admit(Direction::Write, 4096).is_none(),
        "no limits: nothing to wait for, nothing allocated"
    );
    let mem: Arc<dyn BlockDevice> = Arc::new(MemDevice::new("m", 1 << 20));
    let limiter = Arc::new(Limiter::new(limits(|l| l.write_iops = 10)));
    let dev = QosDevice::new(mem, limiter.clone());
    let t0 = Instant::now();
    let buf = vec![7u8; 4096];

    // The burst (one token at 10/s, 100 ms) goes to the admission.
    dev.admit(Direction::Write, 4096)
        .expect("a limited device has something to wait for")
        .await;
    prepaid(async { dev.write(ByteOffset(0), &buf, Durability::Normal).await })
        .await
        .unwrap();
    assert_eq!(Instant::now(), t0, "charged once, at admission");
    dev.write(ByteOffset(0), &buf, Durability::Normal)
        .await
        .unwrap();

    assert_eq!(Instant::now() - t0, Duration::from_millis(100));
    assert_eq!(limiter.status().throttled_requests, 1);
}

#[test]
fn the_in_flight_cap_is_rate_times_latency_with_headroom() {
    assert_eq!(
        limiter::in_flight_cap(1000.0, 0),
        None,
        "no latency known yet"
    );
    // 1000/s × 10 ms = 10, × 1.5 = 15, + 1.
    assert_eq!(limiter::in_flight_cap(1000.0, 10_000_000), Some(16));
    assert_eq!(
        limiter::in_flight_cap(10.0, 1_000),
        Some(limiter::MIN_IN_FLIGHT)
    );
}

/// A limited direction whose requests take 10 ms at 1000/s keeps at most
/// 16 in flight: the 17th waits (tokens or not) until one ends, and is
/// counted; the other direction (no limit) is not held.
#[tokio::test(start_paused = true)]
async fn a_limited_volume_keeps_at_most_its_cap_in_flight() {
    let l = Arc::new(Limiter::new(limits(|l| {
        l.write_iops = 1000;
        l.burst_ms = 1000;
    })));
    let first = l.admit(Direction::Write, 4096).await;
    tokio::time::sleep(Duration::from_millis(10)).await;
    drop(first);
    assert_eq!(l.cap(Direction::Write, 4096), Some(16));
    assert_eq!(l.cap(Direction::Read, 4096), None);

    let mut held = Vec::new();
    for _ in 0..16 {
        held.push(l.admit(Direction::Write, 4096).await);
    }
    let t0 = Instant::now();
    let seventeenth = {
        let l = l.clone();
        tokio::spawn(async move {
            let _in_flight = l.admit(Direction::Write, 4096).await;
            Instant::now()
        })
    };
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(!seventeenth.is_finished(), "tokens enough, room not");
    let reads: Vec<_> = futures_reads(&l).await;
    assert_eq!(l.status().in_flight, 16 + reads.len() as u64);
    assert_eq!(l.status().capped_requests, 0, "still waiting");

    held.pop();
    let started = seventeenth.await.unwrap();

    assert_eq!(started - t0, Duration::from_millis(50));
    let st = l.status();
    assert_eq!(st.capped_requests, 1);
    assert_eq!(st.in_flight, 15 + reads.len() as u64);
}

/// Reads of a volume with only a write limit: admitted at once however
/// many are in flight.
async fn futures_reads(l: &Limiter) -> Vec<Admission<'_>> {
    let mut v = Vec::new();
    for _ in 0..100 {
        v.push(l.admit(Direction::Read, 4096).await);
    }
    v
}

/// Changing the limits lets a request waiting for room look again (and
/// removing them releases it at once).
#[tokio::test(start_paused = true)]
async fn removing_the_limit_releases_a_request_waiting_for_room() {
    let l = Arc::new(Limiter::new(limits(|l| {
        l.iops = 1000;
        l.burst_ms = 1000;
    })));
    drop(l.admit(Direction::Read, 0).await);
    let held: Vec<_> = {
        let mut v = Vec::new();
        for _ in 0..limiter::MIN_IN_FLIGHT {
            v.push(l.admit(Direction::Read, 0).await);
        }
        v
    };
    let waiter = blocked_reader(&l).await;

    l.set(QosLimits::default());
    waiter.await.unwrap();

    assert_eq!(held.len() as u64, limiter::MIN_IN_FLIGHT);
}

/// The NBD server's QoS wait (admission ahead of the device budget) is
/// part of the latency the volume's histogram records.
#[tokio::test]
async fn an_admitted_request_s_qos_wait_is_in_the_latency_histogram() {
    use crate::metrics::stats::{IoStats, OpType, StatsDevice};
    let mem: Arc<dyn BlockDevice> = Arc::new(MemDevice::new("m", 1 << 20));
    let limiter = Arc::new(Limiter::new(limits(|l| l.read_iops = 10)));
    let stats = IoStats::new();
    let dev = StatsDevice::new(Arc::new(QosDevice::new(mem, limiter)), stats.clone());
    let mut buf = vec![0u8; 4096];

    for _ in 0..2 {
        let since = std::time::Instant::now();
        let _in_flight = dev.admit(Direction::Read, 4096).unwrap().await;
        prepaid_since(Some(since), async {
            dev.read(ByteOffset(0), &mut buf).await
        })
        .await
        .unwrap();
    }

    // The second waited for a token (10/s: 100 ms after the first).
    let mut registry = prometheus_client::registry::Registry::default();
    registry.register("read", "", stats.op(OpType::Read).latency.clone());
    let mut text = String::new();
    prometheus_client::encoding::prometheus_text::encode(&mut text, &registry).unwrap();
    let sum: f64 = text
        .lines()
        .find_map(|l| l.strip_prefix("read_sum "))
        .expect("a sum")
        .parse()
        .unwrap();
    assert!(sum >= 0.09, "{text}");
}

/// A read admission of `l` spawned, checked still waiting 10 ms later.
async fn blocked_reader(l: &Arc<Limiter>) -> tokio::task::JoinHandle<()> {
    let waiter = {
        let l = l.clone();
        tokio::spawn(async move {
            l.admit(Direction::Read, 0).await;
        })
    };
    tokio::time::sleep(Duration::from_millis(10)).await;
    assert!(!waiter.is_finished());
    waiter
}
