//! The superblock codec and the two-copy reader/writer (docs/FORMAT.md §2);
//! where the regions lie is `layout.rs`.
//!
//! ```text
//! member: [SB copy A 4K][SB copy B 4K][reserved][bitmap][journal][checksums][data area ...]
//!            encode()/decode() one 4 KiB block; read_superblock() picks the better copy
//! ```
//!
//! [`Superblock::decode`] parses untrusted bytes: it never panics and names
//! the first problem it finds.

use uuid::Uuid;

use super::layout::META_BLOCK;
pub use super::layout::{
    metadata_layout, valid_chunk_size, valid_name, MetaLayout, DATA_ALIGN, MAX_CHUNK, MAX_NAME_LEN,
    MIN_CHUNK,
};

use crate::block::{BlockDevice, BlockError, Durability};
use crate::raid::Level;
use crate::units::ByteOffset;

/// Size of one superblock copy.
pub const SUPERBLOCK_SIZE: usize = 4096;
/// Offset of copy A (primary) and copy B (secondary).
pub const COPY_OFFSETS: [u64; 2] = [0, SUPERBLOCK_SIZE as u64];
/// The magic at offset 0.
pub const MAGIC: [u8; 8] = *b"VRAIDSB1";
/// The format version this code reads and writes.
pub const VERSION: u32 = 1;
/// Most members an array may have (size of the member table).
pub const MAX_MEMBERS: usize = 32;
/// `role` of a hot spare: it belongs to the array but holds no role.
pub const SPARE_ROLE: u32 = u32::MAX;
/// `flags` bit: the inline checksum layout (FORMAT.md §8 "Inline layout").
pub const FLAG_INLINE_CSUM: u32 = 0x1;
/// `flags` bit: the written-region map is kept (FORMAT.md §10).
pub const FLAG_WRITTEN_MAP: u32 = 0x2;
/// `flags` bit: a dirty RAID-6 whose run keeps the write-hole journal
/// (FORMAT.md §9, cases 84-86). Set and cleared by every update, never
/// stored: builds without it refuse such a member, and a RAID-6 ring is
/// replayed only when the freshest superblock has it.
pub const FLAG_RAID6_JOURNAL: u32 = 0x4;
/// Every `flags` bit this build knows.
const KNOWN_FLAGS: u32 = FLAG_INLINE_CSUM | FLAG_WRITTEN_MAP | FLAG_RAID6_JOURNAL;
/// `rebuild_checkpoint` value meaning "no rebuild in progress".
pub const NO_CHECKPOINT: u64 = u64::MAX;

const CRC_OFFSET: usize = SUPERBLOCK_SIZE - 4;
const NAME_OFFSET: usize = 256;
const TABLE_OFFSET: usize = 1024;
const TABLE_ENTRY: usize = 32;
/// `replace_uuid` (16 bytes) and `replace_role` (4 bytes), then
/// `events_cleared` (8 bytes).
const REPLACE_UUID_OFFSET: usize = 192;
const REPLACE_ROLE_OFFSET: usize = 208;
const EVENTS_CLEARED_OFFSET: usize = 212;
/// `write_behind_kib` and `write_behind_requests` (FORMAT.md §6); reserved after.
const WRITE_BEHIND_KIB: usize = 220;
const WRITE_BEHIND_REQUESTS: usize = 224;
const WRITE_BEHIND_END: usize = 228;
/// Offset of `since` in a member-table entry, then `policy`.
const ENTRY_SINCE: usize = 20;
const ENTRY_POLICY: usize = 28;
/// `policy` bit: the role is write-mostly.
const POLICY_WRITE_MOSTLY: u32 = 0x1;

/// Whether the array may have writes in flight.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ArrayState {
    /// Every write is on every member; no resync needed.
    Clean,
    /// Writes may be in flight; resync after a crash.
    Dirty,
}

/// The state of one role in the member table.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum MemberState {
    /// In the array and in sync.
    Active,
    /// Failed at run time; its data is stale.
    Failed,
    /// Absent while the array was written; its data is stale.
    Missing,
    /// A spare (reserved for later).
    Spare,
    /// Held by a new member being rebuilt; in sync below `rebuild_checkpoint`.
    Rebuilding,
    /// Held by a re-added member catching up from the write-intent bitmap;
    /// dirty regions below `rebuild_checkpoint` are done.
    Recovering,
}

impl MemberState {
    fn code(self) -> u32 {
        match self {
            MemberState::Active => 1,
            MemberState::Failed => 2,
            MemberState::Missing => 3,
            MemberState::Spare => 4,
            MemberState::Rebuilding => 5,
            MemberState::Recovering => 6,
        }
    }

    fn from_code(code: u32) -> Option<Self> {
        match code {
            1 => Some(MemberState::Active),
            2 => Some(MemberState::Failed),
            3 => Some(MemberState::Missing),
            4 => Some(MemberState::Spare),
            5 => Some(MemberState::Rebuilding),
            6 => Some(MemberState::Recovering),
            _ => None,
        }
    }
}

/// One member-table entry: who holds a role and in what state.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub struct RoleEntry {
    /// UUID of the member holding the role.
    pub member_uuid: Uuid,
    /// Its state.
    pub state: MemberState,
    /// The `events` of the update that recorded the role failed or missing
    /// (0: not failed/missing, or unknown: written by an older build).
    pub since: u64,
}

impl RoleEntry {
    /// An active entry for `member_uuid`.
    pub fn active(member_uuid: Uuid) -> RoleEntry {
        RoleEntry {
            member_uuid,
            state: MemberState::Active,
            since: 0,
        }
    }
}

/// A `vraid replace` in progress (FORMAT.md §2 `replace_uuid`/`replace_role`):
/// the new member copying role `role` while the role's table entry still
/// names the old member, which keeps serving until the copy completes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub struct ReplaceRecord {
    /// The role being replaced.
    pub role: u32,
    /// The new member's `member_uuid`.
    pub member_uuid: Uuid,
}

/// Mirror policies kept in the superblock (FORMAT.md §6, "Write-mostly and
/// write-behind members"): the write-mostly roles and write-behind.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct MirrorPolicy {
    /// Bit `r` set: role `r` is write-mostly (`policy` bit 0).
    pub write_mostly: u32,
    /// Write-behind lag bounds: (KiB, requests), both non-zero; `None` off.
    pub write_behind: Option<(u32, u32)>,
}

impl MirrorPolicy {
    /// Whether role `role` is write-mostly.
    pub fn is_write_mostly(&self, role: usize) -> bool {
        role < 32 && self.write_mostly & (1 << role) != 0
    }

    /// Sets or clears role `role`'s write-mostly bit.
    pub fn set_write_mostly(&mut self, role: usize, on: bool) {
        if role < 32 {
            match on {
                true => self.write_mostly |= 1 << role,
                false => self.write_mostly &= !(1 << role),
            }
        }
    }
}

/// One decoded superblock (FORMAT.md §2).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Superblock {
    /// Incompatible-feature flags: [`FLAG_INLINE_CSUM`] or 0.
    pub flags: u32,
    /// The array this member belongs to.
    pub array_uuid: Uuid,
    /// This member.
    pub member_uuid: Uuid,
    /// This member's position in the array.
    pub role: u32,
    /// RAID level.
    pub level: Level,
    /// Members in the array.
    pub member_count: u32,
    /// Chunk size in bytes.
    pub chunk_size: u32,
    /// Metadata regions and data area; `data_size` is the per-member data size (a chunk multiple).
    pub layout: MetaLayout,
    /// Event counter.
    pub events: u64,
    /// Clean or dirty.
    pub state: ArrayState,
    /// Unix seconds at creation.
    pub creation_time: u64,
    /// Unix seconds of this write.
    pub update_time: u64,
    /// Rebuild progress: `None` when no rebuild is running.
    pub rebuild_checkpoint: Option<u64>,
    /// The write-intent bitmap is maintained: it holds a bit for every
    /// region written since the array was last whole and clean there.
    pub bitmap_valid: bool,
    /// `csum_state` = 1: the block checksum area matches the data wherever
    /// the bitmap is clean (FORMAT.md §8). 0: it is not maintained and must
    /// be recomputed before checksums are trusted.
    pub checksums_valid: bool,
    /// `journal_state` = 1: the RAID-5 partial-parity journal is maintained
    /// and its records may be replayed (FORMAT.md §9). 0: ignore its contents.
    pub journal_valid: bool,
    /// Unix seconds of the last completed scrub (0 = never).
    pub scrub_time: u64,
    /// A replacement in progress; its progress is `rebuild_checkpoint`.
    pub replace: Option<ReplaceRecord>,
    /// `events` when a write-intent bit was last cleared on disk (FORMAT.md
    /// §6); 0 = unknown (written by an older build).
    pub events_cleared: u64,
    /// Array name.
    pub name: String,
    /// Member table, one entry per role (`member_count` entries).
    pub members: Vec<RoleEntry>,
    /// Write-mostly roles and write-behind.
    pub mirror: MirrorPolicy,
}

/// Why a superblock block or member was refused.
#[derive(Debug, thiserror::Error)]
pub enum SuperblockError {
    /// The buffer is not one superblock long.
    #[error("superblock must be {SUPERBLOCK_SIZE} bytes, got {0}")]
    Length(usize),
    /// The block is all zero.
    #[error("no superblock (block is all zero)")]
    Blank,
    /// Wrong magic.
    #[error("bad magic: not a vraid member")]
    BadMagic,
    /// CRC does not match.
    #[error("checksum mismatch: stored {stored:#010x}, computed {computed:#010x}")]
    Checksum {
        /// CRC stored in the block.
        stored: u32,
        /// CRC of the block.
        computed: u32,
    },
    /// Unknown format version.
    #[error("unsupported superblock version {0} (this build reads version {VERSION})")]
    Version(u32),
    /// Unknown incompatible feature flags.
    #[error("unsupported feature flags {0:#x}")]
    Flags(u32),
    /// A field is out of range.
    #[error("invalid {field}: {reason}")]
    Field {
        /// The field name as in docs/FORMAT.md.
        field: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// The member could not be read.
    #[error("cannot read superblock")]
    Read(#[source] BlockError),
    /// Neither copy is valid.
    #[error("no valid superblock: copy A: {primary}; copy B: {secondary}")]
    BothCopiesBad {
        /// Why copy A was refused.
        primary: Box<SuperblockError>,
        /// Why copy B was refused.
        secondary: Box<SuperblockError>,
    },
}

fn field(field: &'static str, reason: impl Into<String>) -> SuperblockError {
    SuperblockError::Field {
        field,
        reason: reason.into(),
    }
}

/// Little-endian reader over a 4 KiB block at fixed offsets.
struct Fields<'a>(&'a [u8]);

impl Fields<'_> {
    /// `raid10_layout` (offset 180): md's layout number of a RAID-10,
    /// zero for the other levels.
    fn raid10_layout(&self, level: Level) -> Result<Level, SuperblockError> {
        let code = self.u32(180);
        match level {
            Level::Raid10(_) => crate::raid::Raid10Shape::from_code(code)
                .map(Level::Raid10)
                .map_err(|e| field("raid10_layout", e.to_string())),
            _ if code != 0 => Err(field(
                "raid10_layout",
                format!("{code:#x} set on a RAID-{} member", level.number()),
            )),
            _ => Ok(level),
        }
    }

    fn u32(&self, at: usize) -> u32 {
        let mut b = [0; 4];
        b.copy_from_slice(&self.0[at..at + 4]);
        u32::from_le_bytes(b)
    }
    fn u64(&self, at: usize) -> u64 {
        let mut b = [0; 8];
        b.copy_from_slice(&self.0[at..at + 8]);
        u64::from_le_bytes(b)
    }
    fn uuid(&self, at: usize) -> Uuid {
        let mut b = [0; 16];
        b.copy_from_slice(&self.0[at..at + 16]);
        Uuid::from_bytes(b)
    }
    fn zero(&self, from: usize, to: usize) -> bool {
        self.0[from..to].iter().all(|&b| b == 0)
    }

    /// A 0/1 state word; any other value is an error naming `name`.
    fn flag(&self, at: usize, name: &'static str) -> Result<bool, SuperblockError> {
        match self.u32(at) {
            0 => Ok(false),
            1 => Ok(true),
            v => Err(field(name, format!("unknown value {v}"))),
        }
    }

    /// The NUL-padded UTF-8 name: no byte after the first NUL may be set.
    fn name(&self) -> Result<String, SuperblockError> {
        let name_bytes = &self.0[NAME_OFFSET..NAME_OFFSET + MAX_NAME_LEN];
        let name_len = name_bytes
            .iter()
            .position(|&b| b == 0)
            .unwrap_or(MAX_NAME_LEN);
        if !self.zero(NAME_OFFSET + name_len, NAME_OFFSET + MAX_NAME_LEN) {
            return Err(field("name", "NUL byte inside the name"));
        }
        Ok(std::str::from_utf8(&name_bytes[..name_len])
            .map_err(|_| field("name", "not valid UTF-8"))?
            .to_string())
    }

    /// The member table: `member_count` entries with known states, every
    /// later entry and every entry's reserved bytes zero.
    fn members(&self, member_count: u32) -> Result<Vec<RoleEntry>, SuperblockError> {
        let mut members = Vec::new();
        for role in 0..MAX_MEMBERS {
            let at = TABLE_OFFSET + role * TABLE_ENTRY;
            let code = self.u32(at + 16);
            let policy = self.u32(at + ENTRY_POLICY);
            if policy & !POLICY_WRITE_MOSTLY != 0 {
                return Err(field(
                    "member table",
                    format!("role {role}: unknown policy bits {policy:#x}"),
                ));
            }
            if (role as u64) < member_count as u64 {
                let state = MemberState::from_code(code).ok_or_else(|| {
                    field("member table", format!("role {role}: unknown state {code}"))
                })?;
                members.push(RoleEntry {
                    member_uuid: self.uuid(at),
                    state,
                    since: self.u64(at + ENTRY_SINCE),
                });
            } else if !self.zero(at, at + TABLE_ENTRY) {
                return Err(field(
                    "member table",
                    format!("role {role} is beyond member_count but not empty"),
                ));
            }
        }
        Ok(members)
    }

    /// The mirror policies: `policy` bit 0 of each role (roles beyond
    /// `member_count` were checked empty) and `write_behind_*`.
    fn mirror(&self) -> Result<MirrorPolicy, SuperblockError> {
        let mut write_mostly = 0;
        for role in 0..MAX_MEMBERS {
            let at = TABLE_OFFSET + role * TABLE_ENTRY + ENTRY_POLICY;
            if self.u32(at) & POLICY_WRITE_MOSTLY != 0 {
                write_mostly |= 1 << role;
            }
        }
        let write_behind = match (self.u32(WRITE_BEHIND_KIB), self.u32(WRITE_BEHIND_REQUESTS)) {
            (0, 0) => None,
            (kib, requests) if kib > 0 && requests > 0 => Some((kib, requests)),
            _ => {
                return Err(field(
                    "write_behind_kib",
                    "set without write_behind_requests (or the reverse)",
                ))
            }
        };
        Ok(MirrorPolicy {
            write_mostly,
            write_behind,
        })
    }

    /// The replacement record: a nil UUID means none, and then the role
    /// must be zero too.
    fn replace(&self) -> Result<Option<ReplaceRecord>, SuperblockError> {
        let replace_uuid = self.uuid(REPLACE_UUID_OFFSET);
        let replace_role = self.u32(REPLACE_ROLE_OFFSET);
        if replace_uuid.is_nil() {
            if replace_role != 0 {
                return Err(field("replace_role", "set without a replace_uuid"));
            }
            return Ok(None);
        }
        Ok(Some(ReplaceRecord {
            role: replace_role,
            member_uuid: replace_uuid,
        }))
    }
}

fn crc_of(block: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(&block[..CRC_OFFSET]);
    h.update(&[0; 4]);
    h.finalize()
}

/// Writes the magic and a matching CRC into a 4 KiB block (for fuzzing:
/// lets arbitrary bytes reach the field checks). Other lengths are left
/// as they are.
pub fn reseal(block: &mut [u8]) {
    if block.len() != SUPERBLOCK_SIZE {
        return;
    }
    block[..8].copy_from_slice(&MAGIC);
    let crc = crc_of(block);
    block[CRC_OFFSET..].copy_from_slice(&crc.to_le_bytes());
}

impl Superblock {
    /// Encodes into one 4 KiB block with the CRC filled in.
    pub fn encode(&self) -> [u8; SUPERBLOCK_SIZE] {
        let mut b = [0u8; SUPERBLOCK_SIZE];
        let mut put = |at: usize, bytes: &[u8]| b[at..at + bytes.len()].copy_from_slice(bytes);
        let l = &self.layout;
        put(0, &MAGIC);
        put(8, &VERSION.to_le_bytes());
        put(12, &self.flags.to_le_bytes());
        put(16, self.array_uuid.as_bytes());
        put(32, self.member_uuid.as_bytes());
        put(48, &self.role.to_le_bytes());
        put(52, &self.level.number().to_le_bytes());
        put(56, &self.member_count.to_le_bytes());
        put(60, &self.chunk_size.to_le_bytes());
        put(64, &l.data_offset.to_le_bytes());
        put(72, &l.data_size.to_le_bytes());
        put(80, &self.events.to_le_bytes());
        let state: u32 = match self.state {
            ArrayState::Clean => 0,
            ArrayState::Dirty => 1,
        };
        put(88, &state.to_le_bytes());
        put(92, &l.bitmap_region_shift.to_le_bytes());
        put(96, &self.creation_time.to_le_bytes());
        put(104, &self.update_time.to_le_bytes());
        put(112, &l.bitmap_offset.to_le_bytes());
        put(120, &l.bitmap_len.to_le_bytes());
        put(128, &l.journal_offset.to_le_bytes());
        put(136, &l.journal_len.to_le_bytes());
        put(144, &l.csum_offset.to_le_bytes());
        put(152, &l.csum_len.to_le_bytes());
        let checkpoint = self.rebuild_checkpoint.unwrap_or(NO_CHECKPOINT);
        put(160, &checkpoint.to_le_bytes());
        put(168, &u32::from(self.bitmap_valid).to_le_bytes());
        put(172, &u32::from(self.checksums_valid).to_le_bytes());
        put(176, &u32::from(self.journal_valid).to_le_bytes());
        let raid10_layout = self.level.raid10_shape().map_or(0, |s| s.code());
        put(180, &raid10_layout.to_le_bytes());
        put(184, &self.scrub_time.to_le_bytes());
        if let Some(r) = &self.replace {
            put(REPLACE_UUID_OFFSET, r.member_uuid.as_bytes());
            put(REPLACE_ROLE_OFFSET, &r.role.to_le_bytes());
        }
        put(EVENTS_CLEARED_OFFSET, &self.events_cleared.to_le_bytes());
        if let Some((kib, requests)) = self.mirror.write_behind {
            put(WRITE_BEHIND_KIB, &kib.to_le_bytes());
            put(WRITE_BEHIND_REQUESTS, &requests.to_le_bytes());
        }
        let name = self.name.as_bytes();
        put(NAME_OFFSET, &name[..name.len().min(MAX_NAME_LEN)]);
        for (role, entry) in self.members.iter().take(MAX_MEMBERS).enumerate() {
            let at = TABLE_OFFSET + role * TABLE_ENTRY;
            put(at, entry.member_uuid.as_bytes());
            put(at + 16, &entry.state.code().to_le_bytes());
            put(at + ENTRY_SINCE, &entry.since.to_le_bytes());
            if self.mirror.is_write_mostly(role) {
                put(at + ENTRY_POLICY, &POLICY_WRITE_MOSTLY.to_le_bytes());
            }
        }
        let crc = crc_of(&b);
        b[CRC_OFFSET..].copy_from_slice(&crc.to_le_bytes());
        b
    }

    /// Decodes and validates one 4 KiB block.
    pub fn decode(block: &[u8]) -> Result<Superblock, SuperblockError> {
        if block.len() != SUPERBLOCK_SIZE {
            return Err(SuperblockError::Length(block.len()));
        }
        let f = Fields(block);
        if f.zero(0, SUPERBLOCK_SIZE) {
            return Err(SuperblockError::Blank);
        }
        if block[..8] != MAGIC {
            return Err(SuperblockError::BadMagic);
        }
        let (stored, computed) = (f.u32(CRC_OFFSET), crc_of(block));
        if stored != computed {
            return Err(SuperblockError::Checksum { stored, computed });
        }
        match f.u32(8) {
            VERSION => {}
            v => return Err(SuperblockError::Version(v)),
        }
        if f.u32(12) & !KNOWN_FLAGS != 0 {
            return Err(SuperblockError::Flags(f.u32(12)));
        }
        for (from, to) in [
            (WRITE_BEHIND_END, NAME_OFFSET),
            (320, TABLE_OFFSET),
            (2048, CRC_OFFSET),
        ] {
            if !f.zero(from, to) {
                return Err(field(
                    "reserved",
                    format!("bytes {from}..{to} are not zero"),
                ));
            }
        }
        let sb = Self::decode_fields(&f)?;
        sb.validate()?;
        Ok(sb)
    }

    fn decode_fields(f: &Fields<'_>) -> Result<Superblock, SuperblockError> {
        let level = Level::from_number(f.u32(52))
            .ok_or_else(|| field("level", format!("unknown RAID level {}", f.u32(52))))?;
        let level = f.raid10_layout(level)?;
        let state = match f.u32(88) {
            0 => ArrayState::Clean,
            1 => ArrayState::Dirty,
            s => return Err(field("state", format!("unknown state {s}"))),
        };
        let name = f.name()?;
        let member_count = f.u32(56);
        let members = f.members(member_count)?;
        let checkpoint = f.u64(160);
        let bitmap_valid = f.flag(168, "bitmap_state")?;
        let checksums_valid = f.flag(172, "csum_state")?;
        let journal_valid = f.flag(176, "journal_state")?;
        let replace = f.replace()?;
        let mirror = f.mirror()?;
        Ok(Superblock {
            flags: f.u32(12),
            array_uuid: f.uuid(16),
            member_uuid: f.uuid(32),
            role: f.u32(48),
            level,
            member_count,
            chunk_size: f.u32(60),
            layout: MetaLayout {
                bitmap_offset: f.u64(112),
                bitmap_len: f.u64(120),
                bitmap_region_shift: f.u32(92),
                journal_offset: f.u64(128),
                journal_len: f.u64(136),
                csum_offset: f.u64(144),
                csum_len: f.u64(152),
                data_offset: f.u64(64),
                data_size: f.u64(72),
            },
            events: f.u64(80),
            state,
            creation_time: f.u64(96),
            update_time: f.u64(104),
            rebuild_checkpoint: (checkpoint != NO_CHECKPOINT).then_some(checkpoint),
            bitmap_valid,
            checksums_valid,
            journal_valid,
            scrub_time: f.u64(184),
            replace,
            events_cleared: f.u64(EVENTS_CLEARED_OFFSET),
            name,
            members,
            mirror,
        })
    }

    /// Where this array keeps its block checksums (`flags` bit 0).
    pub fn checksum_layout(&self) -> super::layout::ChecksumLayout {
        if self.flags & FLAG_INLINE_CSUM != 0 {
            super::layout::ChecksumLayout::Inline
        } else {
            super::layout::ChecksumLayout::Separate
        }
    }

    /// Whether the array keeps the written-region map (`flags` bit 1).
    pub fn has_written_map(&self) -> bool {
        self.flags & FLAG_WRITTEN_MAP != 0
    }

    /// Whether the partial-parity journal of the run that wrote this
    /// superblock may be replayed: `journal_state` = 1, and for RAID-6 also
    /// [`FLAG_RAID6_JOURNAL`] (a build without it may have served the
    /// array unlogged since the rings were written; FORMAT.md §9, case 84).
    pub fn journal_replayable(&self) -> bool {
        self.journal_valid && (self.level != Level::Raid6 || self.flags & FLAG_RAID6_JOURNAL != 0)
    }

    /// Checks every field's range (FORMAT.md §2); `decode` calls it.
    pub fn validate(&self) -> Result<(), SuperblockError> {
        if self.flags & !KNOWN_FLAGS != 0 {
            return Err(SuperblockError::Flags(self.flags));
        }
        if self.array_uuid.is_nil() {
            return Err(field("array_uuid", "nil UUID"));
        }
        if self.events_cleared > self.events {
            return Err(field("events_cleared", "greater than events"));
        }
        if let Some(r) = self.members.iter().position(|m| m.since > self.events) {
            return Err(field(
                "member table",
                format!("role {r}: since is greater than events"),
            ));
        }
        if self.member_uuid.is_nil() {
            return Err(field("member_uuid", "nil UUID"));
        }
        self.validate_roles()?;
        self.validate_replace()?;
        self.validate_mirror()?;
        if !valid_chunk_size(self.chunk_size as u64) {
            return Err(field(
                "chunk_size",
                format!("{} is not a power of two in 4K..=16M", self.chunk_size),
            ));
        }
        if self.name.is_empty() || self.name.len() > MAX_NAME_LEN || self.name.contains('\0') {
            return Err(field("name", "must be 1..=64 bytes without NUL"));
        }
        if self.events == 0 {
            return Err(field("events", "zero"));
        }
        self.validate_layout()
    }

    /// The member count, the member table and this member's own role.
    fn validate_roles(&self) -> Result<(), SuperblockError> {
        let count = self.member_count as usize;
        if !(1..=MAX_MEMBERS).contains(&count) || count < self.level.min_members() {
            return Err(field(
                "member_count",
                format!(
                    "{count} members: {} needs {}..={MAX_MEMBERS}",
                    self.level,
                    self.level.min_members()
                ),
            ));
        }
        if self.members.len() != count {
            return Err(field("member table", "length differs from member_count"));
        }
        if self.role == SPARE_ROLE {
            if self
                .members
                .iter()
                .any(|m| m.member_uuid == self.member_uuid)
            {
                return Err(field("member table", "a spare's UUID holds a role"));
            }
        } else if self.role >= self.member_count {
            return Err(field(
                "role",
                format!("role {} but only {count} members", self.role),
            ));
        } else if self.members[self.role as usize].member_uuid != self.member_uuid
            && !self.is_replacement()
        {
            return Err(field(
                "member table",
                "own role lists a different member_uuid",
            ));
        }
        Ok(())
    }

    /// Mirror policies: RAID-1 only, roles in the table, write-behind
    /// bounds both set or both zero.
    fn validate_mirror(&self) -> Result<(), SuperblockError> {
        let m = &self.mirror;
        if m.write_mostly.checked_shr(self.member_count).unwrap_or(0) != 0 {
            return Err(field(
                "member table",
                "policy set on a role beyond member_count",
            ));
        }
        if *m != MirrorPolicy::default() && self.level != Level::Raid1 {
            return Err(field(
                "member table",
                "write-mostly policy on a level other than RAID-1",
            ));
        }
        if let Some((kib, requests)) = m.write_behind {
            if kib == 0 || requests == 0 {
                return Err(field("write_behind_kib", "a zero bound"));
            }
        }
        Ok(())
    }

    /// A replace in progress names a free role-less member and a checkpoint.
    fn validate_replace(&self) -> Result<(), SuperblockError> {
        let count = self.member_count as usize;
        if let Some(r) = &self.replace {
            if r.role >= self.member_count {
                return Err(field(
                    "replace_role",
                    format!("role {} but only {count} members", r.role),
                ));
            }
            if self.members.iter().any(|m| m.member_uuid == r.member_uuid) {
                return Err(field("replace_uuid", "already holds a role"));
            }
            if self.rebuild_checkpoint.is_none() {
                return Err(field("replace_uuid", "set without a rebuild_checkpoint"));
            }
            if self
                .members
                .iter()
                .any(|m| matches!(m.state, MemberState::Rebuilding | MemberState::Recovering))
            {
                return Err(field(
                    "replace_uuid",
                    "set while a role is being rebuilt (one at a time)",
                ));
            }
        }
        Ok(())
    }

    /// This superblock is the one of the new member of a replace in progress.
    pub fn is_replacement(&self) -> bool {
        self.replace
            .is_some_and(|r| r.role == self.role && r.member_uuid == self.member_uuid)
    }

    fn validate_layout(&self) -> Result<(), SuperblockError> {
        let l = &self.layout;
        let aligned = |v: u64| v.is_multiple_of(META_BLOCK);
        let regions = [
            (
                "bitmap",
                2 * SUPERBLOCK_SIZE as u64,
                l.bitmap_offset,
                l.bitmap_len,
            ),
            (
                "journal",
                l.bitmap_offset.saturating_add(l.bitmap_len),
                l.journal_offset,
                l.journal_len,
            ),
            (
                "checksums",
                l.journal_offset.saturating_add(l.journal_len),
                l.csum_offset,
                l.csum_len,
            ),
        ];
        for (name, min_start, start, len) in regions {
            if !aligned(start)
                || !aligned(len)
                || start < min_start
                || start.checked_add(len).is_none()
            {
                return Err(field(
                    "layout",
                    format!("{name} region at {start} of {len} bytes is misplaced"),
                ));
            }
        }
        if !(20..=40).contains(&l.bitmap_region_shift) {
            return Err(field(
                "bitmap_region_shift",
                format!("{} not in 20..=40", l.bitmap_region_shift),
            ));
        }
        if !l.data_offset.is_multiple_of(DATA_ALIGN) || l.data_offset < l.csum_offset + l.csum_len {
            return Err(field(
                "data_offset",
                format!("{} is not 1 MiB-aligned after the metadata", l.data_offset),
            ));
        }
        if l.data_size == 0
            || !l.data_size.is_multiple_of(self.chunk_size as u64)
            || l.data_offset.checked_add(l.data_size).is_none()
        {
            return Err(field(
                "data_size",
                format!(
                    "{} is not a non-zero multiple of the chunk size",
                    l.data_size
                ),
            ));
        }
        if let Some(c) = self.rebuild_checkpoint {
            if c > l.data_size {
                return Err(field(
                    "rebuild_checkpoint",
                    format!("{c} beyond the data area"),
                ));
            }
        }
        Ok(())
    }
}

/// Which superblock copy.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub enum CopyId {
    /// Copy A at offset 0.
    A,
    /// Copy B at offset 4096.
    B,
}

/// The result of reading a member's two superblock copies.
#[derive(Debug)]
pub struct SuperblockRead {
    /// The superblock in use (the valid copy with the highest events).
    pub superblock: Superblock,
    /// Which copy that was.
    pub copy: CopyId,
    /// The other copy, if it was refused, and why.
    pub bad_copy: Option<(CopyId, SuperblockError)>,
}

/// Reads both copies from `device` and picks the valid one with the most events.
pub async fn read_superblock(device: &dyn BlockDevice) -> Result<SuperblockRead, SuperblockError> {
    let mut buf = vec![0u8; 2 * SUPERBLOCK_SIZE];
    device
        .read(ByteOffset(0), &mut buf)
        .await
        .map_err(SuperblockError::Read)?;
    let a = Superblock::decode(&buf[..SUPERBLOCK_SIZE]);
    let b = Superblock::decode(&buf[SUPERBLOCK_SIZE..]);
    Ok(match (a, b) {
        (Ok(a), Ok(b)) if b.events > a.events => SuperblockRead {
            superblock: b,
            copy: CopyId::B,
            bad_copy: None,
        },
        (Ok(a), Ok(_)) => SuperblockRead {
            superblock: a,
            copy: CopyId::A,
            bad_copy: None,
        },
        (Ok(a), Err(e)) => SuperblockRead {
            superblock: a,
            copy: CopyId::A,
            bad_copy: Some((CopyId::B, e)),
        },
        (Err(e), Ok(b)) => SuperblockRead {
            superblock: b,
            copy: CopyId::B,
            bad_copy: Some((CopyId::A, e)),
        },
        (Err(a), Err(b)) => {
            return Err(SuperblockError::BothCopiesBad {
                primary: Box::new(a),
                secondary: Box::new(b),
            })
        }
    })
}

/// Writes `sb` to both copies: A, flush, B, flush (FORMAT.md §2).
pub async fn write_superblock(device: &dyn BlockDevice, sb: &Superblock) -> Result<(), BlockError> {
    let block = sb.encode();
    for offset in COPY_OFFSETS {
        device
            .write(ByteOffset(offset), &block, Durability::Normal)
            .await?;
        device.flush().await?;
    }
    Ok(())
}

#[cfg(test)]
#[path = "superblock_tests.rs"]
mod tests;
