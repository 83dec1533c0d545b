//! The signature probe on hand-built images (real tools' images are in
//! raid-tests/tests/safety_members.rs) and on arbitrary bytes.

use proptest::prelude::*;

use super::{probe, Signature, HEAD_LEN, TAIL_LEN};

const SIZE: u64 = 8 << 20;

/// Bytes to place at an offset.
type Patch<'a> = (u64, &'a [u8]);

/// A zeroed device of SIZE bytes with `bytes` at `at`; returns (head, tail).
fn image(patches: &[Patch]) -> (Vec<u8>, Vec<u8>) {
    let mut dev = vec![0u8; SIZE as usize];
    for (at, bytes) in patches {
        dev[*at as usize..*at as usize + bytes.len()].copy_from_slice(bytes);
    }
    let head = dev[..HEAD_LEN as usize].to_vec();
    let tail = dev[(SIZE - TAIL_LEN) as usize..].to_vec();
    (head, tail)
}

fn found(patches: &[Patch]) -> Vec<Signature> {
    let (head, tail) = image(patches);
    probe(&head, &tail, SIZE)
}

#[test]
fn zeroed_device_holds_nothing() {
    assert!(found(&[]).is_empty());
}

#[test]
fn md_superblocks_are_found_at_every_version_offset() {
    let v1 = [0xfc, 0x4e, 0x2b, 0xa9, 1, 0, 0, 0];
    let v0 = [0xfc, 0x4e, 0x2b, 0xa9, 0, 0, 0, 0];
    // 0.90 written by a big-endian machine.
    let v0_be = [0xa9, 0x2b, 0x4e, 0xfc, 0, 0, 0, 0];
    let end_1_0 = ((SIZE / 512 - 16) & !7) * 512;
    let end_0_90 = (SIZE & !0xffff) - 0x10000;
    for (at, magic, version) in [
        (0, &v1, "1.1"),
        (4096, &v1, "1.2"),
        (end_1_0, &v1, "1.0"),
        (end_0_90, &v0, "0.90"),
        (end_0_90, &v0_be, "0.90"),
    ] {
        let f = found(&[(at, magic)]);
        assert_eq!(
            f,
            vec![Signature::Md {
                version,
                offset: at
            }]
        );
    }
}

#[test]
fn filesystems_are_named() {
    let ext4_incompat = 0x2c2u32.to_le_bytes();
    let cases: Vec<(Vec<Patch>, &str)> = vec![
        (vec![(1080, &[0x53, 0xef])], "ext2"),
        (vec![(1080, &[0x53, 0xef]), (1024 + 0x5c, &[4])], "ext3"),
        (
            vec![(1080, &[0x53, 0xef]), (1024 + 0x60, &ext4_incompat)],
            "ext4",
        ),
        (vec![(0, b"XFSB")], "xfs"),
        (vec![(0x10040, b"_BHRfS_M")], "btrfs"),
        (vec![(3, b"NTFS    "), (510, &[0x55, 0xaa])], "ntfs"),
        (vec![(3, b"EXFAT   "), (510, &[0x55, 0xaa])], "exfat"),
        (vec![(82, b"FAT32   "), (510, &[0x55, 0xaa])], "vfat"),
        (vec![(54, b"FAT16   "), (510, &[0x55, 0xaa])], "vfat"),
    ];
    for (patches, fs) in cases {
        assert_eq!(found(&patches), vec![Signature::Filesystem { fs }], "{fs}");
    }
}

#[test]
fn swap_luks_lvm_and_partition_tables_are_named() {
    assert_eq!(found(&[(4086, b"SWAPSPACE2")]), vec![Signature::Swap]);
    assert_eq!(
        found(&[(0, b"LUKS\xba\xbe\x00\x02")]),
        vec![Signature::Luks { version: 2 }]
    );
    assert_eq!(
        found(&[(512, b"LABELONE"), (536, b"LVM2 001")]),
        vec![Signature::LvmPv]
    );
    assert_eq!(
        found(&[(512, b"EFI PART"), (510, &[0x55, 0xaa]), (450, &[0xee])]),
        vec![Signature::Gpt]
    );
    assert_eq!(
        found(&[(510, &[0x55, 0xaa]), (450, &[0x83])]),
        vec![Signature::Mbr]
    );
}

#[test]
fn unknown_bytes_in_the_last_mib_are_data() {
    let at = SIZE - 100;
    assert_eq!(found(&[(at, &[7])]), vec![Signature::Data { offset: at }]);
    assert_eq!(found(&[(5, &[1])]), vec![Signature::Data { offset: 5 }]);
}

#[test]
fn small_devices_and_short_buffers_are_probed_without_panic() {
    for size in [0u64, 1, 511, 4096, 70_000, 1 << 21] {
        let head = vec![0xffu8; size.min(HEAD_LEN) as usize];
        let tail = vec![0xffu8; size.min(TAIL_LEN) as usize];
        let _ = probe(&head, &tail, size);
        let _ = probe(&head, &[], size.saturating_mul(3));
    }
}

proptest! {
    #[test]
    fn probe_never_panics(
        head in proptest::collection::vec(any::<u8>(), 0..70_000),
        tail in proptest::collection::vec(any::<u8>(), 0..9000),
        size in any::<u64>(),
        magic_at in 0usize..70_000,
    ) {
        let mut head = head;
        // Plant a magic sometimes so the deeper branches run too.
        if magic_at + 8 <= head.len() {
            head[magic_at..magic_at + 4].copy_from_slice(&[0xfc, 0x4e, 0x2b, 0xa9]);
        }
        let _ = probe(&head, &tail, size);
        let _ = probe(&head, &tail, head.len() as u64);
        let _ = probe(&head, &tail, (head.len() + tail.len()) as u64);
    }
}
