//! One 4 KiB metadata page in memory, and its self-identifying header
//! (kind, CRC, own block number, pool UUID; docs/FORMAT.md §11).

use crate::pool::format::{get32, get64, put32, put64, FormatError, Kind, BLOCK};

/// A metadata page.
#[derive(Clone, PartialEq, Eq)]
pub struct Page(Box<[u8; BLOCK]>);

impl std::fmt::Debug for Page {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Page(kind {}, block {})", self.u32_at(0), self.u64_at(8))
    }
}

impl Page {
    /// A zeroed page of `kind` for block `blocknr` of pool `uuid`.
    pub fn new(kind: Kind, blocknr: u64, uuid: &[u8; 16]) -> Page {
        let mut p = Page(Box::new([0; BLOCK]));
        p.set_u32(0, kind as u32);
        p.set_u64(8, blocknr);
        p.0[16..32].copy_from_slice(uuid);
        p
    }

    /// Checks bytes read from `block` and makes a page of them.
    pub fn verify(
        b: &[u8],
        block: u64,
        kinds: &[Kind],
        uuid: &[u8; 16],
    ) -> Result<Page, FormatError> {
        let b: &[u8; BLOCK] = b.try_into().map_err(|_| FormatError::Field {
            what: "metadata page",
            detail: "not 4096 bytes".into(),
        })?;
        let kind = get32(b, 0);
        let id_ok = get64(b, 8) == block && b[16..32] == uuid[..];
        let kind_ok = kinds.iter().any(|k| *k as u32 == kind);
        if !id_ok || !kind_ok {
            return Err(FormatError::Identity {
                block,
                expected: kinds[0],
                found: format!("kind {kind} of block {} ", get64(b, 8)),
            });
        }
        if crc_of(b) != get32(b, 4) {
            return Err(FormatError::Crc {
                what: "metadata page",
                block,
            });
        }
        Ok(Page(Box::new(*b)))
    }

    /// Sets the CRC; the page is ready to be written.
    pub fn seal(&mut self) {
        let crc = crc_of(&self.0);
        put32(&mut self.0[..], 4, crc);
    }

    /// The page's kind field.
    pub fn kind(&self) -> u32 {
        self.u32_at(0)
    }
    /// Re-labels a copy for another block.
    pub fn relabel(&mut self, kind: Kind, blocknr: u64) {
        self.set_u32(0, kind as u32);
        self.set_u64(8, blocknr);
    }
    /// All 4096 bytes.
    pub fn bytes(&self) -> &[u8] {
        &self.0[..]
    }
    /// All 4096 bytes, writable.
    pub fn bytes_mut(&mut self) -> &mut [u8] {
        &mut self.0[..]
    }
    /// u32 at byte `o`.
    pub fn u32_at(&self, o: usize) -> u32 {
        get32(&self.0[..], o)
    }
    /// u64 at byte `o`.
    pub fn u64_at(&self, o: usize) -> u64 {
        get64(&self.0[..], o)
    }
    /// Stores u32 at byte `o`.
    pub fn set_u32(&mut self, o: usize, v: u32) {
        put32(&mut self.0[..], o, v)
    }
    /// Stores u64 at byte `o`.
    pub fn set_u64(&mut self, o: usize, v: u64) {
        put64(&mut self.0[..], o, v)
    }
    /// Entry `i` of a map page.
    pub fn entry(&self, i: usize) -> u64 {
        self.u64_at(32 + 8 * i)
    }
    /// Sets entry `i` of a map page.
    pub fn set_entry(&mut self, i: usize, v: u64) {
        self.set_u64(32 + 8 * i, v)
    }
    /// Count `i` of a reference-count page.
    pub fn count(&self, i: usize) -> u32 {
        self.u32_at(32 + 4 * i)
    }
    /// Sets count `i` of a reference-count page.
    pub fn set_count(&mut self, i: usize, v: u32) {
        self.set_u32(32 + 4 * i, v)
    }
}

fn crc_of(b: &[u8; BLOCK]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(&b[..4]);
    h.update(&[0; 4]);
    h.update(&b[8..]);
    h.finalize()
}
