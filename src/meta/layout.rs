//! Where things lie on a member: metadata regions and the data area
//! (docs/FORMAT.md §1), and the range rules shared with the config parser.
//!
//! ```text
//! 0      8K        64K      bitmap end   journal end       data_offset (1M)
//! [SB A|SB B][rsvd][bitmap][journal 256K-16M][checksums 4B/4K][data area ...][tail]
//! ```

/// Largest array name, in bytes.
pub const MAX_NAME_LEN: usize = 64;
/// Smallest chunk size.
pub const MIN_CHUNK: u32 = 4096;
/// Largest chunk size.
pub const MAX_CHUNK: u32 = 16 << 20;
/// `data_offset` alignment.
pub const DATA_ALIGN: u64 = 1 << 20;
/// Granularity of the metadata regions.
pub const META_BLOCK: u64 = 4096;

const BITMAP_OFFSET: u64 = 64 << 10;
const BITMAP_REGION_SHIFT: u32 = 26;
const JOURNAL_LEN: u64 = 256 << 10;
/// Journal of members of at least [`BIG_MEMBER`] bytes (fewer checkpoints).
const BIG_JOURNAL_LEN: u64 = 4 << 20;
const BIG_MEMBER: u64 = 1 << 30;
/// Journal of members of at least [`HUGE_MEMBER`] bytes (0.4 % at most).
const HUGE_JOURNAL_LEN: u64 = 16 << 20;
const HUGE_MEMBER: u64 = 4 << 30;

/// Where the metadata regions and the data area of a member lie (FORMAT.md §1).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub struct MetaLayout {
    /// Start of the write-intent bitmap (reserved, zero).
    pub bitmap_offset: u64,
    /// Its length.
    pub bitmap_len: u64,
    /// log2 of the bytes of data one bitmap bit covers.
    pub bitmap_region_shift: u32,
    /// Start of the journal (reserved, zero).
    pub journal_offset: u64,
    /// Its length.
    pub journal_len: u64,
    /// Start of the per-4K-block checksums (reserved, zero).
    pub csum_offset: u64,
    /// Its length.
    pub csum_len: u64,
    /// Start of the data area, 1 MiB-aligned.
    pub data_offset: u64,
    /// Bytes from `data_offset` to the end of the member, rounded down to 4K.
    pub data_size: u64,
}

fn round_up(v: u64, align: u64) -> Option<u64> {
    v.checked_add(align - 1).map(|x| x / align * align)
}

/// Computes the layout of a member of `member_size` bytes; `None` if it
/// cannot hold the metadata and at least one 4 KiB data block.
pub fn metadata_layout(member_size: u64) -> Option<MetaLayout> {
    let regions = member_size.div_ceil(1 << BITMAP_REGION_SHIFT);
    let bitmap_len = round_up(regions.div_ceil(8).max(1), META_BLOCK)?;
    let journal_offset = BITMAP_OFFSET + bitmap_len;
    let journal_len = if member_size >= HUGE_MEMBER {
        HUGE_JOURNAL_LEN
    } else if member_size >= BIG_MEMBER {
        BIG_JOURNAL_LEN
    } else {
        JOURNAL_LEN
    };
    let csum_offset = journal_offset + journal_len;
    let csum_len = round_up(
        (member_size / META_BLOCK).checked_mul(4)?.max(1),
        META_BLOCK,
    )?;
    let data_offset = round_up(csum_offset.checked_add(csum_len)?, DATA_ALIGN)?;
    let data_size = member_size.checked_sub(data_offset)? / META_BLOCK * META_BLOCK;
    (data_size > 0).then_some(MetaLayout {
        bitmap_offset: BITMAP_OFFSET,
        bitmap_len,
        bitmap_region_shift: BITMAP_REGION_SHIFT,
        journal_offset,
        journal_len,
        csum_offset,
        csum_len,
        data_offset,
        data_size,
    })
}

/// Where an array keeps its block checksums (FORMAT.md §8).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ChecksumLayout {
    /// One checksum area per member, pages of entries (superblock flag clear).
    #[default]
    Separate,
    /// A 512-byte tag sector after each 4 KiB block ("Inline layout";
    /// superblock flag `0x1`): 1/9 of the data area.
    Inline,
}

impl std::str::FromStr for ChecksumLayout {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "separate" => Ok(ChecksumLayout::Separate),
            "inline" => Ok(ChecksumLayout::Inline),
            _ => Err(format!(
                "unknown checksum layout {s:?}: use `separate` or `inline`"
            )),
        }
    }
}

impl std::fmt::Display for ChecksumLayout {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ChecksumLayout::Separate => "separate",
            ChecksumLayout::Inline => "inline",
        })
    }
}

/// The layout of a member of `member_size` bytes in the inline checksum
/// layout (FORMAT.md §8 "Inline layout"): no separate checksum area
/// (`csum_len` = 0), and `data_size` is the logical data area its physical
/// one holds (4608 member bytes per 4 KiB block). `None` as for
/// [`metadata_layout`].
pub fn inline_layout(member_size: u64) -> Option<MetaLayout> {
    let mut l = metadata_layout(member_size)?;
    l.csum_len = 0;
    l.data_offset = round_up(l.csum_offset, DATA_ALIGN)?;
    let physical = member_size.checked_sub(l.data_offset)?;
    l.data_size = crate::integrity::tag::logical_len(physical);
    (l.data_size > 0).then_some(l)
}

/// Is `name` a valid array/volume name: `[A-Za-z0-9._-]`, 1..=64 bytes.
pub fn valid_name(name: &str) -> bool {
    (1..=MAX_NAME_LEN).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// Is `chunk` a valid chunk size: a power of two in 4K..=16M.
pub fn valid_chunk_size(chunk: u64) -> bool {
    chunk.is_power_of_two() && (MIN_CHUNK as u64..=MAX_CHUNK as u64).contains(&chunk)
}
