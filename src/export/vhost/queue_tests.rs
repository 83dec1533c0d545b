//! Unit tests of the queue handling (`BlkBackend::handle_event` ─►
//! `process_queue` ─► execute ─► used ring, interrupt), with the driver's
//! side built by virtio-queue's `MockSplitQueue` as rust-vmm's crates do:
//! no VM, no vhost-user socket.
//!
//! The mock lays out the descriptor table and the available ring; the used
//! ring is put at [`USED`] (the mock's own used ring starts inside the
//! available ring's tail when the queue has more than a few entries).

use std::fs::File;
use std::os::fd::{FromRawFd, IntoRawFd};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use vhost_user_backend::{VhostUserBackend, VringT};
use virtio_bindings::virtio_blk::{
    VIRTIO_BLK_T_FLUSH, VIRTIO_BLK_T_GET_ID, VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT,
};
use virtio_queue::desc::{split::Descriptor, RawDescriptor};
use virtio_queue::mock::MockSplitQueue;
use vm_memory::{Bytes, GuestAddress, GuestMemoryAtomic, GuestMemoryMmap};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::backend::{BlkBackend, Vring};
use super::device::DeviceSpec;
use super::exec::{ExportContext, Status};
use crate::block::BlockDevice;
use crate::member::memory::MemDevice;
use crate::units::ByteOffset;

type Mem = GuestMemoryMmap<()>;

const QUEUE_LEN: u16 = 16;
/// Where the device is told the used ring is.
const USED: u64 = 0x400;
const F_NEXT: u16 = 1;
const F_WRITE: u16 = 2;

/// One descriptor of a chain: guest address, length, device-writable.
type Desc = (u64, u32, bool);

/// A backend over an in-memory volume, queue 0 set up on `mem` through
/// `mock`, and the queue's interrupt eventfd.
struct Fixture {
    dev: Arc<MemDevice>,
    backend: BlkBackend,
    vring: Vring,
    call: EventFd,
}

fn fixture(mem: &Mem, mock: &MockSplitQueue<'_, Mem>, event_idx: bool) -> Fixture {
    let dev = Arc::new(MemDevice::new("mem", 1 << 20));
    let ctx = ExportContext {
        device: dev.clone() as Arc<dyn BlockDevice>,
        spec: DeviceSpec {
            name: "vol0".into(),
            size: 1 << 20,
            read_only: false,
            num_queues: 1,
            min_io: 4096,
            opt_io: 4096,
        },
        writeback: AtomicBool::new(true),
    };
    let backend = BlkBackend::new(Arc::new(ctx), tokio::runtime::Handle::current()).unwrap();
    let atomic = GuestMemoryAtomic::new(mem.clone());
    backend.update_memory(atomic.clone()).unwrap();
    backend.set_event_idx(event_idx);
    let vring = Vring::new(atomic, QUEUE_LEN).unwrap();
    vring.set_queue_size(QUEUE_LEN);
    vring
        .set_queue_info(mock.desc_table_addr().0, mock.avail_addr().0, USED)
        .unwrap();
    vring.set_queue_event_idx(event_idx);
    vring.set_queue_ready(true);
    vring.set_enabled(true);
    let call = EventFd::new(EFD_NONBLOCK).unwrap();
    let dup = call.try_clone().unwrap().into_raw_fd();
    // SAFETY: `dup` is a descriptor nothing else owns (`into_raw_fd` gave
    // it up); the File becomes its only owner.
    vring.set_call(Some(unsafe { File::from_raw_fd(dup) }));
    Fixture {
        dev,
        backend,
        vring,
        call,
    }
}

impl Fixture {
    /// The kick of queue 0.
    fn kick(&self) {
        let vrings = [self.vring.clone()];
        self.backend
            .handle_event(0, EventSet::IN, &vrings, 0)
            .unwrap();
    }

    /// Whether the queue's interrupt was signalled since the last call.
    fn signalled(&self) -> bool {
        self.call.read().is_ok()
    }
}

fn memory() -> Mem {
    GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap()
}

/// Writes `chain` to the descriptor table from index `first` on, linked,
/// and makes it available to the device.
fn offer(mock: &MockSplitQueue<'_, Mem>, first: u16, chain: &[Desc]) {
    let last = chain.len() - 1;
    let descs: Vec<RawDescriptor> = chain
        .iter()
        .enumerate()
        .map(|(i, &(addr, len, writable))| {
            let next = if i < last { F_NEXT } else { 0 };
            let write = if writable { F_WRITE } else { 0 };
            let index = first + i as u16 + 1;
            RawDescriptor::from(Descriptor::new(addr, len, next | write, index))
        })
        .collect();
    mock.add_desc_chains(&descs, first).unwrap();
}

fn header(mem: &Mem, at: u64, kind: u32, sector: u64) {
    let mut h = [0u8; 16];
    h[0..4].copy_from_slice(&kind.to_le_bytes());
    h[8..16].copy_from_slice(&sector.to_le_bytes());
    mem.write_slice(&h, GuestAddress(at)).unwrap();
}

fn used_idx(mem: &Mem) -> u16 {
    mem.read_obj(GuestAddress(USED + 2)).unwrap()
}

/// The used ring's entries so far: (head, bytes written), sorted.
fn used(mem: &Mem) -> Vec<(u32, u32)> {
    let mut entries: Vec<(u32, u32)> = (0..u64::from(used_idx(mem)))
        .map(|i| {
            let at = USED + 4 + 8 * i;
            let id = mem.read_obj(GuestAddress(at)).unwrap();
            let len = mem.read_obj(GuestAddress(at + 4)).unwrap();
            (id, len)
        })
        .collect();
    entries.sort_unstable();
    entries
}

/// `avail_event`, written by the device: the driver kicks again when its
/// available index passes it.
fn avail_event(mem: &Mem) -> u16 {
    mem.read_obj(GuestAddress(USED + 4 + 8 * u64::from(QUEUE_LEN)))
        .unwrap()
}

/// Sets `used_event`: the driver wants an interrupt once the used index
/// passes it.
fn set_used_event(mem: &Mem, mock: &MockSplitQueue<'_, Mem>, value: u16) {
    let at = mock.avail_addr().0 + 4 + 2 * u64::from(QUEUE_LEN);
    mem.write_obj(value, GuestAddress(at)).unwrap();
}

fn status(mem: &Mem, at: u64) -> u8 {
    mem.read_obj(GuestAddress(at)).unwrap()
}

fn flush_chain(mem: &Mem, at: u64, status_at: u64) -> [Desc; 2] {
    header(mem, at, VIRTIO_BLK_T_FLUSH, 0);
    [(at, 16, false), (status_at, 1, true)]
}

#[tokio::test]
async fn a_kick_answers_every_available_chain_in_guest_memory() {
    // Arrange: a write of one sector and a GET_ID.
    let mem = memory();
    let mock = MockSplitQueue::create(&mem, GuestAddress(0), QUEUE_LEN);
    let f = fixture(&mem, &mock, false);
    let data: Vec<u8> = (0..512u32).map(|i| i as u8).collect();
    header(&mem, 0x1000, VIRTIO_BLK_T_OUT, 2);
    mem.write_slice(&data, GuestAddress(0x2000)).unwrap();
    offer(
        &mock,
        0,
        &[(0x1000, 16, false), (0x2000, 512, false), (0x3000, 1, true)],
    );
    header(&mem, 0x1100, VIRTIO_BLK_T_GET_ID, 0);
    offer(
        &mock,
        3,
        &[(0x1100, 16, false), (0x4000, 20, true), (0x3001, 1, true)],
    );

    // Act
    f.kick();

    // Assert: both on the used ring (the GET_ID with its 20 bytes + status).
    assert_eq!(used(&mem), vec![(0, 1), (3, 21)]);
    assert_eq!(status(&mem, 0x3000), Status::OK.0);
    assert_eq!(status(&mem, 0x3001), Status::OK.0);
    let mut written = vec![0u8; 512];
    f.dev.read(ByteOffset(2 * 512), &mut written).await.unwrap();
    assert_eq!(written, data);
    let mut id = [0u8; 4];
    mem.read_slice(&mut id, GuestAddress(0x4000)).unwrap();
    assert_eq!(&id, b"vol0");
    assert!(f.signalled(), "no interrupt without EVENT_IDX");
    assert_eq!(f.backend.in_flight(), 0);
}

#[tokio::test]
async fn a_malformed_chain_is_answered_with_ioerr_and_the_next_still_runs() {
    // Arrange: a header outside guest memory, then a flush.
    let mem = memory();
    let mock = MockSplitQueue::create(&mem, GuestAddress(0), QUEUE_LEN);
    let f = fixture(&mem, &mock, false);
    offer(&mock, 0, &[(0x20_0000, 16, false), (0x3000, 1, true)]);
    offer(&mock, 2, &flush_chain(&mem, 0x1100, 0x3001));

    // Act
    f.kick();

    // Assert
    assert_eq!(used(&mem), vec![(0, 1), (2, 1)]);
    assert_eq!(status(&mem, 0x3000), Status::IOERR.0);
    assert_eq!(status(&mem, 0x3001), Status::OK.0);
    assert_eq!(f.dev.flushes(), 1);
}

#[tokio::test]
async fn with_event_idx_kicks_are_rearmed_at_the_next_available_index() {
    // Arrange
    let mem = memory();
    let mock = MockSplitQueue::create(&mem, GuestAddress(0), QUEUE_LEN);
    let f = fixture(&mem, &mock, true);
    offer(&mock, 0, &flush_chain(&mem, 0x1000, 0x3000));
    offer(&mock, 2, &flush_chain(&mem, 0x1100, 0x3001));

    // Act
    f.kick();

    // Assert: both answered; the driver is asked to kick for the third.
    assert_eq!(used_idx(&mem), 2);
    assert_eq!(avail_event(&mem), 2);
}

#[tokio::test]
async fn with_event_idx_no_interrupt_until_the_used_index_passes_used_event() {
    // Arrange: the driver wants an interrupt only after the 6th completion.
    let mem = memory();
    let mock = MockSplitQueue::create(&mem, GuestAddress(0), QUEUE_LEN);
    let f = fixture(&mem, &mock, true);
    set_used_event(&mem, &mock, 5);
    offer(&mock, 0, &flush_chain(&mem, 0x1000, 0x3000));
    offer(&mock, 2, &flush_chain(&mem, 0x1100, 0x3001));

    // Act: two completions, then the driver lowers used_event and a third.
    f.kick();
    let early = f.signalled();
    set_used_event(&mem, &mock, 2);
    offer(&mock, 4, &flush_chain(&mem, 0x1200, 0x3002));
    f.kick();
    let late = f.signalled();

    // Assert
    assert_eq!(used_idx(&mem), 3);
    assert!(!early, "interrupt sent before the driver asked for one");
    assert!(late, "no interrupt once the used index passed used_event");
}

/// Writes descriptors from index 0 on, each with NEXT to the index given,
/// and makes index 0 available (a chain the driver never ended).
fn offer_linked(mock: &MockSplitQueue<'_, Mem>, chain: &[(u64, u32, bool, u16)]) {
    let descs: Vec<RawDescriptor> = chain
        .iter()
        .map(|&(addr, len, writable, next)| {
            let write = if writable { F_WRITE } else { 0 };
            RawDescriptor::from(Descriptor::new(addr, len, F_NEXT | write, next))
        })
        .collect();
    mock.add_desc_chains(&descs, 0).unwrap();
}

/// Break (session 16): a chain whose status descriptor links past the
/// descriptor table was cut there by virtio-queue's iterator, silently,
/// and what it had yielded ran as a well-formed write.
#[tokio::test]
async fn a_chain_linking_past_the_table_is_refused_and_the_next_still_runs() {
    // Arrange: a one-sector write whose "status" says NEXT 99 (queue of 16).
    let mem = memory();
    let mock = MockSplitQueue::create(&mem, GuestAddress(0), QUEUE_LEN);
    let f = fixture(&mem, &mock, false);
    header(&mem, 0x1000, VIRTIO_BLK_T_OUT, 0);
    mem.write_slice(&[0xaa; 512], GuestAddress(0x2000)).unwrap();
    offer_linked(
        &mock,
        &[
            (0x1000, 16, false, 1),
            (0x2000, 512, false, 2),
            (0x3000, 1, true, 99),
        ],
    );
    offer(&mock, 3, &flush_chain(&mem, 0x1100, 0x3001));

    // Act
    f.kick();

    // Assert: refused with IOERR, nothing written, the flush answered.
    assert_eq!(used(&mem), vec![(0, 1), (3, 1)]);
    assert_eq!(status(&mem, 0x3000), Status::IOERR.0);
    assert_eq!(status(&mem, 0x3001), Status::OK.0);
    let mut written = vec![0u8; 512];
    f.dev.read(ByteOffset(0), &mut written).await.unwrap();
    assert_eq!(written, vec![0u8; 512], "the cut chain's write ran");
    assert_eq!(f.backend.in_flight(), 0);
}

/// Break (session 16): a looping chain (status links back to the data)
/// was cut after queue-size descriptors and, with lengths chosen so the
/// repeated descriptors sum to whole sectors, ran as a 14-sector read.
#[tokio::test]
async fn a_looping_chain_is_refused_and_the_next_still_runs() {
    // Arrange: IN header, data 512 (W), 439 bytes (W) linking back to the
    // data: 16 descriptors yield 8 x 512 + 7 x 439 - 1 = 14 x 512 bytes.
    let mem = memory();
    let mock = MockSplitQueue::create(&mem, GuestAddress(0), QUEUE_LEN);
    let f = fixture(&mem, &mock, false);
    header(&mem, 0x1000, VIRTIO_BLK_T_IN, 0);
    offer_linked(
        &mock,
        &[
            (0x1000, 16, false, 1),
            (0x2000, 512, true, 2),
            (0x3000, 439, true, 1),
        ],
    );
    offer(&mock, 3, &flush_chain(&mem, 0x1100, 0x3801));

    // Act
    f.kick();

    // Assert: IOERR in the last writable byte yielded, the flush answered.
    assert_eq!(used(&mem), vec![(0, 1), (3, 1)]);
    assert_eq!(status(&mem, 0x2000 + 511), Status::IOERR.0);
    assert_eq!(status(&mem, 0x3801), Status::OK.0);
    assert_eq!(f.dev.flushes(), 1);
    assert_eq!(f.backend.in_flight(), 0);
}
