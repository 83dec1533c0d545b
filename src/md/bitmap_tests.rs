//! md write-intent bitmaps over in-memory members: the bits covering a
//! write are on every member before its data reaches any member, events
//! follow the md superblocks', an orderly close clears the session's bits,
//! a failed session clears nothing, and a bitmap that fails a check is
//! refused writable with its reason (and never panics the parser).

use std::sync::{Arc, Mutex};

use proptest::prelude::*;

use super::bitmap::{self, parse, MAGIC, SB_LEN};
use super::encode::encode;
use super::superblock::{self, feature, MdSuperblock};
use super::tests::{parsed, sb1};
use super::*;
use crate::block::{BlockDevice, Durability, IoFuture};
use crate::member::memory::MemDevice;
use crate::units::ByteOffset;

const MIB: u64 = 1 << 20;
const SIZE: u64 = 2 * MIB;
/// The bitmap copy: 8 sectors after the 1.2 superblock at 4 KiB.
const BITMAP_AT: u64 = 8192;
/// Bytes per bit in these tests.
const CHUNK: u32 = 4096;

/// A bitmap superblock md would write for array `[7; 16]`.
fn bitmap_sb(events: u64, sync_size: u64, chunk: u32) -> Vec<u8> {
    let mut b = vec![0u8; SB_LEN];
    b[0..4].copy_from_slice(&MAGIC.to_le_bytes());
    b[4..8].copy_from_slice(&4u32.to_le_bytes());
    b[8..24].copy_from_slice(&[7; 16]);
    b[24..32].copy_from_slice(&events.to_le_bytes());
    b[32..40].copy_from_slice(&events.to_le_bytes());
    b[40..48].copy_from_slice(&sync_size.to_le_bytes());
    b[52..56].copy_from_slice(&chunk.to_le_bytes());
    b[56..60].copy_from_slice(&5u32.to_le_bytes());
    b[64..68].copy_from_slice(&8u32.to_le_bytes());
    b
}

/// A member that checks, at every data write, that the bitmap bit of the
/// written domain bytes is set on every member's copy (RAID-1/4/5/6: the
/// domain is the member's data byte).
struct Checked {
    inner: Arc<MemDevice>,
    all: Arc<Mutex<Vec<Arc<MemDevice>>>>,
    violations: Arc<Mutex<Vec<String>>>,
}

impl Checked {
    fn check(&self, offset: u64, len: usize) {
        let data = MIB;
        if offset < data {
            return;
        }
        let first = (offset - data) / u64::from(CHUNK);
        let last = (offset - data + len as u64 - 1) / u64::from(CHUNK);
        for m in self.all.lock().unwrap().iter() {
            let snap = m.snapshot();
            let area = &snap[BITMAP_AT as usize..];
            for bit in first..=last {
                let byte = area[SB_LEN + (bit / 8) as usize];
                if byte & (1 << (bit % 8)) == 0 {
                    self.violations.lock().unwrap().push(format!(
                        "{} written at {offset} before bit {bit} was on {}",
                        self.inner.name(),
                        m.name()
                    ));
                }
            }
        }
    }
}

impl BlockDevice for Checked {
    fn name(&self) -> &str {
        self.inner.name()
    }
    fn size(&self) -> u64 {
        self.inner.size()
    }
    fn read<'a>(&'a self, offset: ByteOffset, buf: &'a mut [u8]) -> IoFuture<'a> {
        self.inner.read(offset, buf)
    }
    fn write<'a>(&'a self, offset: ByteOffset, buf: &'a [u8], d: Durability) -> IoFuture<'a> {
        self.check(offset.get(), buf.len());
        self.inner.write(offset, buf, d)
    }
    fn flush(&self) -> IoFuture<'_> {
        self.inner.flush()
    }
    fn discard(&self, offset: ByteOffset, len: u64) -> IoFuture<'_> {
        self.inner.discard(offset, len)
    }
    fn write_zeroes(&self, offset: ByteOffset, len: u64, u: bool) -> IoFuture<'_> {
        self.inner.write_zeroes(offset, len, u)
    }
}

struct Array {
    devs: Vec<Arc<MemDevice>>,
    checked: Vec<Arc<Checked>>,
    violations: Arc<Mutex<Vec<String>>>,
}

/// Zeroed members of a clean 1.2 array with an internal bitmap of
/// `sync_size` sectors (every bit clear), events 20.
async fn members(level: i32, layout: u32, disks: u32, sync_size: u64) -> Array {
    let all = Arc::new(Mutex::new(Vec::new()));
    let violations = Arc::new(Mutex::new(Vec::new()));
    let mut devs = Vec::new();
    let mut checked = Vec::new();
    for role in 0..disks {
        let dev = Arc::new(MemDevice::new(format!("m{role}"), SIZE));
        let mut sb = sb1(level, disks, role, SIZE);
        sb.layout = layout;
        sb.feature_map |= feature::BITMAP_OFFSET;
        sb.bitmap_offset = Some(8);
        if level == 1 {
            sb.chunk_bytes = 0;
        }
        let sb = parsed(&sb, SIZE);
        dev.write(ByteOffset(4096), &encode(&sb), Durability::Normal)
            .await
            .unwrap();
        let b = bitmap_sb(20, sync_size, CHUNK);
        dev.write(ByteOffset(BITMAP_AT), &b, Durability::Normal)
            .await
            .unwrap();
        all.lock().unwrap().push(dev.clone());
        checked.push(Arc::new(Checked {
            inner: dev.clone(),
            all: all.clone(),
            violations: violations.clone(),
        }));
        devs.push(dev);
    }
    Array {
        devs,
        checked,
        violations,
    }
}

impl Array {
    async fn given(&self) -> Vec<(Arc<dyn BlockDevice>, MdSuperblock)> {
        let mut out = Vec::new();
        for d in &self.checked {
            let sb = superblock::read(&**d).await.unwrap();
            out.push((d.clone() as Arc<dyn BlockDevice>, sb));
        }
        out
    }

    async fn writable(&self) -> Result<MdVolume, String> {
        MdVolume::writable(assemble(self.given().await).unwrap()).await
    }

    /// Each member's bitmap superblock and set bits.
    fn bitmaps(&self, bits: u64) -> Vec<(bitmap::BitmapSuper, Vec<u64>)> {
        self.devs
            .iter()
            .map(|d| {
                let snap = d.snapshot();
                let area = &snap[BITMAP_AT as usize..];
                let set = (0..bits)
                    .filter(|b| area[SB_LEN + (b / 8) as usize] & (1 << (b % 8)) != 0)
                    .collect();
                (parse(area).unwrap(), set)
            })
            .collect()
    }
}

fn rng(seed: &mut u64) -> u64 {
    *seed = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    *seed >> 33
}

/// Writes 30 random pieces; returns the array bytes written.
async fn scribble(vol: &MdVolume, seed: u64) -> Vec<(u64, usize)> {
    let mut s = seed;
    let mut done = Vec::new();
    for _ in 0..30 {
        let len = (rng(&mut s) % 40_000 + 1) as usize;
        let at = rng(&mut s) % (vol.size() - len as u64);
        let data: Vec<u8> = (0..len).map(|_| rng(&mut s) as u8 | 1).collect();
        vol.write(ByteOffset(at), &data, Durability::Normal)
            .await
            .unwrap();
        done.push((at, len));
    }
    done
}

async fn session_sets_then_clears(level: i32, layout: u32, disks: u32, sync: u64) {
    let what = format!("level {level} layout {layout:#x} over {disks}");
    let a = members(level, layout, disks, sync).await;
    let vol = a.writable().await.unwrap();
    let before: Vec<Vec<u8>> = a.devs.iter().map(|d| d.snapshot()).collect();
    scribble(&vol, disks as u64 * 13 + level as u64).await;
    let bits = sync / u64::from(CHUNK / 512);
    let mid = a.bitmaps(bits);
    // (RAID-10's domain is the array: its bits are checked in array terms
    // by `raid10_bits_cover_every_changed_array_chunk`.)
    if level != 10 {
        let v = a.violations.lock().unwrap();
        assert!(v.is_empty(), "{what}: {v:?}");
    }
    for (i, (sb, set)) in mid.iter().enumerate() {
        assert_eq!(
            (sb.events, sb.events_cleared),
            (21, 20),
            "{what}: member {i}"
        );
        assert_eq!(set, &mid[0].1, "{what}: every member holds the same bits");
    }
    assert!(
        !mid[0].1.is_empty() && (mid[0].1.len() as u64) <= bits,
        "{what}"
    );
    // Every changed data byte of every member lies in a set chunk.
    for (d, old) in a.devs.iter().zip(&before) {
        let now = d.snapshot();
        let data = MIB as usize;
        for (i, (x, y)) in now[data..].iter().zip(&old[data..]).enumerate() {
            if x != y && level != 10 {
                let bit = i as u64 / u64::from(CHUNK);
                assert!(
                    mid[0].1.contains(&bit),
                    "{what}: byte {i} changed, bit {bit} clear"
                );
            }
        }
    }
    assert_eq!(vol.bitmap_bits_set().await, Some(mid[0].1.len() as u64));
    vol.close().await.unwrap();
    for (i, (sb, set)) in a.bitmaps(bits).iter().enumerate() {
        assert_eq!(
            (sb.events, sb.events_cleared),
            (22, 22),
            "{what}: member {i}"
        );
        assert!(set.is_empty(), "{what}: bits cleared at close");
    }
    for (_, sb) in a.given().await {
        assert!(sb.clean() && sb.events == 22 && sb.csum_ok(), "{what}");
    }
}

#[tokio::test]
async fn bits_reach_every_member_before_data_and_an_orderly_close_clears_them() {
    session_sets_then_clears(1, 0, 2, 2048).await;
    session_sets_then_clears(1, 0, 3, 2048).await;
    session_sets_then_clears(5, 2, 4, 2048).await;
    session_sets_then_clears(6, 2, 5, 2048).await;
    // RAID-10's bits cover array sectors (4 MiB... of two members' worth).
    session_sets_then_clears(10, 0x102, 4, 4096).await;
}

#[tokio::test]
async fn raid10_bits_cover_every_changed_array_chunk() {
    let a = members(10, 0x102, 4, 4096).await;
    let vol = a.writable().await.unwrap();
    let written = scribble(&vol, 99).await;
    let set = &a.bitmaps(512)[0].1;
    for (at, len) in written {
        for bit in at / 4096..=(at + len as u64 - 1) / 4096 {
            assert!(
                set.contains(&bit),
                "array bytes {at}+{len}: bit {bit} clear"
            );
        }
    }
    drop(vol);
}

#[tokio::test]
async fn a_failed_session_and_bits_set_before_it_are_left_set() {
    let a = members(1, 0, 2, 2048).await;
    // A bit md left set (array clean): kept as found.
    a.devs[1]
        .write(
            ByteOffset(BITMAP_AT + SB_LEN as u64 + 10),
            &[0x80],
            Durability::Normal,
        )
        .await
        .unwrap();
    let vol = a.writable().await.unwrap();
    vol.write(ByteOffset(0), &[1; 4096], Durability::Normal)
        .await
        .unwrap();
    vol.close().await.unwrap();
    let after = a.bitmaps(256);
    assert!(after.iter().all(|(_, set)| set == &vec![87]), "{after:?}");
    let vol = a.writable().await.unwrap();
    vol.write(ByteOffset(65536), &[1; 4096], Durability::Normal)
        .await
        .unwrap();
    a.devs[0].set_failing(true);
    let failed = vol
        .write(ByteOffset(131072), &[2; 512], Durability::Normal)
        .await;
    assert!(failed.is_err());
    a.devs[0].set_failing(false);
    vol.close().await.unwrap();
    let (sb, set) = &a.bitmaps(256)[1];
    assert!(
        set.contains(&16) && set.contains(&87),
        "bits stay set: {set:?}"
    );
    assert_eq!((sb.events, sb.events_cleared), (23, 22));
    let (_, md) = &a.given().await[1];
    assert!(!md.clean() && md.events == 23);
}

/// A change to a bitmap superblock.
type Corrupt = Box<dyn Fn(&mut Vec<u8>)>;

/// Member 0's bitmap superblock with `f` applied.
async fn refused_with(f: impl Fn(&mut Vec<u8>)) -> String {
    let a = members(5, 2, 4, 2048).await;
    let mut b = bitmap_sb(20, 2048, CHUNK);
    f(&mut b);
    a.devs[0]
        .write(ByteOffset(BITMAP_AT), &b, Durability::Normal)
        .await
        .unwrap();
    let before: Vec<Vec<u8>> = a.devs.iter().map(|d| d.snapshot()).collect();
    let e = a.writable().await.unwrap_err();
    let after: Vec<Vec<u8>> = a.devs.iter().map(|d| d.snapshot()).collect();
    assert!(before == after, "a refused start wrote");
    assert!(
        e.contains("not writable: bitmap: m0: ") && !e.contains('\n'),
        "{e}"
    );
    // Still served read-only.
    let ro = MdVolume::new(assemble(a.given().await).unwrap());
    let mut buf = [0u8; 512];
    ro.read(ByteOffset(0), &mut buf).await.unwrap();
    e
}

#[tokio::test]
async fn bitmaps_failing_a_check_are_refused_writable_with_the_reason() {
    let put32 =
        |at: usize, v: u32| move |b: &mut Vec<u8>| b[at..at + 4].copy_from_slice(&v.to_le_bytes());
    let put64 =
        |at: usize, v: u64| move |b: &mut Vec<u8>| b[at..at + 8].copy_from_slice(&v.to_le_bytes());
    let cases: Vec<(Corrupt, &str)> = vec![
        (Box::new(put32(0, 0x1234)), "magic"),
        (Box::new(put32(4, 3)), "host-endian"),
        (Box::new(put32(4, 5)), "clustered"),
        (Box::new(put32(4, 9)), "unsupported version 9"),
        (Box::new(put32(52, 1000)), "power of two"),
        (Box::new(put32(52, 256)), "power of two"),
        (Box::new(put32(56, 0)), "daemon sleep"),
        (Box::new(put32(60, 20000)), "write-behind"),
        (Box::new(put32(48, 2)), "stale"),
        (Box::new(put32(48, 4)), "write error"),
        (Box::new(put32(68, 2)), "cluster nodes"),
        (Box::new(put64(24, 19)), "out of date"),
        (Box::new(put64(40, 100)), "covers 100 sectors"),
        (Box::new(|b: &mut Vec<u8>| b[8] ^= 1), "UUID"),
        // 2^40 sectors in 512-byte chunks: past the reserved sectors.
        (
            Box::new(|b: &mut Vec<u8>| {
                b[40..48].copy_from_slice(&(1u64 << 40).to_le_bytes());
                b[52..56].copy_from_slice(&512u32.to_le_bytes());
            }),
            "too large",
        ),
        (Box::new(put64(40, 1 << 20)), "reserved"),
        // Without a reservation, the bits would run into the data area.
        (
            Box::new(|b: &mut Vec<u8>| {
                b[40..48].copy_from_slice(&(1u64 << 23).to_le_bytes());
                b[52..56].copy_from_slice(&512u32.to_le_bytes());
                b[64..68].copy_from_slice(&0u32.to_le_bytes());
            }),
            "overlap the data area",
        ),
    ];
    for (f, want) in cases {
        let e = refused_with(f).await;
        assert!(e.contains(want), "want {want:?}: {e}");
    }
}

#[tokio::test]
async fn a_bitmap_on_raid0_is_refused() {
    let a = members(0, 0, 2, 2048).await;
    let e = a.writable().await.unwrap_err();
    assert!(e.contains("without redundancy"), "{e}");
}

proptest! {
    /// Any bytes: parse and check return, never panic.
    #[test]
    fn bitmap_superblock_parse_never_panics(b in prop::collection::vec(any::<u8>(), 0..600),
                                            magic in any::<bool>()) {
        let mut b = b;
        if magic && b.len() >= 4 {
            b[..4].copy_from_slice(&MAGIC.to_le_bytes());
        }
        if let Ok(sb) = parse(&b) {
            let want = bitmap::Expect { uuid: &[7; 16], events: 3, domain_sectors: 1 << 30 };
            let _ = sb.check(&want);
        }
    }
}

#[tokio::test]
async fn a_degraded_session_clears_no_bit_and_keeps_events_cleared() {
    let a = members(5, 2, 3, 2048).await;
    let mut given = a.given().await;
    given.remove(1);
    let vol = MdVolume::writable(assemble(given).unwrap()).await.unwrap();
    let done = scribble(&vol, 5).await;
    vol.close().await.unwrap();
    // (`violations` counts m1's copy, which a degraded session never
    // writes: not checked here.)
    let after = a.bitmaps(256);
    for i in [0, 2] {
        let (sb, set) = &after[i];
        assert_eq!(
            (sb.events, sb.events_cleared),
            (22, 20),
            "md: no clearing while degraded"
        );
        assert!(!set.is_empty() && set == &after[0].1, "bits kept: {set:?}");
    }
    // Every written stripe's bit stays set for md's re-add recovery.
    assert!(done.len() == 30);
    let (_, stale) = &after[1];
    assert!(stale.is_empty(), "the missing member was not written");
}
