//! Red-team tests of md assembly and the md volume: hostile superblock
//! fields (with valid checksums), disagreeing members and degraded reads,
//! checked never to panic, never to map a read outside a member's data
//! area and never to serve an array without a copy of every byte.

use std::sync::Arc;

use super::encode::encode;
use super::superblock::{parse_at, MdSuperblock, MdVersion, Role, IN_SYNC};
use super::*;
use crate::block::BlockDevice;
use crate::member::memory::MemDevice;
use crate::units::ByteOffset;

const MIB: u64 = 1 << 20;

/// A clean 1.2 member of a `level` array of `disks` in role `role`.
fn sb(level: i32, disks: u32, role: u32, size: u64) -> MdSuperblock {
    MdSuperblock {
        version: MdVersion::V1_2,
        big_endian: false,
        super_offset: 4096,
        array_uuid: [5; 16],
        name: "host:red".into(),
        ctime: 1_700_000_000,
        utime: 1_700_000_100,
        level,
        layout: if level == 10 { 0x102 } else { 2 },
        chunk_bytes: 64 << 10,
        raid_disks: disks,
        component_sectors: (size - MIB) / 512,
        data_offset: 2048,
        data_size: (size - MIB) / 512,
        events: 20,
        resync_offset: IN_SYNC,
        dev_number: role,
        device_uuid: Some([role as u8; 16]),
        role: Role::Active(role),
        roles: (0..disks.min(64)).map(Role::Active).collect(),
        feature_map: 0,
        bitmap_offset: None,
        recovery_offset: None,
        reshape: None,
        stored_csum: 0,
        computed_csum: 0,
    }
}

/// `s` through the encoder and the parser: a valid checksum, so only the
/// field checks stand between it and assembly.
fn reparsed(s: &MdSuperblock, size: u64) -> Option<MdSuperblock> {
    parse_at(s.version, &encode(s), size).ok()
}

/// A zero-filled in-memory member (reads past its end fail).
fn dev(name: &str, size: u64) -> Arc<dyn BlockDevice> {
    Arc::new(MemDevice::new(name, size))
}

/// Assembles `sbs` over fresh devices of `size` bytes and, if it serves,
/// reads the array's first and last 256 KiB and one read straddling its
/// end: none may panic; a read inside the array that fails must fail as
/// lost data or I/O, never succeed from outside the members.
async fn try_serve(sbs: Vec<MdSuperblock>, size: u64) -> Option<MdVolume> {
    let devs: Vec<_> = (0..sbs.len())
        .map(|i| dev(&format!("m{i}"), size))
        .collect();
    try_serve_on(sbs, &devs).await
}

/// [`try_serve`] over given devices (one per superblock).
async fn try_serve_on(sbs: Vec<MdSuperblock>, devs: &[Arc<dyn BlockDevice>]) -> Option<MdVolume> {
    let members: Vec<_> = devs.iter().cloned().zip(sbs).collect();
    let array = assemble(members).ok()?;
    let data: u64 = array
        .slots
        .iter()
        .flatten()
        .map(|s| s.data_sectors * 512)
        .sum();
    assert!(
        array.size <= data,
        "array of {} bytes over {data} bytes of member data",
        array.size
    );
    let vol = MdVolume::new(array);
    let len = vol.size().min(256 << 10);
    let mut buf = vec![0u8; len as usize];
    let _ = vol.read(ByteOffset(0), &mut buf).await;
    let _ = vol.read(ByteOffset(vol.size() - len), &mut buf).await;
    let mut straddle = vec![0u8; 8192];
    assert!(vol
        .read(ByteOffset(vol.size().saturating_sub(4096)), &mut straddle)
        .await
        .is_err());
    Some(vol)
}

#[tokio::test]
async fn hostile_geometry_fields_with_valid_checksums_never_panic() {
    let size = 4 * MIB;
    let devs: Vec<_> = (0..5).map(|i| dev(&format!("m{i}"), size)).collect();
    let levels = [-4, -1, 0, 1, 4, 5, 6, 7, 10, i32::MIN];
    let disks = [1u32, 2, 3, 5, 1920];
    let chunks = [0u64, 512, 12288, 1 << 30, u32::MAX as u64 * 512];
    let layouts = [0u32, 2, 5, 9, 17, 0x102, 0x201, 0x10102, 0x40102, u32::MAX];
    let components = [0u64, (size - MIB) / 512, u64::MAX / 2];
    for level in levels {
        for n in disks {
            for chunk in chunks {
                for layout in layouts {
                    for component in components {
                        let sbs: Vec<MdSuperblock> = (0..n.min(5))
                            .map(|r| {
                                let mut s = sb(level, n, r, size);
                                (s.chunk_bytes, s.layout) = (chunk, layout);
                                s.component_sectors = component;
                                s
                            })
                            .collect();
                        let _ = try_serve_on(sbs, &devs[..n.min(5) as usize]).await;
                    }
                }
            }
        }
    }
}

/// The same sweep through the parser: fields only a checksum-valid image
/// can carry to assembly.
#[tokio::test]
async fn hostile_fields_through_the_parser_never_panic() {
    let size = 4 * MIB;
    for (data_offset, data_size) in [(0, 0), (2048, 1), (8191, 1), (2048, 6144), (0, 8192)] {
        for role in [0u32, 3, 0xfeff, 0xffff] {
            let sbs: Vec<MdSuperblock> = (0..3)
                .filter_map(|r| {
                    let mut s = sb(5, 3, r, size);
                    (s.data_offset, s.data_size) = (data_offset, data_size);
                    s.component_sectors = data_size;
                    if r == 1 {
                        s.role = Role::Active(role);
                    }
                    reparsed(&s, size)
                })
                .collect();
            let _ = try_serve(sbs, size).await;
        }
    }
}

/// Two members in one role, one event apart: mdadm keeps the fresher one
/// (Assemble.c picks the highest event count per role) and leaves the
/// other out; two in one role with equal events (one image copied, or the
/// same device given twice) are refused.
#[tokio::test]
async fn two_members_in_one_role_keep_the_fresher_and_equal_ones_are_refused() {
    let size = 4 * MIB;
    let mut sbs: Vec<MdSuperblock> = (0..3).map(|r| sb(1, 3, r, size)).collect();
    let mut older = sbs[2].clone();
    older.events -= 1;
    older.device_uuid = Some([0xee; 16]);
    let d = dev("fresh2", size);
    let mut members: Vec<(Arc<dyn BlockDevice>, MdSuperblock)> =
        vec![(dev("old2", size), older), (d.clone(), sbs.pop().unwrap())];
    members.extend(sbs.iter().map(|s| (dev("m", size), s.clone())));
    let a = assemble(members).expect("fresher member kept");
    assert_eq!(a.missing(), 0);
    assert_eq!(a.slots[2].as_ref().unwrap().device.name(), "fresh2");
    assert!(
        a.left_out.iter().any(|l| l.device == "old2"),
        "{:?}",
        a.left_out
    );
    let twice = vec![
        (d.clone(), sb(1, 3, 2, size)),
        (d, sb(1, 3, 2, size)),
        (dev("m0", size), sb(1, 3, 0, size)),
    ];
    let err = assemble(twice).unwrap_err().to_string();
    assert!(err.contains("both hold role 2"), "{err}");
}

/// A hostile RAID-10 member whose array-wide device size is absurd must
/// be refused with words, not overflow the layout math.
#[tokio::test]
async fn raid10_with_a_huge_device_size_is_refused() {
    let size = 4 * MIB;
    // 2^61 chunks of 4 KiB times 64 disks overflows md's calc_sectors.
    let sbs: Vec<MdSuperblock> = (0..4)
        .map(|r| {
            let mut s = sb(10, 64, r, size);
            (s.component_sectors, s.chunk_bytes) = (u64::MAX, 4096);
            s
        })
        .collect();
    let devs: Vec<_> = (0..4).map(|i| dev(&format!("m{i}"), size)).collect();
    let members: Vec<_> = devs.into_iter().zip(sbs).collect();
    let err = assemble(members).unwrap_err().to_string();
    assert!(
        err.contains("larger than every member's data area"),
        "{err}"
    );
}

/// Pseudo-random bytes from `seed`.
fn noise(len: usize, seed: &mut u64) -> Vec<u8> {
    (0..len)
        .map(|_| {
            *seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (*seed >> 56) as u8
        })
        .collect()
}

/// Members of a `level` array in md `layout` holding random data with P
/// (and Q) computed from it, every member with its own data offset; the
/// array's bytes.
async fn parity_array(
    level: i32,
    disks: u32,
    layout: u32,
    size: u64,
) -> (Vec<(Arc<dyn BlockDevice>, MdSuperblock)>, Vec<u8>) {
    use crate::raid::md_layout::ParityLayout;
    let p = ParityLayout::new(level as u32, disks as usize, layout).unwrap();
    let chunk = 16usize << 10;
    let offsets: Vec<u64> = (0..disks as u64).map(|d| 2048 + 8 * d).collect();
    let devs: Vec<Arc<MemDevice>> = (0..disks)
        .map(|d| Arc::new(MemDevice::new(format!("m{d}"), size)))
        .collect();
    let component = (size - MIB - 64 * 512) / 512 / 32 * 32;
    let stripes = component * 512 / chunk as u64;
    let mut seed = u64::from(layout) + 1;
    for stripe in 0..stripes {
        let mut blocks = vec![vec![0u8; chunk]; disks as usize];
        let roles = p.roles(stripe);
        let mut slots = vec![vec![0u8; chunk]; p.q_slots()];
        for (disk, b) in blocks.iter_mut().enumerate() {
            if p.data_index(stripe, disk).is_some() {
                *b = noise(chunk, &mut seed);
                if let Some(s) = p.q_slot(stripe, disk) {
                    slots[s] = b.clone();
                }
            }
        }
        let mut pb = vec![0u8; chunk];
        for (disk, b) in blocks.iter().enumerate() {
            if p.data_index(stripe, disk).is_some() {
                crate::raid::parity::xor_into(&mut pb, b);
            }
        }
        if let Some(q) = roles.q {
            let refs: Vec<&[u8]> = slots.iter().map(|s| s.as_slice()).collect();
            let mut scratch = vec![0u8; chunk];
            crate::raid::syndrome::gen_syndrome(&mut scratch, &mut blocks[q], &refs);
        }
        blocks[roles.p] = pb;
        for (disk, b) in blocks.iter().enumerate() {
            let at = offsets[disk] * 512 + stripe * chunk as u64;
            let w = devs[disk].write(ByteOffset(at), b, crate::block::Durability::Normal);
            w.await.unwrap();
        }
    }
    let mut whole = vec![0u8; stripes as usize * chunk * p.data_disks()];
    for (i, piece) in whole.chunks_mut(chunk).enumerate() {
        let (stripe, disk) = p.locate(i as u64);
        let at = offsets[disk] * 512 + stripe * chunk as u64;
        devs[disk].read(ByteOffset(at), piece).await.unwrap();
    }
    let members = devs
        .iter()
        .enumerate()
        .map(|(d, dev)| {
            let mut s = sb(level, disks, d as u32, size);
            (s.layout, s.chunk_bytes) = (layout, chunk as u64);
            (s.data_offset, s.component_sectors) = (offsets[d], component);
            s.data_size = (size / 512 - offsets[d]) / 8 * 8;
            (dev.clone() as Arc<dyn BlockDevice>, s)
        })
        .collect();
    (members, whole)
}

/// Reads the whole volume in odd pieces that cross chunks.
async fn read_all(vol: &MdVolume) -> Vec<u8> {
    let mut out = vec![0u8; vol.size() as usize];
    let mut at = 0;
    for piece in out.chunks_mut(12_800) {
        vol.read(ByteOffset(at), piece).await.unwrap();
        at += piece.len() as u64;
    }
    out
}

/// Every md RAID-4/5/6 algorithm, odd member counts, per-member data
/// offsets: whole, and with every one (RAID-6: every two) members gone,
/// the volume reads the same bytes; one more gone is refused.
#[tokio::test]
async fn every_parity_algorithm_reads_the_same_degraded_as_whole() {
    let size = 2 * MIB;
    let cases: Vec<(i32, u32, u32)> = [0u32, 1, 2, 3, 4, 5]
        .iter()
        .flat_map(|&l| [(5, 3, l), (5, 5, l), (4, 4, l), (6, 5, l), (6, 6, l)])
        .chain([8u32, 9, 10, 16, 17, 18, 19, 20].iter().map(|&l| (6, 5, l)))
        .filter(|&(level, _, l)| level != 4 || l == 5)
        .collect();
    for (level, disks, layout) in cases {
        let (members, want) = parity_array(level, disks, layout, size).await;
        let vol = MdVolume::new(assemble(members.clone()).unwrap());
        assert!(
            read_all(&vol).await == want,
            "{level}/{disks}/{layout} whole"
        );
        let lose = if level == 6 { 2 } else { 1 };
        for first in 0..disks as usize {
            let mut m = members.clone();
            let gone: Vec<usize> = (0..lose)
                .map(|k| (first + k * 2) % disks as usize)
                .collect();
            let mut gone_sorted = gone.clone();
            gone_sorted.sort_unstable();
            gone_sorted.dedup();
            for g in gone_sorted.iter().rev() {
                m.remove(*g);
            }
            let vol = MdVolume::new(assemble(m.clone()).unwrap());
            let what = format!("{level}/{disks}/{layout} without {gone:?}");
            assert!(read_all(&vol).await == want, "{what}");
            m.remove(0);
            assert!(assemble(m).is_err(), "{what} and one more");
        }
    }
}

/// RAID-10 near, far and offset, 2 and 3 copies, odd member counts: every
/// copy written through `find_phys`, then read whole and with members
/// gone wherever a copy of every chunk survives; refused otherwise.
#[tokio::test]
async fn raid10_layouts_read_the_same_with_any_survivable_loss() {
    use crate::raid::md_layout::Raid10Layout;
    let size = 2 * MIB;
    let chunk = 8u64; // sectors
    for (disks, layout) in [
        (3u32, 0x102u32),
        (5, 0x102),
        (3, 0x201),
        (5, 0x201),
        (3, 0x10201),
        (5, 0x10201),
        (4, 0x103),
        (5, 0x301),
    ] {
        let component = (size - MIB) / 512;
        let r = Raid10Layout::new(layout, disks as usize, chunk, component).unwrap();
        let devs: Vec<Arc<MemDevice>> = (0..disks)
            .map(|d| Arc::new(MemDevice::new(format!("m{d}"), size)))
            .collect();
        let sectors = r.array_sectors(component);
        let mut seed = 9;
        let want = noise((sectors * 512) as usize, &mut seed);
        for (c, piece) in want.chunks(chunk as usize * 512).enumerate() {
            for rep in r.find_phys(c as u64 * chunk) {
                assert!(
                    rep.sector + chunk <= component,
                    "{layout:#x} copy past the device"
                );
                let at = MIB + rep.sector * 512;
                let w =
                    devs[rep.disk].write(ByteOffset(at), piece, crate::block::Durability::Normal);
                w.await.unwrap();
            }
        }
        let members: Vec<(Arc<dyn BlockDevice>, MdSuperblock)> = devs
            .iter()
            .enumerate()
            .map(|(d, dev)| {
                let mut s = sb(10, disks, d as u32, size);
                (s.layout, s.chunk_bytes) = (layout, chunk * 512);
                (dev.clone() as Arc<dyn BlockDevice>, s)
            })
            .collect();
        let vol = MdVolume::new(assemble(members.clone()).unwrap());
        assert!(read_all(&vol).await == want, "{disks}/{layout:#x} whole");
        for mask in 1u32..(1 << disks) - 1 {
            let m: Vec<_> = members
                .iter()
                .enumerate()
                .filter(|(d, _)| mask & (1 << d) == 0)
                .map(|(_, x)| x.clone())
                .collect();
            let survives = (0..sectors / chunk).all(|c| {
                r.find_phys(c * chunk)
                    .iter()
                    .any(|rep| mask & (1 << rep.disk) == 0)
            });
            let what = format!("{disks}/{layout:#x} without mask {mask:b}");
            match assemble(m) {
                Ok(a) => {
                    assert!(survives, "{what} served with chunks lost");
                    assert!(read_all(&MdVolume::new(a)).await == want, "{what}");
                }
                Err(e) => assert!(!survives, "{what} refused: {e}"),
            }
        }
    }
}
