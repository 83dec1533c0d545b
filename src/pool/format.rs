//! Pool on-disk structures (docs/FORMAT.md §11): the header, the 32-byte
//! header every metadata page carries, the region geometry, the summary
//! and directory records and the journal record. Pure: bytes in, typed
//! values out (or a [`FormatError`] naming what is wrong), no I/O.

use crate::pool::page::Page;

/// Size of a block (a metadata page).
pub const BLOCK: usize = 4096;
/// Bytes of the page header at the start of every metadata page.
pub const PAGE_HDR: usize = 32;
/// Entries of a map page (u64 each).
pub const MAP_FANOUT: u64 = 508;
/// Counts of a reference-count page (u32 each).
pub const COUNTS_PER_PAGE: u64 = 1016;
/// Volume records per directory page.
pub const RECORDS_PER_DIR: usize = 31;
/// Bytes of a volume record.
const RECORD_BYTES: usize = 128;
/// The pool header's magic.
pub const MAGIC: [u8; 8] = *b"VRAIDPL\x02";
/// Header format version of a pool that never splits clusters (a pool
/// that may: `pool::split::SPLIT_VERSION`).
pub const VERSION: u32 = 2;
/// Journal blocks of a new pool.
pub const JOURNAL_BLOCKS: u32 = 4096;
/// Directory blocks of a new pool: 64 x 31 = 1984 volumes (the most a
/// header may name; pools made before session 12 have 8, 248 volumes).
pub const DIR_BLOCKS: u32 = 64;
/// Deepest map tree.
pub const MAX_DEPTH: u32 = 4;
/// Longest volume name in bytes.
pub const NAME_MAX: usize = 64;
/// Block of the summary page.
pub const SUMMARY_BLOCK: u64 = 2;
/// First journal block.
pub const JOURNAL_START: u64 = 3;

/// What a metadata page is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
pub enum Kind {
    /// Pool counters.
    Summary = 1,
    /// Volume records.
    Directory = 2,
    /// Data cluster reference counts.
    ClusterCounts = 3,
    /// Map page reference counts.
    MapCounts = 4,
    /// Map tree interior node.
    Interior = 5,
    /// Map tree leaf.
    Leaf = 6,
    /// Journal record head.
    Record = 7,
    /// Split records (version 3 only; see `pool::split`).
    Split = 8,
}

/// Bad pool metadata bytes.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FormatError {
    /// Not a pool header.
    #[error("no pool header (bad magic)")]
    Magic,
    /// Unknown format version.
    #[error("pool format version {0} is not supported")]
    Version(u32),
    /// A checksum does not match.
    #[error("{what} at block {block}: checksum mismatch")]
    Crc {
        /// What was read.
        what: &'static str,
        /// Where.
        block: u64,
    },
    /// A field is out of its range.
    #[error("{what}: {detail}")]
    Field {
        /// Which structure.
        what: &'static str,
        /// What is wrong.
        detail: String,
    },
    /// A page identifies itself as something else.
    #[error("block {block}: expected a {expected:?} page of this pool, found {found}")]
    Identity {
        /// Where.
        block: u64,
        /// What should be there.
        expected: Kind,
        /// What is there.
        found: String,
    },
    /// The array is too small for a pool.
    #[error("array of {0} bytes is too small for a pool")]
    TooSmall(u64),
}

fn field(what: &'static str, detail: impl Into<String>) -> FormatError {
    FormatError::Field {
        what,
        detail: detail.into(),
    }
}

/// Where everything lives (in blocks and clusters), derived from the header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Geometry {
    /// log2 of the cluster size.
    pub cluster_shift: u32,
    /// Data clusters.
    pub clusters: u64,
    /// First data cluster.
    pub first_data_cluster: u64,
    /// Map pages.
    pub meta_blocks: u64,
    /// Journal blocks.
    pub journal_blocks: u32,
    /// Directory blocks.
    pub dir_blocks: u32,
}

impl Geometry {
    /// Lays out a new pool on `array_bytes` with clusters of `1 << shift`.
    pub fn plan(array_bytes: u64, shift: u32) -> Result<Geometry, FormatError> {
        if !(16..=26).contains(&shift) {
            return Err(field(
                "cluster size",
                "must be 64 KiB ..= 64 MiB, a power of two",
            ));
        }
        let total = array_bytes >> shift;
        let mut g = Geometry {
            cluster_shift: shift,
            clusters: total,
            first_data_cluster: 0,
            meta_blocks: (4 * total.div_ceil(MAP_FANOUT) + 64).max(1024),
            journal_blocks: JOURNAL_BLOCKS,
            dir_blocks: DIR_BLOCKS,
        };
        let first = (g.meta_end() * BLOCK as u64).div_ceil(g.cluster_size());
        if first + 16 > total {
            return Err(FormatError::TooSmall(array_bytes));
        }
        g.first_data_cluster = first;
        g.clusters = total - first;
        Ok(g)
    }

    /// Bytes of a cluster.
    pub fn cluster_size(&self) -> u64 {
        1 << self.cluster_shift
    }
    /// First directory block.
    pub fn dir_start(&self) -> u64 {
        JOURNAL_START + u64::from(self.journal_blocks)
    }
    /// First cluster-count page.
    pub fn ccount_start(&self) -> u64 {
        self.dir_start() + u64::from(self.dir_blocks)
    }
    /// Cluster-count pages.
    pub fn ccount_pages(&self) -> u64 {
        self.clusters.div_ceil(COUNTS_PER_PAGE)
    }
    /// First map-count page.
    pub fn mcount_start(&self) -> u64 {
        self.ccount_start() + self.ccount_pages()
    }
    /// Map-count pages.
    pub fn mcount_pages(&self) -> u64 {
        self.meta_blocks.div_ceil(COUNTS_PER_PAGE)
    }
    /// First map page.
    pub fn meta_start(&self) -> u64 {
        self.mcount_start() + self.mcount_pages()
    }
    /// One past the last map page.
    pub fn meta_end(&self) -> u64 {
        self.meta_start() + self.meta_blocks
    }
    /// True for a block of the map-page area.
    pub fn is_map_block(&self, b: u64) -> bool {
        (self.meta_start()..self.meta_end()).contains(&b)
    }
    /// True for a data cluster number.
    pub fn is_data_cluster(&self, c: u64) -> bool {
        c >= self.first_data_cluster && c - self.first_data_cluster < self.clusters
    }
    /// Count page and index of data cluster `c`.
    pub fn cluster_count_at(&self, c: u64) -> (u64, usize) {
        let i = c - self.first_data_cluster;
        (
            self.ccount_start() + i / COUNTS_PER_PAGE,
            (i % COUNTS_PER_PAGE) as usize,
        )
    }
    /// Count page and index of map page `b`.
    pub fn map_count_at(&self, b: u64) -> (u64, usize) {
        let i = b - self.meta_start();
        (
            self.mcount_start() + i / COUNTS_PER_PAGE,
            (i % COUNTS_PER_PAGE) as usize,
        )
    }
    /// The kind of page that lives at block `b`, if any.
    pub fn kind_at(&self, b: u64) -> Option<Kind> {
        match b {
            SUMMARY_BLOCK => Some(Kind::Summary),
            _ if b >= self.dir_start() && b < self.ccount_start() => Some(Kind::Directory),
            _ if b >= self.ccount_start() && b < self.mcount_start() => Some(Kind::ClusterCounts),
            _ if b >= self.mcount_start() && b < self.meta_start() => Some(Kind::MapCounts),
            _ => None,
        }
    }
}

/// The pool header (blocks 0 and 1).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Header {
    /// Format version: [`VERSION`], or 3 for a pool that may hold split
    /// clusters (`pool::split`).
    pub version: u32,
    /// Pool identity.
    pub pool_uuid: [u8; 16],
    /// Checkpoint counter.
    pub generation: u64,
    /// Array size laid out for.
    pub array_bytes: u64,
    /// Sequence of the record at journal block 0.
    pub journal_seq: u64,
    /// Regions.
    pub geometry: Geometry,
}

impl Header {
    /// The header's 4096 bytes.
    pub fn encode(&self) -> Vec<u8> {
        let g = &self.geometry;
        let mut b = vec![0u8; BLOCK];
        b[0..8].copy_from_slice(&MAGIC);
        put32(&mut b, 8, self.version);
        put32(&mut b, 12, g.cluster_shift);
        b[16..32].copy_from_slice(&self.pool_uuid);
        put64(&mut b, 32, self.generation);
        put64(&mut b, 40, self.array_bytes);
        put64(&mut b, 48, self.journal_seq);
        put32(&mut b, 56, g.journal_blocks);
        put32(&mut b, 60, g.dir_blocks);
        put64(&mut b, 64, g.meta_blocks);
        put64(&mut b, 72, g.clusters);
        put64(&mut b, 80, g.first_data_cluster);
        let crc = crc32fast::hash(&b[..BLOCK - 4]);
        put32(&mut b, BLOCK - 4, crc);
        b
    }

    /// Parses and checks a header copy read from `block`.
    pub fn decode(b: &[u8], block: u64) -> Result<Header, FormatError> {
        if b.len() != BLOCK || b[0..8] != MAGIC {
            return Err(FormatError::Magic);
        }
        if crc32fast::hash(&b[..BLOCK - 4]) != get32(b, BLOCK - 4) {
            return Err(FormatError::Crc {
                what: "pool header",
                block,
            });
        }
        let version = get32(b, 8);
        if version != VERSION && version != crate::pool::split::SPLIT_VERSION {
            return Err(FormatError::Version(version));
        }
        let geometry = Geometry {
            cluster_shift: get32(b, 12),
            journal_blocks: get32(b, 56),
            dir_blocks: get32(b, 60),
            meta_blocks: get64(b, 64),
            clusters: get64(b, 72),
            first_data_cluster: get64(b, 80),
        };
        let header = Header {
            version,
            pool_uuid: b[16..32].try_into().expect("16 bytes"),
            generation: get64(b, 32),
            array_bytes: get64(b, 40),
            journal_seq: get64(b, 48),
            geometry,
        };
        header.check_geometry()?;
        Ok(header)
    }

    fn check_geometry(&self) -> Result<(), FormatError> {
        let g = &self.geometry;
        let bad = |d: &str| Err(field("pool header", d));
        if !(16..=26).contains(&g.cluster_shift) {
            return bad("cluster shift out of range");
        }
        // Each checkpoint and commit adds one: 2^62 is never reached by a
        // real pool, and the counters must not wrap.
        if self.generation >= 1 << 62 || self.journal_seq >= 1 << 62 {
            return bad("generation or journal sequence out of range");
        }
        if !(64..=65536).contains(&g.journal_blocks) || !(1..=64).contains(&g.dir_blocks) {
            return bad("journal or directory size out of range");
        }
        let total = self.array_bytes >> g.cluster_shift;
        if g.meta_blocks == 0 || g.meta_blocks > 1 << 40 || g.clusters > 1 << 44 {
            return bad("map area or cluster count out of range");
        }
        let meta_bytes = g.meta_end().checked_mul(BLOCK as u64);
        let data_start = g.first_data_cluster.checked_mul(g.cluster_size());
        match (meta_bytes, data_start) {
            (Some(m), Some(d)) if m <= d => {}
            _ => return bad("metadata overlaps the data clusters"),
        }
        match g.first_data_cluster.checked_add(g.clusters) {
            Some(end) if end <= total => Ok(()),
            _ => bad("data clusters past the end of the array"),
        }
    }
}

/// Pool-wide counters (the summary page).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Summary {
    /// Next volume id to hand out.
    pub next_volume_id: u32,
    /// Free data clusters.
    pub free_clusters: u64,
    /// Free map pages.
    pub free_meta: u64,
    /// Data clusters from here on read zero.
    pub zeroed_from: u64,
    /// Map pages from here on were never used.
    pub meta_fresh: u64,
}

impl Summary {
    /// Reads the summary from its page.
    pub fn read(p: &Page) -> Summary {
        Summary {
            next_volume_id: p.u32_at(32),
            free_clusters: p.u64_at(40),
            free_meta: p.u64_at(48),
            zeroed_from: p.u64_at(56),
            meta_fresh: p.u64_at(64),
        }
    }
    /// Writes the summary into its page.
    pub fn write(&self, p: &mut Page) {
        p.set_u32(32, self.next_volume_id);
        p.set_u64(40, self.free_clusters);
        p.set_u64(48, self.free_meta);
        p.set_u64(56, self.zeroed_from);
        p.set_u64(64, self.meta_fresh);
    }
    /// Checks the counters against the geometry.
    pub fn check(&self, g: &Geometry) -> Result<(), FormatError> {
        let end = g.first_data_cluster + g.clusters;
        if self.free_clusters > g.clusters || self.free_meta > g.meta_blocks {
            return Err(field("summary", "free counts larger than the pool"));
        }
        if !(g.first_data_cluster..=end).contains(&self.zeroed_from)
            || !(g.meta_start()..=g.meta_end()).contains(&self.meta_fresh)
        {
            return Err(field("summary", "allocation marks outside their areas"));
        }
        Ok(())
    }
}

/// Record flag: a read-only snapshot.
pub const FLAG_SNAPSHOT: u32 = 1;
/// Record flag: being deleted.
pub const FLAG_DELETING: u32 = 2;

/// One volume's directory record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VolumeRecord {
    /// Volume id (never 0).
    pub id: u32,
    /// `FLAG_*` bits.
    pub flags: u32,
    /// Size in bytes.
    pub size: u64,
    /// Map root block, 0 = nothing mapped.
    pub root: u64,
    /// Clusters mapped.
    pub mapped: u64,
    /// Map tree depth (1..=4).
    pub depth: u32,
    /// The volume it was taken of or cloned from, 0 = none.
    pub parent: u32,
    /// Name (export name).
    pub name: String,
}

impl VolumeRecord {
    /// Reads slot `i` of a directory page; `None` for a free slot.
    pub fn read(p: &Page, i: usize, g: &Geometry) -> Result<Option<VolumeRecord>, FormatError> {
        let o = PAGE_HDR + i * RECORD_BYTES;
        let id = p.u32_at(o);
        if id == 0 {
            return Ok(None);
        }
        let name_len = p.u32_at(o + 40) as usize;
        if name_len == 0 || name_len > NAME_MAX {
            return Err(field("volume record", format!("id {id}: bad name length")));
        }
        let name = std::str::from_utf8(&p.bytes()[o + 44..o + 44 + name_len])
            .map_err(|_| field("volume record", format!("id {id}: name is not UTF-8")))?;
        let r = VolumeRecord {
            id,
            flags: p.u32_at(o + 4),
            size: p.u64_at(o + 8),
            root: p.u64_at(o + 16),
            mapped: p.u64_at(o + 24),
            depth: p.u32_at(o + 32),
            parent: p.u32_at(o + 36),
            name: name.to_string(),
        };
        r.check(g)?;
        Ok(Some(r))
    }

    fn check(&self, g: &Geometry) -> Result<(), FormatError> {
        let bad = |d: &str| Err(field("volume record", format!("{}: {d}", self.name)));
        if !(1..=MAX_DEPTH).contains(&self.depth) {
            return bad("depth out of range");
        }
        if self.root != 0 && !g.is_map_block(self.root) {
            return bad("root outside the map area");
        }
        if self.size.div_ceil(g.cluster_size()) > MAP_FANOUT.pow(self.depth) {
            return bad("size larger than its map");
        }
        if self.flags & !(FLAG_SNAPSHOT | FLAG_DELETING) != 0 {
            return bad("unknown flags");
        }
        Ok(())
    }

    /// Writes this record into slot `i`.
    pub fn write(&self, p: &mut Page, i: usize) {
        let o = PAGE_HDR + i * RECORD_BYTES;
        p.bytes_mut()[o..o + RECORD_BYTES].fill(0);
        p.set_u32(o, self.id);
        p.set_u32(o + 4, self.flags);
        p.set_u64(o + 8, self.size);
        p.set_u64(o + 16, self.root);
        p.set_u64(o + 24, self.mapped);
        p.set_u32(o + 32, self.depth);
        p.set_u32(o + 36, self.parent);
        let n = self.name.len().min(NAME_MAX);
        p.set_u32(o + 40, n as u32);
        p.bytes_mut()[o + 44..o + 44 + n].copy_from_slice(&self.name.as_bytes()[..n]);
    }

    /// Clears slot `i`.
    pub fn clear(p: &mut Page, i: usize) {
        let o = PAGE_HDR + i * RECORD_BYTES;
        p.bytes_mut()[o..o + RECORD_BYTES].fill(0);
    }

    /// True for a read-only snapshot.
    pub fn is_snapshot(&self) -> bool {
        self.flags & FLAG_SNAPSHOT != 0
    }
}

/// Smallest depth whose map covers `clusters`.
pub fn depth_for(clusters: u64) -> Option<u32> {
    (1..=MAX_DEPTH).find(|d| MAP_FANOUT.pow(*d) >= clusters.max(1))
}

/// Header blocks of a journal record of `count` pages.
pub fn record_head_blocks(count: usize) -> usize {
    (48 + 8 * count).div_ceil(BLOCK)
}

/// Encodes a journal record at journal block `at` (absolute block).
pub fn encode_record(uuid: &[u8; 16], at: u64, seq: u64, pages: &[(u64, &Page)]) -> Vec<u8> {
    let head = record_head_blocks(pages.len()) * BLOCK;
    let mut b = vec![0u8; head + pages.len() * BLOCK];
    put32(&mut b, 0, Kind::Record as u32);
    put64(&mut b, 8, at);
    b[16..32].copy_from_slice(uuid);
    put64(&mut b, 32, seq);
    put32(&mut b, 40, pages.len() as u32);
    for (i, (target, page)) in pages.iter().enumerate() {
        put64(&mut b, 48 + 8 * i, *target);
        b[head + i * BLOCK..head + (i + 1) * BLOCK].copy_from_slice(page.bytes());
    }
    let crc = crc32fast::hash(&b);
    put32(&mut b, 44, crc);
    b
}

/// What the first block of a journal record says: `Some(count)` if it is
/// the record `seq` of this pool at block `at`, else `None` (end of log).
pub fn record_count(first: &[u8], uuid: &[u8; 16], at: u64, seq: u64, max: usize) -> Option<usize> {
    let ok = get32(first, 0) == Kind::Record as u32
        && get64(first, 8) == at
        && first[16..32] == uuid[..]
        && get64(first, 32) == seq;
    let count = get32(first, 40) as usize;
    (ok && count <= max).then_some(count)
}

/// Checks a whole record read back and returns its (target, image) pairs.
pub fn decode_record(b: &[u8], count: usize) -> Option<Vec<(u64, &[u8])>> {
    let head = record_head_blocks(count) * BLOCK;
    if b.len() != head + count * BLOCK {
        return None;
    }
    let mut h = crc32fast::Hasher::new();
    h.update(&b[..44]);
    h.update(&[0; 4]);
    h.update(&b[48..]);
    if h.finalize() != get32(b, 44) {
        return None;
    }
    let pages = (0..count)
        .map(|i| {
            (
                get64(b, 48 + 8 * i),
                &b[head + i * BLOCK..head + (i + 1) * BLOCK],
            )
        })
        .collect();
    Some(pages)
}

/// Little-endian u32 at `o`.
pub fn get32(b: &[u8], o: usize) -> u32 {
    u32::from_le_bytes(b[o..o + 4].try_into().expect("4 bytes"))
}
/// Little-endian u64 at `o`.
pub fn get64(b: &[u8], o: usize) -> u64 {
    u64::from_le_bytes(b[o..o + 8].try_into().expect("8 bytes"))
}
/// Stores a little-endian u32 at `o`.
pub fn put32(b: &mut [u8], o: usize, v: u32) {
    b[o..o + 4].copy_from_slice(&v.to_le_bytes());
}
/// Stores a little-endian u64 at `o`.
pub fn put64(b: &mut [u8], o: usize, v: u64) {
    b[o..o + 8].copy_from_slice(&v.to_le_bytes());
}
