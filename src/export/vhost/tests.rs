//! Unit tests of the request parser, the config space and request
//! execution, on a fake guest memory (anonymous mmap) and an in-memory volume.

use std::mem::offset_of;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use proptest::prelude::*;
use virtio_bindings::virtio_blk::{
    virtio_blk_config, VIRTIO_BLK_F_DISCARD, VIRTIO_BLK_F_RO, VIRTIO_BLK_F_SIZE_MAX,
    VIRTIO_BLK_T_DISCARD, VIRTIO_BLK_T_FLUSH, VIRTIO_BLK_T_GET_ID, VIRTIO_BLK_T_IN,
    VIRTIO_BLK_T_OUT, VIRTIO_BLK_T_WRITE_ZEROES,
};
use virtio_queue::desc::split::Descriptor;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::backend::{same_file, BlkBackend};
use super::device::{config_slice, DeviceSpec, CONFIG_LEN, WCE_OFFSET};
use super::exec::{answer, execute, ExportContext, Status, QUEUE_POOL};
use super::request::{parse, BlockRequest, Op, ParseError, Range, Sector, Segment, MAX_DATA_LEN};
use crate::block::{BlockDevice, Durability};
use crate::member::memory::MemDevice;
use crate::units::ByteOffset;

const MEM_SIZE: usize = 1 << 20;
const F_NEXT: u16 = 1;
const F_WRITE: u16 = 2;

fn memory() -> GuestMemoryMmap<()> {
    GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM_SIZE)]).unwrap()
}

fn header(mem: &GuestMemoryMmap<()>, at: u64, kind: u32, sector: u64) {
    let mut h = [0u8; 16];
    h[0..4].copy_from_slice(&kind.to_le_bytes());
    h[8..16].copy_from_slice(&sector.to_le_bytes());
    mem.write_slice(&h, GuestAddress(at)).unwrap();
}

fn out(addr: u64, len: u32) -> Descriptor {
    Descriptor::new(addr, len, F_NEXT, 0)
}

fn inp(addr: u64, len: u32) -> Descriptor {
    Descriptor::new(addr, len, F_NEXT | F_WRITE, 0)
}

fn seg(addr: u64, len: u32) -> Segment {
    Segment {
        addr: GuestAddress(addr),
        len,
    }
}

#[test]
fn read_request_parses_into_data_segments_and_status() {
    let mem = memory();
    header(&mem, 0x100, VIRTIO_BLK_T_IN, 8);

    let req = parse(
        &mem,
        [
            out(0x100, 16),
            inp(0x1000, 512),
            inp(0x2000, 512),
            inp(0x3000, 1),
        ],
    )
    .unwrap();

    assert_eq!(
        req,
        BlockRequest {
            op: Op::Read(vec![seg(0x1000, 512), seg(0x2000, 512)]),
            sector: Sector(8),
            status: GuestAddress(0x3000),
        }
    );
}

#[test]
fn header_data_and_status_may_share_descriptors() {
    let mem = memory();
    header(&mem, 0x100, VIRTIO_BLK_T_OUT, 3);

    // Header and the first 8 data bytes in one descriptor, the header split
    // in two, the status byte at the end of a data descriptor.
    let write = parse(&mem, [out(0x100, 10), out(0x10a, 6 + 512), inp(0x5000, 1)]).unwrap();
    header(&mem, 0x200, VIRTIO_BLK_T_IN, 0);
    let read = parse(&mem, [out(0x200, 16), inp(0x6000, 513)]).unwrap();

    assert_eq!(write.op, Op::Write(vec![seg(0x110, 512)]));
    assert_eq!(write.sector, Sector(3));
    assert_eq!(read.op, Op::Read(vec![seg(0x6000, 512)]));
    assert_eq!(read.status, GuestAddress(0x6200));
}

/// An indirect table may hold up to 65535 descriptors: a request of more
/// than `MAX_DESCRIPTORS` (4096, far over `seg_max`) is refused before the
/// rest of the chain is read; its status byte is unknown, so the caller
/// returns the chain without one (and logs it).
#[test]
fn chain_of_more_than_max_descriptors_is_refused_unread() {
    let mem = memory();
    header(&mem, 0x100, VIRTIO_BLK_T_IN, 0);
    let chain = std::iter::once(out(0x100, 16))
        .chain((0..5000u64).map(|i| inp(0x1000 + 512 * (i % 1000), 512)))
        .chain(std::iter::once(inp(0x800, 1)));

    let e = parse(&mem, chain).unwrap_err();

    assert_eq!((e.status, e.kind), (None, ParseError::TooManyDescriptors));
}

#[test]
fn chain_without_writable_status_cannot_be_answered() {
    let mem = memory();
    header(&mem, 0x100, VIRTIO_BLK_T_FLUSH, 0);

    let no_write = parse(&mem, [out(0x100, 16)]).unwrap_err();
    let empty = parse(&mem, []).unwrap_err();
    let status_outside = parse(&mem, [out(0x100, 16), inp(MEM_SIZE as u64, 1)]).unwrap_err();

    assert_eq!(
        (no_write.status, no_write.kind),
        (None, ParseError::NoStatus)
    );
    assert_eq!((empty.status, empty.kind), (None, ParseError::Empty));
    assert_eq!(status_outside.status, None);
}

#[test]
fn descriptor_outside_guest_memory_is_an_io_error_with_status() {
    let mem = memory();
    header(&mem, 0x100, VIRTIO_BLK_T_IN, 0);

    let e = parse(
        &mem,
        [
            out(0x100, 16),
            inp(MEM_SIZE as u64 - 256, 512),
            inp(0x3000, 1),
        ],
    )
    .unwrap_err();

    assert_eq!(e.status, Some(GuestAddress(0x3000)));
    assert!(matches!(e.kind, ParseError::OutsideMemory { .. }), "{e}");
}

#[test]
fn malformed_requests_are_refused() {
    let mem = memory();
    header(&mem, 0x100, VIRTIO_BLK_T_IN, 0);
    header(&mem, 0x200, VIRTIO_BLK_T_OUT, 0);
    let status = inp(0x3000, 1);

    let cases = [
        (vec![out(0x100, 8), status], ParseError::ShortHeader(8)),
        (vec![out(0x100, 16), status], ParseError::BadDataLength(0)),
        (
            vec![out(0x100, 16), inp(0x1000, 100), status],
            ParseError::BadDataLength(100),
        ),
        (
            vec![inp(0x1000, 512), out(0x100, 16), status],
            ParseError::ReadableAfterWritable,
        ),
        (
            vec![out(0x200, 16), out(0x1000, 512), inp(0x1000, 512), status],
            ParseError::UnexpectedData {
                kind: VIRTIO_BLK_T_OUT,
                len: 512,
            },
        ),
    ];

    for (chain, expected) in cases {
        let e = parse(&mem, chain).unwrap_err();
        assert_eq!(e.status, Some(GuestAddress(0x3000)));
        assert_eq!(e.kind, expected);
    }
}

#[test]
fn oversized_transfer_is_refused() {
    let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 40 << 20)]).unwrap();
    header(&mem, 0x100, VIRTIO_BLK_T_IN, 0);
    let big = (MAX_DATA_LEN + 512) as u32;

    let e = parse(&mem, [out(0x100, 16), inp(0x1000, big), inp(0x200, 1)]).unwrap_err();

    assert_eq!(e.kind, ParseError::TooLarge(MAX_DATA_LEN + 512));
}

#[test]
fn unknown_type_parses_as_unsupported() {
    let mem = memory();
    header(&mem, 0x100, 0x77, 0);

    let req = parse(&mem, [out(0x100, 16), inp(0x3000, 1)]).unwrap();

    assert_eq!(req.op, Op::Unsupported(0x77));
}

#[test]
fn discard_and_write_zeroes_ranges_are_decoded() {
    let mem = memory();
    header(&mem, 0x100, VIRTIO_BLK_T_DISCARD, 0);
    header(&mem, 0x200, VIRTIO_BLK_T_WRITE_ZEROES, 0);
    let mut ranges = [0u8; 32];
    ranges[0..8].copy_from_slice(&16u64.to_le_bytes());
    ranges[8..12].copy_from_slice(&8u32.to_le_bytes());
    ranges[16..24].copy_from_slice(&64u64.to_le_bytes());
    ranges[24..28].copy_from_slice(&1u32.to_le_bytes());
    ranges[28..32].copy_from_slice(&1u32.to_le_bytes());
    mem.write_slice(&ranges, GuestAddress(0x400)).unwrap();

    let discard = parse(&mem, [out(0x100, 16), out(0x400, 16), inp(0x3000, 1)]).unwrap();
    let zeroes = parse(&mem, [out(0x200, 16), out(0x400, 32), inp(0x3000, 1)]).unwrap();
    let ragged = parse(&mem, [out(0x200, 16), out(0x400, 20), inp(0x3000, 1)]).unwrap_err();

    let r0 = Range {
        sector: Sector(16),
        num_sectors: 8,
        flags: 0,
    };
    let r1 = Range {
        sector: Sector(64),
        num_sectors: 1,
        flags: 1,
    };
    assert_eq!(discard.op, Op::Discard(vec![r0]));
    assert_eq!(zeroes.op, Op::WriteZeroes(vec![r0, r1]));
    assert_eq!(ragged.kind, ParseError::BadRangeList(20));
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn parser_never_panics_and_status_is_writable_memory(
        descs in proptest::collection::vec(
            (0u64..(MEM_SIZE as u64 + 4096), 0u32..70_000, 0u16..4),
            0..12,
        ),
        kind in prop_oneof![Just(0u32), Just(1), Just(4), Just(8), Just(11), Just(13), any::<u32>()],
    ) {
        let mem = memory();
        header(&mem, 0, kind, 1);
        let chain: Vec<_> = descs
            .iter()
            .map(|&(addr, len, flags)| Descriptor::new(addr, len, flags & F_WRITE, 0))
            .collect();

        let result = parse(&mem, chain);

        let status = match result {
            Ok(r) => Some(r.status),
            Err(e) => e.status,
        };
        if let Some(s) = status {
            prop_assert!(s.0 < MEM_SIZE as u64);
        }
    }
}

fn spec(read_only: bool) -> DeviceSpec {
    DeviceSpec {
        name: "vol0".into(),
        size: 3 * (1 << 20),
        read_only,
        num_queues: 2,
        min_io: 64 << 10,
        opt_io: 3 * (64 << 10),
    }
}

#[test]
fn config_space_matches_virtio_blk_config_layout() {
    let c = spec(false).config_space(true);

    let u16_at = |o: usize| u16::from_le_bytes(c[o..o + 2].try_into().unwrap());
    let u32_at = |o: usize| u32::from_le_bytes(c[o..o + 4].try_into().unwrap());
    let capacity = offset_of!(virtio_blk_config, capacity);
    assert_eq!(
        u64::from_le_bytes(c[capacity..capacity + 8].try_into().unwrap()),
        6144
    );
    assert_eq!(u32_at(offset_of!(virtio_blk_config, blk_size)), 512);
    let (size_max, seg_max) = (
        u32_at(offset_of!(virtio_blk_config, size_max)),
        u32_at(offset_of!(virtio_blk_config, seg_max)),
    );
    assert_eq!(size_max, 128 << 10);
    assert!(u64::from(size_max) * u64::from(seg_max) <= MAX_DATA_LEN);
    assert_ne!(spec(false).features() & (1 << VIRTIO_BLK_F_SIZE_MAX), 0);
    assert_eq!(c[offset_of!(virtio_blk_config, physical_block_exp)], 3);
    assert_eq!(u16_at(offset_of!(virtio_blk_config, min_io_size)), 128);
    assert_eq!(u32_at(offset_of!(virtio_blk_config, opt_io_size)), 384);
    assert_eq!(offset_of!(virtio_blk_config, wce), WCE_OFFSET);
    assert_eq!(c[WCE_OFFSET], 1);
    assert_eq!(u16_at(offset_of!(virtio_blk_config, num_queues)), 2);
    assert_eq!(u32_at(offset_of!(virtio_blk_config, max_discard_seg)), 16);
    assert_eq!(c[offset_of!(virtio_blk_config, write_zeroes_may_unmap)], 1);
    assert!(offset_of!(virtio_blk_config, write_zeroes_may_unmap) < CONFIG_LEN);
}

#[test]
fn config_slice_zero_pads_unoffered_fields_and_refuses_past_256_bytes() {
    let c = spec(false).config_space(true);

    let wce = config_slice(&c, 32, 1);
    let tail = config_slice(&c, 56, 8).unwrap();
    let beyond = config_slice(&c, 100, 4);

    assert_eq!(wce, Some(vec![1]));
    assert_eq!(tail, vec![1, 0, 0, 0, 0, 0, 0, 0]);
    assert_eq!(beyond, Some(vec![0; 4]));
    assert_eq!(config_slice(&c, 250, 8), None);
    assert_eq!(config_slice(&c, u32::MAX, u32::MAX), None);
}

#[test]
fn read_only_device_advertises_ro_and_no_discard_nor_dirty_log() {
    let ro = spec(true).features();
    let rw = spec(false).features();
    let log_all = 1u64 << 26; // VHOST_F_LOG_ALL

    assert_ne!(ro & (1 << VIRTIO_BLK_F_RO), 0);
    assert_eq!(ro & (1 << VIRTIO_BLK_F_DISCARD), 0);
    assert_eq!(rw & (1 << VIRTIO_BLK_F_RO), 0);
    assert_ne!(rw & (1 << VIRTIO_BLK_F_DISCARD), 0);
    assert_eq!(rw & log_all, 0);
    assert!(!DeviceSpec::protocol_features()
        .contains(vhost::vhost_user::message::VhostUserProtocolFeatures::LOG_SHMFD));
}

#[test]
fn get_id_is_the_volume_name_nul_padded() {
    let id = spec(false).id();

    assert_eq!(&id[..4], b"vol0");
    assert!(id[4..].iter().all(|&b| b == 0));
}

fn context(read_only: bool) -> (Arc<MemDevice>, ExportContext) {
    let dev = Arc::new(MemDevice::new("mem", 3 << 20));
    let ctx = ExportContext {
        device: dev.clone() as Arc<dyn BlockDevice>,
        spec: spec(read_only),
        writeback: AtomicBool::new(true),
    };
    (dev, ctx)
}

async fn run(ctx: &ExportContext, mem: &GuestMemoryMmap<()>, req: &BlockRequest) -> (Status, u32) {
    let mem = Arc::new(mem.clone());
    execute(
        ctx,
        &crate::member::buf::BufPool::new(QUEUE_POOL),
        &mem,
        req,
    )
    .await
}

fn request(op: Op, sector: u64) -> BlockRequest {
    BlockRequest {
        op,
        sector: Sector(sector),
        status: GuestAddress(0x3000),
    }
}

#[tokio::test]
async fn write_then_read_round_trips_through_guest_memory() {
    let (dev, ctx) = context(false);
    let mem = memory();
    let pattern: Vec<u8> = (0..1024u32).map(|i| (i * 7) as u8).collect();
    mem.write_slice(&pattern, GuestAddress(0x1000)).unwrap();

    let w = run(
        &ctx,
        &mem,
        &request(Op::Write(vec![seg(0x1000, 512), seg(0x1200, 512)]), 2),
    )
    .await;
    let r = run(&ctx, &mem, &request(Op::Read(vec![seg(0x8000, 1024)]), 2)).await;

    assert_eq!(w, (Status::OK, 0));
    assert_eq!(r, (Status::OK, 1024));
    let mut back = vec![0u8; 1024];
    mem.read_slice(&mut back, GuestAddress(0x8000)).unwrap();
    assert_eq!(back, pattern);
    assert_eq!(&dev.snapshot()[1024..2048], &pattern[..]);
}

/// Data-in segments that overlap each other cannot be lent out as
/// separate slices: the read goes through a buffer and still answers.
#[tokio::test]
async fn overlapping_read_segments_are_served_through_a_copy() {
    let (dev, ctx) = context(false);
    let mem = memory();
    let pattern: Vec<u8> = (0..1024u32).map(|i| (i % 251) as u8).collect();
    dev.write(ByteOffset(0), &pattern, Durability::Normal)
        .await
        .unwrap();

    let r = run(
        &ctx,
        &mem,
        &request(Op::Read(vec![seg(0x8000, 512), seg(0x8100, 512)]), 0),
    )
    .await;

    assert_eq!(r, (Status::OK, 1024));
    let mut back = vec![0u8; 768];
    mem.read_slice(&mut back, GuestAddress(0x8000)).unwrap();
    assert_eq!(&back[..256], &pattern[..256]);
    assert_eq!(&back[256..], &pattern[512..1024]);
}

#[tokio::test]
async fn sectors_past_the_end_are_io_errors() {
    let (_dev, ctx) = context(false);
    let mem = memory();
    let last = (3 << 20) / 512;

    let read = run(
        &ctx,
        &mem,
        &request(Op::Read(vec![seg(0x1000, 1024)]), last - 1),
    )
    .await;
    let huge = run(
        &ctx,
        &mem,
        &request(Op::Read(vec![seg(0x1000, 512)]), u64::MAX),
    )
    .await;
    let range = Range {
        sector: Sector(last),
        num_sectors: 1,
        flags: 0,
    };
    let discard = run(&ctx, &mem, &request(Op::Discard(vec![range]), 0)).await;

    assert_eq!(read.0, Status::IOERR);
    assert_eq!(huge.0, Status::IOERR);
    assert_eq!(discard.0, Status::IOERR);
}

#[tokio::test]
async fn read_only_export_refuses_writes_but_reads_and_flushes() {
    let (_dev, ctx) = context(true);
    let mem = memory();
    let range = Range {
        sector: Sector(0),
        num_sectors: 8,
        flags: 0,
    };

    let write = run(&ctx, &mem, &request(Op::Write(vec![seg(0x1000, 512)]), 0)).await;
    let zeroes = run(&ctx, &mem, &request(Op::WriteZeroes(vec![range]), 0)).await;
    let read = run(&ctx, &mem, &request(Op::Read(vec![seg(0x1000, 512)]), 0)).await;
    let flush = run(&ctx, &mem, &request(Op::Flush, 0)).await;

    assert_eq!(write.0, Status::IOERR);
    assert_eq!(zeroes.0, Status::IOERR);
    assert_eq!(read.0, Status::OK);
    assert_eq!(flush.0, Status::OK);
}

#[tokio::test]
async fn discard_with_unmap_flag_and_unknown_types_are_unsupported() {
    let (_dev, ctx) = context(false);
    let mem = memory();
    let unmap = Range {
        sector: Sector(0),
        num_sectors: 8,
        flags: 1,
    };
    let reserved = Range { flags: 2, ..unmap };

    let discard = run(&ctx, &mem, &request(Op::Discard(vec![unmap]), 0)).await;
    let zeroes = run(&ctx, &mem, &request(Op::WriteZeroes(vec![reserved]), 0)).await;
    let unknown = run(&ctx, &mem, &request(Op::Unsupported(99), 0)).await;

    assert_eq!(discard.0, Status::UNSUPP);
    assert_eq!(zeroes.0, Status::UNSUPP);
    assert_eq!(unknown.0, Status::UNSUPP);
}

#[tokio::test]
async fn write_zeroes_clears_and_get_id_answers_name() {
    let (dev, ctx) = context(false);
    let mem = memory();
    mem.write_slice(&[0xaa; 4096], GuestAddress(0x1000))
        .unwrap();
    run(&ctx, &mem, &request(Op::Write(vec![seg(0x1000, 4096)]), 0)).await;
    let range = Range {
        sector: Sector(1),
        num_sectors: 2,
        flags: 1,
    };

    let zeroes = run(&ctx, &mem, &request(Op::WriteZeroes(vec![range]), 0)).await;
    let id = run(&ctx, &mem, &request(Op::GetId(vec![seg(0x9000, 20)]), 0)).await;

    assert_eq!(zeroes, (Status::OK, 0));
    let data = dev.snapshot();
    assert!(data[..512].iter().all(|&b| b == 0xaa));
    assert!(data[512..1536].iter().all(|&b| b == 0));
    assert!(data[1536..4096].iter().all(|&b| b == 0xaa));
    assert_eq!(id, (Status::OK, 20));
    let mut name = [0u8; 4];
    mem.read_slice(&mut name, GuestAddress(0x9000)).unwrap();
    assert_eq!(&name, b"vol0");
}

#[tokio::test]
async fn failing_volume_reads_are_io_errors() {
    let (dev, ctx) = context(false);
    let mem = memory();
    dev.set_failing(true);

    let r = run(&ctx, &mem, &request(Op::Read(vec![seg(0x1000, 512)]), 0)).await;

    assert_eq!(r, (Status::IOERR, 0));
}

#[test]
fn answer_writes_status_and_counts_it_in_used_length() {
    let mem = memory();

    let used = answer(&mem, GuestAddress(0x3000), Status::UNSUPP, 512);
    let outside = answer(&mem, GuestAddress(MEM_SIZE as u64), Status::IOERR, 0);

    assert_eq!(used, 513);
    assert_eq!(mem.read_obj::<u8>(GuestAddress(0x3000)).unwrap(), 2);
    assert_eq!(outside, 0);
}

#[test]
fn get_id_request_parses() {
    let mem = memory();
    header(&mem, 0x100, VIRTIO_BLK_T_GET_ID, 0);

    let req = parse(&mem, [out(0x100, 16), inp(0x1000, 21)]).unwrap();

    assert_eq!(req.op, Op::GetId(vec![seg(0x1000, 20)]));
}

#[tokio::test]
async fn backend_exposes_config_wce_and_one_thread_per_queue() {
    use vhost_user_backend::VhostUserBackend;
    let (_dev, ctx) = context(false);
    let backend = BlkBackend::new(Arc::new(ctx), tokio::runtime::Handle::current()).unwrap();

    let wce_before = backend.get_config(WCE_OFFSET as u32, 1);
    backend.set_config(WCE_OFFSET as u32, &[0]).unwrap();
    let wce_after = backend.get_config(WCE_OFFSET as u32, 1);
    let bad_write = backend.set_config(0, &[1, 2, 3, 4]);

    assert_eq!(wce_before, vec![1]);
    assert_eq!(wce_after, vec![0]);
    assert!(bad_write.is_err());
    assert_eq!(backend.num_queues(), 2);
    assert_eq!(backend.queues_per_thread(), vec![1, 2]);
    // The event loop takes the consumer over by number; the backend closes it.
    let (consumer, _notifier) = backend.exit_event(0).unwrap();
    let _ = std::os::fd::IntoRawFd::into_raw_fd(consumer);
    assert!(backend.stop_vring(0).is_ok());
    assert_eq!(backend.in_flight(), 0);
}

// ------------------------------------------------------------ exit eventfds

#[test]
fn exit_eventfd_taken_over_by_number_is_closed_with_the_backend() {
    use std::os::fd::{AsRawFd, IntoRawFd};
    use vmm_sys_util::event::{new_event_consumer_and_notifier, EventFlag};
    let fds = super::backend::ExitFds::default();
    let (consumer, _notifier) = new_event_consumer_and_notifier(EventFlag::NONBLOCK).unwrap();
    let witness = consumer.try_clone().unwrap();
    fds.adopt(&consumer).unwrap();
    // What the vhost-user event loop does with it.
    let raw = consumer.into_raw_fd();
    assert_eq!(same_file(raw, witness.as_raw_fd()), Some(true));

    drop(fds);

    assert_eq!(same_file(raw, witness.as_raw_fd()), Some(false));
}

#[test]
fn exit_eventfd_closed_by_its_owner_is_not_closed_again() {
    use std::os::fd::AsRawFd;
    use vmm_sys_util::event::{new_event_consumer_and_notifier, EventFlag};
    let fds = super::backend::ExitFds::default();
    let (consumer, _notifier) = new_event_consumer_and_notifier(EventFlag::NONBLOCK).unwrap();
    fds.adopt(&consumer).unwrap();
    let raw = consumer.as_raw_fd();
    drop(consumer);
    // The number is free: the next open in this thread most likely reuses it.
    let other = std::fs::File::open("/dev/null").unwrap();
    let reused = other.as_raw_fd() == raw;

    drop(fds);

    // SAFETY: F_GETFD on a descriptor we own reads its flags only.
    let alive = unsafe { libc::fcntl(other.as_raw_fd(), libc::F_GETFD) } >= 0;
    assert!(
        alive,
        "another file's descriptor (reused number: {reused}) was closed"
    );
}
