//! Fuzzes the virtio-blk request parser: fuzz bytes become guest memory
//! holding a virtqueue (descriptor table, available ring, data), every
//! available chain is parsed, and a status byte, when reported, must be
//! writable guest memory. Also parses a raw descriptor list taken from the
//! input directly, to reach chains the queue walker would cut short.
#![no_main]

use libfuzzer_sys::fuzz_target;
use virtio_queue::desc::split::Descriptor;
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vraid::export::vhost::request::parse;

const MEM: usize = 64 << 10;
const QUEUE_SIZE: u16 = 16;

fn check(
    result: Result<
        vraid::export::vhost::request::BlockRequest,
        vraid::export::vhost::request::ChainError,
    >,
) {
    let status = match result {
        Ok(req) => Some(req.status),
        Err(e) => e.status,
    };
    if let Some(s) = status {
        assert!(s.0 < MEM as u64, "status byte outside guest memory");
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(mem) = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), MEM)]) else {
        return;
    };
    let n = data.len().min(MEM);
    if mem.write_slice(&data[..n], GuestAddress(0)).is_err() {
        return;
    }

    // Raw list: up to 8 descriptors of 14 bytes from the start of the input.
    let raw: Vec<Descriptor> = data
        .chunks_exact(14)
        .take(8)
        .map(|d| {
            let addr = u64::from_le_bytes(d[0..8].try_into().unwrap()) % (2 * MEM as u64);
            let len = u32::from_le_bytes(d[8..12].try_into().unwrap()) % (2 * MEM as u32);
            let flags = u16::from_le_bytes(d[12..14].try_into().unwrap());
            Descriptor::new(addr, len, flags & 2, 0)
        })
        .collect();
    check(parse(&mem, raw));

    // A real split virtqueue: descriptor table at 0, avail ring at 0x1000.
    let Ok(mut q) = Queue::new(QUEUE_SIZE) else {
        return;
    };
    q.set_size(QUEUE_SIZE);
    q.set_desc_table_address(Some(0), Some(0));
    q.set_avail_ring_address(Some(0x1000), Some(0));
    q.set_used_ring_address(Some(0x2000), Some(0));
    q.set_ready(true);
    for _ in 0..QUEUE_SIZE {
        match q.pop_descriptor_chain(&mem) {
            Some(chain) => check(parse(&mem, chain)),
            None => break,
        }
    }
});
