//! A block device over an assembled md array: array bytes mapped to member
//! bytes through md's layouts (`raid::md_layout`), plain reads of the
//! members, and what a missing or failing member held reconstructed from
//! the others (RAID-4/5 parity, RAID-6 P and Q, a RAID-1 or RAID-10 copy).
//! Read-only unless built with [`MdVolume::writable`] (`super::write`):
//! then writes go through to the members; otherwise they answer
//! `ReadOnly` and nothing ever reaches a member.
//!
//! ```text
//!  read(offset, len) ─► pieces of at most one chunk
//!    RAID-0   zones::Raid0Map (md's strip zones) ─► member, sector
//!    linear   zones::LinearMap ─► member, sector
//!    RAID-1   any member holding a good copy
//!    RAID-10  find_phys(chunk start) ─► the first copy that reads
//!    4/5/6    locate(c) ─► (stripe, disk) ─► read, or rebuild from the
//!             stripe's other blocks (XOR, or syndrome::recover)
//! ```

use super::assemble::{MdArray, MdLevel, Slot};
use super::write::Session;
use crate::block::{check_range, BlockDevice, BlockError, BlockResult, Durability, IoFuture};
use crate::raid::md_layout::ParityLayout;
use crate::raid::parity::xor_into;
use crate::raid::syndrome::{self, Lost};
use crate::units::ByteOffset;

/// An md array as a [`BlockDevice`] (read-only unless writable).
#[derive(Debug)]
pub struct MdVolume {
    array: MdArray,
    session: Option<Session>,
}

impl MdVolume {
    /// The array, served read-only.
    pub fn new(array: MdArray) -> MdVolume {
        MdVolume::with_session(array, None)
    }

    pub(super) fn with_session(array: MdArray, session: Option<Session>) -> MdVolume {
        MdVolume { array, session }
    }

    pub(super) fn session(&self) -> Option<&Session> {
        self.session.as_ref()
    }

    /// The member in `role`, if present.
    pub(super) fn slot(&self, role: usize) -> Result<&Slot, BlockError> {
        self.array
            .slots
            .get(role)
            .and_then(|s| s.as_ref())
            .ok_or_else(|| self.lost())
    }

    /// Bytes per piece: the chunk (RAID-1 has none: any size will do).
    pub(super) fn chunk(&self) -> u64 {
        match self.array.chunk_bytes {
            0 => 1 << 20,
            c => c,
        }
    }

    /// Bytes from array byte `pos` to the end of its chunk (or RAID-0 /
    /// linear zone piece), at most `left`.
    pub(super) fn piece_len(&self, pos: u64, left: usize) -> usize {
        let chunk = self.chunk();
        let n = match &self.array.level {
            MdLevel::Raid0(z) => z.chunk_left(pos / 512) * 512 - pos % 512,
            MdLevel::Linear(l) => l.map(pos / 512).2 * 512 - pos % 512,
            _ => chunk - pos % chunk,
        };
        n.min(left as u64) as usize
    }

    /// The assembled array.
    pub fn array(&self) -> &MdArray {
        &self.array
    }

    pub(super) fn lost(&self) -> BlockError {
        BlockError::DataLost {
            volume: self.array.name.clone(),
        }
    }

    async fn read_at(&self, offset: u64, buf: &mut [u8]) -> BlockResult {
        let chunk = self.chunk();
        let mut done = 0usize;
        while done < buf.len() {
            let pos = offset + done as u64;
            let in_chunk = pos % chunk;
            let n = self.piece_len(pos, buf.len() - done);
            let piece = &mut buf[done..done + n];
            let index = pos / chunk;
            match &self.array.level {
                MdLevel::Raid0(z) => {
                    let (role, sector) = z.map(pos / 512);
                    self.read_role(role, sector * 512 + pos % 512, piece)
                        .await?
                }
                MdLevel::Linear(l) => {
                    let (role, sector, _) = l.map(pos / 512);
                    self.read_role(role, sector * 512 + pos % 512, piece)
                        .await?
                }
                MdLevel::Raid1 => self.read_copies(&self.raid1_copies(pos), piece).await?,
                MdLevel::Raid10(_) => {
                    self.read_copies(&self.raid10_copies(index, in_chunk), piece)
                        .await?
                }
                MdLevel::Parity(p) => self.read_parity(p, index, in_chunk, piece).await?,
            }
            done += n;
        }
        Ok(())
    }

    /// Reads `buf` at byte `at` of the data area of the member in `role`.
    async fn read_role(&self, role: usize, at: u64, buf: &mut [u8]) -> BlockResult {
        read_slot(self.slot(role)?, at, buf).await
    }

    /// Every RAID-1 member at `pos`, starting from one picked by the
    /// offset (reads of different MiBs spread over the mirrors).
    fn raid1_copies(&self, pos: u64) -> Vec<(usize, u64)> {
        let n = self.array.slots.len();
        let first = ((pos >> 20) % n as u64) as usize;
        (0..n).map(|i| ((first + i) % n, pos)).collect()
    }

    /// Every copy of a RAID-10 chunk piece: (disk, member byte offset).
    pub(super) fn raid10_copies(&self, chunk: u64, in_chunk: u64) -> Vec<(usize, u64)> {
        let MdLevel::Raid10(r) = &self.array.level else {
            return Vec::new();
        };
        let chunk_sectors = self.array.chunk_bytes / 512;
        r.find_phys(chunk * chunk_sectors)
            .into_iter()
            .map(|rep| (rep.disk, rep.sector * 512 + in_chunk))
            .collect()
    }

    /// The first copy that is present and reads.
    async fn read_copies(&self, copies: &[(usize, u64)], buf: &mut [u8]) -> BlockResult {
        let mut last = None;
        for &(disk, at) in copies {
            let Some(Some(slot)) = self.array.slots.get(disk) else {
                continue;
            };
            match read_slot(slot, at, buf).await {
                Ok(()) => return Ok(()),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| self.lost()))
    }

    async fn read_parity(
        &self,
        p: &ParityLayout,
        chunk: u64,
        in_chunk: u64,
        buf: &mut [u8],
    ) -> BlockResult {
        let (stripe, disk) = p.locate(chunk);
        let at = stripe * self.array.chunk_bytes + in_chunk;
        self.read_or_rebuild(p, stripe, disk, at, buf).await
    }

    /// `disk`'s bytes at member offset `at` of `stripe`: read, or rebuilt
    /// from the stripe's other blocks when it is missing or fails.
    pub(super) async fn read_or_rebuild(
        &self,
        p: &ParityLayout,
        stripe: u64,
        disk: usize,
        at: u64,
        buf: &mut [u8],
    ) -> BlockResult {
        if let Some(slot) = &self.array.slots[disk] {
            if read_slot(slot, at, buf).await.is_ok() {
                return Ok(());
            }
        }
        self.rebuild(p, stripe, disk, at, buf).await
    }

    /// Reconstructs `target`'s bytes at member offset `at` of `stripe` from
    /// the stripe's other blocks.
    async fn rebuild(
        &self,
        p: &ParityLayout,
        stripe: u64,
        target: usize,
        at: u64,
        out: &mut [u8],
    ) -> BlockResult {
        let mut blocks: Vec<Option<Vec<u8>>> = Vec::with_capacity(p.disks());
        for (disk, slot) in self.array.slots.iter().enumerate() {
            let block = match slot {
                Some(slot) if disk != target => {
                    let mut b = vec![0u8; out.len()];
                    read_slot(slot, at, &mut b).await.ok().map(|()| b)
                }
                _ => None,
            };
            blocks.push(block);
        }
        let roles = p.roles(stripe);
        match roles.q {
            None => self.rebuild_xor(&blocks, target, out),
            Some(q) => self.rebuild_pq(p, stripe, (roles.p, q), &blocks, target, out),
        }
    }

    /// RAID-4/5: the lost block is the XOR of all the others.
    fn rebuild_xor(
        &self,
        blocks: &[Option<Vec<u8>>],
        target: usize,
        out: &mut [u8],
    ) -> BlockResult {
        out.fill(0);
        for (disk, b) in blocks.iter().enumerate() {
            if disk == target {
                continue;
            }
            xor_into(out, b.as_deref().ok_or_else(|| self.lost())?);
        }
        Ok(())
    }

    /// RAID-6: data in syndrome slot order, the lost slots recovered from
    /// P, Q or both.
    fn rebuild_pq(
        &self,
        p: &ParityLayout,
        stripe: u64,
        (pd, qd): (usize, usize),
        blocks: &[Option<Vec<u8>>],
        target: usize,
        out: &mut [u8],
    ) -> BlockResult {
        let len = out.len();
        let mut data = vec![vec![0u8; len]; p.q_slots()];
        let mut lost = Vec::new();
        for (disk, b) in blocks.iter().enumerate() {
            let Some(slot) = p.q_slot(stripe, disk) else {
                continue;
            };
            match b {
                Some(b) if disk != target => data[slot].copy_from_slice(b),
                _ => lost.push(slot),
            }
        }
        let tx = p.q_slot(stripe, target).ok_or_else(|| self.lost())?;
        let zero = vec![0u8; len];
        let pb = blocks[pd].as_deref();
        let qb = blocks[qd].as_deref();
        let mode = match (lost.as_slice(), pb.is_some(), qb.is_some()) {
            ([_], true, _) => Lost::Data(tx),
            ([_], false, true) => Lost::DataAndP(tx),
            ([x, y], true, true) => Lost::TwoData(*x.min(y), *x.max(y)),
            _ => return Err(self.lost()),
        };
        let mut refs: Vec<&mut [u8]> = data.iter_mut().map(|d| d.as_mut_slice()).collect();
        let mut scratch = vec![0u8; len];
        syndrome::recover(
            &mut refs,
            pb.unwrap_or(&zero),
            qb.unwrap_or(&zero),
            mode,
            &mut scratch,
        );
        out.copy_from_slice(&data[tx]);
        Ok(())
    }
}

/// Reads `buf` at byte `at` of a member's data area.
pub(super) async fn read_slot(slot: &Slot, at: u64, buf: &mut [u8]) -> BlockResult {
    slot.device
        .read(ByteOffset(slot.data_offset + at), buf)
        .await
}

impl BlockDevice for MdVolume {
    fn name(&self) -> &str {
        &self.array.name
    }

    fn size(&self) -> u64 {
        self.array.size
    }

    fn read<'a>(&'a self, offset: ByteOffset, buf: &'a mut [u8]) -> IoFuture<'a> {
        crate::block::BoxFuture::new(async move {
            check_range(offset, buf.len() as u64, self.array.size)?;
            self.read_at(offset.get(), buf).await
        })
    }

    fn write<'a>(&'a self, offset: ByteOffset, buf: &'a [u8], d: Durability) -> IoFuture<'a> {
        crate::block::BoxFuture::new(async move {
            if self.session.is_none() {
                return Err(BlockError::ReadOnly);
            }
            check_range(offset, buf.len() as u64, self.array.size)?;
            self.write_at(offset.get(), buf, d).await
        })
    }

    fn flush(&self) -> IoFuture<'_> {
        crate::block::BoxFuture::new(async move {
            if self.session.is_some() {
                for slot in self.array.slots.iter().flatten() {
                    slot.device.flush().await?;
                }
            }
            Ok(())
        })
    }

    /// A hint md arrays served here do not pass on: nothing changes (reads
    /// of the range return what was there, which NBD allows).
    fn discard(&self, offset: ByteOffset, len: u64) -> IoFuture<'_> {
        crate::block::BoxFuture::new(async move {
            if self.session.is_none() {
                return Err(BlockError::ReadOnly);
            }
            check_range(offset, len, self.array.size)
        })
    }

    fn write_zeroes(&self, offset: ByteOffset, len: u64, _: bool) -> IoFuture<'_> {
        crate::block::BoxFuture::new(async move {
            if self.session.is_none() {
                return Err(BlockError::ReadOnly);
            }
            check_range(offset, len, self.array.size)?;
            let zero = vec![0u8; len.min(1 << 20) as usize];
            let mut done = 0u64;
            while done < len {
                let n = (len - done).min(zero.len() as u64) as usize;
                let at = offset.get() + done;
                self.write_at(at, &zero[..n], Durability::Normal).await?;
                done += n as u64;
            }
            Ok(())
        })
    }
}
