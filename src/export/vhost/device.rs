//! What the guest sees: virtio-blk feature bits, vhost-user protocol
//! features and the config space, all derived from a [`DeviceSpec`].
//! Pure; the config space layout is `struct virtio_blk_config` byte by byte.

use vhost::vhost_user::message::{VhostUserProtocolFeatures, VhostUserVirtioFeatures};
use virtio_bindings::virtio_blk::{
    VIRTIO_BLK_F_BLK_SIZE, VIRTIO_BLK_F_CONFIG_WCE, VIRTIO_BLK_F_DISCARD, VIRTIO_BLK_F_FLUSH,
    VIRTIO_BLK_F_MQ, VIRTIO_BLK_F_RO, VIRTIO_BLK_F_SEG_MAX, VIRTIO_BLK_F_SIZE_MAX,
    VIRTIO_BLK_F_TOPOLOGY, VIRTIO_BLK_F_WRITE_ZEROES, VIRTIO_BLK_ID_BYTES,
};
use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_bindings::virtio_ring::{VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC};

use super::request::{MAX_DATA_LEN, MAX_RANGES, SECTOR_SIZE};

/// Logical block size the guest sees.
pub const BLOCK_SIZE: u32 = 512;
/// log2(physical block / logical block): 4 KiB physical blocks.
pub const PHYSICAL_BLOCK_EXP: u8 = 3;
/// Largest queue the frontend may configure.
pub const MAX_QUEUE_SIZE: usize = 1024;
/// Data segments per request (`seg_max`).
pub const SEG_MAX: u32 = 254;
/// Largest data segment (`size_max`): with `seg_max` segments a request
/// stays within [`MAX_DATA_LEN`], so a driver never builds one we refuse.
pub const SIZE_MAX: u32 = 128 << 10;
const _: () = assert!(SEG_MAX as u64 * SIZE_MAX as u64 <= MAX_DATA_LEN);
/// Most queues an export may have.
pub const MAX_QUEUES: u16 = 16;
/// Largest discard / write-zeroes range, in sectors (1 GiB).
pub const MAX_RANGE_SECTORS: u32 = (1 << 30) / SECTOR_SIZE as u32;
/// Bytes of the config space we expose.
pub const CONFIG_LEN: usize = 60;
/// Offset of `wce` in the config space.
pub const WCE_OFFSET: usize = 32;

/// The device a volume becomes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeviceSpec {
    /// Volume name: the GET_ID string (truncated to 20 bytes).
    pub name: String,
    /// Size in bytes (rounded down to whole sectors for the guest).
    pub size: u64,
    /// Refuse writes; advertise `VIRTIO_BLK_F_RO`.
    pub read_only: bool,
    /// Request queues.
    pub num_queues: u16,
    /// Minimum I/O size in bytes (the chunk).
    pub min_io: u64,
    /// Optimal I/O size in bytes (the full stripe).
    pub opt_io: u64,
}

impl DeviceSpec {
    /// virtio feature bits offered to the driver.
    pub fn features(&self) -> u64 {
        let mut bits = [
            VIRTIO_F_VERSION_1,
            VIRTIO_RING_F_EVENT_IDX,
            VIRTIO_RING_F_INDIRECT_DESC,
            VIRTIO_BLK_F_BLK_SIZE,
            VIRTIO_BLK_F_SEG_MAX,
            VIRTIO_BLK_F_SIZE_MAX,
            VIRTIO_BLK_F_FLUSH,
            VIRTIO_BLK_F_CONFIG_WCE,
            VIRTIO_BLK_F_TOPOLOGY,
            VIRTIO_BLK_F_MQ,
        ]
        .iter()
        .fold(0u64, |acc, b| acc | 1 << b);
        if self.read_only {
            bits |= 1 << VIRTIO_BLK_F_RO;
        } else {
            bits |= 1 << VIRTIO_BLK_F_DISCARD | 1 << VIRTIO_BLK_F_WRITE_ZEROES;
        }
        bits | VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits()
    }

    /// vhost-user protocol features. No LOG_SHMFD: io_uring writes bypass
    /// dirty logging, so live migration is not offered.
    pub fn protocol_features() -> VhostUserProtocolFeatures {
        VhostUserProtocolFeatures::CONFIG
            | VhostUserProtocolFeatures::MQ
            | VhostUserProtocolFeatures::REPLY_ACK
            | VhostUserProtocolFeatures::CONFIGURE_MEM_SLOTS
    }

    /// The GET_ID answer: the name, NUL-padded to 20 bytes.
    pub fn id(&self) -> [u8; VIRTIO_BLK_ID_BYTES as usize] {
        let mut id = [0u8; VIRTIO_BLK_ID_BYTES as usize];
        let n = self.name.len().min(id.len());
        id[..n].copy_from_slice(&self.name.as_bytes()[..n]);
        id
    }

    /// `struct virtio_blk_config`, little-endian, with write cache `wce`.
    pub fn config_space(&self, wce: bool) -> [u8; CONFIG_LEN] {
        let blocks = |bytes: u64| bytes / u64::from(BLOCK_SIZE);
        let mut c = [0u8; CONFIG_LEN];
        put(&mut c, 0, &(self.size / SECTOR_SIZE).to_le_bytes()); // capacity
        put(&mut c, 8, &SIZE_MAX.to_le_bytes()); // size_max
        put(&mut c, 12, &SEG_MAX.to_le_bytes()); // seg_max
        put(&mut c, 20, &BLOCK_SIZE.to_le_bytes()); // blk_size
        c[24] = PHYSICAL_BLOCK_EXP; // physical_block_exp; alignment_offset 0
        let min_io = u16::try_from(blocks(self.min_io)).unwrap_or(u16::MAX);
        put(&mut c, 26, &min_io.to_le_bytes()); // min_io_size
        let opt_io = u32::try_from(blocks(self.opt_io)).unwrap_or(u32::MAX);
        put(&mut c, 28, &opt_io.to_le_bytes()); // opt_io_size
        c[WCE_OFFSET] = u8::from(wce);
        put(&mut c, 34, &self.num_queues.to_le_bytes()); // num_queues
        if !self.read_only {
            put(&mut c, 36, &MAX_RANGE_SECTORS.to_le_bytes()); // max_discard_sectors
            put(&mut c, 40, &MAX_RANGES.to_le_bytes()); // max_discard_seg
                                                        // discard_sector_alignment: whole physical blocks.
            put(&mut c, 44, &(1u32 << PHYSICAL_BLOCK_EXP).to_le_bytes());
            put(&mut c, 48, &MAX_RANGE_SECTORS.to_le_bytes()); // max_write_zeroes_sectors
            put(&mut c, 52, &MAX_RANGES.to_le_bytes()); // max_write_zeroes_seg
            c[56] = 1; // write_zeroes_may_unmap
        }
        c
    }
}

fn put(c: &mut [u8], at: usize, bytes: &[u8]) {
    c[at..at + bytes.len()].copy_from_slice(bytes);
}

/// Largest config space a vhost-user message carries.
pub const MAX_CONFIG_LEN: usize = 256;

/// The `[offset, offset + size)` slice of `space`, zero-padded past its end
/// (newer frontends read fields we do not offer, e.g. secure erase), or
/// `None` beyond the 256 bytes vhost-user allows.
pub fn config_slice(space: &[u8], offset: u32, size: u32) -> Option<Vec<u8>> {
    let start = offset as usize;
    let end = start.checked_add(size as usize)?;
    if end > MAX_CONFIG_LEN {
        return None;
    }
    let mut out = vec![0u8; end - start];
    if start < space.len() {
        let n = space.len().min(end) - start;
        out[..n].copy_from_slice(&space[start..start + n]);
    }
    Some(out)
}
